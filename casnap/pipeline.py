"""The data paths of commit and checkout: every core busy, memory bounded whatever the file size.

Commit: the calling thread reads a file in blocks, lets its chunker cut them and feeds the
whole-file hash; worker threads hash every piece, look a whole block's ids up in the index at once,
group the new pieces into frames and compress them (BLAKE3, numpy and zstd release the GIL); the
calling thread adds the frames to the pack writer in file order, which writes packs from its own
thread. At most a few blocks are in flight.

Checkout: the refs of a file are located in the index in one batch and grouped into reads of
adjacent frames; workers read and decode each frame once; the calling thread writes the bytes in
order while computing their BLAKE3, which must equal the whole-file hash of the manifest before
the file is put in place (a mismatch is traced to the damaged chunk).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

import blake3
import numpy as np

from casnap import compression
from casnap.chunkindex import id_matrix
from casnap.chunking import FLOAT32, Block, Chunker
from casnap.chunklist import REF as REF_STRUCT
from casnap.chunklist import REF_SIZE
from casnap.constants import READ_BLOCK
from casnap.errors import IntegrityError
from casnap.ids import ID_SIZE, Hasher, ObjectId
from casnap.store import DATA, PackWriter, Store, pack_key

REF_DTYPE = np.dtype([("id", "u1", (ID_SIZE,)), ("length", "<u4")])
assert REF_DTYPE.itemsize == REF_SIZE

# Largest single read of adjacent frames during a checkout.
MAX_READ = 4 * 1024 * 1024
# Output bytes a checkout worker task produces: large enough that writing and hashing it releases
# the GIL and costs one call, small enough to keep a few tasks per worker in flight.
TASK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Ingested:
    """What ingesting one stream produced."""

    refs: bytes  # packed (id, length) refs, see chunklist.py
    hash: ObjectId  # BLAKE3 of the whole stream
    size: int


@dataclass(frozen=True)
class _Frame:
    encoded: bytes
    frame_plain: int  # 0 for a frame of one chunk
    members: list[tuple[bytes, int, int]]  # id, offset in the frame, plain size


@dataclass(frozen=True)
class _Encoded:
    refs: bytes
    frames: list[_Frame]


class Ingest:
    """Stores streams into a pack writer: chunk, hash, dedup, frame and compress in parallel."""

    def __init__(
        self,
        store: Store,
        writer: PackWriter,
        pool: ThreadPoolExecutor,
        workers: int,
        *,
        level: int,
        float_level: int,
        frame_target: int,
        group_floats: bool,
        read_block: int = READ_BLOCK,
    ) -> None:
        self.store = store
        self.writer = writer
        self.pool = pool
        self.workers = max(1, workers)
        self.level = level
        self.float_level = float_level
        self.frame_target = frame_target
        self.group_floats = group_floats
        self.read_block = read_block

    def run(self, stream: BinaryIO, chunker: Chunker) -> Ingested:
        """Ingest a stream cut by chunker; new frames go to the writer in stream order."""
        hasher = Hasher()
        refs: list[bytes] = []
        inflight: deque[Future[_Encoded]] = deque()
        size = 0
        try:
            for block in chunker.blocks(stream, self.read_block):
                hasher.update(block.data)
                size += len(block.data)
                inflight.append(self.pool.submit(self._encode, block))
                while len(inflight) > self.workers:
                    self._take(inflight.popleft(), refs)
            while inflight:
                self._take(inflight.popleft(), refs)
        finally:
            for fut in inflight:
                fut.cancel()
            for fut in inflight:
                if not fut.cancelled():
                    fut.exception()
        return Ingested(b"".join(refs), hasher.digest(), size)

    def _take(self, fut: Future[_Encoded], refs: list[bytes]) -> None:
        done = fut.result()
        refs.append(done.refs)
        add = self.writer.add_frame
        for f in done.frames:
            add(DATA, f.encoded, f.frame_plain, f.members)

    def _encode(self, block: Block) -> _Encoded:
        """Worker: hash every piece of a block, frame and compress the new ones."""
        data = block.data
        lengths = block.lengths
        kinds = block.kinds
        h = blake3.blake3
        ids: list[bytes] = []
        pos = 0
        for n in lengths:
            ids.append(h(data[pos : pos + n]).digest())
            pos += n
        rec = np.empty(len(ids), dtype=REF_DTYPE)
        idm = id_matrix(b"".join(ids))
        rec["id"] = idm
        rec["length"] = lengths
        stored = self.writer.known_many(ids)
        local: set[bytes] = set()
        frames: list[_Frame] = []
        members: list[tuple[bytes, int, int]] = []
        spans: list[tuple[int, int]] = []
        fbytes = 0
        fkind = 0
        target = self.frame_target
        pos = 0
        for i, n in enumerate(lengths):
            start = pos
            pos += n
            cid = ids[i]
            if stored[i] or cid in local:
                continue
            local.add(cid)
            kind = kinds[i] if kinds is not None else 0
            if members and (fbytes + n > target or kind != fkind):
                frames.append(self._frame(data, members, spans, fbytes, fkind))
                members, spans, fbytes = [], [], 0
            fkind = kind
            members.append((cid, fbytes, n))
            spans.append((start, n))
            fbytes += n
        if members:
            frames.append(self._frame(data, members, spans, fbytes, fkind))
        return _Encoded(rec.tobytes(), frames)

    def _frame(
        self,
        data: memoryview,
        members: list[tuple[bytes, int, int]],
        spans: list[tuple[int, int]],
        fbytes: int,
        kind: int,
    ) -> _Frame:
        first = spans[0][0]
        if spans[-1][0] + spans[-1][1] - first == fbytes:  # adjacent pieces: no copy
            payload: bytes | memoryview = data[first : first + fbytes]
        else:
            payload = b"".join(data[s : s + n] for s, n in spans)
        if kind == FLOAT32:
            encoded = compression.encode(payload, self.float_level, grouped=self.group_floats)
        else:
            encoded = compression.encode(payload, self.level)
        return _Frame(encoded, fbytes if len(members) > 1 else 0, members)


# -- checkout ----------------------------------------------------------------------------------


class _Read:
    """Adjacent frames of one pack read at once, and the byte ranges of them to write."""

    __slots__ = ("pack", "start", "stop", "frames")

    def __init__(self, pack: int, start: int) -> None:
        self.pack = pack
        self.start = start
        self.stop = start
        # per frame: offset, length, plain size, [(start, length) in the decoded frame]
        self.frames: list[tuple[int, int, int, list[tuple[int, int]]]] = []


_Task = tuple[list[_Read], int]  # reads, bytes of output


def plan_reads(store: Store, refs: bytes) -> list[_Read]:
    """Locate refs in the index and group them into reads of adjacent frames, in file order.

    Consecutive refs that sit next to each other in the same frame become one byte range, so the
    Python work is per range, not per chunk.
    """
    n = len(refs) // REF_SIZE
    if n == 0:
        return []
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
    offset = f["offset"].astype(np.int64)
    inner = f["inner"].astype(np.int64)
    plain = f["plain"].astype(np.int64)
    new_frame = (pack[1:] != pack[:-1]) | (offset[1:] != offset[:-1])
    apart = inner[1:] != inner[:-1] + plain[:-1]
    starts = np.concatenate([[0], np.nonzero(new_frame | apart)[0] + 1])
    seg_len = np.add.reduceat(plain, starts).tolist()
    seg_new_frame = np.concatenate([[True], new_frame])[starts].tolist()
    frame_plain = np.where(f["frame_plain"] == 0, f["plain"], f["frame_plain"])
    seg_pack, seg_off = pack[starts].tolist(), offset[starts].tolist()
    seg_flen, seg_fp = f["length"][starts].tolist(), frame_plain[starts].tolist()
    seg_inner = inner[starts].tolist()
    reads: list[_Read] = []
    cur: _Read | None = None
    ranges: list[tuple[int, int]] = []
    for i in range(len(seg_len)):
        if seg_new_frame[i]:
            p, o, ln = seg_pack[i], seg_off[i], seg_flen[i]
            if cur is None or cur.pack != p or cur.stop != o or o + ln - cur.start > MAX_READ:
                cur = _Read(p, o)
                reads.append(cur)
            ranges = []
            cur.frames.append((o, ln, seg_fp[i], ranges))
            cur.stop = o + ln
        ranges.append((seg_inner[i], seg_len[i]))
    return reads


def _frames(store: Store, read: _Read) -> Iterator[tuple[compression.Frame, list[tuple[int, int]]]]:
    """The decoded frames of one read with the (start, length) ranges wanted from each."""
    pack = store.index.packs[read.pack]
    key = pack_key(pack)
    raw: memoryview | None = None
    for o, ln, fp, ranges in read.frames:
        frame = store.cached_frame(pack, o)
        if frame is None:
            if len(read.frames) == 1:
                encoded: bytes | memoryview = store.backend.get(key, o, ln)
            else:
                if raw is None:
                    raw = memoryview(store.backend.get(key, read.start, read.stop - read.start))
                encoded = raw[o - read.start : o - read.start + ln]
            try:
                frame = compression.decode_frame(encoded, fp)
            except IntegrityError as exc:
                raise IntegrityError(f"frame at {o} in pack {pack.hex()}: {exc}") from None
            if sum(n for _, n in ranges) < fp:  # other chunks of it may be wanted later
                store.cache_frame((bytes(pack), o), frame)
        if any(start + n > len(frame) for start, n in ranges):
            raise IntegrityError(f"frame at {o} in pack {pack.hex()} is shorter than indexed")
        yield frame, ranges


def find_damaged(store: Store, refs: bytes) -> None:
    """Check every chunk of refs against its id; IntegrityError naming the first damaged one."""
    for cid, _n in REF_STRUCT.iter_unpack(refs):
        store.get(ObjectId(cid))


def fetch_many(store: Store, task: _Task) -> memoryview | np.ndarray:
    """Worker: the bytes several consecutive reads contribute, in one buffer, so the writing
    thread makes one large write and hash update (which release the GIL) per task.

    Each range is copied from its frame straight into the buffer with numpy (which releases the
    GIL, unlike bytes.join), byte-grouped float frames put back in order on the way. Chunks are
    not hashed one by one here: the caller checks the whole-file BLAKE3, which covers every byte
    (BLAKE3 of 4 KiB pieces holds the GIL, the whole-file hash of large runs does not); a
    mismatch is then traced to its chunk by find_damaged.
    """
    reads, size = task
    out: np.ndarray | None = None
    pos = 0
    for read in reads:
        for frame, ranges in _frames(store, read):
            if out is None:
                if len(ranges) == len(reads) == len(read.frames) == 1 and not frame.grouped:
                    start, n = ranges[0]  # one piece of a plain frame: no copy at all
                    return memoryview(frame.data)[start : start + n]
                out = np.empty(size, dtype=np.uint8)
            for start, n in ranges:
                frame.into(start, out[pos : pos + n])
                pos += n
    return out if out is not None else np.empty(0, dtype=np.uint8)


def plan_tasks(store: Store, refs: bytes) -> list[_Task]:
    """Reads grouped into worker tasks of about TASK_BYTES of output each, in file order, with
    the bytes each task yields."""
    tasks: list[_Task] = []
    cur: list[_Read] = []
    size = 0
    for r in plan_reads(store, refs):
        cur.append(r)
        size += sum(n for _, _, _, ranges in r.frames for _, n in ranges)
        if size >= TASK_BYTES:
            tasks.append((cur, size))
            cur, size = [], 0
    if cur:
        tasks.append((cur, size))
    return tasks


def restore(
    store: Store,
    refs: bytes,
    out: BinaryIO,
    pool: ThreadPoolExecutor,
    window: int,
    tick: Callable[[int], None] | None = None,
) -> tuple[int, ObjectId]:
    """Write the chunks of refs to out in order; (bytes written, BLAKE3 of what was written).

    tick, when given, is called with the size of every buffer written (progress)."""
    hasher = Hasher()
    size = 0
    inflight: deque[Future[memoryview | np.ndarray]] = deque()

    def write(buf: memoryview | np.ndarray) -> int:
        out.write(buf)
        hasher.update(buf)
        if tick is not None:
            tick(len(buf))
        return len(buf)

    try:
        for task in plan_tasks(store, refs):
            inflight.append(pool.submit(fetch_many, store, task))
            if len(inflight) >= window:
                size += write(inflight.popleft().result())
        while inflight:
            size += write(inflight.popleft().result())
    finally:
        for fut in inflight:
            fut.cancel()
    return size, hasher.digest()
