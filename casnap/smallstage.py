"""Small files restored a batch at a time, written by worker threads.

Restoring a file one by one costs a fixed price per file: its chunk list read from its pack, an
index lookup and a plan for its few chunks, a task per worker. For thousands of small files that
price is most of a restore. Here a batch of small files (up to BATCH_FILES files, BATCH_BYTES
bytes) has its chunk lists read together (one index lookup, adjacent frames read at once, each
list checked against its id) and its data restored as one stream (pipeline.restore: frames
decoded once, however many files share them) into memory; worker threads then check each file
against its whole-file BLAKE3 and create it, mode, mtime and owner set, while the next batch is
read. A file that does not match its hash is restored again the usual way (staging.py), which
names the damaged chunk.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np

from casnap import chunklist
from casnap.chunkindex import id_matrix
from casnap.constants import SMALL_FILE, SNIFF_BYTES
from casnap.errors import IntegrityError, from_oserror
from casnap.ids import ObjectId, hash_bytes
from casnap.manifest import FileEntry
from casnap.phases import Phases
from casnap.pipeline import REF_DTYPE
from casnap.pipeline import restore as restore_stream
from casnap.repository import Repository

Fingerprint = tuple[int, ...]
# A file restored: its entry, where it is, its fingerprint and first bytes (for smoke checks).
Done = Callable[[FileEntry, Path, Fingerprint, bytes], None]

BATCH_FILES = 512
BATCH_BYTES = 8 * 1024 * 1024  # a batch's bytes are in memory at once (two batches at most)
# Chunk-list bytes read for a batch at once, at most (a small file's list is a few refs; a
# manifest naming larger lists has them read one file at a time, as large files do)
LIST_BATCH_BYTES = 4 * 1024 * 1024


def fits(entry: FileEntry) -> bool:
    """Whether an entry is restored in a batch: a small file that is no hard link."""
    return entry.link is None and entry.size <= SMALL_FILE


def batches(entries: Sequence[FileEntry]) -> Iterator[list[FileEntry]]:
    """entries in order, cut into batches of at most BATCH_FILES files and BATCH_BYTES bytes."""
    batch: list[FileEntry] = []
    size = 0
    for entry in entries:
        if batch and (len(batch) >= BATCH_FILES or size + entry.size > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += entry.size
    if batch:
        yield batch


class _Sink:
    """What pipeline.restore writes a batch into: one buffer; a run of zeros is skipped."""

    def __init__(self, size: int) -> None:
        self.buf = np.zeros(size, dtype=np.uint8)
        self.pos = 0

    def write(self, data: memoryview) -> int:
        n = len(data)
        if self.pos + n > len(self.buf):
            raise IntegrityError("the chunks hold more bytes than their lists say")
        self.buf[self.pos : self.pos + n] = np.frombuffer(data, dtype=np.uint8)
        self.pos += n
        return n

    def seek(self, n: int, _whence: int) -> int:
        self.pos += n
        return self.pos

    def truncate(self) -> None:
        """Nothing to do: the buffer has its size."""


class _Reader:
    """Reads stretches of chunks into memory through the restore pipeline's workers."""

    def __init__(self, repo: Repository, pool: ThreadPoolExecutor, window: int, phases: Phases):
        self.repo = repo
        self.pool = pool
        self.window = window
        self.phases = phases

    def read(self, refs: bytes, size: int) -> np.ndarray:
        """The bytes refs name, in order, as one array of `size` bytes (not verified)."""
        sink = _Sink(size)
        out = cast(BinaryIO, sink)
        restore_stream(self.repo.store, refs, out, self.pool, self.window, None, self.phases)
        return sink.buf


def chunk_lists(reader: _Reader, entries: Sequence[FileEntry]) -> list[bytes]:
    """The packed refs of each entry: its TREE blobs read together, each checked against its
    id, then resolved (pieces, then deltas) and counted against the entry."""
    repo = reader.repo
    lids = [ObjectId.from_hex(x) for e in entries for x in e.lists]
    bodies: dict[bytes, bytes] = {}
    if lids:
        store = repo.store
        rows = store.index.lookup(id_matrix(b"".join(lids)))
        if (rows < 0).any():
            missing = lids[int(np.flatnonzero(rows < 0)[0])]
            owner = next(e for e in entries if missing.hex() in e.lists)
            raise IntegrityError(f"{owner.path}: chunk {missing.hex()} is not in the index")
        rec = np.empty(len(lids), dtype=REF_DTYPE)
        rec["id"] = id_matrix(b"".join(lids))
        rec["length"] = store.index.fields(rows)["plain"]
        lengths = rec["length"].tolist()
        if sum(lengths) > LIST_BATCH_BYTES:  # lists far larger than small files need
            return [repo.file_refs(e) for e in entries]
        data = reader.read(rec.tobytes(), sum(lengths))
        pos = 0
        for lid, n in zip(lids, lengths, strict=True):
            body = data[pos : pos + n].tobytes()
            pos += n
            if repo.ids(body) != lid:
                body = store.get(lid)  # read again, verified: names the damaged copy
            bodies[lid] = body
    out = []
    for entry in entries:
        refs, _deltas = chunklist.resolve(
            [bodies[ObjectId.from_hex(x)] for x in entry.lists], f"chunk list of {entry.path}"
        )
        if chunklist.ref_count(refs) != entry.chunks:
            raise IntegrityError(f"chunk list of {entry.path} does not hold {entry.chunks} chunks")
        out.append(refs)
    return out


def _write(
    path: Path, data: np.ndarray, entry: FileEntry, as_root: bool, phases: Phases
) -> Fingerprint | None:
    """Worker: create the file path holding data when data matches the entry's hash (None
    when not: nothing is written), mode, mtime and owner (as root) set; its fingerprint."""
    with phases.timed("verify"):
        if hash_bytes(data.data).hex() != entry.hash:
            return None
    with phases.timed("write"):
        return _create(path, data, entry, as_root)


def _create(path: Path, data: np.ndarray, entry: FileEntry, as_root: bool) -> Fingerprint:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise from_oserror(exc, f"writing {path.parent}") from exc
    try:
        view = data.data
        while view:
            view = view[os.write(fd, view) :]
        with contextlib.suppress(OSError):
            os.fchmod(fd, entry.mode & 0o777)  # never set-id bits a damaged manifest asks for
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        if as_root and entry.uid is not None and entry.gid is not None:
            try:
                os.fchown(fd, entry.uid, entry.gid)
            except OSError as exc:
                raise from_oserror(exc, f"setting the owner of {path}") from exc
        st = os.fstat(fd)
    except OSError as exc:
        raise from_oserror(exc, f"writing {path.parent}") from exc
    finally:
        os.close(fd)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def stage_small(
    repo: Repository,
    root: Path,
    entries: Sequence[FileEntry],
    pool: ThreadPoolExecutor,
    window: int,
    done: Done,
    phases: Phases,
) -> list[FileEntry]:
    """Restore entries (small files, see fits) below root, a batch at a time; done hears of
    each file written. Returns the entries left to restore one by one: those whose chunks do
    not add up to their size, or that did not match their hash (read again, the damage is
    named there)."""
    as_root = os.geteuid() == 0
    made: set[Path] = set()
    again: list[FileEntry] = []
    pending: deque[list[tuple[FileEntry, Path, np.ndarray, Future[Fingerprint | None]]]] = deque()

    def collect(jobs: list[tuple[FileEntry, Path, np.ndarray, Future[Fingerprint | None]]]):
        for entry, path, data, fut in jobs:
            fp = fut.result()
            if fp is None:
                again.append(entry)
            else:
                done(entry, path, fp, data[:SNIFF_BYTES].tobytes())

    reader = _Reader(repo, pool, window, phases)
    for batch in batches(entries):
        with phases.timed("plan"):
            lists = chunk_lists(reader, batch)
        sizes = [int(np.frombuffer(r, dtype=REF_DTYPE)["length"].sum()) for r in lists]
        keep = [i for i, e in enumerate(batch) if sizes[i] == e.size]
        again += [batch[i] for i in range(len(batch)) if sizes[i] != batch[i].size]
        data = reader.read(b"".join(lists[i] for i in keep), sum(sizes[i] for i in keep))
        jobs = []
        pos = 0
        for i in keep:
            entry = batch[i]
            path = root / entry.path
            if path.parent not in made:
                try:
                    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                except OSError as exc:
                    raise from_oserror(exc, f"creating {path.parent}") from exc
                made.add(path.parent)
            view = data[pos : pos + entry.size]
            pos += entry.size
            jobs.append(
                (entry, path, view, pool.submit(_write, path, view, entry, as_root, phases))
            )
        pending.append(jobs)
        while len(pending) > 1:
            collect(pending.popleft())
    while pending:
        collect(pending.popleft())
    return again
