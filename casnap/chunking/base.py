"""The chunker interface and the buffered streaming every chunker shares."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, BinaryIO, NamedTuple

from casnap.constants import READ_BLOCK

# What a piece holds, as far as its chunker knows; lets the store pick a codec without guessing.
GENERIC = 0
FLOAT32 = 1  # little-endian float32 words starting at the piece's first byte


class Block(NamedTuple):
    """Consecutive whole pieces of a stream: `data` starts at stream offset `offset`.

    `kinds` holds one byte per piece (GENERIC, FLOAT32) or is None when every piece is GENERIC.
    """

    data: memoryview
    offset: int
    lengths: list[int]
    kinds: bytes | None = None


class Chunker(ABC):
    """Splits a stream into consecutive pieces; equal content gives equal pieces.

    Subclasses implement `cut` (stateless chunkers) or `pieces` (chunkers that follow a file's
    layout and need the stream offset). Streaming with bounded memory is handled here: the last
    piece of a buffer is carried into the next read unless the stream has ended, so a chunker
    never holds more than READ_BLOCK plus the piece it carries. A chunker may keep state across
    the buffers of one stream: build a new one (make_chunker) for every file.
    """

    name: str = ""
    #: Largest piece the chunker returns; bounds the carried tail.
    max_size: int = 0

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Parameters that, with `name`, rebuild an identical chunker (stored in manifests)."""

    @abstractmethod
    def cut(self, buf: memoryview) -> list[int]:
        """Lengths of consecutive pieces covering all of buf (the last may be a partial piece)."""

    def pieces(self, buf: memoryview, offset: int, final: bool) -> tuple[list[int], bytes | None]:
        """Lengths (and kinds) of the pieces of buf, which starts at stream offset `offset`.

        `final` is True when buf ends the stream. Unless final, the caller carries the last piece
        into the next call, so a chunker may return an undecided tail as one last piece.
        """
        return self.cut(buf), None

    def blocks(
        self, stream: BinaryIO, block: int = READ_BLOCK, buffers: Buffers | None = None
    ) -> Iterator[Block]:
        """The pieces of a stream in blocks of about `block` bytes, in order. With `buffers`, a
        block's memory comes from there (the caller gives it back once done with the block)."""
        carry = b""
        offset = 0
        while True:
            size = len(carry) + block
            buf = buffers.take(size) if buffers is not None else bytearray(size)
            buf[: len(carry)] = carry
            view = memoryview(buf)[:size]
            got = _read_into(stream, view[len(carry) :])
            final = got < block
            if got < block:
                view = view[: len(carry) + got]
            if not view:
                return
            lengths, kinds = self.pieces(view, offset, final)
            if not final and len(lengths) > 0:
                tail = lengths[-1]
                lengths = lengths[:-1]
                kinds = kinds[:-1] if kinds is not None else None
            else:
                tail = 0
            used = len(view) - tail
            if lengths:
                yield Block(view[:used], offset, lengths, kinds)
            carry = bytes(view[used:]) if tail else b""
            offset += used
            if final:
                return

    def split(self, stream: BinaryIO, block: int = READ_BLOCK) -> Iterator[memoryview]:
        """Yield the pieces of a stream in order."""
        for b in self.blocks(stream, block):
            pos = 0
            for n in b.lengths:
                yield b.data[pos : pos + n]
                pos += n

    def describe(self) -> dict[str, Any]:
        """Name and parameters, as recorded per file in a manifest."""
        return {"name": self.name, **self.params()}


class Buffers:
    """Read buffers used again once their block is done with: a fresh buffer costs a page
    fault per 4 KiB on its first fill, which made reading from the page cache three times
    slower than copying. Thread-safe; holds at most `keep` buffers."""

    def __init__(self, keep: int) -> None:
        self._free: list[bytearray] = []
        self._keep = keep
        self._lock = threading.Lock()

    def take(self, size: int) -> bytearray:
        """A buffer of at least size bytes (its contents are whatever it held last)."""
        with self._lock:
            for i, buf in enumerate(self._free):
                if len(buf) >= size:
                    return self._free.pop(i)
        return bytearray(size + size // 16)  # room for the carried piece of a later block

    def give(self, buf: bytearray) -> None:
        """buf is no longer read by anyone: it may serve a later block."""
        with self._lock:
            if len(self._free) < self._keep:
                self._free.append(buf)


def _read_into(stream: BinaryIO, view: memoryview) -> int:
    """Fill view from stream as far as the stream goes; the number of bytes read."""
    got = 0
    readinto = getattr(stream, "readinto", None)
    while got < len(view):
        if readinto is not None:
            n = readinto(view[got:])
        else:
            data = stream.read(len(view) - got)
            n = len(data)
            view[got : got + n] = data
        if not n:
            break
        got += n
    return got


def fixed_lengths(total: int, size: int) -> list[int]:
    """Pieces of `size` bytes covering `total` bytes, the last one shorter if need be."""
    full, rest = divmod(total, size)
    return [size] * full + ([rest] if rest else [])


class FixedChunker(Chunker):
    """Fixed-size pieces: append-only files, where positions are stable."""

    name = "fixed"

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError("fixed chunk size must be positive")
        self.size = size
        self.max_size = size

    def params(self) -> dict[str, Any]:
        return {"size": self.size}

    def cut(self, buf: memoryview) -> list[int]:
        return fixed_lengths(len(buf), self.size)
