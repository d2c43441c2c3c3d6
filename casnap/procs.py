"""Processes: is one still running (to tell stale locks and leftover temp files from live ones),
which kernel runs them (its boot id: a pid means a process here only under it), and the
commands casnap runs for the user (a smoke or a password command): their environment, and
stopping them with casnap."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from casnap.signals import uninterrupted

if TYPE_CHECKING:
    from subprocess import Popen

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


_BOOT: list[str | None] = []  # read once: it changes only with the kernel


def boot_id() -> str | None:
    """The running kernel's boot id (Linux: /proc/sys/kernel/random/boot_id, a random UUID drawn
    at each boot; None where there is none): two machines of one host name, or one machine
    before and after a reboot, have different ones, so a pid means a process here only under
    this one. Containers share their host's."""
    if not _BOOT:
        try:
            with open("/proc/sys/kernel/random/boot_id", "rb") as f:
                text = f.read(100).decode("ascii").strip()
        except (OSError, UnicodeDecodeError):
            text = ""
        _BOOT.append(text if 0 < len(text) <= 64 and text.isprintable() else None)
    return _BOOT[0]


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


@contextlib.contextmanager
def child(args: str | list[str], group: bool = False, **popen: Any) -> Iterator[Popen[bytes]]:
    """Run a command for the user (a smoke or a password command) for the block, which waits for
    it: started whole (a SIGTERM meanwhile waits until Popen returns, which else could leave it
    running unknown), and stopped with casnap when an error or an interrupt ends the block
    (`stop`): Popen's own exit would wait for it without end. group: in a process group of its
    own, stopped whole. OSError when it cannot be started."""
    import subprocess

    proc: Popen[bytes] | None = None
    try:
        with uninterrupted():
            proc = subprocess.Popen(args, process_group=0 if group else None, **popen)
        yield proc
    except BaseException:
        if proc is not None:
            with uninterrupted():  # a second Ctrl-C must not skip the SIGKILL
                stop(proc, group)
        raise
    finally:
        if proc is not None:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def stop(proc: Popen[bytes], group: bool) -> None:
    """SIGTERM to a command and all it started (with group, every process of its group; else its
    descendants, found before the signal: once it ends they are another parent's), SIGKILL to
    whatever of them still runs after CHILD_GRACE seconds: a process it started could otherwise
    run on, holding casnap's stderr open for whoever reads it to its end."""
    import subprocess

    family = set() if group else _descendants(proc.pid)

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        for pid, start in family:
            if process_start_time(pid) == start:  # not a pid reused since
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)

    def running() -> bool:
        if proc.poll() is None:
            return True
        if group:
            return any(pgid == proc.pid for _pid, _ppid, pgid, _start in _processes())
        live = {pid for pid, _ppid, _pgid, _start in _processes()}
        return any(pid in live for pid, _start in family)

    send(signal.SIGTERM)
    deadline = time.monotonic() + CHILD_GRACE
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(CHILD_GRACE)
    while running() and time.monotonic() < deadline:
        time.sleep(0.02)
    if running():
        send(signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(CHILD_GRACE)


def _processes() -> list[tuple[int, int, int, int]]:
    """(pid, parent's pid, process group, start time) of every running process, zombies left
    out (a slow init reaps them late); none where there is no /proc."""
    found: list[tuple[int, int, int, int]] = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    data = f.read()
                fields = data[data.rindex(b")") + 2 :].split()
                if fields[0] != b"Z":
                    found.append((int(name), int(fields[1]), int(fields[2]), int(fields[19])))
            except (OSError, ValueError, IndexError):
                continue
    return found


def _descendants(pid: int) -> set[tuple[int, int]]:
    """The processes below pid, with their start times (to tell a pid reused later apart)."""
    children: dict[int, list[tuple[int, int]]] = {}
    for other, ppid, _pgid, start in _processes():
        children.setdefault(ppid, []).append((other, start))
    found: set[tuple[int, int]] = set()
    todo = list(children.get(pid, []))
    while todo:
        below = todo.pop()
        found.add(below)
        todo += children.get(below[0], [])
    return found


CHILD_GRACE = 2.0  # seconds an interrupted child command has to end before it is killed
