"""The chunk index: chunk id -> where its bytes live, held as sorted numpy arrays.

SQLite databases are stored page by page, so a repository holds ~256k chunks per GiB. A dict of
Python objects would cost ~300 bytes and a few microseconds of decoding per entry; these arrays
cost ~65 bytes per entry, load with a handful of numpy calls, and answer a whole batch of
lookups at once. Index files are columnar (all ids, then each field) so they compress well and
decode without a per-entry loop.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import zstandard

from casnap.compression import decompress_object
from casnap.constants import MAX_CHUNK_SIZE, MAX_FRAME_LENGTH, MAX_FRAME_SIZE, MAX_PACK_SIZE
from casnap.errors import IntegrityError
from casnap.ids import ID_SIZE, ObjectId

INDEX_MAGIC = b"CASNIDX2"
DATA = 0  # file content
TREE = 1  # a file's chunk list, or a piece or delta of one
BLOB_TYPES = {DATA: "data", TREE: "tree"}
# Per entry: pack number (into the file's pack table), blob type, frame offset in the pack,
# frame length, plain size of the chunk, offset of the chunk in the decoded frame, plain size of
# the whole frame (0: the frame holds this chunk alone).
FIELDS = ("pack", "type", "offset", "length", "plain", "inner", "frame_plain")
FIELD_DTYPE = np.dtype(
    [
        ("pack", "<u4"),
        ("type", "u1"),
        ("offset", "<u4"),
        ("length", "<u4"),
        ("plain", "<u4"),
        ("inner", "<u4"),
        ("frame_plain", "<u4"),
    ]
)
MAX_INDEX_BYTES = 1 << 32  # decompression bound of one index file


class IndexEntry(NamedTuple):
    """Where one chunk lives: the frame (offset, length) in a pack, and its place in that frame.

    A frame is one encoded blob in a pack; it holds one chunk, or several consecutive new chunks
    compressed together. `inner` and `frame_plain` locate the chunk in the decoded frame;
    frame_plain == 0 means the frame holds this chunk alone.
    """

    pack: ObjectId
    type: int
    offset: int
    length: int
    plain: int
    inner: int = 0
    frame_plain: int = 0

    @property
    def frame_size(self) -> int:
        """Plain size of the whole frame."""
        return self.frame_plain or self.plain

    @property
    def stored(self) -> int:
        """Stored bytes attributed to this chunk: its frame's, shared in proportion to plain size
        when the frame holds several chunks."""
        if not self.frame_plain:
            return self.length
        return self.length * self.plain // self.frame_plain


def past_limits(rec: np.ndarray) -> str | None:
    """Why the first of these entries (index fields or pack directory records) is past casnap's
    size limits (constants.py), or None when none is. Checked wherever entries are read, so
    nothing is ever allocated or read for a size past them."""
    if not len(rec):
        return None
    plain = rec["plain"].astype(np.int64)
    frame = np.where(rec["frame_plain"] == 0, plain, rec["frame_plain"].astype(np.int64))
    end = rec["offset"].astype(np.int64) + rec["length"]
    checks = (
        ("a chunk of {} bytes", plain, MAX_CHUNK_SIZE),
        ("a frame of {} bytes", frame, MAX_FRAME_SIZE),
        ("a stored frame of {} bytes", rec["length"].astype(np.int64), MAX_FRAME_LENGTH),
        ("a frame ending at byte {} of its pack", end, MAX_PACK_SIZE),
    )
    for what, values, limit in checks:
        over = np.flatnonzero(values > limit)
        if len(over):
            return f"{what.format(int(values[over[0]]))}, past the limit of {limit}"
    return None


def id_matrix(ids: bytes | bytearray | memoryview | Sequence[bytes]) -> np.ndarray:
    """(n, 32) uint8 array of ids given as concatenated bytes or a sequence of 32-byte ids."""
    if isinstance(ids, bytes | bytearray | memoryview):
        raw = ids
    else:
        raw = b"".join(ids)
    if len(raw) % ID_SIZE:
        raise ValueError("ids must be whole 32-byte ids")
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, ID_SIZE)


def id_keys(ids: np.ndarray) -> np.ndarray:
    """The sort key of each id: its first 8 bytes as an integer (ids are uniformly random)."""
    if len(ids) == 0:
        return np.zeros(0, dtype=np.uint64)
    return np.ascontiguousarray(ids[:, :8]).view("<u8").reshape(-1)


def find_rows(keys: np.ndarray, stored: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row of each id of an (m, 32) array among sorted (keys, stored ids), -1 where absent."""
    m = len(ids)
    out = np.full(m, -1, dtype=np.int64)
    n = len(keys)
    if m == 0 or n == 0:
        return out
    q = np.ascontiguousarray(ids, dtype=np.uint8).reshape(-1, ID_SIZE)
    qk = id_keys(q)
    pos = np.minimum(np.searchsorted(keys, qk), n - 1)
    hit = keys[pos] == qk
    same = hit.copy()
    if hit.any():
        same[hit] = (stored[pos[hit]] == q[hit]).all(axis=1)
    out[same] = pos[same]
    # the same 8-byte key with another id (a prefix collision): look at its neighbours
    for j in np.nonzero(hit & ~same)[0]:
        i = int(pos[j])
        while i < n and keys[i] == qk[j]:
            if (stored[i] == q[j]).all():
                out[j] = i
                break
            i += 1
    return out


def _rows(a: np.ndarray, order: np.ndarray) -> np.ndarray:
    """a's rows (32-byte ids, packed field records) in `order`: gathered as opaque items of a
    row's size, several times faster than numpy's gather of rows or of packed records."""
    row = a.dtype.itemsize * int(np.prod(a.shape[1:], dtype=np.int64))
    flat = np.ascontiguousarray(a).view(np.dtype((np.void, row))).reshape(-1)
    return flat[order].view(a.dtype).reshape((len(order), *a.shape[1:]))


class IdSet:
    """A growing set of chunk ids in a few sorted arrays (~40 bytes per id), tested in batches.

    Adding sorts only the new ids and merges runs of similar size, so n ids cost O(n log n) in
    all however they arrive. Membership tests may run on other threads while ids are added.
    """

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []  # (sorted keys, ids), largest first
        self._lock = threading.Lock()

    def add(self, ids: np.ndarray) -> None:
        """Add an (n, 32) array of ids."""
        ids = np.asarray(ids, dtype=np.uint8).reshape(-1, ID_SIZE)
        if not len(ids):
            return
        keys = id_keys(ids)
        order = np.argsort(keys, kind="stable")
        with self._lock:
            runs = [*self._runs, (keys[order], ids[order])]
            while len(runs) > 1 and 2 * len(runs[-1][0]) >= len(runs[-2][0]):
                (k2, i2), (k1, i1) = runs.pop(), runs.pop()
                keys, ids = np.concatenate([k1, k2]), np.concatenate([i1, i2])
                order = np.argsort(keys, kind="stable")  # two sorted runs: a linear merge
                runs.append((keys[order], ids[order]))
            self._runs = runs

    def contains_many(self, ids: np.ndarray) -> np.ndarray:
        """Boolean array: which ids of an (m, 32) array are in the set."""
        out = np.zeros(len(ids), dtype=bool)
        for keys, stored in self._runs:
            out |= find_rows(keys, stored, ids) >= 0
        return out

    def __contains__(self, cid: object) -> bool:
        if not isinstance(cid, bytes) or len(cid) != ID_SIZE:
            return False
        return bool(self.contains_many(id_matrix(cid))[0])

    def __len__(self) -> int:
        return sum(len(k) for k, _ in self._runs)


class ChunkIndex(Mapping[ObjectId, IndexEntry]):
    """Chunk id -> IndexEntry, as sorted arrays; also a read-only Mapping for simple callers.

    Lookups may run on several threads at once; rows returned by lookup stay valid until the
    next add.
    """

    def __init__(self) -> None:
        self.packs: list[ObjectId] = []
        self._pack_no: dict[bytes, int] = {}
        # sorted keys, ids (n, 32) and fields, swapped together so a reader never mixes versions
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] = (
            np.zeros(0, dtype=np.uint64),
            np.zeros((0, ID_SIZE), dtype=np.uint8),
            np.zeros(0, dtype=FIELD_DTYPE),
        )
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._lock = threading.Lock()

    # -- building --------------------------------------------------------------------------

    def add(self, parts: Iterable[tuple[Sequence[ObjectId], np.ndarray, np.ndarray]]) -> None:
        """Merge (pack table, ids (n, 32), fields) parts whose pack numbers index their table.

        The arrays are re-sorted on the next lookup, not now: a commit that adds its entries
        last and exits never pays for the sort.
        """
        with self._lock:
            for packs, ids, fields in parts:
                if len(ids) != len(fields):
                    raise ValueError("ids and fields differ in length")
                if len(fields) and int(fields["pack"].max()) >= len(packs):
                    raise IntegrityError("index entry names a pack outside its pack table")
                mapping = np.array([self._pack_number(p) for p in packs], dtype=np.uint32)
                fields = fields.copy()
                if len(fields):
                    fields["pack"] = mapping[fields["pack"]]
                ids = np.asarray(ids, dtype=np.uint8).reshape(-1, ID_SIZE)
                self._pending.append((ids, fields))

    def _state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The sorted arrays, with pending parts merged in."""
        if not self._pending:
            return self._arrays
        with self._lock:
            if self._pending:
                _, ids0, fields0 = self._arrays
                ids = np.concatenate([ids0, *(i for i, _ in self._pending)])
                fields = np.concatenate([fields0, *(f for _, f in self._pending)])
                keys = id_keys(ids)
                order = np.argsort(keys, kind="stable")
                self._arrays = (keys[order], _rows(ids, order), _rows(fields, order))
                self._pending = []
            return self._arrays

    def _pack_number(self, pack: bytes) -> int:
        n = self._pack_no.get(bytes(pack))
        if n is None:
            n = self._pack_no[bytes(pack)] = len(self.packs)
            self.packs.append(ObjectId(bytes(pack)))
        return n

    # -- lookups ---------------------------------------------------------------------------

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id of an (m, 32) array in this index, -1 where absent."""
        keys, stored, _ = self._state()
        return find_rows(keys, stored, ids)

    def contains_many(self, ids: np.ndarray) -> np.ndarray:
        """Boolean array: which ids of an (m, 32) array are in the index."""
        return self.lookup(ids) >= 0

    def entries(self, ids: Iterable[bytes]) -> dict[ObjectId, IndexEntry]:
        """The entries of many ids at once (absent ids left out): one batch lookup instead of
        one lookup per id, for callers that walk many chunks."""
        wanted = [ObjectId(bytes(cid)) for cid in ids]
        if not wanted:
            return {}
        rows = self.lookup(id_matrix(wanted)).tolist()
        return {cid: self.entry_at(row) for cid, row in zip(wanted, rows, strict=True) if row >= 0}

    def fields(self, rows: np.ndarray) -> np.ndarray:
        """The field records of the given rows (as returned by lookup)."""
        return self._state()[2][rows]

    def entry_at(self, row: int) -> IndexEntry:
        f = self._state()[2][row]
        return entry_of(self.packs, f)

    def id_at(self, row: int) -> ObjectId:
        return ObjectId(self._state()[1][row].tobytes())

    # -- Mapping ---------------------------------------------------------------------------

    def get(self, cid: object, default: IndexEntry | None = None) -> IndexEntry | None:  # type: ignore[override]
        if not isinstance(cid, bytes) or len(cid) != ID_SIZE:
            return default
        row = int(self.lookup(id_matrix(cid))[0])
        return default if row < 0 else self.entry_at(row)

    def __getitem__(self, cid: ObjectId) -> IndexEntry:
        e = self.get(cid)
        if e is None:
            raise KeyError(cid)
        return e

    def __contains__(self, cid: object) -> bool:
        return self.get(cid) is not None

    def __iter__(self) -> Iterator[ObjectId]:
        ids = self._state()[1]
        seen: set[bytes] = set()
        for row in range(len(ids)):
            raw = ids[row].tobytes()
            if raw not in seen:
                seen.add(raw)
                yield ObjectId(raw)

    def __len__(self) -> int:
        """Number of entries (an id stored twice, e.g. by two concurrent commits, counts twice)."""
        return len(self._arrays[0]) + sum(len(i) for i, _ in self._pending)

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays."""
        return sum(a.nbytes for a in self._state())


# -- index files -------------------------------------------------------------------------------


def encode_index(packs: Sequence[ObjectId], ids: np.ndarray, fields: np.ndarray) -> bytes:
    """An index file: magic, pack table, ids, then each field as its own column; zstd."""
    n = len(ids)
    table = [bytes(p) for p in packs]
    head = b"".join([INDEX_MAGIC, struct.pack("<I", len(packs)), *table, struct.pack("<I", n)])
    parts = [np.ascontiguousarray(ids, dtype=np.uint8)]
    parts += [np.ascontiguousarray(fields[name]) for name in FIELDS]
    total = len(head) + sum(p.nbytes for p in parts)
    # streamed, so the uncompressed body never exists in memory as a whole
    cobj = zstandard.ZstdCompressor(level=3).compressobj(size=total)
    out = [cobj.compress(head)]
    # (a zero-length view cannot be cast: an empty column adds nothing anyway)
    out += [cobj.compress(p.data.cast("B")) for p in parts if p.nbytes]
    out.append(cobj.flush())
    return b"".join(out)


def decode_index(key: str, blob: bytes) -> tuple[list[ObjectId], np.ndarray, np.ndarray]:
    """Parse an index file into (pack table, ids (n, 32), fields); IntegrityError naming it."""
    body = decompress_object(blob, f"{key}: corrupt index file", limit=MAX_INDEX_BYTES)
    if not body.startswith(INDEX_MAGIC):
        raise IntegrityError(f"{key}: not a casnap index file (or one of an older format)")
    try:
        pos = len(INDEX_MAGIC)
        (npacks,) = struct.unpack_from("<I", body, pos)
        pos += 4
        packs = [ObjectId(body[pos + i * ID_SIZE : pos + (i + 1) * ID_SIZE]) for i in range(npacks)]
        pos += npacks * ID_SIZE
        (n,) = struct.unpack_from("<I", body, pos)
        pos += 4
    except (struct.error, ValueError) as exc:
        raise IntegrityError(f"{key}: truncated index file") from exc
    if len(body) != pos + n * (ID_SIZE + FIELD_DTYPE.itemsize):
        raise IntegrityError(f"{key}: index file has the wrong length")
    ids = np.frombuffer(body, dtype=np.uint8, count=n * ID_SIZE, offset=pos).reshape(-1, ID_SIZE)
    pos += n * ID_SIZE
    fields = np.zeros(n, dtype=FIELD_DTYPE)
    for name in FIELDS:
        dt = FIELD_DTYPE[name]
        fields[name] = np.frombuffer(body, dtype=dt, count=n, offset=pos)
        pos += n * dt.itemsize
    if n and (int(fields["pack"].max()) >= npacks or int(fields["type"].max()) > TREE):
        raise IntegrityError(f"{key}: index entry out of range")
    why = past_limits(fields)
    if why is not None:
        raise IntegrityError(f"{key}: index entry of {why}")
    return packs, ids, fields


# -- every entry, for the tools that check or rewrite the index ---------------------------------


def void_ids(ids: np.ndarray) -> np.ndarray:
    """Each 32-byte id as one opaque value, which numpy sorts bytewise (as ObjectIds sort)."""
    ids = np.ascontiguousarray(ids, dtype=np.uint8).reshape(-1, ID_SIZE)
    return ids.view(np.dtype((np.void, ID_SIZE))).reshape(-1)


def unique_ids(ids: np.ndarray) -> np.ndarray:
    """The distinct ids of an (n, 32) array, sorted bytewise (the order of sorted ObjectIds)."""
    if not len(ids):
        return np.zeros((0, ID_SIZE), dtype=np.uint8)
    return np.unique(void_ids(ids)).view(np.uint8).reshape(-1, ID_SIZE)


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
    fields = np.concatenate(field_parts)
    order = np.lexsort((fields["inner"], fields["offset"], fields["pack"]))
    return [ObjectId(p) for p in used], ids[order], fields[order]


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
        fields = np.concatenate(field_parts) if field_parts else np.zeros(0, FIELD_DTYPE)
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
                ids, fields = ids[keep], fields[keep]
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


def entry_of(packs: list[ObjectId], f: np.void) -> IndexEntry:
    """The IndexEntry of one field record, its pack number resolved through the pack table."""
    return IndexEntry(
        packs[int(f["pack"])],
        int(f["type"]),
        int(f["offset"]),
        int(f["length"]),
        int(f["plain"]),
        int(f["inner"]),
        int(f["frame_plain"]),
    )


def stored_bytes(fields: np.ndarray) -> np.ndarray:
    """IndexEntry.stored of each row of a field array (int64): its frame's bytes, shared in
    proportion to plain size when the frame holds several chunks."""
    length = fields["length"].astype(np.int64)
    fp = fields["frame_plain"].astype(np.int64)
    shared = length * fields["plain"].astype(np.int64) // np.maximum(fp, 1)
    return np.where(fp == 0, length, shared)
