"""Tests for the sample data generator: determinism, validity, realism and the evolve step."""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
import zstandard

from casnap import sample, sample_faiss

TABLES = ("documents", "chunks", "audit_log", "metrics")
SIZE_MB = 2.0
OLD_MTIME_NS = 1_600_000_000_000_000_000  # 2020-09-13: a time no write during the test can give


def dump_db(data_dir: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in id order."""
    with closing(sqlite3.connect(data_dir / "app.db")) as conn:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY id").fetchall() for t in TABLES}


def faiss_bytes(data_dir: Path) -> dict[str, bytes]:
    """Contents of every file under faiss/, by name."""
    return {p.name: p.read_bytes() for p in sorted((data_dir / "faiss").iterdir())}


def read_meta(index_path: Path) -> dict[str, Any]:
    return json.loads(index_path.with_name(index_path.stem + ".meta.json").read_text())


def shards(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "faiss").glob("shard_*.index"))


def pragma(data_dir: Path, name: str) -> Any:
    with closing(sqlite3.connect(data_dir / "app.db")) as conn:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir generated once and only read by the tests that use it."""
    data_dir = tmp_path_factory.mktemp("generated") / "data"
    sample.generate(data_dir, size_mb=SIZE_MB, seed=7)
    return data_dir


def test_generate_is_deterministic(tmp_path: Path, generated: Path) -> None:
    again = tmp_path / "again"
    sample.generate(again, size_mb=SIZE_MB, seed=7)
    assert faiss_bytes(again) == faiss_bytes(generated)
    assert (again / "app.db").read_bytes() == (generated / "app.db").read_bytes()
    dump = dump_db(again)
    assert dump == dump_db(generated)
    assert all(dump[t] for t in TABLES)


def test_different_seed_gives_different_data(tmp_path: Path, generated: Path) -> None:
    other = tmp_path / "other"
    sample.generate(other, size_mb=SIZE_MB, seed=8)
    ours, theirs = faiss_bytes(generated), faiss_bytes(other)
    assert ours.keys() == theirs.keys()
    assert all(ours[n] != theirs[n] for n in ours if n.endswith(".index"))
    a, b = dump_db(generated), dump_db(other)
    assert a["documents"] != b["documents"]
    assert a["chunks"] != b["chunks"]


def test_database_is_valid_and_complete(generated: Path) -> None:
    assert pragma(generated, "integrity_check") == "ok"
    assert pragma(generated, "page_size") == 4096
    assert pragma(generated, "journal_mode") == "delete"
    assert sorted(p.name for p in generated.iterdir()) == [".casnap-sample.json", "app.db", "faiss"]
    with closing(sqlite3.connect(generated / "app.db")) as conn:
        indexed = {
            r[0] for r in conn.execute("SELECT tbl_name FROM sqlite_master WHERE type='index'")
        }
        assert set(TABLES) <= indexed
        orphans = conn.execute(
            "SELECT count(*) FROM chunks WHERE document_id NOT IN (SELECT id FROM documents)"
        ).fetchone()[0]
        assert orphans == 0
        body = conn.execute("SELECT min(length(body)), max(length(body)) FROM documents").fetchone()
        text = conn.execute("SELECT min(length(text)), max(length(text)) FROM chunks").fetchone()
        assert 900 <= body[0] and body[1] <= 2500
        assert 400 <= text[0] and text[1] <= 2000
        for (detail,) in conn.execute("SELECT detail FROM audit_log"):
            assert isinstance(json.loads(detail), dict)


def test_text_looks_and_compresses_like_real_text(generated: Path) -> None:
    with closing(sqlite3.connect(generated / "app.db")) as conn:
        texts = [r[0] for r in conn.execute("SELECT text FROM chunks")]
    blob = "\n".join(texts).encode()
    words = blob.decode().split()
    assert len(set(words)) > 1000  # a vocabulary, not one repeated string
    assert all(w.isascii() for w in words)
    assert all(t[0].isupper() and t.endswith(".") for t in texts)  # whole sentences
    ratio = len(blob) / len(zstandard.ZstdCompressor(level=3).compress(blob))
    assert 1.8 < ratio < 4.0  # random bytes give ~1, a repeated string gives >> 10
    db = (generated / "app.db").read_bytes()
    assert 1.8 < len(db) / len(zstandard.ZstdCompressor(level=3).compress(db)) < 4.5


def test_indexes_are_readable_and_match_sidecars(generated: Path) -> None:
    expected = {"ivf": faiss.IndexIVFFlat, "hnsw": faiss.IndexHNSWFlat}
    paths = sorted((generated / "faiss").glob("*.index"))
    assert len(shards(generated)) >= 3
    assert {p.stem for p in paths} >= {"ivf", "hnsw", "shard_000", "shard_001", "shard_002"}
    assert len(list((generated / "faiss").glob("*.meta.json"))) == len(paths)
    for path in paths:
        index = faiss.read_index(str(path))
        meta = read_meta(path)
        assert isinstance(index, expected.get(path.stem, faiss.IndexFlatL2)), path.name
        assert index.ntotal == meta["ntotal"] > 0
        assert index.d == meta["dim"] == sample_faiss.DIM
        assert meta["type"] == type(index).__name__
        assert index.is_trained
    capacity = read_meta(shards(generated)[0])["capacity"]
    assert all(read_meta(p)["ntotal"] == capacity for p in shards(generated)[:-1])
    assert read_meta(shards(generated)[-1])["ntotal"] < capacity


def test_vectors_are_clustered_unit_embeddings(generated: Path) -> None:
    index = faiss.read_index(str(shards(generated)[0]))
    x = index.reconstruct_n(0, index.ntotal)
    assert x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    sims = x @ x.T
    np.fill_diagonal(sims, -1.0)
    # Isotropic noise in 128 dimensions gives nearest-neighbour cosines around 0.3.
    assert np.median(sims.max(axis=1)) > 0.6
    assert np.median(sims) < 0.3  # but not one single blob either


def test_size_is_roughly_as_requested(tmp_path: Path) -> None:
    sample.generate(tmp_path / "d", size_mb=6.0, seed=1)
    db = (tmp_path / "d" / "app.db").stat().st_size
    vectors = sum(p.stat().st_size for p in (tmp_path / "d" / "faiss").glob("*.index"))
    assert 0.8 * 6 * 2**20 < db + vectors < 1.2 * 6 * 2**20
    assert 0.25 < db / (db + vectors) < 0.42


def test_evolve_changes_db_and_some_indexes_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    sample.generate(data_dir, size_mb=SIZE_MB, seed=3)
    for path in (data_dir / "faiss").iterdir():
        os.utime(path, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    before_files = faiss_bytes(data_dir)
    before_db = dump_db(data_dir)
    last = shards(data_dir)[-1]
    last_ntotal = read_meta(last)["ntotal"]

    counts = sample.evolve(data_dir, 1, seed=3)

    for key in ("docs_inserted", "rows_updated", "rows_deleted", "vectors_added"):
        assert counts[key] > 0, key
    assert counts["new_shards"] == 0
    after_db = dump_db(data_dir)
    assert len(after_db["audit_log"]) > len(before_db["audit_log"])
    assert len(after_db["metrics"]) > len(before_db["metrics"])
    assert after_db["documents"] != before_db["documents"]
    assert after_db["chunks"] != before_db["chunks"]
    assert pragma(data_dir, "integrity_check") == "ok"
    assert sorted(p.name for p in data_dir.iterdir()) == [".casnap-sample.json", "app.db", "faiss"]

    after_files = faiss_bytes(data_dir)
    assert after_files.keys() == before_files.keys()  # no temporary files left behind
    for name in ("ivf.index", "hnsw.index", last.name):
        assert after_files[name] != before_files[name], name
        index = faiss.read_index(str(data_dir / "faiss" / name))
        assert index.ntotal == read_meta(data_dir / "faiss" / name)["ntotal"]
    assert read_meta(last)["ntotal"] > last_ntotal
    untouched = shards(data_dir)[:-1]
    assert untouched
    for path in untouched:
        assert after_files[path.name] == before_files[path.name]
        assert path.stat().st_mtime_ns == OLD_MTIME_NS
        meta_path = path.with_name(path.stem + ".meta.json")
        assert meta_path.stat().st_mtime_ns == OLD_MTIME_NS


def test_evolve_is_deterministic(tmp_path: Path) -> None:
    results = []
    for name in ("a", "b"):
        sample.generate(tmp_path / name, size_mb=SIZE_MB, seed=5)
        counts = [sample.evolve(tmp_path / name, step, seed=5) for step in (1, 2, 3)]
        results.append((counts, faiss_bytes(tmp_path / name), dump_db(tmp_path / name)))
    assert results[0] == results[1]
    sample.generate(tmp_path / "c", size_mb=SIZE_MB, seed=5)
    sample.evolve(tmp_path / "c", 2, seed=5)  # a different step is a different change
    assert dump_db(tmp_path / "c") != results[0][2]


def test_evolve_starts_a_new_shard_when_the_last_is_full(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    sample.generate(data_dir, size_mb=SIZE_MB, seed=2)
    first = shards(data_dir)
    first_bytes = {p.name: p.read_bytes() for p in first[:-1]}
    capacity = read_meta(first[0])["capacity"]
    for step in range(1, 40):
        if sample.evolve(data_dir, step, seed=2)["new_shards"]:
            break
    else:
        pytest.fail("no new shard after 39 steps")
    now = shards(data_dir)
    assert len(now) == len(first) + 1
    assert read_meta(now[-2])["ntotal"] == capacity  # the old last shard was filled up first
    for path in now:
        index = faiss.read_index(str(path))
        assert index.ntotal == read_meta(path)["ntotal"] <= capacity
    assert {p.name: p.read_bytes() for p in first[:-1]} == first_bytes
    assert pragma(data_dir, "integrity_check") == "ok"


def test_evolve_vacuums_every_fourth_step(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    sample.generate(data_dir, size_mb=SIZE_MB, seed=4)
    vacuumed = [sample.evolve(data_dir, step, seed=4)["vacuumed"] for step in range(1, 4)]
    with closing(sqlite3.connect(data_dir / "app.db")) as conn, conn:
        conn.execute("DELETE FROM metrics WHERE id < 400")  # frees whole pages
    assert pragma(data_dir, "freelist_count") > 0
    size = (data_dir / "app.db").stat().st_size
    vacuumed += [sample.evolve(data_dir, step, seed=4)["vacuumed"] for step in range(4, 9)]
    assert vacuumed == [0, 0, 0, 1, 0, 0, 0, 1]
    assert pragma(data_dir, "freelist_count") == 0
    assert (data_dir / "app.db").stat().st_size < size


def test_evolve_scales_with_data_size(tmp_path: Path) -> None:
    sample.generate(tmp_path / "small", size_mb=1.0)
    sample.generate(tmp_path / "large", size_mb=8.0)
    small = sample.evolve(tmp_path / "small", 1)
    large = sample.evolve(tmp_path / "large", 1)
    assert large["vectors_added"] > 4 * small["vectors_added"]
    assert large["metric_rows"] > 4 * small["metric_rows"]
    assert large["rows_updated"] > small["rows_updated"]


def test_is_empty(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert sample.is_empty(data_dir)
    data_dir.mkdir()
    assert sample.is_empty(data_dir)
    for name in ("README.md", ".gitkeep", ".DS_Store"):
        (data_dir / name).write_text("placeholder\n")
    assert sample.is_empty(data_dir)
    sample.generate(data_dir, size_mb=0.5)
    assert not sample.is_empty(data_dir)
    assert (data_dir / "README.md").read_text() == "placeholder\n"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    assert not sample.is_empty(other)


def test_generate_refuses_existing_data_and_evolve_needs_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    sample.generate(data_dir, size_mb=0.5)
    before = dump_db(data_dir)
    with pytest.raises(FileExistsError):
        sample.generate(data_dir, size_mb=0.5, seed=1)
    assert dump_db(data_dir) == before
    with pytest.raises(ValueError):
        sample.evolve(data_dir, 0)
    with pytest.raises(FileNotFoundError):
        sample.evolve(tmp_path / "missing", 1)
    with pytest.raises(ValueError):
        sample.generate(tmp_path / "zero", size_mb=0)


def test_evolve_refuses_data_it_did_not_generate(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    sample.generate(data_dir, size_mb=2, seed=3)
    (data_dir / sample.SAMPLE_MARKER).unlink()  # now it looks like someone's own data
    before = {p: p.read_bytes() for p in data_dir.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="not made by generate"):
        sample.evolve(data_dir, 1)
    assert {p: p.read_bytes() for p in data_dir.rglob("*") if p.is_file()} == before
