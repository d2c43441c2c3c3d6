"""Phases: where the time of one operation goes, as seconds per named phase.

An operation (commit, checkout) makes one `Phases` and hands it to the steps doing its work; each
step adds the seconds it spent under its phase's name, from whatever thread it runs on (adding is
thread-safe). Steps are timed coarsely (a file, a block, a pack, a task of several frames; never a
chunk), so recording costs nothing measurable. Work done on worker threads overlaps itself and
the calling thread, so a phase's seconds are thread-seconds: `report` puts `wall`, the elapsed
seconds of the whole operation, beside them.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import ParamSpec, Protocol, TypeVar

# The phases commit and checkout report (`--json`; docs/JSON.md says what each one covers)
COMMIT_PHASES = ("open", "scan", "capture", "chunk", "compress", "write", "index", "manifest")
CHECKOUT_PHASES = ("open", "plan", "read", "decode", "verify", "write", "smoke", "save", "swap")

P = ParamSpec("P")
T = TypeVar("T")


class Opened(Protocol):
    """Something opened once and then worked on (a Repository): when its opening began."""

    opened_at: float | None


OpenedT = TypeVar("OpenedT", bound=Opened)


def opening(fn: Callable[P, OpenedT]) -> Callable[P, OpenedT]:
    """Decorate a function that opens something: what it returns gets `opened_at`, the
    perf_counter() at which the outermost such call began, so the first operation on it counts
    the opening (reading a config, deriving keys) in its `open` phase."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> OpenedT:
        start = time.perf_counter()
        opened = fn(*args, **kwargs)
        inner = opened.opened_at
        opened.opened_at = start if inner is None else min(start, inner)
        return opened

    return wrapper


class Phases:
    """Seconds per phase of one operation, added from any thread; `start` is where `wall`
    begins (perf_counter())."""

    def __init__(self, start: float | None = None) -> None:
        self.start = time.perf_counter() if start is None else start
        self._seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    @classmethod
    def begin(cls, opened: Opened) -> Phases:
        """The recorder of an operation on `opened`: its clock starts when `opened` began to
        open, for the first operation on it (which then counts the opening), else now."""
        start, opened.opened_at = opened.opened_at, None
        return cls(start)

    def add(self, name: str, seconds: float) -> None:
        """seconds more spent in phase name."""
        with self._lock:
            self._seconds[name] = self._seconds.get(name, 0.0) + seconds

    def since(self, name: str, start: float) -> float:
        """Add the time from start (a perf_counter() value) until now to name; returns now, the
        start of whatever comes next."""
        now = time.perf_counter()
        self.add(name, now - start)
        return now

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """The block's elapsed time is added to name, also when it raises."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.since(name, start)

    @contextlib.contextmanager
    def entered(self, name: str, manager: contextlib.AbstractContextManager[T]) -> Iterator[T]:
        """manager, entered with only the time its entry takes added to name (a copy made on
        entry, such as a database image); its body and exit are not counted."""
        with contextlib.ExitStack() as stack:
            with self.timed(name):
                value = stack.enter_context(manager)
            yield value

    def iterate(self, name: str, items: Iterable[T]) -> Iterator[T]:
        """items, the time taken to produce each (a generator's work: reading and cutting a
        file, planning reads) added to name; the caller's work between items is not counted."""
        it = iter(items)
        while True:
            with self.timed(name):
                try:
                    item = next(it)
                except StopIteration:
                    return
            yield item

    def timing(self, name: str, fn: Callable[P, T]) -> Callable[P, T]:
        """fn, each call's time added to name (for work handed to another thread)."""

        def timed_fn(*args: P.args, **kwargs: P.kwargs) -> T:
            with self.timed(name):
                return fn(*args, **kwargs)

        return timed_fn

    def seconds(self, name: str) -> float:
        """The seconds recorded for name so far."""
        with self._lock:
            return self._seconds.get(name, 0.0)

    def report(self, names: Sequence[str]) -> dict[str, float]:
        """Seconds of every phase in names (0.0 for one that did not run) and `wall`, the
        elapsed seconds since start."""
        wall = time.perf_counter() - self.start
        with self._lock:
            out = {name: self._seconds.get(name, 0.0) for name in names}
        out["wall"] = wall
        return out
