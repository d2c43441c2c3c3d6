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
from typing import BinaryIO, NoReturn, cast

import numpy as np

from casnap import chunklist, compression
from casnap.chunkindex import id_matrix
from casnap.constants import SMALL_FILE, SNIFF_BYTES
from casnap.errors import IntegrityError, from_oserror
from casnap.fsdir import open_folder_budget
from casnap.ids import ObjectId, hash_bytes
from casnap.manifest import FileEntry
from casnap.packs import pack_key
from casnap.phases import Phases
from casnap.pipeline import REF_DTYPE, find_damaged
from casnap.pipeline import restore as restore_stream
from casnap.repository import Repository

Fingerprint = tuple[int, ...]
# A file restored: its entry, its path, fingerprint and first bytes (for smoke checks).
Done = Callable[[FileEntry, str, Fingerprint, bytes], None]

BATCH_FILES = 512
BATCH_BYTES = 8 * 1024 * 1024  # a batch's bytes are in memory at once (two batches at most)
# Chunk-list bytes read for a batch at once, at most (a small file's list is a few refs; a
# manifest naming larger lists has them read one file at a time, as large files do)
LIST_BATCH_BYTES = 4 * 1024 * 1024
LIST_GAP = 64 * 1024  # bytes of other frames a read of lists spans rather than making two
MAX_LIST_READ = 4 * 1024 * 1024
# Folders held open, at most: open_folder_budget() (256 under the usual `ulimit -n` of 1024);
# one batch writes into half as many at most: a batch holds each open until it is written, two
# batches at once, so a tree of many folders holding a file or two each stays within 1.5 times
# the budget (not 2 * BATCH_FILES descriptors, past `ulimit -n` 1024)
# Threads creating files, each the files of one folder at a time (a task per file cost more than
# the writing): creating a file is mostly the kernel's work, and two threads creating files in
# the same folder only took turns at its lock (spinning on it, when allocating inodes was slow).
WRITERS = 2
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def fits(entry: FileEntry) -> bool:
    """Whether an entry is restored in a batch: a small file that is no hard link."""
    return entry.link is None and entry.size <= SMALL_FILE


def batches(entries: Sequence[FileEntry]) -> Iterator[list[FileEntry]]:
    """entries in order, cut into batches of at most BATCH_FILES files, BATCH_BYTES bytes and
    half the open-folder budget's folders."""
    most_folders = max(1, open_folder_budget() // 2)
    batch: list[FileEntry] = []
    size = 0
    folders: set[str] = set()
    for entry in entries:
        folder = entry.path.rpartition("/")[0]
        if batch and (
            len(batch) >= BATCH_FILES
            or size + entry.size > BATCH_BYTES
            or (folder not in folders and len(folders) >= most_folders)
        ):
            yield batch
            batch, size = [], 0
            folders.clear()
        batch.append(entry)
        size += entry.size
        folders.add(folder)
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
    """The packed refs of each entry: its TREE blobs read together (_read_lists), each checked
    against its id, then resolved (pieces, then deltas) and counted against the entry."""
    repo = reader.repo
    names = [x for e in entries for x in e.lists]
    bodies = _read_lists(repo, names, entries) if names else {}
    if bodies is None:  # lists far larger than small files need
        return [repo.file_refs(e) for e in entries]
    out = []
    for entry in entries:
        parts = [bodies[x] for x in entry.lists]
        body = parts[0] if len(parts) == 1 else b""
        if body[:1] == _PIECE and (len(body) - 1) % chunklist.REF_SIZE == 0:
            refs = body[1:]  # one piece, the list of most small files: nothing to resolve
        else:
            refs, _deltas = chunklist.resolve(parts, f"chunk list of {entry.path}")
        if chunklist.ref_count(refs) != entry.chunks:
            raise IntegrityError(f"chunk list of {entry.path} does not hold {entry.chunks} chunks")
        out.append(refs)
    return out


def _read_lists(
    repo: Repository, names: Sequence[str], entries: Sequence[FileEntry]
) -> dict[str, bytes] | None:
    """The TREE blobs named (hex ids), each checked against its id. Their frames are read in
    pack order, the frames of a stretch of a pack (a commit queues a batch's lists one after
    the other) with one read: each is a frame of its own, too small to be worth a task of the
    restore pipeline; those kept on this host (listcache.py) are not read. None when they hold
    more than LIST_BATCH_BYTES, or when one cannot be read: each file's are then read on their
    own, and the error names the file whose list is damaged."""
    store, kept = repo.store, repo.lists
    bodies: dict[str, bytes] = {}
    if kept is not None:
        bodies = {
            c.hex(): b for c, b in kept.read_many(store, map(ObjectId.from_hex, names)).items()
        }
        names = [x for x in dict.fromkeys(names) if x not in bodies]
        if not names:
            return bodies
    ids = id_matrix(bytes.fromhex("".join(names)))
    rows = store.index.lookup(ids)
    if (rows < 0).any():
        missing = names[int(np.flatnonzero(rows < 0)[0])]
        owner = next(e for e in entries if missing in e.lists)
        raise IntegrityError(f"{owner.path}: chunk {missing} is not in the index")
    fields = store.index.fields(rows)
    if int(fields["plain"].sum()) > LIST_BATCH_BYTES:
        return None
    order = np.lexsort((fields["offset"], fields["pack"])).tolist()
    pack, offset = fields["pack"].tolist(), fields["offset"].tolist()
    length, plain = fields["length"].tolist(), fields["plain"].tolist()
    inner, frame_plain = fields["inner"].tolist(), fields["frame_plain"].tolist()
    digest = repo.ids.digest
    k = 0
    while k < len(order):  # one stretch of frames of one pack: one read
        first = order[k]
        end = k + 1
        stop = offset[first] + length[first]
        while end < len(order):
            i = order[end]
            if pack[i] != pack[first] or offset[i] > stop + LIST_GAP:
                break
            if offset[i] + length[i] - offset[first] > MAX_LIST_READ:
                break
            stop = max(stop, offset[i] + length[i])
            end += 1
        key = pack_key(store.index.packs[pack[first]])
        try:
            raw = memoryview(store.backend.get(key, offset[first], stop - offset[first]))
        except IntegrityError:  # cut short: read on their own, each names its file
            return None
        for i in order[k:end]:
            at = offset[i] - offset[first]
            size = frame_plain[i] or plain[i]
            try:
                frame = compression.decode_frame(raw[at : at + length[i]], size)
            except IntegrityError:
                return None
            body = frame.read(inner[i], plain[i]) if inner[i] + plain[i] <= len(frame) else b""
            if len(body) != plain[i] or digest(body).hex() != names[i]:
                return None
            bodies[names[i]] = body
            if kept is not None:
                kept.keep(ObjectId.from_hex(names[i]), raw[at : at + length[i]])
        k = end
    return bodies


_PIECE = bytes([chunklist.TAG_PIECE])


class _File:
    """A file a worker writes: its entry, its folder's descriptor and name in it, its path (for
    messages and callers), bytes and chunk list."""

    __slots__ = ("entry", "folder", "name", "path", "data", "refs")

    def __init__(
        self, entry: FileEntry, folder: int, name: str, path: str, data: np.ndarray, refs: bytes
    ) -> None:
        self.entry = entry
        self.folder = folder
        self.name = name
        self.path = path
        self.data = data
        self.refs = refs


def _write(file: _File, as_root: bool, phases: Phases) -> Fingerprint | None:
    """Worker: create the file holding its data when that matches the entry's hash (None when
    not: nothing is written), mode, mtime and owner (as root) set; its fingerprint."""
    with phases.timed("write"):  # the worker threads' share of a checkout: docs/JSON.md
        if hash_bytes(file.data.data).hex() != file.entry.hash:
            return None
        return _create(file, as_root)


def _create(file: _File, as_root: bool) -> Fingerprint:
    entry = file.entry
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(file.name, flags, 0o600, dir_fd=file.folder)
    except OSError as exc:
        raise from_oserror(exc, f"writing {os.path.dirname(file.path)}") from exc
    try:
        view = file.data.data
        while view:
            view = view[os.write(fd, view) :]
        with contextlib.suppress(OSError):
            os.fchmod(fd, entry.mode & 0o777)  # never set-id bits a damaged manifest asks for
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        if as_root and entry.uid is not None and entry.gid is not None:
            try:
                os.fchown(fd, entry.uid, entry.gid)
            except OSError as exc:
                raise from_oserror(exc, f"setting the owner of {file.path}") from exc
        st = os.fstat(fd)
    except OSError as exc:
        raise from_oserror(exc, f"writing {os.path.dirname(file.path)}") from exc
    finally:
        os.close(fd)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _write_all(files: list[_File], as_root: bool, phases: Phases) -> list[Fingerprint | None]:
    """Worker: _write each of a group of files (one task per group, not per file)."""
    return [_write(f, as_root, phases) for f in files]


class _Folders:
    """The folders of a stage, created as needed and held open by descriptor (workers create
    files relative to them: a path through /proc, looked up for every file, cost more than the
    writing). At most open_folder_budget() are open; one is closed only when no batch still being
    written uses it."""

    def __init__(self, stage: int, root: Path) -> None:
        self.stage = stage
        self.root = root
        self.made: set[str] = set()
        self.open: dict[str, tuple[int, int]] = {}  # folder -> (descriptor, batch last using it)
        self.max_open = open_folder_budget()

    def fd(self, folder: str, batch: int) -> int:
        held = self.open.get(folder)
        if held is None:
            self._make(folder)
            try:
                fd = os.open(folder or ".", _DIR_FLAGS, dir_fd=self.stage)
            except OSError as exc:
                raise from_oserror(exc, f"opening {self.root / folder}") from exc
            held = (fd, batch)
        self.open[folder] = (held[0], batch)
        return held[0]

    def _make(self, folder: str) -> None:
        parts = folder.split("/") if folder else []
        for i in range(len(parts)):
            sub = "/".join(parts[: i + 1])
            if sub in self.made:
                continue
            try:
                os.mkdir(sub, 0o700, dir_fd=self.stage)
            except FileExistsError:
                pass
            except OSError as exc:
                raise from_oserror(exc, f"creating {self.root / sub}") from exc
            self.made.add(sub)

    def release(self, done: int) -> None:
        """Close folders past the limit that no batch after `done` uses."""
        if len(self.open) <= self.max_open:
            return
        for folder, (fd, last) in list(self.open.items()):
            if last <= done:
                os.close(fd)
                del self.open[folder]

    def close(self) -> None:
        for fd, _ in self.open.values():
            os.close(fd)
        self.open.clear()


def stage_small(
    repo: Repository,
    stage: int,
    root: Path,
    entries: Sequence[FileEntry],
    pool: ThreadPoolExecutor,
    window: int,
    done: Done,
    phases: Phases,
) -> tuple[list[FileEntry], IntegrityError | None]:
    """Restore entries (small files, see fits) into the staging dir `stage` (a descriptor,
    reached as root), a batch at a time, reading with pool's workers; done hears of each file
    written; a file that does not match its hash raises IntegrityError naming the damaged chunk
    (or a failing read). Returns the entries left to restore one by one (which names damage
    there): those whose chunks do not add up to their size, and those of a batch whose frames
    did not decode, with that first failure: raise it when they all restore (a read that
    failed once still fails the checkout).

    Files are created by WRITERS threads of their own: creating a file is mostly the kernel's
    work (the GIL is free meanwhile), and the next batch is read while one is written."""
    with ThreadPoolExecutor(WRITERS, thread_name_prefix="casnap-create") as writers:
        return _stage_small(repo, stage, root, entries, pool, writers, window, done, phases)


def _stage_small(
    repo: Repository,
    stage: int,
    root: Path,
    entries: Sequence[FileEntry],
    pool: ThreadPoolExecutor,
    writers: ThreadPoolExecutor,
    window: int,
    done: Done,
    phases: Phases,
) -> tuple[list[FileEntry], IntegrityError | None]:
    as_root = os.geteuid() == 0
    base = str(root)
    again: list[FileEntry] = []
    failed: IntegrityError | None = None
    Job = tuple[list[_File], Future[list[Fingerprint | None]]]
    pending: deque[tuple[int, list[Job]]] = deque()
    folders = _Folders(stage, root)

    def collect(number: int, jobs: list[Job]) -> None:
        for files, fut in jobs:
            for f, fp in zip(files, fut.result(), strict=True):
                if fp is None:
                    unverified(repo, f.entry, f.refs)
                done(f.entry, f.path, fp, f.data[:SNIFF_BYTES].tobytes())
        folders.release(number)

    reader = _Reader(repo, pool, window, phases)
    try:
        for number, batch in enumerate(batches(entries)):
            with phases.timed("plan"):
                lists = chunk_lists(reader, batch)
            sizes = _sizes(lists)
            keep = [i for i, e in enumerate(batch) if sizes[i] == e.size]
            again += [batch[i] for i in range(len(batch)) if sizes[i] != batch[i].size]
            try:
                data = reader.read(b"".join(lists[i] for i in keep), sum(sizes[i] for i in keep))
            except IntegrityError as exc:  # a frame that does not decode: which file's?
                failed = failed or exc
                again += [batch[i] for i in keep]  # each on its own names the damaged one
                continue
            files = []
            pos = 0
            for i in keep:
                entry = batch[i]
                folder, _, name = entry.path.rpartition("/")
                view = data[pos : pos + entry.size]
                pos += entry.size
                path = f"{base}/{entry.path}"
                fd = folders.fd(folder, number)
                files.append(_File(entry, fd, name, path, view, lists[i]))
            by_folder: dict[int, list[_File]] = {}  # one task per folder: see WRITERS
            for f in files:
                by_folder.setdefault(f.folder, []).append(f)
            groups = list(by_folder.values())
            jobs = [(g, writers.submit(_write_all, g, as_root, phases)) for g in groups]
            pending.append((number, jobs))
            while len(pending) > 1:
                collect(*pending.popleft())
        while pending:
            collect(*pending.popleft())
    finally:
        for _number, jobs in pending:  # after a failure: nothing may still use a folder
            for _files, fut in jobs:
                fut.cancel()
                if not fut.cancelled():
                    fut.exception()
        folders.close()
    return again, failed


def _sizes(lists: Sequence[bytes]) -> list[int]:
    """The bytes each packed chunk list names, for many lists at once."""
    counts = np.array([len(r) // chunklist.REF_SIZE for r in lists], dtype=np.int64)
    lengths = np.frombuffer(b"".join(lists), dtype=REF_DTYPE)["length"].astype(np.int64)
    total = np.concatenate([[0], np.cumsum(lengths)])
    ends = np.cumsum(counts)
    sizes: list[int] = (total[ends] - total[ends - counts]).tolist()
    return sizes


def unverified(repo: Repository, entry: FileEntry, refs: bytes) -> NoReturn:
    """The error for a restored file whose bytes do not match its hash: the damaged chunk,
    found by reading each chunk again, or, when every one verifies, a failing read."""
    try:
        find_damaged(repo.store, refs)
    except IntegrityError as exc:
        raise IntegrityError(f"{entry.path}: {exc}") from exc
    # every chunk verified when read again: a read went wrong, or the manifest did
    raise IntegrityError(
        f"{entry.path}: restored file does not match its recorded hash, yet each of its "
        "chunks verifies when read again (a failing read, or a damaged manifest)"
    )
