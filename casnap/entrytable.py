"""Every entry of several index files at once, for the tools that check or rewrite the index.

gc, verify and repair-index look at every copy of a chunk, where a ChunkIndex (chunkindex.py)
answers with one; and gc and repair-index write the index back merged, in pack order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from casnap.chunkindex import (
    FIELD_DTYPE,
    IndexEntry,
    entry_of,
    find_rows,
    id_keys,
    id_matrix,
    join_fields,
    take_fields,
)
from casnap.errors import IntegrityError
from casnap.ids import ID_SIZE, ObjectId


def merge_parts(
    parts: Iterable[tuple[Sequence[ObjectId], np.ndarray, np.ndarray]],
) -> tuple[list[ObjectId], np.ndarray, np.ndarray]:
    """(pack table, ids, fields) parts as one index: a table of the packs in use, sorted by id,
    and the entries in pack, frame and chunk order.

    That is the order commits write (frame offsets grow, pack numbers repeat), which zstd
    compresses far better than id order: the fields then cost ~3 bytes per entry, not ~20.
    """
    parts = [(list(p), np.asarray(i, np.uint8).reshape(-1, ID_SIZE), f) for p, i, f in parts]
    used = sorted(
        {bytes(packs[n]) for packs, _, fields in parts for n in np.unique(fields["pack"]).tolist()}
    )
    rank = {p: n for n, p in enumerate(used)}
    ids_parts, field_parts = [], []
    for packs, ids, fields in parts:
        if not len(fields):
            continue
        mapping = np.array([rank.get(bytes(p), 0) for p in packs], dtype=np.uint32)
        fields = fields.copy()
        fields["pack"] = mapping[fields["pack"]]
        ids_parts.append(ids)
        field_parts.append(fields)
    if not field_parts:
        return [], np.zeros((0, ID_SIZE), np.uint8), np.zeros(0, FIELD_DTYPE)
    ids = np.concatenate(ids_parts)
    fields = join_fields(field_parts)
    order = np.lexsort((fields["inner"], fields["offset"], fields["pack"]))
    return [ObjectId(p) for p in used], ids[order], take_fields(fields, order)


def _repeated_rows(
    ids: np.ndarray, fields: np.ndarray, order: np.ndarray, same_key: np.ndarray
) -> list[int]:
    """Rows that repeat an earlier row exactly (id and fields), given the rows in key order
    (`order`, stable) and the positions in it whose key equals the next one's."""
    drop: list[int] = []
    seen: dict[bytes, None] = {}
    previous = -2
    for i in same_key.tolist():
        if i != previous + 1:  # a new run of equal keys starts at position i
            seen = {}
            first = int(order[i])
            seen[ids[first].tobytes() + fields[first].tobytes()] = None
        row = int(order[i + 1])
        entry = ids[row].tobytes() + fields[row].tobytes()
        if entry in seen:
            drop.append(row)
        else:
            seen[entry] = None
        previous = i
    return drop


class EntryTable:
    """Every distinct entry of several index files, as arrays in the order first seen, with all
    the entries of an id found at once.

    gc, verify and repair-index look at every copy of a chunk (a ChunkIndex answers with one);
    as Python objects, 100k entries cost ~200 MB, as these arrays ~10 MB.
    """

    def __init__(self, parts: Iterable[tuple[Sequence[ObjectId], np.ndarray, np.ndarray]]) -> None:
        self.packs: list[ObjectId] = []
        numbers: dict[bytes, int] = {}
        ids_parts, field_parts = [], []
        for packs, ids, fields in parts:
            if len(fields) and int(fields["pack"].max()) >= len(packs):
                raise IntegrityError("index entry names a pack outside its pack table")
            mapping = []
            for p in packs:
                n = numbers.get(bytes(p))
                if n is None:
                    n = numbers[bytes(p)] = len(self.packs)
                    self.packs.append(ObjectId(bytes(p)))
                mapping.append(n)
            fields = fields.copy()
            if len(fields):
                fields["pack"] = np.array(mapping, dtype=np.uint32)[fields["pack"]]
            ids_parts.append(np.asarray(ids, dtype=np.uint8).reshape(-1, ID_SIZE))
            field_parts.append(fields)
        ids = np.concatenate(ids_parts) if ids_parts else np.zeros((0, ID_SIZE), np.uint8)
        fields = join_fields(field_parts) if field_parts else np.zeros(0, FIELD_DTYPE)
        del ids_parts, field_parts
        keys = id_keys(ids)
        order = np.argsort(keys, kind="stable")  # an id's entries: adjacent, first seen first
        sorted_keys = keys[order]
        del keys
        # the same entry in two index files counts once: look for it only among equal keys
        same_key = np.nonzero(sorted_keys[1:] == sorted_keys[:-1])[0]
        if len(same_key):
            drop = _repeated_rows(ids, fields, order, same_key)
            if len(drop):
                keep = np.ones(len(ids), dtype=bool)
                keep[drop] = False
                renumber = np.cumsum(keep) - 1
                order = renumber[order[keep[order]]]
                ids, fields = ids[keep], take_fields(fields, keep)
                sorted_keys = id_keys(ids)[order]
        self.ids: np.ndarray = ids
        self.fields: np.ndarray = fields
        self._order = order
        self._keys = sorted_keys
        self._sorted = ids[order]

    def id_groups(self) -> tuple[np.ndarray, int]:
        """(number of each row's id, counted from 0 in key order; number of distinct ids)."""
        n = len(self.ids)
        if not n:
            return np.zeros(0, dtype=np.int64), 0
        starts = np.ones(n, dtype=bool)
        starts[1:] = self._keys[1:] != self._keys[:-1]
        tied = np.nonzero(~starts[1:])[0] + 1  # same key as the row before: same id?
        if len(tied):
            starts[tied] = (self._sorted[tied] != self._sorted[tied - 1]).any(axis=1)
        group = np.empty(n, dtype=np.int64)
        group[self._order] = np.cumsum(starts) - 1
        return group, int(starts.sum())

    def __len__(self) -> int:
        return len(self.ids)

    def rows_of(self, cid: bytes) -> np.ndarray:
        """The rows of every entry of one id, in the order first seen."""
        q = id_matrix(bytes(cid))
        k = id_keys(q)[0]
        lo, hi = np.searchsorted(self._keys, k, "left"), np.searchsorted(self._keys, k, "right")
        same = (self._sorted[lo:hi] == q).all(axis=1)
        return self._order[lo:hi][same]

    def first_rows(self, ids: np.ndarray) -> np.ndarray:
        """Row of the first entry of each id of an (m, 32) array, -1 where it has none."""
        if not len(self.ids):
            return np.full(len(ids), -1, dtype=np.int64)
        pos = find_rows(self._keys, self._sorted, ids)
        return np.where(pos >= 0, self._order[np.maximum(pos, 0)], -1)

    def by_pack(self) -> dict[int, np.ndarray]:
        """Pack number -> its rows, in the order first seen."""
        if not len(self.fields):
            return {}
        order = np.argsort(self.fields["pack"], kind="stable")
        packs = self.fields["pack"][order]
        cuts = np.nonzero(np.diff(packs))[0] + 1
        starts = np.concatenate([[0], cuts]).tolist()
        return {int(packs[s]): rows for s, rows in zip(starts, np.split(order, cuts), strict=True)}

    def id_at(self, row: int) -> ObjectId:
        return ObjectId(self.ids[row].tobytes())

    def entry(self, row: int) -> IndexEntry:
        f = self.fields[row]
        return entry_of(self.packs, f)
