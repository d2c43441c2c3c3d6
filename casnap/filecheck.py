"""verify's checks of file entries: each against its chunk list (number of chunks and bytes:
what a checkout refuses), and with read_data each distinct file read whole, in order, against
its whole-file BLAKE3 and size (a crafted or damaged manifest whose every chunk is intact)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, cast

from casnap import pipeline
from casnap.errors import CasnapError
from casnap.ids import ObjectId
from casnap.manifest import Snapshot
from casnap.reachability import Reach
from casnap.repository import Repository


def disagreeing(
    selected: Sequence[tuple[ObjectId, Snapshot]], reach: Reach
) -> Iterator[tuple[ObjectId, str, str]]:
    """(snapshot, path, why) of each file whose chunk list holds another number of chunks or of
    bytes than its entry says; reach is the walk of selected (one FileUse per file, in order)."""
    uses = iter(reach.files)
    for sid, snap in selected:
        for f in snap.files:
            totals = reach.totals.get(next(uses).lists)
            if totals is not None and totals != (f.chunks, f.size):
                yield (
                    sid,
                    f.path,
                    f"its chunk list holds {totals[0]} chunks of {totals[1]} bytes, its entry "
                    f"says {f.chunks} chunks of {f.size} bytes",
                )


def misread(
    repo: Repository,
    selected: Sequence[tuple[ObjectId, Snapshot]],
    skip: set[tuple[str, str]],
) -> Iterator[tuple[ObjectId, str, str]]:
    """(snapshot, path, why) of each distinct file (by chunk list, hash and size) whose
    bytes, read in order, do not hash to its entry's hash; files in skip ((snapshot hex, path):
    already found broken) are not read."""
    seen: set[tuple[tuple[str, ...], str, int]] = set()
    workers = pipeline.cpu_workers()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for sid, snap in selected:
            for f in snap.files:
                key = (f.lists, f.hash, f.size)
                if key in seen or (sid.hex(), f.path) in skip:
                    continue
                seen.add(key)
                try:
                    refs = repo.file_refs(f)
                    size, whole = pipeline.restore(
                        repo.store, refs, cast(BinaryIO, _Discard()), pool, 2 * workers + 2
                    )
                except CasnapError:
                    # read here from the first copy of each chunk only: a damaged or unreadable
                    # copy is the chunk checks' to report (they read every copy, and know
                    # whether another one is intact)
                    continue
                if (size, whole.hex()) != (f.size, f.hash):
                    yield (
                        sid,
                        f.path,
                        "its bytes do not match its recorded hash, yet each of its chunks "
                        "verified (a damaged manifest)",
                    )


class _Discard:
    """Where pipeline.restore writes a file that is only hashed: nothing is kept."""

    def write(self, data: Any) -> int:
        return len(memoryview(data).cast("B"))

    def seek(self, n: int, whence: int) -> int:
        return n

    def truncate(self) -> None:
        """Nothing to cut: nothing was written."""
