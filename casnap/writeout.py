"""Restoring files: many files through one pipeline, every core busy until the last byte.

Worker threads read and decode each task's frames and write its bytes at their offset in the file
(pwrite: copying into the page cache is the largest cost of a restore on most machines, and so
it runs on every core, not only on the thread that hashes); the calling thread hashes each
file's bytes in file order (BLAKE3 releases the GIL on such pieces) and plans the next file's
tasks while the workers are busy, so the pipeline never drains between files. A file is
complete once its last task is hashed: its size and BLAKE3 are checked against its entry (a
mismatch names the damaged chunk), its mode and mtime set, and `done` is called, so the caller
can start the file's smoke checks while later files are still being written. The disk writes of
what is written start every few MiB on a thread of their own (writeback.py).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

from casnap import pipeline
from casnap.constants import SPAN_FETCHERS
from casnap.directio import pwrite_all
from casnap.errors import IntegrityError, from_oserror
from casnap.ids import Hasher
from casnap.manifest import FileEntry
from casnap.packs import PACKS
from casnap.phases import Phases
from casnap.repository import Repository
from casnap.store import Store
from casnap.writeback import STEP, Writeback

Done = Callable[[FileEntry, Path], None]
_ZEROS = bytes(pipeline.TASK_BYTES)  # hashed in place of the runs of zeros left as holes


class _File:
    """One file being written: its descriptor, chunk list and the hash of its bytes so far."""

    __slots__ = ("entry", "dest", "fd", "refs", "hasher", "size", "holes", "wb", "flushed")

    def __init__(self, entry: FileEntry, dest: Path, refs: bytes, writeback: Writeback) -> None:
        self.entry = entry
        self.dest = dest
        self.refs = refs
        self.hasher = Hasher()
        self.size = 0
        self.holes = False
        self.flushed = 0  # bytes whose writeback was started
        try:
            self.fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise from_oserror(exc, f"writing {dest.parent}") from exc
        self.wb = writeback.open(self.fd)

    def written(self, writeback: Writeback, last: bool = False) -> None:
        """Every byte before `size` is written: start its writeback every STEP bytes, and for
        the rest of the file once it is complete."""
        if last or self.size - self.flushed >= STEP:
            writeback.start(self.wb, self.flushed, self.size - self.flushed)
            self.flushed = self.size
        if last:
            writeback.close(self.wb)
            self.wb = -1


def _fetch_and_write(
    store: Store, task: pipeline.Task, fd: int, phases: Phases
) -> list[pipeline.Piece]:
    """Worker: a task's bytes read, decoded and written at their place in the file (runs of
    zeros skipped: holes); returns them for the calling thread to hash."""
    pieces = pipeline.fetch_timed(store, task, phases)
    start = time.perf_counter()
    pos = task.offset
    for piece in pieces:
        if isinstance(piece, int):
            pos += piece
            continue
        view = piece if isinstance(piece, memoryview) else piece.data
        pwrite_all(fd, view, pos)
        pos += len(view)
    phases.since("write", start)
    return pieces


def write_files(
    repo: Repository,
    files: Iterable[tuple[FileEntry, Path]],
    pool: ThreadPoolExecutor,
    window: int,
    done: Done | None = None,
    tick: Callable[[int], None] | None = None,
    phases: Phases | None = None,
) -> None:
    """Write each entry's bytes to its dest (a new file; not fsynced: callers that keep it do),
    every file's BLAKE3 and size checked against its entry (IntegrityError naming the file, and
    the damaged chunk when one is), mode and mtime set; done(entry, dest) is called for each in
    order once it is complete. At most `window` tasks (under 2 MiB of output each) are in flight
    over all files. tick gets the bytes of every task hashed (progress). The time of each step
    goes to phases: plan (chunk lists and the plan of reads), read, decode, write, verify."""
    phases = phases or Phases()
    store = repo.store
    window = max(1, min(window, pipeline.MAX_TASKS_IN_FLIGHT))
    opened: list[_File] = []
    writeback = Writeback()
    inflight: deque[tuple[_File, Future[list[pipeline.Piece]] | None]] = deque()
    fetcher = None
    if store.backend.remote:  # a request per read would cost more than the reading
        fetcher = ThreadPoolExecutor(SPAN_FETCHERS, thread_name_prefix="casnap-fetch")

    def planned() -> Iterator[tuple[_File, pipeline.Task | None]]:
        for entry, dest in files:
            f = _File(entry, dest, repo.file_refs(entry), writeback)
            opened.append(f)
            for task in pipeline.plan_tasks(store, f.refs):
                yield f, task
            yield f, None  # the file is complete once everything before this is hashed

    tasks = planned()
    if fetcher is not None:  # the reads of several files (small ones) share a stretch of spans
        tasks = pipeline.spans_ahead(store, tasks, fetcher, _task_of)

    def take() -> int:
        """Hash the oldest task in flight, or finish the file whose end it marks; returns the
        number of tasks it took off."""
        f, fut = inflight.popleft()
        if fut is None:
            _finish(f, store, phases, done, writeback)
            return 0
        try:
            pieces = fut.result()
        except OSError as exc:
            raise from_oserror(exc, f"writing {f.dest.parent}") from exc
        except IntegrityError as exc:  # a frame that does not decode: which chunk, if any?
            raise _damage(f, store, "a frame of it does not decode") from exc
        with phases.timed("verify"):
            n = _hash(f, pieces)
        pipeline.release(pieces)  # written by the worker, hashed: its buffer is free
        f.written(writeback)
        if tick is not None:
            tick(n)
        return 1

    # the packs stay open between reads (no gc removes one under the lock); the finally below
    # waits for every read before they are closed
    with store.backend.holding(PACKS):
        try:
            running = 0
            for f, task in phases.iterate("plan", tasks):
                if task is None:
                    inflight.append((f, None))
                    continue
                inflight.append((f, pool.submit(_fetch_and_write, store, task, f.fd, phases)))
                running += 1
                while running >= window:
                    running -= take()
            while inflight:
                take()
        finally:
            futures = [fut for _, fut in inflight if fut is not None]
            for fut in futures:
                fut.cancel()
            wait(futures)  # none may write to a descriptor closed (and reused) below
            for f in opened:
                writeback.close(f.wb)
                if f.fd >= 0:
                    os.close(f.fd)
            writeback.stop()
            if fetcher is not None:
                fetcher.shutdown(wait=True, cancel_futures=True)


def _task_of(item: tuple[_File, pipeline.Task | None]) -> pipeline.Task | None:
    return item[1]


def _hash(f: _File, pieces: list[pipeline.Piece]) -> int:
    """Add a task's bytes (zero runs as zeros) to its file's hash; returns their count."""
    n = 0
    for piece in pieces:
        if isinstance(piece, int):
            f.holes = True
            for k in range(0, piece, len(_ZEROS)):
                f.hasher.update(_ZEROS[: min(len(_ZEROS), piece - k)])
            n += piece
        else:
            view = piece if isinstance(piece, memoryview) else piece.data
            f.hasher.update(view)
            n += len(view)
    f.size += n
    return n


def _damage(f: _File, store: Store, what: str) -> IntegrityError:
    """The error of a file whose restore went wrong (a frame that did not decode, or bytes that
    do not match its hash): its chunks read again one by one, the first damaged one named."""
    try:
        pipeline.find_damaged(store, f.refs)
    except IntegrityError as exc:
        return IntegrityError(f"{f.entry.path}: {exc}")
    # every chunk verified when read again: a read went wrong, or the manifest did
    return IntegrityError(
        f"{f.entry.path}: {what}, yet each of its chunks verifies when read again (a failing "
        "read, or a damaged manifest)"
    )


def _finish(
    f: _File, store: Store, phases: Phases, done: Done | None, writeback: Writeback
) -> None:
    """A file whose every byte is written and hashed: its size (a file ending in a hole gets
    it here), hash, mode and mtime; then closed and handed to done."""
    entry = f.entry
    try:
        if f.holes:
            with phases.timed("write"):
                os.ftruncate(f.fd, f.size)
    except OSError as exc:
        raise from_oserror(exc, f"writing {f.dest.parent}") from exc
    if f.size != entry.size or f.hasher.digest().hex() != entry.hash:
        raise _damage(f, store, "restored file does not match its recorded hash")
    try:
        os.chmod(f.fd, entry.mode & 0o777)  # never set-id bits a damaged manifest asks for
        os.utime(f.fd, ns=(entry.mtime_ns, entry.mtime_ns))
    except OSError:
        pass
    f.written(writeback, last=True)
    fd, f.fd, f.refs = f.fd, -1, b""
    os.close(fd)
    if done is not None:
        done(entry, f.dest)
