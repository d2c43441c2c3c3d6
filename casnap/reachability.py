"""Which stored blobs the snapshots reach: each file's TREE chunk-list blobs and the chunks listed.

Shared by gc (what must be kept), verify (what a damaged chunk breaks) and stats (what each
snapshot added). Reading a TREE blob is left to the caller, so each can choose where it comes from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from casnap.errors import IntegrityError
from casnap.ids import ObjectId
from casnap.manifest import Snapshot, parse_chunk_list


@dataclass(frozen=True)
class FileUse:
    """One file of one snapshot and the TREE blobs holding its chunk list."""

    snapshot: ObjectId
    path: str
    lists: tuple[ObjectId, ...]


@dataclass
class Reach:
    """The blobs a set of snapshots reaches, file by file."""

    files: list[FileUse] = field(default_factory=list)
    # every TREE blob reached -> its (chunk id, plain length) refs; None when it could not be read
    trees: dict[ObjectId, list[tuple[ObjectId, int]] | None] = field(default_factory=dict)
    tree_errors: dict[ObjectId, str] = field(default_factory=dict)

    def referenced(self) -> set[ObjectId]:
        """Every blob reached: TREE blobs and the data chunks of the readable ones."""
        out: set[ObjectId] = set(self.trees)
        for refs in self.trees.values():
            if refs:
                out.update(cid for cid, _ in refs)
        return out

    def blobs_of(self, use: FileUse) -> Iterator[tuple[ObjectId, bool]]:
        """(blob id, is TREE) for every blob one file needs, TREE blobs first, in order."""
        for lid in use.lists:
            yield lid, True
        for lid in use.lists:
            for cid, _ in self.trees.get(lid) or ():
                yield cid, False

    def users(self, blobs: set[ObjectId]) -> dict[ObjectId, list[FileUse]]:
        """For each of blobs, the files (of any walked snapshot) that need it."""
        out: dict[ObjectId, list[FileUse]] = {}
        if not blobs:
            return out
        for use in self.files:
            seen: set[ObjectId] = set()
            for bid, _ in self.blobs_of(use):
                if bid in blobs and bid not in seen:
                    seen.add(bid)
                    out.setdefault(bid, []).append(use)
        return out


def walk(
    snapshots: Iterable[tuple[ObjectId, Snapshot]],
    read_tree: Callable[[ObjectId], bytes],
    *,
    strict: bool = True,
) -> Reach:
    """Read every file's chunk list once per distinct TREE blob.

    read_tree returns a TREE blob's verified plain bytes. When strict, the first unreadable TREE
    blob raises IntegrityError naming the file; otherwise it is recorded in `tree_errors`.
    """
    reach = Reach()
    for sid, snap in snapshots:
        for f in snap.files:
            use = FileUse(sid, f.path, tuple(ObjectId.from_hex(h) for h in f.lists))
            reach.files.append(use)
            for lid in use.lists:
                if lid in reach.trees:
                    continue
                try:
                    reach.trees[lid] = parse_chunk_list(read_tree(lid), f"chunk list {lid.hex()}")
                except IntegrityError as exc:
                    if strict:
                        raise IntegrityError(
                            f"chunk list of {f.path} in snapshot {sid.short} is unreadable: {exc}"
                        ) from None
                    reach.trees[lid] = None
                    reach.tree_errors[lid] = str(exc)
    return reach
