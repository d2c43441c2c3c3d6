"""verify: prove the repository is whole, or name every damaged chunk and what it breaks.

Structure (always): every manifest parses and matches its id; every index file matches its name
and parses; every index entry points into an existing pack, within its size, and agrees with that
pack's own directory; every chunk list (TREE blob) the snapshots use decodes to its hash; every
blob they need is in the index. With read_data, packs are read whole: each must hash to its name
and every chunk the index names in it must decode to its own hash. Nothing stops at the first
problem: each one becomes a line naming the chunk, the pack, and the snapshots and files it breaks.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from casnap.errors import CasnapError, IntegrityError, SnapshotNotFound
from casnap.ids import ObjectId, hash_bytes, is_hex_prefix
from casnap.manifest import Snapshot
from casnap.reachability import FileUse, Reach, walk
from casnap.repository import Repository
from casnap.store import (
    IndexEntry,
    Store,
    pack_id_of,
    pack_key,
    parse_pack_directory,
)

_CHUNK_PREFIX = re.compile(r"^chunk [0-9a-f]{64} in pack [0-9a-f]{64}: ")


@dataclass(frozen=True)
class Problem:
    """One thing found wrong; `affected` lists the (snapshot id, file path) it breaks."""

    kind: str  # manifest | index | pack | chunk | missing | object
    message: str
    blob: str | None = None
    pack: str | None = None
    affected: tuple[tuple[str, str], ...] = ()

    def line(self) -> str:
        """The problem as one line of text, with the files it breaks."""
        if not self.affected:
            return self.message
        by_file: dict[str, list[str]] = {}
        for sid, path in self.affected:
            by_file.setdefault(path, []).append(sid[:8])
        parts = [f"{path} ({', '.join(sids)})" for path, sids in sorted(by_file.items())]
        return f"{self.message}; breaks {'; '.join(parts)}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "message": self.message,
            "blob": self.blob,
            "pack": self.pack,
            "affected": [{"snapshot": s, "path": p} for s, p in self.affected],
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


def verify(
    repo: Repository,
    refs: Sequence[str] = (),
    *,
    read_data: bool = False,
    subset_pct: float | None = None,
    seed: int | None = None,
) -> VerifyReport:
    """Check the repository (or the snapshots refs name) under the shared lock; never raises for
    damage it finds: every problem goes into the report."""
    if subset_pct is not None and not 0.0 < subset_pct <= 100.0:
        raise ValueError("the read-data subset is a percentage in (0, 100]")
    t0 = time.perf_counter()
    with repo.lock("verify"):
        repo.refresh()
        report = _Checker(repo, read_data or subset_pct is not None).run(refs, subset_pct, seed)
    report.seconds = time.perf_counter() - t0
    return report


class _Checker:
    """One verify run: gathers findings, then turns them into problems with affected files."""

    def __init__(self, repo: Repository, read_data: bool) -> None:
        self.repo = repo
        self.backend = repo.backend
        self.report = VerifyReport(read_data=read_data)
        self.locations: dict[ObjectId, list[IndexEntry]] = {}
        self.by_pack: dict[ObjectId, list[tuple[ObjectId, IndexEntry]]] = {}
        self.packs: dict[ObjectId, int] = {}
        self.bad: dict[tuple[ObjectId, IndexEntry], str] = {}  # damaged copies and why
        self.checked: set[tuple[ObjectId, IndexEntry]] = set()
        self.unindexed: dict[ObjectId, ObjectId] = {}  # blob -> an unindexed pack holding it
        self.bad_directory: set[ObjectId] = set()

    def problem(self, kind: str, message: str, pack: ObjectId | None = None) -> None:
        self.report.problems.append(Problem(kind, message, pack=pack.hex() if pack else None))

    def run(self, refs: Sequence[str], subset_pct: float | None, seed: int | None) -> VerifyReport:
        snaps = self._manifests()
        selected = self._select(refs, snaps) if refs else snaps
        self.report.snapshots_checked = len(selected)
        # listing order: snapshots, index, packs, so a commit running meanwhile shows up whole
        self._index()
        self._packs()
        reach = walk(selected, self._read_tree, strict=False)
        needed = reach.referenced()
        self.report.blobs_checked = len(needed)
        if self.report.read_data:
            self._read_data(needed if refs else None, subset_pct, seed)
        self._conclude(reach, needed)
        return self.report

    # -- manifests ---------------------------------------------------------------------------------

    def _manifests(self) -> list[tuple[ObjectId, Snapshot]]:
        good = []
        for key, _ in self.backend.list("snapshots/"):
            name = key.rsplit("/", 1)[-1]
            try:
                sid = ObjectId.from_hex(name)
            except ValueError:
                self.report.problems.append(Problem("object", f"{key}: not a snapshot name"))
                continue
            try:
                good.append((sid, self.repo.load_snapshot(sid)))
            except CasnapError as exc:
                self.report.problems.append(Problem("manifest", f"{key}: {exc}"))
                self.report.damaged[sid.hex()] = []
        good.sort(key=lambda kv: (kv[1].time, kv[0].hex()))
        return good

    def _select(
        self, refs: Sequence[str], snaps: list[tuple[ObjectId, Snapshot]]
    ) -> list[tuple[ObjectId, Snapshot]]:
        """The snapshots refs name, read from the manifests that parsed (as resolve() reads)."""
        if not any(p.kind == "manifest" for p in self.report.problems):
            wanted = {self.repo.resolve(r) for r in refs}
            return [kv for kv in snaps if kv[0] in wanted]
        chosen: dict[ObjectId, Snapshot] = {}
        for ref in refs:
            low = ref.lower()
            hits = [kv for kv in snaps if is_hex_prefix(low) and kv[0].hex().startswith(low)]
            if not hits:
                hits = [kv for kv in snaps if ref in kv[1].tags][-1:]
            if ref == "latest" and snaps:
                hits = snaps[-1:]
            if len(hits) != 1:
                raise SnapshotNotFound(f"no single readable snapshot matches {ref!r}")
            chosen[hits[0][0]] = hits[0][1]
        return [kv for kv in snaps if kv[0] in chosen]

    # -- index and packs ---------------------------------------------------------------------------

    def _index(self) -> None:
        for key, _ in self.backend.list("index/"):
            self.report.index_files += 1
            try:
                entries = self.repo.store.load_index_file(key)
            except CasnapError as exc:
                self.problem("index", f"{key}: {exc}")
                continue
            for cid, e in entries:
                copies = self.locations.setdefault(cid, [])
                if e not in copies:
                    copies.append(e)
                    self.by_pack.setdefault(e.pack, []).append((cid, e))

    def _packs(self) -> None:
        for key, size in self.backend.list("packs/"):
            pack = pack_id_of(key)
            if pack is None:
                self.report.problems.append(Problem("object", f"{key}: not a pack name"))
                continue
            self.packs[pack] = size
        self.report.packs = len(self.packs)
        for pack, size in sorted(self.packs.items()):
            if pack not in self.by_pack:
                try:
                    for rec in self.repo.store.read_pack_directory(pack, size):
                        self.unindexed.setdefault(rec[0], pack)
                except CasnapError:
                    pass
                self.report.notes.append(
                    f"pack {pack.hex()[:12]} is named by no index (left by an interrupted commit "
                    "or gc; the next gc removes it, repair-index would index it)"
                )
        for pack, entries in sorted(self.by_pack.items()):
            size = self.packs.get(pack)
            if size is None:
                self.problem(
                    "pack",
                    f"pack {pack.hex()[:12]} is missing: the index names {len(entries)} chunk(s) "
                    "in it",
                    pack,
                )
                for cid, e in entries:
                    self.bad[(cid, e)] = f"its pack {pack.hex()[:12]} is missing"
                continue
            beyond = [(cid, e) for cid, e in entries if e.offset + e.length > size]
            if beyond:
                self.problem(
                    "pack",
                    f"pack {pack.hex()[:12]} is truncated: {len(beyond)} of {len(entries)} "
                    f"chunk(s) the index names end past its {size} bytes",
                    pack,
                )
                for cid, e in beyond:
                    self.bad[(cid, e)] = (
                        f"it lies at {e.offset}+{e.length}, past the end of pack "
                        f"{pack.hex()[:12]} ({size} bytes; truncated)"
                    )
            try:
                records = self.repo.store.read_pack_directory(pack, size)
            except CasnapError as exc:
                self.problem("pack", f"pack {pack.hex()[:12]}: {exc}", pack)
                self.bad_directory.add(pack)
                continue
            # a disagreement is reported for the pack; whether the chunk itself is readable (a
            # restore uses the index entry) is for --read-data to tell
            described = {r[0]: r for r in records}
            disagree = [cid for cid, e in entries if described.get(cid) != (cid, *e[1:])]
            if disagree:
                self.problem(
                    "pack",
                    f"pack {pack.hex()[:12]}: {len(disagree)} index entr(y/ies) disagree with the "
                    f"pack's own directory (first: chunk {disagree[0].hex()[:16]})",
                    pack,
                )

    # -- reading -----------------------------------------------------------------------------------

    def _read_tree(self, lid: ObjectId) -> bytes:
        """A TREE blob from the first copy that verifies; marks the copies that do not."""
        reasons = []
        for e in self.locations.get(lid, []):
            if (lid, e) in self.bad:
                reasons.append(self.bad[(lid, e)])
                continue
            try:
                raw = self.backend.get(pack_key(e.pack), e.offset, e.length)
                plain = Store.decode_verified(lid, e, raw)
            except CasnapError as exc:
                self.bad[(lid, e)] = _reason(exc)
                reasons.append(self.bad[(lid, e)])
                continue
            self.checked.add((lid, e))
            return plain
        if not reasons:
            raise IntegrityError("not in the index")
        raise IntegrityError("; ".join(reasons))

    def _read_data(
        self, needed: set[ObjectId] | None, subset_pct: float | None, seed: int | None
    ) -> None:
        candidates = sorted(p for p in self.by_pack if p in self.packs)
        if needed is not None:
            holding = {e.pack for b in needed for e in self.locations.get(b, [])}
            candidates = [p for p in candidates if p in holding]
        if subset_pct is not None and candidates:
            n = max(1, math.ceil(len(candidates) * subset_pct / 100.0))
            candidates = sorted(random.Random(seed).sample(candidates, min(n, len(candidates))))
        for pack in candidates:
            key = pack_key(pack)
            try:
                data = self.backend.get(key)
            except CasnapError as exc:
                self.problem("pack", f"pack {pack.hex()[:12]}: {exc}", pack)
                continue
            self.report.packs_read += 1
            self.report.bytes_read += len(data)
            intact = hash_bytes(data) == pack
            where = ""
            if not intact and pack not in self.bad_directory:
                try:
                    parse_pack_directory(key, data)
                except IntegrityError as exc:
                    where = f"; {exc}"
            bad_here = 0
            frames: dict[tuple[int, int], list[tuple[ObjectId, IndexEntry]]] = {}
            for cid, e in self.by_pack[pack]:
                if (cid, e) in self.bad:
                    bad_here += 1
                    continue
                if (cid, e) in self.checked:
                    continue
                frames.setdefault((e.offset, e.length), []).append((cid, e))
            for (offset, length), members in sorted(frames.items()):
                # each frame is decoded once, whatever number of chunks it holds
                found = Store.frame_damage(data[offset : offset + length], members)
                for (cid, e), why in zip(members, found, strict=True):
                    if why is not None:
                        self.bad[(cid, e)] = _reason(IntegrityError(why))
                        bad_here += 1
                        continue
                    self.checked.add((cid, e))
                    self.report.chunks_read += 1
            if not intact:
                tail = (
                    f"{bad_here} chunk(s) in it are damaged"
                    if bad_here
                    else "every chunk the index names in it is intact (the damage is elsewhere)"
                )
                self.problem(
                    "pack",
                    f"pack {pack.hex()[:12]} does not match its name (damaged){where}; {tail}",
                    pack,
                )

    # -- conclusions -------------------------------------------------------------------------------

    def _conclude(self, reach: Reach, needed: set[ObjectId]) -> None:
        broken: set[ObjectId] = set()
        lines: list[tuple[ObjectId, str, IndexEntry | None]] = []
        for blob in sorted(needed):
            copies = self.locations.get(blob, [])
            if not copies:
                hint = ""
                if blob in self.unindexed:
                    hint = (
                        f" (pack {self.unindexed[blob].hex()[:12]} holds it: run "
                        "`casnap repair-index`)"
                    )
                lines.append((blob, f"is not in the index{hint}", None))
                broken.add(blob)
                continue
            bad = [e for e in copies if (blob, e) in self.bad]
            for e in bad:
                lines.append((blob, self.bad[(blob, e)], e))
            if bad and len(bad) == len(copies):
                broken.add(blob)
        users: dict[ObjectId, list[FileUse]] = reach.users(broken)
        for blob, why, e in lines:
            kind = "tree" if blob in reach.trees else "data"
            where = f" in pack {e.pack.hex()[:12]}" if e is not None else ""
            affected: tuple[tuple[str, str], ...] = ()
            note = ""
            if blob in broken:
                affected = tuple((u.snapshot.hex(), u.path) for u in users.get(blob, []))
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
                )
            )
            for sid, path in affected:
                files = self.report.damaged.setdefault(sid, [])
                if path not in files:
                    files.append(path)
        for files in self.report.damaged.values():
            files.sort()


def _reason(exc: CasnapError) -> str:
    """The part of a store error worth repeating on a line that already names chunk and pack."""
    text = _CHUNK_PREFIX.sub("", str(exc))
    if "does not match its hash" in text:
        return "does not match its hash (damaged)"
    return text
