"""Processes: is one still running (to tell stale locks and leftover temp files from live ones),
the environment of the commands casnap runs for the user, Ctrl-C while the command line loads,
and SIGTERM once it runs (Terminated: the command unwinds as for Ctrl-C)."""

from __future__ import annotations

import os
import signal

from casnap.errors import Terminated

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
        raise Terminated("terminated")


_terminating = False


def ending() -> None:
    """The command is done and the process exits: a SIGTERM now changes nothing."""
    global _terminating
    _terminating = True


def terminate_gracefully() -> None:
    """SIGTERM ends the command line as Ctrl-C does (Terminated): its lock released, its temp
    files removed, one line; an ignored SIGTERM stays ignored. The command line only: a program
    that imports casnap keeps its own handling."""
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _terminated)
    except ValueError:  # not the main thread
        pass


def interrupts_back() -> None:
    """Ctrl-C is Python's KeyboardInterrupt again (where quiet_interrupts_while_loading set it)."""
    if signal.getsignal(signal.SIGINT) is _interrupted_while_loading:
        signal.signal(signal.SIGINT, signal.default_int_handler)
