"""Processes: is one still running (to tell stale locks and leftover temp files from live ones),
the environment of the commands casnap runs for the user, Ctrl-C while the command line loads,
and SIGTERM once it runs (Terminated: the command unwinds as for Ctrl-C)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import TYPE_CHECKING

from casnap.errors import Terminated

if TYPE_CHECKING:
    import subprocess

# Settings the command line gives its own process's libraries at start (see set_own_environ).
_OWN: dict[str, str] = {}


def set_own_environ(key: str, value: str) -> None:
    """Set an environment variable for this process's libraries unless the user set it; the
    commands casnap runs for the user (user_environ) do not inherit it."""
    if key not in os.environ:
        os.environ[key] = value
        _OWN[key] = value


def user_environ() -> dict[str, str]:
    """The environment as the user gave it, for the commands casnap runs on their behalf (a
    smoke command, a password command): without the settings of set_own_environ."""
    return {k: v for k, v in os.environ.items() if k not in _OWN or _OWN[k] != v}


def pid_namespace() -> int | None:
    """This process's PID namespace (its inode; None where there is no /proc): processes of
    another namespace, such as a container sharing the host name, have pids that mean nothing
    here."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def process_start_time(pid: int) -> int | None:
    """Kernel start time of a process (clock ticks since boot), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return int(data[data.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int, start: int | None = None) -> bool:
    """True when process pid runs and (where start is known) is the process that started then."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if start is not None:
        now = process_start_time(pid)
        if now is not None and now != start:
            return False
    return True


def _interrupted_while_loading(signum: int, frame: object) -> None:
    """Ctrl-C while the command line loads its modules, before it has done anything: one line
    and exit 130 (errors.EXIT_CODES: interrupted)."""
    os.write(2, b"casnap: interrupted\n")
    os._exit(130)


def quiet_interrupts_while_loading() -> None:
    """Ctrl-C ends the process quietly until interrupts_back; an ignored SIGINT (a shell's
    background job) stays ignored."""
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _interrupted_while_loading)
    except ValueError:  # not the main thread
        pass


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM: Terminated in the main thread, once (a second SIGTERM while the command unwinds
    would cut its clean-up short; SIGKILL is for a clean-up that hangs)."""
    global _terminating
    if not _terminating:
        _terminating = True
        _deliver(Terminated("terminated"))


def _interrupted(signum: int, frame: object) -> None:
    """Ctrl-C once the command line has loaded: KeyboardInterrupt, as Python's own handler."""
    _deliver(KeyboardInterrupt())


def _deliver(exc: BaseException) -> None:
    """Raise exc now, or at the end of the uninterrupted block the main thread is in."""
    global _held_back
    if _depth:
        _held_back = _held_back or exc
        return
    raise exc


_terminating = False
_depth = 0  # uninterrupted blocks the main thread is in
_held_back: BaseException | None = None  # what a signal raised meanwhile


class uninterrupted:  # noqa: N801 - used as a statement: `with uninterrupted():`
    """A step that must not stop half-way (a lock's release, the renames of a checkout's swap):
    SIGTERM and Ctrl-C, where the command line handles them, take effect when it ends. Python
    runs signal handlers in the main thread only, so in other threads this does nothing."""

    def __enter__(self) -> None:
        global _depth
        if threading.current_thread() is threading.main_thread():
            _depth += 1
            self.counted = True
        else:
            self.counted = False

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        global _depth, _held_back
        if self.counted:
            _depth -= 1
            if not _depth and _held_back is not None:
                held, _held_back = _held_back, None
                raise held


def ending() -> None:
    """The command is done and the process exits: a SIGTERM now changes nothing."""
    global _terminating
    _terminating = True


def _unraisable(args: sys.UnraisableHookArgs) -> None:
    """An exception Python could only print and drop (raised in a finalizer, such as a weakref
    callback of importlib's module locks): a SIGTERM or Ctrl-C that raised it is sent again a
    moment later, when the main thread has left the finalizer, instead of being lost."""
    again = {Terminated: signal.SIGTERM, KeyboardInterrupt: signal.SIGINT}.get(
        type(args.exc_value)  # type: ignore[arg-type]
    )
    if again is None:
        sys.__unraisablehook__(args)
        return
    if again == signal.SIGTERM:
        global _terminating
        _terminating = False
    timer = threading.Timer(0.01, os.kill, (os.getpid(), again))
    timer.daemon = True
    try:
        timer.start()
    except RuntimeError:  # the interpreter is shutting down: nothing is left to stop
        pass


def terminate_gracefully() -> None:
    """SIGTERM ends the command line as Ctrl-C does (Terminated): its lock released, its temp
    files removed, one line; an ignored SIGTERM stays ignored. The command line only: a program
    that imports casnap keeps its own handling."""
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _terminated)
            sys.unraisablehook = _unraisable
    except ValueError:  # not the main thread
        pass


def end_child(proc: subprocess.Popen[bytes], group: bool = False) -> None:
    """Stop a command casnap runs for the user (a smoke or password command) when casnap is
    interrupted while it waits for it: SIGTERM (to its process group, when it has its own),
    SIGKILL after CHILD_GRACE seconds. Popen's own exit would wait for it without end."""
    import subprocess

    for sig, wait in ((signal.SIGTERM, CHILD_GRACE), (signal.SIGKILL, None)):
        try:
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


CHILD_GRACE = 2.0  # seconds an interrupted child command has to end before it is killed


def interrupts_back() -> None:
    """Ctrl-C is a KeyboardInterrupt again (where quiet_interrupts_while_loading set it), held
    back while the main thread is in an uninterrupted block."""
    if signal.getsignal(signal.SIGINT) is _interrupted_while_loading:
        signal.signal(signal.SIGINT, _interrupted)
