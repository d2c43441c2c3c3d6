"""The command line's stdout when it cannot take the output. A reader that leaves before its end
(`casnap log | head -1`): the command ends quietly with exit 141 (errors.OutputClosed), as a
process SIGPIPE ended looks to a shell and as git and restic end then. A stdout closed from the
start (`>&-`), or one whose write fails (a full disk): one line saying so, as `cat` says, and
what the command did before (a commit's stored snapshot)."""

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

from casnap.errors import CasnapError, InvalidArgument, OutputClosed, from_oserror

if TYPE_CHECKING:
    from typing_extensions import Buffer


CLOSED = "standard output is closed: there is nowhere to write the output (`> FILE` keeps it)"


class StdoutFailed(OSError):
    """A write to the command line's stdout failed (its errno kept: EPIPE, ENOSPC, EIO, EBADF
    for a stdout closed from the start); every write after it is dropped, so flushing what is
    left at the exit cannot fail again."""


@contextmanager
def reader_gone() -> Iterator[None]:
    """A write that failed because the reader of stdout or stderr left (EPIPE) becomes
    OutputClosed (click would have made it exit 1); any other failed write to stdout, the one
    line output_failed words."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.EPIPE and any(reader_left(fd) for fd in (1, 2)):
            raise OutputClosed() from exc
        if isinstance(exc, StdoutFailed):
            raise output_failed(exc) from exc
        raise


def output_failed(exc: OSError, done: str = "") -> CasnapError:
    """The error for a write to stdout that failed: a stdout closed from the start is a usage
    error, as for `cat`; a full disk is one as anywhere. done: what the command did before,
    which the output only reports (`snapshot ID is stored`)."""
    if exc.errno == errno.EBADF:
        err: CasnapError = InvalidArgument(CLOSED)
    else:
        err = from_oserror(exc, "writing the output to standard output failed")
    return type(err)(f"{err}; {done}") if done else err


def stdout_closed() -> bool:
    """True when the process started with its stdout closed (`>&-`): nothing can be printed."""
    out = sys.stdout
    return out is None or isinstance(getattr(getattr(out, "buffer", None), "raw", None), _Closed)


@contextmanager
def printing(done: str) -> Iterator[None]:
    """Output printed once the command's work is done (a commit's id): a stdout closed from the
    start, or a write to it that fails, is an error that says what is done. A reader that left
    (`| head`) still ends the command quietly."""
    if stdout_closed():
        raise output_failed(StdoutFailed(errno.EBADF, CLOSED), done)
    try:
        yield
    except StdoutFailed as exc:
        if exc.errno == errno.EPIPE:
            raise
        raise output_failed(exc, done) from exc


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
    count as done and dropped the rest, so a command ended with exit 0 on output cut short. A
    failed write raises StdoutFailed; the writes after it are dropped."""

    failed = False

    def write(self, data: Buffer, /) -> int:
        view = memoryview(data).cast("B")
        if self.failed:
            return len(view)
        done = 0
        try:
            while done < len(view):
                n = super().write(view[done:])
                if n is None:  # a non-blocking descriptor that would block: None, as FileIO says
                    return done or cast(int, None)
                done += n
        except OSError as exc:
            self.failed = True
            raise StdoutFailed(exc.errno, exc.strerror) from exc
        return done


class _Closed(io.RawIOBase):
    """The stdout of a process started with it closed (Python gives it none): its first write
    fails (StdoutFailed, EBADF), so a command with output to print fails as `cat` does, where
    click printed nothing and the command ended with exit 0."""

    failed = False

    def writable(self) -> bool:
        return True

    def write(self, data: Buffer, /) -> int:
        if self.failed:
            return len(memoryview(data))
        self.failed = True
        raise StdoutFailed(errno.EBADF, CLOSED)


def whole_writes() -> None:
    """Make sys.stdout write through _WholeWrites, with the same encoding and buffering (or,
    started without one, through _Closed); what its encoding cannot hold (a name of emoji under
    a latin-1 locale) is written escaped, as Python writes stderr, not an error."""
    out = sys.stdout
    if out is None:
        sys.stdout = io.TextIOWrapper(io.BufferedWriter(_Closed()), encoding="utf-8")
        return
    if not isinstance(out, io.TextIOWrapper):
        return
    try:
        raw = _WholeWrites(out.fileno(), "w", closefd=False)
    except (OSError, ValueError):  # its descriptor closed since
        return
    out.flush()
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(raw),
        encoding=out.encoding,
        errors="backslashreplace" if out.errors == "strict" else out.errors,
        line_buffering=out.line_buffering,
    )
