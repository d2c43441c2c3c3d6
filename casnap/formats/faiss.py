"""FAISS index files (`faiss.write_index` output): fourcc codes, headers, layout and sidecars.

An index file starts with a fourcc naming its class, then (for most classes) a common header
holding its dimension and vector count, then a few large arrays: the vectors of a Flat index, the
inverted lists of an IVF index, the levels, offsets and neighbours of an HNSW graph. This module
recognises an index by its first bytes (faiss_header, faiss_kind), describes the arrays of the
layouts it knows (a small parser driven by the bytes, which the chunker runs over a stream), tells
how long an index should be (expected_end, to spot a write cut short), and knows the `.meta.json`
sidecar convention an application keeps beside each index.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from casnap.formats import sniff

# FAISS fourcc codes (faiss/impl/index_write.cpp) and the classes they stand for. Every one but
# the lattice and SVS codes is followed by the common index header that holds ntotal.
FOURCC_TYPES: dict[str, str] = {
    "IxFI": "IndexFlatIP",
    "IxF2": "IndexFlatL2",
    "IxFl": "IndexFlat",
    "IxHe": "IndexLSH",
    "IxPq": "IndexPQ",
    "IxRq": "IndexResidualQuantizer",
    "IxLS": "IndexLocalSearchQuantizer",
    "IxPR": "IndexProductResidualQuantizer",
    "IxPL": "IndexProductLocalSearchQuantizer",
    "ILfs": "IndexLocalSearchQuantizerFastScan",
    "IRfs": "IndexResidualQuantizerFastScan",
    "IPLf": "IndexProductLocalSearchQuantizerFastScan",
    "IPRf": "IndexProductResidualQuantizerFastScan",
    "IVLf": "IndexIVFLocalSearchQuantizerFastScan",
    "IVRf": "IndexIVFResidualQuantizerFastScan",
    "NPLf": "IndexIVFProductLocalSearchQuantizerFastScan",
    "NPRf": "IndexIVFProductResidualQuantizerFastScan",
    "ImRQ": "ResidualCoarseQuantizer",
    "Ix2L": "Index2Layer",
    "IxSQ": "IndexScalarQuantizer",
    "IxLa": "IndexLattice",
    "IwFd": "IndexIVFFlatDedup",
    "IwFl": "IndexIVFFlat",
    "IwSq": "IndexIVFScalarQuantizer",
    "IwLS": "IndexIVFLocalSearchQuantizer",
    "IwRQ": "IndexIVFResidualQuantizer",
    "IwPL": "IndexIVFProductLocalSearchQuantizer",
    "IwPR": "IndexIVFProductResidualQuantizer",
    "IwSh": "IndexIVFSpectralHash",
    "IwQR": "IndexIVFPQR",
    "IwPQ": "IndexIVFPQ",
    "IwIQ": "IndexIVFIndependentQuantizer",
    "IxPT": "IndexPreTransform",
    "Imiq": "MultiIndexQuantizer",
    "IxRF": "IndexRefine",
    "IxM2": "IndexIDMap2",
    "IxMp": "IndexIDMap",
    "IHNf": "IndexHNSWFlat",
    "IHNp": "IndexHNSWPQ",
    "IHNs": "IndexHNSWSQ",
    "IHN2": "IndexHNSW2Level",
    "IHc2": "IndexHNSWCagra",
    "INSf": "IndexNSGFlat",
    "INSp": "IndexNSGPQ",
    "INSs": "IndexNSGSQ",
    "INNf": "IndexNNDescentFlat",
    "IPfs": "IndexPQFastScan",
    "IwPf": "IndexIVFPQFastScan",
    "IRMf": "IndexRowwiseMinMax",
    "IRMh": "IndexRowwiseMinMaxFP16",
    "Ixrq": "IndexRaBitQ",
    "Iwrq": "IndexIVFRaBitQ",
    "IS48": "IndexSVSLVQ4x8",
    "IS44": "IndexSVSLVQ4x4",
    "ISVD": "IndexSVS",
    # binary indexes: a header of their own (d, code_size, ntotal)
    "IBxF": "IndexBinaryFlat",
    "IBwF": "IndexBinaryIVF",
    "IBFf": "IndexBinaryFromFloat",
    "IBHf": "IndexBinaryHNSW",
    "IBM2": "IndexBinaryIDMap2",
    "IBMp": "IndexBinaryIDMap",
    "IBHh": "IndexBinaryHash",
    "IBHm": "IndexBinaryMultiHash",
}
# the first byte of every fourcc faiss_header takes: the known ones, and unknown ones ("I...")
_FIRST_BYTES = frozenset({b"I"} | {name[:1].encode() for name in FOURCC_TYPES})

_NO_COMMON_HEADER = frozenset({"IxLa", "IS48", "IS44", "ISVD"})
_COMMON_HEADER = struct.Struct("<4siqqq")  # fourcc, d, ntotal, dummy, dummy (dummy == 1 << 20)
_BINARY_HEADER = struct.Struct("<4siiq")  # fourcc, d, code_size, ntotal
_DUMMY = 1 << 20
_MAX_DIM = 1 << 20  # the largest d FAISS accepts when it reads a header

# The index types whose layout the parser knows, by family.
FLAT_FOURCCS = (b"IxF2", b"IxFI", b"IxFl")
IVF_FOURCCS = (b"IwFl", b"IwSq", b"IwPQ")
HNSW_FOURCCS = (b"IHNf", b"IHNs", b"IHNp", b"IHN2")
IDMAP_FOURCCS = (b"IxMp", b"IxM2")

#: A header good enough to make choose_chunker pick the FAISS chunker: lets a repository's config
#: be tried on an index before any is committed.
FAISS_SAMPLE_HEADER = FLAT_FOURCCS[0]


# -- recognising an index ------------------------------------------------------------------------


class FaissHeader(NamedTuple):
    """What the first bytes of a FAISS index say: its class, dimension and vector count."""

    fourcc: str
    type: str
    binary: bool
    d: int | None  # None when the header is damaged or not the common one
    ntotal: int | None


def faiss_header(head: bytes) -> FaissHeader | None:
    """Parse the start of a file as a FAISS index header; None when it is not one.

    A known fourcc is enough to recognise an index (so a damaged one is still checked, and fails);
    an unknown fourcc counts only when the common header follows it with its two marker fields.
    """
    if len(head) < 4 or head[:1] not in _FIRST_BYTES:  # most files: one comparison
        return None
    try:
        fourcc = head[:4].decode("ascii")
    except UnicodeDecodeError:
        return None
    known = fourcc in FOURCC_TYPES
    binary = fourcc.startswith("IB")
    d = ntotal = None
    if binary and len(head) >= _BINARY_HEADER.size:
        _, dd, code_size, nt = _BINARY_HEADER.unpack_from(head)
        if 0 < dd <= _MAX_DIM and 0 < code_size <= dd and nt >= 0:
            d, ntotal = dd, nt
    elif not binary and fourcc not in _NO_COMMON_HEADER and len(head) >= _COMMON_HEADER.size:
        _, dd, nt, dummy1, dummy2 = _COMMON_HEADER.unpack_from(head)
        if 0 <= dd <= _MAX_DIM and nt >= 0 and dummy1 == _DUMMY and dummy2 == _DUMMY:
            d, ntotal = dd, nt
    if not known and (ntotal is None or not fourcc.isalnum() or not fourcc.startswith("I")):
        return None
    return FaissHeader(fourcc, FOURCC_TYPES.get(fourcc, fourcc), binary, d, ntotal)


def read_faiss_header(path: str | os.PathLike[str]) -> FaissHeader | None:
    """The FAISS header of a file, or None when it is not a FAISS index (or unreadable)."""
    return faiss_header(sniff(path))


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
#   Read(n)    -> the next n bytes of the file (a header field)
#   Section(k) -> the next `length` bytes form one array of kind k, made of elements of `item`
#                 bytes (a vector, a code, an id); the parser never sees them
# The chunker drives it over a stream as buffers arrive; layout_sections over a whole file;
# expected_end with reads at offsets, stepping over the arrays.

# Section kinds: the chunkers give each its own piece sizes (chunking/faiss.py parameters).
VECTORS = "vectors"  # float32 vectors: Flat codes, HNSW storage, IVF centroids
LISTS = "lists"  # one inverted list's codes
LIST_IDS = "list_ids"  # one inverted list's ids
GRAPH = "graph"  # HNSW levels, offsets and neighbour arrays
IDS = "ids"  # id maps and direct maps

# A single header field larger than this (an IVF list-size table of 2M lists) is not parsed: the
# parse stops there (the chunker cuts the rest of the file by content). Bounds the bytes a parse
# may hold.
MAX_FIELD = 16 * 1024 * 1024
_INDEX_HEADER = struct.Struct("<iqqq?i")  # d, ntotal, dummy, dummy, is_trained, metric_type


class Unsupported(Exception):
    """The parser met a layout it does not know (the chunker cuts the rest of the file by
    content)."""


class Read(NamedTuple):
    """A request for the next n bytes of the file: a header field the parser needs to see."""

    n: int


class Section(NamedTuple):
    """The next `length` bytes are one array of kind `kind`, stepped over unseen: elements of
    `item` bytes each (a vector, a code, an id, a graph entry), which the `faiss-cdc` chunker
    cuts between, never inside (unless one is larger than its largest piece)."""

    kind: str | None  # None: small metadata, cut by content with the header fields around it
    length: int
    float32: bool = False
    item: int = 1


Parser = Generator[Read | Section, bytes | None, Any]


def _read(n: int) -> Parser:
    """The next n bytes; Unsupported for a field too large (or negative) to hold."""
    if n < 0 or n > MAX_FIELD:
        raise Unsupported(f"field of {n} bytes")
    data = yield Read(n)
    assert data is not None
    return data


def _u64() -> Parser:
    """A little-endian u64 field."""
    return struct.unpack("<Q", (yield from _read(8)))[0]


def _vector(
    word: int, kind: str | None = None, float32: bool = False, item: int | None = None
) -> Parser:
    """A std::vector as FAISS writes it: a u64 count of `word`-byte values, then the values,
    which form elements of `item` bytes (a vector of d floats; by default one value)."""
    n = yield from _u64()
    yield Section(kind, n * word, float32, item or word)
    return n


def _index_header() -> Parser:
    """The common index header after a fourcc (d, ntotal, markers, is_trained, metric); returns
    d."""
    raw = yield from _read(_INDEX_HEADER.size)
    d, _, _, _, _, metric = _INDEX_HEADER.unpack(raw)
    if metric > 1:
        yield from _read(4)  # metric_arg
    return d


def parse_index() -> Parser:
    """One index, recursively (an IVF's quantizer and an HNSW's storage are indexes too)."""
    fourcc = yield from _read(4)
    if fourcc in FLAT_FOURCCS:
        d = yield from _index_header()
        # codes: a count of 4-byte words, d of them per vector
        yield from _vector(4, VECTORS, float32=True, item=4 * d if d > 0 else 4)
    elif fourcc in IVF_FOURCCS:
        yield from _index_header()
        yield from _read(16)  # nlist, nprobe
        yield from parse_index()  # the coarse quantizer
        direct_map = (yield from _read(1))[0]
        yield from _vector(8, IDS)
        if direct_map == 2:  # hashtable direct map: (id, offset) pairs
            yield from _vector(16, IDS)  # one element per pair
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
        yield from parse_index()  # storage
    elif fourcc in IDMAP_FOURCCS:
        yield from _index_header()
        yield from parse_index()
        yield from _vector(8, IDS)  # id_map
    else:
        raise Unsupported(f"index type {fourcc!r}")


def _inverted_lists(float32: bool) -> Parser:
    """ArrayInvertedLists: a size table, then each non-empty list's codes and ids."""
    if (yield from _read(4)) != b"ilar":
        raise Unsupported("inverted lists that are not an ArrayInvertedLists")
    nlist, code_size = struct.unpack("<QQ", (yield from _read(16)))
    list_type = yield from _read(4)
    count = yield from _u64()
    table = yield from _read(count * 8)
    if list_type == b"full" and count == nlist:
        sizes = (v for (v,) in struct.iter_unpack("<Q", table))
    elif list_type == b"sprs" and count % 2 == 0:
        sizes = (n for (_, n) in struct.iter_unpack("<QQ", table))
    else:
        raise Unsupported("unknown inverted list table")
    aligned = float32 and code_size % 4 == 0
    for n in sizes:
        if n:
            yield Section(LISTS, n * code_size, aligned, max(code_size, 1))
            yield Section(LIST_IDS, n * 8, item=8)


def layout_sections(data: bytes | memoryview) -> tuple[list[tuple[int, int, str]], bool]:
    """The arrays a whole FAISS file holds as (start, end, kind), and whether the parse reached
    the end of a layout it knows (False: the chunker cuts the rest by content)."""
    view = memoryview(data)
    sections: list[tuple[int, int, str]] = []
    parser = parse_index()
    pos = 0
    value: bytes | None = None
    try:
        while True:
            request = parser.send(value)
            value = None
            if isinstance(request, Section):
                if request.length and pos >= len(view):  # an array the file does not reach
                    return sections, False
                if request.length and request.kind is not None:
                    sections.append((pos, pos + request.length, request.kind))
                pos += request.length
                continue
            if pos + request.n > len(view):
                return sections, False
            value = bytes(view[pos : pos + request.n])
            pos += request.n
    except StopIteration:
        return sections, pos == len(view)
    except Unsupported:
        return sections, False
    finally:
        parser.close()


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
    parser = parse_index()
    pos = 0
    value: bytes | None = None
    try:
        while True:
            request = parser.send(value)
            if isinstance(request, Section):
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
    except Unsupported:
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


def count_problem(read_at: Callable[[int, int], bytes], size: int) -> str | None:
    """Why the vector count in a Flat or IDMap index's header cannot be right: it disagrees
    with the length of the vector array (or, in an IDMap, with the inner index's count or the
    id array's); None when they agree or the layout is another. A few small reads."""
    fourcc, d, ntotal, pos = _header_at(read_at, 0)
    if fourcc in FLAT_FOURCCS:
        return _flat_problem(read_at, d, ntotal, pos)
    if fourcc not in IDMAP_FOURCCS or ntotal < 0:
        return None
    inner, inner_d, inner_n, inner_pos = _header_at(read_at, pos)
    if inner_n != ntotal:
        return f"its header counts {ntotal} vectors, the index inside it {inner_n}"
    if inner in FLAT_FOURCCS:  # the id array right after the vectors: bytes past it are ignored
        if (problem := _flat_problem(read_at, inner_d, inner_n, inner_pos)) is not None:
            return problem
        at = inner_pos + 8 + 4 * inner_d * inner_n
        raw = read_at(at, 8)
        if len(raw) < 8 or int.from_bytes(raw, "little") != ntotal or at + 8 + 8 * ntotal > size:
            return f"its header counts {ntotal} vectors, but its id array does not hold as many"
        return None
    tail = size - 8 * ntotal - 8  # another inner index: the id array is taken to end the file
    if tail < 0 or int.from_bytes(read_at(tail, 8), "little") != ntotal:
        return f"its header counts {ntotal} vectors, but the file does not end in as many ids"
    return None


def _header_at(read_at: Callable[[int, int], bytes], pos: int) -> tuple[bytes, int, int, int]:
    """(fourcc, d, ntotal, where the fields after the header start) of the index at pos;
    ntotal -1 when there is no common header."""
    raw = read_at(pos, 4 + _INDEX_HEADER.size)
    if len(raw) < 4 + _INDEX_HEADER.size:
        return raw[:4], 0, -1, pos
    d, ntotal, _, _, _, metric = _INDEX_HEADER.unpack(raw[4:])
    return raw[:4], d, ntotal, pos + len(raw) + (4 if metric > 1 else 0)


def _flat_problem(
    read_at: Callable[[int, int], bytes], d: int, ntotal: int, pos: int
) -> str | None:
    """A Flat index's count against its vector array (a u64 count of floats, d a vector)."""
    raw = read_at(pos, 8)
    if len(raw) < 8 or ntotal < 0:
        return None  # shorter than its header: shortfall() says so
    floats = int.from_bytes(raw, "little")
    if floats != ntotal * d:
        return (
            f"its header counts {ntotal} vectors of d={d}, its vector array holds {floats} floats"
        )
    return None


def _on_file(
    path: str | os.PathLike[str], check: Callable[[Callable[[int, int], bytes], int], str | None]
) -> str | None:
    """check(read, size) of a file on disk, read with a few small preads; None when it cannot
    be opened or read (whoever reads it next reports that)."""
    try:  # without waiting: a FIFO would wait for a writer forever
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        return check(lambda offset, n: os.pread(fd, n, offset), st.st_size)
    except OSError:
        return None
    finally:
        os.close(fd)


def file_shortfall(path: str | os.PathLike[str]) -> str | None:
    """shortfall() of a file on disk; None when it cannot be read."""
    return _on_file(path, shortfall)


def file_count_problem(path: str | os.PathLike[str]) -> str | None:
    """count_problem() of a file on disk; None when it cannot be read."""
    return _on_file(path, count_problem)


# -- sidecars ------------------------------------------------------------------------------------
# An application keeps a JSON sidecar beside each index (`a.index` -> `a.meta.json`) that states,
# among other things, the vector count it wrote (`ntotal`): a cheap cross-check of the index.

SIDECAR_SUFFIX = ".meta.json"


def sidecar_of(rel: str) -> str:
    """The relative path of an index's sidecar: `faiss/a.index` -> `faiss/a.meta.json` (the
    suffix replaced as PurePosixPath.with_suffix does, in string operations: it is asked for
    every file of a commit)."""
    folder, slash, name = rel.rpartition("/")
    dot = name.rfind(".")
    stem = name[:dot] if 0 < dot < len(name) - 1 else name
    return f"{folder}{slash}{stem}{SIDECAR_SUFFIX}"


def read_sidecar(path: Path) -> dict[str, Any]:
    """The JSON object of a sidecar; ValueError when it is not one."""
    try:
        meta = json.loads(path.read_bytes())
    except RecursionError as exc:
        raise ValueError(f"{path.name} is not valid JSON (nested too deep)") from exc
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or a number of too many digits
        raise ValueError(f"{path.name} is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{path.name} is not a JSON object")
    return meta


def sidecar_ntotal(meta: Mapping[str, Any]) -> int | None:
    """The vector count a sidecar states (its `ntotal` key), None when it states none."""
    value = meta.get("ntotal")
    return value if isinstance(value, int) and not isinstance(value, bool) else None
