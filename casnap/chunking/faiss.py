"""The FAISS chunker: pieces that follow an index file's own layout (casnap/formats/faiss.py).

A FAISS file is a header followed by a few large arrays. Adding vectors appends to each array, so
every array after the first one shifts. Cutting at array boundaries and in fixed blocks measured
from each array's start keeps every unchanged block byte-identical: a Flat shard with 1% more
vectors re-stores one block, an IVF index only the tail block of each inverted list. Fixed blocks
also keep float32 words aligned, which the byte-grouped codec needs.

The layout is read from the stream as it passes (the format's parser driven by the bytes, never a
seek), so memory stays bounded. Types the parser does not know, and anything after a parse
failure, are cut by content (FastCDC) like any other file; a misparse can only cost dedup, never
correctness.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from pyfastcdc import FastCDC

from casnap.chunking.base import FLOAT32, GENERIC, Chunker
from casnap.formats.faiss import (
    GRAPH,
    IDS,
    LISTS,
    VECTORS,
    Parser,
    Read,
    Section,
    Unsupported,
    parse_index,
)


class _Layout:
    """Runs the parser over the stream as buffers arrive; collects the sections it declares."""

    def __init__(self) -> None:
        self.parser: Parser | None = parse_index()
        self.pos = 0  # where the parser's next request starts
        self.request: Read | Section | None = None
        self.acc = bytearray()  # bytes gathered for a Read that straddles buffers
        self.sections: deque[tuple[int, int, str, bool]] = deque()  # start, end, kind, float32
        self._advance(None)

    @property
    def active(self) -> bool:
        return self.parser is not None

    def _advance(self, value: bytes | None) -> None:
        assert self.parser is not None
        try:
            self.request = self.parser.send(value)
        except StopIteration:
            self.parser = None
            self.request = None
        except Unsupported:
            self.parser = None
            self.request = None

    def stop(self) -> None:
        """Give up parsing: the rest of the file is cut by content."""
        if self.parser is not None:
            self.parser.close()
        self.parser = None
        self.request = None

    def feed(self, buf: memoryview, offset: int) -> None:
        """Let the parser consume what it can of buf (stream bytes [offset, offset+len(buf)))."""
        end = offset + len(buf)
        # Requests past this buffer wait for the next one, so only the sections that reach into
        # the bytes seen so far are held in memory, however many lists an index has.
        while self.parser is not None:
            req = self.request
            if isinstance(req, Section):
                if req.length and self.pos >= end:
                    return
                if req.length and req.kind is not None:
                    self.sections.append((self.pos, self.pos + req.length, req.kind, req.float32))
                self.pos += req.length
                self._advance(None)
                continue
            assert isinstance(req, Read)
            if req.n == 0:
                self._advance(b"")
                continue
            have = self.pos + len(self.acc)
            if have >= end:
                return
            take = min(end, self.pos + req.n)
            if have < offset:  # bytes before this buffer were never shown to the parser
                self.stop()
                return
            self.acc += buf[have - offset : take - offset]
            if len(self.acc) < req.n:
                return
            data = bytes(self.acc)
            self.acc.clear()
            self.pos += req.n
            self._advance(data)


class FaissChunker(Chunker):
    """Cuts a FAISS index at its arrays' boundaries, in fixed blocks inside each array.

    Block sizes per kind of array are parameters (see docs/TUNING.md for how they were chosen);
    header fields and unknown parts are cut by FastCDC with the given min/avg/max.
    """

    name = "faiss"

    def __init__(
        self,
        vectors: int,
        lists: int,
        graph: int,
        ids: int,
        min_size: int,
        avg_size: int,
        max_size: int,
    ) -> None:
        self.block = {VECTORS: vectors, LISTS: lists, GRAPH: graph, IDS: ids}
        for kind, size in self.block.items():
            if size <= 0 or size % 8:
                raise ValueError(f"faiss {kind} block must be a positive multiple of 8")
        self.min_size, self.avg_size, self.cdc_max = min_size, avg_size, max_size
        self.max_size = max(max_size, *self.block.values())
        self._cdc = FastCDC(avg_size, min_size=min_size, max_size=max_size)
        self._layout = _Layout()

    def params(self) -> dict[str, Any]:
        return {
            **self.block,
            "min": self.min_size,
            "avg": self.avg_size,
            "max": self.cdc_max,
        }

    def cut(self, buf: memoryview) -> list[int]:
        """Pieces of a whole file held in buf (a fresh chunker per file)."""
        return self.pieces(buf, 0, True)[0]

    def pieces(self, buf: memoryview, offset: int, final: bool) -> tuple[list[int], bytes | None]:
        layout = self._layout
        end = offset + len(buf)
        layout.feed(buf, offset)
        if final:
            layout.stop()
        # Boundaries past the parser's position are not known yet: pieces reaching beyond it are
        # merged into one undecided tail, which the caller carries into the next call.
        undecided = layout.pos if layout.active and layout.pos < end else end
        sections = layout.sections
        while sections and sections[0][1] <= offset:
            sections.popleft()
        lengths: list[int] = []
        kinds = bytearray()
        pos = offset
        for start, stop, kind, float32 in sections:
            if start >= end:
                break
            if start > pos:
                self._cdc_pieces(buf[pos - offset : start - offset], lengths, kinds)
                pos = start
            size = self.block[kind]
            piece_kind = FLOAT32 if float32 else GENERIC
            # blocks are measured from the section start; pos is always on a block boundary
            stop_here = min(stop, end)
            while pos < stop_here:
                n = min(size - (pos - start) % size, stop_here - pos)
                lengths.append(n)
                kinds.append(piece_kind)
                pos += n
        if pos < end:
            self._cdc_pieces(buf[pos - offset :], lengths, kinds)
        if undecided < end:
            lengths, kinds = _merge_tail(lengths, kinds, offset, undecided)
        return lengths, bytes(kinds) if FLOAT32 in kinds else None

    def _cdc_pieces(self, view: memoryview, lengths: list[int], kinds: bytearray) -> None:
        for c in self._cdc.cut_buf(view):
            lengths.append(c.length)
            kinds.append(GENERIC)


def _merge_tail(
    lengths: list[int], kinds: bytearray, offset: int, undecided: int
) -> tuple[list[int], bytearray]:
    """Keep the pieces that end at or before `undecided`; the rest become one last piece."""
    pos = offset
    for i, n in enumerate(lengths):
        if pos + n > undecided:
            tail = sum(lengths[i:])
            return lengths[:i] + [tail], kinds[:i] + bytearray([GENERIC])
        pos += n
    return lengths, kinds
