"""A reader that leaves the command line's output before its end (`casnap log | head -1`): the
command ends quietly with exit 141 (errors.OutputClosed), as a process SIGPIPE ended looks to a
shell and as git and restic end then."""

from __future__ import annotations

import errno
import io
import os
import select
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

from casnap.errors import OutputClosed

if TYPE_CHECKING:
    from typing_extensions import Buffer


@contextmanager
def reader_gone() -> Iterator[None]:
    """A write that failed because the reader of stdout or stderr left (EPIPE) becomes
    OutputClosed; click would have made it exit 1."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.EPIPE and any(reader_left(fd) for fd in (1, 2)):
            raise OutputClosed() from exc
        raise


def reader_left(fd: int) -> bool:
    """True when fd is a pipe (or socket) that nothing reads any more."""
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISFIFO(mode) and not stat.S_ISSOCK(mode):
            return False
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))
    except (OSError, ValueError):
        return False


def silence_closed() -> None:
    """Point stdout and stderr at /dev/null where their reader left, so nothing written or
    flushed before the exit fails on them again."""
    for fd in (1, 2):
        if reader_left(fd):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)


class _WholeWrites(io.FileIO):
    """A descriptor whose every write is taken whole: a pipe whose reader leaves in the middle
    of a large write then fails it with EPIPE. Python's buffered layer took the kernel's short
    count as done and dropped the rest, so a command ended with exit 0 on output cut short."""

    def write(self, data: Buffer, /) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            n = super().write(view[done:])
            if n is None:  # a non-blocking descriptor that would block: None, as FileIO says
                return done or cast(int, None)
            done += n
        return done


def whole_writes() -> None:
    """Make sys.stdout write through _WholeWrites, with the same encoding and buffering."""
    out = sys.stdout
    if not isinstance(out, io.TextIOWrapper):
        return
    try:
        raw = _WholeWrites(out.fileno(), "w", closefd=False)
    except (OSError, ValueError):  # started with its descriptor closed
        return
    out.flush()
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(raw),
        encoding=out.encoding,
        errors=out.errors,
        line_buffering=out.line_buffering,
    )
