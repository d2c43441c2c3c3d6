"""A small real app data dir (SQLite + FAISS, sidecars) for the smoke, diff and progress tests."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import faiss
import numpy as np

from casnap.errors import EXIT_CODES

DIM = 8
DOCS = 60
VECTORS = 300
FLAT_VECTORS = 4000  # 125 KiB: enough chunks that an append leaves most of them shared
CHECK_FAILED = EXIT_CODES["check-failed"]


def write_index(index: faiss.Index, path: Path, ntotal: int | None = None) -> None:
    """Write an index and its `.meta.json` sidecar (stating ntotal, or the given count)."""
    faiss.write_index(index, str(path))
    count = int(index.ntotal) if ntotal is None else ntotal
    meta = {"ntotal": count, "dim": DIM, "type": type(index).__name__}
    path.with_suffix(".meta.json").write_text(json.dumps(meta))


def make_app(data: Path, seed: int = 7) -> Path:
    """app.db (documents, tags) and faiss/{flat,ivf,hnsw}.index with sidecars."""
    rng = np.random.default_rng(seed)
    data.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(data / "app.db")) as db:
        db.execute("CREATE TABLE documents(id INTEGER PRIMARY KEY, title TEXT, body TEXT)")
        db.execute("CREATE TABLE tags(name TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID")
        db.executemany(
            "INSERT INTO documents(title, body) VALUES (?, ?)",
            [(f"doc {i}", "body " * int(rng.integers(5, 50))) for i in range(DOCS)],
        )
        db.executemany("INSERT INTO tags VALUES (?, ?)", [(f"t{i}", i) for i in range(10)])
        db.commit()
    fdir = data / "faiss"
    fdir.mkdir(exist_ok=True)
    x = rng.standard_normal((VECTORS, DIM)).astype("float32")
    flat = faiss.IndexFlatL2(DIM)
    flat.add(rng.standard_normal((FLAT_VECTORS, DIM)).astype("float32"))
    write_index(flat, fdir / "flat.index")
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(DIM), DIM, 4)
    ivf.cp.min_points_per_centroid = 1
    ivf.train(x)
    ivf.add(x)
    write_index(ivf, fdir / "ivf.index")
    hnsw = faiss.IndexHNSWFlat(DIM, 8)
    hnsw.add(x[:100])
    write_index(hnsw, fdir / "hnsw.index")
    return data


def evolve_app(data: Path, step: int = 1) -> None:
    """One step: documents +5 -1 (and 1 updated), 7 vectors added to flat and ivf."""
    rng = np.random.default_rng(100 + step)
    with contextlib.closing(sqlite3.connect(data / "app.db")) as db:
        db.executemany(
            "INSERT INTO documents(title, body) VALUES (?, ?)",
            [(f"new {step}.{i}", "fresh " * 20) for i in range(5)],
        )
        db.execute("DELETE FROM documents WHERE id = ?", (step * 3,))
        db.execute("UPDATE documents SET body = 'edited' WHERE id = ?", (step * 3 + 1,))
        db.commit()
    x = rng.standard_normal((7, DIM)).astype("float32")
    for name in ("flat.index", "ivf.index"):
        path = data / "faiss" / name
        idx = faiss.read_index(str(path))
        idx.add(x)
        write_index(idx, path)


def break_index(path: Path, how: str) -> None:
    """Make an index FAISS cannot read: truncate it, or garbage after a valid fourcc."""
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        rng = np.random.default_rng(3)
        path.write_bytes(data[:4] + rng.integers(0, 256, len(data) - 4, dtype=np.uint8).tobytes())


def raw_tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Exact bytes and mtime of every file under root (to prove nothing was touched)."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def leftovers(root: Path) -> list[str]:
    """casnap temp files or dirs anywhere under root."""
    return [p.name for p in root.rglob("*") if p.name.startswith(".casnap-tmp")]


def listing(root: Path) -> dict[str, bytes]:
    """Every file and folder under root with its bytes (a repository, to prove nothing changed)."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else b"<dir>")
        for p in sorted(root.rglob("*"))
    }
