"""Content-defined chunking with FastCDC 2020 (pyfastcdc: Cython, releases the GIL)."""

from __future__ import annotations

from typing import Any

from pyfastcdc import FastCDC

from casnap.chunking.base import Chunker


class FastCDCChunker(Chunker):
    """Cut points chosen by content, so an insertion shifts no later chunk boundaries."""

    name = "fastcdc"

    def __init__(self, min_size: int, avg_size: int, max_size: int) -> None:
        self.min_size = min_size
        self.avg_size = avg_size
        self.max_size = max_size
        self._cdc = FastCDC(avg_size, min_size=min_size, max_size=max_size)

    def params(self) -> dict[str, Any]:
        return {"min": self.min_size, "avg": self.avg_size, "max": self.max_size}

    def cut(self, buf: memoryview) -> list[int]:
        return [c.length for c in self._cdc.cut_buf(buf)]
