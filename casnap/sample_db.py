"""The sample's SQLite database: documents and their chunks, an audit log and metrics.

generate_db writes `app.db` to a size budget; evolve_db applies one day of churn: inserts, updates,
deletes, log appends and a VACUUM every few steps.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from casnap.sample_text import BASE_EPOCH, DAY, SERVICE_ACTORS, Text, times

_HISTORY_DAYS = 365

# Within the database: documents + chunks, audit_log, metrics.
_DOCS_SHARE, _AUDIT_SHARE = 0.80, 0.12
# Measured on-disk bytes per row (payload, b-tree overhead and secondary indexes).
_BYTES_PER_DOC = 6_900
_BYTES_PER_AUDIT = 175
_BYTES_PER_METRIC = 95

# Change rates per evolve step, relative to the current data.
_INSERT_RATE = 0.005
_UPDATE_RATE = 0.002
_DELETE_RATE = 0.0005
_LOG_RATE = 0.01
_VACUUM_EVERY = 4

_COLLECTIONS = (
    "handbook", "wiki", "support", "api-docs", "runbooks", "research", "legal", "product-specs",
    "blog", "meeting-notes", "onboarding", "incidents",
)  # fmt: skip
_EXTENSIONS = ("md", "md", "md", "html", "pdf", "txt")
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
    text: Text,
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


def _event_detail(rng: np.random.Generator, text: Text, action: str, max_doc_id: int) -> str:
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
    text: Text,
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
    ts = times(rng, len(events), t0, t1)
    actor_weights = np.array([8.0] * len(SERVICE_ACTORS) + [1.0] * (len(text.actors) - 4))
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
    ts = times(rng, n, t0, t1)
    return [(t, names[w], v) for t, w, v in zip(ts, which.tolist(), values.tolist(), strict=True)]


def generate_db(path: Path, target_bytes: int, text: Text, rng: np.random.Generator) -> None:
    """Write app.db with about target_bytes of documents, chunks, audit log and metrics."""
    n_docs = max(4, round(target_bytes * _DOCS_SHARE / _BYTES_PER_DOC))
    n_audit = max(16, round(target_bytes * _AUDIT_SHARE / _BYTES_PER_AUDIT))
    n_metrics = max(16, round(target_bytes * (1 - _DOCS_SHARE - _AUDIT_SHARE) / _BYTES_PER_METRIC))
    t0, t1 = BASE_EPOCH - _HISTORY_DAYS * DAY, BASE_EPOCH
    created = times(rng, n_docs, t0, t1)
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


def evolve_db(path: Path, step: int, text: Text, rng: np.random.Generator) -> dict[str, int]:
    """One step of database churn: inserts, updates, deletes, log appends, periodic VACUUM."""
    t0, t1 = BASE_EPOCH + (step - 1) * DAY, BASE_EPOCH + step * DAY
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
        deleted: np.ndarray | list[int] = (
            np.sort(rng.choice(doc_ids, size=n_delete, replace=False)) if n_delete else []
        )
        live_chunks = chunk_rows[~np.isin(chunk_rows[:, 1], deleted), 0]
        live_docs = doc_ids[~np.isin(doc_ids, deleted)]
        n_update = max(1, round((n_docs + n_chunks) * _UPDATE_RATE))
        n_update_docs = min(len(live_docs), n_update // 4)
        n_update_chunks = min(len(live_chunks), n_update - n_update_docs)
        upd_docs = np.sort(rng.choice(live_docs, size=n_update_docs, replace=False)).tolist()
        upd_chunks = np.sort(rng.choice(live_chunks, size=n_update_chunks, replace=False)).tolist()
        n_insert = max(1, round(n_docs * _INSERT_RATE))

        created = times(rng, n_insert, t0, t1)
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
