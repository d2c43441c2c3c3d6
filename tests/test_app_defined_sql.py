"""Databases whose schema uses SQL the app defines at run time (a collation, a function in a
generated column): SQLite opens them without it, yet cannot run integrity_check or read what
needs it. Such a database is healthy: a checkout restores it (its smoke check says what it could
not check) and diff compares it."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from casnap.changes import diff
from casnap.committer import commit
from casnap.repository import Repository
from casnap.restorer import checkout
from casnap.smoke_sqlite import check_sqlite


def unicase(a: str, b: str) -> int:
    return (a.lower() > b.lower()) - (a.lower() < b.lower())


def app_connection(path: Path) -> sqlite3.Connection:
    """A connection as the app opens its database: with its collation and function."""
    conn = sqlite3.connect(path)
    conn.create_collation("unicase", unicase)
    conn.create_function("slug", 1, lambda s: str(s).lower().replace(" ", "-"), deterministic=True)
    return conn


def make_db(path: Path) -> None:
    with contextlib.closing(app_connection(path)) as db:
        db.execute(
            "CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT COLLATE unicase, "
            "s TEXT GENERATED ALWAYS AS (slug(title)) VIRTUAL)"
        )
        db.execute("CREATE INDEX notes_title ON notes(title)")
        db.executemany("INSERT INTO notes(title) VALUES (?)", [(f"Note {i}",) for i in range(40)])
        db.commit()


def test_smoke_check_passes_with_a_warning_naming_what_it_could_not_run(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    make_db(db)
    integrity, tables = check_sqlite(db, "app.db")
    assert integrity.ok and integrity.warning
    assert "slug" in integrity.detail or "unicase" in integrity.detail
    assert tables.ok and tables.info["tables"] == {"notes": 40}


def test_damage_is_still_found_in_a_database_without_app_defined_sql(tmp_path: Path) -> None:
    db = tmp_path / "plain.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE t(x)")
        conn.commit()
    db.write_bytes(db.read_bytes()[:100] + b"\xff" * (db.stat().st_size - 100))
    assert not check_sqlite(db, "plain.db")[0].ok


def test_checkout_and_diff_of_a_database_using_app_defined_sql(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    make_db(data / "app.db")
    repo = Repository.init(tmp_path / "repo")
    a = commit(repo, data).id
    with contextlib.closing(app_connection(data / "app.db")) as db:
        db.execute("UPDATE notes SET title = 'Renamed' WHERE id = 3")
        db.execute("DELETE FROM notes WHERE id = 7")
        db.commit()
    (notes,) = diff(repo, a, data_dir=data).to_json()["files"][0]["tables"]
    assert (notes["rows_a"], notes["rows_b"]) == (40, 39)
    assert (notes["added"], notes["removed"], notes["updated"]) == (0, 1, 1)
    out = tmp_path / "out"
    result = checkout(repo, a, out, safety_snapshot=False)
    assert result.smoke is not None and result.smoke["ok"]
    with contextlib.closing(app_connection(out / "app.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("SELECT s FROM notes WHERE id = 3").fetchone() == (
            "note-2",
        )  # ids from 1, titles from 0
