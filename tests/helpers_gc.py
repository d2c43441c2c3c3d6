"""Small realistic data dirs for the gc/retention/verify/stats tests: a real SQLite database and
real FAISS indexes (Flat, IVF, HNSW) with .meta.json sidecars, evolved step by step."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np

from casnap.backends.base import Backend
from casnap.committer import commit
from casnap.repository import Repository

faiss.omp_set_num_threads(1)

DIM = 32
WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
    "sigma tau upsilon phi chi psi omega vector index page snapshot chunk store retain"
).split()
SQLITE_HEADER_VOLATILE = ((24, 28), (40, 44), (92, 100))  # change counter, schema cookie, version


def _text(rng: np.random.Generator, n: int) -> str:
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n))


def _vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal((n, DIM)).astype("float32")


def _meta(path: Path, index: faiss.Index, step: int, kind: str) -> None:
    meta = {"kind": kind, "dim": DIM, "ntotal": int(index.ntotal), "step": step}
    path.with_suffix(".meta.json").write_text(json.dumps(meta, sort_keys=True) + "\n")


def make_data(root: Path, seed: int = 0) -> Path:
    """Create data dir `root`: app.db (~300 KB) and faiss/{flat,ivf,hnsw}.index + .meta.json."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(root / "app.db")) as db:
        db.executescript(
            """
            CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT);
            CREATE TABLE docs (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id),
                               title TEXT, body TEXT, score REAL);
            CREATE INDEX docs_user ON docs(user_id);
            CREATE TABLE events (id INTEGER PRIMARY KEY, doc_id INTEGER, kind TEXT, ts INTEGER);
            """
        )
        db.executemany(
            "INSERT INTO users (name, email) VALUES (?, ?)",
            [(_text(rng, 2), f"user{i}@example.org") for i in range(60)],
        )
        db.executemany(
            "INSERT INTO docs (user_id, title, body, score) VALUES (?, ?, ?, ?)",
            [
                (int(rng.integers(1, 61)), _text(rng, 4), _text(rng, 40), float(rng.random()))
                for _ in range(700)
            ],
        )
        db.executemany(
            "INSERT INTO events (doc_id, kind, ts) VALUES (?, ?, ?)",
            [(int(rng.integers(1, 701)), "view", int(i)) for i in range(900)],
        )
        db.commit()
    fdir = root / "faiss"
    fdir.mkdir(exist_ok=True)
    x = _vectors(rng, 600)
    flat = faiss.IndexFlatL2(DIM)
    flat.add(x)
    faiss.write_index(flat, str(fdir / "flat.index"))
    _meta(fdir / "flat.index", flat, 0, "flat")
    quantizer = faiss.IndexFlatL2(DIM)
    ivf = faiss.IndexIVFFlat(quantizer, DIM, 8)
    ivf.train(x)
    ivf.add(x)
    faiss.write_index(ivf, str(fdir / "ivf.index"))
    _meta(fdir / "ivf.index", ivf, 0, "ivf")
    hnsw = faiss.IndexHNSWFlat(DIM, 8)
    hnsw.add(x[:300])
    faiss.write_index(hnsw, str(fdir / "hnsw.index"))
    _meta(fdir / "hnsw.index", hnsw, 0, "hnsw")
    return root


def evolve(root: Path, step: int, seed: int = 0, faiss_too: bool = True) -> None:
    """One step of app activity: inserts, updates and deletes in app.db; vectors added to FAISS."""
    rng = np.random.default_rng(seed * 1000 + step)
    with contextlib.closing(sqlite3.connect(root / "app.db")) as db:
        n = db.execute("SELECT max(id) FROM docs").fetchone()[0]
        db.executemany(
            "INSERT INTO docs (user_id, title, body, score) VALUES (?, ?, ?, ?)",
            [
                (int(rng.integers(1, 61)), _text(rng, 4), _text(rng, 40), float(rng.random()))
                for _ in range(40)
            ],
        )
        for i in rng.integers(1, n, 20):
            db.execute("UPDATE docs SET body = ?, score = ? WHERE id = ?", (_text(rng, 35), 0.5, i))
        for i in rng.integers(1, n, 10):
            db.execute("DELETE FROM docs WHERE id = ?", (int(i),))
        db.execute("INSERT INTO events (doc_id, kind, ts) VALUES (?, 'edit', ?)", (1, step))
        db.commit()
    if not faiss_too:
        return
    fdir = root / "faiss"
    for name in ("flat", "ivf", "hnsw"):
        path = fdir / f"{name}.index"
        index = faiss.read_index(str(path))
        index.add(_vectors(rng, 30))
        faiss.write_index(index, str(path))
        _meta(path, index, step, name)


def copy_state(data: Path, dest: Path) -> Path:
    """Keep a copy of the data dir as it is now (to commit again or compare later)."""
    shutil.copytree(data, dest)
    return dest


def build_history(tmp: Path, states: int, seed: int = 0) -> tuple[Repository, Path, list[Path]]:
    """tmp/repo with one snapshot per data state; returns repo, data dir and state copies."""
    data = make_data(tmp / "data", seed)
    repo = Repository.init(tmp / "repo")
    copies = []
    for step in range(states):
        if step:
            evolve(data, step, seed)
        copies.append(copy_state(data, tmp / f"state{step}"))
        commit(repo, data, message=f"step {step}")
    return repo, data, copies


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root (relative POSIX path -> content)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def mask_sqlite(data: bytes) -> bytes:
    """A SQLite file with the header fields the backup API rewrites zeroed."""
    b = bytearray(data)
    for lo, hi in SQLITE_HEADER_VOLATILE:
        b[lo:hi] = bytes(hi - lo)
    return bytes(b)


def same_content(restored: Path, state: Path) -> bool:
    """True when restored holds exactly the files of state (SQLite: volatile fields masked)."""
    a, b = tree_bytes(restored), tree_bytes(state)
    if a.keys() != b.keys():
        return False
    for name, content in a.items():
        if name.endswith(".db"):
            if mask_sqlite(content) != mask_sqlite(b[name]):
                return False
        elif content != b[name]:
            return False
    return True


def repo_bytes(root: Path) -> int:
    """Bytes a repository occupies in files (locks and temp files excluded)."""
    return sum(
        p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and "locks" not in p.relative_to(root).parts
    )


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and mtime, to prove nothing changed."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            st = p.stat()
            out[p.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


def flip_byte(path: Path, offset: int) -> None:
    """Invert one byte of a file in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


class Crash(Exception):
    """Raised by CrashingBackend in place of a process being killed."""


class CrashingBackend(Backend):
    """Wraps a backend; the n-th put or delete under packs/ or index/ raises Crash instead."""

    def __init__(self, inner: Backend, crash_at: int) -> None:
        self.inner = inner
        self.left = crash_at
        self.crashed = False

    @property
    def location(self) -> str:
        return self.inner.location

    def _tick(self, key: str) -> None:
        if key.startswith(("packs/", "index/")):
            if self.left == 0:
                self.crashed = True
                raise Crash(key)
            self.left -= 1

    def put(self, key: str, data: bytes | memoryview) -> bool:
        self._tick(key)
        return self.inner.put(key, data)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.get(key, offset, length)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self._tick(key)
        self.inner.delete(key)
