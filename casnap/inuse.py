"""Is a SQLite database in use? Before a checkout replaces or removes one, casnap asks three ways.

1. SQLite's own locks (every user's): a connection inside a transaction holds a POSIX lock on the
   database's lock bytes, and every connection to a WAL database holds one on its -shm. fcntl
   F_GETLK shows them without taking anything. A database with such a lock is never replaced,
   whatever the options: its journal is hot or its WAL holds frames a live connection relies on.
2. Open file descriptors of every process (/proc/<pid>/fd), naming the process that has it open.
3. When some processes cannot be inspected (other users' processes, for a user other than root),
   a write lease: the kernel grants one only when no other descriptor of the file is open anywhere.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from casnap.errors import CasnapError, DatabaseBusy, from_oserror
from casnap.formats.sqlite import SQLITE_SIDE_SUFFIXES, check_side_files, sqlite_lock_ranges
from casnap.fsdir import Dir

_FLOCK = "hhqqi4x"  # struct flock on Linux (x86_64 and aarch64): type, whence, start, len, pid


class Usage(NamedTuple):
    """What was found about one database."""

    sqlite_lock_pid: int | None = None  # a process holding a SQLite lock on it (0: unknown pid)
    open_in: int | None = None  # a process with it open
    unseen: int = 0  # processes that could have it open but could not be inspected
    lease: bool | None = None  # True: no other descriptor anywhere; None: could not tell


def lock_holder(fd: int, start: int, length: int) -> int | None:
    """The pid holding a lock that conflicts with a write lock on the range (0 when the kernel
    does not say), None when nobody does."""
    probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
    try:
        out = fcntl.fcntl(fd, fcntl.F_GETLK, probe)
    except OSError:
        return None
    kind, _whence, _start, _len, pid = struct.unpack(_FLOCK, out)
    return None if kind == fcntl.F_UNLCK else max(pid, 0)


def sqlite_lock(parent: Dir, name: str) -> int | None:
    """A process holding a SQLite lock on the database name in parent (or on its -shm).
    SourceError when a side file of it is no regular file (opening a FIFO would wait)."""
    check_side_files(parent.proc(name), parent.path / name)
    for fname, start, length in sqlite_lock_ranges(name):
        if parent.lstat(fname) is None:
            continue
        try:
            fd = os.open(fname, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent.fd)
        except OSError:
            continue
        try:
            holder = lock_holder(fd, start, length)
        finally:
            os.close(fd)
        if holder is not None:
            return holder
    return None


def _inode(parent: Dir, name: str) -> tuple[int, int] | None:
    st = parent.lstat(name)
    return None if st is None else (st.st_dev, st.st_ino)


def _could_open(pid: str, mode: int, uid: int, gid: int) -> bool:
    """Whether process pid's credentials allow it to open a file of this mode and owner."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return False  # exited meanwhile
    if status.get("Kthread", "0").strip() == "1":
        return False
    try:
        euid = int(status["Uid"].split()[1])
        groups = {int(g) for g in status["Groups"].split()} | {int(status["Gid"].split()[1])}
    except (KeyError, IndexError, ValueError):
        return True
    if euid == 0:
        return True
    if euid == uid:
        return bool(mode & 0o600)
    if gid in groups:
        return bool(mode & 0o060)
    return bool(mode & 0o006)


def scan_processes(
    inodes: set[tuple[int, int]], mode: int, uid: int, gid: int
) -> tuple[int | None, int]:
    """(a process with one of the inodes open, count of processes that could have one open but
    whose descriptors cannot be read)."""
    me = str(os.getpid())
    unseen = 0
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit() and p != me]
    except OSError:
        return None, 1
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            continue
        except OSError:
            if _could_open(pid, mode, uid, gid):
                unseen += 1
            continue
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in inodes:
                return int(pid), unseen
    return None, unseen


def lease_free(parent: Dir, name: str) -> bool | None:
    """True when no descriptor of the file is open anywhere but ours (a write lease was granted
    and given back), False when one is, None when leases cannot be taken here (not the owner,
    or a filesystem without them)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent.fd)
    except OSError:
        return None
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    except OSError as exc:
        return False if exc.errno in (errno.EAGAIN, errno.EBUSY) else None
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return True
    finally:
        os.close(fd)


def examine(parent: Dir, name: str) -> Usage:
    """Everything casnap can find out about the use of database name in parent."""
    holder = sqlite_lock(parent, name)
    if holder is not None:
        return Usage(sqlite_lock_pid=holder)
    files = [name, *(name + s for s in SQLITE_SIDE_SUFFIXES)]
    inodes = {i for i in (_inode(parent, f) for f in files) if i is not None}
    st = parent.lstat(name)
    if st is None or not inodes:
        return Usage()
    pid, unseen = scan_processes(inodes, st.st_mode, st.st_uid, st.st_gid)
    if pid is not None or not unseen:
        return Usage(open_in=pid, unseen=unseen)
    free = [lease_free(parent, f) for f in files if parent.lstat(f) is not None]
    if any(x is False for x in free):
        return Usage(unseen=unseen, lease=False)
    return Usage(unseen=unseen, lease=True if all(free) else None)


def refuse_if_in_use(parent: Dir, name: str, shown: str, force: bool) -> None:
    """DatabaseBusy when the database may not be replaced or removed now.

    A SQLite lock refuses even with force: replacing the file would delete a hot journal or a WAL
    that a live connection is using. Otherwise force skips the check for open descriptors.
    """
    use = examine(parent, name)
    if use.sqlite_lock_pid is not None:
        who = f"process {use.sqlite_lock_pid}" if use.sqlite_lock_pid else "another process"
        raise DatabaseBusy(
            f"{shown} is in use: {who} holds a SQLite lock on it (a transaction, or a "
            "connection to a WAL database); stop the app first"
        )
    if force:
        return
    if use.open_in is not None:
        raise DatabaseBusy(f"{shown} is open in process {use.open_in}; stop it first", True)
    if use.unseen and use.lease is False:
        raise DatabaseBusy(
            f"{shown} is open in a process casnap cannot inspect (another user's); stop it first",
            True,
        )
    if use.unseen and use.lease is None:
        raise DatabaseBusy(
            f"cannot tell whether {shown} is in use: {use.unseen} process(es) of other users "
            "could not be inspected; run as root or as the app's user",
            True,
        )


class Replaced(NamedTuple):
    """A database a swap renamed over: its path, its stat before the rename, and the processes
    that may have it open (when the checkout was forced, those that had before, unless it was
    a WAL database: see refuse_opened)."""

    shown: Path
    old: os.stat_result
    allowed: frozenset[int]


def openers(st: os.stat_result) -> frozenset[int]:
    """The processes (but this one) with the file of stat st open, by its inode, as far as they
    can be inspected."""
    me = os.getpid()
    found: set[int] = set()
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != me]
    except OSError:
        return frozenset()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                fst = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (fst.st_dev, fst.st_ino) == (st.st_dev, st.st_ino):
                found.add(pid)
                break
    return frozenset(found)


def refuse_opened(replaced: Sequence[Replaced]) -> None:
    """DatabaseBusy naming a process that has one of the databases a swap just renamed over
    open by its old inode (and may not), seen while the locks on them are still held.

    Such a process opened the database after the last look for users (a connection per
    request) and waits on those locks. Released, it would go on with the old file: in WAL mode
    it opens the -wal and -shm by their names, beside the restored database, and commits pages
    of the old one into that log, which the restored database then reads as its own. So
    --force lets be only the processes that had a rollback-journal database open before (a
    write of theirs fails: SQLite sees its file moved)."""
    for item in replaced:
        new = sorted(openers(item.old) - item.allowed)
        if new:
            raise DatabaseBusy(
                f"{item.shown} was opened by process {new[0]} while the checkout swapped it in "
                "(an app still at work?); stop the app first"
            )


@contextlib.contextmanager
def held_sqlite_locks(parent: Dir, name: str, shown: Path) -> Iterator[None]:
    """Hold write locks on the lock bytes of the live database (and of its -shm) as SQLite
    takes them, so no connection starts a transaction while it is replaced; DatabaseBusy when a
    connection holds one. Closing the descriptors releases them. SourceError when a side file
    of it is no regular file."""
    check_side_files(parent.proc(name), shown)
    fds = []
    try:
        for fname, start, length in sqlite_lock_ranges(name):
            if parent.lstat(fname) is None:
                continue
            try:
                fd = parent.open_file(fname, os.O_RDWR)
            except CasnapError:
                continue  # not writable by us: the rename still replaces it
            fds.append(fd)
            lock = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
            try:
                fcntl.fcntl(fd, fcntl.F_SETLK, lock)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    raise DatabaseBusy(
                        f"{shown} is in use: a process holds a SQLite lock on it; stop the app "
                        "first"
                    ) from exc
                raise from_oserror(exc, f"locking {shown}") from exc
        yield
    finally:
        for fd in fds:
            os.close(fd)
