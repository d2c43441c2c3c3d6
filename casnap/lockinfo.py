"""Who holds a lock: the fields of a lock object, read back checked, and what they say of their
holder: whether it is a process of this machine (its pid can then be checked here), whether the
lock is stale, how it is described in messages (docs/FORMAT.md, "Locks").

A lock names a process of this machine only when its host name, its PID namespace and its boot
id are this machine's: a pid means nothing under another kernel (another machine of the same
name, such as a cloned VM; this machine before a reboot) nor in another PID namespace (a
container sharing the host name). Fields a lock of an older casnap lacks (`pidns`, `boot`) are
not compared.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import NamedTuple

from casnap import fsutil
from casnap.backends.base import Backend
from casnap.constants import LOCK_STALE_SECONDS
from casnap.errors import IntegrityError, ObjectMissing
from casnap.procs import boot_id, pid_alive, pid_namespace

# A lock object casnap writes is a few hundred bytes (a folder path of PATH_MAX at most, sealed
# when the repository is encrypted); one listed larger is not fetched: another tool put it there,
# and every command taking a lock would download it whole.
LOCK_MAX_BYTES = 64 * 1024

# A lock dated further ahead of this machine's clock than this is said to be (a skew that
# small is usual between hosts, and a lock is refreshed every few minutes anyway)
CLOCK_AHEAD_SECONDS = 60


class LockInfo(NamedTuple):
    """Who holds a lock."""

    key: str
    host: str
    pid: int
    start: int | None
    exclusive: bool
    operation: str
    time: float  # when this lock object was written: taken, or last refreshed
    readable: bool = True  # False: the file is not a lock casnap can read (damaged or foreign)
    taken: float | None = None  # when the holder took the lock (None: written before refreshes)
    pidns: int | None = None  # the holder's PID namespace (None: written before it was recorded)
    folder: str | None = None  # the data dir a commit reads or a checkout writes (its real path)
    boot: str | None = None  # the holder's kernel boot id (None: written before it was recorded)

    def describe(self) -> str:
        if not self.readable:
            return f"lock file {self.key} cannot be read (damaged, or not written by casnap)"
        kind = "exclusive" if self.exclusive else "shared"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.taken or self.time))
        of = f" of {self.folder}" if self.folder else ""
        return (
            f"{kind} lock held by {self.operation}{of} (pid {self.pid} on {self.host}"
            f"{self._elsewhere()}, since {since})"
        )

    def _elsewhere(self) -> str:
        """What tells a holder of this host name apart from this machine's processes, when
        something does: a lock that names this host and is not judged by its pid says why."""
        if self.host != fsutil.hostname():
            return ""
        if self.boot is not None and self.boot != boot_id():
            return " under another boot"  # another machine of this name, or before a reboot
        if self.pidns is not None and self.pidns != pid_namespace():
            return " in another PID namespace"
        return ""

    def clashes(self, operation: str, folder: str | None) -> bool:
        """Whether a shared holder and we may not run at once all the same: a checkout and a
        commit or checkout of one folder, on one host, in two processes (a commit would store
        a mix of the files the checkout swaps; the pre-checkout commit runs inside its own
        checkout, in its process)."""
        return (
            folder is not None
            and self.folder == folder
            and "checkout" in (operation, self.operation)
            and self.local()
            and self.pid != os.getpid()
        )

    def stale(self, stale_after: float = LOCK_STALE_SECONDS) -> bool:
        """True for a lock not refreshed for stale_after seconds (any host), or of a process of
        this machine that no longer runs."""
        return self.stale_reason(stale_after) is not None

    def local(self) -> bool:
        """Whether the holder's pid means a process here: same host name, PID namespace and
        boot (a container sharing the host name has pids of its own; another machine of the
        same name, or this one before a reboot, another kernel). A field the lock lacks
        (written by an older casnap) is not compared."""
        same_ns = self.pidns is None or self.pidns == pid_namespace()
        same_boot = self.boot is None or self.boot == boot_id()
        return self.host == fsutil.hostname() and same_ns and same_boot

    def stale_reason(self, stale_after: float = LOCK_STALE_SECONDS) -> str | None:
        """Why the lock is stale (see stale), None when it is not."""
        if not self.readable:
            return None
        if self.local() and not pid_alive(self.pid, self.start):
            return "its process no longer runs"
        age = time.time() - self.time
        if age > stale_after:
            return f"not refreshed for {duration(age)}"
        return None

    def conflict_message(self, location: str) -> str:
        """Why a repository is locked, and what to do if the holder is gone."""
        if not self.readable:
            return (
                f"repository {location} is locked: lock file {location}/{self.key} cannot be "
                "read (damaged, or not written by casnap); `casnap unlock` removes it"
            )
        hint = ""
        ahead = self.time - time.time()
        if ahead > CLOCK_AHEAD_SECONDS:  # not stale before then: the clocks, not the holder
            hint = (
                f"; its time is {duration(ahead)} ahead of this machine's clock (one of the two "
                "clocks is wrong), so it is not found stale before then: if that process no "
                "longer runs, `casnap unlock --force` removes the lock now"
            )
        elif not self.local():
            hint = (
                "; a lock its holder stops refreshing is stale after "
                f"{duration(LOCK_STALE_SECONDS)}: if that process no longer runs, "
                "`casnap unlock --force` removes the lock now"
            )
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


def duration(seconds: float) -> str:
    """A duration for messages: "45 s", "31 min", "26 h"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def _pid(x: object) -> int:
    """A holder's pid: a process id (0 and negative ones name process groups to kill)."""
    if type(x) is not int or not 0 < x < 1 << 31:
        raise ValueError(f"not a process id: {x!r:.40}")
    return x


def _optional_int(x: object) -> int | None:
    """An integer field that may be null (start time, PID namespace)."""
    if x is not None and (type(x) is not int or not 0 <= x < 1 << 64):
        raise ValueError(f"not an integer field: {x!r:.40}")
    return x


def _boot(x: object) -> str | None:
    """A boot id, which may be null: a short printable string (Linux's is a UUID)."""
    if x is not None and (type(x) is not str or not 0 < len(x) <= 64 or not x.isprintable()):
        raise ValueError(f"not a boot id: {x!r:.40}")
    return x


# The times a lock may carry: from the epoch to the end of year 9999, what every clock can show
# (a larger finite number made time.localtime fail while the lock was described)
_LAST_TIME = 253402300799.0


def _seconds(x: object) -> float:
    """A time in seconds since the epoch, within [0, _LAST_TIME]; ValueError for anything else
    (a float raises OverflowError past its own range)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(float(x)):
        raise ValueError(f"not a time: {x!r:.40}")
    if not 0 <= float(x) <= _LAST_TIME:
        raise ValueError(f"a time no clock shows: {x!r:.40}")
    return float(x)


def read_lock(backend: Backend, key: str, size: int | None = None) -> LockInfo | None:
    """The lock object at key; None when it is gone (removed meanwhile); a file that is no lock
    casnap wrote (damaged, torn, foreign, or listed as larger than LOCK_MAX_BYTES: not fetched)
    is an unreadable lock, held by an unknown process, exclusive. One that cannot be fetched (an
    I/O error, a store that keeps failing, no permission) raises: its holder may be running, and
    a gc that went on without it would delete what that holder's commit needs."""
    if size is not None and size > LOCK_MAX_BYTES:
        return LockInfo(key, "?", -1, None, True, "unknown", 0.0, readable=False)
    try:
        d = json.loads(backend.get(key))
        return LockInfo(
            key,
            str(d["host"]),
            _pid(d["pid"]),
            _optional_int(d.get("start")),
            bool(d["exclusive"]),
            str(d.get("operation", "?")),
            _seconds(d.get("time", 0)),
            taken=_seconds(d["taken"]) if d.get("taken") is not None else None,
            pidns=_optional_int(d.get("pidns")),
            folder=str(d["folder"]) if d.get("folder") is not None else None,
            boot=_boot(d.get("boot")),
        )
    except ObjectMissing:
        return None  # removed meanwhile
    except IntegrityError:  # damaged, or a sealed lock that fails to open: held, as below
        return LockInfo(key, "?", -1, None, True, "unknown", 0.0, readable=False)
    except (ValueError, KeyError, TypeError, OverflowError, AttributeError, RecursionError):
        # a torn or foreign lock file: treat as held by an unknown process, exclusive
        return LockInfo(key, "?", -1, None, True, "unknown", 0.0, readable=False)


def this_machine() -> dict[str, object]:
    """The fields of a lock that name this process's machine: host name, PID namespace, boot."""
    return {"host": fsutil.hostname(), "pidns": pid_namespace(), "boot": boot_id()}
