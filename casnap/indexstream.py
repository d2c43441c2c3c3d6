"""An index file read piece by piece, decoded straight into its arrays.

A repository of 10M chunks, merged by gc into one index file, holds ~320 MB of it stored (the
ids do not compress) and ~570 MB decoded. Read whole, the stored bytes, the decoded bytes and the
arrays would all be in memory at once; read here, a few MiB of each pass through while the ids
and fields are filled in place, so loading costs what the arrays cost. The file is checked
against its name as it streams past, and nothing of it is used unless it matches.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import IO, cast

import numpy as np
import zstandard

from casnap.chunkindex import FIELD_DTYPE, FIELDS, INDEX_MAGIC, MAX_INDEX_BYTES, check_entries
from casnap.compression import MAX_OBJECT_RATIO
from casnap.errors import IntegrityError
from casnap.ids import ID_SIZE, IdHasher, ObjectId

PIECE = 8 << 20  # stored bytes fetched per read
_ROWS = 1 << 20  # entries of one field column decoded per step


class _Source:
    """The stored object as zstd's reader asks for it: ranged reads, each hashed as it comes."""

    def __init__(self, key: str, fetch: Callable[[int, int], bytes], size: int, ids: IdHasher):
        self.key = key
        self.fetch = fetch
        self.size = size
        self.pos = 0
        self.hasher = ids.stream()

    def read(self, n: int = -1) -> bytes:
        left = self.size - self.pos
        n = left if n < 0 else min(n, left)
        if n <= 0:
            return b""
        data = self.fetch(self.pos, n)
        if len(data) != n:
            raise IntegrityError(f"{self.key}: index file is shorter than listed (damaged)")
        self.hasher.update(data)
        self.pos += n
        return data


def _fill(reader: zstandard.ZstdDecompressionReader, view: memoryview, key: str) -> None:
    got = 0
    while got < len(view):
        n = reader.readinto(view[got:])
        if not n:
            raise IntegrityError(f"{key}: index file has the wrong length")
        got += n


def _take(reader: zstandard.ZstdDecompressionReader, n: int, key: str) -> bytes:
    buf = bytearray(n)
    _fill(reader, memoryview(buf), key)
    return bytes(buf)


def read_index(
    key: str, fetch: Callable[[int, int], bytes], size: int, ids: IdHasher
) -> tuple[list[ObjectId], np.ndarray, np.ndarray]:
    """The index file stored under key (size bytes, read through fetch(offset, length)) as
    (pack table, ids (n, 32), fields), as chunkindex.decode_index gives it; IntegrityError
    naming it when it is damaged or does not match its name."""
    src = _Source(key, fetch, size, ids)
    bound = min(MAX_INDEX_BYTES, MAX_OBJECT_RATIO * size + (1 << 20))
    try:
        dctx = zstandard.ZstdDecompressor()
        source = cast(IO[bytes], src)  # zstd asks it for read() only
        with dctx.stream_reader(source, read_size=PIECE, read_across_frames=False) as reader:
            if _take(reader, len(INDEX_MAGIC), key) != INDEX_MAGIC:
                raise IntegrityError(f"{key}: not a casnap index file (or one of an older format)")
            (npacks,) = struct.unpack("<I", _take(reader, 4, key))
            if len(INDEX_MAGIC) + 8 + npacks * ID_SIZE > bound:
                raise IntegrityError(f"{key}: index file has the wrong length")
            table = _take(reader, npacks * ID_SIZE, key)
            packs = [ObjectId(table[i * ID_SIZE : (i + 1) * ID_SIZE]) for i in range(npacks)]
            (n,) = struct.unpack("<I", _take(reader, 4, key))
            if len(INDEX_MAGIC) + 8 + len(table) + n * (ID_SIZE + FIELD_DTYPE.itemsize) > bound:
                raise IntegrityError(f"{key}: index file has the wrong length")
            chunk_ids = np.empty((n, ID_SIZE), dtype=np.uint8)
            if n:
                _fill(reader, chunk_ids.reshape(-1).data, key)
            fields = np.empty(n, dtype=FIELD_DTYPE)
            for name in FIELDS:
                dt = FIELD_DTYPE[name]
                step = np.empty(min(n, _ROWS), dtype=dt)
                for start in range(0, n, _ROWS):
                    part = step[: min(_ROWS, n - start)]
                    _fill(reader, part.view(np.uint8).data, key)
                    fields[name][start : start + len(part)] = part
            if reader.read(1):
                raise IntegrityError(f"{key}: index file has the wrong length")
        while src.read(PIECE):  # the rest of what is stored (the frame's end), for the hash
            pass
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{key}: corrupt index file ({exc})") from exc
    if src.hasher.digest().hex() != key.rsplit("/", 1)[-1]:
        raise IntegrityError(f"{key}: index file does not match its name (damaged)")
    check_entries(key, npacks, fields)
    return packs, chunk_ids, fields
