"""Comparison helpers shared by the tests, and index entries written by hand."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from casnap.chunkindex import FIELD_DTYPE, IndexEntry, id_matrix
from casnap.ids import ObjectId
from casnap.store import Store

# Header fields SQLite's backup API may set differently from the live source file: file change
# counter (24-27), schema cookie (40-43), version-valid-for (92-99). Nothing else may differ.
SQLITE_VOLATILE = [(24, 28), (40, 44), (92, 100)]


def mask_sqlite(data: bytes) -> bytes:
    if not data.startswith(b"SQLite format 3\x00"):
        return data
    b = bytearray(data)
    for lo, hi in SQLITE_VOLATILE:
        b[lo:hi] = bytes(hi - lo)
    return bytes(b)


def snapshot_tree(root: Path) -> dict[str, bytes]:
    """Files under root (SQLite side files left out), SQLite headers masked."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.endswith(("-wal", "-shm", "-journal")):
            out[p.relative_to(root).as_posix()] = mask_sqlite(p.read_bytes())
    return out


def raw_tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Exact bytes and mtime of every file under root (to prove nothing was touched)."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def as_arrays(
    entries: Iterable[tuple[ObjectId, IndexEntry]],
) -> tuple[list[ObjectId], np.ndarray, np.ndarray]:
    """(pack table, ids, fields) of entries given one by one, as an index file holds them."""
    entries = list(entries)
    packs: dict[bytes, int] = {}
    fields = np.zeros(len(entries), dtype=FIELD_DTYPE)
    for row, (_cid, e) in enumerate(entries):
        fields[row] = (packs.setdefault(bytes(e.pack), len(packs)), *e[1:])
    return [ObjectId(p) for p in packs], id_matrix([bytes(cid) for cid, _ in entries]), fields


def write_entries(store: Store, entries: dict[ObjectId, IndexEntry]) -> str:
    """Store an index file holding these entries (a wrong or extra copy of a chunk); its key."""
    key, _size = store.write_index(*as_arrays(entries.items()))
    return key


def one_row_wal_db(path: Path) -> None:
    """A WAL database of one table t(x) holding one row, closed (no -wal left beside it)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t(x)")
        db.execute("INSERT INTO t VALUES (1)")
        db.commit()
