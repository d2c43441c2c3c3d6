"""The data path of checkout (commit's is ingest.py): every core busy, memory bounded whatever
the file size.

Checkout: the refs of a file are located in the index in one batch and grouped into reads of
adjacent frames; workers read and decode each frame once; the bytes' BLAKE3, computed in order,
must equal the whole-file hash of the manifest before the file is put in place (a mismatch is
traced to the damaged chunk). Files are written by the workers themselves (writeout.py); a
stream (`restore`, for `cat`) by the calling thread, in order.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, TypeVar

import numpy as np

from casnap import compression
from casnap.chunklist import REF as REF_STRUCT
from casnap.chunklist import REF_SIZE
from casnap.constants import SPAN_FETCHERS
from casnap.errors import IntegrityError
from casnap.ids import ID_SIZE, Hasher, ObjectId
from casnap.packs import pack_key
from casnap.phases import Phases
from casnap.spans import Spans
from casnap.store import Store

T = TypeVar("T")
REF_DTYPE = np.dtype([("id", "u1", (ID_SIZE,)), ("length", "<u4")])
assert REF_DTYPE.itemsize == REF_SIZE

# Largest single read of adjacent frames during a checkout.
MAX_READ = 4 * 1024 * 1024
# Output bytes a checkout worker task produces: large enough that writing and hashing it releases
# the GIL and costs one call, small enough to keep a few tasks per worker in flight. A task
# outputs less than twice this, whatever the file's size and however often its chunks repeat.
TASK_BYTES = 1024 * 1024
# Tasks whose output may wait to be written at once (on top of the window the caller asks for):
# bounds a restore's buffers to ~128 MiB on any number of cores.
MAX_TASKS_IN_FLIGHT = 64
# Output bytes of the tasks whose reads are grouped into spans at once, on a remote backend: the
# longer, the fewer requests for the packs a stretch reads a little of (a later commit's changes
# are read once per stretch, not once per few MiB). Memory does not grow with it: spans are
# fetched at most SPANS_AHEAD bytes ahead of their reads, at most SPANS_HELD bytes of them are
# kept, and each is dropped once read (spans.py); the plan of a stretch is ~1% of its output.
SPAN_WINDOW = 256 * 1024 * 1024
# Ends of files in one stretch at most: a stretch of many tiny files keeps each of them open (a
# descriptor) until it is written.
MAX_ENDS_AHEAD = 128
# Refs located in the index and planned at a time: the plan's memory does not grow with the file.
PLAN_REFS = 1 << 16
# Refs of a file's first plan: the workers start on its first tasks while the calling thread
# plans the rest (a whole 128 MB database planned at once kept them idle ~20 ms).
FIRST_PLAN_REFS = 1 << 12
# Zero-filled blocks of this size, aligned in the file, are restored as holes (a seek, no write).
HOLE_BLOCK = 64 * 1024
_ZEROS = bytes(TASK_BYTES)  # hashed in place of the zero runs that are not written
# Bytes between the samples that rule a block out as a hole before all of it is looked at (a
# prime, so no page or record structure of the data lines up with it).
_SAMPLE_STRIDE = 4093


def cpu_workers() -> int:
    """Worker threads for hashing, compressing and decoding: one per core, at least two."""
    return max(2, os.cpu_count() or 2)


# -- checkout ----------------------------------------------------------------------------------


class _Read:
    """Adjacent frames of one pack read at once, and the byte ranges of them to write."""

    __slots__ = ("pack", "start", "stop", "frames")

    def __init__(self, pack: int, start: int) -> None:
        self.pack = pack
        self.start = start
        self.stop = start
        # per frame: [offset, length, plain size, [(start, length) in the decoded frame], keep]
        # where keep says a later read needs the frame again (so it is cached once decoded)
        self.frames: list[list] = []


class Task:
    """One worker's share of a file: reads whose output (size bytes) starts at file offset
    `offset`; at most 2 x TASK_BYTES whatever the file's size or repetition. On a remote
    backend, `spans` holds the bytes its reads are sliced from."""

    __slots__ = ("reads", "size", "offset", "spans")

    def __init__(self, offset: int) -> None:
        self.reads: list[_Read] = []
        self.size = 0
        self.offset = offset
        self.spans: Spans | None = None


def plan_tasks(store: Store, refs: bytes) -> Iterator[Task]:
    """The worker tasks that restore refs, in file order, planned PLAN_REFS refs at a time
    (FIRST_PLAN_REFS first, so the first tasks go out early).

    Planning in slices bounds its memory whatever the file's size; each task's output is bounded
    by TASK_BYTES (and a range of TASK_BYTES at most), so however often a chunk repeats, no task
    builds a buffer for more than a few of its copies.
    """
    view = memoryview(refs)
    n = len(refs) // REF_SIZE
    offset = 0
    lo = 0
    while lo < n:
        hi = min(n, lo + (min(FIRST_PLAN_REFS, PLAN_REFS) if lo == 0 else PLAN_REFS))
        for task in _plan_slice(store, view[lo * REF_SIZE : hi * REF_SIZE], offset):
            offset += task.size
            yield task
        lo = hi


def _plan_slice(store: Store, refs: memoryview, offset: int) -> list[Task]:
    """Locate refs (whose bytes start at file offset `offset`) in the index and group them into
    tasks of reads of adjacent frames.

    Consecutive refs that sit next to each other in the same frame become one byte range, so the
    Python work is per range, not per chunk. A range longer than TASK_BYTES is cut in pieces. A
    task takes the ranges that start in one TASK_BYTES-aligned stretch of the file, and those
    after it up to the end of the frame it is in (so frames are not decoded by two tasks at once)
    unless it holds TASK_BYTES already: it outputs less than 2 x TASK_BYTES.
    """
    rec = np.frombuffer(refs, dtype=REF_DTYPE)
    rows = store.index.lookup(rec["id"])
    missing = np.nonzero(rows < 0)[0]
    if len(missing):
        cid = ObjectId(rec["id"][missing[0]].tobytes())
        raise IntegrityError(f"chunk {cid.hex()} is not in the index ({len(missing)} missing)")
    f = store.index.fields(rows)
    if (f["plain"] != rec["length"]).any():
        raise IntegrityError("a chunk's stored size differs from its chunk list")
    pack = f["pack"].astype(np.int64)
    frame_off = f["offset"].astype(np.int64)
    inner = f["inner"].astype(np.int64)
    plain = f["plain"].astype(np.int64)
    new_frame = (pack[1:] != pack[:-1]) | (frame_off[1:] != frame_off[:-1])
    apart = inner[1:] != inner[:-1] + plain[:-1]
    starts = np.concatenate([[0], np.nonzero(new_frame | apart)[0] + 1])
    seg_len = np.add.reduceat(plain, starts)
    seg_new = np.concatenate([[True], new_frame])[starts]
    seg_inner = inner[starts]
    pick = starts
    pieces = np.maximum(1, -(-seg_len // TASK_BYTES))
    if (pieces > 1).any():  # long ranges (of a large frame) in pieces of TASK_BYTES
        which = np.repeat(np.arange(len(seg_len)), pieces)
        nth = np.arange(len(which)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        seg_inner = seg_inner[which] + nth * TASK_BYTES
        seg_len = np.minimum(seg_len[which] - nth * TASK_BYTES, TASK_BYTES)
        seg_new = seg_new[which] & (nth == 0)
        pick = starts[which]
    at = offset + np.cumsum(seg_len) - seg_len  # file offset of each range
    # does a later range need the same frame? (then it is cached once decoded)
    key = pack[pick] << 32 | frame_off[pick]
    _, first_rev, where = np.unique(key[::-1], return_index=True, return_inverse=True)
    last_use = (len(key) - 1 - first_rev)[where[::-1]]
    later = (last_use > np.arange(len(key))).tolist()
    frame_plain = np.where(f["frame_plain"] == 0, f["plain"], f["frame_plain"])
    seg_pack, seg_off = pack[pick].tolist(), frame_off[pick].tolist()
    seg_flen, seg_fp = f["length"][pick].tolist(), frame_plain[pick].tolist()
    seg_inner_l, seg_len_l = seg_inner.tolist(), seg_len.tolist()
    seg_new_l, at_l = seg_new.tolist(), at.tolist()
    tasks: list[Task] = []
    task = Task(offset)
    task_end = -1  # where the TASK_BYTES-aligned stretch of the file the task started in ends
    cur: _Read | None = None
    frame: list = []
    for i in range(len(seg_len_l)):
        # past its stretch, a task ends at the next frame, or at once when it is full already
        if at_l[i] >= task_end and (seg_new_l[i] or task.size >= TASK_BYTES or not tasks):
            task = Task(at_l[i])
            task_end = (at_l[i] // TASK_BYTES + 1) * TASK_BYTES
            tasks.append(task)
            cur = None
        if seg_new_l[i] or cur is None:
            p, o, ln = seg_pack[i], seg_off[i], seg_flen[i]
            if cur is None or cur.pack != p or cur.stop != o or o + ln - cur.start > MAX_READ:
                cur = _Read(p, o)
                task.reads.append(cur)
            frame = [o, ln, seg_fp[i], [], False]
            cur.frames.append(frame)
            cur.stop = o + ln
        frame[3].append((seg_inner_l[i], seg_len_l[i]))
        frame[4] = later[i]
        task.size += seg_len_l[i]
    return tasks


def spans_ahead(
    store: Store,
    items: Iterator[T],
    fetcher: ThreadPoolExecutor,
    task_of: Callable[[T], Task | None],
) -> Iterator[T]:
    """items (tasks, or things holding one: task_of finds it, None when an item holds none),
    with the reads of every SPAN_WINDOW bytes of tasks grouped into spans fetched ahead: a
    stretch starts fetching before the first item of the stretch before it is handed out, so
    the requests of one overlap the decoding and writing of the other (but the first stretch,
    handed out at once: nothing is decoded yet). A stretch spans as many items (the tasks of
    many small files) as it takes to fill it, up to MAX_ENDS_AHEAD items holding no task (ends
    of files)."""
    started: list[T] = []
    batch: list[T] = []
    size = ends = 0
    first = True  # the first stretch is handed out as soon as it is fetching: no wait at start
    for item in items:
        batch.append(item)
        task = task_of(item)
        if task is None:
            ends += 1
        else:
            size += task.size
        if size >= SPAN_WINDOW or ends >= MAX_ENDS_AHEAD:
            started, previous = _with_spans(store, batch, fetcher, task_of), started
            if first:
                started, previous, first = [], started, False
            yield from previous
            batch, size, ends = [], 0, 0
    yield from started
    yield from _with_spans(store, batch, fetcher, task_of)


def _itself(task: Task) -> Task:
    return task


def _with_spans(
    store: Store,
    batch: list[T],
    fetcher: ThreadPoolExecutor,
    task_of: Callable[[T], Task | None],
) -> list[T]:
    keys = store.index.packs
    tasks = [task for task in map(task_of, batch) if task is not None]
    if sum(len(task.reads) for task in tasks) > 1:
        frames = [
            (pack_key(keys[r.pack]), frame[0], frame[0] + frame[1])
            for task in tasks
            for r in task.reads
            for frame in r.frames
        ]
        spans = Spans(store.backend, fetcher, frames)
        for task in tasks:
            task.spans = spans
    return batch


def _fill(
    store: Store, read: _Read, spans: Spans | None, timer: Phases, out: np.ndarray, pos: int
) -> int:
    """Copy the ranges one read wants into out from pos on; returns the position after them.

    A frame a later read of the plan wants again is decoded once, cached, and dropped from the
    cache at its last read (its memory then holds the next frames: fresh pages cost a fault
    each); any other is decoded straight into out when all of it is wanted, else into this
    thread's scratch buffer and copied from it at once. The backend reads' time (or the wait
    for the span holding them) goes to timer's `read`."""
    pack = store.index.packs[read.pack]
    key = pack_key(pack)
    raw: bytes | memoryview | None = None
    for o, ln, fp, ranges, keep in read.frames:
        frame = store.cached_frame(pack, o)
        if frame is not None:
            if spans is not None:  # decoded for an earlier read: its span need not wait for it
                spans.skip(key, o, ln)
            if not keep:  # its last read in this plan: its memory goes to the next frames
                store.forget_frame(pack, o)
        else:
            if spans is not None:
                with timer.timed("read"):
                    encoded: bytes | memoryview = spans.get(key, o, ln)
            elif len(read.frames) == 1:
                with timer.timed("read"):
                    encoded = store.backend.get(key, o, ln)
            else:
                if raw is None:
                    with timer.timed("read"):
                        raw = memoryview(store.backend.get(key, read.start, read.stop - read.start))
                encoded = raw[o - read.start : o - read.start + ln]
            try:
                if not keep and len(ranges) == 1 and ranges[0] == (0, fp):  # all of it, once
                    compression.decode_into(encoded, out[pos : pos + fp])
                    pos += fp
                    continue
                frame = compression.decode_frame(encoded, fp, scratch=not keep)
            except IntegrityError as exc:
                raise IntegrityError(f"frame at {o} in pack {pack.hex()}: {exc}") from exc
            if keep:  # a later read of this plan wants it again
                store.cache_frame((bytes(pack), o), frame)
        if any(start + n > len(frame) for start, n in ranges):
            raise IntegrityError(f"frame at {o} in pack {pack.hex()} is shorter than indexed")
        for start, n in ranges:
            frame.into(start, out[pos : pos + n])
            pos += n
    return pos


def find_damaged(store: Store, refs: bytes) -> None:
    """Check every chunk of refs against its id; IntegrityError naming the first damaged one."""
    for cid, _n in REF_STRUCT.iter_unpack(refs):
        store.get(ObjectId(cid))


Piece = memoryview | np.ndarray | int  # bytes to write, or the length of a run of zeros


def fetch_many(store: Store, task: Task, timer: Phases | None = None) -> list[Piece]:
    """Worker: the bytes several consecutive reads contribute, in one buffer, so the writing
    thread makes one large write and hash update (which release the GIL) per task; runs of
    zeros come back as their length, to become holes in the file. Hand the pieces to release
    once they are written and hashed: their buffer is then reused.

    Frames are decoded into the buffer, or copied from a decoded frame into it with numpy
    (which releases the GIL, unlike bytes.join), byte-grouped float frames put back in order on
    the way. Chunks are not hashed one by one here: the caller checks the whole-file BLAKE3,
    which covers every byte (BLAKE3 of 4 KiB pieces holds the GIL, the whole-file hash of large
    runs does not); a mismatch is then traced to its chunk by find_damaged.
    """
    timer = timer or Phases()
    out = _BUFFERS.take(task.size)
    pos = 0
    for read in task.reads:
        pos = _fill(store, read, task.spans, timer, out, pos)
    return _zero_runs(out, task.offset)


class _Buffers:
    """The output buffers of tasks, reused once their bytes are written and hashed: a fresh
    buffer costs a page fault for every 4 KiB of it and adds to the peak memory (docs/TUNING.md,
    "Decoded frames into reused memory"). A buffer never released is simply freed."""

    SIZE = 2 * TASK_BYTES  # what a task outputs at most
    KEEP = 16  # free buffers kept at most

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[np.ndarray] = []
        self._lent: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()

    def take(self, n: int) -> np.ndarray:
        """A buffer of n bytes (a view of a pooled one when n fits)."""
        if n > self.SIZE:
            return np.empty(n, dtype=np.uint8)
        with self._lock:
            buf = self._free.pop() if self._free else np.empty(self.SIZE, dtype=np.uint8)
            self._lent[id(buf)] = buf
        return buf[:n]

    def release(self, pieces: list[Piece]) -> None:
        """Take back the buffer pieces of fetch_many are views of: none of them is read again."""
        with self._lock:
            for piece in pieces:
                base = piece.base if isinstance(piece, np.ndarray) else None
                if isinstance(base, np.ndarray) and self._lent.get(id(base)) is base:
                    del self._lent[id(base)]
                    if len(self._free) < self.KEEP:
                        self._free.append(base)


_BUFFERS = _Buffers()
release = _BUFFERS.release


def fetch_timed(store: Store, task: Task, phases: Phases) -> list[Piece]:
    """Worker: fetch_many, its backend reads' seconds added to phases' `read` and the rest of
    its seconds (decoding, copying, finding holes) to `decode`."""
    timer = Phases()
    start = time.perf_counter()
    pieces = fetch_many(store, task, timer)
    read = timer.seconds("read")
    phases.add("read", read)
    phases.add("decode", time.perf_counter() - start - read)
    return pieces


def _zero_runs(buf: np.ndarray, offset: int) -> list[Piece]:
    """buf, the file's bytes from `offset` on, as pieces to write and lengths of zero runs.

    Every HOLE_BLOCK-aligned block of the file that holds only zeros is left to a seek; once one
    is found, so are the zeros at the buffer's unaligned ends, so the runs of consecutive buffers
    meet without a written gap. Blocks are ruled out by a few sampled bytes first, then looked
    at whole (numpy max: a few microseconds per MiB).
    """
    n = len(buf)
    head = min(n, -offset % HOLE_BLOCK)
    count = (n - head) // HOLE_BLOCK
    if count <= 0:
        return [buf]
    tail = head + count * HOLE_BLOCK
    blocks = buf[head:tail].reshape(count, HOLE_BLOCK)
    zero = blocks[:, ::_SAMPLE_STRIDE].max(axis=1) == 0  # a byte seen: surely not a hole
    if not zero.any():
        return [buf]
    maybe = np.flatnonzero(zero)
    zero[maybe] = blocks[maybe].max(axis=1) == 0
    if not zero.any():
        return [buf]
    edges = [0, *(np.flatnonzero(zero[1:] != zero[:-1]) + 1).tolist(), count]
    pieces: list[Piece] = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        lo, hi = head + a * HOLE_BLOCK, head + b * HOLE_BLOCK
        pieces.append(hi - lo if zero[a] else buf[lo:hi])
    if head:
        if buf[:head].max():
            pieces.insert(0, buf[:head])
        elif zero[0]:
            pieces[0] = int(pieces[0]) + head
        else:
            pieces.insert(0, head)
    if tail < n:
        if buf[tail:].max():
            pieces.append(buf[tail:])
        elif zero[-1]:
            pieces[-1] = int(pieces[-1]) + n - tail
        else:
            pieces.append(n - tail)
    return pieces


def restore(
    store: Store,
    refs: bytes,
    out: BinaryIO,
    pool: ThreadPoolExecutor,
    window: int,
    tick: Callable[[int], None] | None = None,
    phases: Phases | None = None,
) -> tuple[int, ObjectId]:
    """Write the chunks of refs to out in order; (bytes written, BLAKE3 of what was written).

    Runs of zeros are skipped with a seek (holes, where the filesystem has them) and the file is
    truncated to its full size at the end; the hash still covers every byte. out must be a fresh
    seekable file. tick, when given, is called with the size of every piece written (progress).
    The time of each step goes to phases: plan, read, decode, verify (hashing) and write.
    """
    phases = phases or Phases()
    hasher = Hasher()
    size = 0
    holes = False
    inflight: deque[Future[list[Piece]]] = deque()
    window = max(1, min(window, MAX_TASKS_IN_FLIGHT))

    def write(pieces: list[Piece]) -> int:
        nonlocal holes
        done = 0
        for piece in pieces:
            if isinstance(piece, int):
                out.seek(piece, os.SEEK_CUR)
                holes = True
                with phases.timed("verify"):
                    for k in range(0, piece, len(_ZEROS)):
                        hasher.update(_ZEROS[: min(len(_ZEROS), piece - k)])
                done += piece
            else:
                view = piece if isinstance(piece, memoryview) else piece.data
                with phases.timed("write"):
                    out.write(view)
                with phases.timed("verify"):
                    hasher.update(view)
                done += len(view)
        if tick is not None:
            tick(done)
        return done

    fetcher = None
    tasks = plan_tasks(store, refs)
    if store.backend.remote:  # a request per read would cost more than the reading
        fetcher = ThreadPoolExecutor(SPAN_FETCHERS, thread_name_prefix="casnap-fetch")
        tasks = spans_ahead(store, tasks, fetcher, _itself)
    try:
        for task in phases.iterate("plan", tasks):
            inflight.append(pool.submit(fetch_timed, store, task, phases))
            if len(inflight) >= window:
                size += _written(write, inflight.popleft().result())
        while inflight:
            size += _written(write, inflight.popleft().result())
        if holes:
            out.truncate()  # at the current position: a file that ends in a hole gets its size
    finally:
        for fut in inflight:
            fut.cancel()
        if fetcher is not None:
            fetcher.shutdown(wait=True, cancel_futures=True)
    return size, hasher.digest()


def _written(write: Callable[[list[Piece]], int], pieces: list[Piece]) -> int:
    """write(pieces), then their buffer released for the next task."""
    n = write(pieces)
    release(pieces)
    return n
