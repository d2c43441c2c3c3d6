"""Codec framing for stored chunks: zstd, raw, or byte-grouped float32 + zstd.

An encoded chunk is one codec byte followed by the payload. Decoding is bounded by the expected
plain size (from the index, itself at most MAX_FRAME_SIZE): a zstd frame that declares no size is
decoded as a stream into a buffer of exactly that size, and one that holds more is damaged, so a
corrupt or hostile frame can never make casnap allocate more than the index claims.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import zstandard

from casnap.constants import MAX_FRAME_SIZE, MIN_COMPRESSION_GAIN, ZSTD_LEVEL
from casnap.errors import IntegrityError

if TYPE_CHECKING:  # numpy is imported by the byte-grouping functions: a manifest needs none
    import numpy as np

RAW = 0
ZSTD = 1
ZSTD_GROUPED4 = 2  # bytes of 4-byte words grouped by position (float32 sign/exponent apart)

CODEC_NAMES = {RAW: "raw", ZSTD: "zstd", ZSTD_GROUPED4: "zstd-grouped4"}

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "cctx", None)
    if cache is None:
        cache = _local.cctx = {}
    cctx = cache.get(level)
    if cctx is None:
        cctx = cache[level] = zstandard.ZstdCompressor(level=level, write_checksum=False)
    return cctx


# Output a streaming decode of a whole stored object produces per step: one that declares no size
# is decoded this much at a time, never further than its bound.
DECODE_STEP = 1024 * 1024


def _decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompressor. Its window is capped at MAX_FRAME_SIZE: no frame casnap
    writes needs more (a window never exceeds the content), and a hostile frame declaring a
    larger one would make zstd allocate it."""
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor(max_window_size=MAX_FRAME_SIZE)
    return dctx


def _inflate(payload: bytes | memoryview, size: int) -> bytes | bytearray:
    """The `size` plain bytes of one zstd frame; IntegrityError when it holds more or fewer.

    A frame that declares its size (all casnap writes) is decoded in one call; any other into a
    buffer of exactly `size` bytes (_inflate_into: one declaring another size is refused before
    anything is decoded, one decoding a byte more is damaged).
    """
    if zstandard.frame_content_size(payload) == size:
        return _decompressor().decompress(payload)
    out = bytearray(size)
    _inflate_into(payload, memoryview(out))  # another declared size: refused before decoding
    return out


def _inflate_into(payload: bytes | memoryview, dest: memoryview | np.ndarray) -> None:
    """Decode one zstd frame straight into dest, which it must fill exactly (IntegrityError
    otherwise): no buffer of its own, so no fresh pages to fault in, and no copy after it.

    A frame declaring another size is refused before any decoding. One more byte read after
    dest is full also makes zstd finish the frame, checking what it declared."""
    size = len(dest)
    declared = zstandard.frame_content_size(payload)
    if declared not in (size, -1):
        raise IntegrityError(f"frame declares {declared} bytes, expected {size}")
    view = memoryview(dest).cast("B") if isinstance(dest, memoryview) else dest
    got = 0
    with _decompressor().stream_reader(payload, read_across_frames=False) as reader:
        while got < size:
            n = reader.readinto(view[got:])
            if not n:
                break
            got += n
        if got == size and reader.read(1):
            raise IntegrityError(f"frame decodes past its {size} bytes")
    if got != size:
        raise IntegrityError(f"chunk decodes to {got} bytes, expected {size}")


def _scratch(size: int) -> memoryview:
    """This thread's reusable decoding buffer, at least size bytes (a decoded frame that is
    not kept lives here until the thread decodes the next one)."""
    buf: bytearray | None = getattr(_local, "scratch", None)
    if buf is None or len(buf) < size:
        buf = _local.scratch = bytearray(max(size, 1 << 20))
    return memoryview(buf)[:size]


def group4(data: bytes | memoryview) -> bytes:
    """Group byte k of every 4-byte word together; a tail of <4 bytes stays last."""
    import numpy as np

    n = len(data) - len(data) % 4
    words = np.frombuffer(data, dtype=np.uint8, count=n).reshape(-1, 4)
    return words.T.tobytes() + bytes(data[n:])


def ungroup4(data: bytes | bytearray | memoryview) -> bytearray:
    """Inverse of group4, written straight into the result (strided copies: ~3x faster than a
    transposed copy, and no second copy of the output)."""
    import numpy as np

    n = len(data) - len(data) % 4
    planes = np.frombuffer(data, dtype=np.uint8, count=n).reshape(4, -1)
    out = bytearray(len(data))
    view = np.frombuffer(out, dtype=np.uint8)
    for k in range(4):
        view[k:n:4] = planes[k]
    view[n:] = np.frombuffer(data, dtype=np.uint8)[n:]
    return out


def ungroup_range(grouped: bytes | bytearray | memoryview, start: int, out: np.ndarray) -> None:
    """Write bytes start..start+len(out) of the frame group4 made `grouped` from into the uint8
    array out, without ungrouping the rest: a restore then puts each range of a float frame in
    its place with one strided copy (numpy copies of any size release the GIL; building the
    whole frame first and copying it again took twice the memory traffic)."""
    import numpy as np

    total = len(grouped)
    n4 = total - total % 4
    planes = np.frombuffer(grouped, dtype=np.uint8, count=n4).reshape(4, -1)
    end = start + len(out)
    body_end = min(end, n4)
    pos = start
    while pos < body_end and pos % 4:  # an unaligned head
        out[pos - start] = planes[pos % 4, pos // 4]
        pos += 1
    whole = (body_end - pos) // 4 * 4
    if whole > 0:
        a = pos // 4
        dst = out[pos - start : pos - start + whole]
        for k in range(4):
            dst[k::4] = planes[k, a : a + whole // 4]
        pos += whole
    while pos < body_end:
        out[pos - start] = planes[pos % 4, pos // 4]
        pos += 1
    if pos < end:  # the tail group4 leaves as it is
        out[pos - start :] = np.frombuffer(grouped, dtype=np.uint8, count=end - pos, offset=pos)


class Frame:
    """A decoded frame. A byte-grouped one stays grouped: only the ranges read are put back in
    order, straight into the reader's buffer."""

    __slots__ = ("data", "grouped")

    def __init__(self, data: bytes | bytearray | memoryview, grouped: bool) -> None:
        self.data = data
        self.grouped = grouped

    def __len__(self) -> int:
        return len(self.data)

    def into(self, start: int, out: np.ndarray) -> None:
        """Copy plain bytes start..start+len(out) into the uint8 array out."""
        import numpy as np

        if self.grouped:
            ungroup_range(self.data, start, out)
        else:
            out[:] = np.frombuffer(self.data, dtype=np.uint8, count=len(out), offset=start)

    def read(self, start: int, n: int) -> bytes:
        """Plain bytes start..start+n."""
        import numpy as np

        if not self.grouped:
            return bytes(self.data[start : start + n])
        out = np.empty(n, dtype=np.uint8)
        ungroup_range(self.data, start, out)
        return out.tobytes()


def _codec(blob: bytes | memoryview, plain_size: int) -> tuple[int, memoryview]:
    """The codec and payload of an encoded frame whose plain size is within the limit."""
    if len(blob) < 1:
        raise IntegrityError("empty encoded chunk")
    if not 0 <= plain_size <= MAX_FRAME_SIZE:
        raise IntegrityError(f"frame of {plain_size} bytes is past the limit of {MAX_FRAME_SIZE}")
    codec = blob[0]
    if codec not in CODEC_NAMES:
        raise IntegrityError(f"unknown codec {codec}")
    return codec, memoryview(blob)[1:]  # no copy of the compressed bytes


def decode_frame(blob: bytes | memoryview, plain_size: int, scratch: bool = False) -> Frame:
    """decode, but a byte-grouped frame is left grouped (see Frame). With scratch, a zstd
    frame is decoded into this thread's reusable buffer: the Frame is then valid only until the
    thread decodes its next scratch frame (a restore copies from it at once)."""
    codec, payload = _codec(blob, plain_size)
    try:
        if codec == RAW:
            out: bytes | bytearray | memoryview = bytes(payload)
        elif scratch:
            out = _scratch(plain_size)
            _inflate_into(payload, out)
        else:
            out = _inflate(payload, plain_size)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"corrupt compressed chunk: {exc}") from exc
    if len(out) != plain_size:
        raise IntegrityError(f"chunk decodes to {len(out)} bytes, expected {plain_size}")
    return Frame(out, codec == ZSTD_GROUPED4)


def decode_into(blob: bytes | memoryview, out: np.ndarray) -> None:
    """Decode a frame of len(out) plain bytes straight into the uint8 array out (a byte-grouped
    one through this thread's scratch buffer, put back in order on the copy)."""
    import numpy as np

    codec, payload = _codec(blob, len(out))
    try:
        if codec == RAW:
            if len(payload) != len(out):
                raise IntegrityError(f"chunk decodes to {len(payload)} bytes, expected {len(out)}")
            out[:] = np.frombuffer(payload, dtype=np.uint8)
        elif codec == ZSTD:
            _inflate_into(payload, out)
        else:
            grouped = _scratch(len(out))
            _inflate_into(payload, grouped)
            ungroup_range(grouped, 0, out)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"corrupt compressed chunk: {exc}") from exc


# A grouped frame of at least this many bytes gets one zstd block (or more) per byte plane: zstd
# codes its input in blocks of up to 128 KiB with their own entropy tables, and a block that
# mixes the sign/exponent plane with mantissa planes codes both badly. Frames of 0.5-256 KiB
# come out 8-9% smaller; below 512 bytes the extra block headers cost more than they save.
PLANE_BLOCKS_MIN = 512
_ZSTD_BLOCK = 128 * 1024  # ZSTD_BLOCKSIZE_MAX: planes of a multiple of it fill whole blocks


def _compress_grouped(data: bytes | memoryview, level: int) -> bytes:
    """zstd frame of group4(data), each byte plane ending a block (one frame, size declared)."""
    grouped = group4(data)
    plane = len(data) // 4
    if len(data) < PLANE_BLOCKS_MIN or plane % _ZSTD_BLOCK == 0:
        return _compressor(level).compress(grouped)
    view = memoryview(grouped)
    # one output chunk for the whole frame: a frame never grows much past its input
    chunker = _compressor(level).chunker(size=len(grouped), chunk_size=len(grouped) + 4096)
    parts: list[bytes] = []
    for k in range(4):
        end = (k + 1) * plane if k < 3 else len(grouped)  # the <4-byte tail goes with plane 3
        parts += chunker.compress(view[k * plane : end])
        if k < 3:
            parts += chunker.flush()  # ends the block: the next plane starts a new one
    parts += chunker.finish()
    return b"".join(parts)


def encode(data: bytes | memoryview, level: int = ZSTD_LEVEL, grouped: bool = False) -> bytes:
    """Compress data with the best of the allowed codecs; raw when compression does not pay."""
    return b"".join(_codec_and_payload(data, level, grouped))


_CODEC_BYTES = [bytes([c]) for c in range(3)]


def encode_parts(
    data: bytes | memoryview, level: int = ZSTD_LEVEL, grouped: bool = False
) -> tuple[bytes, bytes]:
    """encode's result as its codec byte and the payload, not joined: joining copies the
    payload while holding the GIL (bytes.join lets it go only past 1 MiB), which a pack's
    writer does anyway, without it, when it joins the pack. A raw payload is a copy of data."""
    codec, payload = _codec_and_payload(data, level, grouped)
    return codec, payload if isinstance(payload, bytes) else bytes(payload)


def _codec_and_payload(
    data: bytes | memoryview, level: int, grouped: bool
) -> tuple[bytes, bytes | memoryview]:
    """The codec byte and the payload of data's frame; a raw payload is data itself."""
    size = len(data)
    if size == 0:
        return _CODEC_BYTES[RAW], b""
    if grouped and size >= 64:
        payload = _compress_grouped(data, level)
        codec = ZSTD_GROUPED4
    else:
        payload = _compressor(level).compress(data)
        codec = ZSTD
    if len(payload) > size * (1.0 - MIN_COMPRESSION_GAIN):
        return _CODEC_BYTES[RAW], data
    return _CODEC_BYTES[codec], payload


# Whole objects (manifests, index files, pack directories) are mostly ids and hashes, which do
# not compress: none expands more than this. A frame declaring more is damaged or hostile, and is
# refused before anything is allocated for it.
MAX_OBJECT_RATIO = 256


def decompress_object(blob: bytes, label: str, limit: int | None = None) -> bytes:
    """zstd-decompress a whole stored object, bounded; IntegrityError "<label> (<why>)" if bad.

    An object that declares its size gets one allocation of that size; one that declares none
    is decoded as a stream that stops at the bound, so memory follows what it really holds.
    """
    bound = MAX_OBJECT_RATIO * len(blob) + (1 << 20)
    if limit is not None:
        bound = min(bound, limit)
    try:
        declared = zstandard.frame_content_size(blob)
        if declared > bound:
            raise IntegrityError(f"{label} (declares {declared} bytes in {len(blob)} stored)")
        if declared >= 0:
            return _decompressor().decompress(blob)
        parts = []
        total = 0
        with _decompressor().stream_reader(blob, read_across_frames=False) as reader:
            while part := reader.read(min(DECODE_STEP, bound + 1 - total)):
                parts.append(part)
                total += len(part)
                if total > bound:
                    raise IntegrityError(f"{label} (decodes past {bound} bytes)")
        return b"".join(parts)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{label} ({exc})") from exc


def decode(blob: bytes | memoryview, plain_size: int) -> bytes | bytearray:
    """Decode one encoded frame of known plain size; IntegrityError on any malformed input."""
    frame = decode_frame(blob, plain_size)
    if frame.grouped:
        return ungroup4(frame.data)
    assert not isinstance(frame.data, memoryview)  # only a scratch frame is a view
    return frame.data
