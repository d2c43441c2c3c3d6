"""Consistent reads of the data dir: what to store, SQLite via its backup API, stat fingerprints.

Knows nothing of the repository: it finds files, tells SQLite databases by their header, and
produces a consistent image of each database in a fresh temporary file.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import sqlite3
import stat
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from casnap import fsutil
from casnap.constants import (
    RACY_WINDOW_FINE_NS,
    RACY_WINDOW_NS,
    SKIP_NAMES,
    SOURCE_RETRIES,
    SQLITE_BUSY_TIMEOUT,
    STAT_SETTLE_NS,
    TEMP_PREFIX,
)
from casnap.errors import (
    DatabaseBusy,
    HostileManifest,
    NotADatabase,
    SourceError,
    StorageFull,
    from_oserror,
)
from casnap.formats import hnsw, sniff
from casnap.formats.sqlite import (
    SQLITE_HEADER_SIZE,
    SQLITE_SIDE_SUFFIXES,
    is_sqlite,
    is_sqlite_header,
    sqlite_page_size,
    unused_page_ranges,
    wal_mode,
)
from casnap.fsutil import create_file, make_dirs, temp_name
from casnap.manifest import check_path


@dataclass(frozen=True)
class SourceFile:
    """A file of the data dir to snapshot."""

    path: str  # relative, POSIX
    abspath: Path
    kind: str  # "file" or "sqlite"
    stat: os.stat_result | None = None  # its lstat when the scan found it
    head: bytes | None = None  # its first SNIFF_BYTES, when the scan read them


def is_excluded(rel: str, excludes: Sequence[str]) -> bool:
    """True when rel (or its file name, or a folder above it) matches an exclude glob."""
    parts = rel.split("/")
    for pattern in excludes:
        pattern = pattern.rstrip("/")
        for i in range(len(parts)):
            if fnmatch.fnmatchcase("/".join(parts[: i + 1]), pattern):
                return True
            if fnmatch.fnmatchcase(parts[i], pattern):
                return True
    return False


def is_ignored_name(name: str) -> bool:
    """OS litter and casnap's own temp files, skipped everywhere."""
    return name in SKIP_NAMES or name.startswith(TEMP_PREFIX)


def side_file_base(name: str) -> str | None:
    """For `x.db-wal` (or -shm, -journal) the base name `x.db`; None for other names."""
    for suffix in SQLITE_SIDE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def in_scope(rel: str, paths: Sequence[str]) -> bool:
    """True when rel lies within the committed paths (all of the dir when paths is empty)."""
    return not paths or any(rel == p or rel.startswith(p + "/") for p in paths)


def require_data_dir(data_dir: Path) -> None:
    """SourceError unless data_dir is an existing directory."""
    if not data_dir.is_dir():
        raise SourceError(f"data dir {data_dir} does not exist or is not a directory")


@dataclass
class ScanOptions:
    """What a scan leaves out and what it reports besides the files.

    prune: absolute, resolved folders never entered (the repository when it lies in the data
    dir), and prune_ids the same folders by identity (reached another way: a bind mount);
    skipped: gets "<path>: why" for links and special files; dirs: gets the mode and owner of
    every folder visited ("." for the data dir) and of the folders above the given paths;
    unreadable: when given, folders that cannot be listed are added to it instead of failing;
    kind_of: see below.
    """

    prune: Sequence[Path] = ()
    prune_ids: frozenset[tuple[int, int]] = frozenset()  # (device, inode) of folders to skip
    skipped: list[str] | None = None
    dirs: dict[str, tuple[int, int, int]] | None = None
    unreadable: list[str] | None = None
    # the kind of a file the caller knows from its lstat alone (the stat cache: unchanged since
    # a snapshot said), so it is not opened to read its header; None: read it
    kind_of: Callable[[str, os.stat_result], str | None] | None = None


def scan(
    data_dir: Path,
    paths: Sequence[str] = (),
    excludes: Sequence[str] = (),
    skipped: list[str] | None = None,
    options: ScanOptions | None = None,
) -> list[SourceFile]:
    """Every file to snapshot under data_dir (within paths), sorted by path.

    Symbolic links, special files and files whose paths a manifest refuses (a backslash, a leading
    drive letter) are skipped (their paths go to `skipped` when given); SQLite
    side files are skipped when their database is present: the backup API captures their content.
    """
    require_data_dir(data_dir)
    opts = options or ScanOptions()
    if skipped is not None:
        opts.skipped = skipped
    pruned = {str(p) for p in opts.prune}
    found: list[SourceFile] = []
    roots = [data_dir / p for p in paths] if paths else [data_dir]
    if opts.dirs is not None:
        for rel in {"."} | {q for p in paths for q in _ancestors(p)}:
            with contextlib.suppress(OSError):
                st = os.lstat(data_dir / rel)
                opts.dirs[rel] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)

    def visit(full: str, rel: str, entry: os.DirEntry[str] | None = None) -> None:
        name = entry.name if entry is not None else os.path.basename(full)
        if is_ignored_name(name) or is_excluded(rel, excludes) or full in pruned:
            return
        try:
            st = entry.stat(follow_symlinks=False) if entry is not None else os.lstat(full)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise from_oserror(exc, f"reading {full}") from exc
        if stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) in opts.prune_ids:
                return
            if opts.dirs is not None:
                opts.dirs[rel] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            try:
                with os.scandir(full) as listing:
                    children = sorted(listing, key=lambda e: e.name)
            except PermissionError as exc:
                if opts.unreadable is None:
                    raise from_oserror(exc, f"listing {full}") from exc
                opts.unreadable.append(rel)
                return
            except OSError as exc:
                raise from_oserror(exc, f"listing {full}") from exc
            for child in children:
                visit(child.path, child.name if rel == "." else f"{rel}/{child.name}", child)
        elif stat.S_ISREG(st.st_mode):
            try:
                check_path(rel)
            except HostileManifest:
                # a manifest holding it could not be read back: every later command would fail
                if opts.skipped is not None:
                    opts.skipped.append(
                        f"{rel}: not stored (manifests refuse a path with a backslash or one "
                        "starting with a drive letter)"
                    )
                return
            base = side_file_base(name)
            if base is not None and is_sqlite(os.path.join(os.path.dirname(full), base)):
                return
            kind = opts.kind_of(rel, st) if opts.kind_of is not None else None
            head = None
            if kind is None:
                head = sniff(full)
                kind = "sqlite" if is_sqlite_header(head) else "file"
            found.append(SourceFile(rel, Path(full), kind, st, head))
        elif opts.skipped is not None:
            what = "symbolic link" if stat.S_ISLNK(st.st_mode) else "special file"
            opts.skipped.append(f"{rel}: {what} not stored (casnap stores regular files)")

    for root in roots:
        visit(str(root), root.relative_to(data_dir).as_posix())
    found.sort(key=lambda s: s.path)
    return found


def _ancestors(rel: str) -> list[str]:
    """The folders above rel inside the data dir ("a", "a/b" for "a/b/c")."""
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def inside(path: Path, folder: Path) -> bool:
    """True when path is folder or lies below it (both absolute and resolved)."""
    return path == folder or folder in path.parents


def open_source(path: Path) -> int:
    """A descriptor for reading a data-dir file, never through a symbolic link swapped in since
    the scan (its last component)."""
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)


def record_layout(path: Path) -> tuple[int, int] | None:
    """(record size, head size) of a file its folder describes as fixed-size records: hnswlib's
    data_level0.bin beside a header.bin that parses. The header is read without following a
    link and only if it is a small regular file; None otherwise. The answer only steers how the
    file is chunked (dedup), never what is stored."""
    if path.name != hnsw.DATA:
        return None
    try:
        fd = os.open(path.parent / hnsw.HEADER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            raw = f.read(hnsw.HEADER_SIZE + 1)
        except OSError:
            return None
    return hnsw.level0_records(raw)


def busy_timeout() -> float:
    """Seconds to wait for a locked SQLite database: CASNAP_BUSY_TIMEOUT, else the default."""
    return fsutil.seconds_from_env("CASNAP_BUSY_TIMEOUT", SQLITE_BUSY_TIMEOUT)


class _BusyWait:
    """The backup API's progress callback: gives up on a locked source database once the busy
    timeout has passed (SQLite's backup retries a locked source forever), and says once what it
    waits for."""

    def __init__(self, path: Path, on_wait: Callable[[str], None] | None) -> None:
        self.path = path
        self.on_wait = on_wait
        self.timeout = busy_timeout()
        self.deadline: float | None = None

    def __call__(self, status: int, _remaining: int, _total: int) -> None:
        if status not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + self.timeout
            if self.on_wait is not None and self.timeout > 0:
                self.on_wait(
                    f"waiting up to {self.timeout:.0f} s for {self.path}: another process holds "
                    "a lock on it"
                )
        if now >= self.deadline:
            raise DatabaseBusy(
                f"{self.path}: database is locked by another process (waited "
                f"{self.timeout:.0f} s, CASNAP_BUSY_TIMEOUT); try again when it is idle"
            )


def estimated_size(src: SourceFile) -> int:
    """Bytes a commit will read for a file: its size, plus its -wal for a database (the backup
    image holds the pages of both, so this bounds it from above)."""
    total = 0
    files = [src.abspath]
    if src.kind == "sqlite":
        files.append(Path(str(src.abspath) + "-wal"))
    for p in files:
        with contextlib.suppress(OSError):
            total += os.stat(p).st_size
    return total


def fingerprint(path: str | os.PathLike[str], kind: str) -> tuple[int, ...] | None:
    """size, mtime, ctime and inode of a file (and of a database's -wal); None when missing."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    fp: tuple[int, ...] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if kind == "sqlite":
        try:
            w = os.stat(os.fspath(path) + "-wal")
            fp += (w.st_size, w.st_mtime_ns, w.st_ctime_ns, w.st_ino)
        except FileNotFoundError:
            fp += (0, 0, 0, 0)
    return fp


def is_racy(fp: tuple[int, ...], start_ns: int) -> bool:
    """True when a fingerprint is too fresh to vouch for the file next time: its last write
    (mtime, and the -wal's for a database) lies within the racy window before the commit began,
    so a later write in the same timestamp tick could leave size and times unchanged.

    A filesystem whose ctimes carry nanoseconds stamps times with the kernel's coarse clock (one
    tick, 1-10 ms): RACY_WINDOW_FINE_NS is ten of the slowest ticks. One with whole-second
    timestamps (FAT, some network filesystems) needs RACY_WINDOW_NS.
    """
    wal = len(fp) > 6 and fp[4] > 0
    coarse = all(c % 1_000_000_000 == 0 for c in ([fp[2], fp[6]] if wal else [fp[2]]))
    window = RACY_WINDOW_NS if coarse else RACY_WINDOW_FINE_NS
    return max([fp[1], fp[5]] if wal else [fp[1]]) >= start_ns - window


def settled_fingerprint(path: Path, kind: str) -> tuple[tuple[int, ...] | None, bool]:
    """The fingerprint of a file before reading it, and whether its last change is old enough
    that any write during the read must show in the fingerprint afterwards.

    File timestamps come from the kernel's coarse clock (one tick, 1-10 ms): a file written
    within the current tick can be rewritten in place during the read with size, mtime and
    ctime all unchanged. So a plain file changed less than STAT_SETTLE_NS ago is waited for once;
    if it changed again meanwhile it is not settled and the read must not be trusted. A database
    is read through its backup API, consistent whatever happens, and is never waited for.
    """
    fp = fingerprint(path, kind)
    if kind != "file":
        return fp, True
    for _ in range(2):
        if fp is None:
            return None, False
        wait = fp[2] + STAT_SETTLE_NS - time.time_ns()  # fp[2] is the ctime
        if wait <= 0:
            return fp, True
        time.sleep(min(wait, STAT_SETTLE_NS) / 1e9)
        fp = fingerprint(path, kind)
    return fp, False


def wait_for_truncate(fd: int) -> None:
    """Return once no truncate of the open file is in flight.

    Shrinking a file (every in-place rewrite starts with O_TRUNC) shows the new size and content
    before the new ctime: Linux sets the times last, ~27 ms later for a 128 MiB file. A read and
    both stats inside that window agree on a file that is being rewritten. A truncate holds the
    inode lock throughout, and lseek(SEEK_HOLE) takes that lock on ext4, xfs, btrfs and tmpfs,
    so the stat taken after this call sees any truncate that overlapped the read.
    """
    seek_hole = getattr(os, "SEEK_HOLE", None)
    if seek_hole is not None:
        with contextlib.suppress(OSError):
            os.lseek(fd, 0, seek_hole)


def _ro_uri(path: Path) -> str:
    """A read-only SQLite URI for path, quoted so any file name is safe."""
    return f"file:{urllib.parse.quote(str(path.absolute()))}?mode=ro"


def _idle_wal_database(path: Path) -> bool:
    """True for a WAL-mode database that no connection has open (its -wal or -shm is missing).

    Opening such a database, even read-only, creates the missing side files beside it; casnap
    must not leave files behind in a data dir it only reads.
    """
    if not wal_mode(sniff(path)):
        return False
    return not all(os.path.exists(str(path) + s) for s in ("-wal", "-shm"))


def _private_copy(path: Path, tmp_dir: Path) -> tuple[Path, tuple[int, ...]] | None:
    """Copy an idle database (and its -wal) into tmp_dir, checked unchanged meanwhile: the copy
    and the database's fingerprint it holds; None when it kept changing (someone opened it: then
    it is read in place, like any live database)."""
    wal = Path(str(path) + "-wal")
    for _ in range(SOURCE_RETRIES):
        before = fingerprint(path, "sqlite")
        copy = tmp_dir / temp_name(".db")
        try:
            _private_copyfile(path, copy)
            if os.path.exists(wal):  # one that appears or goes meanwhile changes the fingerprint
                _private_copyfile(wal, Path(str(copy) + "-wal"))
        except FileNotFoundError:
            _remove_with_sides(copy)
            continue
        except OSError as exc:
            _remove_with_sides(copy)
            raise from_oserror(exc, f"copying {path} into {tmp_dir}") from exc
        if before is not None and fingerprint(path, "sqlite") == before:
            return copy, before
        _remove_with_sides(copy)
    return None


def _private_copyfile(src: Path, dest: Path) -> None:
    """Copy src to a fresh dest that only its owner can read (scratch space is private)."""
    create_file(dest)
    shutil.copyfile(src, dest)  # truncates and writes the file, keeping its 0600 mode


def _remove_with_sides(db: Path) -> None:
    for p in (db, *(Path(str(db) + s) for s in SQLITE_SIDE_SUFFIXES)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def clear_unused_pages(image: Path) -> int:
    """Zero the bytes of a database image that its freelist leaves unused (leaf pages, the tails
    of trunk pages); the number of pages touched. SQLite never reads them, so the database is the
    same to it, while what deleted rows left behind is not stored, and a page freed again holds
    the same zeros as the last time: an emptied queue table costs nothing per snapshot."""
    with open(image, "r+b") as f:
        head = f.read(SQLITE_HEADER_SIZE)
        page_size = sqlite_page_size(head)
        if page_size is None:
            return 0
        pages = os.fstat(f.fileno()).st_size // page_size

        def read_page(n: int) -> bytes:
            return os.pread(f.fileno(), page_size, (n - 1) * page_size)

        ranges = unused_page_ranges(head, pages, read_page) or []
        zeros = bytes(page_size)
        for n, start in ranges:
            os.pwrite(f.fileno(), zeros[start:], (n - 1) * page_size + start)
    return len(ranges)


@contextlib.contextmanager
def sqlite_image(
    path: Path, tmp_dir: Path, on_wait: Callable[[str], None] | None = None
) -> Iterator[Path]:
    """A consistent copy of the database at path, made by SQLite's online backup API.

    The copy goes into a fresh file (backups into a fresh file are deterministic), taken in one
    step under one read transaction, so a writer in WAL mode never tears it. Deleted afterwards.
    A WAL database that nobody has open is first copied aside, so reading it creates no -wal or
    -shm in the data dir. A database locked by a writer is waited for at most the busy timeout
    (on_wait hears about the wait once), then DatabaseBusy.
    """
    with database_image(path, tmp_dir, on_wait) as (image, _opened):
        yield image


@contextlib.contextmanager
def database_image(
    path: Path, tmp_dir: Path, on_wait: Callable[[str], None] | None = None
) -> Iterator[tuple[Path, tuple[int, ...] | None]]:
    """sqlite_image, and the database's fingerprint (fingerprint(path, "sqlite")) taken once
    SQLite had it open and before the copy began; None when it could not be taken then (a
    writer held the database).

    That fingerprint, not one taken before the open, is what a commit records for the image
    when the database still has it afterwards: SQLite run as root gives a database's -wal to
    the database's owner when it opens it (fchown), which moves the -wal's ctime even though
    nothing was written, so a fingerprint taken before the open would never match again.
    """
    dest = tmp_dir / temp_name(".db")
    try:
        make_dirs(tmp_dir)
        # SQLite would create the image 0644 (less the umask); it opens an existing empty file
        # as a new database and gives its -journal, -wal and -shm the database file's mode
        create_file(dest)
    except OSError as exc:
        raise from_oserror(exc, f"creating a database image in {tmp_dir}") from exc
    private: Path | None = None
    opened: tuple[int, ...] | None = None
    try:
        if _idle_wal_database(path) and (copied := _private_copy(path, tmp_dir)) is not None:
            private, opened = copied
        source = private or path
        try:
            wait = _BusyWait(path, on_wait)
            with (
                contextlib.closing(
                    # no busy handler: the backup loop retries, bounded by wait
                    sqlite3.connect(_ro_uri(source), uri=True, timeout=0)
                ) as src,
                contextlib.closing(sqlite3.connect(dest)) as dst,
            ):
                if private is None:
                    opened = _opened_fingerprint(src, path)
                # the image is a scratch file read once: fsyncing it would only cost time (it
                # halves the backup of a 127 MB database); the bytes are the same either way
                dst.execute("PRAGMA synchronous = OFF")
                src.backup(dst, progress=wait)
        except sqlite3.OperationalError as exc:
            msg = str(exc)
            if "locked" in msg or "busy" in msg:
                raise DatabaseBusy(f"{path}: database is locked ({msg})") from exc
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in msg:
                raise StorageFull(
                    f"copying {path} into {tmp_dir}: no space left on device"
                ) from exc
            raise SourceError(f"{path}: cannot read database ({msg})") from exc
        except sqlite3.DatabaseError as exc:
            raise NotADatabase(f"{path}: not a readable SQLite database ({exc})") from exc
        for suffix in SQLITE_SIDE_SUFFIXES:
            leftover = Path(str(dest) + suffix)
            if leftover.exists():
                leftover.unlink()
        try:
            clear_unused_pages(dest)
        except OSError as exc:
            raise from_oserror(exc, f"clearing free pages of the image of {path}") from exc
        yield dest, opened
    finally:
        _remove_with_sides(dest)
        if private is not None:
            _remove_with_sides(private)


def _opened_fingerprint(conn: sqlite3.Connection, path: Path) -> tuple[int, ...] | None:
    """The fingerprint of the database conn reads, once conn has opened it and its -wal (a first
    read does that); None when that read fails (a writer holds the database: the backup then
    waits for it, and the image is not vouched for)."""
    try:
        conn.execute("PRAGMA schema_version").fetchall()
    except sqlite3.Error:
        return None
    return fingerprint(path, "sqlite")
