"""A backend that retries the calls of another one that fail transiently.

Object storage answers some requests with a timeout, a reset connection, a 5xx or a throttling
answer that the same request, sent again a little later, gets through. A backend raises
TransientError for those (and only those); this wrapper tries such a call again, up to `attempts`
times in all, sleeping a random time between 0 and base_delay * 2**n (at most max_delay) before
retry n+1 ("full jitter": hosts retrying together spread out). Every other error passes at once:
a missing or damaged object, a lack of permission, a full storage and a caller's bug are not
fixed by asking again. After the last attempt the last TransientError is raised, saying how many
attempts were made. Once a call gave up so, every later call is tried once, until one gets
through: a store that is gone (a server killed mid-commit) is not waited for again by each
request that follows (the lock's release, the clean-up), which took minutes before the error.

Retrying must not change what a call means:
- put is put-if-absent. A put whose answer was lost may have landed, and its retry then answers
  "already stored". So a retry that answers False reads the object back: holding exactly our
  bytes, it was our put that stored it (True); anything else is someone else's object (False).
  A writer racing with the same bytes under the same key cannot be told apart from our lost
  write; casnap's keys are content hashes or random lock names, so both answers mean the same.
- A list that fails part-way is listed again from the start, and keys already yielded are
  skipped: each key is still yielded once. Failures count against `attempts` only while the new
  listing yields nothing new (a long listing that makes progress is never given up on).
- delete of an absent key is no error, so a delete whose answer was lost is simply sent again.
  remove says whether the key was there: after a lost answer the retry finds it gone, which the
  lost attempt may have done, so a retried remove that finds nothing says it was there.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from casnap.backends.base import Backend, Wrapper, check_key
from casnap.constants import (
    RETRY_ATTEMPTS,
    RETRY_BASE_DELAY,
    RETRY_MAX_DELAY,
    RETRY_SILENT_ATTEMPTS,
)
from casnap.errors import ObjectMissing, TransientError

T = TypeVar("T")


class RetryingBackend(Wrapper):
    """Calls of inner, each retried on TransientError (see the module docstring)."""

    def __init__(
        self,
        inner: Backend,
        attempts: int = RETRY_ATTEMPTS,
        base_delay: float = RETRY_BASE_DELAY,
        max_delay: float = RETRY_MAX_DELAY,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if attempts < 1 or base_delay < 0 or max_delay < 0:
            raise ValueError(
                f"invalid retry settings: attempts {attempts}, delays {base_delay}/{max_delay}"
            )
        self.inner = inner
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.gone = False  # a call gave up: the next ones get one attempt until one succeeds

    @property
    def tries(self) -> int:
        """Attempts the next call gets."""
        return 1 if self.gone else self.attempts

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (0 for the first retry): full jitter."""
        cap = min(self.max_delay, self.base_delay * 2.0**retry)
        return self.rng.uniform(0.0, cap)

    def _give_up(self, exc: TransientError, tries: int, silent: int = 0) -> TransientError:
        """The last failure, saying that retrying it did not help (and, silent, how many of the
        attempts the store left unanswered)."""
        self.gone = True
        why = f"{silent} of them unanswered for the whole read timeout; " if silent > 1 else ""
        return TransientError(f"{exc} ({why}gave up after {tries} attempt{'s' * (tries > 1)})")

    def _last(self, exc: TransientError, attempt: int, tries: int, silent: list[int]) -> bool:
        """Whether the failed attempt number `attempt` (from 0) of a call is its last: it had
        `tries`, or the store left RETRY_SILENT_ATTEMPTS of them unanswered (silent counts)."""
        silent[0] += exc.silent
        return attempt >= tries - 1 or silent[0] >= RETRY_SILENT_ATTEMPTS

    def call(self, fn: Callable[[], T]) -> T:
        """fn(), tried up to `tries` times while it raises TransientError: a request of the
        backend below that is not a Backend call (the S3 checks of what a prefix holds)."""
        tries, silent = self.tries, [0]
        for attempt in range(tries):
            try:
                done = fn()
                self.gone = False
                return done
            except TransientError as exc:
                if self._last(exc, attempt, tries, silent):
                    raise self._give_up(exc, attempt + 1, silent[0]) from exc
            self.sleep(self.delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def put(self, key: str, data: bytes | memoryview) -> bool:
        check_key(key)
        failed = False
        tries, silent = self.tries, [0]
        for attempt in range(tries):
            try:
                stored = self.inner.put(key, data)
            except TransientError as exc:
                if self._last(exc, attempt, tries, silent):
                    raise self._give_up(exc, attempt + 1, silent[0]) from exc
                failed = True
                self.sleep(self.delay(attempt))
                continue
            self.gone = False
            if stored or not failed:
                return stored
            return self._landed(key, data)
        raise AssertionError("unreachable")  # pragma: no cover

    def _landed(self, key: str, data: bytes | memoryview) -> bool:
        """After a failed put, a retry found key stored: True when it holds exactly data (the
        failed attempt landed, only its answer was lost)."""
        try:
            return self.get(key) == bytes(data)
        except ObjectMissing:
            return False  # deleted meanwhile: it was there, so it was not ours to report

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.call(lambda: self.inner.get(key, offset, length))

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        return self._listing(lambda: self.inner.list(prefix))

    def list_several(self, prefixes: Sequence[str]) -> Iterator[tuple[str, int]]:
        return self._listing(lambda: self.inner.list_several(prefixes))

    def _listing(self, start: Callable[[], Iterator[tuple[str, int]]]) -> Iterator[tuple[str, int]]:
        """The listing start() makes, started again after a transient failure; keys already
        yielded are skipped (see the module docstring)."""
        seen: set[str] = set()
        failures = 0
        tries, silent = self.tries, [0]
        while True:
            progress = False
            try:
                for key, size in start():
                    if key in seen:
                        continue
                    seen.add(key)
                    progress = True
                    self.gone = False
                    yield key, size
                self.gone = False
                return
            except TransientError as exc:
                failures = 1 if progress else failures + 1
                if progress:
                    silent[0] = 0
                if self._last(exc, failures - 1, tries, silent):
                    raise self._give_up(exc, failures, silent[0]) from exc
                self.sleep(self.delay(failures - 1))

    def delete(self, key: str) -> None:
        self.call(lambda: self.inner.delete(key))

    def remove(self, key: str) -> bool:
        failed = False
        tries, silent = self.tries, [0]
        for attempt in range(tries):
            try:
                present = self.inner.remove(key) or failed
                self.gone = False
                return present
            except TransientError as exc:
                if self._last(exc, attempt, tries, silent):
                    raise self._give_up(exc, attempt + 1, silent[0]) from exc
                failed = True
            self.sleep(self.delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def exists(self, key: str) -> bool:
        return self.call(lambda: self.inner.exists(key))

    def close(self) -> None:
        self.inner.close()
