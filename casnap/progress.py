"""Byte progress for long operations, reported to an optional callback so the library stays UI-free.

A callback receives (bytes done, bytes total): first (0, total) with the total known up front,
then non-decreasing counts, last (total, total). The CLI turns it into a progress bar.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

ProgressFn = Callable[[int, int], None]

# Report at most once per this many bytes (and at the end): a bar needs no finer steps, and a
# callback per 8 KiB chunk would cost more than the work it reports.
REPORT_STEP = 1024 * 1024


class ByteProgress:
    """Counts bytes done against a total fixed up front; reports monotonically, clamped to total."""

    def __init__(self, total: int, callback: ProgressFn | None) -> None:
        self.total = max(0, int(total))
        self.callback = callback
        self.done = 0
        self._reported = 0
        if callback is not None:
            callback(0, self.total)

    def add(self, n: int) -> None:
        """n more bytes are done."""
        self.advance_to(self.done + n)

    def advance_to(self, done: int) -> None:
        """At least `done` bytes are done (a smaller value is ignored: counts never go back)."""
        done = min(done, self.total)
        if done <= self.done:
            return
        self.done = done
        if self.callback is not None and (
            done - self._reported >= REPORT_STEP or done == self.total
        ):
            self._reported = done
            self.callback(done, self.total)

    def finish(self) -> None:
        """Everything is done: report (total, total) once."""
        if self.callback is not None and self._reported != self.total:
            self.done = self._reported = self.total
            self.callback(self.total, self.total)


class CountingReader:
    """A binary stream that reports the bytes read through it (commit progress)."""

    def __init__(self, stream: io.BufferedReader, tick: Callable[[int], None]) -> None:
        self._stream = stream
        self._tick = tick

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._tick(len(data))
        return data

    def readinto(self, buf: Any) -> int:
        n = self._stream.readinto(buf)
        self._tick(n or 0)
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
