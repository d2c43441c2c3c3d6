"""The chunker interface and the buffered streaming every chunker shares."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, BinaryIO

from casnap.constants import READ_BLOCK


class Chunker(ABC):
    """Splits a stream into consecutive pieces; equal content gives equal pieces.

    Subclasses implement `cut`, which sees a buffer and says where its pieces end. Streaming with
    bounded memory is handled here: the last piece of a buffer is carried into the next read unless
    the stream has ended, so a chunker never needs more than READ_BLOCK + its maximum piece size.
    """

    name: str = ""
    #: Largest piece cut() can return; bounds the carried tail.
    max_size: int = 0

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Parameters that, with `name`, rebuild an identical chunker (stored in manifests)."""

    @abstractmethod
    def cut(self, buf: memoryview) -> list[int]:
        """Lengths of consecutive pieces covering all of buf (the last may be a partial piece)."""

    def split(self, stream: BinaryIO, block: int = READ_BLOCK) -> Iterator[memoryview]:
        """Yield the pieces of a stream in order; each view is valid until the next is requested."""
        carry = b""
        while True:
            data = stream.read(block)
            eof = not data
            buf = memoryview(carry + data) if carry else memoryview(data)
            if not buf:
                return
            lengths = self.cut(buf)
            if not eof and len(lengths) > 0:
                lengths_out, tail = lengths[:-1], lengths[-1]
            else:
                lengths_out, tail = lengths, 0
            pos = 0
            for n in lengths_out:
                yield buf[pos : pos + n]
                pos += n
            carry = bytes(buf[pos : pos + tail]) if tail else b""
            if eof:
                return

    def describe(self) -> dict[str, Any]:
        """Name and parameters, as recorded per file in a manifest."""
        return {"name": self.name, **self.params()}


class FixedChunker(Chunker):
    """Fixed-size pieces: database pages and append-only files, where positions are stable."""

    name = "fixed"

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError("fixed chunk size must be positive")
        self.size = size
        self.max_size = size

    def params(self) -> dict[str, Any]:
        return {"size": self.size}

    def cut(self, buf: memoryview) -> list[int]:
        full, rest = divmod(len(buf), self.size)
        return [self.size] * full + ([rest] if rest else [])
