"""Repository locks: shared for what adds or reads (commit, checkout, copy, ...), exclusive for what
deletes (gc, prune, forget, repair-index, ...): EXCLUSIVE_OPERATIONS and SHARED_OPERATIONS
below declare each.

A lock is an object `locks/<random>` naming its holder. To take one, a process writes its own lock
first and then looks at the others; on conflict it removes its own and waits. Both sides of a race
therefore see each other and neither proceeds alone. Several hosts may share a repository: while
the block runs, a thread writes the lock afresh every LOCK_REFRESH_SECONDS (a new object with the
new time, then the old one deleted: objects are immutable). A lock not refreshed for
LOCK_STALE_SECONDS is stale whatever its host, as is one of a dead process of this machine (its
host name, PID namespace and boot: lockinfo.py); whoever finds a stale lock removes it, and says
so. A holder whose own lock was removed meanwhile fails at the end of its block: its protection
was gone. One whose lock cannot be removed at the end (the store unreachable) has done its work:
it says so and succeeds, and the lock left goes stale (docs/FORMAT.md, "Locks").
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence

from casnap.backends.base import Backend
from casnap.constants import (
    LOCK_CONFIRM_SECONDS,
    LOCK_LOOKUP_SECONDS,
    LOCK_REFRESH_SECONDS,
    LOCK_STALE_SECONDS,
    LOCK_WAIT_SECONDS,
)
from casnap.errors import AccessDenied, CasnapError, LockError, StorageFull
from casnap.fsutil import seconds_from_env
from casnap.lockinfo import LockInfo, duration, read_lock, this_machine
from casnap.procs import process_start_time
from casnap.signals import uninterrupted

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
        "key add",
    }
)
# Operations that never write to the repository: they may run without a lock on a repository
# that cannot be written (--no-lock, or when the lock cannot be written).
READ_ONLY_OPERATIONS = frozenset(
    {"verify", "diff", "stats", "checkout", "log", "show", "ls", "cat"}
)


# The folders an operation reads first, listed with its lock's own check (one request on S3:
# Backend.list_several): a commit's repair notes and snapshots (its parent, for the stat cache),
# a checkout's snapshots (checked again under its lock). Only folders after locks/ in key order:
# a ranged listing returns keys in order, and a folder listed before locks/ could be seen in
# the middle of an exclusive holder's changes (docs/FORMAT.md, "One listing for the lock and
# the snapshots").
LISTED_WITH_LOCK = {"commit": ("repairs/", "snapshots/"), "checkout": ("snapshots/",)}


def exclusive(operation: str) -> bool:
    """Whether an operation takes the exclusive lock; ValueError for an undeclared one."""
    if operation in EXCLUSIVE_OPERATIONS:
        return True
    if operation in SHARED_OPERATIONS:
        return False
    raise ValueError(f"operation {operation!r} declares no lock mode")


LOCKS = "locks/"
Listing = dict[str, list[tuple[str, int]]]  # (key, size) of the objects of each folder listed


class Listed:
    """What the listing made with the lock held now found in the folders listed along with it
    (LISTED_WITH_LOCK): a folder it covered is read from here at no request, any other listed
    from backend when asked."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.found: Listing = {}

    def __call__(self, folder: str) -> list[tuple[str, int]]:
        found = self.found.get(folder)
        return list(found) if found is not None else list(self.backend.list(folder))

    def forget(self, folder: str) -> None:
        """Drop folder's listing (this process changed the folder)."""
        self.found.pop(folder, None)


def holders(backend: Backend, own: str | None = None) -> list[LockInfo]:
    """Every lock currently present (stale ones included) but own (not read: it is ours)."""
    return _holders(backend, backend.list(LOCKS), own)


def _holders(
    backend: Backend, listing: Iterable[tuple[str, int]], own: str | None
) -> list[LockInfo]:
    out = []
    for key, size in listing:
        if key == own:
            continue
        info = read_lock(backend, key, size)
        if info is not None:
            out.append(info)
    return out


def _conflict(
    backend: Backend,
    own: str,
    exclusive: bool,
    stale_after: float = LOCK_STALE_SECONDS,
    along: Sequence[str] = (),
    operation: str = "",
    data_dir: str | None = None,
    removed: Callable[[LockInfo, str], None] | None = None,
) -> tuple[LockInfo | None, Listing]:
    """The first live lock that conflicts with ours, stale locks found on the way removed (and
    removed told of each, with why it was stale); and what the folders `along` held, listed in
    the same request as locks/ where the store can (Backend.list_several)."""
    listed: Listing = {folder: [] for folder in along}
    found: list[tuple[str, int]] = []
    for key, size in backend.list_several((LOCKS, *along)) if along else backend.list(LOCKS):
        folder = (
            LOCKS if key.startswith(LOCKS) else next((f for f in along if key.startswith(f)), None)
        )
        if folder == LOCKS:
            found.append((key, size))
        elif folder is not None:
            listed[folder].append((key, size))
    for info in _holders(backend, found, own):
        why = info.stale_reason(stale_after)
        if why is not None:
            backend.delete(info.key)
            if removed is not None:
                removed(info, why)
            continue
        if exclusive or info.exclusive or info.clashes(operation, data_dir):
            return info, listed
    return None, listed


def lock_wait() -> float:
    """Seconds to wait for a conflicting lock: CASNAP_LOCK_WAIT when set, else the default."""
    return seconds_from_env("CASNAP_LOCK_WAIT", LOCK_WAIT_SECONDS)


class Held:
    """Our lock while its block runs: the key of its current object, written afresh every
    `refresh` seconds by a daemon thread (put the new object, then remove the old one, which
    says whether it was still there). A lock found removed, or not refreshed for `stale`
    seconds, is lost: refreshing stops, and `lost` says why. A holder about to delete asks
    `before_delete` first, a checkout `confirm` before it replaces a file: a lost lock stops
    it there."""

    def __init__(
        self,
        backend: Backend,
        key: str,
        record: dict[str, object],
        refresh: float,
        stale: float,
        operation: str = "",
    ) -> None:
        self.backend = backend
        self.key = key
        self.record = record
        self.refresh = refresh
        self.stale = stale
        self.operation = operation
        self.lost: str | None = None
        self.leftovers: list[str] = []  # old objects of ours a failed delete left behind
        self._last = time.monotonic()
        self._last_wall = time.time()
        self._confirmed = False  # by before_delete, at least once
        self._looked = (self._last, self._last_wall)  # the lock last seen there (both clocks)
        self._mutex = threading.Lock()  # one refresh at a time: the thread's or before_delete's
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="casnap-lock-refresh", daemon=True)
        with uninterrupted():  # else stop() could find it created but not started
            self._thread.start()
            _HOLDING.add(self)

    def _run(self) -> None:
        while not self._stop.wait(self.refresh):
            with self._mutex:
                if self.lost is not None or not self._refresh_once():
                    return

    def _refresh_once(self, strict: bool = False) -> bool:
        """Write the lock afresh; False once it is lost. A put that fails leaves the old object
        standing (lost only once it was not written for `stale` seconds); strict: raises."""
        new = _new_key()
        mono, wall = time.monotonic(), time.time()
        try:
            self.backend.put(new, _body(self.record, wall))
        except Exception as exc:  # noqa: BLE001 - a thread must not die with a traceback
            if strict:
                raise
            idle = self.unwritten()
            if idle > self.stale:
                self.lost = f"its lock could not be refreshed for {duration(idle)} ({exc})"
                return False
            return True  # the old object stands; try again next time
        old = self.key
        try:
            present = self.backend.remove(old)
        except Exception:  # noqa: BLE001 - cannot tell: the new object is written, go on
            present = True
            self.leftovers.append(old)  # removed again at release
        if not present:
            with contextlib.suppress(Exception):
                self.backend.delete(new)
            self.lost = "its lock was removed while it ran"
            return False
        self.key, self._last, self._last_wall = new, mono, wall
        self._looked = (mono, wall)
        return True

    def unwritten(self) -> float:
        """Seconds since the lock was last written (taken or refreshed): by the monotonic clock
        (it runs on while the process is stopped) or the wall clock (it catches up after the
        machine was suspended), whichever says longer."""
        return max(time.monotonic() - self._last, time.time() - self._last_wall)

    def before_delete(self, in_a_row: bool = False) -> None:
        """Called before each delete of a holder that deletes (gc, prune, forget, a commit's
        rollback): LockError when the lock is lost (see confirm); the first call writes the
        lock afresh, so the deletes after it run a full stale age from a write found kept.
        in_a_row: a delete of a loop doing nothing else (gc's packs, forget's manifests), for
        which a look-up of the lock at most every LOCK_LOOKUP_SECONDS does."""
        self.confirm(
            "deleting anything more",
            "what it was about to delete may be in use by another process's snapshot; run it again",
            write=not self._confirmed,
            seen_within=LOCK_LOOKUP_SECONDS if in_a_row else 0.0,
        )

    def confirm(self, doing: str, then: str, write: bool = False, seen_within: float = 0.0) -> None:
        """LockError, saying the holder stopped before `doing` and `then`, when the lock is lost.

        A holder stalled past the stale age (a suspended machine, a stopped process) may have
        had its lock removed as stale, as may one whose clock runs behind another host's, and
        that host may since have changed the repository: stored a snapshot needing what this
        one planned to delete, or deleted what this one just reused (docs/FORMAT.md, "Locks").
        So a lock last written LOCK_CONFIRM_SECONDS ago or more (or with write) is written
        afresh, which tells whether it was removed meanwhile; any other is looked up (a look-up
        that fails cannot tell: so fresh a lock counts as there, as at its release), unless it
        was seen there (written or looked up) less than seen_within seconds ago by both clocks:
        a gc deleting hundreds of objects on a remote store then pays a request a second, not
        one per delete."""
        with self._mutex:
            if self.lost is None:
                if write or self.unwritten() > LOCK_CONFIRM_SECONDS:
                    self._confirm()
                elif _since(self._looked) >= seen_within:
                    with contextlib.suppress(CasnapError):
                        if not self.backend.exists(self.key):
                            self.lost = "its lock was removed while it ran"
                    self._looked = (time.monotonic(), time.time())
            if self.lost is not None:
                raise LockError(
                    f"{self.operation} on {self.backend.location} stopped before {doing}: "
                    f"{self.lost} (found stale by another process, or removed by `casnap unlock "
                    f"--force`): {then}"
                )

    def _confirm(self) -> None:
        """Write the lock afresh for before_delete (hold _mutex). A write that fails (a
        read-only locks/ folder) leaves the old object: still there, and written less than
        LOCK_STALE - LOCK_REFRESH ago, it holds; else the lock counts as lost."""
        try:
            self._refresh_once(strict=True)
        except CasnapError as exc:
            idle = self.unwritten()
            if idle > self.stale - self.refresh:
                self.lost = f"its lock could not be written afresh ({exc}) for {duration(idle)}"
            elif not self.backend.exists(self.key):
                self.lost = "its lock was removed while it ran"
        self._confirmed = True

    def stop(self) -> str | None:
        """Stop refreshing; why the lock was lost so far (None: not known to be). Whether its
        last object is still there is learnt when it is released (`_release`)."""
        self._stop.set()
        self._thread.join()
        return self.lost


# The locks this process holds: one whose block never ended (its generator was left suspended,
# an interrupt having cut into the context manager's exit before it resumed it) is released
# when the process exits.
_HOLDING: set[Held] = set()


@atexit.register
def _release_held() -> None:
    for held in list(_HOLDING):
        with uninterrupted(), contextlib.suppress(Exception):
            held.stop()
            _release(held.backend, held.key, held.leftovers)
        _HOLDING.discard(held)


def _since(when: tuple[float, float]) -> float:
    """Seconds since when (monotonic, wall), by whichever clock says longer (Held.unwritten)."""
    return max(time.monotonic() - when[0], time.time() - when[1])


def before_delete(held: Held | None, in_a_row: bool = False) -> None:
    """held.before_delete() (see Held), for a holder that may run without a lock (None)."""
    if held is not None:
        held.before_delete(in_a_row)


def holding(backend: Backend) -> Held | None:
    """This process's lock on backend while its block runs (one command holds one on each
    repository it opens), None without one."""
    return next((held for held in _HOLDING if held.backend is backend), None)


def _new_key() -> str:
    return f"locks/{uuid.uuid4().hex}"


def _body(record: dict[str, object], now: float) -> bytes:
    return json.dumps({**record, "time": now}).encode()


@contextlib.contextmanager
def locked(
    backend: Backend,
    operation: str,
    exclusive: bool,
    wait: float | None = None,
    unwritable: Callable[[str], None] | None = None,
    notify: Callable[[str], None] | None = None,
    refresh: float = LOCK_REFRESH_SECONDS,
    stale: float = LOCK_STALE_SECONDS,
    listed: Listed | None = None,
    folder: str | None = None,
    warn: Callable[[str], None] | None = None,
) -> Iterator[Held | None]:
    """Hold a repository lock for the duration of the block, waiting at most `wait` seconds for
    a conflicting one (default: CASNAP_LOCK_WAIT from the environment, else LOCK_WAIT_SECONDS);
    notify hears once what it waits for.

    The lock is written afresh every `refresh` seconds while the block runs, and other locks not
    refreshed for `stale` seconds (or of a process of this machine that no longer runs) are
    removed as stale: warn hears of each, in one line. A block that ends normally after its
    lock was removed (found stale, or `unlock --force`) raises LockError: a gc may have run.
    One whose lock cannot be removed at its end (the store unreachable, a read-only folder)
    has done its work: warn hears of the lock left, and the block's end is not an error (the
    lock was written within `stale` seconds, so no other process can have found it stale; a
    lock not written for longer may have been, and is lost as above).

    The block gets the Held lock (None when it runs without one, below): a holder that deletes
    calls its before_delete before each delete.

    With unwritable, a shared lock that cannot be written for lack of permission, on a
    read-only filesystem or a full one is skipped: unwritable is told so in one line and the
    block runs.

    The folders LISTED_WITH_LOCK names for the operation are listed with locks/, in one
    request where the store can, and kept in listed while the block runs: that listing is made
    after our lock was written and finds no conflicting one, so it sees the repository as the
    lock keeps it (docs/FORMAT.md, "One listing for the lock and the snapshots")."""
    if not 0 < refresh < stale:
        raise ValueError(f"lock refresh every {refresh} s must be > 0 and below stale {stale} s")
    if wait is None:
        wait = lock_wait()
    along = LISTED_WITH_LOCK.get(operation, ()) if listed is not None else ()
    key = _new_key()
    pid = os.getpid()
    record: dict[str, object] = {
        **this_machine(),  # host, pidns, boot
        "pid": pid,
        "start": process_start_time(pid),
        "exclusive": exclusive,
        "operation": operation,
        "taken": time.time(),
        **({"folder": folder} if folder is not None else {}),
    }
    deadline = time.monotonic() + wait
    delay = 0.05
    while True:
        try:
            backend.put(key, _body(record, time.time()))
        except (AccessDenied, StorageFull) as exc:  # no permission, a read-only or full disk
            if unwritable is None or exclusive:
                raise
            reason = str(exc).rsplit(": ", 1)[-1]  # "Read-only file system", "Permission denied"
            unwritable(f"cannot write a lock in {backend.location} ({reason}); reading without one")
            yield None
            return
        except BaseException:  # interrupted (Ctrl-C, SIGTERM) once it may have landed
            _drop(backend, key)
            raise
        try:
            conflict, seen = _conflict(
                backend, key, exclusive, stale, along, operation, folder, _removed(warn)
            )
            if conflict is None:
                held = Held(backend, key, record, refresh, stale, operation)
                break
        except BaseException:
            _drop(backend, key)
            raise
        with uninterrupted():  # ours, found in conflict: removed before a signal unwinds
            backend.delete(key)
        if time.monotonic() >= deadline:
            raise LockError(conflict.conflict_message(backend.location))
        if notify is not None:
            notify(f"waiting up to {wait:.0f} s for the repository: {conflict.describe()}")
            notify = None
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 1.0)
    try:
        if listed is not None:
            listed.found = seen
        yield held
    except BaseException:
        with uninterrupted():  # a SIGTERM meanwhile must not leave the lock behind
            held.stop()
            _HOLDING.discard(held)
            # one try, never hiding the block's error (a store gone waits out its retries on
            # each try); a lock left goes stale, and this host's next command removes it
            _release(backend, held.key, held.leftovers, tries=1)
        raise
    finally:
        if listed is not None:
            listed.found = {}
    with uninterrupted():
        try:
            lost = held.stop()
        except BaseException:  # Ctrl-C in a program that lets it through (a library caller)
            _release(backend, held.key, held.leftovers)
            raise
        _HOLDING.discard(held)
        # the lock must still be there now that the block's work is stored (its commit
        # point): else a gc may have run meanwhile. Its removal says so, in one request where
        # it can. A removal that fails cannot tell: the lock is taken as still there while it
        # was written within the stale age (only `unlock --force` removes a lock so fresh).
        present, left = _release(backend, held.key, held.leftovers)
        unwritten = held.unwritten()
        if left is not None and unwritten > stale and lost is None:
            lost = (
                f"its lock could not be removed ({left[1]}) and was last written "
                f"{duration(unwritten)} ago: it may have been"
            )
        if not present and lost is None:
            lost = "its lock was removed while it ran"
        if left is not None and lost is None and warn is not None:  # said before any signal
            name, why = left
            warn(
                f"could not remove lock {name} of {operation} on {backend.location} ({why}); "
                "its work is done: the lock goes stale when no longer refreshed (for this "
                f"machine once this process ends, for others after {duration(stale)}), and "
                "`casnap unlock` removes it then"
            )
    if lost is not None:
        raise LockError(
            f"{operation} on {backend.location} finished, but {lost} (found stale by another "
            "process, or removed by `casnap unlock --force`): a gc may have run meanwhile; run "
            "`casnap verify`"
        )


def _drop(backend: Backend, key: str) -> None:
    """Remove our own lock on the way out of a failed or interrupted take: this process may live
    on (a library caller) and would block gc until it exits."""
    with contextlib.suppress(CasnapError):
        backend.delete(key)


def _release(
    backend: Backend, key: str, leftovers: list[str], tries: int = 3
) -> tuple[bool, tuple[str, CasnapError] | None]:
    """Remove our lock (and old objects of it a refresh left), retrying a failed delete: the
    work it guarded is done, and a lock left by a live process blocks every gc until that
    process exits (or goes stale). Whether key was still there (True when that cannot be told:
    after a failed try that may have removed it, or when every try failed), and the first
    object of ours left, with the error that left it."""
    present = True
    left: tuple[str, CasnapError] | None = None
    for n, name in enumerate([key, *leftovers]):
        for attempt in range(tries):
            try:
                if n == 0:
                    present = backend.remove(name) or attempt > 0
                else:
                    backend.delete(name)
                break
            except CasnapError as exc:
                if attempt == tries - 1:
                    left = left or (name, exc)
                    break
                time.sleep(0.05 * (attempt + 1))
    return present, left


def _removed(warn: Callable[[str], None] | None) -> Callable[[LockInfo, str], None] | None:
    """What tells warn of a stale lock removed: one line naming it, its holder and why."""
    if warn is None:
        return None
    return lambda info, why: warn(f"removed stale lock {info.key}: {info.describe()} ({why})")


def unlock(
    backend: Backend, force: bool = False, stale: float = LOCK_STALE_SECONDS
) -> tuple[list[tuple[LockInfo, str]], list[LockInfo]]:
    """Remove stale locks: those not refreshed for `stale` seconds (on any host), those of
    processes of this machine that no longer run, and lock files that cannot be read; with force,
    every lock. Returns (removed, why) pairs and the locks kept.

    Only force removes a lock whose holder may be running (here, or on another host: its pid
    cannot be checked from here): a running commit or gc would then lose its protection, and
    fails when it ends."""
    removed: list[tuple[LockInfo, str]] = []
    kept: list[LockInfo] = []
    for info in holders(backend):
        reason = info.stale_reason(stale)
        if not info.readable:
            why = "cannot be read"
        elif reason is not None:
            why = reason
        elif force:
            why = "forced"
        else:
            kept.append(info)
            continue
        backend.delete(info.key)  # a lock removed meanwhile is no error
        removed.append((info, why))
    return removed, kept
