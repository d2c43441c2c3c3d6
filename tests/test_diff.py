"""casnap diff: files, chunks, table row deltas and FAISS ntotal deltas; nothing written."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap.changes import diff
from casnap.cli import cli
from casnap.committer import commit
from casnap.repository import Repository
from tests.helpers_smoke import evolve_app, listing, make_app


def run(repo: Path, data: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--repo", str(repo), "--data", str(data), *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def app(tmp_path: Path) -> Path:
    return make_app(tmp_path / "data")


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(tmp_path / "repo")


def by_path(result: dict) -> dict[str, dict]:
    return {f["path"]: f for f in result["files"]}


def test_diff_of_two_snapshots_shows_row_and_ntotal_deltas(app: Path, repo: Repository) -> None:
    a = commit(repo, app).id
    evolve_app(app)
    b = commit(repo, app).id
    result = diff(repo, a, b).to_json()
    files = by_path(result)
    db = files["app.db"]
    assert db["status"] == "changed" and db["kind"] == "sqlite"
    (docs,) = db["tables"]  # tags did not change, so it is not listed
    assert docs["name"] == "documents"
    assert (docs["rows_a"], docs["rows_b"]) == (60, 64)
    assert (docs["added"], docs["removed"], docs["updated"]) == (5, 1, 1)
    for name, kind, n in (("flat", "IndexFlatL2", 4000), ("ivf", "IndexIVFFlat", 300)):
        f = files[f"faiss/{name}.index"]
        assert f["status"] == "changed" and f["kind"] == "faiss"
        assert f["index"]["type_a"] == f["index"]["type_b"] == kind
        assert (f["index"]["ntotal_a"], f["index"]["ntotal_b"]) == (n, n + 7)
        assert f["index"]["ntotal_delta"] == 7
    hnsw = files["faiss/hnsw.index"]
    assert hnsw["status"] == "unchanged" and hnsw["bytes_new"] == 0 and hnsw["index"] is None
    s = result["summary"]
    assert (s["files_changed"], s["files_unchanged"]) == (5, 2)  # hnsw and its sidecar kept
    assert s["bytes_new"] == sum(f["bytes_new"] for f in result["files"]) > 0
    # the flat index only grew at its end: most of it is shared
    flat = files["faiss/flat.index"]
    assert flat["bytes_shared"] > flat["bytes_new"]


def test_cli_diff_text_names_tables_and_indexes(app: Path, tmp_path: Path) -> None:
    repo_dir = tmp_path / "repo"
    _, a, _ = run(repo_dir, app, "commit")
    evolve_app(app)
    _, b, _ = run(repo_dir, app, "commit")
    code, out, _ = run(repo_dir, app, "diff", a.strip(), b.strip())
    assert code == 0
    assert "M app.db" in out
    assert "table documents: 60 -> 64 rows (+5 -1, 1 updated)" in out
    assert "index IndexIVFFlat: ntotal 300 -> 307 (+7)" in out
    assert "index IndexFlatL2: ntotal 4000 -> 4007 (+7)" in out
    assert "hnsw" not in out  # unchanged files are summed up, not listed
    code, out, _ = run(repo_dir, app, "diff", a.strip(), b.strip(), "--json")
    assert code == 0 and json.loads(out)["summary"]["files_changed"] == 5


def test_diff_against_data_dir_writes_nothing_to_repository(
    app: Path, repo: Repository, tmp_path: Path
) -> None:
    a = commit(repo, app).id
    evolve_app(app)
    (app / "notes.txt").write_text("new file")
    (app / "faiss" / "hnsw.index").unlink()
    before = listing(tmp_path / "repo")
    result = diff(repo, a, data_dir=app).to_json()
    assert listing(tmp_path / "repo") == before
    files = by_path(result)
    assert files["notes.txt"]["status"] == "added"
    assert files["notes.txt"]["bytes_new"] == len("new file")
    assert files["faiss/hnsw.index"]["status"] == "removed"
    assert files["faiss/hnsw.index"]["index"]["ntotal_a"] == 100
    assert files["faiss/hnsw.index"]["index"]["ntotal_b"] == 0  # removed: no vectors left
    assert files["faiss/hnsw.index"]["index"]["ntotal_delta"] == -100
    assert files["faiss/ivf.index"]["index"]["ntotal_delta"] == 7
    (docs,) = files["app.db"]["tables"]
    assert (docs["added"], docs["removed"], docs["updated"]) == (5, 1, 1)
    assert result["b"] == {"data_dir": str(app.resolve())}
    # the live side is chunked like a commit would: the snapshot of it agrees on every chunk
    b = commit(repo, app).id
    stored = by_path(diff(repo, a, b).to_json())
    for path, f in files.items():
        keys = ("status", "chunks_b", "chunks_new", "bytes_new", "bytes_shared")
        assert {k: f[k] for k in keys} == {k: stored[path][k] for k in keys}, path


def test_diff_of_unchanged_data_dir_reads_nothing_new(app: Path, repo: Repository) -> None:
    a = commit(repo, app).id
    result = diff(repo, a, data_dir=app).to_json()
    assert {f["status"] for f in result["files"]} == {"unchanged"}
    assert result["summary"]["bytes_new"] == 0 and result["summary"]["chunks_dropped"] == 0


def test_diff_reports_schema_changes_and_new_tables(app: Path, repo: Repository) -> None:
    a = commit(repo, app).id
    with contextlib.closing(sqlite3.connect(app / "app.db")) as db:
        db.execute("ALTER TABLE documents ADD COLUMN lang TEXT")
        db.execute("CREATE TABLE audit(id INTEGER PRIMARY KEY, what TEXT)")
        db.executemany("INSERT INTO audit(what) VALUES (?)", [("x",), ("y",)])
        db.execute("UPDATE tags SET n = n + 100 WHERE name IN ('t1', 't2')")
        db.execute("DELETE FROM tags WHERE name = 't9'")
        db.commit()
    b = commit(repo, app).id
    tables = {t["name"]: t for t in by_path(diff(repo, a, b).to_json())["app.db"]["tables"]}
    assert tables["audit"]["status"] == "added" and tables["audit"]["rows_b"] == 2
    docs = tables["documents"]
    assert docs["schema_changed"] and docs["updated"] is None  # columns differ
    assert (docs["added"], docs["removed"]) == (0, 0)
    tags = tables["tags"]  # WITHOUT ROWID: rows matched by primary key
    assert not tags["schema_changed"]
    assert (tags["added"], tags["removed"], tags["updated"]) == (0, 1, 2)


def test_diff_of_evolving_sample_app(tmp_path: Path) -> None:
    from casnap import sample

    data = tmp_path / "data"
    sample.generate(data, size_mb=3, seed=5)
    repo = Repository.init(tmp_path / "repo")
    a = commit(repo, data).id
    changes = sample.evolve(data, 1, seed=5)
    b = commit(repo, data).id
    files = by_path(diff(repo, a, b).to_json())
    tables = {t["name"]: t for t in files["app.db"]["tables"]}
    docs = tables["documents"]
    assert docs["added"] == changes["docs_inserted"]
    assert docs["rows_b"] - docs["rows_a"] == docs["added"] - docs["removed"]
    changed_indexes = [f for f in files.values() if f["kind"] == "faiss" and f["index"]]
    assert len(changed_indexes) == changes["indexes_changed"]
    for f in changed_indexes:
        meta = json.loads((data / f["path"]).with_suffix(".meta.json").read_text())
        assert f["index"]["ntotal_b"] == meta["ntotal"]
        assert f["index"]["ntotal_delta"] == f["index"]["ntotal_b"] - f["index"]["ntotal_a"] > 0


def test_unreadable_index_has_no_ntotal_delta(app: Path, repo: Repository) -> None:
    a = commit(repo, app).id
    (app / "faiss" / "hnsw.index").write_bytes(b"IHNf" + bytes(range(200)))  # garbled
    files = by_path(diff(repo, a, data_dir=app).to_json())
    index = files["faiss/hnsw.index"]["index"]
    assert index["ntotal_a"] == 100 and index["ntotal_b"] is None
    assert index["ntotal_delta"] is None


def test_an_index_overwritten_by_other_bytes_says_why_it_has_no_ntotal(
    app: Path, repo: Repository
) -> None:
    a = commit(repo, app).id
    (app / "faiss" / "ivf.index").write_bytes(b"not an index any more\n")
    files = by_path(diff(repo, a, data_dir=app).to_json())
    index = files["faiss/ivf.index"]["index"]
    assert index["ntotal_b"] is None and index["problem_a"] is None
    assert index["problem_b"] == "not a FAISS index: no FAISS header"


def test_a_file_with_sqlite_header_sqlite_cannot_open_is_compared_as_bytes(
    app: Path, repo: Repository
) -> None:
    # a page size SQLite refuses (768, no power of two): commit keeps such a file's bytes
    damaged = app / "odd.db"
    with contextlib.closing(sqlite3.connect(damaged)) as db:
        db.execute("CREATE TABLE t(x)")
        db.commit()
    raw = bytearray(damaged.read_bytes())
    raw[16:18] = (768).to_bytes(2, "big")
    damaged.write_bytes(bytes(raw))
    a = commit(repo, app).id
    assert by_path(diff(repo, a, data_dir=app).to_json())["odd.db"]["status"] == "unchanged"
    damaged.write_bytes(bytes(raw) + b"\0" * 512)
    odd = by_path(diff(repo, a, data_dir=app).to_json())["odd.db"]
    assert odd["status"] == "changed" and odd["kind"] == "file"


def test_an_update_that_only_changes_case_in_a_nocase_column_is_counted(
    app: Path, repo: Repository
) -> None:
    with contextlib.closing(sqlite3.connect(app / "app.db")) as db:
        db.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT COLLATE NOCASE)")
        db.executemany("INSERT INTO users(email) VALUES (?)", [(f"U{i}@X.org",) for i in range(9)])
        db.commit()
    a = commit(repo, app).id
    with contextlib.closing(sqlite3.connect(app / "app.db")) as db:
        db.execute("UPDATE users SET email = lower(email) WHERE id <= 4")
        db.commit()
    tables = {
        t["name"]: t for t in by_path(diff(repo, a, data_dir=app).to_json())["app.db"]["tables"]
    }
    users = tables["users"]
    assert (users["added"], users["removed"], users["updated"]) == (0, 0, 4)


def test_a_malformed_database_is_named_as_such_not_as_repository_damage(
    app: Path, repo: Repository, tmp_path: Path
) -> None:
    a = commit(repo, app).id
    db = app / "app.db"
    raw = bytearray(db.read_bytes())
    page = int.from_bytes(raw[16:18], "big")
    raw[page : 2 * page] = bytes(page)  # page 2 zeroed: SQLite opens it, reads no table
    db.write_bytes(bytes(raw))
    f = by_path(diff(repo, a, data_dir=app).to_json())["app.db"]
    assert f["status"] == "changed" and f["tables"] == []
    assert f["tables_problem"] == "new side: database disk image is malformed"
    code, out, err = run(tmp_path / "repo", app, "diff", a)
    assert code == 0, err
    assert "tables not compared: new side: database disk image is malformed" in out


def test_a_database_sqlite_can_no_longer_open_is_not_said_to_have_lost_its_tables(
    app: Path, repo: Repository
) -> None:
    a = commit(repo, app).id
    db = app / "app.db"
    raw = bytearray(db.read_bytes())
    raw[16:18] = (768).to_bytes(2, "big")  # a page size SQLite refuses: stored as bytes
    db.write_bytes(bytes(raw))
    f = by_path(diff(repo, a, data_dir=app).to_json())["app.db"]
    assert f["status"] == "changed" and f["tables"] == []
    assert f["tables_problem"] == "new side: SQLite's header, but no database SQLite can open"
