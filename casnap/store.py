"""Packs and index: put a chunk once, get it back verified.

A pack holds frames followed by a directory describing every chunk in them, so the index can
always be rebuilt from the packs alone. A frame is one encoded blob (codec byte + payload, see
compression.py) holding one chunk or several consecutive new chunks compressed together: SQLite
pages compress far better in runs than one 4 KiB page at a time. Index files map chunk id ->
(pack, frame offset, frame length, chunk plain size, chunk offset in the frame, frame plain size);
lookups use the index and never scan packs.

Write order is packs, then the index file that names them, and only then the snapshot that
references them: a crash leaves unreferenced data, never a reference to missing data.
"""

from __future__ import annotations

import struct
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import zstandard

from casnap import compression
from casnap.backends.base import Backend
from casnap.chunkindex import (
    BLOB_TYPES,
    DATA,
    FIELD_DTYPE,
    INDEX_MAGIC,
    TREE,
    ChunkIndex,
    EntryTable,
    IdSet,
    IndexEntry,
    _find,
    _keys,
    _void,
    decode_index,
    decode_index_arrays,
    encode_index,
    encode_index_arrays,
    id_matrix,
    past_limits,
)
from casnap.compression import decompress_object
from casnap.constants import FRAME_CACHE_BYTES, MAX_PACK_DIRECTORY, MAX_PACK_SIZE
from casnap.errors import IntegrityError
from casnap.ids import ID_SIZE, ObjectId, hash_bytes

__all__ = [
    "BLOB_TYPES",
    "DATA",
    "DIR_ENTRY_SIZE",
    "INDEX_ENTRY_SIZE",
    "INDEX_MAGIC",
    "TREE",
    "ChunkIndex",
    "EntryTable",
    "IdSet",
    "IndexEntry",
    "PackWriter",
    "Store",
    "decode_index",
    "encode_index",
    "index_key",
    "entry_of",
    "pack_id_of",
    "pack_key",
    "pack_overhead",
    "parse_pack_directory",
]

PACK_MAGIC = b"CASNPACK"
PACK_END = b"CASNPEND"
PACK_VERSION = 2
PACK_HEADER = PACK_MAGIC + bytes([PACK_VERSION]) + bytes(7)
# One directory record per chunk: id, type, frame offset, frame length, chunk plain size, chunk
# offset in the decoded frame, frame plain size (0 when the frame holds this chunk alone).
_DIR_RECORD = struct.Struct("<32sBIIIII")
DIR_DTYPE = np.dtype(
    [
        ("id", "u1", (ID_SIZE,)),
        ("type", "u1"),
        ("offset", "<u4"),
        ("length", "<u4"),
        ("plain", "<u4"),
        ("inner", "<u4"),
        ("frame_plain", "<u4"),
    ]
)
assert DIR_DTYPE.itemsize == _DIR_RECORD.size
DIR_ENTRY_SIZE = DIR_DTYPE.itemsize  # bytes per chunk in a pack directory (before compression)
INDEX_ENTRY_SIZE = ID_SIZE + FIELD_DTYPE.itemsize  # bytes per chunk in an index file (same)
# compressed directory length, BLAKE3 prefix of the compressed directory, end magic
_TRAILER = struct.Struct("<I16s8s")
_DIRECTORY_LEVEL = 3  # zstd level of pack directories
# Packs queued for writing at once: bounds memory to about (1 + this) x pack_target.
_PACKS_IN_FLIGHT = 1

# Bytes read back from the end of every object just written: a write that landed short fails it.
_VERIFY_TAIL = 64


def pack_key(pack: ObjectId) -> str:
    """Backend key of a pack: fanned out by the first byte so no folder grows too large."""
    h = pack.hex()
    return f"packs/{h[:2]}/{h}"


def index_key(index_id: ObjectId) -> str:
    return f"index/{index_id.hex()}"


def pack_id_of(key: str) -> ObjectId | None:
    """The pack id a `packs/xx/<hex>` key names; None for anything else."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "packs":
        return None
    try:
        pack = ObjectId.from_hex(parts[2])
    except ValueError:
        return None
    return pack if parts[1] == parts[2][:2] else None


def pack_overhead(dir_len: int) -> int:
    """Bytes of a pack that are not frames: header, directory and trailer."""
    return len(PACK_HEADER) + dir_len + _TRAILER.size


def check_pack_size(key: str, size: int) -> None:
    """IntegrityError for a pack larger than MAX_PACK_SIZE (before any of it is read whole)."""
    if size > MAX_PACK_SIZE:
        raise IntegrityError(f"{key}: pack of {size} bytes, past the limit of {MAX_PACK_SIZE}")


def parse_pack_directory_array(key: str, data: bytes) -> np.ndarray:
    """The directory records of a whole pack as a DIR_DTYPE array, bounds-checked."""
    check_pack_size(key, len(data))
    if len(data) < len(PACK_HEADER) + _TRAILER.size or not data.startswith(PACK_MAGIC):
        raise IntegrityError(f"{key}: not a casnap pack (bad header)")
    if data[8] != PACK_VERSION:
        raise IntegrityError(f"{key}: unknown pack version {data[8]}")
    dir_len, dir_hash, end = _TRAILER.unpack_from(data, len(data) - _TRAILER.size)
    if end != PACK_END:
        raise IntegrityError(f"{key}: not a casnap pack (bad trailer)")
    dir_start = len(data) - _TRAILER.size - dir_len
    if dir_start < len(PACK_HEADER):
        raise IntegrityError(f"{key}: pack directory out of bounds")
    return _parse_directory(key, data[dir_start : dir_start + dir_len], dir_hash, dir_start)


def _parse_directory(key: str, packed: bytes, dir_hash: bytes, dir_start: int) -> np.ndarray:
    """Check a compressed pack directory against its trailer checksum and the frames' bounds."""
    if bytes(hash_bytes(packed))[:16] != dir_hash:
        raise IntegrityError(f"{key}: pack directory checksum mismatch")
    directory = decompress_object(packed, f"{key}: corrupt pack directory")
    if len(directory) % DIR_DTYPE.itemsize:
        raise IntegrityError(f"{key}: pack directory has the wrong length")
    rec = np.frombuffer(directory, dtype=DIR_DTYPE)
    ends = rec["offset"].astype(np.int64) + rec["length"]
    frame = np.where(rec["frame_plain"] == 0, rec["plain"], rec["frame_plain"]).astype(np.int64)
    bad = (
        (rec["offset"] < len(PACK_HEADER))
        | (ends > dir_start)
        | (rec["type"] > TREE)
        | (rec["inner"].astype(np.int64) + rec["plain"] > frame)
    )
    if bad.any():
        raise IntegrityError(f"{key}: pack directory entry out of bounds")
    why = past_limits(rec)
    if why is not None:
        raise IntegrityError(f"{key}: pack directory entry of {why}")
    return rec


def parse_pack_directory(
    key: str, data: bytes
) -> list[tuple[ObjectId, int, int, int, int, int, int]]:
    """The (id, type, offset, length, plain, inner, frame_plain) records a whole pack describes;
    the fields after the id are those of IndexEntry."""
    return _records(parse_pack_directory_array(key, data))


def entry_of(pack: ObjectId, record: tuple[ObjectId, int, int, int, int, int, int]) -> IndexEntry:
    """The index entry a pack directory record stands for."""
    return IndexEntry(pack, *record[1:])


def _records(rec: np.ndarray) -> list[tuple[ObjectId, int, int, int, int, int, int]]:
    return [
        (
            ObjectId(r["id"].tobytes()),
            int(r["type"]),
            int(r["offset"]),
            int(r["length"]),
            int(r["plain"]),
            int(r["inner"]),
            int(r["frame_plain"]),
        )
        for r in rec
    ]


def directory_size(rec: np.ndarray) -> int:
    """Bytes the directory of a pack holding these DIR_DTYPE records takes (compressed)."""
    return len(zstandard.ZstdCompressor(level=_DIRECTORY_LEVEL).compress(rec.tobytes()))


def directory_agrees(
    rec: np.ndarray, ids: np.ndarray, fields: np.ndarray
) -> tuple[int, np.ndarray]:
    """Check index entries (ids, FIELD_DTYPE fields) of one pack against its directory records:
    (number of distinct ids the directory describes, whether each entry matches the directory's
    record of its id exactly). When the directory names an id twice, its last record counts."""
    if not len(rec):
        return 0, np.zeros(len(ids), dtype=bool)
    last = rec[::-1][np.unique(_void(rec["id"][::-1]), return_index=True)[1]]
    keys = _keys(last["id"])
    order = np.argsort(keys, kind="stable")
    last = last[order]
    pos = _find(keys[order], np.ascontiguousarray(last["id"]), ids)
    r = last[np.maximum(pos, 0)]
    same = pos >= 0
    for name in ("type", "offset", "length", "plain", "inner", "frame_plain"):
        same &= r[name] == fields[name]
    return len(last), same


def _directory_fields(rec: np.ndarray, pack_no: int) -> np.ndarray:
    fields = np.zeros(len(rec), dtype=FIELD_DTYPE)
    fields["pack"] = pack_no
    for name in ("type", "offset", "length", "plain", "inner", "frame_plain"):
        fields[name] = rec[name]
    return fields


class Store:
    """Content-addressed chunk store over a backend."""

    def __init__(self, backend: Backend, pack_target: int) -> None:
        self.backend = backend
        self.pack_target = pack_target
        self.index = ChunkIndex()
        self.index_files: list[str] = []
        self._frames: OrderedDict[tuple[bytes, int], compression.Frame] = OrderedDict()
        self._frames_bytes = 0
        self._frames_lock = threading.Lock()

    # -- reading -------------------------------------------------------------------------------

    def load_index(self) -> None:
        """Read every index file into memory."""
        parts = []
        files = []
        for key, _size in self.backend.list("index/"):
            blob = self.backend.get(key)
            if hash_bytes(blob).hex() != key.rsplit("/", 1)[-1]:
                raise IntegrityError(f"{key}: index file does not match its name (damaged)")
            parts.append(decode_index_arrays(key, blob))
            files.append(key)
        index = ChunkIndex()
        index.add(parts)
        self.index = index
        self.index_files = files

    def __contains__(self, cid: object) -> bool:
        return cid in self.index

    def entry(self, cid: ObjectId) -> IndexEntry:
        e = self.index.get(cid)
        if e is None:
            raise IntegrityError(f"chunk {cid.hex()} is not in the index")
        return e

    def read_raw(self, cid: ObjectId) -> bytes:
        """The encoded frame holding a chunk, as stored in its pack (see IndexEntry)."""
        e = self.entry(cid)
        return self.backend.get(pack_key(e.pack), e.offset, e.length)

    def read_frame(self, e: IndexEntry) -> compression.Frame:
        """The decoded frame an entry points into (not verified: callers check chunk hashes).

        Recently decoded frames are cached, so reading the chunks of a frame one by one decodes
        it once.
        """
        frame = self.cached_frame(e.pack, e.offset)
        if frame is not None:
            return frame
        encoded = self.backend.get(pack_key(e.pack), e.offset, e.length)
        try:
            frame = compression.decode_frame(encoded, e.frame_size)
        except IntegrityError as exc:
            raise IntegrityError(f"frame at {e.offset} in pack {e.pack.hex()}: {exc}") from None
        self.cache_frame((bytes(e.pack), e.offset), frame)
        return frame

    def cached_frame(self, pack: bytes, offset: int) -> compression.Frame | None:
        """A decoded frame from the cache, or None."""
        key = (bytes(pack), offset)
        with self._frames_lock:
            frame = self._frames.get(key)
            if frame is not None:
                self._frames.move_to_end(key)
            return frame

    def cache_frame(self, key: tuple[bytes, int], frame: compression.Frame) -> None:
        """Remember a decoded frame (least recently used ones leave past FRAME_CACHE_BYTES)."""
        if len(frame) > FRAME_CACHE_BYTES // 4:
            return
        with self._frames_lock:
            if key in self._frames:
                return
            self._frames[key] = frame
            self._frames_bytes += len(frame)
            while self._frames_bytes > FRAME_CACHE_BYTES:
                _, old = self._frames.popitem(last=False)
                self._frames_bytes -= len(old)

    def get(self, cid: ObjectId) -> bytes:
        """The plain bytes of a chunk, verified against its id."""
        e = self.entry(cid)
        try:
            frame = self.read_frame(e)
        except IntegrityError as exc:  # a missing, truncated or garbled pack: name the chunk
            raise type(exc)(f"chunk {cid.hex()}: {exc}") from None
        fits = e.inner + e.plain <= len(frame)  # else it fails verification as damaged
        return _verified(cid, e, frame.read(e.inner, e.plain) if fits else b"")

    @staticmethod
    def decode_verified(cid: ObjectId, e: IndexEntry, encoded: bytes) -> bytes:
        """Decode the frame stored at e and return the chunk, checking its BLAKE3."""
        try:
            frame = compression.decode(encoded, e.frame_size)
        except IntegrityError as exc:
            raise IntegrityError(f"chunk {cid.hex()} in pack {e.pack.hex()}: {exc}") from None
        return _verified(cid, e, frame[e.inner : e.inner + e.plain])

    @staticmethod
    def frame_damage(
        encoded: bytes, members: Sequence[tuple[ObjectId, IndexEntry]]
    ) -> list[str | None]:
        """Decode one stored frame once and check each listed chunk of it: per chunk None when
        it matches its id, else why not."""
        e0 = members[0][1]
        if any(e.offset != e0.offset or e.frame_size != e0.frame_size for _, e in members):
            raise ValueError("frame_damage needs chunks of one frame")
        try:
            frame = compression.decode(encoded, e0.frame_size)
        except IntegrityError as exc:
            return [f"chunk {cid.hex()} in pack {e.pack.hex()}: {exc}" for cid, e in members]
        out: list[str | None] = []
        for cid, e in members:
            try:
                _verified(cid, e, frame[e.inner : e.inner + e.plain])
                out.append(None)
            except IntegrityError as exc:
                out.append(str(exc))
        return out

    @staticmethod
    def verify_frame(encoded: bytes, members: Sequence[tuple[ObjectId, IndexEntry]]) -> None:
        """IntegrityError naming the first listed chunk of a stored frame that is damaged."""
        for why in Store.frame_damage(encoded, members):
            if why is not None:
                raise IntegrityError(why)

    @staticmethod
    def rewrite_frame(
        encoded: bytes,
        members: Sequence[tuple[ObjectId, IndexEntry]],
        level: int,
        float_level: int,
    ) -> tuple[bytes, int, list[tuple[bytes, int, int]]]:
        """A stored frame reduced to the listed chunks, every one verified first: (encoded frame,
        frame plain size or 0 for one chunk, [(id, offset in frame, plain size)]).

        A frame the chunks fill is returned as it is; otherwise their bytes are compressed again
        with the frame's own codec, so gc reclaims the space of the chunks no snapshot needs.
        """
        cid0, e0 = members[0]
        try:
            frame = compression.decode(encoded, e0.frame_size)
        except IntegrityError as exc:
            raise IntegrityError(f"chunk {cid0.hex()} in pack {e0.pack.hex()}: {exc}") from None
        ordered = sorted(members, key=lambda m: m[1].inner)
        for cid, e in ordered:
            _verified(cid, e, frame[e.inner : e.inner + e.plain])
        if sum(e.plain for _, e in ordered) == e0.frame_size:
            return encoded, e0.frame_plain, [(cid, e.inner, e.plain) for cid, e in ordered]
        out: list[tuple[bytes, int, int]] = []
        parts = []
        pos = 0
        for cid, e in ordered:
            parts.append(frame[e.inner : e.inner + e.plain])
            out.append((cid, pos, e.plain))
            pos += e.plain
        payload = b"".join(parts)
        grouped = encoded[0] == compression.ZSTD_GROUPED4
        fresh = compression.encode(payload, float_level if grouped else level, grouped=grouped)
        return fresh, (pos if len(out) > 1 else 0), out

    # -- writing -------------------------------------------------------------------------------

    def writer(self) -> PackWriter:
        return PackWriter(self)

    def rebuild_index_from_packs(
        self, skipped: list[tuple[str, str]] | None = None
    ) -> dict[ObjectId, IndexEntry]:
        """The index as the packs alone describe it, entry by entry (see rebuild_index_arrays)."""
        packs, ids, fields = self.rebuild_index_arrays(skipped)
        index = ChunkIndex()
        index.add([(packs, ids, fields)])
        return {index.id_at(row): index.entry_at(row) for row in range(len(index))}

    def rebuild_index_arrays(
        self, skipped: list[tuple[str, str]] | None = None
    ) -> tuple[list[ObjectId], np.ndarray, np.ndarray]:
        """Read every pack's own directory: the index as the packs alone describe it, as (pack
        table, ids, fields), one entry per chunk (the first pack listed that holds it).

        Without `skipped`, the first damaged pack raises IntegrityError. With it, damage is
        recorded there as (pack key, what happened) and the rebuild goes on: a pack whose hash
        does not match its name keeps the chunks that still decode to their own hash, a pack whose
        directory is unreadable is left out.
        """
        packs: list[ObjectId] = []
        ids_parts: list[np.ndarray] = []
        field_parts: list[np.ndarray] = []
        for key, size in self.backend.list("packs/"):
            pack = pack_id_of(key)
            if pack is None:
                if skipped is None:
                    raise IntegrityError(f"{key}: not a pack name")
                skipped.append((key, "not a pack name; left out"))
                continue
            try:
                check_pack_size(key, size)
                data = self.backend.get(key)
                rec = parse_pack_directory_array(key, data)
            except IntegrityError as exc:
                if skipped is None:
                    raise
                skipped.append((key, f"{exc}; left out"))
                continue
            intact = hash_bytes(data) == pack
            if not intact and skipped is None:
                raise IntegrityError(f"{key}: pack does not match its name (damaged)")
            if not intact:
                good = np.ones(len(rec), dtype=bool)
                for i, r in enumerate(_records(rec)):
                    entry = entry_of(pack, r)
                    try:
                        self.decode_verified(
                            r[0], entry, data[entry.offset : entry.offset + entry.length]
                        )
                    except IntegrityError:
                        good[i] = False
                if skipped is not None:
                    skipped.append(
                        (
                            key,
                            f"pack does not match its name (damaged); {int(good.sum())} of "
                            f"{len(rec)} chunks verified and kept",
                        )
                    )
                rec = rec[good]
            ids_parts.append(rec["id"])
            field_parts.append(_directory_fields(rec, len(packs)))
            packs.append(pack)
        if not ids_parts:
            return [], np.zeros((0, ID_SIZE), np.uint8), np.zeros(0, FIELD_DTYPE)
        ids = np.concatenate(ids_parts)
        fields = np.concatenate(field_parts)
        _, first = np.unique(ids.view(np.dtype((np.void, ID_SIZE))).reshape(-1), return_index=True)
        keep = np.sort(first)  # a chunk several packs hold: the first pack listed
        return packs, ids[keep], fields[keep]

    def load_index_file(self, key: str) -> list[tuple[ObjectId, IndexEntry]]:
        """The entries of one index file, checked against its name; IntegrityError otherwise."""
        blob = self.backend.get(key)
        if hash_bytes(blob).hex() != key.rsplit("/", 1)[-1]:
            raise IntegrityError(f"{key}: index file does not match its name (damaged)")
        return list(decode_index(key, blob))

    def load_index_file_arrays(self, key: str) -> tuple[list[ObjectId], np.ndarray, np.ndarray]:
        """One index file as (pack table, ids, fields), checked against its name."""
        blob = self.backend.get(key)
        if hash_bytes(blob).hex() != key.rsplit("/", 1)[-1]:
            raise IntegrityError(f"{key}: index file does not match its name (damaged)")
        return decode_index_arrays(key, blob)

    def read_pack_directory(
        self, pack: ObjectId, size: int
    ) -> list[tuple[ObjectId, int, int, int, int, int, int]]:
        """A pack's directory read from its tail alone (two ranged reads), bounds-checked; the
        records of parse_pack_directory."""
        return _records(self.read_pack_directory_array(pack, size))

    def read_pack_directory_array(self, pack: ObjectId, size: int) -> np.ndarray:
        """A pack's directory read from its tail alone (two ranged reads), bounds-checked, as a
        DIR_DTYPE array."""
        key = pack_key(pack)
        check_pack_size(key, size)
        if size < len(PACK_HEADER) + _TRAILER.size:
            raise IntegrityError(f"{key}: too short to be a pack ({size} bytes)")
        dir_len, dir_hash, end = _TRAILER.unpack(
            self.backend.get(key, size - _TRAILER.size, _TRAILER.size)
        )
        if end != PACK_END:
            raise IntegrityError(f"{key}: not a casnap pack (bad trailer)")
        dir_start = size - _TRAILER.size - dir_len
        if dir_start < len(PACK_HEADER):
            raise IntegrityError(f"{key}: pack directory out of bounds")
        packed = self.backend.get(key, dir_start, dir_len)
        return _parse_directory(key, packed, dir_hash, dir_start)

    def write_index(self, entries: Mapping[ObjectId, IndexEntry]) -> tuple[str, int]:
        """Store an index file for entries; returns its key and size."""
        return self._put_index(encode_index(entries.items()))

    def write_index_arrays(
        self, packs: Sequence[ObjectId], ids: np.ndarray, fields: np.ndarray
    ) -> tuple[str, int]:
        """Store an index file for entries given as arrays; returns its key and size."""
        return self._put_index(encode_index_arrays(packs, ids, fields))

    def _put_index(self, blob: bytes) -> tuple[str, int]:
        key = index_key(hash_bytes(blob))
        self.put_verified(key, blob)
        return key, len(blob)

    def put_verified(self, key: str, data: bytes | memoryview) -> bool:
        """Put an object whose key names its content, and make sure the stored copy is whole.

        A fresh write is read back at its tail (a write that landed short fails that read); an
        object already stored under the key is read back whole and must equal data, or it is a
        damaged leftover (a torn earlier write) that would poison every later reference to it.
        A bad copy is deleted and written again; IntegrityError naming it after the second try.
        """
        for _attempt in range(2):
            written = self.backend.put(key, data)
            try:
                if written:
                    tail = max(0, len(data) - _VERIFY_TAIL)
                    intact = self.backend.get(key, tail, len(data) - tail) == data[tail:]
                else:
                    intact = self.backend.get(key) == data
            except IntegrityError:
                intact = False
            if intact:
                return written
            self.backend.delete(key)
        raise IntegrityError(
            f"{key} did not land intact in {self.backend.location} after two writes"
        )


def _verified(cid: ObjectId, e: IndexEntry, plain: bytes) -> bytes:
    if len(plain) != e.plain or hash_bytes(plain) != cid:
        raise IntegrityError(
            f"chunk {cid.hex()} in pack {e.pack.hex()} does not match its hash (damaged)"
        )
    return plain


class _OpenPack:
    __slots__ = ("data", "records")

    def __init__(self) -> None:
        self.data = bytearray(PACK_HEADER)  # grows in place: no second copy when written
        self.records = bytearray()


class PackWriter:
    """Collects new frames into packs; `finish` writes the last pack and the index file.

    Packs are written by a background thread (at most _PACKS_IN_FLIGHT queued), so hashing and
    fsyncing a pack overlaps with reading and compressing the next. Not thread-safe: workers
    encode frames, one thread adds them here.

    `put` stores a finished pack under its key and says whether it made the object (False: the
    same pack was stored already); by default Store.put_verified. gc's dry run passes one that
    stores nothing, to learn the exact packs a repack would write.
    """

    def __init__(self, store: Store, put: Callable[[str, memoryview], bool] | None = None) -> None:
        self.store = store
        self._put = put if put is not None else store.put_verified
        self.pending: set[bytes] = set()  # ids in the open pack and in packs being written
        self.written = IdSet()  # ids in this writer's durable packs (compact: 40 bytes each)
        self._pack: _OpenPack | None = None
        self._inflight: deque[Future[tuple[ObjectId, bytes, int, bool]]] = deque()
        self._done: list[tuple[ObjectId, bytes]] = []  # (pack, directory records)
        # packs this writer made (not those it found stored already) and their sizes
        self.created: list[tuple[ObjectId, int]] = []
        self._unindexed: list[ObjectId] = []  # of those, the ones its index file does not name
        self._io: ThreadPoolExecutor | None = None
        self.bytes_added = 0  # bytes of packs written
        self.packs_written = 0
        self.chunks_added = 0
        self.bytes_by_type = [0] * len(BLOB_TYPES)  # encoded bytes of frames added, per type
        self.index_bytes = 0

    def known(self, cid: bytes) -> bool:
        """True when the chunk is stored already or queued in this writer."""
        return cid in self.pending or cid in self.written or cid in self.store.index

    def known_many(self, ids: Sequence[bytes]) -> np.ndarray:
        """Boolean array: which of ids are stored or queued; callable from any thread.

        `pending` is read before `written`: an id moving from one to the other (its pack became
        durable) is then found in one of them.
        """
        pending = self.pending
        found = np.fromiter((cid in pending for cid in ids), dtype=bool, count=len(ids))
        matrix = id_matrix(b"".join(ids))
        return found | self.written.contains_many(matrix) | self.store.index.contains_many(matrix)

    def add(self, cid: ObjectId, btype: int, encoded: bytes, plain: int) -> bool:
        """Queue one encoded chunk as its own frame unless known; True when it was new."""
        if self.known(cid):
            return False
        return self.add_frame(btype, encoded, 0, [(cid, 0, plain)]) == 1

    def add_frame(
        self,
        btype: int,
        encoded: bytes,
        frame_plain: int,
        members: Sequence[tuple[bytes, int, int]],
    ) -> int:
        """Queue a frame holding members (id, offset in frame, plain size); returns how many of
        them were new. frame_plain is the frame's plain size, 0 for a frame of one chunk.

        Callers check the store's index beforehand (in batches, see known_many); members this
        writer has already queued keep their first copy, and a frame with no new member is
        dropped.
        """
        pending = self.pending
        fresh = [m for m in members if m[0] not in pending]
        if fresh and len(self.written):
            done = self.written.contains_many(id_matrix([bytes(m[0]) for m in fresh]))
            fresh = [m for m, d in zip(fresh, done, strict=True) if not d]
        if not fresh:
            return 0
        if self._pack is None:
            self._pack = _OpenPack()
        p = self._pack
        offset = len(p.data)
        pack_rec = _DIR_RECORD.pack
        for cid, inner, plain in fresh:
            p.records += pack_rec(cid, btype, offset, len(encoded), plain, inner, frame_plain)
            pending.add(bytes(cid))
        p.data += encoded
        self.chunks_added += len(fresh)
        self.bytes_by_type[btype] += len(encoded)
        if len(p.data) >= self.store.pack_target or len(p.records) >= MAX_PACK_DIRECTORY:
            self.flush()
        return len(fresh)

    def flush(self) -> None:
        """Hand the open pack to the writing thread (its chunks are indexed once it is durable)."""
        p = self._pack
        self._pack = None
        if p is None or not p.records:
            return
        if self._io is None:
            self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="casnap-pack")
        while len(self._inflight) >= _PACKS_IN_FLIGHT:
            self._collect(self._inflight.popleft())
        self._inflight.append(self._io.submit(self._write_pack, p))

    def _write_pack(self, p: _OpenPack) -> tuple[ObjectId, bytes, int, bool]:
        records = bytes(p.records)
        directory = zstandard.ZstdCompressor(level=_DIRECTORY_LEVEL).compress(records)
        trailer = _TRAILER.pack(len(directory), bytes(hash_bytes(directory))[:16], PACK_END)
        data = p.data
        data += directory
        data += trailer
        pack = hash_bytes(data)
        made = self._put(pack_key(pack), memoryview(data))
        self.bytes_added += len(data)
        self.packs_written += 1
        p.data = bytearray()
        return pack, records, len(data), made

    def _collect(self, fut: Future[tuple[ObjectId, bytes, int, bool]]) -> None:
        """A pack is durable: its ids move from `pending` to the compact `written` set."""
        pack, records, size, made = fut.result()
        self._done.append((pack, records))
        if made:
            self.created.append((pack, size))
            self._unindexed.append(pack)
        ids = np.frombuffer(records, dtype=DIR_DTYPE)["id"]
        self.written.add(ids)  # first, so a concurrent check always finds them in one place
        for i in range(len(ids)):
            self.pending.discard(ids[i].tobytes())

    @property
    def new(self) -> dict[ObjectId, IndexEntry]:
        """Entries of the chunks in packs handed to the writing thread (waits for them)."""
        while self._inflight:
            self._collect(self._inflight.popleft())
        out: dict[ObjectId, IndexEntry] = {}
        for pack, records in self._done:
            for rec in _records(np.frombuffer(records, dtype=DIR_DTYPE)):
                out.setdefault(rec[0], entry_of(pack, rec))
        return out

    def new_arrays(self) -> tuple[list[ObjectId], np.ndarray, np.ndarray]:
        """(pack table, ids, fields) of the chunks in packs handed to the writing thread (waits
        for them), as an index file holds them."""
        while self._inflight:
            self._collect(self._inflight.popleft())
        packs = [pack for pack, _ in self._done]
        ids_parts, field_parts = [], []
        for n, (_pack, records) in enumerate(self._done):
            rec = np.frombuffer(records, dtype=DIR_DTYPE)
            ids_parts.append(rec["id"])
            field_parts.append(_directory_fields(rec, n))
        if not ids_parts:
            return [], np.zeros((0, ID_SIZE), np.uint8), np.zeros(0, FIELD_DTYPE)
        return packs, np.concatenate(ids_parts), np.concatenate(field_parts)

    def _drain(self) -> None:
        try:
            while self._inflight:
                self._collect(self._inflight.popleft())
        finally:
            if self._io is not None:
                self._io.shutdown(wait=True)
                self._io = None

    def close(self) -> None:
        """Write the open pack and wait for every pack to be durable, without an index file (for
        callers that write their own index from `new`, such as gc)."""
        self.flush()
        self._drain()

    def abort(self) -> list[ObjectId]:
        """Stop after a failure: wait for packs being written, drop the rest (no index file).

        Returns the packs this writer made and `finish` did not index: nothing refers to them
        (unless another writer made the very same pack meanwhile; see rollback.py before deleting
        any). A pack that was stored already when this writer put it is not listed.
        """
        self._pack = None
        while self._inflight:
            fut = self._inflight.popleft()
            try:
                self._collect(fut)
            except BaseException:  # noqa: BLE001 - the first failure is being reported already
                pass
        if self._io is not None:
            self._io.shutdown(wait=True)
            self._io = None
        return list(self._unindexed)

    def finish(self) -> int:
        """Flush, write one index file for everything added, and merge it; returns bytes written."""
        self.flush()
        self._drain()
        if self._done:
            packs, ids, fields = self.new_arrays()
            key, self.index_bytes = self.store.write_index_arrays(packs, ids, fields)
            self._unindexed = []
            self.store.index.add([(packs, ids, fields)])
            self.store.index_files.append(key)
            self._done = []
        return self.bytes_added + self.index_bytes
