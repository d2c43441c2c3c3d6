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
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import zstandard

from casnap import compression
from casnap.backends.base import Backend
from casnap.chunkindex import (
    BLOB_TYPES,
    DATA,
    FIELD_DTYPE,
    TREE,
    ChunkIndex,
    IndexEntry,
    decode_index,
    decode_index_arrays,
    encode_index,
    encode_index_arrays,
)
from casnap.constants import FRAME_CACHE_BYTES
from casnap.errors import IntegrityError
from casnap.ids import ID_SIZE, ObjectId, hash_bytes

__all__ = [
    "BLOB_TYPES",
    "DATA",
    "TREE",
    "ChunkIndex",
    "IndexEntry",
    "PackWriter",
    "Store",
    "decode_index",
    "encode_index",
    "index_key",
    "pack_key",
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
# compressed directory length, BLAKE3 prefix of the compressed directory, end magic
_TRAILER = struct.Struct("<I16s8s")
# Packs queued for writing at once: bounds memory to about (1 + this) x pack_target.
_PACKS_IN_FLIGHT = 1


def pack_key(pack: ObjectId) -> str:
    """Backend key of a pack: fanned out by the first byte so no folder grows too large."""
    h = pack.hex()
    return f"packs/{h[:2]}/{h}"


def index_key(index_id: ObjectId) -> str:
    return f"index/{index_id.hex()}"


def parse_pack_directory_array(key: str, data: bytes) -> np.ndarray:
    """The directory records of a whole pack as a DIR_DTYPE array, bounds-checked."""
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
    packed = data[dir_start : dir_start + dir_len]
    if bytes(hash_bytes(packed))[:16] != dir_hash:
        raise IntegrityError(f"{key}: pack directory checksum mismatch")
    try:
        directory = zstandard.ZstdDecompressor().decompress(
            packed, max_output_size=max(1 << 16, 64 * len(data))
        )
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{key}: corrupt pack directory ({exc})") from None
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
    return rec


def parse_pack_directory(
    key: str, data: bytes
) -> list[tuple[ObjectId, int, int, int, int, int, int]]:
    """The (id, type, offset, length, plain, inner, frame_plain) records a whole pack describes."""
    rec = parse_pack_directory_array(key, data)
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
        self._frames: OrderedDict[tuple[bytes, int], bytes] = OrderedDict()
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

    def read_frame(self, e: IndexEntry) -> bytes:
        """The decoded frame an entry points into (not verified: callers check chunk hashes).

        Recently decoded frames are cached, so reading the chunks of a frame one by one decodes
        it once.
        """
        key = (bytes(e.pack), e.offset)
        frame = self.cached_frame(e.pack, e.offset)
        if frame is not None:
            return frame
        encoded = self.backend.get(pack_key(e.pack), e.offset, e.length)
        try:
            frame = compression.decode(encoded, e.frame_size)
        except IntegrityError as exc:
            raise IntegrityError(f"frame at {e.offset} in pack {e.pack.hex()}: {exc}") from None
        self.cache_frame(key, frame)
        return frame

    def cached_frame(self, pack: bytes, offset: int) -> bytes | None:
        """A decoded frame from the cache, or None."""
        key = (bytes(pack), offset)
        with self._frames_lock:
            frame = self._frames.get(key)
            if frame is not None:
                self._frames.move_to_end(key)
            return frame

    def cache_frame(self, key: tuple[bytes, int], frame: bytes) -> None:
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
        frame = self.read_frame(e)
        return _verified(cid, e, frame[e.inner : e.inner + e.plain])

    @staticmethod
    def decode_verified(cid: ObjectId, e: IndexEntry, encoded: bytes) -> bytes:
        """Decode the frame stored at e and return the chunk, checking its BLAKE3."""
        try:
            frame = compression.decode(encoded, e.frame_size)
        except IntegrityError as exc:
            raise IntegrityError(f"chunk {cid.hex()} in pack {e.pack.hex()}: {exc}") from None
        return _verified(cid, e, frame[e.inner : e.inner + e.plain])

    # -- writing -------------------------------------------------------------------------------

    def writer(self) -> PackWriter:
        return PackWriter(self)

    def rebuild_index_from_packs(self) -> ChunkIndex:
        """Read every pack's own directory: the index as the packs alone describe it."""
        parts = []
        for key, _size in self.backend.list("packs/"):
            data = self.backend.get(key)
            pack = ObjectId.from_hex(key.rsplit("/", 1)[-1])
            if hash_bytes(data) != pack:
                raise IntegrityError(f"{key}: pack does not match its name (damaged)")
            rec = parse_pack_directory_array(key, data)
            parts.append(([pack], rec["id"], _directory_fields(rec, 0)))
        index = ChunkIndex()
        index.add(parts)
        return index

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
        self.backend.put(key, blob)
        return key, len(blob)


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
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.seen: set[bytes] = set()  # ids added by this writer, written or not
        self._pack: _OpenPack | None = None
        self._inflight: deque[Future[tuple[ObjectId, bytes]]] = deque()
        self._done: list[tuple[ObjectId, bytes]] = []  # (pack, directory records)
        self._io: ThreadPoolExecutor | None = None
        self.bytes_added = 0  # bytes of packs written
        self.packs_written = 0
        self.chunks_added = 0
        self.bytes_by_type = [0] * len(BLOB_TYPES)  # encoded bytes of frames added, per type
        self.index_bytes = 0

    def known(self, cid: bytes) -> bool:
        """True when the chunk is stored already or queued in this writer."""
        return cid in self.seen or cid in self.store.index

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

        Callers check the store's index beforehand (in batches, see ChunkIndex.lookup); members
        this writer has already queued keep their first copy, and a frame with no new member is
        dropped.
        """
        seen = self.seen
        fresh = [m for m in members if m[0] not in seen]
        if not fresh:
            return 0
        if self._pack is None:
            self._pack = _OpenPack()
        p = self._pack
        offset = len(p.data)
        pack_rec = _DIR_RECORD.pack
        for cid, inner, plain in fresh:
            p.records += pack_rec(cid, btype, offset, len(encoded), plain, inner, frame_plain)
            self.seen.add(bytes(cid))
        p.data += encoded
        self.chunks_added += len(fresh)
        self.bytes_by_type[btype] += len(encoded)
        if len(p.data) >= self.store.pack_target:
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

    def _write_pack(self, p: _OpenPack) -> tuple[ObjectId, bytes]:
        records = bytes(p.records)
        directory = zstandard.ZstdCompressor(level=3).compress(records)
        trailer = _TRAILER.pack(len(directory), bytes(hash_bytes(directory))[:16], PACK_END)
        data = p.data
        data += directory
        data += trailer
        pack = hash_bytes(data)
        self.store.backend.put(pack_key(pack), memoryview(data))
        self.bytes_added += len(data)
        self.packs_written += 1
        p.data = bytearray()
        return pack, records

    def _collect(self, fut: Future[tuple[ObjectId, bytes]]) -> None:
        self._done.append(fut.result())

    def _drain(self) -> None:
        try:
            while self._inflight:
                self._collect(self._inflight.popleft())
        finally:
            if self._io is not None:
                self._io.shutdown(wait=True)
                self._io = None

    def abort(self) -> None:
        """Stop after a failure: wait for packs being written, drop the rest (no index file)."""
        self._pack = None
        while self._inflight:
            fut = self._inflight.popleft()
            try:
                fut.result()
            except BaseException:  # noqa: BLE001 - the first failure is being reported already
                pass
        if self._io is not None:
            self._io.shutdown(wait=True)
            self._io = None

    def finish(self) -> int:
        """Flush, write one index file for everything added, and merge it; returns bytes written."""
        self.flush()
        self._drain()
        if self._done:
            packs = [pack for pack, _ in self._done]
            ids_parts, field_parts = [], []
            for n, (_pack, records) in enumerate(self._done):
                rec = np.frombuffer(records, dtype=DIR_DTYPE)
                ids_parts.append(rec["id"])
                field_parts.append(_directory_fields(rec, n))
            ids = np.concatenate(ids_parts)
            fields = np.concatenate(field_parts)
            key, self.index_bytes = self.store.write_index_arrays(packs, ids, fields)
            self.store.index.add([(packs, ids, fields)])
            self.store.index_files.append(key)
            self._done = []
        return self.bytes_added + self.index_bytes


def iter_index_entries(index: ChunkIndex) -> Iterable[tuple[ObjectId, IndexEntry]]:
    """Every (id, entry) of an index, for tools that walk all of it."""
    for row in range(len(index)):
        yield index.id_at(row), index.entry_at(row)
