"""Byte progress for long operations, reported to an optional callback so the library stays UI-free.

A callback receives (bytes done, bytes total): first (0, total) with the total known up front,
then non-decreasing counts, last (total, total). The CLI turns it into a progress bar.
"""

from __future__ import annotations

from collections.abc import Callable

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
