"""Chunkers: where they cut, how they are chosen, and that streaming never changes the cut."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casnap.chunking import (
    FLOAT32,
    Chunker,
    FaissCDCChunker,
    FaissChunker,
    FastCDCChunker,
    FixedChunker,
    SQLitePageChunker,
    choose_chunker,
    make_chunker,
)
from casnap.chunking.base import Buffers
from casnap.config import default_config
from casnap.formats.faiss import LIST_IDS, LISTS, faiss_kind, layout_sections
from casnap.formats.sqlite import sqlite_page_size
from tests import helpers_chunking as h

CONFIG = default_config()["chunker"]


def small_faiss() -> FaissChunker:
    return FaissChunker(
        vectors=256, lists=64, graph=64, ids=128, min_size=64, avg_size=256, max_size=1024
    )


def cut_all(chunker, data: bytes, block: int) -> list[bytes]:
    return [bytes(p) for p in chunker.split(io.BytesIO(data), block)]


def boundaries(pieces: list[bytes]) -> set[int]:
    out, pos = set(), 0
    for p in pieces:
        pos += len(p)
        out.add(pos)
    return out


# -- SQLite ------------------------------------------------------------------------------------


@pytest.mark.parametrize("page_size", [1024, 4096, 65536])
def test_sqlite_pages_follow_the_header_page_size(tmp_path: Path, page_size: int) -> None:
    db = tmp_path / "a.db"
    h.make_db(db, page_size=page_size, rows=60)
    data = db.read_bytes()
    assert sqlite_page_size(data[:100]) == page_size
    chunker = choose_chunker(data[:100], CONFIG)
    assert isinstance(chunker, SQLitePageChunker)
    assert chunker.describe() == {"name": "sqlite", "page_size": page_size}
    pieces = cut_all(chunker, data, block=3 * page_size + 5)  # reads not aligned to pages
    assert b"".join(pieces) == data
    assert all(len(p) == page_size for p in pieces)
    assert len(pieces) == len(data) // page_size


def test_sqlite_header_edge_cases() -> None:
    head = b"SQLite format 3\x00"
    assert sqlite_page_size(head + b"\x00\x01") == 65536
    assert sqlite_page_size(head + b"\x02\x00") == 512
    assert sqlite_page_size(head + b"\x03\x00") is None  # not a power of two
    assert sqlite_page_size(head + b"\x00\x80") is None  # 128: too small
    assert sqlite_page_size(b"SQLite format 2\x00\x10\x00") is None
    assert sqlite_page_size(head) is None  # truncated


def test_choice_is_by_content_never_by_name(tmp_path: Path) -> None:
    db = tmp_path / "looks.index"
    h.make_db(db, rows=5)
    assert choose_chunker(db.read_bytes()[:100], CONFIG).name == "sqlite"
    idx = tmp_path / "app.db"
    h.write(h.flat(10), idx)
    assert choose_chunker(idx.read_bytes()[:100], CONFIG).name == "faiss-cdc"
    assert choose_chunker(b"plain text file", CONFIG).name == "fastcdc"


def test_config_without_format_entries_keeps_the_default() -> None:
    old = {"default": CONFIG["default"]}
    assert choose_chunker(b"SQLite format 3\x00\x10\x00", old).name == "fastcdc"
    assert choose_chunker(b"IxF2" + bytes(60), old).name == "fastcdc"


# -- FAISS -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(h.BUILDERS))
def test_faiss_types_are_detected_and_parsed_to_the_end(tmp_path: Path, name: str) -> None:
    kind, build = h.BUILDERS[name]
    path = tmp_path / f"{name}.index"
    h.write(build(300), path)
    data = path.read_bytes()
    assert data == h.index_bytes(build(300))  # write_index is deterministic
    assert faiss_kind(data[:100]) == kind
    assert choose_chunker(data[:100], CONFIG).name == "faiss-cdc"
    sections, complete = layout_sections(data)
    assert complete, f"{name}: the layout parser did not reach the end of the file"
    assert sections, name
    ends = [0] + [e for _, e, _ in sections]
    assert all(a < b for a, b in zip(ends, ends[1:], strict=False)), "sections overlap"
    assert sections[-1][1] <= len(data)


def test_unknown_faiss_types_fall_back_to_cdc() -> None:
    pq = faiss.IndexPQ(h.DIM, 4, 4)
    pq.train(h.vectors(300))
    data = h.index_bytes(pq)
    assert faiss_kind(data[:100]) is None
    assert choose_chunker(data[:100], CONFIG).name == "fastcdc"


def test_flat_vectors_are_fixed_blocks_from_the_vector_start() -> None:
    data = h.index_bytes(h.flat(500))
    chunker = small_faiss()
    lengths, kinds = chunker.pieces(memoryview(data), 0, True)
    header = 4 + 33 + 8  # fourcc, index header, vector length
    assert lengths[0] == header
    assert kinds is not None and kinds[0] != FLOAT32
    assert all(n == 256 for n in lengths[1:-1])
    assert all(k == FLOAT32 for k in kinds[1:])


def test_ivf_is_cut_at_every_inverted_list_boundary() -> None:
    index = h.ivf_flat(600, nlist=8)
    data = h.index_bytes(index)
    invlists = index.invlists
    sizes = [invlists.list_size(i) for i in range(index.nlist)]
    code = invlists.code_size
    lists_bytes = sum(n * (code + 8) for n in sizes)
    pos = len(data) - lists_bytes  # the lists are the end of the file
    expected = set()
    for n in sizes:
        if n:
            expected |= {pos, pos + n * code}
            pos += n * (code + 8)
    pieces = cut_all(small_faiss(), data, block=1000)
    assert b"".join(pieces) == data
    cuts = boundaries(pieces) | {0}
    assert expected <= cuts
    sections, _ = layout_sections(data)
    assert sum(1 for s in sections if s[2] == LISTS) == sum(1 for n in sizes if n)
    assert sum(1 for s in sections if s[2] == LIST_IDS) == sum(1 for n in sizes if n)


def test_ivf_growth_keeps_the_start_of_every_list() -> None:
    index = h.ivf_flat(600, nlist=8)
    before = cut_all(small_faiss(), h.index_bytes(index), 4096)
    index.add(h.vectors(12, seed=9))  # 2%: lands in most lists
    after = cut_all(small_faiss(), h.index_bytes(index), 4096)
    old = set(before)
    new_bytes = sum(len(p) for p in after if p not in old)
    assert new_bytes < 0.25 * sum(len(p) for p in after)


def test_hnsw_graph_and_storage_are_separate_sections() -> None:
    data = h.index_bytes(h.hnsw(300))
    sections, complete = layout_sections(data)
    assert complete
    kinds = [k for _, _, k in sections]
    assert kinds == ["graph", "graph", "graph", "vectors"]
    assert sections[-1][1] == len(data)


def test_truncated_faiss_file_is_still_cut_completely() -> None:
    data = h.index_bytes(h.ivf_flat(300))
    for cut_at in (3, 50, 200, len(data) // 2):
        piece_data = data[:cut_at]
        pieces = cut_all(small_faiss(), piece_data, 128)
        assert b"".join(pieces) == piece_data


# -- every chunker: streaming, bounds, determinism ---------------------------------------------


def small_faiss_cdc() -> Chunker:
    sizes = {"vectors": (512, 1024, 4096), "lists": (512, 1024, 2048)}
    sizes |= {"ids": (512, 1024, 2048), "graph": (512, 512, 512)}
    return FaissCDCChunker(sizes, min_size=64, avg_size=256, max_size=1024)


CHUNKERS = {
    "fastcdc": lambda: FastCDCChunker(64, 256, 1024),
    "fixed": lambda: FixedChunker(100),
    "sqlite": lambda: SQLitePageChunker(512),
    "faiss": small_faiss,
    "faiss-cdc": small_faiss_cdc,
}


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=6000),
    name=st.sampled_from(sorted(CHUNKERS)),
    block=st.integers(min_value=1, max_value=3000),
    prefix=st.sampled_from([b"", b"IxF2", b"IwFl", b"IHNf", b"IxMp"]),
)
def test_pieces_cover_the_input_within_bounds_whatever_the_reads(
    data: bytes, name: str, block: int, prefix: bytes
) -> None:
    data = prefix + data
    whole = cut_all(CHUNKERS[name](), data, block=len(data) + 1)
    streamed = cut_all(CHUNKERS[name](), data, block=block)
    assert b"".join(whole) == data
    assert streamed == whole  # cut points never depend on how the stream was read
    limit = CHUNKERS[name]().max_size
    assert all(0 < len(p) <= limit for p in whole)


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(sorted(h.BUILDERS)),
    n=st.integers(min_value=1, max_value=400),
    block=st.integers(min_value=7, max_value=5000),
    make=st.sampled_from([small_faiss, small_faiss_cdc]),
)
def test_real_faiss_files_stream_like_whole_buffers(name: str, n: int, block: int, make) -> None:
    data = h.index_bytes(h.BUILDERS[name][1](n))
    whole = cut_all(make(), data, block=len(data) + 1)
    assert b"".join(whole) == data
    assert cut_all(make(), data, block=block) == whole
    assert all(len(p) <= make().max_size for p in whole)


def test_huge_declared_field_is_not_parsed() -> None:
    # an inverted-list table claiming 2^40 entries must not be read into memory
    data = h.index_bytes(h.ivf_flat(100))
    count_at = data.index(b"ilar") + 4 + 16 + 4  # fourcc, nlist, code_size, "full"
    assert struct.unpack_from("<Q", data, count_at)[0] == 8
    forged = data[:count_at] + struct.pack("<Q", 1 << 40) + data[count_at + 8 :]
    sections, complete = layout_sections(forged)
    assert not complete
    assert not any(k == LISTS for _, _, k in sections)
    pieces = cut_all(small_faiss(), forged, 4096)
    assert b"".join(pieces) == forged


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "fastcdc", "min": 1024, "avg": 4096, "max": 16384},
        {"name": "fixed", "size": 512},
        {"name": "sqlite", "page_size": 4096},
        CONFIG["faiss"],
    ],
)
def test_make_chunker_rebuilds_from_its_description(spec: dict) -> None:
    chunker = make_chunker(spec)
    again = make_chunker(chunker.describe())
    assert again.describe() == chunker.describe()
    data = np.random.default_rng(0).bytes(50_000)
    assert cut_all(chunker, data, 7000) == cut_all(again, data, 7000)


def test_make_chunker_rejects_unknown_and_incomplete_specs() -> None:
    with pytest.raises(ValueError):
        make_chunker({"name": "rabin"})
    with pytest.raises(ValueError):
        make_chunker({"name": "faiss", "vectors": 4096})


@pytest.mark.parametrize("spec", ["default", "faiss"])
def test_blocks_in_reused_buffers_are_the_blocks_of_fresh_ones(spec: str) -> None:
    """A buffer handed back once its block is taken (two blocks later, as a commit does) serves a
    later block: the pieces and their bytes stay those of fresh buffers, carried tails too."""
    if spec == "faiss":
        raw = faiss.serialize_index(h.ivf_flat(6000)).tobytes()
    else:
        raw = np.random.default_rng(9).bytes(700_000)
    config = default_config()["chunker"]

    def cut(buffers: Buffers | None) -> list[tuple[int, list[int], bytes]]:
        chunker = choose_chunker(raw[:4096], config)
        out, held = [], []
        for block in chunker.blocks(io.BytesIO(raw), 32 * 1024, buffers):
            out.append((block.offset, list(block.lengths), bytes(block.data)))
            held.append(block)
            if buffers is not None and len(held) > 2:
                buffers.give(held.pop(0).data.obj)
        return out

    fresh = cut(None)
    assert len(fresh) > 5 and b"".join(data for _, _, data in fresh) == raw
    assert cut(Buffers(keep=4)) == fresh


def _pyfastcdc_accepts(mn: int, avg: int, mx: int) -> bool:
    from pyfastcdc import FastCDC

    try:
        FastCDC(avg, min_size=mn, max_size=mx)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(
    "sizes",
    [
        (63, 256, 1024), (64, 256, 1024), (64, 255, 1024), (64, 256, 1023),
        ((1 << 20) + 1, 4 << 20, 16 << 20), (1 << 20, 4 << 20, 16 << 20),
        (1 << 20, (4 << 20) + 1, 16 << 20), (1 << 20, 4 << 20, (16 << 20) + 1),
        (4096, 2048, 65536), (2048, 8192, 4096), (2048, 8192, 65536),
    ],
)  # fmt: skip
def test_the_fastcdc_cutter_refuses_what_pyfastcdc_refuses_when_made(
    sizes: tuple[int, int, int],
) -> None:
    """pyfastcdc loads at the first long buffer; a chunker it would refuse is refused at once."""
    from casnap.chunking.cdc import Cutter

    accepted = True
    try:
        Cutter(*sizes)
    except ValueError:
        accepted = False
    assert accepted == _pyfastcdc_accepts(*sizes)


@pytest.mark.parametrize("sizes", [(512, 2048, 8192), (2048, 8192, 65536)])
def test_the_fastcdc_cutter_cuts_as_pyfastcdc_at_every_length(sizes: tuple[int, int, int]) -> None:
    """Buffers up to the minimum are one piece without pyfastcdc; every length cuts as it does."""
    from pyfastcdc import FastCDC

    from casnap.chunking.cdc import Cutter

    mn, avg, mx = sizes
    data = np.random.default_rng(5).integers(0, 256, 4 * mx, dtype=np.uint8).tobytes()
    cdc = FastCDC(avg, min_size=mn, max_size=mx)
    cutter = Cutter(mn, avg, mx)
    for n in [*range(0, 70), mn - 1, mn, mn + 1, avg, mx, 4 * mx]:
        view = memoryview(data)[:n]
        assert cutter.lengths(view) == [c.length for c in cdc.cut_buf(view)]
