"""Statistics: how much data the snapshots hold, how much is stored, and what each one added.

Logical bytes are what a checkout writes; unique bytes are the plain size of the distinct chunks;
stored bytes are what the repository occupies. A blob is charged to the first snapshot (in time
order) that reaches it, and within a snapshot to the first file (in path order) that needs it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from casnap.ids import ObjectId
from casnap.manifest import Snapshot
from casnap.repository import Repository
from casnap.selection import SnapshotFilter

if TYPE_CHECKING:  # reachability (numpy) is imported by the statistics, not by log
    from casnap.reachability import Reach


class SnapshotAdded(NamedTuple):
    """What one snapshot brought into the repository."""

    id: str
    time: str
    paths: tuple[str, ...]
    tags: tuple[str, ...]
    logical_bytes: int
    new_blobs: int
    added_bytes: int  # encoded bytes of the blobs no older snapshot still present reaches
    manifest_bytes: int
    bytes_added: int = 0  # what its commit added (commit_added): the figure log shows

    def to_json(self) -> dict[str, Any]:
        d = self._asdict()
        d["paths"], d["tags"] = list(self.paths), list(self.tags)
        return d


@dataclass
class RepositoryStats:
    """Totals for the whole repository."""

    snapshots: int = 0
    files: int = 0
    logical_bytes: int = 0
    unique_chunks: int = 0
    unique_bytes: int = 0  # plain bytes of distinct data chunks
    stored_chunk_bytes: int = 0  # encoded bytes of those chunks in packs
    tree_blobs: int = 0
    tree_bytes: int = 0  # encoded bytes of chunk lists
    pack_bytes: int = 0
    index_bytes: int = 0
    manifest_bytes: int = 0
    missing_blobs: int = 0  # needed but not in the index (see verify)
    snapshots_added: list[SnapshotAdded] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def stored_bytes(self) -> int:
        return self.pack_bytes + self.index_bytes + self.manifest_bytes

    @property
    def dedup_ratio(self) -> float:
        return self.logical_bytes / self.unique_bytes if self.unique_bytes else 0.0

    @property
    def compression_ratio(self) -> float:
        return self.unique_bytes / self.stored_chunk_bytes if self.stored_chunk_bytes else 0.0

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "snapshots_added"}
        d["stored_bytes"] = self.stored_bytes
        d["dedup_ratio"] = round(self.dedup_ratio, 4)
        d["compression_ratio"] = round(self.compression_ratio, 4)
        d["snapshots_added"] = [s.to_json() for s in self.snapshots_added]
        return d


class FileAdded(NamedTuple):
    """What one file of a snapshot added: chunks no older snapshot holds."""

    path: str
    size: int
    chunks: int
    new_chunks: int
    new_plain_bytes: int
    new_bytes: int  # encoded, chunk lists included

    def to_json(self) -> dict[str, Any]:
        return self._asdict()


@dataclass
class SnapshotStats:
    """Per-file new bytes of one snapshot, largest first."""

    id: str
    time: str
    logical_bytes: int
    new_bytes: int = 0
    new_plain_bytes: int = 0
    older_snapshots: int = 0
    files: list[FileAdded] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "files"}
        d["files"] = [f.to_json() for f in self.files]
        return d


def repository_stats(repo: Repository) -> RepositoryStats:
    """Totals and per-snapshot additions, under the shared lock."""
    t0 = time.perf_counter()
    out = RepositoryStats()
    with repo.lock("stats"):
        snaps, reach = _load(repo)
        referenced = reach.referenced()
        index = repo.store.index.entries(referenced)  # one batch lookup
        out.snapshots = len(snaps)
        out.files = sum(s.file_count for _, s in snaps)
        out.logical_bytes = sum(s.logical_bytes for _, s in snaps)
        stored = repo.raw_backend  # bytes as stored: sealed sizes in an encrypted repository
        sizes = {k: s for k, s in stored.list("snapshots/")}
        out.manifest_bytes = sum(sizes.values())
        out.pack_bytes = sum(s for _, s in stored.list("packs/"))
        out.index_bytes = sum(s for _, s in stored.list("index/"))
        for blob in referenced:
            e = index.get(blob)
            if e is None:
                out.missing_blobs += 1
            elif blob in reach.trees:
                out.tree_blobs += 1
                out.tree_bytes += e.stored
            else:
                out.unique_chunks += 1
                out.unique_bytes += e.plain
                out.stored_chunk_bytes += e.stored
        seen: set[ObjectId] = set()
        by_snapshot: dict[ObjectId, list[int]] = {sid: [0, 0] for sid, _ in snaps}
        for use in reach.files:
            acc = by_snapshot[use.snapshot]
            for blob, _ in reach.blobs_of(use):
                if blob in seen:
                    continue
                seen.add(blob)
                e = index.get(blob)
                if e is not None:
                    acc[0] += 1
                    acc[1] += e.stored
        for sid, s in snaps:
            new_blobs, added = by_snapshot[sid]
            out.snapshots_added.append(
                SnapshotAdded(
                    sid.hex(),
                    s.time,
                    s.paths,
                    s.tags,
                    s.logical_bytes,
                    new_blobs,
                    added,
                    sizes.get(f"snapshots/{sid.hex()}", 0),
                    commit_added(s, sizes.get(f"snapshots/{sid.hex()}", 0)),
                )
            )
    out.seconds = time.perf_counter() - t0
    return out


def snapshot_stats(repo: Repository, ref: str) -> SnapshotStats:
    """For one snapshot: the bytes each file added that no older snapshot holds, largest first."""
    from casnap.reachability import walk  # numpy: here, so `log` does without it

    t0 = time.perf_counter()
    with repo.lock("stats"):
        repo.refresh()
        sid = repo.resolve(ref)
        snaps = repo.snapshots()
        position = next(i for i, (s, _) in enumerate(snaps) if s == sid)
        older, snap = snaps[:position], snaps[position][1]
        repo.store.load_index()
        seen = walk(older, repo.store.get).referenced()
        mine = walk([(sid, snap)], repo.store.get)
        index = repo.store.index.entries(mine.referenced() - seen)  # one batch lookup
        out = SnapshotStats(sid.hex(), snap.time, snap.logical_bytes, older_snapshots=len(older))
        for use, entry in zip(mine.files, snap.files, strict=True):
            new = plain = encoded = 0
            for blob, is_tree in mine.blobs_of(use):
                if blob in seen:
                    continue
                seen.add(blob)
                e = index.get(blob)
                if e is None:
                    continue
                encoded += e.stored
                if not is_tree:
                    new += 1
                    plain += e.plain
            out.files.append(FileAdded(use.path, entry.size, entry.chunks, new, plain, encoded))
        out.files.sort(key=lambda f: (-f.new_bytes, f.path))
        out.new_bytes = sum(f.new_bytes for f in out.files)
        out.new_plain_bytes = sum(f.new_plain_bytes for f in out.files)
    out.seconds = time.perf_counter() - t0
    return out


def _load(repo: Repository) -> tuple[list[tuple[ObjectId, Snapshot]], Reach]:
    from casnap.reachability import walk

    repo.refresh()
    snaps = repo.snapshots()
    repo.store.load_index()
    return snaps, walk(snaps, repo.store.get)


def commit_added(snap: Snapshot, manifest_bytes: int) -> int:
    """The bytes a snapshot's commit added to the repository: the packs and index file it wrote
    plus its manifest. Fixed when the snapshot is taken; forgetting others does not change it."""
    return int(snap.stats.get("bytes_added", 0)) + manifest_bytes


def log_rows(repo: Repository, select: SnapshotFilter | None = None) -> list[dict[str, Any]]:
    """What `casnap log` lists: the snapshots select matches (all by default), newest first, as
    JSON-ready rows (id, time, message, tags, paths, host, files, logical_bytes, bytes_added)."""
    snaps = repo.snapshots()
    if select is not None:
        snaps = select.select(snaps)
    sizes = repo.manifest_sizes()
    return [
        {
            "id": sid.hex(),
            "time": s.time,
            "message": s.message,
            "tags": list(s.tags),
            "paths": list(s.paths),
            "host": s.host,
            "files": s.file_count,
            "logical_bytes": s.logical_bytes,
            "bytes_added": commit_added(s, sizes.get(sid.hex(), 0)),
        }
        for sid, s in reversed(snaps)
    ]
