"""The pack file format: header, frames, a directory describing every chunk, trailer.

A pack holds frames followed by a checksummed directory of one record per chunk (the fields of
its index entry), so the index can always be rebuilt from the packs alone, and any index entry
can be checked against the pack it names. docs/FORMAT.md ("Pack files") describes the layout.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import zstandard

from casnap.backends.base import Backend
from casnap.chunkindex import FIELD_DTYPE, TREE, find_rows, id_keys, past_limits, void_ids
from casnap.compression import decompress_object
from casnap.constants import MAX_PACK_SIZE
from casnap.errors import CasnapError, IntegrityError
from casnap.ids import ID_SIZE, ObjectId, hash_bytes, named_id

PACK_MAGIC = b"CASNPACK"
PACK_END = b"CASNPEND"
PACK_VERSION = 2
PACK_HEADER = PACK_MAGIC + bytes([PACK_VERSION]) + bytes(7)
# One directory record per chunk: id, type, frame offset, frame length, chunk plain size, chunk
# offset in the decoded frame, frame plain size (0 when the frame holds this chunk alone).
DIR_RECORD = struct.Struct("<32sBIIIII")
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
assert DIR_DTYPE.itemsize == DIR_RECORD.size
DIR_ENTRY_SIZE = DIR_DTYPE.itemsize  # bytes per chunk in a pack directory (before compression)
# compressed directory length, BLAKE3 prefix of the compressed directory, end magic
_TRAILER = struct.Struct("<I16s8s")
_DIRECTORY_LEVEL = 3  # zstd level of pack directories
_ENTRY_FIELDS = ("type", "offset", "length", "plain", "inner", "frame_plain")


PACKS = "packs/"  # the folder of every pack
MIN_PACK_SIZE = len(PACK_HEADER) + _TRAILER.size  # a pack of no frame, stored plain


def pack_key(pack: ObjectId) -> str:
    """Backend key of a pack: fanned out by the first byte so no folder grows too large."""
    h = pack.hex()
    return f"{PACKS}{h[:2]}/{h}"


def index_key(index_id: ObjectId) -> str:
    """Backend key of an index file."""
    return f"index/{index_id.hex()}"


def pack_id_of(key: str) -> ObjectId | None:
    """The pack id a `packs/xx/<hex>` key names; None for anything else."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "packs":
        return None
    pack = named_id(parts[2])  # lowercase hex alone: another key would never be deleted
    return pack if pack is not None and parts[1] == parts[2][:2] else None


def pack_overhead(dir_len: int) -> int:
    """Bytes of a pack that are not frames: header, directory and trailer."""
    return len(PACK_HEADER) + dir_len + _TRAILER.size


def check_pack_size(key: str, size: int) -> None:
    """IntegrityError for a pack larger than MAX_PACK_SIZE (before any of it is read whole)."""
    if size > MAX_PACK_SIZE:
        raise IntegrityError(f"{key}: pack of {size} bytes, past the limit of {MAX_PACK_SIZE}")


def pack_tail(records: bytes) -> bytes:
    """What follows a pack's frames: the directory of these DIR_RECORD records and the trailer
    (joined with the frames at once, a pack is copied once, without the GIL)."""
    directory = zstandard.ZstdCompressor(level=_DIRECTORY_LEVEL).compress(records)
    return directory + _TRAILER.pack(len(directory), bytes(hash_bytes(directory))[:16], PACK_END)


def parse_pack_directory(key: str, data: bytes) -> np.ndarray:
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


def read_pack_directory(backend: Backend, pack: ObjectId, size: int) -> np.ndarray:
    """A pack's directory read from its tail alone, bounds-checked, as a DIR_DTYPE array.

    Two reads, each from an offset to the pack's end (the trailer, then directory and trailer):
    such reads are the ones a CachingBackend keeps, so a pack's directory is fetched once.
    """
    key = pack_key(pack)
    check_pack_size(key, size)
    if size < len(PACK_HEADER) + _TRAILER.size:
        raise IntegrityError(f"{key}: too short to be a pack ({size} bytes)")
    dir_len, dir_hash, end = _TRAILER.unpack(_tail(backend, key, size, size - _TRAILER.size))
    if end != PACK_END:
        raise IntegrityError(f"{key}: not a casnap pack (bad trailer)")
    dir_start = size - _TRAILER.size - dir_len
    if dir_start < len(PACK_HEADER):
        raise IntegrityError(f"{key}: pack directory out of bounds")
    packed = _tail(backend, key, size, dir_start)[:dir_len]
    return _parse_directory(key, packed, dir_hash, dir_start)


def _tail(backend: Backend, key: str, size: int, offset: int) -> bytes:
    """The bytes of a pack of size from offset to its end; IntegrityError when the stored pack is
    not of that size (it cannot be the pack its size was taken from)."""
    data = backend.get(key, offset)
    if len(data) != size - offset:
        raise IntegrityError(
            f"{key}: holds {offset + len(data)} bytes, expected {size} (truncated or replaced)"
        )
    return data


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


def directory_fields(rec: np.ndarray, pack_no: int) -> np.ndarray:
    """The index fields (FIELD_DTYPE) of a pack's directory records, the pack being number
    pack_no of an index's pack table."""
    fields = np.zeros(len(rec), dtype=FIELD_DTYPE)
    fields["pack"] = pack_no
    for name in _ENTRY_FIELDS:
        fields[name] = rec[name]
    return fields


def directory_agrees(
    rec: np.ndarray, ids: np.ndarray, fields: np.ndarray
) -> tuple[int, np.ndarray]:
    """Check index entries (ids, FIELD_DTYPE fields) of one pack against its directory records:
    (number of distinct ids the directory describes, whether each entry matches the directory's
    record of its id exactly). When the directory names an id twice, its last record counts."""
    if not len(rec):
        return 0, np.zeros(len(ids), dtype=bool)
    last = rec[::-1][np.unique(void_ids(rec["id"][::-1]), return_index=True)[1]]
    keys = id_keys(last["id"])
    order = np.argsort(keys, kind="stable")
    last = last[order]
    pos = find_rows(keys[order], np.ascontiguousarray(last["id"]), ids)
    r = last[np.maximum(pos, 0)]
    same = pos >= 0
    for name in _ENTRY_FIELDS:
        same &= r[name] == fields[name]
    return len(last), same


@dataclass
class PackEntries:
    """The index entries that name one pack, checked against the pack itself: what gc trusts
    and what verify reports. Per-entry arrays follow the entries as given."""

    size: int | None  # None: the pack is missing
    beyond: np.ndarray  # per entry: it ends past the pack's end (all of them when it is missing)
    too_large: IntegrityError | None = None  # past MAX_PACK_SIZE: its directory was not read
    unreadable: CasnapError | None = None  # why its directory could not be read
    described: int | None = None  # distinct ids its directory describes (None: not read)
    agrees: np.ndarray | None = None  # per entry: the directory's record of its id equals it

    @property
    def trusted(self) -> np.ndarray:
        """Per entry: it lies inside the existing pack and the pack's directory does not deny
        it (a directory that could not be read confirms nothing and denies nothing)."""
        inside = ~self.beyond
        return inside if self.agrees is None else inside & self.agrees


def check_pack_entries(
    backend: Backend, pack: ObjectId, size: int | None, ids: np.ndarray, fields: np.ndarray
) -> PackEntries:
    """Check index entries (ids, FIELD_DTYPE fields) that name pack against it: does it exist
    (size None: it is not listed), does each entry end inside it, is it within the size limit,
    and does its own directory (read from its tail) hold the same record for each id."""
    if size is None:
        return PackEntries(None, np.ones(len(fields), dtype=bool))
    beyond = fields["offset"].astype(np.int64) + fields["length"] > size
    try:
        check_pack_size(pack_key(pack), size)
    except IntegrityError as exc:
        return PackEntries(size, beyond, too_large=exc)
    try:
        rec = read_pack_directory(backend, pack, size)
    except CasnapError as exc:
        return PackEntries(size, beyond, unreadable=exc)
    described, agrees = directory_agrees(rec, ids, fields)
    return PackEntries(size, beyond, described=described, agrees=agrees)
