"""Starting the disk writes of restored files early, on a thread of their own.

The kernel starts writing dirty pages to disk only once a tenth or so of the memory is dirty, or
at an fsync: restored files that fit in memory would reach the disk only when each is fsynced,
with the disk idle before. sync_file_range(SYNC_FILE_RANGE_WRITE) starts the writes of a range at
once; called every few MiB of a file, the disk works while later bytes are decoded and the fsync
finds little left to wait for. The call blocks while the disk's queue is full, so it runs on this
thread, never on the workers that decode. Where libc has no sync_file_range (not Linux) nothing
is started early and the fsync does it all, as before.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Callable

from casnap import libc
from casnap.signals import uninterrupted

STEP = 8 * 1024 * 1024  # bytes of a file written between two starts of its writeback
_WRITE = 2  # SYNC_FILE_RANGE_WRITE: start writing the range's dirty pages, do not wait


def _sync_file_range() -> Callable[[int, int, int], object] | None:
    """sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE), or None where libc lacks it."""
    if not sys.platform.startswith("linux"):
        return None
    fn = libc.function("sync_file_range", "c_int", "c_longlong", "c_longlong", "c_uint")
    if fn is None:
        return None
    return lambda fd, pos, n: fn(fd, pos, n, _WRITE)


_start = _sync_file_range()


class Writeback:
    """A thread that starts the writeback of ranges of files, in the order given. Each file is
    known by a descriptor of its own (`open`), closed by the thread after its last range."""

    def __init__(self) -> None:
        self.enabled = _start is not None
        self._queue: queue.SimpleQueue[tuple[int, int, int] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def open(self, fd: int) -> int:
        """A descriptor of fd's file for this thread (-1 when nothing is started early)."""
        if not self.enabled:
            return -1
        try:
            dup = os.dup(fd)
        except OSError:
            return -1  # out of descriptors: this file is left to its fsync
        if self._thread is None:
            thread = threading.Thread(target=self._run, name="casnap-writeback", daemon=True)
            with uninterrupted():  # started whole, or stop() would join one never started
                thread.start()
                self._thread = thread
        return dup

    def start(self, fd: int, pos: int, n: int) -> None:
        """Start writing bytes pos..pos+n of fd (from `open`) to disk, soon."""
        if fd >= 0 and n > 0:
            self._queue.put((fd, pos, n))

    def close(self, fd: int) -> None:
        """No more ranges of fd: the thread closes it."""
        if fd >= 0:
            self._queue.put((fd, -1, 0))

    def stop(self) -> None:
        """Wait for the thread to go through what it was given (closing its descriptors)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        assert _start is not None
        while (item := self._queue.get()) is not None:
            fd, pos, n = item
            if pos < 0:
                os.close(fd)
            else:
                _start(fd, pos, n)  # a failure only leaves the writes to the fsync
