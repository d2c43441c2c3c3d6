"""repair-index: rebuild the index from the packs alone, when index files are lost or damaged.

Every pack describes its own chunks in a directory, so the index is redundant and can always be
rebuilt. Under the exclusive lock: read every pack (a damaged one is salvaged chunk by chunk or
left out, and reported), write one new index file, and only then delete the old index files, so a
crash at any point leaves at least one usable index.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from casnap.config import now_iso
from casnap.errors import CasnapError
from casnap.ids import ObjectId
from casnap.manifest import Snapshot, complete
from casnap.repository import Repository


@dataclass
class RepairReport:
    """What repair-index found and wrote."""

    packs: int = 0
    chunks_indexed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (pack key, what happened)
    others: int = 0  # of skipped: objects under packs/ whose name is no pack's
    index_written: str | None = None
    index_files_removed: int = 0
    missing: int = 0  # blobs the snapshots need that no pack holds intact
    damaged_manifests: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["skipped"] = [{"pack": k, "reason": r} for k, r in self.skipped]
        return d


def repair_index(repo: Repository) -> RepairReport:
    """Rebuild the index from the packs; report skipped packs and what snapshots still miss."""
    # here: every commit reads the notes (repaired_snapshots) and must not pay for numpy
    from casnap.chunkindex import IdSet, id_matrix
    from casnap.entrytable import merge_parts
    from casnap.packs import pack_id_of
    from casnap.reachability import walk

    t0 = time.perf_counter()
    report = RepairReport()
    backend = repo.backend
    with repo.lock("repair-index"):
        repo.refresh()
        listed = [key for key, _ in backend.list("packs/")]
        report.packs = sum(1 for key in listed if pack_id_of(key) is not None)
        report.others = len(listed) - report.packs
        rebuilt = repo.store.rebuild_index(report.skipped)
        report.chunks_indexed = len(rebuilt[1])
        old = [key for key, _ in backend.list("index/")]
        new_key = None
        if report.chunks_indexed:
            new_key, _size = repo.store.write_index(*merge_parts([rebuilt]))
            report.index_written = new_key
        del rebuilt
        for key in old:
            if key != new_key:
                backend.delete(key)
                report.index_files_removed += 1
        repo.refresh()
        repo.store.load_index()
        snaps: list[tuple[ObjectId, Snapshot]] = []
        for key, _ in backend.list("snapshots/"):
            try:
                sid = ObjectId.from_hex(key.rsplit("/", 1)[-1])
                snaps.append((sid, complete(repo.load_snapshot(sid))))
            except (ValueError, CasnapError):
                report.damaged_manifests += 1
        reach = walk(snaps, repo.store.get, strict=False, keep_lists=False)
        needed = reach.referenced_ids()
        trees = IdSet()
        trees.add(id_matrix(list(reach.trees)))
        report.missing = len(reach.tree_errors) + int(
            (~repo.store.index.contains_many(needed) & ~trees.contains_many(needed)).sum()
        )
        if report.missing:  # their files are read again by the next commit, which heals them
            record_repair(repo, [sid.hex() for sid, _ in snaps])
    report.seconds = time.perf_counter() - t0
    return report


REPAIRS = "repairs/"


def record_repair(repo: Repository, snapshots: list[str]) -> None:
    """Note that the snapshots may name chunks no pack holds any more: a commit then reads
    their files again instead of reusing their entries by fingerprint (docs/FORMAT.md)."""
    body = json.dumps({"time": now_iso(), "snapshots": sorted(snapshots)}).encode()
    repo.backend.put(f"{REPAIRS}{uuid.uuid4().hex}", body)


def repaired_snapshots(repo: Repository) -> frozenset[str]:
    """Ids of the snapshots a repair-index found incomplete (a repair note that cannot be read
    counts as naming every snapshot)."""
    found: set[str] = set()
    for key, _size in repo.listed(REPAIRS):
        try:
            found.update(str(s) for s in json.loads(repo.backend.get(key))["snapshots"])
        except (CasnapError, ValueError, KeyError, TypeError, RecursionError):
            found.update(sid.hex() for sid, _ in repo.snapshots())
    return frozenset(found)
