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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from casnap.backends.local import LocalBackend
from casnap.chunkindex import EntryTable, entry_of, merge_parts, stored_bytes
from casnap.errors import IntegrityError
from casnap.ids import ObjectId, hash_bytes
from casnap.reachability import Reach, walk
from casnap.repository import Repository
from casnap.store import (
    DIR_DTYPE,
    DIR_ENTRY_SIZE,
    PACK_HEADER,
    ChunkIndex,
    IndexEntry,
    PackWriter,
    Store,
    directory_agrees,
    directory_size,
    encode_index_arrays,
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
        """Net bytes the repository shrinks by. A dry run estimates the packs and index file it
        would write by laying them out (only frames compressed again are guessed, at their
        chunks' share of the frame)."""
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
    Every index entry is held in arrays (EntryTable), not as objects.
    """
    if not 0.0 <= max_unused <= 100.0:
        raise ValueError("max_unused is a percentage between 0 and 100")
    report = GcReport(dry_run=True, max_unused=max_unused)
    backend = repo.backend
    snaps = [(sid, s) for sid, s in repo.snapshots() if sid not in exclude]
    report.snapshots = len(snaps)

    # listing order matters for a shared-lock dry run: snapshots, then index, then packs
    index_keys = list(backend.list("index/"))
    parts = []
    for key, _size in index_keys:
        try:
            parts.append(repo.store.load_index_file_arrays(key))
        except IntegrityError as exc:
            raise IntegrityError(
                f"gc stopped before changing anything: {exc}; run `casnap repair-index`"
            ) from None
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
    # (read from its tail) confirms it; an unreadable directory confirms nothing and denies nothing
    f = table.fields
    number = {bytes(p): n for n, p in enumerate(table.packs)}
    psize = np.array([packs.get(p, -1) for p in table.packs], dtype=np.int64)
    size_of = psize[f["pack"]]
    valid = (size_of >= 0) & (f["offset"].astype(np.int64) + f["length"] <= size_of)
    described: dict[int, int | None] = {}  # pack number -> distinct ids its directory names
    for n, rows in table.by_pack().items():
        if psize[n] < 0:
            continue
        try:
            rec = repo.store.read_pack_directory_array(table.packs[n], int(psize[n]))
        except IntegrityError:
            described[n] = None
            continue
        described[n], agrees = directory_agrees(rec, table.ids[rows], f[rows])
        valid[rows] &= agrees

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
            raise IntegrityError(f"chunk {lid.hex()} is not in the index")
        return Store.decode_verified(lid, e, backend.get(pack_key(e.pack), e.offset, e.length))

    try:
        reach: Reach = walk(snaps, read_tree, strict=True, keep_lists=False)
    except IntegrityError as exc:
        raise IntegrityError(
            f"gc stopped before changing anything: {exc}; run `casnap verify`"
        ) from None
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
            "`casnap repair-index`"
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
        n = number.get(bytes(pack))
        if n is None:
            fate = PackFate(pack, size, 0, 0, size, UNINDEXED)
        elif not used_blobs[n]:
            fate = PackFate(pack, size, 0, 0, size, DELETE)
        else:
            # a damaged directory: estimate its size from the index
            dir_count = described.get(n)
            dir_len = (dir_count if dir_count is not None else int(named[n])) * DIR_ENTRY_SIZE
            used = int(used_bytes[n])
            unused = max(0, size - pack_overhead(dir_len) - used)
            action = REPACK if unused * 100.0 > max_unused * size else KEEP
            fate = PackFate(pack, size, int(used_blobs[n]), used, unused, action)
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
    keep = _Keep(table.packs, kids, kf, spans)
    moved = _simulate_repack(keep, fates, repo.store.pack_target)
    report.packs_written = len(moved.packs)
    report.pack_bytes_written = moved.pack_bytes
    report.packs = list(fates.values())
    temp = _temp_files(repo)
    report.temp_files_removed = len(temp)
    report.temp_bytes_removed = sum(_file_size(p) for p in temp)
    rewrite = (
        any(f.action in (REPACK, DELETE) for f in fates.values())
        or len(index_keys) != 1
        or len(kids) != distinct  # an entry no snapshot needs
        or len(table) != distinct  # a blob with several entries
    )
    p = GcPlan(report, fates, keep, index_keys, temp, rewrite)
    if rewrite:
        report.index_files_removed = len(index_keys)
        report.index_bytes_removed = sum(s for _, s in index_keys)
        # the index a real gc writes, with the repacked blobs where the simulation put them;
        # none when no snapshot needs anything
        new_index = _new_index(p, moved.parts)
        if len(new_index[1]):
            report.index_files_written = 1
            report.index_bytes_written = len(encode_index_arrays(*new_index))
    return p


@dataclass
class _Moved:
    """Where repacking would put the blobs it moves (an estimate: a frame of which only some
    chunks are kept is compressed again, to about their share of its bytes)."""

    packs: list[ObjectId]
    pack_bytes: int
    parts: list[tuple[list[ObjectId], np.ndarray, np.ndarray]]


def _simulate_repack(keep: _Keep, fates: dict[ObjectId, PackFate], pack_target: int) -> _Moved:
    """Lay the needed blobs of the packs to repack into new packs as _execute does, without
    reading them: frames in the same order, a pack closed once it reaches pack_target."""
    packs: list[ObjectId] = []
    total = 0
    ids_out: list[np.ndarray] = []
    fields_out: list[np.ndarray] = []
    pos = len(PACK_HEADER)
    cur_ids: list[np.ndarray] = []
    cur_rec: list[np.ndarray] = []

    def close() -> None:
        nonlocal pos, total
        if not cur_rec:
            return
        rec = np.zeros(sum(len(r) for r in cur_rec), dtype=DIR_DTYPE)
        rec["id"] = np.concatenate(cur_ids)
        fields = np.concatenate(cur_rec)
        for name in ("type", "offset", "length", "plain", "inner", "frame_plain"):
            rec[name] = fields[name]
        fields["pack"] = len(packs)
        packs.append(ObjectId(hash_bytes(b"gc estimate %d" % len(packs))))
        total += pos - len(PACK_HEADER) + pack_overhead(directory_size(rec))
        ids_out.append(rec["id"])
        fields_out.append(fields)
        cur_ids.clear()
        cur_rec.clear()
        pos = len(PACK_HEADER)

    for fate in fates.values():
        if fate.action != REPACK:
            continue
        ids, fields = keep.rows(fate.pack)
        cuts = np.nonzero(np.diff(fields["offset"]))[0] + 1
        for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), len(fields)], strict=True):
            frame = fields[lo:hi].copy()
            whole = int(frame["frame_plain"][0]) or int(frame["plain"][0])
            plain = frame["plain"].astype(np.int64)
            if int(plain.sum()) != whole:  # compressed again from the kept chunks
                frame["length"] = max(1, int(stored_bytes(frame).sum()))
                frame["inner"] = np.concatenate([[0], np.cumsum(plain)[:-1]])
                frame["frame_plain"] = int(plain.sum()) if len(frame) > 1 else 0
            frame["offset"] = pos
            pos += int(frame["length"][0])
            cur_ids.append(ids[lo:hi])
            cur_rec.append(frame)
            if pos >= pack_target:
                close()
    close()
    parts = []
    if fields_out:
        parts.append((packs, np.concatenate(ids_out), np.concatenate(fields_out)))
    return _Moved(packs, total, parts)


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
    return merge_parts([(packs, ids[mask], fields[mask]), *moved])


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
        members = p.keep[fate.pack]  # in frame and chunk order
        start = 0
        while start < len(members):
            e0 = members[start][1]
            stop = start + 1
            while stop < len(members) and members[stop][1].offset == e0.offset:
                stop += 1
            try:  # never copy damage into a new pack
                encoded, frame_plain, placed = Store.rewrite_frame(
                    data[e0.offset : e0.offset + e0.length],
                    members[start:stop],
                    repo.zstd_level,
                    repo.float_level,
                )
            except IntegrityError as exc:
                raise IntegrityError(
                    f"gc stopped before deleting anything: {exc}; run `casnap verify --read-data`"
                ) from None
            writer.add_frame(e0.type, encoded, frame_plain, placed)
            start = stop
    writer.close()
    moved = writer.new_arrays()
    new_packs = set(moved[0])
    report.packs_written = len(new_packs)
    report.pack_bytes_written = writer.bytes_added

    # 2. one index naming exactly the needed blobs, then 3. drop the old index files
    if p.rewrite or len(moved[1]):
        new_index = _new_index(p, [moved])
        new_key = None  # no snapshot needs anything: no index file at all
        report.index_files_written = report.index_bytes_written = 0
        if len(new_index[1]):
            new_key, new_size = repo.store.write_index_arrays(*new_index)
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
