"""Content-defined chunking with FastCDC 2020 (pyfastcdc: Cython, releases the GIL)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from casnap.chunking.base import Chunker

if TYPE_CHECKING:
    from pyfastcdc import FastCDC

# The sizes pyfastcdc accepts (its constructor's checks), checked here so that a chunker it
# would refuse is refused when it is made, not at the first long buffer (a config states them
# within casnap's own limits: chunking/select.py)
FASTCDC_SIZES = {"min": (64, 1 << 20), "avg": (256, 4 << 20), "max": (1024, 16 << 20)}


class Cutter:
    """FastCDC cut points with the given sizes. pyfastcdc (a few ms to import) is loaded at the
    first buffer longer than min_size: a buffer no longer than that is one piece whatever it
    holds, which is all that small files and the headers of FAISS indexes ever are."""

    __slots__ = ("min_size", "avg_size", "max_size", "_cdc")

    def __init__(self, min_size: int, avg_size: int, max_size: int) -> None:
        for label, value in (("min", min_size), ("avg", avg_size), ("max", max_size)):
            low, high = FASTCDC_SIZES[label]
            if not low <= value <= high:
                raise ValueError(f"FastCDC {label} size {value} is outside [{low}, {high}]")
        if not min_size <= avg_size <= max_size:
            raise ValueError("FastCDC needs min <= avg <= max")
        self.min_size, self.avg_size, self.max_size = min_size, avg_size, max_size
        self._cdc: FastCDC | None = None

    def lengths(self, buf: memoryview) -> list[int]:
        """The lengths of the pieces buf is cut into."""
        n = len(buf)
        if n <= self.min_size:
            return [n] if n else []
        if self._cdc is None:
            from pyfastcdc import FastCDC

            self._cdc = FastCDC(self.avg_size, min_size=self.min_size, max_size=self.max_size)
        return [c.length for c in self._cdc.cut_buf(buf)]


class FastCDCChunker(Chunker):
    """Cut points chosen by content, so an insertion shifts no later chunk boundaries."""

    name = "fastcdc"

    def __init__(self, min_size: int, avg_size: int, max_size: int) -> None:
        self.min_size = min_size
        self.avg_size = avg_size
        self.max_size = max_size
        self._cut = Cutter(min_size, avg_size, max_size)

    def params(self) -> dict[str, Any]:
        return {"min": self.min_size, "avg": self.avg_size, "max": self.max_size}

    def cut(self, buf: memoryview) -> list[int]:
        return self._cut.lengths(buf)
