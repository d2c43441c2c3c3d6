"""The `records` chunker: a file of fixed-size records, each a head that changes often followed by
a body that rarely does, cut at both edges of every head.

hnswlib's `data_level0.bin` (Chroma's HNSW segment) is such a file: per element, its level-0
neighbour list (the head), then its vector and label (the body). Adding a few hundred elements
rewrites the neighbour lists of most others, so any piece spanning whole records is new after
every round, though the vectors, nine tenths of the bytes, did not change. With a cut on both
sides of each head the bodies stay byte-identical pieces and only the heads are stored again.
Records are 4-byte little-endian words throughout (counts, ids, float32, the label's halves),
so every piece is marked for the grouped codec.
"""

from __future__ import annotations

from typing import Any

from casnap.chunking.base import FLOAT32, Chunker


class RecordChunker(Chunker):
    """Records of `size` bytes from the file's start, each cut `split` bytes in and at its end;
    a piece over `max_size` is cut into blocks of that size."""

    name = "records"

    def __init__(self, size: int, split: int, max_size: int) -> None:
        if not 0 < split < size or size % 4 or split % 4 or max_size < 4 or max_size % 4:
            raise ValueError(
                f"records chunker needs 0 < split < size, all multiples of 4 "
                f"(size {size}, split {split}, max {max_size})"
            )
        self.size = size
        self.head = split
        self.max_size = max_size

    def params(self) -> dict[str, Any]:
        return {"size": self.size, "split": self.head, "max": self.max_size}

    def cut(self, buf: memoryview) -> list[int]:
        return self.pieces(buf, 0, True)[0]

    def pieces(self, buf: memoryview, offset: int, final: bool) -> tuple[list[int], bytes | None]:
        size, split, most = self.size, self.head, self.max_size
        lengths: list[int] = []
        pos = offset
        end = offset + len(buf)
        while pos < end:
            inside = pos % size
            edge = split if inside < split else size
            # a piece cut at max_size is continued from there, so blocks count from the edge
            start = split if inside >= split else 0
            step = min(edge - inside, most - (inside - start) % most, end - pos)
            lengths.append(step)
            pos += step
        return lengths, bytes([FLOAT32]) * len(lengths)
