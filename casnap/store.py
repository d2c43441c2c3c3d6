"""Packs and index: put a chunk once, get it back verified.

A pack holds many encoded chunks followed by a directory describing them, so the index can always
be rebuilt from the packs alone. Index files map chunk id -> (pack, offset, length, plain size);
lookups use the index and never scan packs. Write order is packs, then the index file that names
them, and only then the snapshot that references them: a crash leaves unreferenced data, never a
reference to missing data.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import zstandard

from casnap import compression
from casnap.backends.base import Backend
from casnap.errors import IntegrityError
from casnap.ids import ID_SIZE, ObjectId, hash_bytes

DATA = 0  # file content
TREE = 1  # a list of chunk references (a file's chunk list, split in pieces)
BLOB_TYPES = {DATA: "data", TREE: "tree"}

PACK_MAGIC = b"CASNPACK"
PACK_END = b"CASNPEND"
PACK_VERSION = 1
PACK_HEADER = PACK_MAGIC + bytes([PACK_VERSION]) + bytes(7)
_DIR_ENTRY = struct.Struct("<32sBIII")  # id, type, offset, length, plain size
_TRAILER = struct.Struct("<I16s8s")  # directory length, BLAKE3 prefix of directory, end magic

INDEX_MAGIC = b"CASNIDX1"

# Bytes read back from the end of every object just written: a write that landed short fails it.
_VERIFY_TAIL = 64
_INDEX_ENTRY = struct.Struct("<32sIBIII")  # id, pack number, type, offset, length, plain size
DIR_ENTRY_SIZE = _DIR_ENTRY.size  # bytes per chunk in a pack directory
INDEX_ENTRY_SIZE = _INDEX_ENTRY.size  # bytes per chunk in an index file (before compression)


class IndexEntry(NamedTuple):
    """Where one encoded chunk lives."""

    pack: ObjectId
    type: int
    offset: int
    length: int
    plain: int


def pack_key(pack: ObjectId) -> str:
    """Backend key of a pack: fanned out by the first byte so no folder grows too large."""
    h = pack.hex()
    return f"packs/{h[:2]}/{h}"


def index_key(index_id: ObjectId) -> str:
    return f"index/{index_id.hex()}"


def parse_pack_directory(key: str, data: bytes) -> list[tuple[ObjectId, int, int, int, int]]:
    """The (id, type, offset, length, plain) records a whole pack describes, bounds-checked."""
    if len(data) < len(PACK_HEADER) + _TRAILER.size or not data.startswith(PACK_MAGIC):
        raise IntegrityError(f"{key}: not a casnap pack (bad header)")
    if data[8] != PACK_VERSION:
        raise IntegrityError(f"{key}: unknown pack version {data[8]}")
    dir_len, dir_hash, end = _TRAILER.unpack_from(data, len(data) - _TRAILER.size)
    if end != PACK_END:
        raise IntegrityError(f"{key}: not a casnap pack (bad trailer)")
    dir_start = len(data) - _TRAILER.size - dir_len
    if dir_start < len(PACK_HEADER) or dir_len % _DIR_ENTRY.size:
        raise IntegrityError(f"{key}: pack directory out of bounds")
    return _parse_directory(key, data[dir_start : dir_start + dir_len], dir_hash, dir_start)


def _parse_directory(
    key: str, directory: bytes, dir_hash: bytes, dir_start: int
) -> list[tuple[ObjectId, int, int, int, int]]:
    """Check a pack directory against its trailer checksum and bounds; its records."""
    if bytes(hash_bytes(directory))[:16] != dir_hash:
        raise IntegrityError(f"{key}: pack directory checksum mismatch")
    records = []
    for raw_id, btype, offset, length, plain in _DIR_ENTRY.iter_unpack(directory):
        if offset < len(PACK_HEADER) or offset + length > dir_start or btype not in BLOB_TYPES:
            raise IntegrityError(f"{key}: pack directory entry out of bounds")
        records.append((ObjectId(raw_id), btype, offset, length, plain))
    return records


def pack_overhead(dir_len: int) -> int:
    """Bytes of a pack that are not chunk data: header, directory and trailer."""
    return len(PACK_HEADER) + dir_len + _TRAILER.size


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


def encode_index(entries: Iterable[tuple[ObjectId, IndexEntry]]) -> bytes:
    """Serialize index entries: pack table, then fixed-size records; zstd-compressed."""
    packs: dict[ObjectId, int] = {}
    records = []
    for cid, e in entries:
        n = packs.setdefault(e.pack, len(packs))
        records.append(_INDEX_ENTRY.pack(cid, n, e.type, e.offset, e.length, e.plain))
    body = b"".join(
        [INDEX_MAGIC, struct.pack("<I", len(packs)), *packs.keys(), struct.pack("<I", len(records))]
        + records
    )
    return zstandard.ZstdCompressor(level=3).compress(body)


def decode_index(key: str, blob: bytes) -> Iterator[tuple[ObjectId, IndexEntry]]:
    """Parse an index file; IntegrityError naming it when anything is off."""
    try:
        body = zstandard.ZstdDecompressor().decompress(blob, max_output_size=1 << 31)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{key}: corrupt index file ({exc})") from None
    try:
        if not body.startswith(INDEX_MAGIC):
            raise IntegrityError(f"{key}: not a casnap index file")
        pos = len(INDEX_MAGIC)
        (npacks,) = struct.unpack_from("<I", body, pos)
        pos += 4
        packs = [ObjectId(body[pos + i * ID_SIZE : pos + (i + 1) * ID_SIZE]) for i in range(npacks)]
        pos += npacks * ID_SIZE
        (n,) = struct.unpack_from("<I", body, pos)
        pos += 4
        if len(body) != pos + n * _INDEX_ENTRY.size:
            raise IntegrityError(f"{key}: index file has the wrong length")
        for raw_id, pn, btype, offset, length, plain in _INDEX_ENTRY.iter_unpack(body[pos:]):
            if pn >= npacks or btype not in BLOB_TYPES:
                raise IntegrityError(f"{key}: index entry out of range")
            yield ObjectId(raw_id), IndexEntry(packs[pn], btype, offset, length, plain)
    except (struct.error, ValueError):
        raise IntegrityError(f"{key}: truncated index file") from None


@dataclass
class _OpenPack:
    parts: list[bytes]
    size: int
    records: list[tuple[ObjectId, int, int, int, int]]


class Store:
    """Content-addressed chunk store over a backend."""

    def __init__(self, backend: Backend, pack_target: int) -> None:
        self.backend = backend
        self.pack_target = pack_target
        self.index: dict[ObjectId, IndexEntry] = {}
        self.index_files: list[str] = []

    # -- reading -------------------------------------------------------------------------------

    def load_index(self) -> None:
        """Read every index file into memory."""
        index: dict[ObjectId, IndexEntry] = {}
        files = []
        for key, _size in self.backend.list("index/"):
            blob = self.backend.get(key)
            if hash_bytes(blob).hex() != key.rsplit("/", 1)[-1]:
                raise IntegrityError(f"{key}: index file does not match its name (damaged)")
            index.update(decode_index(key, blob))
            files.append(key)
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
        """The encoded bytes of a chunk as stored in its pack."""
        e = self.entry(cid)
        return self.backend.get(pack_key(e.pack), e.offset, e.length)

    def get(self, cid: ObjectId) -> bytes:
        """The plain bytes of a chunk, verified against its id."""
        e = self.entry(cid)
        try:
            encoded = self.backend.get(pack_key(e.pack), e.offset, e.length)
        except IntegrityError as exc:  # a missing or truncated pack: say which chunk it cost
            raise type(exc)(f"chunk {cid.hex()}: {exc}") from None
        return self.decode_verified(cid, e, encoded)

    @staticmethod
    def decode_verified(cid: ObjectId, e: IndexEntry, encoded: bytes) -> bytes:
        """Decode an encoded chunk and check its BLAKE3; IntegrityError naming chunk and pack."""
        try:
            plain = compression.decode(encoded, e.plain)
        except IntegrityError as exc:
            raise IntegrityError(f"chunk {cid.hex()} in pack {e.pack.hex()}: {exc}") from None
        if hash_bytes(plain) != cid:
            raise IntegrityError(
                f"chunk {cid.hex()} in pack {e.pack.hex()} does not match its hash (damaged)"
            )
        return plain

    # -- writing -------------------------------------------------------------------------------

    def writer(self) -> PackWriter:
        return PackWriter(self)

    def rebuild_index_from_packs(
        self, skipped: list[tuple[str, str]] | None = None
    ) -> dict[ObjectId, IndexEntry]:
        """Read every pack's own directory: the index as the packs alone describe it.

        Without `skipped`, the first damaged pack raises IntegrityError. With it, damage is
        recorded there as (pack key, what happened) and the rebuild goes on: a pack whose hash
        does not match its name keeps the chunks that still decode to their own hash, a pack whose
        directory is unreadable is left out.
        """
        index: dict[ObjectId, IndexEntry] = {}
        for key, _size in self.backend.list("packs/"):
            pack = pack_id_of(key)
            if pack is None:
                if skipped is None:
                    raise IntegrityError(f"{key}: not a pack name")
                skipped.append((key, "not a pack name; left out"))
                continue
            try:
                data = self.backend.get(key)
                records = parse_pack_directory(key, data)
            except IntegrityError as exc:
                if skipped is None:
                    raise
                skipped.append((key, f"{exc}; left out"))
                continue
            intact = hash_bytes(data) == pack
            if not intact and skipped is None:
                raise IntegrityError(f"{key}: pack does not match its name (damaged)")
            bad = 0
            for cid, btype, offset, length, plain in records:
                entry = IndexEntry(pack, btype, offset, length, plain)
                if not intact:
                    try:
                        self.decode_verified(cid, entry, data[offset : offset + length])
                    except IntegrityError:
                        bad += 1
                        continue
                index.setdefault(cid, entry)
            if not intact and skipped is not None:
                skipped.append(
                    (
                        key,
                        f"pack does not match its name (damaged); {len(records) - bad} of "
                        f"{len(records)} chunks verified and kept",
                    )
                )
        return index

    def load_index_file(self, key: str) -> list[tuple[ObjectId, IndexEntry]]:
        """The entries of one index file, checked against its name; IntegrityError otherwise."""
        blob = self.backend.get(key)
        if hash_bytes(blob).hex() != key.rsplit("/", 1)[-1]:
            raise IntegrityError(f"{key}: index file does not match its name (damaged)")
        return list(decode_index(key, blob))

    def read_pack_directory(
        self, pack: ObjectId, size: int
    ) -> list[tuple[ObjectId, int, int, int, int]]:
        """A pack's directory read from its tail alone (two ranged reads), bounds-checked."""
        key = pack_key(pack)
        if size < len(PACK_HEADER) + _TRAILER.size:
            raise IntegrityError(f"{key}: too short to be a pack ({size} bytes)")
        dir_len, dir_hash, end = _TRAILER.unpack(
            self.backend.get(key, size - _TRAILER.size, _TRAILER.size)
        )
        if end != PACK_END:
            raise IntegrityError(f"{key}: not a casnap pack (bad trailer)")
        dir_start = size - _TRAILER.size - dir_len
        if dir_start < len(PACK_HEADER) or dir_len % _DIR_ENTRY.size:
            raise IntegrityError(f"{key}: pack directory out of bounds")
        directory = self.backend.get(key, dir_start, dir_len)
        return _parse_directory(key, directory, dir_hash, dir_start)

    def write_index(self, entries: dict[ObjectId, IndexEntry]) -> tuple[str, int]:
        """Store an index file for entries; returns its key and size."""
        blob = encode_index(entries.items())
        key = index_key(hash_bytes(blob))
        self.put_verified(key, blob)
        return key, len(blob)

    def put_verified(self, key: str, data: bytes) -> bool:
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


class PackWriter:
    """Collects new chunks into packs; `finish` writes the last pack and the index file.

    Not thread-safe: workers encode chunks, one thread adds them here.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.new: dict[ObjectId, IndexEntry] = {}
        self.pending: set[ObjectId] = set()
        self._pack: _OpenPack | None = None
        self.bytes_added = 0  # encoded bytes written in packs
        self.packs_written = 0

    def known(self, cid: ObjectId) -> bool:
        """True when the chunk is stored already or queued in this writer."""
        return cid in self.store.index or cid in self.pending or cid in self.new

    def add(self, cid: ObjectId, btype: int, encoded: bytes, plain: int) -> bool:
        """Queue an encoded chunk unless known; True when it was new."""
        if self.known(cid):
            return False
        if self._pack is None:
            self._pack = _OpenPack([PACK_HEADER], len(PACK_HEADER), [])
        p = self._pack
        p.records.append((cid, btype, p.size, len(encoded), plain))
        p.parts.append(encoded)
        p.size += len(encoded)
        self.pending.add(cid)
        if p.size >= self.store.pack_target:
            self.flush()
        return True

    def flush(self) -> None:
        """Write the open pack to the backend (durable before its chunks are indexed)."""
        p = self._pack
        if p is None or not p.records:
            return
        directory = b"".join(_DIR_ENTRY.pack(*r) for r in p.records)
        trailer = _TRAILER.pack(len(directory), bytes(hash_bytes(directory))[:16], PACK_END)
        data = b"".join([*p.parts, directory, trailer])
        pack = hash_bytes(data)
        self.store.put_verified(pack_key(pack), data)
        for cid, btype, offset, length, plain in p.records:
            self.new[cid] = IndexEntry(pack, btype, offset, length, plain)
            self.pending.discard(cid)
        self.bytes_added += len(data)
        self.packs_written += 1
        self._pack = None

    def finish(self) -> int:
        """Flush, write one index file for everything added, and merge it; returns bytes written."""
        self.flush()
        written = 0
        if self.new:
            key, written = self.store.write_index(self.new)
            self.store.index.update(self.new)
            self.store.index_files.append(key)
        self.new = {}
        return self.bytes_added + written
