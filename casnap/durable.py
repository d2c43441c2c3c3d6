"""Files a restore writes made durable together, before anything makes them visible.

A checkout renames each staged file into place only once it is on disk (docs/FORMAT.md,
"Checkout"). One fsync per file costs a journal commit each: thousands of small files spent
most of a restore waiting for them. Where the kernel's syncfs reports a failed write (Linux >=
5.8: fsutil.can_syncfs), the files are made durable a batch at a time instead: one syncfs of the
staging dir's filesystem on a thread of its own once a batch is written (so writeback overlaps
the writing of the next batch), and one more when the caller needs them all durable. Elsewhere
each file is fsynced on that thread, as it comes.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from casnap import fsutil
from casnap.phases import Phases

# Bytes and files written between two syncs: large enough that a sync costs little per file
# (a sync while files are still being created makes their creation wait for the journal: 20k
# small files took longer to restore with a sync every 2048 files than with one at the end),
# small enough that the last one, which the caller waits for, has a bounded amount to write.
SYNC_BATCH_BYTES = 256 * 1024 * 1024
SYNC_BATCH_FILES = 32768


class Durable:
    """Makes the files written into one folder (reached by fd) durable: `add` each file once it
    is written, `finish` before using them. Time spent syncing goes to the `write` phase."""

    def __init__(self, fd: int, what: str, phases: Phases | None = None) -> None:
        self.fd = fd
        self.what = what
        self.phases = phases or Phases()
        self.batched = fsutil.can_syncfs()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="casnap-sync")
        self._futures: list[Future[None]] = []  # fsyncs of single files, or the running syncfs
        self._bytes = 0  # written since the last syncfs began
        self._files = 0

    def __enter__(self) -> Durable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, path: str | Path, size: int) -> None:
        """A file is written (and will not be written again): make it durable soon."""
        self._raise_done()
        if not self.batched:
            self._futures.append(self._pool.submit(self._timed, fsutil.fsync_file, Path(path)))
            return
        self._bytes += size
        self._files += 1
        if self._bytes >= SYNC_BATCH_BYTES or self._files >= SYNC_BATCH_FILES:
            if not any(not f.done() for f in self._futures):  # one at a time: never queued
                self._bytes = self._files = 0
                self._futures.append(self._pool.submit(self._timed, self._syncfs))

    def finish(self) -> None:
        """Return once every file added is durable; the first failure is raised."""
        futures, self._futures = self._futures, []
        for fut in futures:
            fut.result()
        if self.batched and self._files:
            self._bytes = self._files = 0
            self._timed(self._syncfs)

    def close(self) -> None:
        """Stop, without waiting for what was not started (after a failure)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _syncfs(self) -> None:
        fsutil.syncfs(self.fd, self.what)

    def _timed(self, fn: Callable[..., None], *args: Any) -> None:
        with self.phases.timed("write"):
            fn(*args)

    def _raise_done(self) -> None:
        """Raise a failure of a sync that ended already; forget the ones that succeeded."""
        keep = []
        for fut in self._futures:
            if fut.done():
                fut.result()
            else:
                keep.append(fut)
        self._futures = keep
