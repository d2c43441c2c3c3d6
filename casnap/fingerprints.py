"""Stat fingerprints of data-dir files: what tells a commit that a file is unchanged since the
last snapshot, and that a read of it was not disturbed by a writer."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from pathlib import Path

from casnap.constants import RACY_WINDOW_FINE_NS, RACY_WINDOW_NS, STAT_SETTLE_NS


class NotRegularFile(OSError):
    """A data-dir file found as something else when opened (a folder, a FIFO, a device, a
    symbolic link): it was replaced since the scan."""


def open_source(path: str | os.PathLike[str]) -> int:
    """A descriptor for reading a data-dir file, never through a symbolic link swapped in since
    the scan (its last component), nor anything but a regular file: opened without waiting, so a
    FIFO swapped in is refused instead of waited on forever for a writer (NotRegularFile)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_NONBLOCK)
    except BlockingIOError:  # a lease another process holds: only a regular file has one
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegularFile(exc.errno, "now a symbolic link", os.fspath(path)) from exc
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(errno.EINVAL, "no longer a regular file", os.fspath(path))
        os.set_blocking(fd, True)  # as any read of a file expects
    except BaseException:
        os.close(fd)
        raise
    return fd


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
