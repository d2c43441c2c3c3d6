"""FAISS index files (`faiss.write_index` output): pieces that follow the file's own layout.

A FAISS file is a header followed by a few large arrays: the vectors of a Flat index, the
inverted lists of an IVF index, the levels, offsets and neighbours of an HNSW graph. Adding vectors
appends to each array, so every array after the first one shifts. Cutting at array boundaries and
in fixed blocks measured from each array's start keeps every unchanged block byte-identical:
a Flat shard with 1% more vectors re-stores one block, an IVF index only the tail block of each
inverted list. Fixed blocks also keep float32 words aligned, which the byte-grouped codec needs.

The layout is read from the stream as it passes (a small parser driven by the bytes, never a seek),
so memory stays bounded. Types the parser does not know, and anything after a parse failure, are
cut by content (FastCDC) like any other file; a misparse can only cost dedup, never correctness.
The same parser, driven by seeks over the arrays, tells how long an index should be
(expected_end): commit and diff use it to spot an index that a write left short.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, NamedTuple

from pyfastcdc import FastCDC

from casnap.chunking.base import FLOAT32, GENERIC, Chunker

FLAT_FOURCCS = (b"IxF2", b"IxFI", b"IxFl")
IVF_FOURCCS = (b"IwFl", b"IwSq", b"IwPQ")
HNSW_FOURCCS = (b"IHNf", b"IHNs", b"IHNp", b"IHN2")
IDMAP_FOURCCS = (b"IxMp", b"IxM2")
FAISS_FOURCCS = FLAT_FOURCCS + IVF_FOURCCS + HNSW_FOURCCS + IDMAP_FOURCCS

# Section kinds: each has its own block size (FaissChunker parameters).
VECTORS = "vectors"  # float32 vectors: Flat codes, HNSW storage, IVF centroids
LISTS = "lists"  # one inverted list's codes, or its ids
GRAPH = "graph"  # HNSW levels, offsets and neighbour arrays
IDS = "ids"  # id maps and direct maps
KINDS = (VECTORS, LISTS, GRAPH, IDS)

# A single header field larger than this (an IVF list-size table of 2M lists) is not parsed; the
# rest of the file is cut by content. Bounds the bytes a parse may hold.
MAX_FIELD = 16 * 1024 * 1024
_HEADER = struct.Struct("<iqqq?i")  # d, ntotal, dummy, dummy, is_trained, metric_type


def faiss_kind(header: bytes) -> str | None:
    """'flat', 'ivf', 'hnsw' or 'idmap' for a FAISS file's first bytes; None otherwise."""
    fourcc = bytes(header[:4])
    if fourcc in FLAT_FOURCCS:
        return "flat"
    if fourcc in IVF_FOURCCS:
        return "ivf"
    if fourcc in HNSW_FOURCCS:
        return "hnsw"
    if fourcc in IDMAP_FOURCCS:
        return "idmap"
    return None


# -- the layout parser -------------------------------------------------------------------------
# A generator that yields requests and receives the bytes it asked for:
#   _Read(n)    -> the next n bytes of the file (a header field)
#   _Section(k) -> the next `length` bytes form one array of kind k (the parser never sees them)


class _Unsupported(Exception):
    """The parser met a layout it does not know; the rest of the file is cut by content."""


@dataclass(frozen=True)
class _Read:
    n: int


@dataclass(frozen=True)
class _Section:
    kind: str | None  # None: small metadata, cut by content with the header fields around it
    length: int
    float32: bool = False


_Parser = Generator[_Read | _Section, bytes | None, Any]


def _read(n: int) -> _Parser:
    if n < 0 or n > MAX_FIELD:
        raise _Unsupported(f"field of {n} bytes")
    data = yield _Read(n)
    assert data is not None
    return data


def _u64() -> _Parser:
    return struct.unpack("<Q", (yield from _read(8)))[0]


def _vector(item: int, kind: str | None = None, float32: bool = False) -> _Parser:
    """A std::vector as FAISS writes it: a u64 element count, then the elements."""
    n = yield from _u64()
    yield _Section(kind, n * item, float32)
    return n


def _index_header() -> _Parser:
    raw = yield from _read(_HEADER.size)
    metric = _HEADER.unpack(raw)[5]
    if metric > 1:
        yield from _read(4)  # metric_arg


def _index() -> _Parser:
    """One index, recursively (an IVF's quantizer and an HNSW's storage are indexes too)."""
    fourcc = yield from _read(4)
    if fourcc in FLAT_FOURCCS:
        yield from _index_header()
        yield from _vector(4, VECTORS, float32=True)  # codes: count of 4-byte words
    elif fourcc in IVF_FOURCCS:
        yield from _index_header()
        yield from _read(16)  # nlist, nprobe
        yield from _index()  # the coarse quantizer
        direct_map = (yield from _read(1))[0]
        yield from _vector(8, IDS)
        if direct_map == 2:  # hashtable direct map: (id, offset) pairs
            yield from _vector(16, IDS)
        if fourcc == b"IwSq":
            yield from _read(28)  # qtype, rangestat, rangestat_arg, d, code_size
            yield from _vector(4)  # trained
            yield from _read(9)  # code_size, by_residual
        elif fourcc == b"IwPQ":
            yield from _read(9)  # by_residual, code_size
            yield from _read(24)  # product quantizer: d, M, nbits
            yield from _vector(4)  # centroids
        yield from _inverted_lists(float32=fourcc == b"IwFl")
    elif fourcc in HNSW_FOURCCS:
        yield from _index_header()
        yield from _vector(8)  # assign_probas
        yield from _vector(4)  # cum_nneighbor_per_level
        yield from _vector(4, GRAPH)  # levels
        yield from _vector(8, GRAPH)  # offsets
        yield from _vector(4, GRAPH)  # neighbors
        yield from _read(20)  # entry_point, max_level, efConstruction, efSearch, upper_beam
        yield from _index()  # storage
    elif fourcc in IDMAP_FOURCCS:
        yield from _index_header()
        yield from _index()
        yield from _vector(8, IDS)  # id_map
    else:
        raise _Unsupported(f"index type {fourcc!r}")


def _inverted_lists(float32: bool) -> _Parser:
    """ArrayInvertedLists: a size table, then each non-empty list's codes and ids."""
    if (yield from _read(4)) != b"ilar":
        raise _Unsupported("inverted lists that are not an ArrayInvertedLists")
    nlist, code_size = struct.unpack("<QQ", (yield from _read(16)))
    list_type = yield from _read(4)
    count = yield from _u64()
    table = yield from _read(count * 8)
    if list_type == b"full" and count == nlist:
        sizes = (v for (v,) in struct.iter_unpack("<Q", table))
    elif list_type == b"sprs" and count % 2 == 0:
        sizes = (n for (_, n) in struct.iter_unpack("<QQ", table))
    else:
        raise _Unsupported("unknown inverted list table")
    aligned = float32 and code_size % 4 == 0
    for n in sizes:
        if n:
            yield _Section(LISTS, n * code_size, aligned)
            yield _Section(LISTS, n * 8)


class _Layout:
    """Runs the parser over the stream as buffers arrive; collects the sections it declares."""

    def __init__(self) -> None:
        self.parser: _Parser | None = _index()
        self.pos = 0  # where the parser's next request starts
        self.request: _Read | _Section | None = None
        self.acc = bytearray()  # bytes gathered for a _Read that straddles buffers
        self.sections: deque[tuple[int, int, str, bool]] = deque()  # start, end, kind, float32
        self.completed = False  # the parser reached the end of a layout it knows
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
            self.completed = True
        except _Unsupported:
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
            if isinstance(req, _Section):
                if req.length and self.pos >= end:
                    return
                if req.length and req.kind is not None:
                    self.sections.append((self.pos, self.pos + req.length, req.kind, req.float32))
                self.pos += req.length
                self._advance(None)
                continue
            assert isinstance(req, _Read)
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


def layout_sections(data: bytes | memoryview) -> tuple[list[tuple[int, int, str]], bool]:
    """The arrays a whole FAISS file holds as (start, end, kind), and whether the parse reached
    the end of a layout it knows (False: the rest is cut by content)."""
    layout = _Layout()
    view = memoryview(data)
    layout.feed(view, 0)
    complete = not layout.active and layout.pos == len(view) and layout.completed
    return [(a, b, k) for a, b, k, _ in layout.sections], complete


# -- how long an index should be -----------------------------------------------------------------


class LayoutEnd(NamedTuple):
    """Where a FAISS file's layout ends by its own header fields and array lengths."""

    end: int  # exact when `exact`; else a lower bound (the file stopped before a field)
    exact: bool


def expected_end(read_at: Callable[[int, int], bytes], size: int) -> LayoutEnd | None:
    """How many bytes the layout parser finds a FAISS file of `size` bytes promises, reading only
    its header fields through read_at(offset, length) and stepping over its arrays; None for a
    layout the parser does not know (an unknown index type, a field over MAX_FIELD bytes).

    A field that lies past the end of the file cannot be read: the end is then a lower bound, the
    first offset the file would need, which already exceeds `size`.
    """
    parser = _index()
    pos = 0
    value: bytes | None = None
    try:
        while True:
            request = parser.send(value)
            if isinstance(request, _Section):
                pos += request.length
                value = None
                continue
            if pos + request.n > size:
                return LayoutEnd(pos + request.n, exact=False)
            value = bytes(read_at(pos, request.n))
            if len(value) < request.n:  # shorter than size said: it shrank meanwhile
                return LayoutEnd(pos + request.n, exact=False)
            pos += request.n
    except StopIteration:
        return LayoutEnd(pos, exact=True)
    except _Unsupported:
        return None
    finally:
        parser.close()


def shortfall(read_at: Callable[[int, int], bytes], size: int) -> str | None:
    """Why a FAISS file of `size` bytes is shorter than its header promises (a write cut short, a
    truncated copy); None when it is long enough or its layout is unknown."""
    end = expected_end(read_at, size)
    if end is None or end.end <= size:
        return None
    promise = f"{end.end}" if end.exact else f"at least {end.end}"
    return f"truncated: its header promises {promise} bytes, the file holds {size}"


def file_shortfall(path: str | os.PathLike[str]) -> str | None:
    """shortfall() of a file on disk, read with a few small preads; None when it cannot be
    opened (whoever reads it next reports that)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        return shortfall(lambda offset, n: os.pread(fd, n, offset), os.fstat(fd).st_size)
    except OSError:
        return None
    finally:
        os.close(fd)
