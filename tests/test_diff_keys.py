"""diff matches rows by their declared primary key (rowid only without one) and folds the shadow
tables of FTS and R*Tree virtual tables into their virtual table; real SQLite databases."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap.changes import diff
from casnap.cli import cli
from casnap.committer import commit
from casnap.repository import Repository


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(tmp_path / "repo")


def sql(db: Path, *statements: str, rows: Iterable[tuple[str, list[tuple]]] = ()) -> None:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        for s in statements:
            conn.execute(s)
        for stmt, values in rows:
            conn.executemany(stmt, values)
        conn.commit()


def tables_of(repo: Repository, a: str, b: str) -> dict[str, dict]:
    (db,) = [f for f in diff(repo, a, b).to_json()["files"] if f["path"] == "app.db"]
    return {t["name"]: t for t in db["tables"]}


def changes(t: dict) -> tuple[int | None, int | None, int | None]:
    return t["added"], t["removed"], t["updated"]


def test_insert_or_replace_on_a_text_key_is_an_update(data: Path, repo: Repository) -> None:
    db = data / "app.db"
    sql(
        db,
        "CREATE TABLE settings(name TEXT PRIMARY KEY, value TEXT)",
        "CREATE TABLE log(line TEXT)",  # no declared key: rows matched by rowid
        rows=[
            ("INSERT INTO settings VALUES (?, ?)", [(f"k{i}", f"v{i}") for i in range(20)]),
            ("INSERT INTO log VALUES (?)", [(f"line {i}",) for i in range(10)]),
        ],
    )
    a = commit(repo, data).id
    sql(
        db,
        # a new rowid for each replaced row: by rowid these would be 3 added and 3 removed
        "INSERT OR REPLACE INTO settings VALUES ('k1', 'changed')",
        "INSERT OR REPLACE INTO settings VALUES ('k2', 'changed')",
        "INSERT OR REPLACE INTO settings VALUES ('k3', 'v3')",  # same values: no change
        "INSERT OR REPLACE INTO settings VALUES ('new', 'x')",
        "DELETE FROM settings WHERE name = 'k9'",
        "UPDATE log SET line = 'edited' WHERE rowid = 2",
        "INSERT INTO log VALUES ('appended')",
    )
    b = commit(repo, data).id
    tables = tables_of(repo, a, b)
    settings = tables["settings"]
    assert changes(settings) == (1, 1, 2)
    assert (settings["rows_a"], settings["rows_b"]) == (20, 20)
    assert settings["key"] == ["name"]
    assert changes(tables["log"]) == (1, 0, 1)
    assert tables["log"]["key"] == ["rowid"]


def test_composite_primary_key(data: Path, repo: Repository) -> None:
    db = data / "app.db"
    sql(
        db,
        "CREATE TABLE chunk_map(doc TEXT, part INTEGER, vec INTEGER, PRIMARY KEY (doc, part))",
        rows=[
            (
                "INSERT INTO chunk_map VALUES (?, ?, ?)",
                [(f"d{d}", p, d * 10 + p) for d in range(5) for p in range(4)],
            )
        ],
    )
    a = commit(repo, data).id
    sql(
        db,
        "REPLACE INTO chunk_map VALUES ('d1', 2, 999)",
        "DELETE FROM chunk_map WHERE doc = 'd4' AND part = 3",
        "INSERT INTO chunk_map VALUES ('d4', 4, 1), ('d5', 0, 2)",
        # the same (part) under another doc is another row, not an update
        "INSERT INTO chunk_map VALUES ('d6', 2, 999)",
    )
    b = commit(repo, data).id
    t = tables_of(repo, a, b)["chunk_map"]
    assert t["key"] == ["doc", "part"]
    assert changes(t) == (3, 1, 1)


def test_without_rowid_table(data: Path, repo: Repository) -> None:
    db = data / "app.db"
    sql(
        db,
        "CREATE TABLE kv(k TEXT, ns TEXT, v BLOB, PRIMARY KEY (ns, k)) WITHOUT ROWID",
        rows=[("INSERT INTO kv VALUES (?, ?, ?)", [(f"k{i}", "n", b"x") for i in range(8)])],
    )
    a = commit(repo, data).id
    sql(
        db,
        "INSERT OR REPLACE INTO kv VALUES ('k0', 'n', x'00')",
        "DELETE FROM kv WHERE k = 'k7'",
        "INSERT INTO kv VALUES ('k0', 'other', x'01')",
    )
    b = commit(repo, data).id
    t = tables_of(repo, a, b)["kv"]
    assert t["key"] == ["ns", "k"]  # in primary-key order, not column order
    assert changes(t) == (1, 1, 1)


def test_fts5_shadow_tables_fold_into_their_table(data: Path, repo: Repository) -> None:
    db = data / "app.db"
    sql(
        db,
        "CREATE TABLE docs(id INTEGER PRIMARY KEY, body TEXT)",
        "CREATE VIRTUAL TABLE docs_fts USING fts5(body)",
        "CREATE VIRTUAL TABLE places USING rtree(id, x0, x1, y0, y1)",
        rows=[
            ("INSERT INTO docs VALUES (?, ?)", [(i, f"text {i}") for i in range(50)]),
            (
                "INSERT INTO docs_fts(rowid, body) VALUES (?, ?)",
                [(i, f"searchable words number {i}") for i in range(50)],
            ),
            ("INSERT INTO places VALUES (?, ?, ?, ?, ?)", [(i, i, i + 1, 0, 1) for i in range(30)]),
        ],
    )
    a = commit(repo, data).id
    sql(
        db,
        "DELETE FROM docs_fts WHERE rowid IN (3, 4)",
        "UPDATE docs_fts SET body = 'rewritten words' WHERE rowid = 10",
        "INSERT INTO places VALUES (100, 5, 6, 7, 8)",
        rows=[
            (
                "INSERT INTO docs_fts(rowid, body) VALUES (?, ?)",
                [(100 + i, f"more words {i}") for i in range(6)],
            )
        ],
    )
    b = commit(repo, data).id
    tables = tables_of(repo, a, b)
    assert set(tables) == {"docs_fts", "places"}  # no docs_fts_data, _idx, places_node, ...
    fts = tables["docs_fts"]
    assert fts["status"] == "changed"
    assert (fts["rows_a"], fts["rows_b"]) == (50, 54)
    assert changes(fts) == (6, 2, 1)
    assert fts["key"] == ["rowid"]
    assert {"docs_fts_data", "docs_fts_idx", "docs_fts_content"} <= set(fts["shadow_tables"])
    places = tables["places"]
    assert changes(places) == (1, 0, 0)
    assert "places_node" in places["shadow_tables"]

    # the text form: one line per virtual table, none per shadow table
    repo_dir = repo.root
    assert repo_dir is not None
    result = CliRunner().invoke(
        cli, ["--repo", str(repo_dir), "--data", str(data), "diff", a[:12], b[:12]]
    )
    assert result.exit_code == 0, result.stderr
    assert "table docs_fts: 50 -> 54 rows (+6 -2, 1 updated)" in result.stdout
    assert "docs_fts_" not in result.stdout and "places_" not in result.stdout
    json_out = CliRunner().invoke(
        cli, ["--repo", str(repo_dir), "--data", str(data), "diff", a[:12], b[:12], "--json"]
    )
    (f,) = json.loads(json_out.stdout)["files"]
    assert [t["name"] for t in f["tables"]] == ["docs_fts", "places"]


def test_fts5_table_added_and_removed_is_one_line_each(data: Path, repo: Repository) -> None:
    db = data / "app.db"
    sql(
        db,
        "CREATE VIRTUAL TABLE old_fts USING fts5(a)",
        "INSERT INTO old_fts VALUES ('x'), ('y')",
    )
    a = commit(repo, data).id
    sql(
        db,
        "DROP TABLE old_fts",
        "CREATE VIRTUAL TABLE new_fts USING fts4(a)",
        "INSERT INTO new_fts VALUES ('z')",
    )
    b = commit(repo, data).id
    tables = tables_of(repo, a, b)
    assert set(tables) == {"old_fts", "new_fts"}
    assert tables["old_fts"]["status"] == "removed" and tables["old_fts"]["rows_a"] == 2
    assert tables["new_fts"]["status"] == "added" and tables["new_fts"]["rows_b"] == 1
    assert "new_fts_segdir" in tables["new_fts"]["shadow_tables"]


def test_a_table_named_like_a_shadow_is_not_folded(data: Path, repo: Repository) -> None:
    db = data / "app.db"
    sql(
        db,
        "CREATE VIRTUAL TABLE notes USING fts5(body)",
        "CREATE TABLE notes_archive(id INTEGER PRIMARY KEY, body TEXT)",
        "INSERT INTO notes_archive VALUES (1, 'a')",
    )
    a = commit(repo, data).id
    sql(db, "INSERT INTO notes_archive VALUES (2, 'b')")
    b = commit(repo, data).id
    tables = tables_of(repo, a, b)
    assert set(tables) == {"notes_archive"}
    assert changes(tables["notes_archive"]) == (1, 0, 0)
    assert tables["notes_archive"]["shadow_tables"] == []


def test_a_changed_primary_key_falls_back_to_rowid(data: Path, repo: Repository) -> None:
    db = data / "app.db"
    sql(
        db,
        "CREATE TABLE t(a TEXT PRIMARY KEY, b TEXT)",
        "INSERT INTO t VALUES ('x', '1'), ('y', '2')",
    )
    a = commit(repo, data).id
    sql(
        db,
        "CREATE TABLE t2(a TEXT, b TEXT PRIMARY KEY)",
        "INSERT INTO t2 SELECT a, b FROM t",
        "DROP TABLE t",
        "ALTER TABLE t2 RENAME TO t",
    )
    b = commit(repo, data).id
    t = tables_of(repo, a, b)["t"]
    assert t["schema_changed"] and t["key"] == ["rowid"]
    assert changes(t) == (0, 0, 0)
