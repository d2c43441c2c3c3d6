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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from casnap.constants import (
    SKIP_NAMES,
    SOURCE_RETRIES,
    SQLITE_BUSY_TIMEOUT,
    SQLITE_SIDE_SUFFIXES,
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
from casnap.manifest import check_path
from casnap.tempfiles import temp_name

SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass(frozen=True)
class SourceFile:
    """A file of the data dir to snapshot."""

    path: str  # relative, POSIX
    abspath: Path
    kind: str  # "file" or "sqlite"


def is_sqlite(path: Path) -> bool:
    """True when the file starts with SQLite's 16-byte header."""
    try:
        with open(path, "rb") as f:
            return f.read(16) == SQLITE_MAGIC
    except OSError:
        return False


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


def scan(
    data_dir: Path,
    paths: Sequence[str] = (),
    excludes: Sequence[str] = (),
    skipped: list[str] | None = None,
) -> list[SourceFile]:
    """Every file to snapshot under data_dir (within paths), sorted by path.

    Symbolic links, special files and files whose paths a manifest refuses (a backslash, a leading
    drive letter) are skipped (their paths go to `skipped` when given); SQLite
    side files are skipped when their database is present: the backup API captures their content.
    """
    require_data_dir(data_dir)
    found: list[SourceFile] = []
    roots = [data_dir / p for p in paths] if paths else [data_dir]

    def visit(full: Path) -> None:
        rel = full.relative_to(data_dir).as_posix()
        if is_ignored_name(full.name) or is_excluded(rel, excludes):
            return
        try:
            st = full.lstat()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise from_oserror(exc, f"reading {full}") from None
        if stat.S_ISDIR(st.st_mode):
            try:
                children = sorted(os.listdir(full))
            except OSError as exc:
                raise from_oserror(exc, f"listing {full}") from None
            for name in children:
                visit(full / name)
        elif stat.S_ISREG(st.st_mode):
            try:
                check_path(rel)
            except HostileManifest:
                # a manifest holding it could not be read back: every later command would fail
                if skipped is not None:
                    skipped.append(
                        f"{rel}: not stored (manifests refuse a path with a backslash or one "
                        "starting with a drive letter)"
                    )
                return
            base = side_file_base(full.name)
            if base is not None and is_sqlite(full.parent / base):
                return
            kind = "sqlite" if is_sqlite(full) else "file"
            found.append(SourceFile(rel, full, kind))
        elif skipped is not None:
            what = "symbolic link" if stat.S_ISLNK(st.st_mode) else "special file"
            skipped.append(f"{rel}: {what} not stored (casnap stores regular files)")

    for root in roots:
        visit(root)
    found.sort(key=lambda s: s.path)
    return found


def fingerprint(path: Path, kind: str) -> tuple[int, ...] | None:
    """size, mtime, ctime and inode of a file (and of a database's -wal); None when missing."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    fp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if kind == "sqlite":
        try:
            w = os.stat(str(path) + "-wal")
            fp += (w.st_size, w.st_mtime_ns, w.st_ctime_ns, w.st_ino)
        except FileNotFoundError:
            fp += (0, 0, 0, 0)
    return fp


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
    try:
        with open(path, "rb") as f:
            header = f.read(20)
    except OSError:
        return False
    wal_mode = len(header) == 20 and header[18] == 2 and header[19] == 2
    both = all(os.path.exists(str(path) + s) for s in ("-wal", "-shm"))
    return wal_mode and not both


def _private_copy(path: Path, tmp_dir: Path) -> Path | None:
    """Copy an idle database (and its -wal) into tmp_dir, checked unchanged meanwhile; None when
    it kept changing (someone opened it: then it is read in place, like any live database)."""
    sides = [path, Path(str(path) + "-wal")]
    for _ in range(SOURCE_RETRIES):
        before = [fingerprint(p, "file") for p in sides]
        copy = tmp_dir / temp_name(".db")
        try:
            shutil.copyfile(path, copy)
            if before[1] is not None:
                shutil.copyfile(sides[1], Path(str(copy) + "-wal"))
        except FileNotFoundError:
            _remove_with_sides(copy)
            continue
        except OSError as exc:
            _remove_with_sides(copy)
            raise from_oserror(exc, f"copying {path} into {tmp_dir}") from None
        if [fingerprint(p, "file") for p in sides] == before:
            return copy
        _remove_with_sides(copy)
    return None


def _remove_with_sides(db: Path) -> None:
    for p in (db, *(Path(str(db) + s) for s in SQLITE_SIDE_SUFFIXES)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


@contextlib.contextmanager
def sqlite_image(path: Path, tmp_dir: Path) -> Iterator[Path]:
    """A consistent copy of the database at path, made by SQLite's online backup API.

    The copy goes into a fresh file (backups into a fresh file are deterministic), taken in one
    step under one read transaction, so a writer in WAL mode never tears it. Deleted afterwards.
    A WAL database that nobody has open is first copied aside, so reading it creates no -wal or
    -shm in the data dir.
    """
    tmp_dir.mkdir(parents=True, exist_ok=True)
    dest = tmp_dir / temp_name(".db")
    private = _private_copy(path, tmp_dir) if _idle_wal_database(path) else None
    source = private or path
    try:
        try:
            with (
                contextlib.closing(
                    sqlite3.connect(_ro_uri(source), uri=True, timeout=SQLITE_BUSY_TIMEOUT)
                ) as src,
                contextlib.closing(sqlite3.connect(dest)) as dst,
            ):
                # the image is a scratch file read once: fsyncing it would only cost time (it
                # halves the backup of a 127 MB database); the bytes are the same either way
                dst.execute("PRAGMA synchronous = OFF")
                src.backup(dst)
        except sqlite3.OperationalError as exc:
            msg = str(exc)
            if "locked" in msg or "busy" in msg:
                raise DatabaseBusy(f"{path}: database is locked ({msg})") from None
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in msg:
                raise StorageFull(
                    f"copying {path} into {tmp_dir}: no space left on device"
                ) from None
            raise SourceError(f"{path}: cannot read database ({msg})") from None
        except sqlite3.DatabaseError as exc:
            raise NotADatabase(f"{path}: not a readable SQLite database ({exc})") from None
        for suffix in SQLITE_SIDE_SUFFIXES:
            leftover = Path(str(dest) + suffix)
            if leftover.exists():
                leftover.unlink()
        yield dest
    finally:
        _remove_with_sides(dest)
        if private is not None:
            _remove_with_sides(private)
