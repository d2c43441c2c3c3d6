"""Repository locks: shared for commit/checkout, exclusive for gc and prune.

A lock is an object `locks/<random>` naming its holder. To take one, a process writes its own lock
first and then looks at the others; on conflict it removes its own and waits. Both sides of a race
therefore see each other and neither proceeds alone. A lock whose holder is a dead process on this
host is stale and removed by whoever finds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from casnap.backends.base import Backend
from casnap.constants import LOCK_WAIT_SECONDS
from casnap.errors import CasnapError, LockError
from casnap.procs import pid_alive, process_start_time


@dataclass(frozen=True)
class LockInfo:
    """Who holds a lock."""

    key: str
    host: str
    pid: int
    start: int | None
    exclusive: bool
    operation: str
    time: float

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.time))
        return (
            f"{kind} lock held by {self.operation} (pid {self.pid} on {self.host}, since {since})"
        )

    def stale(self) -> bool:
        return self.host == socket.gethostname() and not pid_alive(self.pid, self.start)


def _read(backend: Backend, key: str) -> LockInfo | None:
    try:
        d = json.loads(backend.get(key))
        return LockInfo(
            key,
            str(d["host"]),
            int(d["pid"]),
            d.get("start"),
            bool(d["exclusive"]),
            str(d.get("operation", "?")),
            float(d.get("time", 0)),
        )
    except CasnapError:
        return None  # removed meanwhile
    except (ValueError, KeyError, TypeError):
        # a torn or foreign lock file: treat as held by an unknown process, exclusive
        return LockInfo(key, "?", -1, None, True, "unknown", 0.0)


def holders(backend: Backend) -> list[LockInfo]:
    """Every lock currently present (stale ones included)."""
    out = []
    for key, _ in backend.list("locks/"):
        info = _read(backend, key)
        if info is not None:
            out.append(info)
    return out


def _conflict(backend: Backend, own: str, exclusive: bool) -> LockInfo | None:
    """The first live lock that conflicts with ours; stale locks found on the way are removed."""
    for info in holders(backend):
        if info.key == own:
            continue
        if info.stale():
            backend.delete(info.key)
            continue
        if exclusive or info.exclusive:
            return info
    return None


def lock_wait() -> float:
    """Seconds to wait for a conflicting lock: CASNAP_LOCK_WAIT when set, else the default."""
    text = os.environ.get("CASNAP_LOCK_WAIT", "")
    try:
        return max(0.0, float(text)) if text else LOCK_WAIT_SECONDS
    except ValueError:
        raise CasnapError(f"CASNAP_LOCK_WAIT={text!r} is not a number of seconds") from None


@contextlib.contextmanager
def locked(
    backend: Backend,
    operation: str,
    exclusive: bool,
    wait: float | None = None,
    notify: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold a repository lock for the duration of the block, waiting at most `wait` seconds for
    a conflicting one (default: CASNAP_LOCK_WAIT from the environment, else LOCK_WAIT_SECONDS);
    notify hears once what it waits for."""
    if wait is None:
        wait = lock_wait()
    key = f"locks/{uuid.uuid4().hex}"
    pid = os.getpid()
    body = json.dumps(
        {
            "host": socket.gethostname(),
            "pid": pid,
            "start": process_start_time(pid),
            "exclusive": exclusive,
            "operation": operation,
            "time": time.time(),
        }
    ).encode()
    deadline = time.monotonic() + wait
    delay = 0.05
    while True:
        backend.put(key, body)
        try:
            conflict = _conflict(backend, key, exclusive)
        except BaseException:
            # never leave our own lock behind: this process lives on and would block gc forever
            with contextlib.suppress(CasnapError):
                backend.delete(key)
            raise
        if conflict is None:
            break
        backend.delete(key)
        if time.monotonic() >= deadline:
            raise LockError(f"repository {backend.location} is locked: {conflict.describe()}")
        if notify is not None:
            notify(f"waiting up to {wait:.0f} s for the repository: {conflict.describe()}")
            notify = None
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 1.0)
    try:
        yield
    finally:
        _release(backend, key)


def _release(backend: Backend, key: str, tries: int = 3) -> None:
    """Remove our lock, retrying a failed delete: the work it guarded is done, and a lock left
    by a live process blocks every gc until that process exits."""
    for attempt in range(tries):
        try:
            backend.delete(key)
            return
        except CasnapError:
            if attempt == tries - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
