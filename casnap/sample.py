"""Deterministic sample data: a RAG-style application data directory and its day-to-day changes.

`generate` builds `app.db` (SQLite: documents, chunks, audit_log, metrics) and `faiss/` (Flat
shards, one IVF and one HNSW index, each with a `.meta.json` sidecar); `evolve` applies one step of
the churn a live deployment sees. The quick-start demo, the tests and the storage benchmark use
them so that snapshots are taken of data that compresses and changes like the real thing.
Everything is derived from `seed` (and `step`), so runs are reproducible byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sqlite3
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

DB_NAME = "app.db"
FAISS_DIR = "faiss"
DIM = 128
HNSW_M = 16

# Names that do not make a data dir "non-empty": the placeholders kept in git.
_PLACEHOLDER_NAMES = frozenset({"README.md", ".gitkeep"})

_MIB = 1024 * 1024
_DAY = 86_400
# The sample's "now" when generate() runs (2024-01-01T00:00:00Z); evolve step s happens on day s.
_BASE_EPOCH = 1_704_067_200
_HISTORY_DAYS = 365

# Share of the size budget: the database gets a third, the FAISS indexes the rest.
_DB_SHARE = 1 / 3
# Within the database: documents + chunks, audit_log, metrics.
_DOCS_SHARE, _AUDIT_SHARE = 0.80, 0.12
# Measured on-disk bytes per row (payload, b-tree overhead and secondary indexes).
_BYTES_PER_DOC = 6_900
_BYTES_PER_AUDIT = 175
_BYTES_PER_METRIC = 95

# Within faiss/: HNSW builds slowly (single-threaded for determinism), so it is capped.
_HNSW_SHARE, _HNSW_MIN, _HNSW_MAX = 0.10, 256, 20_000
_IVF_SHARE = 0.25
_IVF_TRAIN_PER_LIST = 40  # k-means wants >= 39 points per centroid; more only slows training.
# Flat vectors are split so generate() leaves 4 full shards and a 3/4-full last one: at ~1% growth
# per evolve step the last shard fills up and a new one starts after about 6 steps.
_SHARDS_AT_GENERATE = 4.75
_N_CLUSTERS = 64
_CLUSTER_SPREAD = 0.6  # noise norm relative to a unit cluster centre: cosine ~0.85 to the centre

# Change rates per evolve step, relative to the current data.
_INSERT_RATE = 0.005
_UPDATE_RATE = 0.002
_DELETE_RATE = 0.0005
_LOG_RATE = 0.01
_VECTOR_RATE = 0.01
_VACUUM_EVERY = 4

# Independent random streams, so changing one part does not shift the others.
_S_VOCAB, _S_CENTERS, _S_DB, _S_VECTORS, _S_EVOLVE_DB, _S_EVOLVE_VECTORS = range(1, 7)

_FUNCTION_WORDS = (
    "the", "of", "and", "to", "a", "in", "is", "that", "for", "it", "as", "with", "on", "be",
    "by", "this", "are", "or", "from", "at", "which", "an", "not", "can", "we", "when", "each",
    "if", "has", "will", "all", "their", "more", "than", "into", "only", "other", "after", "per",
)  # fmt: skip
_ONSETS = (
    "", "", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
    "z", "br", "ch", "cl", "cr", "dr", "fl", "gr", "pl", "pr", "sh", "sl", "sp", "st", "str", "th",
    "tr",
)  # fmt: skip
_NUCLEI = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "ai", "ea", "ee", "io", "ou", "y")
_CODAS = ("", "", "", "", "n", "r", "s", "t", "l", "m", "nd", "nt", "rk", "st", "ng", "ck", "x")
_VOCAB_SIZE = 6_000
_ZIPF_EXPONENT = 1.05

_COLLECTIONS = (
    "handbook", "wiki", "support", "api-docs", "runbooks", "research", "legal", "product-specs",
    "blog", "meeting-notes", "onboarding", "incidents",
)  # fmt: skip
_EXTENSIONS = ("md", "md", "md", "html", "pdf", "txt")
_SERVICE_ACTORS = ("svc-ingest", "svc-reindex", "scheduler", "api-gateway")
_ACTIONS = ("query", "login", "ingest", "update", "reindex", "export", "delete")
_ACTION_WEIGHTS = (0.60, 0.10, 0.12, 0.10, 0.03, 0.02, 0.03)
# Metric name -> (median, log-spread) of a log-normal value; ratios are clipped to [0, 1].
_METRICS: dict[str, tuple[float, float]] = {
    "query_latency_ms": (38.0, 0.5),
    "ingest_latency_ms": (220.0, 0.6),
    "embedding_batch_ms": (95.0, 0.4),
    "recall_at_10": (0.93, 0.03),
    "cache_hit_ratio": (0.81, 0.08),
    "qps": (140.0, 0.35),
    "cpu_percent": (34.0, 0.45),
    "memory_mb": (2900.0, 0.15),
    "queue_depth": (6.0, 0.9),
    "index_size_mb": (410.0, 0.05),
    "db_size_mb": (190.0, 0.05),
    "errors_per_min": (0.4, 1.0),
}
_RATIO_METRICS = frozenset({"recall_at_10", "cache_hit_ratio"})


# Written by generate; evolve (and `casnap demo`) change only a data dir that holds it.
SAMPLE_MARKER = ".casnap-sample.json"

# --------------------------------------------------------------------------------------------
# Public API


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
    text = _Text(seed)
    _generate_db(data_dir / DB_NAME, db_bytes, text, _rng(seed, _S_DB))
    _generate_faiss(data_dir / FAISS_DIR, int(total) - db_bytes, _Embedder(seed, _S_VECTORS))
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
    counts = _evolve_db(db_path, step, _Text(seed), _rng(seed, _S_EVOLVE_DB, step))
    counts.update(_evolve_faiss(faiss_dir, step, _Embedder(seed, _S_EVOLVE_VECTORS, step)))
    return counts


# --------------------------------------------------------------------------------------------
# Randomness, text and time


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """A numpy generator for one purpose, derived from the seed (any int, negatives included)."""
    return np.random.default_rng([seed % 2**64, *keys])


def _pseudo_word(rnd: random.Random) -> str:
    """One pronounceable made-up word of 1-4 syllables."""
    syllables = rnd.choices((1, 2, 3, 4), weights=(3, 5, 4, 1))[0]
    return "".join(
        rnd.choice(_ONSETS) + rnd.choice(_NUCLEI) + rnd.choice(_CODAS) for _ in range(syllables)
    )


def _vocabulary(seed: int) -> list[str]:
    """Words ordered by frequency rank: English function words, then seeded made-up words.

    Shorter made-up words get the higher ranks, as in natural language.
    """
    rnd = random.Random(f"casnap-sample-vocab-{seed}")
    words: dict[str, None] = dict.fromkeys(_FUNCTION_WORDS)
    content: dict[str, None] = {}
    while len(content) < _VOCAB_SIZE:
        word = _pseudo_word(rnd)
        if len(word) > 1 and word not in words:
            content[word] = None
    ranked = sorted(content, key=lambda w: len(w) + rnd.random() * 6)
    return [*words, *ranked]


class _Text:
    """Pseudo-text from a seeded vocabulary with Zipf word frequencies and sentence punctuation."""

    def __init__(self, seed: int) -> None:
        vocab = _vocabulary(seed)
        self.vocab = vocab
        n = len(vocab)
        weights = 1.0 / np.arange(1, n + 1) ** _ZIPF_EXPONENT
        self._cdf = np.cumsum(weights) / weights.sum()
        self._cdf[-1] = 1.0
        # Word forms: plain, end of sentence, sentence start, one-word sentence, before a comma.
        caps = [w.capitalize() for w in vocab]
        self._forms = np.array(
            [*vocab, *(w + "." for w in vocab), *caps, *(w + "." for w in caps),
             *(w + "," for w in vocab)],
            dtype=object,
        )  # fmt: skip
        self._n = n
        self.actors = [*_SERVICE_ACTORS, *self._people(seed)]

    def _people(self, seed: int) -> list[str]:
        """User names like `brai.stolm` for the audit log."""
        rnd = random.Random(f"casnap-sample-people-{seed}")
        return [f"{_pseudo_word(rnd)}.{_pseudo_word(rnd)}" for _ in range(20)]

    def ranks(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n word indices drawn with Zipf frequencies."""
        return np.searchsorted(self._cdf, rng.random(n), side="right")

    def words(self, rng: np.random.Generator, n: int) -> list[str]:
        """n plain lower-case words."""
        return [self.vocab[i] for i in self.ranks(rng, n)]

    def _blob(self, rng: np.random.Generator, n_words: int) -> str:
        """Running text of n_words words: sentences of ~15 words, some commas."""
        ranks = self.ranks(rng, n_words)
        ends = rng.random(n_words) < 1 / 15
        starts = np.roll(ends, 1)
        starts[0] = True
        commas = (rng.random(n_words) < 0.06) & ~ends
        form = np.where(commas, 4, 0)
        form = np.where(ends, 1, form)
        form = np.where(starts, np.where(ends, 3, 2), form)
        return " ".join(self._forms[ranks + form * self._n].tolist())

    def pieces(self, rng: np.random.Generator, lengths: Sequence[int]) -> list[str]:
        """One text per requested length, each whole sentences and about that many characters."""
        total = int(sum(lengths))
        blob = self._blob(rng, total // 6 + 32 * len(lengths) + 64)
        out: list[str] = []
        start = 0
        for length in lengths:
            end = blob.find(". ", start + max(int(length) - 50, 1))
            while end < 0:
                blob += " " + self._blob(rng, 2 * int(length) // 6 + 64)
                end = blob.find(". ", start + max(int(length) - 50, 1))
            out.append(blob[start : end + 1])
            start = end + 2
        return out

    def title(self, rng: np.random.Generator) -> str:
        """A 3-8 word title in title case, made of content words only."""
        ranks = self.ranks(rng, int(rng.integers(3, 9))) + len(_FUNCTION_WORDS)
        return " ".join(self.vocab[min(r, self._n - 1)].capitalize() for r in ranks)


def _iso(ts: np.ndarray | Sequence[int]) -> list[str]:
    """Unix seconds -> ISO-8601 UTC strings like 2024-01-01T00:00:00Z."""
    arr = np.asarray(ts, dtype="int64").astype("datetime64[s]")
    return [s + "Z" for s in np.datetime_as_string(arr, unit="s").tolist()]


def _times(rng: np.random.Generator, n: int, t0: int, t1: int) -> list[str]:
    """n sorted ISO timestamps uniformly spread over [t0, t1)."""
    return _iso(np.sort(rng.integers(t0, t1, size=n)))


# --------------------------------------------------------------------------------------------
# SQLite

_SCHEMA = """
CREATE TABLE documents (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE chunks (
    id INTEGER PRIMARY KEY,
    document_id INTEGER NOT NULL REFERENCES documents(id),
    ordinal INTEGER NOT NULL,
    text TEXT NOT NULL,
    embedding_id INTEGER
);
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT
);
CREATE TABLE metrics (
    id INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL NOT NULL
);
"""

_INDEXES = """
CREATE INDEX idx_documents_source ON documents(source);
CREATE INDEX idx_chunks_document ON chunks(document_id, ordinal);
CREATE INDEX idx_chunks_embedding ON chunks(embedding_id);
CREATE INDEX idx_audit_log_ts ON audit_log(ts);
CREATE INDEX idx_metrics_name_ts ON metrics(name, ts);
"""

_INSERT_DOC = "INSERT INTO documents (id, title, source, created_at, body) VALUES (?, ?, ?, ?, ?)"
_INSERT_CHUNK = (
    "INSERT INTO chunks (id, document_id, ordinal, text, embedding_id) VALUES (?, ?, ?, ?, ?)"
)
_INSERT_AUDIT = "INSERT INTO audit_log (ts, actor, action, detail) VALUES (?, ?, ?, ?)"
_INSERT_METRIC = "INSERT INTO metrics (ts, name, value) VALUES (?, ?, ?)"

_DOC_BATCH = 1_000  # documents generated per batch, to bound memory on large sizes


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN ... COMMIT on an autocommit connection, ROLLBACK on error."""
    conn.execute("BEGIN")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _doc_rows(
    rng: np.random.Generator,
    text: _Text,
    first_id: int,
    first_chunk_id: int,
    first_embedding_id: int,
    created_at: list[str],
) -> tuple[list[tuple[int, str, str, str, str]], list[tuple[int, int, int, str, int]]]:
    """Rows for len(created_at) new documents and their 2-6 chunks each."""
    n = len(created_at)
    titles = [text.title(rng) for _ in range(n)]
    bodies = text.pieces(rng, rng.integers(1000, 2001, size=n).tolist())
    n_chunks = rng.integers(2, 7, size=n).tolist()
    chunk_texts = text.pieces(rng, rng.integers(500, 1501, size=sum(n_chunks)).tolist())
    collections = rng.integers(0, len(_COLLECTIONS), size=n).tolist()
    extensions = rng.integers(0, len(_EXTENSIONS), size=n).tolist()
    docs: list[tuple[int, str, str, str, str]] = []
    chunks: list[tuple[int, int, int, str, int]] = []
    chunk_id, embedding_id = first_chunk_id, first_embedding_id
    for i in range(n):
        doc_id = first_id + i
        slug = "-".join(titles[i].lower().split())[:60]
        source = f"{_COLLECTIONS[collections[i]]}/{slug}-{doc_id}.{_EXTENSIONS[extensions[i]]}"
        docs.append((doc_id, titles[i], source, created_at[i], bodies[i]))
        for ordinal in range(n_chunks[i]):
            body = chunk_texts[chunk_id - first_chunk_id]
            chunks.append((chunk_id, doc_id, ordinal, body, embedding_id))
            chunk_id += 1
            embedding_id += 1
    return docs, chunks


def _event_detail(rng: np.random.Generator, text: _Text, action: str, max_doc_id: int) -> str:
    """A JSON detail string for one audit event of the given action."""
    if action == "query":
        query = " ".join(text.words(rng, int(rng.integers(2, 7))))
        latency = round(float(rng.lognormal(math.log(38.0), 0.5)), 1)
        hits = int(rng.integers(0, 11))
        return f'{{"q": "{query}", "k": 10, "hits": {hits}, "latency_ms": {latency}}}'
    if action == "login":
        a, b, c = rng.integers(0, 8), rng.integers(0, 256), rng.integers(1, 255)
        return f'{{"ip": "10.{a}.{b}.{c}", "method": "sso"}}'
    if action == "reindex":
        index = ("ivf", "hnsw", "shards")[int(rng.integers(0, 3))]
        return f'{{"index": "{index}", "vectors": {int(rng.integers(100, 50_000))}}}'
    if action == "export":
        return f'{{"format": "jsonl", "rows": {int(rng.integers(10, 10_000))}}}'
    doc_id = int(rng.integers(1, max(max_doc_id, 1) + 1))
    if action == "ingest":
        return f'{{"document_id": {doc_id}, "chunks": {int(rng.integers(2, 7))}}}'
    if action == "update":
        return f'{{"document_id": {doc_id}, "fields": ["body"]}}'
    return f'{{"document_id": {doc_id}}}'


def _audit_rows(
    rng: np.random.Generator,
    text: _Text,
    events: list[tuple[str, str]],
    n_random: int,
    max_doc_id: int,
    t0: int,
    t1: int,
) -> list[tuple[str, str, str, str]]:
    """Audit rows for the given (action, detail) events plus n_random background events.

    Events are shuffled and get sorted timestamps in [t0, t1), like an append-only log.
    """
    actions = rng.choice(len(_ACTIONS), size=n_random, p=_ACTION_WEIGHTS).tolist()
    events = events + [
        (_ACTIONS[a], _event_detail(rng, text, _ACTIONS[a], max_doc_id)) for a in actions
    ]
    order = rng.permutation(len(events)).tolist()
    ts = _times(rng, len(events), t0, t1)
    actor_weights = np.array([8.0] * len(_SERVICE_ACTORS) + [1.0] * (len(text.actors) - 4))
    actors = rng.choice(len(text.actors), size=len(events), p=actor_weights / actor_weights.sum())
    return [
        (ts[i], text.actors[a], events[j][0], events[j][1])
        for i, (j, a) in enumerate(zip(order, actors.tolist(), strict=True))
    ]


def _metric_rows(
    rng: np.random.Generator, n: int, t0: int, t1: int
) -> list[tuple[str, str, float]]:
    """n metric samples with per-metric log-normal values and sorted timestamps in [t0, t1)."""
    names = list(_METRICS)
    which = rng.integers(0, len(names), size=n)
    medians = np.array([_METRICS[m][0] for m in names])[which]
    spreads = np.array([_METRICS[m][1] for m in names])[which]
    values = medians * np.exp(rng.standard_normal(n) * spreads)
    ratio = np.isin(which, [names.index(m) for m in _RATIO_METRICS])
    values = np.where(ratio, np.clip(values, 0.0, 1.0), values).round(3)
    ts = _times(rng, n, t0, t1)
    return [(t, names[w], v) for t, w, v in zip(ts, which.tolist(), values.tolist(), strict=True)]


def _generate_db(path: Path, target_bytes: int, text: _Text, rng: np.random.Generator) -> None:
    """Write app.db with about target_bytes of documents, chunks, audit log and metrics."""
    n_docs = max(4, round(target_bytes * _DOCS_SHARE / _BYTES_PER_DOC))
    n_audit = max(16, round(target_bytes * _AUDIT_SHARE / _BYTES_PER_AUDIT))
    n_metrics = max(16, round(target_bytes * (1 - _DOCS_SHARE - _AUDIT_SHARE) / _BYTES_PER_METRIC))
    t0, t1 = _BASE_EPOCH - _HISTORY_DAYS * _DAY, _BASE_EPOCH
    created = _times(rng, n_docs, t0, t1)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA page_size = 4096")
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("PRAGMA synchronous = OFF")
        conn.executescript(_SCHEMA)
        with _transaction(conn):
            chunk_id = 1
            for start in range(0, n_docs, _DOC_BATCH):
                batch = created[start : start + _DOC_BATCH]
                docs, chunks = _doc_rows(rng, text, start + 1, chunk_id, chunk_id - 1, batch)
                conn.executemany(_INSERT_DOC, docs)
                conn.executemany(_INSERT_CHUNK, chunks)
                chunk_id += len(chunks)
        with _transaction(conn):
            conn.executemany(_INSERT_AUDIT, _audit_rows(rng, text, [], n_audit, n_docs, t0, t1))
        with _transaction(conn):
            conn.executemany(_INSERT_METRIC, _metric_rows(rng, n_metrics, t0, t1))
        conn.executescript(_INDEXES)


def _count(conn: sqlite3.Connection, sql: str) -> int:
    """The single integer a scalar query returns (0 for NULL)."""
    value = conn.execute(sql).fetchone()[0]
    return int(value or 0)


def _evolve_db(path: Path, step: int, text: _Text, rng: np.random.Generator) -> dict[str, int]:
    """One step of database churn: inserts, updates, deletes, log appends, periodic VACUUM."""
    t0, t1 = _BASE_EPOCH + (step - 1) * _DAY, _BASE_EPOCH + step * _DAY
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        doc_ids = np.array([r[0] for r in conn.execute("SELECT id FROM documents ORDER BY id")])
        chunk_rows = np.array(
            conn.execute("SELECT id, document_id FROM chunks ORDER BY id").fetchall(),
            dtype=np.int64,
        ).reshape(-1, 2)
        n_docs, n_chunks = len(doc_ids), len(chunk_rows)
        n_audit = _count(conn, "SELECT count(*) FROM audit_log")
        n_metrics = _count(conn, "SELECT count(*) FROM metrics")
        next_doc = _count(conn, "SELECT max(id) FROM documents") + 1
        next_chunk = _count(conn, "SELECT max(id) FROM chunks") + 1
        next_embedding = _count(conn, "SELECT max(embedding_id) FROM chunks") + 1

        n_delete = min(n_docs, max(1, round(n_docs * _DELETE_RATE)))
        deleted = np.sort(rng.choice(doc_ids, size=n_delete, replace=False)) if n_delete else []
        live_chunks = chunk_rows[~np.isin(chunk_rows[:, 1], deleted), 0]
        live_docs = doc_ids[~np.isin(doc_ids, deleted)]
        n_update = max(1, round((n_docs + n_chunks) * _UPDATE_RATE))
        n_update_docs = min(len(live_docs), n_update // 4)
        n_update_chunks = min(len(live_chunks), n_update - n_update_docs)
        upd_docs = np.sort(rng.choice(live_docs, size=n_update_docs, replace=False)).tolist()
        upd_chunks = np.sort(rng.choice(live_chunks, size=n_update_chunks, replace=False)).tolist()
        n_insert = max(1, round(n_docs * _INSERT_RATE))

        created = _times(rng, n_insert, t0, t1)
        docs, chunks = _doc_rows(rng, text, next_doc, next_chunk, next_embedding, created)
        bodies = text.pieces(rng, rng.integers(1000, 2001, size=len(upd_docs)).tolist())
        texts = text.pieces(rng, rng.integers(500, 1501, size=len(upd_chunks)).tolist())
        per_doc = Counter(c[1] for c in chunks)
        events = [("ingest", f'{{"document_id": {d[0]}, "chunks": {per_doc[d[0]]}}}') for d in docs]
        events += [("update", f'{{"document_id": {d}, "fields": ["body"]}}') for d in upd_docs]
        events += [("delete", f'{{"document_id": {int(d)}}}') for d in deleted]
        max_doc = next_doc + n_insert - 1
        audit = _audit_rows(rng, text, events, max(1, round(n_audit * _LOG_RATE)), max_doc, t0, t1)
        metrics = _metric_rows(rng, max(1, round(n_metrics * _LOG_RATE)), t0, t1)

        rows_deleted = 0
        with _transaction(conn):
            for doc_id in deleted:
                rows_deleted += conn.execute(
                    "DELETE FROM chunks WHERE document_id = ?", (int(doc_id),)
                ).rowcount
                rows_deleted += conn.execute(
                    "DELETE FROM documents WHERE id = ?", (int(doc_id),)
                ).rowcount
            conn.executemany(
                "UPDATE documents SET body = ? WHERE id = ?", zip(bodies, upd_docs, strict=True)
            )
            conn.executemany(
                "UPDATE chunks SET text = ? WHERE id = ?", zip(texts, upd_chunks, strict=True)
            )
            conn.executemany(_INSERT_DOC, docs)
            conn.executemany(_INSERT_CHUNK, chunks)
            conn.executemany(_INSERT_AUDIT, audit)
            conn.executemany(_INSERT_METRIC, metrics)
        vacuumed = step % _VACUUM_EVERY == 0
        if vacuumed:
            conn.execute("VACUUM")
    return {
        "docs_inserted": len(docs),
        "chunks_inserted": len(chunks),
        "rows_updated": len(upd_docs) + len(upd_chunks),
        "rows_deleted": rows_deleted,
        "audit_rows": len(audit),
        "metric_rows": len(metrics),
        "vacuumed": int(vacuumed),
    }


# --------------------------------------------------------------------------------------------
# FAISS


class _Embedder:
    """Unit-length float32 vectors from a seeded mixture of Gaussian clusters (topics)."""

    def __init__(self, seed: int, *keys: int) -> None:
        centers_rng = _rng(seed, _S_CENTERS)
        centers = centers_rng.standard_normal((_N_CLUSTERS, DIM))
        self._centers = (centers / np.linalg.norm(centers, axis=1, keepdims=True)).astype(
            np.float32
        )
        self._weights = centers_rng.dirichlet(np.full(_N_CLUSTERS, 1.5))
        self.rng = _rng(seed, *keys)

    def __call__(self, n: int) -> np.ndarray:
        """n embeddings, shape (n, DIM), float32, C-contiguous."""
        labels = self.rng.choice(_N_CLUSTERS, size=n, p=self._weights)
        noise = self.rng.standard_normal((n, DIM), dtype=np.float32)
        x = self._centers[labels] + noise * np.float32(_CLUSTER_SPREAD / math.sqrt(DIM))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return np.ascontiguousarray(x, dtype=np.float32)


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Run FAISS on one thread: parallel HNSW insertion builds a scheduling-dependent graph."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _write_index(index: faiss.Index, path: Path) -> None:
    """Write an index via a temporary file and rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, path)


def _meta_path(index_path: Path) -> Path:
    """`faiss/x.index` -> `faiss/x.meta.json`."""
    return index_path.with_name(index_path.stem + ".meta.json")


def _read_meta(index_path: Path) -> dict[str, Any]:
    """The parsed sidecar of an index."""
    return json.loads(_meta_path(index_path).read_text(encoding="utf-8"))


def _write_meta(index_path: Path, meta: dict[str, Any]) -> None:
    """Write the `<name>.meta.json` sidecar, atomically and with stable key order."""
    path = _meta_path(index_path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _save(index: faiss.Index, path: Path, when: str, extra: dict[str, Any]) -> None:
    """Write a new index and its sidecar."""
    _write_index(index, path)
    meta: dict[str, Any] = {
        "name": path.stem,
        "file": path.name,
        "type": type(index).__name__,
        "dim": int(index.d),
        "ntotal": int(index.ntotal),
        "metric": "L2" if index.metric_type == faiss.METRIC_L2 else "IP",
        "created_at": when,
        "updated_at": when,
        **extra,
    }
    _write_meta(path, meta)


def _update(index: faiss.Index, path: Path, when: str) -> None:
    """Rewrite a changed index and refresh ntotal/updated_at in its sidecar."""
    _write_index(index, path)
    meta = _read_meta(path)
    meta["ntotal"] = int(index.ntotal)
    meta["updated_at"] = when
    _write_meta(path, meta)


def _shard_path(faiss_dir: Path, number: int) -> Path:
    """Path of Flat shard number `number` (shard_000.index, shard_001.index, ...)."""
    return faiss_dir / f"shard_{number:03d}.index"


def _nlist_for(n_vectors: int) -> int:
    """Power of two near sqrt(n), clamped to 64..256: the usual IVF rule of thumb."""
    return min(256, max(64, 2 ** round(math.log2(max(math.sqrt(n_vectors), 1.0)))))


def _generate_faiss(faiss_dir: Path, target_bytes: int, embed: _Embedder) -> None:
    """Write Flat shards, an IVF and an HNSW index with about target_bytes in total."""
    faiss_dir.mkdir(parents=True, exist_ok=True)
    when = _iso([_BASE_EPOCH])[0]
    vec_bytes = DIM * 4
    hnsw_vec_bytes = vec_bytes + 4 * 2 * HNSW_M + 32  # vectors, level-0 links, upper levels
    n_hnsw = min(_HNSW_MAX, max(_HNSW_MIN, int(target_bytes * _HNSW_SHARE / hnsw_vec_bytes)))
    n_ivf = max(256, int(target_bytes * _IVF_SHARE / (vec_bytes + 8)))
    flat_bytes = target_bytes - n_hnsw * hnsw_vec_bytes - n_ivf * (vec_bytes + 8)
    n_flat = max(64, flat_bytes // vec_bytes)

    capacity = max(16, math.ceil(n_flat / _SHARDS_AT_GENERATE))
    for number, start in enumerate(range(0, n_flat, capacity)):
        shard = faiss.IndexFlatL2(DIM)
        shard.add(embed(min(capacity, n_flat - start)))
        _save(shard, _shard_path(faiss_dir, number), when, {"capacity": capacity})

    nlist = _nlist_for(n_ivf)
    quantizer = faiss.IndexFlatL2(DIM)
    ivf = faiss.IndexIVFFlat(quantizer, DIM, nlist, faiss.METRIC_L2)
    with _single_thread():
        ivf.train(embed(nlist * _IVF_TRAIN_PER_LIST))
    ivf.add(embed(n_ivf))
    _save(ivf, faiss_dir / "ivf.index", when, {"nlist": nlist})

    hnsw = faiss.IndexHNSWFlat(DIM, HNSW_M)
    with _single_thread():
        hnsw.add(embed(n_hnsw))
    extra = {"M": HNSW_M, "ef_construction": int(hnsw.hnsw.efConstruction)}
    _save(hnsw, faiss_dir / "hnsw.index", when, extra)


def _evolve_faiss(faiss_dir: Path, step: int, embed: _Embedder) -> dict[str, int]:
    """Append ~1% vectors to the last shard (spilling into new shards), the IVF and the HNSW."""
    when = _iso([_BASE_EPOCH + step * _DAY])[0]
    shards = sorted(faiss_dir.glob("shard_*.index"))
    if not shards:
        raise FileNotFoundError(f"no shard_*.index in {faiss_dir}")
    metas = [_read_meta(p) for p in shards]
    n_flat = sum(int(m["ntotal"]) for m in metas)
    last, last_meta = shards[-1], metas[-1]
    capacity = int(last_meta["capacity"])
    vectors = embed(max(1, round(n_flat * _VECTOR_RATE)))
    added = len(vectors)
    changed = 0

    room = max(0, capacity - int(last_meta["ntotal"]))
    if room:
        shard = faiss.read_index(str(last))
        shard.add(vectors[:room])
        _update(shard, last, when)
        changed += 1
    rest = vectors[room:]
    number = int(last.stem.split("_")[1]) + 1
    new_shards = 0
    while len(rest):
        shard = faiss.IndexFlatL2(DIM)
        shard.add(rest[:capacity])
        _save(shard, _shard_path(faiss_dir, number), when, {"capacity": capacity})
        rest = rest[capacity:]
        number += 1
        new_shards += 1

    for name in ("ivf.index", "hnsw.index"):
        path = faiss_dir / name
        if not path.is_file():
            continue
        index = faiss.read_index(str(path))
        more = embed(max(1, round(index.ntotal * _VECTOR_RATE)))
        with _single_thread():
            index.add(more)
        _update(index, path, when)
        added += len(more)
        changed += 1

    return {
        "vectors_added": added,
        "new_shards": new_shards,
        "indexes_changed": changed + new_shards,
    }
