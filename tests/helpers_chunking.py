"""Small real SQLite databases and FAISS indexes for the chunking and pipeline tests."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

DIM = 16


def words(rng: np.random.Generator, n: int) -> str:
    return " ".join(f"w{i:03d}" for i in rng.integers(0, 500, n))


def make_db(path: Path, page_size: int = 4096, rows: int = 300, seed: int = 0) -> None:
    """A SQLite database (rollback journal) with a table, an index and `rows` text rows."""
    rng = np.random.default_rng(seed)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA page_size = {page_size}")
        db.execute("CREATE TABLE docs(id INTEGER PRIMARY KEY, title TEXT, body TEXT)")
        db.execute("CREATE INDEX docs_title ON docs(title)")
        db.executemany(
            "INSERT INTO docs(title, body) VALUES (?, ?)",
            [(words(rng, 3), words(rng, 150)) for _ in range(rows)],
        )
        db.commit()


def update_rows(path: Path, n: int, seed: int = 1) -> None:
    """Rewrite the body of n rows spread over the table."""
    rng = np.random.default_rng(seed)
    with contextlib.closing(sqlite3.connect(path)) as db:
        total = db.execute("SELECT max(id) FROM docs").fetchone()[0]
        ids = rng.choice(np.arange(1, total + 1), size=n, replace=False).tolist()
        db.executemany("UPDATE docs SET body = ? WHERE id = ?", [(words(rng, 150), i) for i in ids])
        db.commit()


def make_interleaved_db(path: Path, rows: int = 400, seed: int = 0) -> None:
    """Two tables filled in turns, so their pages alternate through the file."""
    rng = np.random.default_rng(seed)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE docs(id INTEGER PRIMARY KEY, body TEXT)")
        db.execute("CREATE TABLE scratch(id INTEGER PRIMARY KEY, body TEXT)")
        for _ in range(0, rows, 20):
            for table in ("docs", "scratch"):
                batch = [(words(rng, 150),) for _ in range(20)]
                db.executemany(f"INSERT INTO {table}(body) VALUES (?)", batch)
        db.commit()


def drop_and_vacuum(path: Path) -> None:
    """Drop the scratch table and VACUUM: the pages of docs move together, unchanged."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("DROP TABLE scratch")
        db.commit()
        db.execute("VACUUM")


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype("float32")


def flat(n: int, seed: int = 0) -> faiss.Index:
    index = faiss.IndexFlatL2(DIM)
    index.add(vectors(n, seed))
    return index


def flat_ip(n: int, seed: int = 0) -> faiss.Index:
    index = faiss.IndexFlatIP(DIM)
    index.add(vectors(n, seed))
    return index


def ivf_flat(n: int, seed: int = 0, nlist: int = 8) -> faiss.Index:
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(DIM), DIM, nlist)
    index.train(vectors(max(n, 40 * nlist), seed + 100))
    index.add(vectors(n, seed))
    return index


def ivf_sq(n: int, seed: int = 0) -> faiss.Index:
    index = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatL2(DIM), DIM, 4, faiss.ScalarQuantizer.QT_8bit
    )
    index.train(vectors(max(n, 200), seed + 100))
    index.add(vectors(n, seed))
    return index


def ivf_pq(n: int, seed: int = 0) -> faiss.Index:
    index = faiss.IndexIVFPQ(faiss.IndexFlatL2(DIM), DIM, 4, 4, 4)
    index.train(vectors(max(n, 400), seed + 100))
    index.add(vectors(n, seed))
    return index


def hnsw(n: int, seed: int = 0) -> faiss.Index:
    index = faiss.IndexHNSWFlat(DIM, 8)
    index.add(vectors(n, seed))
    return index


def idmap(n: int, seed: int = 0) -> faiss.Index:
    index = faiss.IndexIDMap(faiss.IndexFlatL2(DIM))
    index.add_with_ids(vectors(n, seed), np.arange(n, dtype="int64") * 3)
    return index


# kind faiss_kind() reports -> builder
BUILDERS: dict[str, tuple[str, Callable[..., faiss.Index]]] = {
    "flat-l2": ("flat", flat),
    "flat-ip": ("flat", flat_ip),
    "ivf-flat": ("ivf", ivf_flat),
    "ivf-sq": ("ivf", ivf_sq),
    "ivf-pq": ("ivf", ivf_pq),
    "hnsw-flat": ("hnsw", hnsw),
    "idmap-flat": ("idmap", idmap),
}


def index_bytes(index: faiss.Index) -> bytes:
    """What faiss.write_index writes for index."""
    return faiss.serialize_index(index).tobytes()


def write(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))
