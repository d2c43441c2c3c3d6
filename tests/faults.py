"""Fault-injecting backends: wrap a real backend and make chosen operations go wrong.

Restic style: behaviour is added by wrapping the narrow Backend interface, never by changing the
layers above. A `Fault` watches one operation (put, get, list, delete) on keys under a prefix,
counts the matching calls and acts on the nth one (and on every later one when `times` is None):
it raises an I/O error, reports a full disk, lands a write truncated, flips a byte of what a read
returns, fails transiently (before the call, or after it landed with its answer lost), calls a
test hook, makes the key's folder refuse changes, or SIGKILLs the whole process.

`FaultyBackend` is the wrapper tests build by hand. `faulty_local_backends` gives every
LocalBackend opened while it is active the faults of a spec (see `parse_spec`): tests use it around
the CLI in-process, and `python -m tests.faulty_cli SPEC ARGS` runs the real CLI under it in a
subprocess for crash tests. casnap itself has no test hook: the faults come from outside.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import threading
import types
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from casnap.backends.base import Backend, convert_oserrors
from casnap.backends.local import LocalBackend
from casnap.errors import TransientError

UNLINK = "CASNAP_FAULT_UNLINK"  # the files an "unlink" fault removes
OPS = ("put", "get", "list", "delete", "replace", "remove")
ACTIONS = (
    "fail",
    "enospc",
    "truncate",
    "flip",
    "transient",
    "lost",
    "kill",
    "call",
    "term",
    "int",
    "burst",
    "unlink",
    "seal",
)


@dataclass(frozen=True)
class Fault:
    """Act on the nth call of `op` whose key starts with `prefix` (1-based), `times` times.

    Actions: "fail" raises OSError(EIO) instead of the call, "enospc" raises OSError(ENOSPC)
    instead of a put, "truncate" stores the first half of a put's data, "flip" inverts the middle
    byte of what a get returns, "transient" raises TransientError instead of the call (a list
    yields the first half of its keys first), "lost" makes the call and then raises
    TransientError (a put that landed, a delete that deleted, but whose answer never came back),
    "kill" SIGKILLs the process once the call has completed, "call" runs `hook(key)` once the
    call has completed, "term" sends the process SIGTERM just before the call (a service manager
    stopping it at that step), "int" SIGINT there (Ctrl-C), "burst" SIGINT and SIGTERM at once
    (the second is handled as the first unwinds), "unlink" removes the files $CASNAP_FAULT_UNLINK
    names (os.pathsep between them) just before the call (an app deleting them at that step),
    "seal" makes the folder of the key (of a local backend, through `install`) refuse new and
    removed entries once the call has completed (`seal`: immutable as root, else without write
    permission; `unseal` undoes it). times=None keeps acting on every later call.
    The op "replace" (only through `install`) counts os.replace calls, i.e. the renames that swap
    restored files into place; "remove" counts os.unlink calls (a checkout removing the files its
    snapshot lacks).
    """

    op: str
    action: str
    nth: int = 1
    prefix: str = ""
    times: int | None = 1
    hook: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        if self.op not in OPS or self.action not in ACTIONS or self.nth < 1:
            raise ValueError(f"invalid fault {self.op}:{self.action}:{self.nth}")
        if self.action == "call" and self.hook is None:
            raise ValueError("a 'call' fault needs a hook")

    def describe(self) -> str:
        where = f" under {self.prefix}" if self.prefix else ""
        every = " and every later one" if self.times is None else ""
        return f"{self.action} at {self.op} #{self.nth}{where}{every}"


def fail(op: str, nth: int = 1, prefix: str = "", times: int | None = 1) -> Fault:
    """The nth matching call raises OSError(EIO) and does nothing."""
    return Fault(op, "fail", nth, prefix, times)


def no_space(nth: int = 1, prefix: str = "") -> Fault:
    """From the nth matching put on, every put raises OSError(ENOSPC): the disk stays full."""
    return Fault("put", "enospc", nth, prefix, None)


def truncate_put(nth: int = 1, prefix: str = "", times: int | None = 1) -> Fault:
    """The nth matching put stores only the first half of its data and reports success."""
    return Fault("put", "truncate", nth, prefix, times)


def flip_on_get(nth: int = 1, prefix: str = "", times: int | None = 1) -> Fault:
    """The nth matching get returns its bytes with the middle one inverted (storage is intact)."""
    return Fault("get", "flip", nth, prefix, times)


def transient(op: str, nth: int = 1, prefix: str = "", times: int | None = 1) -> Fault:
    """The nth matching call raises TransientError without doing anything (a list: after
    yielding the first half of its keys), as a timeout or a 503 answer would."""
    return Fault(op, "transient", nth, prefix, times)


def answer_lost(op: str, nth: int = 1, prefix: str = "", times: int | None = 1) -> Fault:
    """The nth matching call is made and then raises TransientError: it landed, but its answer
    was lost on the way back (a put stored its object, a delete deleted)."""
    return Fault(op, "lost", nth, prefix, times)


def kill_after(op: str, nth: int, prefix: str = "") -> Fault:
    """SIGKILL this process right after the nth matching call completed."""
    return Fault(op, "kill", nth, prefix, 1)


def call_after(op: str, nth: int, hook: Callable[[str], None], prefix: str = "") -> Fault:
    """Run hook(key) right after the nth matching call completed."""
    return Fault(op, "call", nth, prefix, 1, hook)


class FaultPlan:
    """Counts calls per fault and applies the faults; thread-safe (checkout reads in parallel)."""

    def __init__(self, faults: Iterable[Fault], root: str | None = None) -> None:
        self.faults = list(faults)
        self.root = root  # the local backend's directory, for "seal"
        self.counts = [0] * len(self.faults)
        self.fired: list[tuple[Fault, str]] = []
        self._lock = threading.Lock()

    def due(self, op: str, key: str) -> list[Fault]:
        """Count this call against every matching fault; the faults that act on it."""
        acting = []
        with self._lock:
            for i, f in enumerate(self.faults):
                if f.op != op or not key.startswith(f.prefix):
                    continue
                self.counts[i] += 1
                n = self.counts[i]
                if n >= f.nth and (f.times is None or n < f.nth + f.times):
                    acting.append(f)
                    self.fired.append((f, key))
        return acting

    @staticmethod
    def before(faults: list[Fault], key: str) -> None:
        """Raise for the faults that replace the call."""
        for f in faults:
            if f.action == "fail":
                raise OSError(errno.EIO, f"injected I/O error ({f.describe()})", key)
            if f.action == "enospc":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), key)
            if f.action == "transient":
                raise TransientError(f"{key}: injected timeout ({f.describe()})")
            if f.action == "term":
                os.kill(os.getpid(), signal.SIGTERM)
            if f.action == "int":
                os.kill(os.getpid(), signal.SIGINT)
            if f.action == "unlink":
                for path in filter(None, os.environ.get(UNLINK, "").split(os.pathsep)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
            if f.action == "burst":
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGTERM)

    def after(self, faults: list[Fault], key: str) -> None:
        """Run the faults that act once the call has completed."""
        for f in faults:
            if f.action == "seal" and self.root is not None:
                seal(os.path.join(self.root, os.path.dirname(key)))
            if f.action == "lost":
                raise TransientError(f"{key}: injected lost answer ({f.describe()})")
            if f.action == "call" and f.hook is not None:
                f.hook(key)
            elif f.action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)

    # -- the wrapped operations ----------------------------------------------------------------

    def put(self, inner: Callable[[str, bytes | memoryview], bool], key: str, data: bytes) -> bool:
        faults = self.due("put", key)
        self.before(faults, key)
        if any(f.action == "truncate" for f in faults):
            data = bytes(data)[: len(data) // 2]
        written = inner(key, data)
        self.after(faults, key)
        return written

    def get(
        self,
        inner: Callable[[str, int, int | None], bytes],
        key: str,
        offset: int,
        length: int | None,
    ) -> bytes:
        faults = self.due("get", key)
        self.before(faults, key)
        data = inner(key, offset, length)
        if data and any(f.action == "flip" for f in faults):
            b = bytearray(data)
            b[len(b) // 2] ^= 0xFF
            data = bytes(b)
        self.after(faults, key)
        return data

    def list(
        self, inner: Callable[[str], Iterator[tuple[str, int]]], prefix: str
    ) -> Iterator[tuple[str, int]]:
        faults = self.due("list", prefix)
        items = list(inner(prefix))
        if any(f.action == "transient" for f in faults):
            yield from items[: len(items) // 2]  # a listing that breaks off part-way
        self.before(faults, prefix)
        self.after(faults, prefix)
        yield from items

    def delete(self, inner: Callable[[str], None], key: str) -> None:
        faults = self.due("delete", key)
        self.before(faults, key)
        inner(key)
        self.after(faults, key)


class FaultyBackend(Backend):
    """A backend that forwards to `inner`, injecting the given faults."""

    def __init__(self, inner: Backend, faults: Iterable[Fault] = ()) -> None:
        self.inner = inner
        self.plan = FaultPlan(faults)

    @property
    def fired(self) -> list[tuple[Fault, str]]:
        """(fault, key) for every call a fault acted on, in order."""
        return self.plan.fired

    @property
    def location(self) -> str:
        return self.inner.location

    def put(self, key: str, data: bytes | memoryview) -> bool:
        return self.plan.put(self.inner.put, key, data)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.plan.get(self.inner.get, key, offset, length)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        return self.plan.list(self.inner.list, prefix)

    def delete(self, key: str) -> None:
        self.plan.delete(self.inner.delete, key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def close(self) -> None:
        self.inner.close()


def parse_spec(spec: str) -> list[Fault]:
    """Faults from `op:action:nth[:prefix]` items separated by commas (hooks cannot be given).

    Example: `put:kill:7` SIGKILLs the process after its 7th backend put; `get:kill:40:packs/`
    after its 40th pack read; `replace:kill:2:/data/` after the 2nd rename into /data/ (a
    file a checkout swapped into place there: a rename by descriptor counts under its full
    path); `put:enospc:3:packs/` makes the 3rd pack write and all later ones find a full disk.
    """
    faults = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        parts = item.split(":", 3)
        if len(parts) < 3 or not parts[2].isdigit():
            raise ValueError(f"fault spec: cannot parse {item!r} (want op:action:nth[:prefix])")
        op, action, nth = parts[0], parts[1], int(parts[2])
        prefix = parts[3] if len(parts) == 4 else ""
        times = None if action in ("enospc", "flip") else 1
        faults.append(Fault(op, action, nth, prefix, times))
    return faults


def install(backend: Backend, spec: str) -> Backend:
    """Apply the faults of spec (see `parse_spec`) to backend, in place; backend is returned.

    An empty spec leaves backend untouched. Otherwise the instance's own methods are wrapped (so
    its type stays what it is for code that asks, such as gc's test for a local repository), and
    a "replace" fault wraps os.replace in this process, a "remove" fault os.unlink (once: the
    first backend's plan counts).
    """
    if not spec:
        return backend
    root = getattr(backend, "root", None)
    plan = FaultPlan(parse_spec(spec), None if root is None else os.fspath(root))
    put, get, lst, delete = backend.put, backend.get, backend.list, backend.delete
    wrapped: dict[str, Callable[..., Any]] = {
        "put": lambda _self, key, data: plan.put(put, key, data),
        "get": lambda _self, key, offset=0, length=None: plan.get(get, key, offset, length),
        "list": lambda _self, prefix: plan.list(lst, prefix),
        "delete": lambda _self, key: plan.delete(delete, key),
    }
    for name, fn in wrapped.items():
        setattr(backend, name, types.MethodType(convert_oserrors(name, fn), backend))
    if any(f.op == "replace" for f in plan.faults) and not hasattr(os.replace, "_casnap_fault"):
        real_replace = os.replace

        def replace(
            src: str | os.PathLike[str], dst: str | os.PathLike[str], **kwargs: Any
        ) -> None:
            where = os.fspath(dst)
            if kwargs.get("dst_dir_fd") is not None:  # a rename by descriptor: its full path
                where = os.path.join(os.readlink(f"/proc/self/fd/{kwargs['dst_dir_fd']}"), where)
            faults = plan.due("replace", where)
            plan.before(faults, where)
            real_replace(src, dst, **kwargs)
            plan.after(faults, where)

        replace._casnap_fault = True  # type: ignore[attr-defined]
        os.replace = replace  # type: ignore[assignment]
    if any(f.op == "remove" for f in plan.faults) and not hasattr(os.unlink, "_casnap_fault"):
        real_unlink = os.unlink

        def unlink(path: str | os.PathLike[str], **kwargs: Any) -> None:
            where = _full(path, kwargs.get("dir_fd"))
            faults = plan.due("remove", where)
            plan.before(faults, where)
            real_unlink(path, **kwargs)
            plan.after(faults, where)

        unlink._casnap_fault = True  # type: ignore[attr-defined]
        os.unlink = unlink  # type: ignore[assignment]
    return backend


def _full(path: str | os.PathLike[str], dir_fd: int | None) -> str:
    """The full path of a call's path, relative to dir_fd when given (a call by descriptor)."""
    where = os.fsdecode(path)
    if dir_fd is not None:
        where = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), where)
    return where


def seal(folder: str | os.PathLike[str]) -> None:
    """Make folder refuse new and removed entries (a read-only folder, whoever asks): immutable
    as root (`chattr +i`), else without write permission."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", os.fspath(folder)], check=True, capture_output=True)
    else:
        os.chmod(folder, 0o555)


def unseal(folder: str | os.PathLike[str]) -> None:
    """Undo seal (nothing for a folder not sealed, or gone)."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", os.fspath(folder)], check=False, capture_output=True)
    with contextlib.suppress(FileNotFoundError):
        os.chmod(folder, 0o755)


@contextmanager
def faulty_local_backends(spec: str) -> Iterator[None]:
    """While active, every LocalBackend made (the one a casnap command opens on its repository)
    gets the faults of spec, counted afresh for each backend; on exit LocalBackend and os.replace
    are as they were."""
    real_init = LocalBackend.__init__
    real_replace = os.replace

    def init(self: LocalBackend, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        install(self, spec)

    LocalBackend.__init__ = init  # type: ignore[method-assign]
    try:
        yield
    finally:
        LocalBackend.__init__ = real_init  # type: ignore[method-assign]
        os.replace = real_replace
