"""Hostile and damaged files in the layouts of RAG frameworks' stores (Chroma, LangChain FAISS,
LlamaIndex FAISS): each is warned of at commit (refused with --strict) and refused by a
checkout's smoke checks with one line (exit 9, nothing swapped in), never a crash, a hang, a
traceback, an internal error or unbounded memory. The CLI runs in a subprocess, so a crash
fails the test instead of killing the test run."""

from __future__ import annotations

import json
import sqlite3
import struct
import subprocess
from pathlib import Path

import faiss
import numpy as np
import pytest

from casnap.formats import chroma, llamaindex
from tests.helpers_memory import run_measured
from tests.helpers_rag import evolve_chroma, make_chroma
from tests.helpers_reliability import run_casnap
from tests.helpers_smoke import CHECK_FAILED
from tests.util import raw_tree


def cli(
    repo: Path, data: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, on repo and data."""
    return run_casnap(["--repo", str(repo), "--data", str(data), *args], timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """stderr of a refused run, checked to be one `casnap:` line with no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("casnap: warning")]
    assert len(lines) == 1 and lines[0].startswith("casnap: "), result.stderr
    return lines[0]


def flat_index(path: Path, n: int = 2, d: int = 4) -> None:
    """A small IndexFlatL2 written by FAISS."""
    path.parent.mkdir(parents=True, exist_ok=True)
    index = faiss.IndexFlatL2(d)
    index.add(np.random.default_rng(7).standard_normal((n, d)).astype("float32"))
    faiss.write_index(index, str(path))


def chroma_store(data: Path, n: int = 200) -> Path:
    """A real Chroma store of n documents in data/chroma; its HNSW segment folder."""
    make_chroma(data, n=n)
    (segment,) = [p.parent for p in (data / "chroma").glob("*/header.bin")]
    return segment


def assert_refused_everywhere(repo: Path, data: Path, reason: str) -> None:
    """Commit --strict refuses (exit 9); a plain commit warns even with -q; checkout and verify
    --smoke of that snapshot fail with exit 9 and a one-line reason, nothing swapped in."""
    strict = cli(repo, data, "commit", "--strict")
    assert strict.returncode == CHECK_FAILED, strict.stderr
    assert reason in one_line_error(strict)
    done = cli(repo, data, "-q", "commit", "--tag", "bad")
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("casnap: warning: ") and reason in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    before = raw_tree(data)
    out = cli(repo, data, "checkout", "bad")
    assert out.returncode == CHECK_FAILED, out.stderr
    line = one_line_error(out)
    assert "nothing restored" in line and reason in line, line
    assert raw_tree(data) == before
    target = data.parent / "elsewhere"
    out = cli(repo, data, "checkout", "bad", "--to", str(target))
    assert out.returncode == CHECK_FAILED and reason in one_line_error(out)
    assert not target.exists() or not any(target.iterdir())
    smoke = cli(repo, data, "verify", "--smoke", "bad")
    assert smoke.returncode == CHECK_FAILED, smoke.stderr
    assert "Traceback" not in smoke.stderr


# -- a pickle nested a million deep ---------------------------------------------------------------

#: A dict whose key is a tuple nested a million deep: `{1: ((((...2...))))}` in protocol 2.
DEEP_PICKLE = b"\x80\x02}K\x01" + b"\x85" * 1_000_000 + b"K\x02s."


def test_a_deeply_nested_langchain_pickle_is_refused_not_a_crash(tmp_path: Path) -> None:
    data, repo = tmp_path / "data", tmp_path / "repo"
    flat_index(data / "fi" / "index.faiss")
    (data / "fi" / "index.pkl").write_bytes(DEEP_PICKLE)
    assert_refused_everywhere(repo, data, "nested deeper than")


def test_a_deeply_nested_chroma_pickle_is_refused_not_a_crash(tmp_path: Path) -> None:
    data, repo = tmp_path / "data", tmp_path / "repo"
    segment = chroma_store(data)
    (segment / "index_metadata.pickle").write_bytes(DEEP_PICKLE)
    assert_refused_everywhere(repo, data, "nested deeper than")


def test_a_deeply_nested_pickle_is_refused_by_import(tmp_path: Path) -> None:
    copies, repo = tmp_path / "copies", tmp_path / "repo"
    copy = copies / "data_20250101"
    flat_index(copy / "fi" / "index.faiss")
    (copy / "fi" / "index.pkl").write_bytes(DEEP_PICKLE)
    done = run_casnap(
        ["--repo", str(repo), "--data", str(tmp_path / "data"), "import", str(copies)]
    )
    assert done.returncode == 0, done.stderr
    assert "nested deeper than" in done.stderr and "Traceback" not in done.stderr


# -- chroma.sqlite3 that is not Chroma's ----------------------------------------------------------

CHROMA_TABLES = (
    "create table segments(id, scope, collection);"
    "create table max_seq_id(segment_id, seq_id);"
    "create table embeddings_queue(seq_id, operation, id, topic);"
)


def hostile_chroma(data: Path, script: str) -> None:
    """data/chroma/chroma.sqlite3 made by script, with an (empty) segment folder beside it."""
    (data / "chroma" / "seg").mkdir(parents=True)
    db = sqlite3.connect(data / "chroma" / "chroma.sqlite3")
    db.executescript(script)
    db.commit()
    db.close()


def test_a_recursive_view_named_like_a_chroma_table_is_refused_not_a_hang(tmp_path: Path) -> None:
    data, repo = tmp_path / "data", tmp_path / "repo"
    endless = (
        "create view collections as with recursive c(x) as "
        "(select 1 union all select x+1 from c) select 'c' id, 'n' name, 1 dimension from c;"
    )
    hostile_chroma(
        data, endless + CHROMA_TABLES + "create table embeddings(embedding_id, segment_id);"
    )
    assert_refused_everywhere(repo, data, "not a Chroma database")


def test_a_virtual_table_named_like_a_chroma_table_is_refused(tmp_path: Path) -> None:
    data, repo = tmp_path / "data", tmp_path / "repo"
    script = (
        "create table collections(id, name, dimension);"
        + CHROMA_TABLES
        + "create virtual table embeddings using fts5(embedding_id, segment_id);"
    )
    hostile_chroma(data, script)
    assert_refused_everywhere(repo, data, "not a Chroma database")


def test_chroma_tables_too_costly_to_read_are_refused_in_bounded_time(tmp_path: Path) -> None:
    data, repo = tmp_path / "data", tmp_path / "repo"
    # a column computed by a long expression for each of many rows: billions of steps to read
    term = "+".join(["embedding_id"] * 400)
    costly = "max(" + ", ".join([term] * 100) + ")"
    script = (
        "create table collections(id, name, dimension);"
        "insert into collections values ('c', 'n', 4);"
        + CHROMA_TABLES
        + "insert into segments values ('m', 'METADATA', 'c');"
        + f"create table embeddings(embedding_id, segment_id as ({costly}));"
        "with recursive r(x) as (select 1 union all select x + 1 from r limit 20000) "
        "insert into embeddings(embedding_id) select x from r;"
    )
    hostile_chroma(data, script)
    assert_refused_everywhere(repo, data, "could not be read in time")


def test_text_for_a_chroma_sequence_number_is_refused(tmp_path: Path) -> None:
    data, repo = tmp_path / "data", tmp_path / "repo"
    script = (
        "create table collections(id, name, dimension);"
        "insert into collections values ('c', 'n', 4);"
        + CHROMA_TABLES
        + "create table embeddings(embedding_id, segment_id);"
        "insert into segments values ('m', 'METADATA', 'c');"
        "insert into max_seq_id values ('m', 'not a number');"
    )
    hostile_chroma(data, script)
    assert_refused_everywhere(repo, data, "sequence number")


# -- damaged values in LlamaIndex's JSON files and Chroma's header.bin ---------------------------


def llamaindex_store(data: Path, index_store: object) -> Path:
    """data/storage as LlamaIndex persists a FAISS vector store: the index under a `.json`
    name, an empty docstore and the given index_store.json."""
    folder = data / "storage"
    flat_index(folder / "default__vector_store.json")
    (folder / "docstore.json").write_text(json.dumps({"docstore/data": {"n1": {}}}))
    (folder / "index_store.json").write_text(json.dumps(index_store))
    return folder


def vector_struct(data: str) -> dict[str, object]:
    """An index_store.json holding one vector index whose `__data__` text is data."""
    struct = {"__type__": "vector_store", "__data__": data}
    return {"index_store/data": {"i1": struct}}


def test_json_nested_too_deep_is_refused(tmp_path: Path) -> None:
    data, repo = tmp_path / "data", tmp_path / "repo"
    (data / "storage").mkdir(parents=True)
    (data / "storage" / "docstore.json").write_text("{}")
    (data / "storage" / "x.json").write_text("[" * 100_000)
    assert_refused_everywhere(repo, data, "x.json")


def test_a_list_for_a_node_id_is_refused(tmp_path: Path) -> None:
    data, repo = tmp_path / "data", tmp_path / "repo"
    llamaindex_store(data, vector_struct(json.dumps({"nodes_dict": {"0": ["n1"], "1": "n1"}})))
    assert_refused_everywhere(repo, data, "index_store.json")


def test_a_number_of_5000_digits_is_refused(tmp_path: Path) -> None:
    data, repo = tmp_path / "data", tmp_path / "repo"
    llamaindex_store(data, vector_struct('{"nodes_dict": {"0": "n1"}, "x": ' + "9" * 5000 + "}"))
    assert_refused_everywhere(repo, data, "index_store.json")


def test_a_sidecar_nested_too_deep_is_warned_of(tmp_path: Path) -> None:
    data, repo = tmp_path / "data", tmp_path / "repo"
    flat_index(data / "a.index")
    (data / "a.meta.json").write_text("[" * 100_000)
    done = cli(repo, data, "commit")
    assert done.returncode == 0 and "a.meta.json" in done.stderr, done.stderr
    strict = cli(repo, data, "commit", "--strict")
    assert strict.returncode == CHECK_FAILED and "a.meta.json" in one_line_error(strict)
    out = cli(repo, data, "checkout", "latest", "--to", str(tmp_path / "o"))
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr


HNSW_HEADER = struct.Struct("<iQQQQQQiiQQQdQ")


def hnsw_header(elements: int, max_m0: int, dim: int = 4, capacity: int = 16) -> bytes:
    """A header.bin whose offsets agree with max_m0 and dim, as hnswlib writes them."""
    data_offset = max_m0 * 4 + 4
    label_offset = data_offset + 4 * dim
    fields = (1, 0, capacity, elements, label_offset + 8, label_offset, data_offset, 0, 0)
    return HNSW_HEADER.pack(*fields, 16, max_m0, 16, 0.36, 100)


@pytest.mark.parametrize("max_m0", [1 << 28, 1 << 40])
def test_a_header_with_a_huge_neighbour_count_is_refused_not_allocated(
    max_m0: int, tmp_path: Path
) -> None:
    data, repo = tmp_path / "data", tmp_path / "repo"
    segment = chroma_store(data)
    (segment / "header.bin").write_bytes(hnsw_header(0, max_m0))
    for name in ("data_level0.bin", "length.bin", "link_lists.bin"):
        (segment / name).write_bytes(b"")
    assert_refused_everywhere(repo, data, "header.bin")
    result, peak = run_measured(["--repo", str(repo), "--data", str(data), "verify", "--smoke"])
    assert result.returncode == CHECK_FAILED and peak < 500_000_000, (result.stderr, peak)


# -- memory: ids compared as arrays, header fields capped by file sizes ---------------------------


def idmap2_bytes(ids: np.ndarray) -> bytes:
    """An IndexIDMap2 over an IndexFlatL2 of d=1 (zero vectors) holding ids, as FAISS writes it
    (built here directly: FAISS's own in-memory id map would cost the test far more)."""
    head = struct.Struct("<iqqq?i")
    n = len(ids)
    common = head.pack(1, n, 1 << 20, 1 << 20, True, 1)
    inner = b"IxF2" + common + struct.pack("<Q", n) + bytes(4 * n)
    return b"IxM2" + common + inner + struct.pack("<Q", n) + ids.astype("<i8").tobytes()


def test_idmap2_small_store_reads_as_faiss(tmp_path: Path) -> None:
    path = tmp_path / "i.faiss"
    path.write_bytes(idmap2_bytes(np.arange(5, 10)))
    index = faiss.read_index(str(path))
    assert index.ntotal == 5 and list(faiss.vector_to_array(index.id_map)) == [5, 6, 7, 8, 9]


def idmap_store_peak(tmp_path: Path, n: int) -> int:
    """Peak memory of committing a LlamaIndex store whose IndexIDMap2 holds n ids, only two of
    which id_map.json maps (a commit that warns)."""
    data, repo = tmp_path / f"data{n}", tmp_path / f"repo{n}"
    folder = data / "storage"
    folder.mkdir(parents=True)
    (folder / "default__vector_store.json").write_bytes(idmap2_bytes(np.arange(n)))
    maps = {"faiss_id_to_node_id_map": {"0": "n0", "1": "n1"}}
    maps["node_id_to_faiss_id_map"] = {"n0": 0, "n1": 1}
    (folder / "id_map.json").write_text(json.dumps(maps))
    (folder / "docstore.json").write_text(json.dumps({"docstore/data": {"n0": {}, "n1": {}}}))
    (folder / "index_store.json").write_text(json.dumps({"index_store/data": {}}))
    result, peak = run_measured(["--repo", str(repo), "--data", str(data), "commit"])
    assert result.returncode == 0, result.stderr
    assert f"the index holds {n} distinct ids" in result.stderr, result.stderr
    return peak


def test_idmap_ids_are_compared_in_arrays_not_python_objects(tmp_path: Path) -> None:
    n = 4_000_000
    small = idmap_store_peak(tmp_path, 10)
    large = idmap_store_peak(tmp_path, n)
    # the ids file holds 8 bytes per id; as Python ints in a list and a set they took ~120
    assert large - small < 40 * n, (small, large)


def test_ids_compared_as_arrays_count_what_sets_would() -> None:
    held = np.array([1, 1, 2, 5, 9, 9], dtype=np.int64)
    assert llamaindex._compare_ids(held, np.array([1, 2, 3], dtype=np.int64)) == (4, 2, 1)
    assert llamaindex._compare_ids(held, np.array([1, 2, 5, 9], dtype=np.int64)) == (4, 0, 0)
    assert llamaindex._compare_ids(held[:0], np.array([7], dtype=np.int64)) == (0, 0, 1)
    assert llamaindex._mapped_ids(["3", "1", "x"]) is None
    assert list(llamaindex._mapped_ids(["3", "1", "3"])) == [1, 3]


def test_labels_compared_as_arrays_count_what_sets_would() -> None:
    live = np.array([2, 4, 8], dtype=np.uint64)
    assert chroma._compare_labels([2, 4, 8], live) == (3, 0)
    assert chroma._compare_labels([2, 4, 4, 9], live) == (3, 1)
    assert chroma._compare_labels([-1, 2, 1 << 70], live) == (3, 2)
    assert chroma._compare_labels([5], live[:0]) == (1, 1)


# -- commit catches what checkout refuses ---------------------------------------------------------


def test_a_stale_chroma_header_is_refused_at_commit(tmp_path: Path) -> None:
    data, repo = tmp_path / "data", tmp_path / "repo"
    segment = chroma_store(data, n=600)
    stale = (segment / "header.bin").read_bytes()
    for round_no in range(1, 9):  # enough operations for Chroma to persist the segment again
        evolve_chroma(data, round_no)
    assert (segment / "header.bin").read_bytes() != stale
    (segment / "header.bin").write_bytes(stale)
    assert_refused_everywhere(repo, data, "data_level0.bin")


def test_a_header_of_no_elements_beside_a_pickle_of_ids_is_refused_at_commit(
    tmp_path: Path,
) -> None:
    data, repo = tmp_path / "data", tmp_path / "repo"
    segment = chroma_store(data)
    header = bytearray((segment / "header.bin").read_bytes())
    header[20:28] = (0).to_bytes(8, "little")  # the element count
    (segment / "header.bin").write_bytes(bytes(header))
    assert_refused_everywhere(repo, data, "index_metadata.pickle")


def test_a_flat_index_whose_ntotal_disagrees_with_its_vectors_is_refused_at_commit(
    tmp_path: Path,
) -> None:
    data, repo = tmp_path / "data", tmp_path / "repo"
    flat_index(data / "a.faiss", n=5)
    raw = bytearray((data / "a.faiss").read_bytes())
    raw[8:16] = (3).to_bytes(8, "little")  # ntotal, after the fourcc and d
    (data / "a.faiss").write_bytes(bytes(raw))
    assert_refused_everywhere(repo, data, "a.faiss")


def test_a_fifo_named_as_a_database_beside_its_wal_is_skipped_not_waited_on(
    tmp_path: Path,
) -> None:
    """A `-wal` file makes the scan look at the file it belongs to; a FIFO by that name was
    opened to read its header, which waits for a writer forever. It is skipped as a special file."""
    import os

    data = tmp_path / "data"
    data.mkdir()
    os.mkfifo(data / "db")
    (data / "db-wal").write_bytes(b"not a wal")
    (data / "a.txt").write_bytes(b"kept\n")
    try:
        result = cli(tmp_path / "repo", data, "commit", timeout=60)
    finally:  # a reader stuck on the FIFO gets its writer and ends
        try:
            os.close(os.open(data / "db", os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    assert result.returncode == 0, result.stderr
    assert "db: special file not stored" in result.stderr
    listed = cli(tmp_path / "repo", data, "ls", "latest").stdout.split()
    assert listed == ["a.txt", "db-wal"]
