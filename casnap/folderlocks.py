"""Folder locks of this host: flocks on a checkout's target and a commit's data dir, so a commit
and a checkout of one folder, or two checkouts into it, never run at once, whichever
repositories they use (the repository locks of locks.py see only one repository's holders)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from casnap.errors import LockError
from casnap.locks import lock_wait


@contextlib.contextmanager
def target_lock(
    fd: int, target: object, notify: Callable[[str], None] | None = None
) -> Iterator[None]:
    """An exclusive flock on a checkout target's folder (open as fd) while the block runs: two
    checkouts into one folder would each plan against what the other is about to replace and
    leave a mix of both snapshots, and a commit reading it (data_dir_lock) would store one.
    Waits up to lock_wait() (notify hears once that it waits), then LockError; a filesystem
    that cannot flock is used without."""
    holder = ("another checkout into {} or a commit of it", "it")
    with _flocked(fd, fcntl.LOCK_EX, target, holder, notify):
        yield


@contextlib.contextmanager
def data_dir_lock(
    data_dir: Path, target: object, notify: Callable[[str], None] | None = None
) -> Iterator[None]:
    """A shared flock on the data dir a commit reads while the block runs: a checkout into it
    holds an exclusive one (target_lock) from its plan to its last removal, from whichever
    repository it restores, which the repository locks of the commit's own repository do not
    show: the commit would store files of two states. So does a checkout into a folder that
    holds the data dir (another repository's data dir around this one): each folder above it
    is flocked shared too. A folder that cannot be opened is left to the commit to report (one
    above it, passed over); one that cannot be flocked is read without."""
    above = ("a checkout into {} (a folder holding the data dir)", "it")
    with contextlib.ExitStack() as stack:
        folders = (data_dir, *Path(os.path.realpath(data_dir)).parents)
        for depth, folder in enumerate(folders):
            try:
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                if depth == 0:
                    break
                continue
            stack.callback(os.close, fd)
            if depth == 0:
                holder, named = ("a checkout into {}", "it"), target
            else:
                holder, named = above, folder
            stack.enter_context(_flocked(fd, fcntl.LOCK_SH, named, holder, notify))
        yield


@contextlib.contextmanager
def _flocked(
    fd: int,
    mode: int,
    target: object,
    holder: tuple[str, str],
    notify: Callable[[str], None] | None,
) -> Iterator[None]:
    """flock(fd, mode) while the block runs, waiting up to lock_wait() for whoever holds it
    (holder: its description, with {} for the folder, and the word the folder is said with
    once it is named)."""
    wait = lock_wait()
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if notify is not None:
                what = holder[0].format(holder[1])
                notify(f"waiting up to {wait:.0f} s for {target}: {what} runs")
                notify = None
            if time.monotonic() >= deadline:
                raise LockError(
                    f"{holder[0].format(target)} is running (or a process holds a lock on that "
                    "folder); wait for it to end (CASNAP_LOCK_WAIT sets how long to wait)"
                ) from None
            time.sleep(0.05)
        except OSError:
            break
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
