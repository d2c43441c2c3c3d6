"""The image of a SQLite database that a commit stores, read once.

An image holds the pages of one committed state of the database, its free pages zeroed (what
deleted rows left there is not stored) and its header as SQLite's backup API writes it into a
fresh file, so an image never depends on how it was taken. Most databases are read in place,
page by page into the chunker, with no copy: under a read transaction (SQLite's shared lock in
rollback-journal mode, a WAL snapshot whose log is empty) the database file holds that state and
no writer can change it until the transaction ends. A WAL database nobody has open (no -shm, no
frames in its -wal) is read without opening it through SQLite, which would create side files,
and checked unchanged afterwards. Only a WAL database with frames in its log, or a file that is
out of the ordinary (bytes past its last page, a header size SQLite would not use), goes through
the backup API into a private file first: SQLite applies the log's pages. A database cut short
(formats/sqlite.cut_short) is read as it is, its damage said; one a crashed writer left with a
hot journal, from a private copy SQLite rolled back (hotjournal.py).
"""

from __future__ import annotations

import bisect
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from casnap import fsutil, hotjournal
from casnap.constants import SOURCE_RETRIES, SQLITE_BUSY_TIMEOUT, STAT_SETTLE_NS
from casnap.errors import DatabaseBusy, NotADatabase, SourceError, StorageFull, from_oserror
from casnap.fingerprints import NotRegularFile, fingerprint, open_source, wait_for_truncate
from casnap.formats import sniff
from casnap.formats.sqlite import (
    PENDING_BYTE,
    SQLITE_HEADER_SIZE,
    SQLITE_SIDE_SUFFIXES,
    backup_header,
    cut_short,
    declared_pages,
    file_uri,
    sqlite_page_size,
    unused_page_ranges,
    wal_mode,
)
from casnap.fsutil import create_file, make_dirs, temp_name

# SQLITE_VERSION_NUMBER of the library this process copies databases with
_LIBRARY_VERSION = (
    sqlite3.sqlite_version_info[0] * 1_000_000
    + sqlite3.sqlite_version_info[1] * 1_000
    + sqlite3.sqlite_version_info[2]
)
_WAIT_STEP = 0.02  # seconds between tries of a locked database

Fingerprint = tuple[int, ...]


class Image:
    """A read-only stream of a database image: the file read with os.preadv straight into the
    caller's buffer, the header and the unused bytes of free pages patched on the way.

    `how` says how it was taken: "read" (in place), "as-is" (a database cut short, its bytes
    unchanged; `damage` says why) or "backup" (the private file `file`, which the backup API
    wrote). `intact()` is False when a database read without SQLite's lock changed
    meanwhile (the read must then be taken again). `opened` is the database's fingerprint
    (fingerprint(path, "sqlite")) once SQLite had it open, before the read: what a commit
    records for the image when the database still has it afterwards (SQLite run as root gives a
    database's -wal to the database's owner when it opens it, which moves the -wal's ctime
    though nothing was written, so a fingerprint taken before the open would never match
    again); None when it could not be taken then (a writer held the database) or must not vouch
    for it (a database cut short, or read from a copy).
    """

    def __init__(
        self,
        fd: int,
        size: int,
        head: bytes,
        page_size: int,
        unused: list[tuple[int, int]],
        how: str,
        check: Callable[[], bool] | None = None,
        file: Path | None = None,
        opened: Fingerprint | None = None,
        damage: str | None = None,
    ) -> None:
        self.fd = fd
        self.size = size
        self.how = how
        self.file = file  # the private file the backup API wrote, when it did
        self.opened = opened
        self.damage = damage
        self._short = False  # the file ended early (it changed under a read without a lock)
        self._head = head
        self._page_size = page_size
        unused = sorted(unused)
        self._pages = [n for n, _ in unused]
        self._starts = [s for _, s in unused]
        self._check = check
        self.pos = 0

    def readinto(self, view: memoryview | bytearray) -> int:
        """Fill view from the current position; the number of bytes (0 at the end)."""
        want = min(len(view), self.size - self.pos)
        if want <= 0:
            return 0
        out = memoryview(view).cast("B")[:want]
        got = 0
        while got < want:
            n = os.preadv(self.fd, [out[got:]], self.pos + got)
            if n == 0:
                if self._check is None:  # under SQLite's lock a database cannot shrink
                    raise SourceError("a database became shorter while it was read")
                self._short = True  # read again: intact() says so
                out[got:] = bytes(want - got)
                break
            got += n
        self._patch(out, self.pos)
        self.pos += want
        return want

    def read(self, n: int = -1) -> bytes:
        """Up to n bytes (all that is left when n < 0)."""
        left = self.size - self.pos
        buf = bytearray(left if n < 0 else min(n, max(0, left)))
        return bytes(memoryview(buf)[: self.readinto(buf)])

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos = max(0, base + pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def fileno(self) -> int:
        return self.fd

    def intact(self) -> bool:
        """True unless the database was read without a lock and changed meanwhile."""
        return self._check is None or (not self._short and self._check())

    def _patch(self, out: memoryview, at: int) -> None:
        end = at + len(out)
        if at < SQLITE_HEADER_SIZE:
            stop = min(end, SQLITE_HEADER_SIZE)
            out[: stop - at] = self._head[at:stop]
        size = self._page_size
        i = bisect.bisect_left(self._pages, at // size + 1)
        while i < len(self._pages):
            page = self._pages[i]
            lo = (page - 1) * size + self._starts[i]
            if lo >= end:
                break
            hi = page * size
            lo, hi = max(lo, at), min(hi, end)
            if hi > lo:
                out[lo - at : hi - at] = bytes(hi - lo)
            i += 1


def _plan(fd: int, file_size: int) -> tuple[bytes, int, list[tuple[int, int]]] | None:
    """(image header, page size, unused page ranges) of the database open at fd, or None when
    the file is out of the ordinary and only the backup API should read it: a size that is not
    whole pages, a header size SQLite would not use as it stands."""
    head = os.pread(fd, SQLITE_HEADER_SIZE, 0)
    page_size = sqlite_page_size(head)
    if page_size is None or len(head) < SQLITE_HEADER_SIZE or file_size % page_size:
        return None
    pages = file_size // page_size
    if pages == 0 or declared_pages(head) not in (None, pages):
        return None

    def read_page(n: int) -> bytes:
        return os.pread(fd, page_size, (n - 1) * page_size)

    unused = unused_page_ranges(head, pages, read_page) or []
    pending = PENDING_BYTE // page_size + 1
    if pending <= pages and all(n != pending for n, _ in unused):
        unused.append((pending, 0))
    return backup_header(head, pages, _LIBRARY_VERSION), page_size, unused


def _ro_uri(path: Path) -> str:
    """A read-only SQLite URI for path, quoted so any file name is safe (its bytes: a name
    that is no UTF-8 too)."""
    return file_uri(path, "mode=ro")


def _side(path: Path, suffix: str) -> Path:
    return Path(str(path) + suffix)


def _log_size(path: Path) -> int:
    """Bytes in the database's -wal (0 when there is none)."""
    try:
        return os.stat(_side(path, "-wal")).st_size
    except FileNotFoundError:
        return 0


def idle_wal_database(path: Path) -> bool:
    """True for a WAL-mode database that no connection has open (its -wal or -shm is missing):
    opening it, even read-only, would create them in a data dir casnap only reads."""
    if not wal_mode(sniff(path)):
        return False
    return not all(os.path.exists(str(path) + s) for s in ("-wal", "-shm"))


def busy_timeout() -> float:
    """Seconds to wait for a locked SQLite database: CASNAP_BUSY_TIMEOUT, else the default."""
    return fsutil.seconds_from_env("CASNAP_BUSY_TIMEOUT", SQLITE_BUSY_TIMEOUT)


class _BusyWait:
    """Bounds the wait for a database another process has locked: the busy timeout
    (CASNAP_BUSY_TIMEOUT), said once through on_wait, then DatabaseBusy. Serves as the backup
    API's progress callback too (SQLite's backup retries a locked source forever)."""

    def __init__(self, path: Path, on_wait: Callable[[str], None] | None) -> None:
        self.path = path
        self.on_wait = on_wait
        self.timeout = busy_timeout()
        self.deadline: float | None = None

    def __call__(self, status: int, _remaining: int = 0, _total: int = 0) -> None:
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


@contextlib.contextmanager
def _sqlite_errors(path: Path, tmp_dir: Path | None = None) -> Iterator[None]:
    """SQLite's exceptions as casnap's errors for reading the database at path."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        msg = str(exc)
        if "locked" in msg or "busy" in msg:
            raise DatabaseBusy(f"{path}: database is locked ({msg})") from exc
        code = exc.sqlite_errorcode
        if code == sqlite3.SQLITE_READONLY_ROLLBACK:  # met where no copy is rolled back
            raise hotjournal.refused(path) from exc
        if tmp_dir is not None and (code == sqlite3.SQLITE_FULL or "full" in msg):
            raise StorageFull(f"copying {path} into {tmp_dir}: no space left on device") from exc
        what = f"cannot read database ({msg})"
        if not os.path.lexists(path):  # SQLite says only that it cannot open it
            what = "deleted while the commit read it (an app replacing it?); commit again"
        raise SourceError(f"{path}: {what}") from exc
    except sqlite3.DatabaseError as exc:
        raise NotADatabase(f"{path}: not a readable SQLite database ({exc})") from exc


def _busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in str(exc)


@contextlib.contextmanager
def _read_transaction(path: Path, on_wait: Callable[[str], None] | None) -> Iterator[str]:
    """A read transaction on the database at path, held until the block ends: SQLite's shared
    lock (rollback-journal mode) or a WAL snapshot; yields "held". A locked database is tried
    again for at most the busy timeout (said once through on_wait), then DatabaseBusy. Yields,
    holding nothing, "hot" when SQLite must first roll back a journal a crashed writer left
    (which read-only it cannot), "cut" when it finds a database cut short (cut_short)."""
    wait = _BusyWait(path, on_wait)
    with _sqlite_errors(path):
        # no busy handler: the loop below retries, bounded by wait
        conn = sqlite3.connect(_ro_uri(path), uri=True, timeout=0, isolation_level=None)
    try:
        with _sqlite_errors(path):
            conn.execute("PRAGMA writable_schema=ON")  # a schema it cannot parse: still pages
            while True:
                try:
                    conn.execute("BEGIN")
                    conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
                    state = "held"
                    break
                except sqlite3.OperationalError as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    if exc.sqlite_errorcode == sqlite3.SQLITE_READONLY_ROLLBACK:
                        state = "hot"
                        break
                    if not _busy(exc):
                        raise
                    wait(sqlite3.SQLITE_BUSY)
                    time.sleep(_WAIT_STEP)
                except sqlite3.DatabaseError:
                    if cut_short(sniff(path), os.stat(path).st_size) is None:
                        raise
                    state = "cut"
                    break
        yield state
    finally:
        # SQLite's lock goes with its connection: closed before any other descriptor of the
        # file (closing one drops every POSIX lock this process holds on it)
        conn.close()


def _quiet_fingerprint(path: Path) -> tuple[tuple[int, ...] | None, bool]:
    """The fingerprint of a database and its -wal before a read without SQLite's lock, and
    whether its last change is old enough for any write during the read to show afterwards
    (waited for once, as for a plain file: see fingerprints.settled_fingerprint)."""
    fp = fingerprint(path, "sqlite")
    for _ in range(2):
        if fp is None:
            return None, False
        changed = max(fp[2], fp[6])  # the ctimes of the database and of its -wal
        wait = changed + STAT_SETTLE_NS - time.time_ns()
        if wait <= 0:
            return fp, True
        time.sleep(min(wait, STAT_SETTLE_NS) / 1e9)
        fp = fingerprint(path, "sqlite")
    return fp, False


@contextlib.contextmanager
def open_image(
    path: Path,
    tmp_dir: Path,
    on_wait: Callable[[str], None] | None = None,
    *,
    unlocked: bool = True,
) -> Iterator[Image]:
    """The image of the database at path, as a stream read once (see the module's docstring).

    unlocked=False never reads an idle WAL database without SQLite (a caller whose earlier reads
    kept being disturbed: someone has it open). A database locked by a writer is waited for at
    most the busy timeout (on_wait hears about the wait once), then DatabaseBusy.
    """
    idle = idle_wal_database(path)
    state = "idle"
    if not idle:
        fd = -1
        try:
            with _read_transaction(path, on_wait) as state:
                if state == "held":
                    opened = fingerprint(path, "sqlite")  # SQLite has it and its -wal open
                    fd = _open(path)
                    # with frames in a -wal (whatever the header says, SQLite opens a log it
                    # finds) the snapshot is the file and some of them: SQLite's backup applies
                    # them. Without, the file holds the snapshot and no checkpoint can write
                    # into it while it is held.
                    if _log_size(path) == 0:
                        image = _in_place(fd, os.fstat(fd).st_size, None, opened)
                        if image is not None:
                            yield image
                            return
        finally:
            if fd >= 0:
                os.close(fd)
    if state == "hot":  # of a private copy SQLite rolled back (or, gone meanwhile, in place)
        with hotjournal.rolled_back(path, tmp_dir) as copy:
            with open_image(copy or path, tmp_dir, on_wait) as image:
                if copy is not None:
                    image.opened = None  # the copy's: it never vouches for the database
                yield image
        return
    if state == "cut" or (idle and unlocked and _log_size(path) == 0):  # without SQLite
        before, settled = _quiet_fingerprint(path)
        if before is None:
            raise SourceError(f"{path} vanished while committing")

        def unchanged() -> bool:
            wait_for_truncate(fd)  # a truncate in flight shows in the stat after
            return settled and fingerprint(path, "sqlite") == before

        fd = _open(path)
        try:
            image = _in_place(fd, before[0], unchanged, before)
            if image is not None:
                yield image
                return
        finally:
            os.close(fd)
    with _backup_image(path, tmp_dir, on_wait) as image:
        yield image


def _in_place(
    fd: int, size: int, check: Callable[[], bool] | None, opened: Fingerprint | None
) -> Image | None:
    """The image of the database open at fd read in place: a database cut short as it is (its
    damage said, its fingerprint never vouched for), else as _plan says; None when only the
    backup API should read it."""
    head = os.pread(fd, SQLITE_HEADER_SIZE, 0)
    damage = cut_short(head, size)
    if damage is not None:
        return Image(fd, size, head, 512, [], "as-is", check, damage=damage)
    plan = _plan(fd, size)
    return None if plan is None else Image(fd, size, *plan, "read", check, opened=opened)


def _open(path: Path) -> int:
    try:
        return open_source(path)
    except FileNotFoundError as exc:
        raise SourceError(f"{path} vanished while committing") from exc
    except NotRegularFile as exc:
        raise SourceError(f"{path} was replaced while committing ({exc.strerror})") from exc
    except OSError as exc:
        raise from_oserror(exc, f"reading {path}") from exc


@contextlib.contextmanager
def _backup_image(
    path: Path, tmp_dir: Path, on_wait: Callable[[str], None] | None
) -> Iterator[Image]:
    """The image made by SQLite's backup API in a private file of tmp_dir, as a stream."""
    with backup_file(path, tmp_dir, on_wait) as (image, opened):
        fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            head = os.pread(fd, SQLITE_HEADER_SIZE, 0)
            page_size = sqlite_page_size(head) or 4096
            yield Image(fd, size, head, page_size, [], "backup", file=image, opened=opened)
        finally:
            os.close(fd)


@contextlib.contextmanager
def sqlite_image(
    path: Path, tmp_dir: Path, on_wait: Callable[[str], None] | None = None
) -> Iterator[Path]:
    """The image of the database at path in a fresh private file of tmp_dir, deleted afterwards
    (for callers that need a file: staging, diff, checkout's comparison in place). An idle WAL
    database that keeps changing while it is read is read through SQLite at the last try."""
    try:
        make_dirs(tmp_dir)
    except OSError as exc:
        raise from_oserror(exc, f"creating a database image in {tmp_dir}") from exc
    for attempt in range(SOURCE_RETRIES):
        dest = tmp_dir / temp_name(".db")
        try:
            with open_image(path, tmp_dir, on_wait, unlocked=attempt < SOURCE_RETRIES - 1) as image:
                if image.file is not None:  # the backup API's file: no copy of it
                    yield image.file
                    return
                with _new_file(dest) as out:
                    _copy(image, out)
                intact = image.intact()
            if intact:
                yield dest
                return
        finally:
            _remove_with_sides(dest)
    raise SourceError(f"{path} kept changing while it was read")


@contextlib.contextmanager
def _new_file(dest: Path) -> Iterator[int]:
    """A descriptor of a fresh 0600 file at dest, for writing an image into."""
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise from_oserror(exc, f"creating a database image in {dest.parent}") from exc
    try:
        yield fd
    finally:
        os.close(fd)


def _copy(image: Image, out: int) -> None:
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while n := image.readinto(view):
        try:
            os.write(out, view[:n])
        except OSError as exc:
            raise from_oserror(exc, "writing a database image") from exc


def _private_copy(path: Path, tmp_dir: Path) -> tuple[Path, Fingerprint] | None:
    """Copy an idle database (and its -wal) into tmp_dir, checked unchanged meanwhile: the copy
    and the database's fingerprint it holds; None when it kept changing (someone opened it: then
    it is read in place, like any live database)."""
    import shutil

    wal = _side(path, "-wal")
    for _ in range(SOURCE_RETRIES):
        before = fingerprint(path, "sqlite")
        copy = tmp_dir / temp_name(".db")
        try:
            for src, dest in ((path, copy), (wal, _side(copy, "-wal"))):
                # a -wal that appears or goes meanwhile changes the fingerprint
                if src == path or os.path.exists(wal):
                    create_file(dest)  # private: shutil.copyfile keeps the 0600 mode
                    shutil.copyfile(src, dest)
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


def _opened_fingerprint(conn: sqlite3.Connection, path: Path) -> Fingerprint | None:
    """The fingerprint of the database conn reads, once conn has opened it and its -wal (a first
    read does that); None when that read fails (a writer holds the database: the backup then
    waits for it, and the image is not vouched for)."""
    try:
        conn.execute("PRAGMA schema_version").fetchall()
    except sqlite3.Error:
        return None
    return fingerprint(path, "sqlite")


def _remove_with_sides(db: Path) -> None:
    for p in (db, *(_side(db, s) for s in SQLITE_SIDE_SUFFIXES)):
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
def backup_file(
    path: Path, tmp_dir: Path, on_wait: Callable[[str], None] | None = None
) -> Iterator[tuple[Path, Fingerprint | None]]:
    """The image of the database at path made by SQLite's online backup API in a fresh private
    file of tmp_dir (backups into a fresh file are deterministic), free pages cleared, deleted
    afterwards; and the database's fingerprint once SQLite had it open (see Image.opened).
    Taken in one step under one read transaction, so a writer in WAL mode never tears it. An
    idle WAL database is first copied aside, so reading it creates no -wal or -shm in the data
    dir."""
    dest = tmp_dir / temp_name(".db")
    try:
        make_dirs(tmp_dir)
        # SQLite would create the image 0644 (less the umask); it opens an existing empty file
        # as a new database and gives its -journal, -wal and -shm the database file's mode
        create_file(dest)
    except OSError as exc:
        raise from_oserror(exc, f"creating a database image in {tmp_dir}") from exc
    private: Path | None = None
    opened: Fingerprint | None = None
    try:
        if idle_wal_database(path) and (copied := _private_copy(path, tmp_dir)) is not None:
            private, opened = copied
        source = private or path
        with (
            _sqlite_errors(path, tmp_dir),
            contextlib.closing(
                # no busy handler: the backup loop retries, bounded by the progress callback
                sqlite3.connect(_ro_uri(source), uri=True, timeout=0)
            ) as src,
            contextlib.closing(sqlite3.connect(dest)) as dst,
        ):
            if private is None:
                opened = _opened_fingerprint(src, path)
            # the image is a scratch file read once: fsyncing it would only cost time; the
            # bytes are the same either way
            dst.execute("PRAGMA synchronous = OFF")
            src.backup(dst, progress=_BusyWait(path, on_wait))
        for suffix in SQLITE_SIDE_SUFFIXES:
            _side(dest, suffix).unlink(missing_ok=True)
        try:
            clear_unused_pages(dest)
        except OSError as exc:
            raise from_oserror(exc, f"clearing free pages of the image of {path}") from exc
        yield dest, opened
    finally:
        _remove_with_sides(dest)
        if private is not None:
            _remove_with_sides(private)
