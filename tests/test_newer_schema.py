"""A database whose schema holds SQL a newer SQLite wrote and this one cannot parse (a view
with `string_agg(a, ',' ORDER BY id)`, SQLite 3.44): SQLite opens it, but reading any table
fails with 'malformed database schema'. It is captured as a database all the same (its -wal
with it), restored, and its smoke check says what it could not parse."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from casnap.committer import commit
from casnap.repository import Repository
from casnap.restorer import checkout

VIEW = "CREATE VIEW v AS SELECT string_agg(a, ',' ORDER BY id) FROM t"


def newer_view(conn: sqlite3.Connection) -> None:
    """Add VIEW as a newer SQLite would have stored it (this one refuses to create it)."""
    conn.execute("PRAGMA writable_schema=ON")
    conn.execute(
        "INSERT INTO sqlite_master(type, name, tbl_name, rootpage, sql) "
        "VALUES ('view', 'v', 'v', 0, ?)",
        (VIEW,),
    )
    conn.execute("PRAGMA writable_schema=OFF")


def test_a_wal_database_with_a_newer_schema_keeps_what_its_wal_holds(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with contextlib.closing(sqlite3.connect(data / "app.db", isolation_level=None)) as app:
        app.execute("PRAGMA journal_mode=WAL")
        app.execute("PRAGMA wal_autocheckpoint=0")
        app.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT)")
        newer_view(app)
        app.executemany("INSERT INTO t(a) VALUES (?)", [(f"row{i}",) for i in range(30)])
        assert (data / "app.db-wal").stat().st_size > 0
        repo = Repository.init(tmp_path / "repo")
        result = commit(repo, data)
    (entry,) = repo.load_snapshot(repo.resolve(result.id)).files
    assert entry.kind == "sqlite"
    out = tmp_path / "out"
    restored = checkout(repo, result.id, out, safety_snapshot=False)
    assert restored.smoke is not None and restored.smoke["ok"]
    (integrity,) = [c for c in restored.smoke["checks"] if c["check"] == "sqlite-integrity"]
    assert integrity["warning"] and "malformed database schema" in integrity["detail"]
    with contextlib.closing(sqlite3.connect(out / "app.db")) as db:
        db.execute("PRAGMA writable_schema=ON")
        assert db.execute("SELECT count(*) FROM t").fetchone() == (30,)
        assert db.execute("SELECT sql FROM sqlite_master WHERE name = 'v'").fetchone() == (VIEW,)


def test_diff_compares_the_tables_of_a_database_with_a_newer_schema(tmp_path: Path) -> None:
    from casnap.changes import diff

    data = tmp_path / "data"
    data.mkdir()
    with contextlib.closing(sqlite3.connect(data / "app.db", isolation_level=None)) as app:
        app.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT)")
        newer_view(app)
        app.executemany("INSERT INTO t(a) VALUES (?)", [(f"row{i}",) for i in range(30)])
    repo = Repository.init(tmp_path / "repo")
    a = commit(repo, data).id
    with contextlib.closing(sqlite3.connect(data / "app.db", isolation_level=None)) as app:
        app.execute("PRAGMA writable_schema=ON")
        app.execute("DELETE FROM t WHERE id <= 3")
    (f,) = diff(repo, a, data_dir=data).to_json()["files"]
    (t,) = f["tables"]
    assert (t["name"], t["rows_a"], t["rows_b"], t["removed"]) == ("t", 30, 27, 3)


def test_a_hot_journal_of_a_database_with_a_newer_schema_is_rolled_back_aside(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    from tests.test_hot_journal import CRASH

    data = tmp_path / "data"
    data.mkdir()
    with contextlib.closing(sqlite3.connect(data / "app.db", isolation_level=None)) as app:
        app.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB)")
        app.executemany("INSERT INTO t(body) VALUES (randomblob(?))", [(700,)] * 300)
        newer_view(app)
    with contextlib.closing(sqlite3.connect(data / "app.db")) as app:
        app.execute("PRAGMA writable_schema=ON")
        expected = app.execute("SELECT count(*), sum(length(body)) FROM t").fetchone()
    crash = CRASH.replace(
        "isolation_level=None)", "isolation_level=None)\nconn.execute('PRAGMA writable_schema=ON')"
    )
    proc = subprocess.run([sys.executable, "-c", crash, str(data / "app.db"), "DELETE"])
    assert proc.returncode == -9 and (data / "app.db-journal").stat().st_size > 0
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data).id
    out = tmp_path / "out"
    checkout(repo, sid, out, safety_snapshot=False)
    with contextlib.closing(sqlite3.connect(out / "app.db")) as db:
        db.execute("PRAGMA writable_schema=ON")
        assert db.execute("SELECT count(*), sum(length(body)) FROM t").fetchone() == expected
