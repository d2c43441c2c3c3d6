"""Which stored blobs the snapshots reach: each file's TREE chunk-list blobs and the chunks listed.

Shared by gc (what must be kept), verify (what a damaged chunk breaks) and stats (what each
snapshot added). Reading a TREE blob is left to the caller, so each can choose where it comes from.

A file's chunk list is a chain of TREE blobs (chunklist.py): pieces, then deltas against the list
they describe. Chains are resolved file by file, so a file reaches exactly the chunks of its own
version, not those its older versions had and a delta replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from casnap import chunklist
from casnap.chunkindex import id_matrix, unique_ids
from casnap.errors import IntegrityError
from casnap.ids import ID_SIZE, ObjectId
from casnap.manifest import Snapshot


class FileUse(NamedTuple):
    """One file of one snapshot and the TREE blobs holding its chunk list."""

    snapshot: ObjectId
    path: str
    lists: tuple[ObjectId, ...]


@dataclass
class Reach:
    """The blobs a set of snapshots reaches, file by file."""

    files: list[FileUse] = field(default_factory=list)
    # every TREE blob reached -> the packed (chunk id, plain length) refs it names itself (a
    # piece: all of its refs; a delta: the refs it adds; b"" when lists are not kept); None
    # when it could not be read
    trees: dict[ObjectId, bytes | None] = field(default_factory=dict)
    tree_errors: dict[ObjectId, str] = field(default_factory=dict)
    # each distinct chain of TREE blobs -> the chunk ids of the list it resolves to, packed (32
    # bytes each); None when some blob of the chain is unreadable or the chain does not resolve.
    # Empty when the walk did not keep lists (keep_lists=False): only their union is kept.
    resolved: dict[tuple[ObjectId, ...], bytes | None] = field(default_factory=dict)
    lists_kept: bool = True
    # each chain that resolved -> (chunks, bytes) of its list, kept whether or not lists are
    totals: dict[tuple[ObjectId, ...], tuple[int, int]] = field(default_factory=dict)
    _union: _IdUnion = field(default_factory=lambda: _IdUnion())

    def chunks_of(self, use: FileUse) -> list[ObjectId]:
        """The data chunks one file needs, in order (those its readable blobs name when its chain
        does not resolve)."""
        if not self.lists_kept:
            raise ValueError("this walk kept only the union of the chunk lists")
        ids = self.resolved.get(use.lists)
        if ids is not None:
            return [ObjectId(ids[i : i + ID_SIZE]) for i in range(0, len(ids), ID_SIZE)]
        out: list[ObjectId] = []
        for lid in use.lists:
            out.extend(cid for cid, _ in chunklist.unpack_refs(self.trees.get(lid) or b""))
        return out

    def referenced(self) -> set[ObjectId]:
        """Every blob reached: TREE blobs and the data chunks of the files."""
        ids = self.referenced_ids()
        return {ObjectId(ids[i].tobytes()) for i in range(len(ids))}

    def referenced_ids(self) -> np.ndarray:
        """Every blob reached, as a bytewise-sorted (n, 32) array of distinct ids: what
        `referenced` holds, at 32 bytes per blob instead of ~150."""
        return unique_ids(np.concatenate([self._union.ids(), id_matrix(b"".join(self.trees))]))

    def blobs_of(self, use: FileUse) -> Iterator[tuple[ObjectId, bool]]:
        """(blob id, is TREE) for every blob one file needs, TREE blobs first, in order."""
        for lid in use.lists:
            yield lid, True
        for cid in self.chunks_of(use):
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


class _IdUnion:
    """The distinct ids of many packed id lists, merged as they come: memory stays about twice
    the union, however many versions of a file list the same chunks."""

    def __init__(self) -> None:
        self._done = np.zeros((0, ID_SIZE), dtype=np.uint8)
        self._pending: list[bytes] = []
        self._size = 0

    def add(self, packed: bytes) -> None:
        self._pending.append(packed)
        self._size += len(packed) // ID_SIZE
        if self._size >= max(len(self._done), 1 << 16):
            self._merge()

    def _merge(self) -> None:
        if self._pending:
            fresh = id_matrix(b"".join(self._pending))
            self._pending, self._size = [], 0
            self._done = unique_ids(np.concatenate([self._done, fresh]))

    def ids(self) -> np.ndarray:
        self._merge()
        return self._done


def walk(
    snapshots: Iterable[tuple[ObjectId, Snapshot]],
    read_tree: Callable[[ObjectId], bytes],
    *,
    strict: bool = True,
    keep_lists: bool = True,
) -> Reach:
    """Read every file's chunk list, each distinct TREE blob once, and resolve each chain once.

    read_tree returns a TREE blob's verified plain bytes. When strict, the first unreadable TREE
    blob (or a chain that does not resolve) raises IntegrityError naming the file; otherwise it is
    recorded in `tree_errors`. Without keep_lists only the union of the lists is kept (enough
    for referenced_ids; gc over many versions of a large database needs no more memory than
    its distinct chunks take).
    """
    reach = Reach(lists_kept=keep_lists)
    bodies: dict[ObjectId, bytes] = {}
    last: dict[str, tuple[tuple[ObjectId, ...], bytes]] = {}  # path -> its last resolved chain
    chains: set[tuple[ObjectId, ...]] = set()
    for sid, snap in snapshots:
        for f in snap.files:
            use = FileUse(sid, f.path, tuple(ObjectId.from_hex(h) for h in f.lists))
            reach.files.append(use)
            if use.lists in chains:
                continue
            chains.add(use.lists)
            readable = True
            for lid in use.lists:
                if lid in reach.trees:
                    readable = readable and reach.trees[lid] is not None
                    continue
                try:
                    body = read_tree(lid)
                    named = chunklist.named_refs(body)
                    reach.trees[lid] = named if keep_lists else b""  # b"": read, not kept
                    bodies[lid] = body
                except IntegrityError as exc:
                    if strict:
                        raise IntegrityError(
                            f"chunk list of {f.path} in snapshot {sid.short} is unreadable: {exc}"
                        ) from exc
                    reach.trees[lid] = None
                    reach.tree_errors[lid] = str(exc)
                    readable = False
            refs = None
            if readable:
                try:
                    refs = _resolve(use.lists, bodies, last.get(f.path), f.path)
                except IntegrityError as exc:
                    if strict:
                        raise IntegrityError(
                            f"chunk list of {f.path} in snapshot {sid.short} is unreadable: {exc}"
                        ) from exc
                    reach.tree_errors.setdefault(use.lists[-1], str(exc))
            if refs is not None:
                last[f.path] = (use.lists, refs)
                reach.totals[use.lists] = (chunklist.ref_count(refs), chunklist.plain_size(refs))
                ids = chunklist.ids_packed(refs)
                reach._union.add(ids)
                if keep_lists:
                    reach.resolved[use.lists] = ids
            else:  # the chunks its readable blobs name
                for lid in use.lists:
                    if reach.trees.get(lid) is not None:
                        reach._union.add(chunklist.ids_packed(chunklist.named_refs(bodies[lid])))
                if keep_lists:
                    reach.resolved[use.lists] = None
    return reach


def _resolve(
    lists: tuple[ObjectId, ...],
    bodies: dict[ObjectId, bytes],
    previous: tuple[tuple[ObjectId, ...], bytes] | None,
    path: str,
) -> bytes:
    """Packed refs of a chain, reusing the previous version's when this chain extends it."""
    name = f"chunk list of {path}"
    if previous is not None:
        chain, refs = previous
        if lists[: len(chain)] == chain and all(
            chunklist.is_delta(bodies[lid]) for lid in lists[len(chain) :]
        ):
            for lid in lists[len(chain) :]:
                refs = chunklist.apply_delta(refs, bodies[lid], name)
            return refs
    return chunklist.resolve([bodies[lid] for lid in lists], name)[0]
