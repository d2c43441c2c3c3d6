"""Garbage collection: keep every blob a snapshot reaches, reclaim the space of everything else.

Under the exclusive repository lock (no commit runs, so a pack no index names is garbage):
mark every TREE blob and data chunk the snapshots reach, then
1. write the chunks still needed from mostly-unused packs into new packs,
2. write one new index naming exactly the needed blobs,
3. delete the old index files,
4. delete the packs no index names any more, and leftover temp files.
A crash between any two steps leaves every snapshot readable; the next gc finishes the job.
docs/FORMAT.md ("Garbage collection") gives the full argument.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from casnap.backends.local import LocalBackend
from casnap.errors import IntegrityError
from casnap.ids import ID_SIZE, ObjectId
from casnap.reachability import Reach, walk
from casnap.repository import Repository
from casnap.store import (
    DIR_ENTRY_SIZE,
    INDEX_ENTRY_SIZE,
    INDEX_MAGIC,
    IndexEntry,
    PackWriter,
    Store,
    pack_id_of,
    pack_key,
    pack_overhead,
)

# Repack a pack when more than this share of its bytes is unreferenced (restic's default
# --max-unused is 5%): rewriting a pack costs reading and writing all of it, so a little waste in
# a pack is cheaper to keep than to move.
DEFAULT_MAX_UNUSED = 5.0


KEEP, REPACK, DELETE, UNINDEXED = "keep", "repack", "delete", "unindexed"


@dataclass(frozen=True)
class PackFate:
    """What gc does with one pack, and why."""

    pack: ObjectId
    size: int
    used_blobs: int
    used_bytes: int
    unused_bytes: int
    action: str  # keep | repack | delete (nothing referenced) | unindexed (no index names it)

    def to_json(self) -> dict[str, Any]:
        return {
            "pack": self.pack.hex(),
            "size": self.size,
            "used_blobs": self.used_blobs,
            "used_bytes": self.used_bytes,
            "unused_bytes": self.unused_bytes,
            "action": self.action,
        }


@dataclass
class GcReport:
    """What a gc did (or, with dry_run, would do)."""

    dry_run: bool
    max_unused: float
    snapshots: int = 0
    referenced_blobs: int = 0
    packs_before: int = 0
    pack_bytes_before: int = 0
    packs_deleted: int = 0
    packs_unindexed: int = 0
    packs_repacked: int = 0
    packs_written: int = 0
    pack_bytes_removed: int = 0
    pack_bytes_written: int = 0
    index_entries_dropped: int = 0
    index_files_removed: int = 0
    index_files_written: int = 0
    index_bytes_removed: int = 0
    index_bytes_written: int = 0
    temp_files_removed: int = 0
    temp_bytes_removed: int = 0
    seconds: float = 0.0
    packs: list[PackFate] = field(default_factory=list)

    @property
    def bytes_freed(self) -> int:
        """Net bytes the repository shrinks by (an estimate for index files on a dry run)."""
        return (
            self.pack_bytes_removed
            - self.pack_bytes_written
            + self.index_bytes_removed
            - self.index_bytes_written
            + self.temp_bytes_removed
        )

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "packs"}
        d["bytes_freed"] = self.bytes_freed
        d["packs"] = [p.to_json() for p in self.packs if p.action != KEEP]
        return d


@dataclass
class GcPlan:
    """A decided gc: the fate of every pack and the blobs to keep; nothing changed yet."""

    report: GcReport
    fates: dict[ObjectId, PackFate]
    keep: dict[ObjectId, list[tuple[ObjectId, IndexEntry]]]  # pack -> needed blobs in it
    index_keys: list[tuple[str, int]]
    current: dict[ObjectId, set[IndexEntry]]
    temp_files: list[Path]


def collect(
    repo: Repository,
    *,
    dry_run: bool = False,
    max_unused: float = DEFAULT_MAX_UNUSED,
    assume_forgotten: frozenset[ObjectId] = frozenset(),
) -> GcReport:
    """gc under the exclusive lock; a dry run takes the shared lock and changes nothing.

    A dry run may assume some snapshots already forgotten (what `prune --dry-run` would free).
    """
    if assume_forgotten and not dry_run:
        raise ValueError("assume_forgotten is for dry runs: forget the snapshots instead")
    t0 = time.perf_counter()
    if dry_run:
        with repo.lock("gc --dry-run"):
            repo.refresh()
            report = plan(repo, max_unused=max_unused, exclude=assume_forgotten).report
    else:
        with repo.lock("gc", exclusive=True):
            repo.refresh()
            p = plan(repo, max_unused=max_unused)
            _execute(repo, p)
            repo.refresh()
            report = p.report
    report.seconds = time.perf_counter() - t0
    return report


def plan(
    repo: Repository,
    *,
    max_unused: float = DEFAULT_MAX_UNUSED,
    exclude: frozenset[ObjectId] = frozenset(),
) -> GcPlan:
    """Decide the fate of every pack without changing anything.

    `exclude` names snapshots to treat as already forgotten (prune --dry-run estimates with it).
    Raises IntegrityError, before anything is deleted, when a blob some snapshot needs has no
    index entry pointing into an existing pack: deleting on a damaged index could lose data.
    """
    if not 0.0 <= max_unused <= 100.0:
        raise ValueError("max_unused is a percentage between 0 and 100")
    report = GcReport(dry_run=True, max_unused=max_unused)
    backend = repo.backend
    snaps = [(sid, s) for sid, s in repo.snapshots() if sid not in exclude]
    report.snapshots = len(snaps)

    # listing order matters for a shared-lock dry run: snapshots, then index, then packs
    index_keys = list(backend.list("index/"))
    current: dict[ObjectId, set[IndexEntry]] = {}
    for key, _size in index_keys:
        try:
            entries = repo.store.load_index_file(key)
        except IntegrityError as exc:
            raise IntegrityError(
                f"gc stopped before changing anything: {exc}; run `casnap repair-index`"
            ) from None
        for cid, e in entries:
            current.setdefault(cid, set()).add(e)
    packs: dict[ObjectId, int] = {}
    for key, size in backend.list("packs/"):
        pack = pack_id_of(key)
        if pack is not None:
            packs[pack] = size
    report.packs_before = len(packs)
    report.pack_bytes_before = sum(packs.values())

    # each pack's own directory, to trust only index entries it confirms (None: unreadable)
    directories: dict[ObjectId, dict[ObjectId, tuple[Any, ...]] | None] = {}
    for pack in {e.pack for entries in current.values() for e in entries}:
        if pack in packs:
            try:
                records = repo.store.read_pack_directory(pack, packs[pack])
                directories[pack] = {r[0]: r for r in records}
            except IntegrityError:
                directories[pack] = None

    def valid(cid: ObjectId, e: IndexEntry) -> bool:
        if e.pack not in packs or e.offset + e.length > packs[e.pack]:
            return False
        described = directories.get(e.pack)
        return described is None or described.get(cid) == (cid, *e[1:])

    chosen: dict[ObjectId, IndexEntry] = {}
    for cid, entries in current.items():
        good = sorted((e for e in entries if valid(cid, e)), key=lambda e: (e.pack, e.offset))
        if good:
            chosen[cid] = good[0]

    def read_tree(lid: ObjectId) -> bytes:
        e = chosen.get(lid)
        if e is None:
            raise IntegrityError(f"chunk {lid.hex()} is not in the index")
        return Store.decode_verified(lid, e, backend.get(pack_key(e.pack), e.offset, e.length))

    try:
        reach: Reach = walk(snaps, read_tree, strict=True)
    except IntegrityError as exc:
        raise IntegrityError(
            f"gc stopped before changing anything: {exc}; run `casnap verify`"
        ) from None
    referenced = reach.referenced()
    report.referenced_blobs = len(referenced)
    missing = [cid for cid in referenced if cid not in chosen]
    if missing:
        raise IntegrityError(
            f"gc stopped before changing anything: {len(missing)} chunk(s) that snapshots need "
            f"have no index entry in an existing pack (first: {missing[0].hex()}); run "
            "`casnap verify`, then `casnap repair-index`"
        )

    keep: dict[ObjectId, list[tuple[ObjectId, IndexEntry]]] = {}
    for cid in referenced:
        e = chosen[cid]
        keep.setdefault(e.pack, []).append((cid, e))
    named: dict[ObjectId, int] = {}  # pack -> index entries naming it
    for entries in current.values():
        for e in entries:
            named[e.pack] = named.get(e.pack, 0) + 1
    report.index_entries_dropped = sum(len(v) for v in current.values()) - len(referenced)

    fates: dict[ObjectId, PackFate] = {}
    for pack, size in sorted(packs.items()):
        used = keep.get(pack, [])
        used_bytes = sum(e.stored for _, e in used)  # a frame's share per chunk it holds
        if pack not in named:
            fate = PackFate(pack, size, 0, 0, size, UNINDEXED)
        elif not used:
            fate = PackFate(pack, size, 0, 0, size, DELETE)
        else:
            described = directories.get(pack)
            # a damaged directory: estimate its size from the index
            dir_len = (len(described) if described is not None else named[pack]) * DIR_ENTRY_SIZE
            unused = max(0, size - pack_overhead(dir_len) - used_bytes)
            action = REPACK if unused * 100.0 > max_unused * size else KEEP
            fate = PackFate(pack, size, len(used), used_bytes, unused, action)
        fates[pack] = fate

    for fate in fates.values():
        if fate.action == KEEP:
            continue
        report.pack_bytes_removed += fate.size
        if fate.action == DELETE:
            report.packs_deleted += 1
        elif fate.action == UNINDEXED:
            report.packs_unindexed += 1
        else:
            report.packs_repacked += 1
    moved = [f for f in fates.values() if f.action == REPACK]
    if moved:
        moved_bytes = sum(f.used_bytes for f in moved)
        moved_blobs = sum(f.used_blobs for f in moved)
        report.packs_written = max(1, -(-moved_bytes // repo.store.pack_target))
        report.pack_bytes_written = (
            moved_bytes + moved_blobs * DIR_ENTRY_SIZE + report.packs_written * pack_overhead(0)
        )
    report.packs = list(fates.values())
    temp = _temp_files(repo)
    report.temp_files_removed = len(temp)
    report.temp_bytes_removed = sum(_file_size(p) for p in temp)
    rewrite = _needs_new_index(index_keys, current, keep, fates)
    if rewrite:
        report.index_files_removed = len(index_keys)
        report.index_bytes_removed = sum(s for _, s in index_keys)
        report.index_files_written = 1
        packs_after = sum(f.action == KEEP for f in fates.values()) + report.packs_written
        report.index_bytes_written = index_size_estimate(packs_after, len(referenced))
    return GcPlan(report, fates, keep, index_keys, current, temp)


def index_size_estimate(packs: int, entries: int) -> int:
    """An upper bound of an index file's size (ids barely compress)."""
    return len(INDEX_MAGIC) + 8 + packs * ID_SIZE + entries * INDEX_ENTRY_SIZE


def _needs_new_index(
    index_keys: list[tuple[str, int]],
    current: dict[ObjectId, set[IndexEntry]],
    keep: dict[ObjectId, list[tuple[ObjectId, IndexEntry]]],
    fates: dict[ObjectId, PackFate],
) -> bool:
    """False when the one index file already names exactly the needed blobs, once each."""
    if any(f.action in (REPACK, DELETE) for f in fates.values()) or len(index_keys) != 1:
        return True
    needed = sum(len(v) for v in keep.values())
    return needed != len(current) or any(len(v) != 1 for v in current.values())


def _execute(repo: Repository, p: GcPlan) -> None:
    """Carry out a plan in crash-safe order: new packs, new index, old index, old packs."""
    report = p.report
    report.dry_run = False
    backend = repo.backend
    fresh = Store(backend, repo.store.pack_target)  # empty index: every chunk is written again
    writer = PackWriter(fresh)
    for fate in p.fates.values():
        if fate.action != REPACK:
            continue
        data = backend.get(pack_key(fate.pack))
        # a frame keeps only its needed chunks: copied as it is when they fill it, else
        # compressed again from their (verified) bytes
        frames: dict[int, list[tuple[ObjectId, IndexEntry]]] = {}
        for cid, e in p.keep[fate.pack]:
            frames.setdefault(e.offset, []).append((cid, e))
        for offset in sorted(frames):
            members = frames[offset]
            e0 = members[0][1]
            try:  # never copy damage into a new pack
                encoded, frame_plain, placed = Store.rewrite_frame(
                    data[offset : offset + e0.length], members, repo.zstd_level, repo.float_level
                )
            except IntegrityError as exc:
                raise IntegrityError(
                    f"gc stopped before deleting anything: {exc}; run `casnap verify --read-data`"
                ) from None
            writer.add_frame(e0.type, encoded, frame_plain, placed)
    writer.close()
    new_packs = {e.pack for e in writer.new.values()}
    report.packs_written = len(new_packs)
    report.pack_bytes_written = writer.bytes_added

    # 2. one index naming exactly the needed blobs, then 3. drop the old index files
    if _needs_new_index(p.index_keys, p.current, p.keep, p.fates) or writer.new:
        entries: dict[ObjectId, IndexEntry] = {}
        for pack, blobs in p.keep.items():
            if p.fates[pack].action == KEEP:
                entries.update(blobs)
        entries.update(writer.new)
        new_key, new_size = repo.store.write_index(dict(sorted(entries.items())))
        report.index_files_written = 1
        report.index_bytes_written = new_size
        report.index_files_removed = 0
        report.index_bytes_removed = 0
        for key, size in p.index_keys:
            if key != new_key:
                backend.delete(key)
                report.index_files_removed += 1
                report.index_bytes_removed += size
    else:
        report.index_files_written = report.index_files_removed = 0
        report.index_bytes_written = report.index_bytes_removed = 0

    # 4. packs no index names any more
    for fate in p.fates.values():
        if fate.action != KEEP and fate.pack not in new_packs:
            backend.delete(pack_key(fate.pack))
    for path in p.temp_files:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _temp_files(repo: Repository) -> list[Path]:
    """Leftover temp files of interrupted writes; lock attempts of waiting processes excluded."""
    backend = repo.backend
    if not isinstance(backend, LocalBackend):
        return []
    locks_dir = backend.root / "locks"
    return sorted(p for p in backend.temp_files() if locks_dir not in p.parents)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
