"""A file's chunk list: how its (chunk id, length) refs are stored as TREE blobs.

A list is kept as packed 36-byte refs (32-byte id, u32 little-endian length) in memory. On disk
a file entry names a sequence of TREE blobs: first zero or more *pieces* (refs, at most
LIST_PIECE_REFS each, concatenated in order), then zero or more *deltas*, each rewriting the list
the blobs before it describe. A new version of a file is normally stored as one delta against
its previous version: a SQLite database whose pages change here and there (or move in a VACUUM)
costs a few dozen KiB of list per snapshot instead of a full list of ~36 bytes per page
(1 MiB per 100 MiB of database). The chain is cut (a full list written again) when it grows too
long or too large, which bounds what a restore has to apply.

A delta body: tag byte 1, uvarint refs in its base, uvarint refs in its result, then operations
until the end: uvarint (count << 1) followed by a zigzag varint offset of the base position from
the end of the previous copy (COPY count refs from the base), or uvarint (count << 1 | 1)
followed by count raw refs (LITERAL). A piece body: tag byte 0 then raw refs.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from casnap.errors import IntegrityError
from casnap.ids import ID_SIZE, ObjectId

if TYPE_CHECKING:  # numpy is imported where deltas are encoded: reading a list needs none
    import numpy as np

REF = struct.Struct("<32sI")
REF_SIZE = REF.size
TAG_PIECE = 0
TAG_DELTA = 1
# Refs per piece of a full list (~576 KiB): bounds the size of one TREE blob.
LIST_PIECE_REFS = 16384


def pack_refs(refs: Sequence[tuple[bytes, int]]) -> bytes:
    """Packed refs from (id, length) pairs."""
    return b"".join(REF.pack(cid, n) for cid, n in refs)


def unpack_refs(refs: bytes | memoryview) -> list[tuple[ObjectId, int]]:
    """(ObjectId, length) pairs of packed refs."""
    return [(ObjectId(cid), n) for cid, n in REF.iter_unpack(refs)]


def ref_count(refs: bytes | bytearray | memoryview) -> int:
    return len(refs) // REF_SIZE


def plain_size(refs: bytes) -> int:
    """The bytes of the file packed refs describe: the sum of their plain lengths."""
    if not refs:
        return 0
    import numpy as np

    lengths = np.frombuffer(refs, dtype=np.uint8).reshape(-1, REF_SIZE)[:, ID_SIZE:]
    return int(lengths.copy().view("<u4").sum(dtype=np.int64))


def check_size(refs: bytes, size: int, path: str) -> None:
    """IntegrityError when the chunks of packed refs do not add up to size, the entry's of the
    file at path (a damaged or crafted manifest: verify reports it, every reader refuses it)."""
    found = plain_size(refs)
    if found != size:
        raise IntegrityError(f"chunk list of {path} holds {found} bytes, its entry says {size}")


def pieces(refs: bytes) -> Iterator[bytes]:
    """A full list as piece bodies, one at a time (one empty piece for an empty file)."""
    step = LIST_PIECE_REFS * REF_SIZE
    if not refs:
        yield bytes([TAG_PIECE])
        return
    view = memoryview(refs)
    for i in range(0, len(refs), step):
        yield b"".join((bytes([TAG_PIECE]), view[i : i + step]))


def is_delta(body: bytes) -> bool:
    return len(body) > 0 and body[0] == TAG_DELTA


# -- varints -----------------------------------------------------------------------------------


def _uvarint(n: int, out: bytearray) -> None:
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _read_uvarint(buf: bytes, pos: int, name: str) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise IntegrityError(f"{name}: truncated or malformed delta")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


# -- deltas ------------------------------------------------------------------------------------


def encode_delta(base: bytes, new: bytes) -> bytes:
    """A delta body turning the refs `base` into the refs `new`.

    Runs of refs found in base (at any position: VACUUM moves pages) become COPY operations,
    everything else LITERAL refs. Matching is done on whole arrays; Python only walks the runs.
    """
    nb, nn = len(base) // REF_SIZE, len(new) // REF_SIZE
    out = bytearray([TAG_DELTA])
    _uvarint(nb, out)
    _uvarint(nn, out)
    if nn == 0:
        return bytes(out)
    import numpy as np  # here: reading a list back never needs it

    m = _positions(base, new)
    is_copy = m >= 0
    brk = np.ones(nn, dtype=bool)
    brk[1:] = (is_copy[1:] != is_copy[:-1]) | (is_copy[1:] & (m[1:] != m[:-1] + 1))
    starts = np.nonzero(brk)[0].tolist()
    ends = [*starts[1:], nn]
    m_list = m.tolist()
    expected = 0
    for i, j in zip(starts, ends, strict=True):
        p = m_list[i]
        if p < 0:
            _literal(new, i, j, out)
            continue
        _uvarint((j - i) << 1, out)
        d = p - expected
        _uvarint((d << 1) if d >= 0 else ((-d << 1) - 1), out)
        expected = p + (j - i)
    return bytes(out)


def _positions(base: bytes, new: bytes) -> np.ndarray:
    """For each ref of new, a position in base holding the same ref, or -1.

    The first occurrence is taken, except that a ref equal to the one after the previous ref's
    match continues that run (repeated refs, such as zeroed pages, stay in one COPY).
    """
    import numpy as np

    nb, nn = len(base) // REF_SIZE, len(new) // REF_SIZE
    m = np.full(nn, -1, dtype=np.int64)
    if nb == 0:
        return m
    b = np.frombuffer(base, dtype=np.uint8).reshape(nb, REF_SIZE)
    n = np.frombuffer(new, dtype=np.uint8).reshape(nn, REF_SIZE)
    bkey = np.ascontiguousarray(b[:, :8]).view("<u8").ravel()
    nkey = np.ascontiguousarray(n[:, :8]).view("<u8").ravel()
    order = np.argsort(bkey, kind="stable")  # equal keys keep base order: first occurrence first
    sk = bkey[order]
    # a ref in place whose key no other ref of base has is its own first occurrence (most of a
    # database's pages): only the rest is searched
    lone = np.ones(nb, dtype=bool)
    twin = sk[1:] == sk[:-1]
    lone[order[1:][twin]] = False
    lone[order[:-1][twin]] = False
    k = min(nb, nn)
    placed = np.zeros(nn, dtype=bool)
    placed[:k] = lone[:k] & _rows_equal(b[:k], n[:k])
    m[placed] = np.flatnonzero(placed)
    rest = np.flatnonzero(~placed)
    pos = np.minimum(np.searchsorted(sk, nkey[rest]), nb - 1)
    cand = order[pos]
    key_hit = sk[pos] == nkey[rest]
    same = key_hit & _rows_equal(b[cand], n[rest])
    m[rest[same]] = cand[same]
    for r in np.nonzero(key_hit & ~same)[0].tolist():  # another ref with the same 8-byte key
        i = int(rest[r])
        k = int(pos[r])
        while k < nb and sk[k] == nkey[i]:
            if base_at(base, int(order[k])) == base_at(new, i):
                m[i] = order[k]
                break
            k += 1
    # continue runs through repeated refs
    prev = m[:-1]
    nxt = np.minimum(prev + 1, nb - 1)
    cont = (prev >= 0) & (prev + 1 < nb) & (m[1:] != prev + 1) & _rows_equal(b[nxt], n[1:])
    for i in (np.nonzero(cont)[0] + 1).tolist():
        j = int(m[i - 1]) + 1
        if j < nb and base_at(base, j) == base_at(new, i):
            m[i] = j
    return m


def _rows_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Which rows of two (n, REF_SIZE) byte arrays are equal: compared as 32-bit words, column
    by column (comparing bytes along a short axis took 4x as long)."""
    import numpy as np

    a4 = np.ascontiguousarray(a).view("<u4")
    b4 = np.ascontiguousarray(b).view("<u4")
    out = a4[:, 0] == b4[:, 0]
    for j in range(1, REF_SIZE // 4):
        out &= a4[:, j] == b4[:, j]
    return out


def base_at(refs: bytes, i: int) -> bytes:
    return refs[i * REF_SIZE : (i + 1) * REF_SIZE]


def _literal(new: bytes, start: int, stop: int, out: bytearray) -> None:
    _uvarint(((stop - start) << 1) | 1, out)
    out += new[start * REF_SIZE : stop * REF_SIZE]


def apply_delta(base: bytes, body: bytes, name: str = "chunk list") -> bytes:
    """The refs a delta body makes of `base`; IntegrityError when it does not fit.

    Walked op by op in Python (a database's delta holds thousands): one-byte varints, nearly
    all of them, are read in place, and the output is joined once from views of base and body.
    """
    if not is_delta(body):
        raise IntegrityError(f"{name}: not a chunk-list delta")
    nb, pos = _read_uvarint(body, 1, name)
    nn, pos = _read_uvarint(body, pos, name)
    if nb * REF_SIZE != len(base):
        raise IntegrityError(
            f"{name}: delta expects {nb} refs in its base, found {ref_count(base)}"
        )
    parts: list[memoryview] = []
    body_view, base_view = memoryview(body), memoryview(base)
    end = len(body)
    made = 0  # refs so far
    expected = 0
    while pos < end:
        head = body[pos]
        if head < 0x80:
            pos += 1
        else:
            head, pos = _read_uvarint(body, pos, name)
        count = head >> 1
        made += count
        if count == 0 or made > nn:
            raise IntegrityError(f"{name}: delta operation out of range")
        if head & 1:
            stop = pos + count * REF_SIZE
            if stop > end:
                raise IntegrityError(f"{name}: truncated delta")
            parts.append(body_view[pos:stop])
            pos = stop
            continue
        z = body[pos] if pos < end else 0x80
        if z < 0x80:
            pos += 1
        else:
            z, pos = _read_uvarint(body, pos, name)
        start = expected + ((z >> 1) if not z & 1 else -((z + 1) >> 1))
        if start < 0 or start + count > nb:
            raise IntegrityError(f"{name}: delta copies outside its base")
        parts.append(base_view[start * REF_SIZE : (start + count) * REF_SIZE])
        expected = start + count
    if made != nn:
        raise IntegrityError(f"{name}: delta yields {made} refs, expected {nn}")
    return b"".join(parts)


def resolve(bodies: Sequence[bytes], name: str = "chunk list") -> tuple[bytes, int]:
    """The packed refs a sequence of TREE bodies describes, and how many of them are deltas."""
    refs: bytes | bytearray = bytearray()
    deltas = 0
    for body in bodies:
        if not body:
            raise IntegrityError(f"{name}: empty list blob")
        if body[0] == TAG_PIECE:
            if deltas:
                raise IntegrityError(f"{name}: list piece after a delta")
            if (len(body) - 1) % REF_SIZE:
                raise IntegrityError(f"{name}: malformed chunk list piece")
            refs += memoryview(body)[1:]
        elif body[0] == TAG_DELTA:
            refs = apply_delta(bytes(refs), body, name)  # bytes: no copy after the first
            deltas += 1
        else:
            raise IntegrityError(f"{name}: unknown chunk list blob tag {body[0]}")
    return bytes(refs), deltas


def ids_packed(refs: bytes) -> bytes:
    """The chunk ids of packed refs, in order, as 32-byte ids back to back."""
    if not refs:
        return b""
    import numpy as np

    return np.frombuffer(refs, dtype=np.uint8).reshape(-1, REF_SIZE)[:, :ID_SIZE].tobytes()


def named_refs(body: bytes, name: str = "chunk list") -> bytes:
    """The packed refs one TREE body names itself: all of a piece's, a delta's literals."""
    if not body:
        raise IntegrityError(f"{name}: empty list blob")
    if body[0] == TAG_PIECE:
        if (len(body) - 1) % REF_SIZE:
            raise IntegrityError(f"{name}: malformed chunk list piece")
        return body[1:]
    if body[0] != TAG_DELTA:
        raise IntegrityError(f"{name}: unknown chunk list blob tag {body[0]}")
    out = bytearray()
    _nb, pos = _read_uvarint(body, 1, name)
    _nn, pos = _read_uvarint(body, pos, name)
    while pos < len(body):
        head, pos = _read_uvarint(body, pos, name)
        count = head >> 1
        if head & 1:
            end = pos + count * REF_SIZE
            if end > len(body):
                raise IntegrityError(f"{name}: truncated delta")
            out += body[pos:end]
            pos = end
        else:
            _z, pos = _read_uvarint(body, pos, name)
    return bytes(out)


def by_bytes(refs: list[tuple[bytes, int]], limit: int) -> Iterator[list[tuple[bytes, int]]]:
    """refs (id, length) in consecutive parts of at most `limit` bytes (or one ref)."""
    part: list[tuple[bytes, int]] = []
    size = 0
    for ref in refs:
        if part and size + ref[1] > limit:
            yield part
            part, size = [], 0
        part.append(ref)
        size += ref[1]
    if part:
        yield part
