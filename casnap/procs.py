"""Processes: is one still running (to tell stale locks and leftover temp files from live ones),
and the environment of the commands casnap runs for the user."""

from __future__ import annotations

import os

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
