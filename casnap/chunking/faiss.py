"""The FAISS chunkers: pieces that follow an index file's own layout (casnap/formats/faiss.py).

A FAISS file is a header followed by a few large arrays of equal-sized elements (vectors, codes,
ids, graph entries). Both chunkers cut at every array boundary; they differ inside an array:

- `faiss` (repositories made before `faiss-cdc`): fixed blocks measured from each array's start.
  Appends cost only the tail block, but a deletion (`remove_ids` moves every later element down)
  shifts every later block, so the whole rest of the array is stored again.
- `faiss-cdc`: cuts chosen by the elements' content, only between elements (chunking/elements.py),
  so after a deletion the pieces re-synchronise right after it; arrays that only grow or change
  in place can keep fixed element blocks (equal min, avg and max).

The layout is read from the stream as it passes (the format's parser driven by the bytes, never a
seek), so memory stays bounded. Types the parser does not know, and anything after a parse
failure, are cut by content (FastCDC) like any other file; a misparse can only cost dedup, never
correctness.
"""

from __future__ import annotations

from abc import abstractmethod
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

from casnap.chunking.base import FLOAT32, GENERIC, Chunker
from casnap.chunking.cdc import Cutter
from casnap.formats.faiss import (
    GRAPH,
    IDS,
    LIST_IDS,
    LISTS,
    VECTORS,
    Parser,
    Read,
    Section,
    Unsupported,
    parse_index,
)

if TYPE_CHECKING:  # numpy's cutter is imported once an array is cut, not to check a config
    from casnap.chunking.elements import ElementCutter


class Array(NamedTuple):
    """One array of the file, as the parser declared it: bytes [start, stop)."""

    start: int
    stop: int
    kind: str
    float32: bool
    item: int  # bytes per element


class _Layout:
    """Runs the parser over the stream as buffers arrive; collects the sections it declares."""

    def __init__(self) -> None:
        self.parser: Parser | None = parse_index()
        self.pos = 0  # where the parser's next request starts
        self.request: Read | Section | None = None
        self.acc = bytearray()  # bytes gathered for a Read that straddles buffers
        self.sections: deque[Array] = deque()
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
                    end_at = self.pos + req.length
                    self.sections.append(Array(self.pos, end_at, req.kind, req.float32, req.item))
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


class _LayoutChunker(Chunker):
    """Walks the arrays the layout parser finds; subclasses say how to cut inside one.

    Header fields and unknown parts are cut by FastCDC with the given min/avg/max.
    """

    def __init__(self, min_size: int, avg_size: int, max_size: int) -> None:
        self.min_size, self.avg_size, self.cdc_max = min_size, avg_size, max_size
        self._cdc = Cutter(min_size, avg_size, max_size)
        self._layout = _Layout()

    def _fallback_params(self) -> dict[str, int]:
        """The FastCDC sizes for what lies outside the arrays, as the config records them."""
        return {"min": self.min_size, "avg": self.avg_size, "max": self.cdc_max}

    @abstractmethod
    def _array_pieces(self, view: memoryview, rel: int, array: Array, complete: bool) -> list[int]:
        """Lengths of pieces covering view, the bytes of `array` from `rel` bytes into it (always
        a cut); `complete` when view reaches the array's end or the stream's. Otherwise the last
        piece may be an undecided rest, which the caller carries into the next call."""

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
        while sections and sections[0].stop <= offset:
            sections.popleft()
        lengths: list[int] = []
        kinds = bytearray()
        pos = offset
        for array in sections:
            if array.start >= end:
                break
            if array.start > pos:
                self._cdc_pieces(buf[pos - offset : array.start - offset], lengths, kinds)
                pos = array.start
            stop_here = min(array.stop, end)
            if pos < stop_here:
                view = buf[pos - offset : stop_here - offset]
                complete = stop_here == array.stop or final
                cut = self._array_pieces(view, pos - array.start, array, complete)
                lengths += cut
                kinds += bytes([FLOAT32 if array.float32 else GENERIC]) * len(cut)
                pos = stop_here
        if pos < end:
            self._cdc_pieces(buf[pos - offset :], lengths, kinds)
        if undecided < end:
            lengths, kinds = _merge_tail(lengths, kinds, offset, undecided)
        return lengths, bytes(kinds) if FLOAT32 in kinds else None

    def _cdc_pieces(self, view: memoryview, lengths: list[int], kinds: bytearray) -> None:
        cut = self._cdc.lengths(view)
        lengths += cut
        kinds += bytes([GENERIC]) * len(cut)


class FaissChunker(_LayoutChunker):
    """Cuts a FAISS index at its arrays' boundaries, in fixed blocks inside each array.

    Block sizes per kind of array are parameters (see docs/TUNING.md for how they were chosen);
    an inverted list's ids take the `lists` block like its codes.
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
        super().__init__(min_size, avg_size, max_size)
        self.block = {VECTORS: vectors, LISTS: lists, GRAPH: graph, IDS: ids}
        for kind, size in self.block.items():
            if size <= 0 or size % 8:
                raise ValueError(f"faiss {kind} block must be a positive multiple of 8")
        self.max_size = max(max_size, *self.block.values())

    def params(self) -> dict[str, Any]:
        return {**self.block, **self._fallback_params()}

    def _array_pieces(self, view: memoryview, rel: int, array: Array, complete: bool) -> list[int]:
        size = self.block[LISTS if array.kind == LIST_IDS else array.kind]
        first = min(size - rel % size, len(view))
        full, rest = divmod(len(view) - first, size)
        return [first] + [size] * full + ([rest] if rest else [])


#: The kinds of array whose pieces `faiss-cdc` sizes apart (an inverted list's ids go with "ids").
CDC_KINDS = (VECTORS, LISTS, IDS, GRAPH)


class FaissCDCChunker(_LayoutChunker):
    """Cuts a FAISS index at its arrays' boundaries and, inside each array, between elements
    where their content says (min/avg/max bytes per kind of array, rounded to whole elements;
    equal sizes give fixed element blocks). See docs/TUNING.md for the chosen sizes.
    """

    name = "faiss-cdc"

    def __init__(
        self, sizes: dict[str, tuple[int, int, int]], min_size: int, avg_size: int, max_size: int
    ) -> None:
        super().__init__(min_size, avg_size, max_size)
        for kind in CDC_KINDS:
            low, avg, high = sizes[kind]
            if not 0 < low <= avg <= high or high % 8:
                raise ValueError(
                    f"faiss-cdc {kind} needs 0 < min <= avg <= max, max a multiple of 8"
                )
        self.sizes = {kind: tuple(sizes[kind]) for kind in CDC_KINDS}
        self.max_size = max(max_size, *(s[2] for s in self.sizes.values()))
        self._cutters: dict[tuple[str, int], ElementCutter] = {}

    def params(self) -> dict[str, Any]:
        return {
            **{kind: list(self.sizes[kind]) for kind in CDC_KINDS},
            **self._fallback_params(),
        }

    def _array_pieces(self, view: memoryview, rel: int, array: Array, complete: bool) -> list[int]:
        kind = IDS if array.kind == LIST_IDS else array.kind
        key = (kind, array.item)
        cutter = self._cutters.get(key)
        if cutter is None:
            from casnap.chunking.elements import ElementCutter  # numpy: only once cutting

            cutter = self._cutters[key] = ElementCutter(array.item, *self.sizes[kind])
        return cutter.lengths(view, rel, complete)


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
