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
from casnap.errors import AccessDenied, CasnapError, IntegrityError, LockError, ObjectMissing
from casnap.fsutil import seconds_from_env
from casnap.procs import pid_alive, process_start_time

# The lock every operation takes, declared once: shared for what only adds or reads (a commit adds
# packs and a manifest, never removes), exclusive for what deletes (gc would otherwise remove a
# pack a running commit is about to index). A dry run of a deleting operation only reads and takes
# the shared lock (Repository.lock).
EXCLUSIVE_OPERATIONS = frozenset(
    {"gc", "prune", "forget", "repair-index", "commit rollback", "key passwd", "key remove"}
)
SHARED_OPERATIONS = frozenset(
    {
        "commit",
        "copy",  # on both repositories: it adds to one and reads the other
        "checkout",
        "verify",
        "diff",
        "stats",
        "log",
        "show",
        "ls",
        "cat",
        "key list",
        "key add",
        "key export",
    }
)
# Operations that never write to the repository: they may run without a lock on a repository
# that cannot be written (--no-lock, or when the lock cannot be written).
READ_ONLY_OPERATIONS = frozenset(
    {"verify", "diff", "stats", "checkout", "log", "show", "ls", "cat"}
)


def exclusive(operation: str) -> bool:
    """Whether an operation takes the exclusive lock; ValueError for an undeclared one."""
    if operation in EXCLUSIVE_OPERATIONS:
        return True
    if operation in SHARED_OPERATIONS:
        return False
    raise ValueError(f"operation {operation!r} declares no lock mode")


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
    readable: bool = True  # False: the file is not a lock casnap can read (damaged or foreign)

    def describe(self) -> str:
        if not self.readable:
            return f"lock file {self.key} cannot be read (damaged, or not written by casnap)"
        kind = "exclusive" if self.exclusive else "shared"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.time))
        return (
            f"{kind} lock held by {self.operation} (pid {self.pid} on {self.host}, since {since})"
        )

    def stale(self) -> bool:
        """True for the lock of a process of this host that no longer runs."""
        return (
            self.readable
            and self.host == socket.gethostname()
            and not pid_alive(self.pid, self.start)
        )

    def conflict_message(self, location: str) -> str:
        """Why a repository is locked, and what to do if the holder is gone."""
        if not self.readable:
            return (
                f"repository {location} is locked: lock file {location}/{self.key} cannot be "
                "read (damaged, or not written by casnap); `casnap unlock` removes it"
            )
        hint = ""
        if self.host != socket.gethostname():
            hint = "; if that process no longer runs, `casnap unlock --force` removes the lock"
        return f"repository {location} is locked: {self.describe()}{hint}"

    def to_json(self) -> dict[str, object]:
        return {
            "key": self.key,
            "readable": self.readable,
            "host": self.host if self.readable else None,
            "pid": self.pid if self.readable else None,
            "operation": self.operation if self.readable else None,
            "exclusive": self.exclusive,
            "time": self.time if self.readable else None,
        }


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
    except ObjectMissing:
        return None  # removed meanwhile
    except IntegrityError:  # damaged, or a sealed lock that fails to open: held, as below
        return LockInfo(key, "?", -1, None, True, "unknown", 0.0, readable=False)
    except CasnapError:
        return None
    except (ValueError, KeyError, TypeError):
        # a torn or foreign lock file: treat as held by an unknown process, exclusive
        return LockInfo(key, "?", -1, None, True, "unknown", 0.0, readable=False)


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
    return seconds_from_env("CASNAP_LOCK_WAIT", LOCK_WAIT_SECONDS)


@contextlib.contextmanager
def locked(
    backend: Backend,
    operation: str,
    exclusive: bool,
    wait: float | None = None,
    unwritable: Callable[[str], None] | None = None,
    notify: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold a repository lock for the duration of the block, waiting at most `wait` seconds for
    a conflicting one (default: CASNAP_LOCK_WAIT from the environment, else LOCK_WAIT_SECONDS);
    notify hears once what it waits for.

    With unwritable, a shared lock that cannot be written for lack of permission or on a
    read-only filesystem is skipped: unwritable is told so in one line and the block runs."""
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
        try:
            backend.put(key, body)
        except AccessDenied as exc:
            if unwritable is None or exclusive:
                raise
            reason = str(exc).rsplit(": ", 1)[-1]  # "Read-only file system", "Permission denied"
            unwritable(f"cannot write a lock in {backend.location} ({reason}); reading without one")
            yield
            return
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
            raise LockError(conflict.conflict_message(backend.location))
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


def unlock(
    backend: Backend, force: bool = False
) -> tuple[list[tuple[LockInfo, str]], list[LockInfo]]:
    """Remove stale locks: those of processes of this host that no longer run, and lock files
    that cannot be read; with force, every lock. Returns (removed, why) pairs and the locks kept.

    Only force removes a lock whose holder may be running (here, or on another host: its pid
    cannot be checked from here): a running commit or gc would then lose its protection."""
    removed: list[tuple[LockInfo, str]] = []
    kept: list[LockInfo] = []
    for info in holders(backend):
        if not info.readable:
            why = "cannot be read"
        elif info.stale():
            why = "its process no longer runs"
        elif force:
            why = "forced"
        else:
            kept.append(info)
            continue
        backend.delete(info.key)  # a lock removed meanwhile is no error
        removed.append((info, why))
    return removed, kept
