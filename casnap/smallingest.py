"""Small files of a commit read, chunked and stored a batch at a time.

Read one by one through the streaming pipeline, a small file costs more than its bytes: a read
buffer, a chunker, a task per block, an index lookup per block, a frame of its own (compressed
alone, where zstd has little to work with), a lookup for its chunk list. Here plain files up to
SMALL_FILE (not hard links, not a data_level0.bin that its header.bin describes, not a FAISS
index or a file with SQLite's header) go in batches of
up to BATCH_FILES files or BATCH_BYTES bytes: a worker reads each file whole (never following a
link) into the batch's buffer, right after the one before (one batch read at a time, while other
workers hash and compress theirs), checks it kept the fingerprint the scan saw (size, mtime,
ctime, inode) and that it was settled by then, cuts it with the chunker its header chooses, then
hashes the pieces of the whole batch, looks them up in one call, and frames and compresses the
new ones together, so consecutive small files share frames. The calling thread queues each
batch's frames in order, then the chunk lists of its files after them (a restore reads them with
one read). A file that changed, was not settled, or could not be read is left to the usual
one-by-one read, which waits for it, retries or reports it.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

from casnap import capture, chunklist, filelists, statcache
from casnap.chunking import Block, choose_chunker
from casnap.chunking.base import Buffers
from casnap.constants import SMALL_FILE, SNIFF_BYTES, STAT_SETTLE_NS
from casnap.formats import hnsw
from casnap.formats.faiss import faiss_kind
from casnap.formats.sqlite import is_sqlite_header
from casnap.ids import ID_SIZE, hash_bytes
from casnap.ingest import Encoded, Ingest
from casnap.manifest import FileEntry
from casnap.packwriter import PackWriter
from casnap.phases import Phases
from casnap.repository import Repository

BATCH_FILES = 512
BATCH_BYTES = 4 * 1024 * 1024  # about a read block of the streaming pipeline


def batchable(src: capture.SourceFile) -> bool:
    """Whether a file of the scan is read in a batch (see the module's docstring): a small
    plain file whose first bytes (read by the scan) are of no format casnap cuts its own way.
    A FAISS index or a file with SQLite's header, however small, is streamed like any large
    one, and so re-read when it changes while it is read."""
    st = src.stat
    head = src.head
    return (
        src.kind == "file"
        and st is not None
        and head is not None
        and st.st_size <= SMALL_FILE
        and st.st_nlink == 1
        and os.path.basename(src.full) != hnsw.DATA
        and faiss_kind(head) is None
        and not is_sqlite_header(head)
    )


class Waiting(NamedTuple):
    """A small file queued for a batch: its place in the commit's entries, its source (with the
    lstat of the scan) and the parent snapshot's entry of it, if any."""

    slot: int
    src: capture.SourceFile
    old: FileEntry | None


class _Read(NamedTuple):
    """One file read whole by a worker."""

    data: memoryview  # in the batch's buffer
    lengths: list[int]
    kinds: bytes | None
    hash: str
    chunker: dict[str, Any]
    source: tuple[int, ...] | None  # the fingerprint that vouches for it, if any


class _Batch(NamedTuple):
    files: list[Waiting]
    reads: list[_Read | None]  # None: read it one by one
    encoded: Encoded | None
    buffer: bytearray  # the files read, back to back (used again once the batch is stored)


# (waiting file, its entry or None when it must be read one by one, bytes read for it)
Stored = tuple[Waiting, FileEntry | None, int]


class SmallFiles:
    """Batches of small files on their way into a pack writer; `add` queues a file, and both
    `add` and `finish` return the files of the batches done (in order)."""

    def __init__(
        self,
        repo: Repository,
        ingest: Ingest,
        writer: PackWriter,
        pool: ThreadPoolExecutor,
        level: int,
        start_ns: int,
        phases: Phases,
    ) -> None:
        self.repo = repo
        self.ingest = ingest
        self.writer = writer
        self.pool = pool
        self.level = level
        self.start_ns = start_ns
        self.phases = phases
        self.config = repo.config["chunker"]
        self.keyed = repo.ids.keyed
        self._batch: list[Waiting] = []
        self._bytes = 0
        self._inflight: deque[Future[_Batch]] = deque()
        self._depth = max(1, ingest.workers)
        # the batches' read buffers, used again: fresh memory costs a page fault per 4 KiB
        self._buffers = Buffers(self._depth + 2)
        # reading a file is short syscalls between Python: two workers reading at once mostly
        # handed the GIL to each other, one reading while another compresses overlaps better
        self._reading = threading.Lock()

    def add(self, waiting: Waiting) -> list[Stored]:
        """Queue a file; the files of batches that are done meanwhile."""
        self._batch.append(waiting)
        self._bytes += self._size(waiting)
        if len(self._batch) >= BATCH_FILES or self._bytes >= BATCH_BYTES:
            self._submit()
        out: list[Stored] = []
        while len(self._inflight) > self._depth:
            out += self._store(self._inflight.popleft().result())
        return out

    def finish(self) -> list[Stored]:
        """Every file queued, stored (or handed back to be read one by one)."""
        self._submit()
        out: list[Stored] = []
        while self._inflight:
            out += self._store(self._inflight.popleft().result())
        return out

    def cancel(self) -> None:
        """Drop what is queued (after a failure); batches being read finish on their own."""
        self._batch = []
        for fut in self._inflight:
            fut.cancel()
        self._inflight.clear()

    @staticmethod
    def _size(waiting: Waiting) -> int:
        st = waiting.src.stat
        return st.st_size if st is not None else 0

    def _submit(self) -> None:
        if self._batch:
            self._inflight.append(self.pool.submit(self._work, self._batch))
            self._batch, self._bytes = [], 0

    # -- on a worker ---------------------------------------------------------------------------

    def _work(self, files: list[Waiting]) -> _Batch:
        """Read every file of a batch, then hash, look up, frame and compress their pieces."""
        start = time.perf_counter()
        # each file read straight into its place after the last one read (one more byte than
        # the scan saw: a file that grew shows); nothing is joined or copied
        buffer = self._buffers.take(sum(self._size(w) + 1 for w in files))
        view = memoryview(buffer)
        at = 0
        reads: list[_Read | None] = []
        with self._reading:  # one batch read at a time, the others hash and compress meanwhile
            for w in files:
                r = self._read(w, view[at:])
                if r is not None:
                    at += len(r.data)
                reads.append(r)
        lengths = [n for r in reads if r is not None for n in r.lengths]
        kinds = None
        if any(r is not None and r.kinds is not None for r in reads):
            kinds = b"".join(
                r.kinds if r.kinds is not None else bytes(len(r.lengths))
                for r in reads
                if r is not None
            )
        self.phases.since("chunk", start)
        encoded = None
        if lengths:
            block = Block(view[:at], 0, lengths, kinds)
            encoded = self.ingest.encode_block(block)
        return _Batch(files, reads, encoded, buffer)

    def _read(self, waiting: Waiting, room: memoryview) -> _Read | None:
        """A file read whole into the start of room, when it still has the fingerprint of the
        scan and had it long enough that a rewrite during the read must show
        (capture.settled_fingerprint: a file changed just now is waited for once); None
        otherwise, or when it cannot be read."""
        src = waiting.src
        st = src.stat
        assert st is not None
        before = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        wait = st.st_ctime_ns + STAT_SETTLE_NS - time.time_ns()
        if wait > 0:  # written just now: waited for once, as capture.settled_fingerprint does
            time.sleep(min(wait, STAT_SETTLE_NS) / 1e9)
            if capture.fingerprint(src.full, "file") != before:
                return None
        try:
            fd = capture.open_source(src.full)
        except OSError:
            return None
        try:
            got = os.readv(fd, [room[: st.st_size + 1]])
            capture.wait_for_truncate(fd)  # before the stat that vouches for the read
        except OSError:
            return None
        finally:
            os.close(fd)
        after = capture.fingerprint(src.full, "file")
        if after != before or got != st.st_size:
            return None
        data = room[:got]
        chunker = choose_chunker(bytes(data[:SNIFF_BYTES]), self.config)
        lengths, kinds = chunker.pieces(data, 0, True)
        if sum(lengths) != len(data):
            return None
        source = statcache.vouched(before, after, self.start_ns)
        # a file of one piece under plain ids: its piece's id is its hash (taken from the refs)
        whole = "" if len(lengths) == 1 and not self.keyed else hash_bytes(data).hex()
        return _Read(data, lengths, kinds, whole, chunker.describe(), source)

    # -- on the calling thread -----------------------------------------------------------------

    def _store(self, batch: _Batch) -> list[Stored]:
        """Queue a batch's frames, then its files' chunk lists; their entries."""
        refs = self.ingest.add(batch.encoded) if batch.encoded is not None else b""
        start = time.perf_counter()
        view = memoryview(refs)
        per_file: list[bytes] = []
        at = 0
        for r in batch.reads:
            n = len(r.lengths) if r is not None else 0
            per_file.append(bytes(view[at * chunklist.REF_SIZE : (at + n) * chunklist.REF_SIZE]))
            at += n
        fresh = [
            i
            for i, (w, r) in enumerate(zip(batch.files, batch.reads, strict=True))
            if r is not None and w.old is None
        ]
        full = filelists.store_full_lists(
            self.repo, [per_file[i] for i in fresh], self.writer, self.level
        )
        names: dict[int, tuple[str, ...]] = dict(zip(fresh, full, strict=True))
        out: list[Stored] = []
        for i, (w, r) in enumerate(zip(batch.files, batch.reads, strict=True)):
            if r is None:
                out.append((w, None, 0))
                continue
            if i not in names:
                names[i] = filelists.store_list(
                    self.repo, per_file[i], w.old, self.writer, self.level
                )
            st = w.src.stat
            assert st is not None
            entry = FileEntry(
                path=w.src.path,
                kind="file",
                size=len(r.data),
                mode=stat.S_IMODE(st.st_mode),
                mtime_ns=st.st_mtime_ns,
                hash=r.hash or per_file[i][:ID_SIZE].hex(),
                chunker=r.chunker,
                lists=names[i],
                chunks=len(r.lengths),
                source=r.source,
                uid=st.st_uid,
                gid=st.st_gid,
            )
            out.append((w, entry, len(r.data)))
        self.phases.since("manifest", start)  # chunk lists are written with the manifest
        self._buffers.give(batch.buffer)  # its frames are copies, its entries hold no bytes
        return out
