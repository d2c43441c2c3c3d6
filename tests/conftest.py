"""Shared fixtures: a small but real SQLite + FAISS data dir that evolves step by step."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest

from casnap.repository import Repository


@pytest.fixture(autouse=True)
def _interrupts_as_a_terminal_gives_them() -> None:
    """The commands a test starts get Ctrl-C as a terminal gives it, however the suite was
    started: a suite run as a shell script's background job (`pytest ... &`) ignores SIGINT,
    every process it starts inherits that, and the tests that send casnap a SIGINT saw it
    ignored."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


DIM = 16
WORDS = [f"w{i:03d}" for i in range(400)]


def _text(rng: np.random.Generator, n: int) -> str:
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n))


def write_index(index: faiss.Index, path: Path) -> None:
    """Write a FAISS index and its .meta.json sidecar."""
    faiss.write_index(index, str(path))
    meta = {"ntotal": int(index.ntotal), "dim": DIM, "type": type(index).__name__}
    path.with_suffix(".meta.json").write_text(json.dumps(meta))


def make_app(data: Path, seed: int = 0, rows: int = 400, vectors: int = 600) -> None:
    """A data dir with app.db (WAL off) and Flat, IVF and HNSW indexes with sidecars."""
    rng = np.random.default_rng(seed)
    data.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(data / "app.db")) as db:
        db.execute("CREATE TABLE docs(id INTEGER PRIMARY KEY, title TEXT, body TEXT)")
        db.execute("CREATE INDEX docs_title ON docs(title)")
        db.executemany(
            "INSERT INTO docs(title, body) VALUES (?, ?)",
            [(_text(rng, 3), _text(rng, 120)) for _ in range(rows)],
        )
        db.commit()
    fdir = data / "faiss"
    fdir.mkdir(exist_ok=True)
    x = rng.standard_normal((vectors, DIM)).astype("float32")
    flat = faiss.IndexFlatL2(DIM)
    flat.add(x)
    write_index(flat, fdir / "shard_000.index")
    quant = faiss.IndexFlatL2(DIM)
    ivf = faiss.IndexIVFFlat(quant, DIM, 8)
    ivf.train(x)
    ivf.add(x)
    write_index(ivf, fdir / "ivf.index")
    hnsw = faiss.IndexHNSWFlat(DIM, 8)
    hnsw.add(x[:200])
    write_index(hnsw, fdir / "hnsw.index")


def evolve_app(data: Path, step: int) -> None:
    """One step of change: rows inserted/updated/deleted, vectors added to Flat and IVF."""
    rng = np.random.default_rng(1000 + step)
    with contextlib.closing(sqlite3.connect(data / "app.db")) as db:
        db.executemany(
            "INSERT INTO docs(title, body) VALUES (?, ?)",
            [(_text(rng, 3), _text(rng, 120)) for _ in range(20)],
        )
        db.execute("UPDATE docs SET body = ? WHERE id = ?", (_text(rng, 100), step * 7 + 1))
        db.execute("DELETE FROM docs WHERE id = ?", (step * 11 + 2,))
        db.commit()
    fdir = data / "faiss"
    x = rng.standard_normal((30, DIM)).astype("float32")
    for name in ("shard_000.index", "ivf.index"):
        idx = faiss.read_index(str(fdir / name))
        idx.add(x)
        write_index(idx, fdir / name)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every regular file under root, by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def app(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    make_app(data)
    return data


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(tmp_path / "repo")


@pytest.fixture(autouse=True)
def private_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """casnap's user cache dir (checkout's record of restored files) inside the test's tmp."""
    monkeypatch.setenv("CASNAP_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def host_name(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Sets the name of the host casnap runs on (fsutil.hostname) from then on: hosts
    sharing a repository, played in one process. It starts as app-1."""
    now = {"name": "app-1"}
    monkeypatch.setattr("casnap.fsutil.hostname", lambda: now["name"])
    return lambda name: now.__setitem__("name", name)


# the S3 test server (a moto subprocess on 127.0.0.1) and its per-test environment and bucket
from tests.s3server import quick_retries, s3_bucket, s3_env, s3_server  # noqa: E402, F401
