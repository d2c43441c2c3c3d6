"""Deterministic sample data: a RAG-style application data directory and its day-to-day changes.

`generate` builds `app.db` (SQLite: documents, chunks, audit_log, metrics) and `faiss/` (Flat
shards, one IVF and one HNSW index, each with a `.meta.json` sidecar); `evolve` applies one step of
the churn a live deployment sees. The quick-start demo, the tests and the storage benchmark use
them so that snapshots are taken of data that compresses and changes like the real thing.
Everything is derived from `seed` (and `step`), so runs are reproducible byte for byte. The
database (sample_db), the indexes (sample_faiss) and the shared random, text and time helpers
(sample_text) have modules of their own.
"""

from __future__ import annotations

import json
from pathlib import Path

from casnap.sample_db import evolve_db, generate_db
from casnap.sample_faiss import Embedder, evolve_faiss, generate_faiss
from casnap.sample_text import S_DB, S_EVOLVE_DB, S_EVOLVE_VECTORS, S_VECTORS, Text, rng_for

DB_NAME = "app.db"
FAISS_DIR = "faiss"

# Names that do not make a data dir "non-empty": the placeholders kept in git.
_PLACEHOLDER_NAMES = frozenset({"README.md", ".gitkeep"})

_MIB = 1024 * 1024

# Share of the size budget: the database gets a third, the FAISS indexes the rest.
_DB_SHARE = 1 / 3

# Written by generate; evolve (and `casnap demo`) change only a data dir that holds it.
SAMPLE_MARKER = ".casnap-sample.json"


def is_empty(data_dir: Path) -> bool:
    """True when data_dir is missing or holds nothing but README.md / .gitkeep / dotfiles."""
    data_dir = Path(data_dir)
    if not data_dir.exists():
        return True
    if not data_dir.is_dir():
        return False
    return all(p.name in _PLACEHOLDER_NAMES or p.name.startswith(".") for p in data_dir.iterdir())


def is_sample(data_dir: Path) -> bool:
    """True when data_dir was made by generate (it holds the sample marker)."""
    return (Path(data_dir) / SAMPLE_MARKER).is_file()


def generate(data_dir: Path, *, size_mb: float = 40.0, seed: int = 0) -> None:
    """Create app.db and faiss/ shards totalling roughly size_mb megabytes.

    Refuses a data dir that already holds data, so real data is never overwritten.
    """
    data_dir = Path(data_dir)
    if not size_mb > 0:
        raise ValueError(f"size_mb must be positive, got {size_mb}")
    if not is_empty(data_dir):
        raise FileExistsError(f"{data_dir} already holds data; generate needs an empty data dir")
    data_dir.mkdir(parents=True, exist_ok=True)
    total = size_mb * _MIB
    db_bytes = int(total * _DB_SHARE)
    text = Text(seed)
    generate_db(data_dir / DB_NAME, db_bytes, text, rng_for(seed, S_DB))
    generate_faiss(data_dir / FAISS_DIR, int(total) - db_bytes, Embedder(seed, S_VECTORS))
    marker = {"generator": "casnap.sample", "seed": seed, "size_mb": size_mb}
    (data_dir / SAMPLE_MARKER).write_text(json.dumps(marker) + "\n")


def evolve(data_dir: Path, step: int, *, seed: int = 0) -> dict[str, int]:
    """Apply one step of realistic change (step >= 1); return counts of what changed.

    Inserts, updates and deletes rows and appends log rows; appends vectors to the last Flat
    shard (starting a new shard when it is full), to the IVF and to the HNSW index. Older shards
    are not touched. Every few steps the database is VACUUMed.
    """
    data_dir = Path(data_dir)
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    db_path, faiss_dir = data_dir / DB_NAME, data_dir / FAISS_DIR
    if not db_path.is_file() or not faiss_dir.is_dir():
        raise FileNotFoundError(f"{data_dir} holds no sample data; run generate first")
    if not is_sample(data_dir):
        raise ValueError(f"{data_dir} was not made by generate; evolve changes only sample data")
    counts = evolve_db(db_path, step, Text(seed), rng_for(seed, S_EVOLVE_DB, step))
    counts.update(evolve_faiss(faiss_dir, step, Embedder(seed, S_EVOLVE_VECTORS, step)))
    return counts
