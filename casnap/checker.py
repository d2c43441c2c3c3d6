"""verify: prove the repository is whole, or name every damaged chunk and what it breaks.

Structure (always): every manifest parses and matches its id; every index file matches its name
and parses; every index entry points into an existing pack, within its size, and agrees with that
pack's own directory; every chunk list (TREE blob) the snapshots use decodes to its hash; every
blob they need is in the index. With read_data, packs are read whole: each must hash to its name
and every chunk the index names in it must decode to its own hash; a pack that cannot be read
whole but can be salvaged (an encrypted one with a damaged segment: Store.read_pack) is checked
chunk by chunk, the chunks in its unreadable bytes damaged. Nothing stops at the first
problem: each one becomes a line naming the chunk, the pack, and the snapshots and files it breaks.
Each file's entry is checked against its chunk list, and with read_data its bytes against its
whole-file hash (filecheck.py).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from casnap import filecheck
from casnap.chunkindex import IdSet, IndexEntry, take_fields
from casnap.entrytable import EntryTable
from casnap.errors import CasnapError, IntegrityError, SnapshotNotFound
from casnap.fsutil import left_by_dead_process
from casnap.ids import ObjectId, is_hex_prefix, named_id
from casnap.manifest import Snapshot, chronological, complete
from casnap.packs import (
    check_pack_entries,
    pack_id_of,
    pack_key,
    parse_pack_directory,
    read_pack_directory,
)
from casnap.progress import ByteProgress, ProgressFn
from casnap.reachability import FileUse, Reach, walk
from casnap.repository import Repository
from casnap.selection import Resolver, SnapshotFilter, latest
from casnap.store import ChunkDamaged


class Affected(NamedTuple):
    """One file of one snapshot that a problem breaks."""

    snapshot: str  # snapshot id (hex)
    path: str


class Problem(NamedTuple):
    """One thing found wrong: what it names as typed fields, and `message`, its text.

    kind: manifest | index | pack | chunk | missing | object | file (docs/JSON.md). fault says
    what is wrong with it: manifest and index: damaged | unreadable; object: bad-name; pack:
    missing | too-large | truncated | bad-directory | disagrees | unreadable | damaged; chunk:
    damaged (a copy of the blob cannot be read intact); missing: not-indexed; file: disagrees
    (its chunk list holds other chunks or bytes) | hash-mismatch (with read_data: its bytes).
    """

    kind: str
    message: str
    blob: str | None = None  # the chunk or chunk list (hex): chunk, missing
    pack: str | None = None  # the pack (hex): pack, and chunk when the copy has an entry
    affected: tuple[Affected, ...] = ()  # the files it breaks
    fault: str | None = None
    key: str | None = None  # the object it names: manifest, index, object
    snapshot: str | None = None  # the snapshot (hex) whose manifest is damaged: manifest

    def line(self) -> str:
        """The problem as one line of text, with the files it breaks."""
        if not self.affected:
            return self.message
        by_file: dict[str, list[str]] = {}
        for a in self.affected:
            by_file.setdefault(a.path, []).append(a.snapshot[:8])
        parts = [f"{path} ({', '.join(sids)})" for path, sids in sorted(by_file.items())]
        return f"{self.message}; breaks {'; '.join(parts)}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "message": self.message,
            "blob": self.blob,
            "pack": self.pack,
            "affected": [{"snapshot": a.snapshot, "path": a.path} for a in self.affected],
        }


@dataclass
class VerifyReport:
    """Everything verify checked and found."""

    read_data: bool
    snapshots_checked: int = 0
    index_files: int = 0
    packs: int = 0
    packs_read: int = 0
    bytes_read: int = 0
    blobs_checked: int = 0
    chunks_read: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    damaged: dict[str, list[str]] = field(default_factory=dict)  # snapshot -> broken files
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: whole, or how many problems and which snapshots and files they break."""
        what = (
            f"{self.snapshots_checked} snapshots, {self.blobs_checked} blobs, {self.packs} packs"
            + (
                f", {self.packs_read} packs read ({self.bytes_read} bytes)"
                if self.read_data
                else ""
            )
        )
        if self.ok:
            return f"no problems found ({what})"
        if self.damaged:
            listed = "; ".join(
                f"{sid[:8]} ({', '.join(files) if files else 'manifest'})"
                for sid, files in sorted(self.damaged.items())
            )
            broken = f"{len(self.damaged)} damaged snapshot(s): {listed}"
        else:
            broken = "no snapshot is affected"
        return f"{len(self.problems)} problem(s) found ({what}); {broken}"

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "problems"}
        d["ok"] = self.ok
        d["problems"] = [p.to_json() for p in self.problems]
        d["summary"] = self.summary()
        return d


@dataclass
class SmokeVerifyResult:
    """What `staging.smoke_verify` found: one snapshot restored into a temporary dir with
    every hash verified, and the smoke report when checks ran (`smoke[]` of verify --json)."""

    id: str
    files: int
    bytes_verified: int
    smoke: dict[str, Any] | None
    ok: bool
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def verify(
    repo: Repository,
    refs: Sequence[str] = (),
    *,
    read_data: bool = False,
    subset_pct: float | None = None,
    seed: int | None = None,
    select: SnapshotFilter | None = None,
    progress: ProgressFn | None = None,
) -> VerifyReport:
    """Check the repository (or the snapshots refs name, among those select matches) under the
    shared lock; never raises for damage it finds: every problem goes into the report.

    progress is told of two runs (see progress.py), each in pack bytes: the pack directories
    checked, then (with read_data) the packs read."""
    if subset_pct is not None and not 0.0 < subset_pct <= 100.0:
        raise ValueError("the read-data subset is a percentage in (0, 100]")
    t0 = time.perf_counter()
    with repo.lock("verify"):
        repo.refresh()
        checker = _Checker(repo, read_data or subset_pct is not None, select, progress)
        report = checker.run(refs, subset_pct, seed)
        report.notes += _leftovers(repo)
    report.seconds = time.perf_counter() - t0
    return report


def _leftovers(repo: Repository) -> list[str]:
    """A note on the temp files writers killed on this host left (not a running writer's)."""
    from casnap.collector import temp_files  # gc's list: loaded by verify alone, not checkouts

    n = sum(left_by_dead_process(p.name) for p in temp_files(repo))
    return [f"{n} temp file(s) of interrupted writes: the next gc removes them"] if n else []


class _Checker:
    """One verify run: gathers findings, then turns them into problems with affected files.

    Every index entry is a row of an EntryTable (arrays); findings are kept by row."""

    def __init__(
        self,
        repo: Repository,
        read_data: bool,
        select: SnapshotFilter | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        self.repo = repo
        self.select = select or SnapshotFilter()
        self.progress = progress
        self.backend = repo.backend
        self.report = VerifyReport(read_data=read_data)
        self.table = EntryTable([])
        self.rows_by_pack: dict[ObjectId, np.ndarray] = {}  # named pack -> its entries' rows
        self.packs: dict[ObjectId, int] = {}
        self.bad: dict[int, str] = {}  # damaged copies (rows) and why
        self.checked = np.zeros(0, dtype=bool)  # copies (rows) read and found intact
        self.unindexed: dict[ObjectId, ObjectId] = {}  # blob -> an unindexed pack holding it
        self.unnamed_notes: dict[ObjectId, int] = {}  # unindexed pack -> its note's place
        self.bad_directory: set[ObjectId] = set()
        self.oversized: set[ObjectId] = set()  # packs past MAX_PACK_SIZE: never read whole

    def pack_problem(self, pack: ObjectId, fault: str, message: str) -> None:
        self.report.problems.append(Problem("pack", message, pack=pack.hex(), fault=fault))

    def run(self, refs: Sequence[str], subset_pct: float | None, seed: int | None) -> VerifyReport:
        snaps = self._manifests()
        narrowed = bool(refs) or self.select.active  # only some snapshots' chunks are followed
        selected = self._select(refs, snaps) if refs else self.select.select(snaps)
        if not refs and self.select.active and snaps and not selected:
            raise SnapshotNotFound(f"no snapshot to verify: none is {self.select.describe()}")
        self.report.snapshots_checked = len(selected)
        # listing order: snapshots, index, packs, so a commit running meanwhile shows up whole
        self._index()
        self._packs()
        reach = walk(selected, self._read_tree, strict=False, keep_lists=False)
        needed = reach.referenced_ids()
        self.report.blobs_checked = len(needed)
        if self.report.read_data:
            self._read_data(needed if narrowed else None, subset_pct, seed)
        self._entries(selected, reach)
        self._conclude(selected, reach, needed)
        if self.report.read_data and subset_pct is None:
            self._hashes(selected)
        return self.report

    # -- manifests ---------------------------------------------------------------------------------

    def _manifests(self) -> list[tuple[ObjectId, Snapshot]]:
        good = []
        for key, _ in self.backend.list("snapshots/"):
            sid = named_id(key)
            if sid is None:
                self.report.problems.append(
                    Problem("object", f"{key}: not a snapshot name", fault="bad-name", key=key)
                )
                continue
            try:
                good.append((sid, complete(self.repo.load_snapshot(sid))))
            except CasnapError as exc:
                self.report.problems.append(
                    Problem(
                        "manifest",
                        str(exc) if str(exc).startswith(key) else f"{key}: {exc}",
                        fault=_fault(exc),
                        key=key,
                        snapshot=sid.hex(),
                    )
                )
                self.report.damaged[sid.hex()] = []
        good = chronological(good)
        return good

    def _select(
        self, refs: Sequence[str], snaps: list[tuple[ObjectId, Snapshot]]
    ) -> list[tuple[ObjectId, Snapshot]]:
        """The snapshots refs name, read from the manifests that parsed (as resolve() reads)."""
        if not any(p.kind == "manifest" for p in self.report.problems):
            resolver = Resolver(snaps, self.select)
            wanted = {resolver.resolve(r).id for r in refs}
            return [kv for kv in snaps if kv[0] in wanted]
        snaps = self.select.select(snaps)
        chosen: dict[ObjectId, Snapshot] = {}
        for ref in refs:
            low = ref.lower()
            hits = [kv for kv in snaps if is_hex_prefix(low) and kv[0].hex().startswith(low)]
            if not hits:
                hits = [kv for kv in snaps if ref in kv[1].tags][-1:]
            if ref == "latest":
                newest = latest(snaps, self.select)
                hits = [kv for kv in snaps if kv[0] == newest]
            damaged = [h for h in self.report.damaged if is_hex_prefix(low) and h.startswith(low)]
            if not hits and len(damaged) == 1:
                continue  # a snapshot whose manifest's damage is in the report: nothing to follow
            if len(hits) != 1:
                raise SnapshotNotFound(f"no single readable snapshot matches {ref!r}")
            chosen[hits[0][0]] = hits[0][1]
        return [kv for kv in snaps if kv[0] in chosen]

    # -- index and packs ---------------------------------------------------------------------------

    def _index(self) -> None:
        parts = []
        for key, size in self.backend.list("index/"):
            self.report.index_files += 1
            try:
                parts.append(self.repo.store.load_index_file(key, size))
            except CasnapError as exc:
                why = str(exc)
                message = why if why.startswith(key) else f"{key}: {why}"
                self.report.problems.append(Problem("index", message, fault=_fault(exc), key=key))
        self.table = EntryTable(parts)
        self.checked = np.zeros(len(self.table), dtype=bool)
        packs = self.table.packs
        self.rows_by_pack = {packs[n]: rows for n, rows in self.table.by_pack().items()}

    def _packs(self) -> None:
        for key, size in self.backend.list("packs/"):
            pack = pack_id_of(key)
            if pack is None:
                self.report.problems.append(
                    Problem("object", f"{key}: not a pack name", fault="bad-name", key=key)
                )
                continue
            self.packs[pack] = size
        self.report.packs = len(self.packs)
        bar = ByteProgress(sum(self.packs.values()), self.progress)
        for pack, size in sorted(self.packs.items()):
            if pack not in self.rows_by_pack:
                bar.add(size)
                try:
                    for cid in read_pack_directory(self.backend, pack, size)["id"]:
                        self.unindexed.setdefault(ObjectId(cid.tobytes()), pack)
                except CasnapError as exc:  # repair-index could not index it either
                    self.pack_problem(
                        pack, "bad-directory", f"pack {pack.hex()[:12]} (named by no index): {exc}"
                    )
                    continue
                self.unnamed_notes[pack] = len(self.report.notes)
                self.report.notes.append(
                    f"pack {pack.hex()[:12]} is named by no index (left by an interrupted commit "
                    "or gc; the next gc removes it, repair-index would index it)"
                )
        fields = self.table.fields
        for pack, rows in sorted(self.rows_by_pack.items()):
            short = pack.hex()[:12]
            f = take_fields(fields, rows)
            check = check_pack_entries(
                self.backend, pack, self.packs.get(pack), self.table.ids[rows], f
            )
            if check.size is None:
                self.pack_problem(
                    pack,
                    "missing",
                    f"pack {short} is missing: the index names {len(rows)} chunk(s) in it",
                )
                for row in rows.tolist():
                    self.bad[row] = f"its pack {short} is missing"
                continue
            bar.add(check.size)
            if check.too_large is not None:
                self.pack_problem(pack, "too-large", f"pack {short}: {check.too_large}")
                self.oversized.add(pack)
                for row in rows.tolist():
                    self.bad[row] = f"its pack {short} is past the size limit"
                continue
            beyond = np.nonzero(check.beyond)[0]
            if len(beyond):
                self.pack_problem(
                    pack,
                    "truncated",
                    f"pack {short} is truncated: {len(beyond)} of {len(rows)} chunk(s) the "
                    f"index names end past its {check.size} bytes",
                )
                for i in beyond.tolist():
                    offset, length = int(f["offset"][i]), int(f["length"][i])
                    self.bad[int(rows[i])] = (
                        f"it lies at {offset}+{length}, past the end of pack {short} "
                        f"({check.size} bytes; truncated)"
                    )
            if check.agrees is None:  # its directory could not be read
                self.pack_problem(pack, "bad-directory", f"pack {short}: {check.unreadable}")
                self.bad_directory.add(pack)
                continue
            # a disagreement is reported for the pack; whether the chunk itself is readable (a
            # restore uses the index entry) is for --read-data to tell
            disagree = rows[~check.agrees]
            if len(disagree):
                first = self.table.id_at(int(disagree[0]))
                self.pack_problem(
                    pack,
                    "disagrees",
                    f"pack {short}: {len(disagree)} index entr(y/ies) disagree with the pack's "
                    f"own directory (first: chunk {first.hex()[:16]})",
                )
        bar.finish()

    # -- reading -----------------------------------------------------------------------------------

    def _read_tree(self, lid: ObjectId) -> bytes:
        """A TREE blob from the first copy that verifies; marks the copies that do not."""
        reasons = []
        for row in self.table.rows_of(lid).tolist():
            if row in self.bad:
                reasons.append(self.bad[row])
                continue
            e = self.table.entry(row)
            try:
                raw = self.backend.get(pack_key(e.pack), e.offset, e.length)
                plain = self.repo.store.decode_verified(lid, e, raw)
            except CasnapError as exc:
                self.bad[row] = exc.reason if isinstance(exc, ChunkDamaged) else str(exc)
                reasons.append(self.bad[row])
                continue
            self.checked[row] = True
            return plain
        if not reasons:
            raise IntegrityError("not in the index")
        raise IntegrityError("; ".join(reasons))

    def _read_data(
        self, needed: np.ndarray | None, subset_pct: float | None, seed: int | None
    ) -> None:
        candidates = sorted(p for p in self.rows_by_pack if p in self.packs)
        if needed is not None:
            wanted = IdSet()
            wanted.add(needed)
            numbers = np.unique(self.table.fields["pack"][wanted.contains_many(self.table.ids)])
            holding = {self.table.packs[n] for n in numbers.tolist()}
            candidates = [p for p in candidates if p in holding]
        if subset_pct is not None and candidates:
            n = max(1, math.ceil(len(candidates) * subset_pct / 100.0))
            candidates = sorted(random.Random(seed).sample(candidates, min(n, len(candidates))))
        bad_rows = np.array(sorted(self.bad), dtype=np.int64)
        bar = ByteProgress(sum(self.packs[p] for p in candidates), self.progress)
        before = 0  # bytes of the packs before this one, all read
        for pack in candidates:
            bar.advance_to(before)
            before += self.packs[pack]
            if pack in self.oversized:  # reported already; never read whole
                continue
            key = pack_key(pack)
            short = pack.hex()[:12]
            try:
                read = self.repo.store.read_pack(key)
            except CasnapError as exc:
                self.pack_problem(pack, "unreadable", f"pack {short}: {exc}")
                continue
            data = read.data
            self.report.packs_read += 1
            self.report.bytes_read += len(data)
            intact = read.damage is None and self.repo.ids(data) == pack
            where = f" {read.describe()}" if read.damage is not None else ""
            if not intact and pack not in self.bad_directory:
                try:
                    parse_pack_directory(key, read.usable())
                except IntegrityError as exc:
                    where += f"; {exc}"
            rows = self.rows_by_pack[pack]
            known_bad = np.isin(rows, bad_rows)
            bad_here = int(known_bad.sum())
            rows = rows[~known_bad & ~self.checked[rows]]
            f = take_fields(self.table.fields, rows)
            order = np.lexsort((f["length"], f["offset"]))  # stable: by frame, then as seen
            rows, f = rows[order], take_fields(f, order)
            cuts = np.nonzero((np.diff(f["offset"]) != 0) | (np.diff(f["length"]) != 0))[0] + 1
            for frame in np.split(rows, cuts) if len(rows) else []:
                members = [(self.table.id_at(r), self.table.entry(r)) for r in frame.tolist()]
                # each frame is decoded once, whatever number of chunks it holds
                e0 = members[0][1]
                found = self.repo.store.frame_damage(
                    data[e0.offset : e0.offset + e0.length], members
                )
                unreadable = any(
                    e0.offset < end and e0.offset + e0.length > start for start, end in read.failed
                )
                for row, damage in zip(frame.tolist(), found, strict=True):
                    if damage is not None:  # zeros where its frame could not be read: say so
                        self.bad[row] = (
                            f"its frame lies in unreadable bytes of pack {short} (damaged)"
                            if unreadable
                            else damage.reason
                        )
                        bad_here += 1
                        continue
                    self.checked[row] = True
                    self.report.chunks_read += 1
            if not intact:
                tail = (
                    f"{bad_here} chunk(s) in it are damaged"
                    if bad_here
                    else "every chunk the index names in it is intact (the damage is elsewhere)"
                )
                what = "" if read.damage is not None else " does not match its name (damaged)"
                self.pack_problem(pack, "damaged", f"pack {short}{what}{where}; {tail}")
        bar.finish()

    # -- conclusions -------------------------------------------------------------------------------

    def _conclude(
        self, selected: list[tuple[ObjectId, Snapshot]], reach: Reach, needed: np.ndarray
    ) -> None:
        # the needed blobs with a problem: no entry at all, or a damaged copy
        suspects = {needed[i].tobytes() for i in np.nonzero(self.table.first_rows(needed) < 0)[0]}
        if self.bad:
            wanted = IdSet()
            wanted.add(needed)
            rows = sorted(self.bad)
            hit = wanted.contains_many(self.table.ids[rows])
            suspects.update(
                self.table.ids[r].tobytes() for r, h in zip(rows, hit, strict=True) if h
            )
        broken: set[ObjectId] = set()
        lines: list[tuple[ObjectId, str, IndexEntry | None]] = []
        for blob in sorted(ObjectId(b) for b in suspects):
            copies = self.table.rows_of(blob).tolist()
            if not copies:
                hint = ""
                if blob in self.unindexed:
                    pack = self.unindexed[blob]
                    hint = f" (pack {pack.hex()[:12]} holds it: run `casnap repair-index`)"
                    self.report.notes[self.unnamed_notes[pack]] = (
                        f"pack {pack.hex()[:12]} is named by no index but holds chunks snapshots "
                        "need (an index file lost or damaged): run `casnap repair-index`; gc "
                        "stops until then"
                    )
                lines.append((blob, f"is not in the index{hint}", None))
                broken.add(blob)
                continue
            bad = [row for row in copies if row in self.bad]
            for row in bad:
                lines.append((blob, self.bad[row], self.table.entry(row)))
            if bad and len(bad) == len(copies):
                broken.add(blob)
        if broken:  # which files they break: walk again, this time keeping every chunk list
            reach = walk(selected, self._read_tree, strict=False)
        users: dict[ObjectId, list[FileUse]] = reach.users(broken)
        for blob, why, e in lines:
            kind = "tree" if blob in reach.trees else "data"
            where = f" in pack {e.pack.hex()[:12]}" if e is not None else ""
            affected: tuple[Affected, ...] = ()
            note = ""
            if blob in broken:
                affected = tuple(Affected(u.snapshot.hex(), u.path) for u in users.get(blob, []))
            else:
                note = " (another copy is intact)"
            if blob in reach.tree_errors and blob in broken:
                why += " (a chunk list: the chunks it lists could not be checked)"
            self.report.problems.append(
                Problem(
                    "missing" if e is None else "chunk",
                    f"{kind} chunk {blob.hex()[:16]}{where}: {why}{note}",
                    blob=blob.hex(),
                    pack=e.pack.hex() if e is not None else None,
                    affected=affected,
                    fault="not-indexed" if e is None else "damaged",
                )
            )
            for sid, path in affected:
                files = self.report.damaged.setdefault(sid, [])
                if path not in files:
                    files.append(path)
        for files in self.report.damaged.values():
            files.sort()

    # -- file entries ------------------------------------------------------------------------------

    def file_problem(self, sid: ObjectId, path: str, fault: str, message: str) -> None:
        """A file of a snapshot whose entry its chunk list or its bytes contradict."""
        self.report.problems.append(
            Problem(
                "file",
                f"{path} in snapshot {sid.short}: {message}",
                affected=(Affected(sid.hex(), path),),
                fault=fault,
            )
        )
        files = self.report.damaged.setdefault(sid.hex(), [])
        if path not in files:
            files.append(path)
            files.sort()

    def _entries(self, selected: list[tuple[ObjectId, Snapshot]], reach: Reach) -> None:
        for sid, path, message in filecheck.disagreeing(selected, reach):
            self.file_problem(sid, path, "disagrees", message)

    def _hashes(self, selected: list[tuple[ObjectId, Snapshot]]) -> None:
        damaged = {(sid, path) for sid, paths in self.report.damaged.items() for path in paths}
        for sid, path, message in filecheck.misread(self.repo, selected, damaged):
            self.file_problem(sid, path, "hash-mismatch", message)


def _fault(exc: CasnapError) -> str:
    """The fault of an object that could not be loaded: damaged, or unreadable (I/O)."""
    return "damaged" if isinstance(exc, IntegrityError) else "unreadable"
