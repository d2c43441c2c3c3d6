"""The `records` chunker (hnswlib's data_level0.bin): cuts around each element's neighbour list,
so a round that relinks most elements stores their lists again but not their vectors."""

from __future__ import annotations

import io
import os
from pathlib import Path

import blake3
import numpy as np
import pytest

from casnap import Repository, checkout, commit
from casnap.capture import record_layout
from casnap.chunking import choose_chunker, make_chunker
from casnap.chunking.base import FLOAT32
from casnap.chunking.records import RecordChunker
from casnap.config import default_config, encode_config, parse_config
from casnap.errors import IntegrityError
from casnap.formats import hnsw
from tests.helpers_rag import CHROMA_DIR, evolve_chroma, make_chroma, query_chroma

CONFIG = default_config()["chunker"]
DIM = 160  # a vector and label of 648 bytes: above the smallest body worth its own piece


def records(n: int, size: int, seed: int = 0) -> bytearray:
    return bytearray(np.random.default_rng(seed).bytes(n * size))


def pieces(chunker: RecordChunker, data: bytes, block: int) -> list[bytes]:
    return [bytes(p) for p in chunker.split(io.BytesIO(data), block)]


def test_cuts_fall_at_each_head_and_record_end_whatever_the_read_size() -> None:
    size, head = 1676, 132
    data = bytes(records(50, size)) + b"tail!"
    chunker = RecordChunker(size, head, 65536)
    expected = [head, size - head] * 50 + [5]
    for block in (100, 1000, 4096, 1 << 20):
        got = pieces(chunker, data, block)
        assert [len(p) for p in got] == expected, block
        assert b"".join(got) == data


def test_a_body_over_max_is_cut_in_blocks_counted_from_the_head() -> None:
    size, head = 4 + 10_000, 4
    chunker = RecordChunker(size, head, 4096)
    got = [len(p) for p in pieces(chunker, bytes(records(3, size)), 3000)]
    assert got == [4, 4096, 4096, 1808] * 3


def test_every_piece_is_marked_as_words_for_the_codec() -> None:
    chunker = RecordChunker(1676, 132, 65536)
    lengths, kinds = chunker.pieces(memoryview(bytes(1676 * 2)), 0, True)
    assert kinds == bytes([FLOAT32]) * len(lengths)


def test_relinked_elements_store_their_heads_only() -> None:
    size, head, n = 1676, 132, 400
    before = records(n, size)
    after = bytearray(before)
    rng = np.random.default_rng(1)
    for i in rng.choice(n, size=300, replace=False):  # most elements get new neighbours
        after[i * size : i * size + head] = rng.bytes(head)
    chunker = RecordChunker(size, head, 65536)
    old = {blake3.blake3(p).digest() for p in pieces(chunker, bytes(before), 4096)}
    new = [p for p in pieces(chunker, bytes(after), 4096) if blake3.blake3(p).digest() not in old]
    assert len(new) == 300 and all(len(p) == head for p in new)


def test_the_description_rebuilds_the_chunker_and_bad_ones_are_refused() -> None:
    chunker = choose_chunker(b"", CONFIG, (1676, 132))
    assert chunker.describe() == {"name": "records", "size": 1676, "split": 132, "max": 65536}
    assert make_chunker(chunker.describe()).describe() == chunker.describe()
    for size, split in ((1676, 0), (1676, 1676), (1675, 132), (1676, 130)):
        with pytest.raises(ValueError):
            make_chunker({"name": "records", "size": size, "split": split, "max": 65536})


def test_small_bodies_and_old_configs_keep_the_default_chunker() -> None:
    assert choose_chunker(b"", CONFIG, (132 + 64 + 8, 132)).describe() == CONFIG["default"]
    old = {k: v for k, v in CONFIG.items() if k != "hnsw"}
    assert choose_chunker(b"", old, (1676, 132)).describe() == CONFIG["default"]


def test_a_config_naming_another_chunker_for_hnsw_is_damaged() -> None:
    cfg = default_config()
    cfg["chunker"]["hnsw"] = {"name": "fastcdc", "max": 65536}
    with pytest.raises(IntegrityError):
        parse_config(encode_config(cfg), "test")


# -- the layout read beside data_level0.bin ------------------------------------------------------


def segment(data: Path) -> Path:
    return next((data / CHROMA_DIR).glob(f"*/{hnsw.HEADER}")).parent


def test_the_layout_comes_from_the_header_beside_the_file(tmp_path: Path) -> None:
    make_chroma(tmp_path, n=300, dim=DIM)
    seg = segment(tmp_path)
    header = hnsw.read_header(seg / hnsw.HEADER)
    assert record_layout(seg / hnsw.DATA) == (header.element_size, header.data_offset)
    assert header.element_size - header.data_offset == DIM * 4 + 8
    assert record_layout(seg / hnsw.LENGTH) is None


@pytest.mark.parametrize("kind", ["symlink", "fifo", "garbage", "missing"])
def test_a_header_that_is_no_regular_header_gives_no_layout(kind: str, tmp_path: Path) -> None:
    make_chroma(tmp_path, n=300, dim=DIM)
    seg = segment(tmp_path)
    real = (seg / hnsw.HEADER).read_bytes()
    (seg / hnsw.HEADER).unlink()
    if kind == "symlink":
        (tmp_path / "elsewhere.bin").write_bytes(real)
        (seg / hnsw.HEADER).symlink_to(tmp_path / "elsewhere.bin")
    elif kind == "fifo":
        os.mkfifo(seg / hnsw.HEADER)  # a read would block forever
    elif kind == "garbage":
        (seg / hnsw.HEADER).write_bytes(b"\x01" + real[1:-1])
    assert record_layout(seg / hnsw.DATA) is None


# -- end to end: a real Chroma store -------------------------------------------------------------


def test_a_chroma_round_stores_a_fraction_of_its_hnsw_vectors_again(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_chroma(data, n=2000, dim=DIM, seed=3)
    repo = Repository.init(tmp_path / "repo")
    cfg = default_config()
    del cfg["chunker"]["hnsw"]
    before_records = Repository.init(tmp_path / "old", cfg)
    commit(repo, data)
    commit(before_records, data)
    level0 = segment(data) / hnsw.DATA
    first = level0.read_bytes()
    for round_no in (1, 2):  # past the store's sync threshold: the segment is persisted
        evolve_chroma(data, round_no, seed=3, dim=DIM)
    assert level0.read_bytes() != first  # the round relinked the graph on disk
    added = commit(repo, data).bytes_added
    added_before = commit(before_records, data).bytes_added
    entry = next(
        f for f in repo.load_snapshot(repo.resolve("latest")).files if f.path.endswith(hnsw.DATA)
    )
    assert entry.chunker["name"] == "records"
    assert added < 0.5 * added_before, (added, added_before)
    expected = query_chroma(data, DIM)
    out = tmp_path / "out"
    checkout(repo, "latest", out, safety_snapshot=False)
    assert (out / level0.relative_to(data)).read_bytes() == level0.read_bytes()
    assert query_chroma(out, DIM) == expected
