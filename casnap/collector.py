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

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from casnap.backends.local import LocalBackend
from casnap.chunkindex import (
    ChunkIndex,
    IndexEntry,
    encode_index,
    entry_of,
    stored_bytes,
    take_fields,
)
from casnap.constants import DEFAULT_MAX_UNUSED
from casnap.entrytable import EntryTable, merge_parts
from casnap.errors import IntegrityError
from casnap.ids import ObjectId
from casnap.locks import LOCKS, Held, before_delete
from casnap.packs import (
    DIR_ENTRY_SIZE,
    check_pack_entries,
    index_key,
    pack_id_of,
    pack_key,
    pack_overhead,
)
from casnap.packwriter import PackWriter
from casnap.reachability import Reach, walk
from casnap.repository import Repository
from casnap.store import Store

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
    def bytes_deleted(self) -> int:
        """Bytes of the files gc deleted: packs, index files, temp files."""
        return self.pack_bytes_removed + self.index_bytes_removed + self.temp_bytes_removed

    @property
    def bytes_written(self) -> int:
        """Bytes of the files gc created: new packs and the new index file (an object found
        stored already under its name is not written again, and not counted)."""
        return self.pack_bytes_written + self.index_bytes_written

    @property
    def bytes_freed(self) -> int:
        """Net bytes the repository shrank by: exactly its size before gc minus after. A dry run
        builds the same packs and index in memory, so it reports what gc would free exactly."""
        return self.bytes_deleted - self.bytes_written

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "packs"}
        d["bytes_deleted"] = self.bytes_deleted
        d["bytes_written"] = self.bytes_written
        d["bytes_freed"] = self.bytes_freed
        d["packs"] = [p.to_json() for p in self.packs if p.action != KEEP]
        return d


class _Keep(Mapping[ObjectId, list[tuple[ObjectId, IndexEntry]]]):
    """pack -> the needed blobs in it with the entry chosen for each, made on demand from the
    plan's arrays (a list of objects for every blob would cost ~200 bytes each)."""

    def __init__(
        self,
        packs: list[ObjectId],
        ids: np.ndarray,
        fields: np.ndarray,
        spans: dict[ObjectId, tuple[int, int]],
    ) -> None:
        self.packs = packs  # pack numbers of fields index this table
        self.ids = ids
        self.fields = fields
        self._spans = spans

    def rows(self, pack: ObjectId) -> tuple[np.ndarray, np.ndarray]:
        """(ids, fields) of the needed blobs in pack, in frame and chunk order."""
        lo, hi = self._spans[pack]
        return self.ids[lo:hi], self.fields[lo:hi]

    def __getitem__(self, pack: ObjectId) -> list[tuple[ObjectId, IndexEntry]]:
        ids, fields = self.rows(pack)
        pairs = zip(ids, fields, strict=True)
        return [(ObjectId(i.tobytes()), entry_of(self.packs, f)) for i, f in pairs]

    def __iter__(self) -> Iterator[ObjectId]:
        return iter(self._spans)

    def __len__(self) -> int:
        return len(self._spans)


@dataclass
class GcPlan:
    """A decided gc: the fate of every pack and the blobs to keep; nothing changed yet."""

    report: GcReport
    fates: dict[ObjectId, PackFate]
    keep: _Keep  # pack -> needed blobs in it
    index_keys: list[tuple[str, int]]
    temp_files: list[Path]
    rewrite: bool  # a new index file is needed even if no pack is rewritten
    pack_sizes: dict[ObjectId, int]  # every pack listed, with its size


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
        with repo.lock("gc", dry_run=True):
            repo.refresh()
            p = plan(repo, max_unused=max_unused, exclude=assume_forgotten)
            carry_out(repo, p, dry_run=True)
    else:
        with repo.lock("gc") as held:
            repo.refresh()
            p = plan(repo, max_unused=max_unused)
            carry_out(repo, p, dry_run=False, held=held)
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
    Every index entry is held in arrays (EntryTable), not as objects.
    """
    if not 0.0 <= max_unused <= 100.0:
        raise ValueError("max_unused is a percentage between 0 and 100")
    report = GcReport(dry_run=True, max_unused=max_unused)
    backend = repo.backend
    snaps = [(sid, s) for sid, s in repo.snapshots(files=True, but=exclude) if sid not in exclude]
    report.snapshots = len(snaps)

    # listing order matters for a shared-lock dry run: snapshots, then index, then packs
    index_keys = list(backend.list("index/"))
    parts = []
    for key, size in index_keys:
        try:
            parts.append(repo.store.load_index_file(key, size))
        except IntegrityError as exc:
            raise IntegrityError(
                f"gc stopped before changing anything: {exc}; run `casnap repair-index`"
            ) from exc
    table = EntryTable(parts)
    del parts
    packs: dict[ObjectId, int] = {}
    for key, size in backend.list("packs/"):
        pack = pack_id_of(key)
        if pack is not None:
            packs[pack] = size
    report.packs_before = len(packs)
    report.pack_bytes_before = sum(packs.values())

    # an entry is trusted when it lies inside an existing pack and the pack's own directory
    # (read from its tail) confirms it; a damaged directory confirms nothing and denies nothing,
    # a directory that cannot be read (an I/O error) stops gc
    f = table.fields
    number = {bytes(p): n for n, p in enumerate(table.packs)}
    valid = np.zeros(len(table), dtype=bool)
    described: dict[int, int | None] = {}  # pack number -> distinct ids its directory names
    for n, rows in table.by_pack().items():
        pack = table.packs[n]
        check = check_pack_entries(backend, pack, packs.get(pack), table.ids[rows], f[rows])
        valid[rows] = check.trusted
        if check.size is None:  # missing: none of its entries is trusted
            continue
        if check.unreadable is not None and not isinstance(check.unreadable, IntegrityError):
            raise check.unreadable
        described[n] = check.described

    # one entry per blob: of its trusted entries, the one in the lowest pack id, lowest offset
    rank = np.zeros(len(table.packs), dtype=np.int64)
    rank[sorted(range(len(table.packs)), key=lambda n: bytes(table.packs[n]))] = np.arange(
        len(table.packs)
    )
    group, distinct = table.id_groups()
    trusted = np.nonzero(valid)[0]
    order = np.lexsort((f["offset"][trusted], rank[f["pack"][trusted]], group[trusted]))
    trusted = trusted[order]
    first = np.ones(len(trusted), dtype=bool)
    first[1:] = group[trusted][1:] != group[trusted][:-1]
    chosen = ChunkIndex()
    chosen.add([(table.packs, table.ids[trusted[first]], f[trusted[first]])])

    def read_tree(lid: ObjectId) -> bytes:
        e = chosen.get(lid)
        if e is None:
            raise IntegrityError(f"chunk {lid.hex()} {_untrusted(table, packs, lid)}")
        return repo.store.decode_verified(lid, e, backend.get(pack_key(e.pack), e.offset, e.length))

    try:
        reach: Reach = walk(snaps, read_tree, strict=True, keep_lists=False)
    except IntegrityError as exc:
        raise IntegrityError(
            f"gc stopped before changing anything: {exc}; run `casnap verify`"
        ) from exc
    referenced = reach.referenced_ids()
    del reach
    report.referenced_blobs = len(referenced)
    rows = chosen.lookup(referenced)
    missing = np.nonzero(rows < 0)[0]
    if len(missing):
        raise IntegrityError(
            f"gc stopped before changing anything: {len(missing)} chunk(s) that snapshots need "
            "have no index entry in an existing pack (first: "
            f"{referenced[missing[0]].tobytes().hex()}); run `casnap verify`, then "
            "`casnap repair-index`; a commit of the data then stores lost chunks again, and a "
            "snapshot verify still names as broken can be dropped with `casnap forget`"
        )
    kf = chosen.fields(rows)
    order = np.lexsort((kf["inner"], kf["offset"], kf["pack"]))
    kids, kf = referenced[order], kf[order]
    del referenced, rows
    npacks = len(table.packs)
    named = np.bincount(f["pack"], minlength=npacks)  # index entries naming each pack
    used_blobs = np.bincount(kf["pack"], minlength=npacks)
    used_bytes = np.zeros(npacks, dtype=np.int64)
    np.add.at(used_bytes, kf["pack"].astype(np.int64), stored_bytes(kf))  # a frame's share
    starts = np.searchsorted(kf["pack"], np.arange(npacks), "left")
    stops = np.searchsorted(kf["pack"], np.arange(npacks), "right")
    spans = {
        table.packs[n]: (int(starts[n]), int(stops[n])) for n in range(npacks) if used_blobs[n]
    }
    report.index_entries_dropped = len(table) - len(kids)

    fates: dict[ObjectId, PackFate] = {}
    for pack, size in sorted(packs.items()):
        row = number.get(bytes(pack))
        if row is None:
            fate = PackFate(pack, size, 0, 0, size, UNINDEXED)
        elif not used_blobs[row]:
            fate = PackFate(pack, size, 0, 0, size, DELETE)
        else:
            # a damaged directory: estimate its size from the index
            dir_count = described.get(row)
            dir_len = (dir_count if dir_count is not None else int(named[row])) * DIR_ENTRY_SIZE
            used = int(used_bytes[row])
            unused = max(0, size - pack_overhead(dir_len) - used)
            action = REPACK if unused * 100.0 > max_unused * size else KEEP
            fate = PackFate(pack, size, int(used_blobs[row]), used, unused, action)
        fates[pack] = fate

    for fate in fates.values():
        if fate.action == DELETE:
            report.packs_deleted += 1
        elif fate.action == UNINDEXED:
            report.packs_unindexed += 1
        elif fate.action == REPACK:
            report.packs_repacked += 1
    report.packs = list(fates.values())
    rewrite = (
        any(f.action in (REPACK, DELETE) for f in fates.values())
        or len(index_keys) != 1
        or len(kids) != distinct  # an entry no snapshot needs
        or len(table) != distinct  # a blob with several entries
    )
    keep = _Keep(table.packs, kids, kf, spans)
    return GcPlan(report, fates, keep, index_keys, temp_files(repo), rewrite, packs)


def _new_index(
    p: GcPlan, moved: list[tuple[list[ObjectId], np.ndarray, np.ndarray]]
) -> tuple[list[ObjectId], np.ndarray, np.ndarray]:
    """The one index file gc leaves: the needed blobs of the kept packs and those moved, in
    pack and frame order (it compresses as well as a commit's index files)."""
    packs = p.keep.packs
    kept = np.array(
        [
            n < len(packs)
            and p.fates.get(packs[n]) is not None
            and p.fates[packs[n]].action == KEEP
            for n in range(len(packs))
        ],
        dtype=bool,
    )
    ids, fields = p.keep.ids, p.keep.fields
    mask = kept[fields["pack"]] if len(fields) else np.zeros(0, dtype=bool)
    return merge_parts([(packs, ids[mask], take_fields(fields, mask)), *moved])


def carry_out(repo: Repository, p: GcPlan, *, dry_run: bool, held: Held | None = None) -> None:
    """Carry out a plan in crash-safe order: new packs, new index, old index, old packs, temp
    files; counting exactly the bytes deleted and written. held, the exclusive lock the plan
    was made under, is confirmed before each delete (Held.before_delete): a gc stalled past the
    stale age whose lock another process removed stops before deleting anything more.

    A dry run does the same work in memory (packs read one at a time, frames verified and
    compressed again, each new pack built to learn its size and id, the index encoded) but
    stores and deletes nothing, so it reports what gc would do to the byte.
    """
    report = p.report
    report.dry_run = dry_run
    backend = repo.backend
    # 1. new packs: a pack found stored already under its name is neither written nor deleted
    moved, created = _repack(repo, p, dry_run)
    new_packs = set(moved[0])
    report.packs_written = len(created)
    report.pack_bytes_written = sum(size for _, size in created)

    # 2. one index naming exactly the needed blobs, then 3. drop the old index files: durable
    # together (backend.deleting) before any pack goes, as a pack is deleted only when no index
    # file names it (in any order among themselves: the new index names every needed blob)
    if p.rewrite or len(moved[1]):
        new_key = _write_index(repo, p, moved, dry_run)
        with backend.deleting():
            for key, size in p.index_keys:
                if key != new_key:
                    if not dry_run:
                        before_delete(held, in_a_row=True)
                        backend.delete(key)
                    report.index_files_removed += 1
                    report.index_bytes_removed += size

    # 4. packs no index names any more (durable together), then leftover temp files
    with backend.deleting():
        for fate in p.fates.values():
            if fate.action != KEEP and fate.pack not in new_packs:
                if not dry_run:
                    before_delete(held, in_a_row=True)
                    backend.delete(pack_key(fate.pack))
                report.pack_bytes_removed += fate.size
    for path in p.temp_files:
        try:
            size = path.stat().st_size
            if not dry_run:
                before_delete(held, in_a_row=True)
                path.unlink()
        except FileNotFoundError:
            continue  # gone meanwhile
        report.temp_files_removed += 1
        report.temp_bytes_removed += size


def _repack(
    repo: Repository, p: GcPlan, dry_run: bool
) -> tuple[tuple[list[ObjectId], np.ndarray, np.ndarray], list[tuple[ObjectId, int]]]:
    """Write the needed blobs of the packs to repack into new packs, reading one pack at a time:
    ((pack table, ids, fields) of the new packs, [(pack, size)] of those actually created).

    A frame whose chunks are all needed is copied as it is; any other is compressed again from
    its needed (verified) chunks, so the space of the others is reclaimed. A dry run puts no
    pack: it only asks whether one of that name is stored already.
    """
    backend = repo.backend
    fresh = Store(
        backend, repo.store.pack_target, repo.ids
    )  # empty index: every chunk is written again
    put = (lambda key, _data: pack_id_of(key) not in p.pack_sizes) if dry_run else None
    writer = PackWriter(fresh, put)
    try:
        for fate in p.fates.values():
            if fate.action != REPACK:
                continue
            data = repo.store.read_pack(pack_key(fate.pack)).data  # a damaged one: salvaged
            members = p.keep[fate.pack]  # in frame and chunk order
            start = 0
            while start < len(members):
                e0 = members[start][1]
                stop = start + 1
                while stop < len(members) and members[stop][1].offset == e0.offset:
                    stop += 1
                try:  # never copy damage into a new pack
                    encoded, frame_plain, placed = fresh.rewrite_frame(
                        data[e0.offset : e0.offset + e0.length],
                        members[start:stop],
                        int(repo.config["zstd_level"]),
                        int(repo.config.get("float_level", repo.config["zstd_level"])),
                    )
                except IntegrityError as exc:
                    stopped = "gc --dry-run stopped" if dry_run else "gc stopped before deleting"
                    raise IntegrityError(
                        f"{stopped} anything: {exc}; run `casnap verify --read-data`"
                    ) from exc
                writer.add_frame(e0.type, encoded, frame_plain, placed)
                start = stop
            del data, members
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return writer.new_entries(), writer.created


def _write_index(
    repo: Repository,
    p: GcPlan,
    moved: tuple[list[ObjectId], np.ndarray, np.ndarray],
    dry_run: bool,
) -> str | None:
    """Store the one index file gc leaves (none when no snapshot needs anything); its key."""
    packs, ids, fields = _new_index(p, [moved])
    if not len(ids):
        return None
    blob = encode_index(packs, ids, fields)
    key = index_key(repo.ids(blob))
    if dry_run:
        made = key not in {k for k, _ in p.index_keys}
    else:
        made = repo.store.put_verified(key, blob)
    if made:
        p.report.index_files_written = 1
        p.report.index_bytes_written = len(blob)
    return key


def temp_files(repo: Repository) -> list[Path]:
    """Leftover temp files of interrupted writes; lock attempts of waiting processes excluded
    (what gc removes; verify names those whose writer is gone)."""
    backend = repo.raw_backend
    return backend.temp_files(skip=LOCKS) if isinstance(backend, LocalBackend) else []


def _untrusted(table: EntryTable, packs: dict[ObjectId, int], cid: ObjectId) -> str:
    """Why a chunk has no trusted entry: not indexed at all, or where its entry points (a pack
    missing, cut short before it, or whose directory does not hold it)."""
    rows = table.rows_of(cid)
    if not len(rows):
        return "is not in the index"
    e = table.entry(int(rows[0]))
    size = packs.get(e.pack)
    if size is None:
        return f"is indexed in pack {e.pack.hex()}, which is missing"
    if e.offset + e.length > size:
        return (
            f"lies at {e.offset}+{e.length}, past the end of pack {e.pack.hex()} "
            f"({size} bytes; truncated)"
        )
    return f"is indexed in pack {e.pack.hex()}, whose directory does not confirm it (damaged)"
