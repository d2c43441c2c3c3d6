"""The command line's signals: Ctrl-C, SIGTERM and SIGHUP end a command by unwinding it (its lock
released, its temp files removed, one line), never in the middle of a step that must not stop
half-way (`uninterrupted`).

Python runs a signal's handler in the main thread between two bytecodes, wherever it is; an
exception raised there can land where it is lost (a finalizer, which Python prints and drops) or
where it leaves a lock held (between importlib's taking of its import lock and the `try` that
releases it: another thread importing would then wait forever). In both places the signal is
sent again a moment later instead. A program that imports casnap keeps its own handling: only
the command line installs these handlers.
"""

from __future__ import annotations

import _thread
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

from casnap.errors import Terminated

# the signals that end the command line as Ctrl-C does, and what it says when one does
STOPPING: dict[int, str] = {signal.SIGTERM: "terminated", signal.SIGHUP: "hung up"}
_AGAIN_AFTER = 0.01  # seconds after which a signal that could not be raised is sent again

_stopping = False  # a signal raised its exception: the command unwinds
_first = 0  # that signal
_deferred = 0  # a first signal that could not be raised where it landed, sent again meanwhile
_ended = False  # the command is done: a signal ends the process at once
_depth = 0  # uninterrupted blocks the main thread is in
_held_back: BaseException | None = None  # what a signal raised meanwhile
_exit_code: int | None = None  # the exit a signal asked for once the command was done


def _loading(signum: int, frame: FrameType | None) -> None:
    """A signal while the command line loads its modules, before it has done anything: one
    line (given SAY_LAST seconds: stderr may be a pipe nobody reads) and the shell's exit code
    for it (130 for Ctrl-C)."""
    _after(SAY_LAST, os._exit, 128 + signum)
    os.write(2, f"casnap: {STOPPING.get(signum, 'interrupted')}\n".encode())
    os._exit(128 + signum)


def _after(seconds: float, action: Callable[..., object], *args: int) -> None:
    """Run action(*args) in seconds, on a bare thread of its own (nothing waits for it at exit);
    nothing while the interpreter shuts down."""

    def run() -> None:
        time.sleep(seconds)
        action(*args)

    try:
        _thread.start_new_thread(run, ())
    except RuntimeError:  # shutting down: nothing is left to stop
        pass


def quiet_while_loading(early: object = None) -> None:
    """Ctrl-C, SIGTERM and SIGHUP end the process with one line until `handle`; an ignored one
    (a shell's background job, `nohup`) stays ignored. early: a handler the entry point set
    for Ctrl-C while it loaded this module, replaced as Python's own is."""
    try:
        current = signal.getsignal(signal.SIGINT)
        if current is signal.default_int_handler or (early is not None and current is early):
            signal.signal(signal.SIGINT, _loading)
        for signum in STOPPING:
            if signal.getsignal(signum) is signal.SIG_DFL:
                signal.signal(signum, _loading)
    except ValueError:  # not the main thread
        pass


def handle() -> None:
    """Once the command line has loaded: Ctrl-C raises KeyboardInterrupt, SIGTERM and SIGHUP
    Terminated (where quiet_while_loading set them, or they are at their defaults)."""
    try:
        if signal.getsignal(signal.SIGINT) in (_loading, signal.default_int_handler):
            signal.signal(signal.SIGINT, _interrupted)
        for signum in STOPPING:
            if signal.getsignal(signum) in (_loading, signal.SIG_DFL):
                signal.signal(signum, _terminated)
        sys.unraisablehook = _unraisable
    except ValueError:  # not the main thread
        pass


def _terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM or SIGHUP: Terminated in the main thread."""
    _stop(signum, frame, lambda: Terminated(STOPPING[signum], signum))


def _interrupted(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C: KeyboardInterrupt, as Python's own handler."""
    _stop(signum, frame, KeyboardInterrupt)


def _stop(signum: int, frame: FrameType | None, make: Callable[[], BaseException]) -> None:
    """Raise the first signal's exception; ignore those after it, whichever they are (one
    raised while the command unwinds would cut its clean-up short, such as a lock's release:
    SIGKILL is for a clean-up that hangs). Once the command is done, a signal ends the process
    at once: all that is left is its last line, perhaps to a pipe nobody reads."""
    global _stopping, _exit_code, _first, _deferred
    if _ended:
        code = 128 + (_first if _stopping else signum)
        if _depth:
            _exit_code = _exit_code or code
            return
        os._exit(code)
    if _stopping or _deferred not in (0, signum):  # the first, deferred, is sent again soon
        return
    if _unsafe(frame):
        _deferred = signum
        _send_again(signum)
        return
    _stopping, _first, _deferred = True, signum, 0
    _deliver(make())


def _unsafe(frame: FrameType | None) -> bool:
    """Whether an exception raised in frame could leave importlib's locks held."""
    return frame is not None and frame.f_code.co_filename.startswith("<frozen importlib")


def _deliver(exc: BaseException) -> None:
    """Raise exc now, or at the end of the uninterrupted block the main thread is in."""
    global _held_back
    if _depth:
        _held_back = _held_back or exc
        return
    raise exc


def _send_again(signum: int) -> None:
    """Send signum to this process again shortly."""
    _after(_AGAIN_AFTER, os.kill, os.getpid(), signum)


def _unraisable(args: sys.UnraisableHookArgs) -> None:
    """An exception Python could only print and drop (raised in a finalizer): the SIGTERM or
    Ctrl-C that raised it is sent again instead of being lost."""
    global _stopping, _deferred
    exc = args.exc_value
    if isinstance(exc, Terminated | KeyboardInterrupt):
        _stopping = False
        _deferred = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
        _send_again(_deferred)
    else:
        sys.__unraisablehook__(args)


class uninterrupted:  # noqa: N801 - used as a statement: `with uninterrupted():`
    """A step that must not stop half-way (a lock's release, the renames of a checkout's swap):
    SIGTERM and Ctrl-C, where the command line handles them, take effect when it ends. Python
    runs signal handlers in the main thread only, so in other threads this does nothing."""

    def __enter__(self) -> None:
        global _depth
        self.counted = threading.current_thread() is threading.main_thread()
        if self.counted:
            _depth += 1

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        global _depth, _held_back
        if self.counted:
            _depth -= 1
            if not _depth and _exit_code is not None:
                os._exit(_exit_code)
            if not _depth and _held_back is not None:
                held, _held_back = _held_back, None
                raise held


def ending() -> None:
    """The command is done (or failed) and says so: a signal now ends the process at once. When
    a signal ended it, its last line and output left to flush get SAY_LAST seconds (a pipe
    nobody reads would hold them for ever), then the process ends with the signal's code."""
    global _ended
    if _stopping and not _ended:
        _after(SAY_LAST, os._exit, 128 + _first)
    _ended = True


SAY_LAST = 2.0
