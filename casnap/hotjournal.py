"""A database a crashed writer left with a hot rollback journal, captured as SQLite shows it.

A writer killed inside a transaction can leave pages of it in the database file and their last
committed versions in its -journal. Any connection that opens the database rolls the journal
back first; a read-only one cannot, so SQLite refuses to read it (SQLITE_READONLY_ROLLBACK).
casnap writes nothing in the data dir: it copies the database and its journal into a private
file of the repository's tmp/ (both unchanged across the copy, as a reader would find them),
lets SQLite roll the copy back, and captures that copy: the database's last committed state.

A journal can name a super-journal (a transaction across several databases): SQLite rolling it
back asks whether that file exists (gone: the transaction committed, nothing to roll back) and
afterwards deletes it when no journal it lists is hot. The name may be any file anywhere, so
SQLite never sees it: the copy's record is made one it reads no name from, and whether the
named file exists is asked here, as SQLite asks it (a stat, never an open).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from casnap.constants import SOURCE_RETRIES, STAT_SETTLE_NS
from casnap.errors import AccessDenied, CasnapError, HotJournal, StorageFull, from_oserror
from casnap.fingerprints import fingerprint, open_source
from casnap.formats.sqlite import (
    SQLITE_SIDE_SUFFIXES,
    SUPER_JOURNAL_TAIL,
    ends_in_super_journal,
    hot_journal,
    super_journal,
)
from casnap.fsutil import create_file, make_dirs, temp_name

State = tuple[tuple[int, ...], tuple[int, ...]]  # fingerprints of the database and its journal


def message(path: Path, why: str) -> str:
    """The line saying why the database at path could not be captured, and what fixes it."""
    return (
        f"{path} has a hot journal left by a writer that crashed mid-transaction ({why}); open "
        "the database once with sqlite3 or its app (that rolls the journal back), then run "
        "casnap again"
    )


def refused(path: Path) -> HotJournal:
    """The error for a database SQLite refused to read because of its hot journal, met where
    no copy is rolled back."""
    return HotJournal(message(path, "SQLite must roll it back before reading it"))


@contextlib.contextmanager
def rolled_back(path: Path, tmp_dir: Path) -> Iterator[Path | None]:
    """A private copy of the database at path in tmp_dir with its hot journal rolled back by
    SQLite, deleted afterwards; None when the journal is gone or no longer hot (another
    connection rolled it back: the database reads in place). HotJournal (or StorageFull,
    AccessDenied) with message()'s line when no copy can be made."""
    copy = _rolled_back_copy(path, tmp_dir)
    try:
        yield copy
    finally:
        if copy is not None:
            _remove(copy)


def _rolled_back_copy(path: Path, tmp_dir: Path) -> Path | None:
    journal = Path(f"{path}-journal")
    try:
        make_dirs(tmp_dir)
    except OSError as exc:
        raise _failed(path, exc, f"creating {tmp_dir}") from exc
    for _ in range(SOURCE_RETRIES):
        before = _settled(path, journal)
        if before is None:
            return None
        copy = tmp_dir / temp_name(".db")
        try:
            _copy(path, copy, path)
            _copy(journal, Path(f"{copy}-journal"), path)
            if _state(path, journal) == before:  # neither moved: what a reader finds
                _settle(path, copy)
                return copy
        except FileNotFoundError:
            pass  # rolled back meanwhile: look again
        except BaseException:
            _remove(copy)
            raise
        _remove(copy)
    raise HotJournal(message(path, "it kept changing while it was copied"))


def _remove(copy: Path) -> None:
    """Delete a copy, with any side file SQLite left beside it."""
    for p in (copy, *(Path(f"{copy}{s}") for s in SQLITE_SIDE_SUFFIXES)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _state(path: Path, journal: Path) -> State | None:
    """The fingerprints of the database and its journal; None when the journal is not hot."""
    db, log = fingerprint(path, "sqlite"), fingerprint(journal, "file")
    if db is None or log is None or not hot_journal(path):
        return None
    return db, log


def _settled(path: Path, journal: Path) -> State | None:
    """_state once the last change to either file is old enough that a write during the copy
    must move a fingerprint (file times tick with a coarse clock): waited for at most twice."""
    for _ in range(2):
        state = _state(path, journal)
        if state is None:
            return None
        wait = max(state[0][2], state[1][2]) + STAT_SETTLE_NS - time.time_ns()  # the ctimes
        if wait <= 0:
            return state
        time.sleep(min(wait, STAT_SETTLE_NS) / 1e9)
    return _state(path, journal)


def _copy(src: Path, dest: Path, db: Path) -> None:
    """src into a fresh private file at dest. FileNotFoundError when src is gone."""
    try:
        fd = open_source(src)  # no link followed, nothing but a regular file
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _failed(db, exc, f"reading {src}") from exc
    with os.fdopen(fd, "rb") as fin:
        try:
            create_file(dest)
            with open(dest, "r+b") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        except OSError as exc:
            raise _failed(db, exc, f"copying {src} into {dest.parent}") from exc


def _settle(path: Path, copy: Path) -> None:
    """Bring copy to what SQLite shows of the database at path: rolled back, unless its journal
    names a super-journal that is gone (the transaction committed: the journal is not hot, the
    copy stays as it is, its journal removed as SQLite would remove it)."""
    journal = Path(f"{copy}-journal")
    named = _defuse(journal, path)
    if named is not None and not _super_journal_exists(named):
        try:
            journal.unlink()
        except OSError as exc:
            raise _failed(path, exc, f"removing the copy of {path}-journal") from exc
        return
    _roll_back(path, copy)


def _defuse(journal: Path, path: Path) -> bytes | None:
    """The super-journal the copied journal names, as SQLite reads it, its record then made one
    SQLite reads no name from (its length zeroed), so the rollback can neither ask for that
    file nor delete it."""
    try:
        with open(journal, "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            start = max(0, size - SUPER_JOURNAL_TAIL)
            tail = os.pread(f.fileno(), size - start, start)
            named = super_journal(tail, size)
            if ends_in_super_journal(tail):
                os.pwrite(f.fileno(), bytes(4), size - 16)
    except OSError as exc:
        raise _failed(path, exc, f"reading the copy of {path}-journal") from exc
    return named


def _super_journal_exists(name: bytes) -> bool:
    """Whether SQLite takes a super-journal name for an existing file (os_unix.c's unixAccess):
    a stat succeeds (a relative name from this process's folder) and finds no empty regular
    file. Never opened: it may be anything (a FIFO would block an open), anywhere."""
    try:
        st = os.stat(name)
    except (OSError, ValueError):
        return False
    return not stat.S_ISREG(st.st_mode) or st.st_size > 0


def _roll_back(path: Path, copy: Path) -> None:
    """Let SQLite roll back the hot journal beside copy, as it does on opening a database."""
    try:
        with contextlib.closing(sqlite3.connect(copy, isolation_level=None)) as conn:
            conn.execute("PRAGMA writable_schema=ON")  # a schema it cannot parse rolls back too
            conn.execute("PRAGMA synchronous = OFF")  # a scratch file: no fsync
            conn.execute("SELECT count(*) FROM sqlite_master").fetchall()  # rolls back first
    except sqlite3.Error as exc:
        raise HotJournal(message(path, f"a copy rolled back by SQLite fails: {exc}")) from exc
    if hot_journal(copy):
        raise HotJournal(message(path, "SQLite did not roll back a copy of it"))


def _failed(path: Path, exc: OSError, what: str) -> CasnapError:
    """The error for an OSError met while copying the database at path: a full disk and a
    denied access keep their exit code, anything else is HotJournal."""
    err = from_oserror(exc, what)
    kind = type(err) if isinstance(err, (StorageFull, AccessDenied)) else HotJournal
    return kind(message(path, str(err)))
