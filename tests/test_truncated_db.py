"""A SQLite database cut short (a copy or a write that stopped part-way) is stored as it is, as
a database, and reported as damage at commit; a checkout's smoke checks refuse it. Whole
databases of every page size and journal mode, live ones included, are never reported."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from casnap import Repository, checkout, commit
from casnap.errors import EXIT_CODES, InconsistentData, SmokeCheckFailed
from casnap.formats.sqlite import cut_short
from tests.helpers_reliability import run_casnap, wait_for

PAGE_SIZES = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]
MODES = ["DELETE", "TRUNCATE", "PERSIST", "WAL"]


def make_db(path: Path, page_size: int = 4096, mode: str = "DELETE", rows: int = 300) -> None:
    rng = random.Random(page_size + len(mode) + rows)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA page_size={page_size}")
        conn.execute(f"PRAGMA journal_mode={mode}")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
        conn.executemany(
            "INSERT INTO t (body) VALUES (?)", [(rng.randbytes(300),) for _ in range(rows)]
        )
        conn.commit()
    assert path.stat().st_size % page_size == 0


def cut(source: Path, dest: Path, size: int) -> None:
    dest.write_bytes(source.read_bytes()[:size])


@pytest.fixture
def cut_dbs(tmp_path: Path) -> Path:
    """A data dir of databases cut short: inside a page, at a page boundary, inside the last
    page (SQLite reads that one without complaint, zeros for the missing bytes)."""
    whole = tmp_path / "whole.db"
    make_db(whole, rows=2000)
    size = whole.stat().st_size
    data = tmp_path / "data"
    data.mkdir()
    cut(whole, data / "mid_page.db", 4096 * 3 + 100)
    cut(whole, data / "at_page.db", 4096 * 40)
    cut(whole, data / "last_page.db", size - 100)
    make_db(data / "fine.db")
    with contextlib.closing(sqlite3.connect(data / "last_page.db")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    for name in ("mid_page.db", "at_page.db"):
        with (
            contextlib.closing(sqlite3.connect(data / name)) as conn,
            pytest.raises(sqlite3.DatabaseError, match="malformed"),
        ):
            conn.execute("PRAGMA integrity_check").fetchone()
    return data


CUT = ["at_page.db", "last_page.db", "mid_page.db"]


def test_a_database_cut_short_is_stored_as_it_is_and_reported(
    cut_dbs: Path, tmp_path: Path
) -> None:
    repo = Repository.init(tmp_path / "repo")
    r = commit(repo, cut_dbs)
    assert [d.split(":")[0] for d in r.damage] == CUT
    assert all("SQLite database is cut short" in d for d in r.damage)
    assert r.warnings == r.damage
    files = {f.path: f for f in repo.load_snapshot(repo.resolve(r.id)).files}
    assert {p: f.kind for p, f in files.items()} == dict.fromkeys([*CUT, "fine.db"], "sqlite")
    assert all(files[p].source is None for p in CUT)  # read (and reported) by every commit
    again = commit(repo, cut_dbs)
    assert again.damage == r.damage
    out = tmp_path / "out"
    with pytest.raises(SmokeCheckFailed) as refused:
        checkout(repo, r.id, out)
    failed = sorted(c["path"] for c in refused.value.checks)
    assert failed == CUT
    assert not out.exists() or list(out.iterdir()) == []
    checkout(repo, r.id, out, smoke=False, safety_snapshot=False)
    for name in CUT:  # byte for byte as they were
        assert (out / name).read_bytes() == (cut_dbs / name).read_bytes()


def test_the_cli_warns_refuses_and_verifies_a_database_cut_short(
    cut_dbs: Path, tmp_path: Path
) -> None:
    base = ["--repo", str(tmp_path / "repo"), "--data", str(cut_dbs)]
    proc = run_casnap([*base, "commit", "-q"])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 3 and all("SQLite database is cut short" in ln for ln in lines), lines
    assert "mid_page.db: SQLite database is cut short: its 12388 bytes end inside page 4" in (
        proc.stderr
    )
    proc = run_casnap([*base, "checkout", "latest", "--to", str(tmp_path / "out")])
    assert proc.returncode == EXIT_CODES["check-failed"], proc.stderr
    assert "at_page.db" in proc.stderr and "cut short" in proc.stderr
    proc = run_casnap([*base, "verify", "--smoke"])
    assert proc.returncode == EXIT_CODES["check-failed"], proc.stdout + proc.stderr
    proc = run_casnap([*base, "commit", "--strict"])
    assert proc.returncode == EXIT_CODES["check-failed"], proc.stderr
    assert "3 consistency problem(s), nothing committed" in proc.stderr
    proc = run_casnap([*base, "log", "--json"])
    assert proc.stdout.count('"id"') == 1


def test_strict_refuses_a_database_cut_short(cut_dbs: Path, tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    with pytest.raises(InconsistentData, match="mid_page.db: SQLite database is cut short"):
        commit(repo, cut_dbs, strict=True)
    assert repo.snapshots() == []


def test_databases_of_every_page_size_and_journal_mode_are_clean(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for size in PAGE_SIZES:
        for mode in MODES:
            make_db(data / f"{mode.lower()}-{size}.db", size, mode, rows=40)
    repo = Repository.init(tmp_path / "repo")
    r = commit(repo, data)
    assert r.warnings == [] and r.damage == []
    files = repo.load_snapshot(repo.resolve(r.id)).files
    assert len(files) == len(PAGE_SIZES) * len(MODES)
    assert {f.kind for f in files} == {"sqlite"}
    checkout(repo, r.id, tmp_path / "out")  # every smoke check passes


def test_a_wal_database_with_most_of_its_data_in_the_log_is_clean(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "app.db"
    make_db(db, 65536, "WAL", rows=10)
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("INSERT INTO t (body) SELECT randomblob(3000) FROM t")
        for _ in range(5):
            conn.execute("INSERT INTO t (body) SELECT randomblob(3000) FROM t")
        wal = data / "app.db-wal"
        assert wal.stat().st_size > 4 * db.stat().st_size
        head = db.read_bytes()[:100]
        assert cut_short(head, db.stat().st_size) is None
        repo = Repository.init(tmp_path / "repo")
        r = commit(repo, data)
        assert r.warnings == [] and r.damage == []
        count = conn.execute("SELECT count(*) FROM t").fetchone()[0]
    finally:
        conn.close()
    checkout(repo, r.id, tmp_path / "out")
    with contextlib.closing(sqlite3.connect(tmp_path / "out" / "app.db")) as restored:
        assert restored.execute("SELECT count(*) FROM t").fetchone()[0] == count


# a writer growing a database with 64 KiB pages, transaction after transaction
WRITER = r"""
import os, sqlite3, sys
from pathlib import Path
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("PRAGMA journal_mode=" + sys.argv[2])
stop, n = Path(sys.argv[3]), 0
print("ready", flush=True)
while not stop.exists():
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t (body) SELECT randomblob(20000) FROM t LIMIT 3")
    conn.execute("DELETE FROM t WHERE id IN (SELECT id FROM t ORDER BY random() LIMIT 1)")
    conn.execute("COMMIT")
    n += 1
    if sys.argv[2] == "WAL" and n % 7 == 0:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
print(n, flush=True)
"""


@pytest.mark.parametrize("mode", ["DELETE", "WAL"])
def test_a_database_being_written_is_never_reported(tmp_path: Path, mode: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "app.db"
    make_db(db, 65536, mode, rows=5)
    stop = tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), mode, str(stop)], stdout=subprocess.PIPE, text=True
    )
    repo = Repository.init(tmp_path / "repo")
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        for _ in range(4):
            size = db.stat().st_size
            wait_for(lambda size=size: db.stat().st_size != size)
            r = commit(repo, data)
            assert r.warnings == [] and r.damage == [], r.warnings
    finally:
        stop.touch()
        out, _ = writer.communicate(timeout=60)
    assert writer.returncode == 0 and int(out.split()[-1]) > 0
    checkout(repo, r.id, tmp_path / "out")


@pytest.mark.parametrize("size", [16, 17, 50, 99])
def test_a_database_cut_inside_its_header_is_a_database_cut_short(
    tmp_path: Path, size: int
) -> None:
    """A file of SQLite's magic and less than its 100-byte header is a database cut short too:
    reported at commit, refused by a checkout, which leaves the good database in place."""
    whole = tmp_path / "whole.db"
    make_db(whole)
    data = tmp_path / "data"
    data.mkdir()
    cut(whole, data / "app.db", size)
    repo = Repository.init(tmp_path / "repo")
    r = commit(repo, data)
    assert len(r.damage) == 1 and r.damage[0].startswith("app.db: SQLite database is cut short")
    (entry,) = repo.load_snapshot(repo.resolve(r.id)).files
    assert entry.kind == "sqlite"
    target = tmp_path / "target"
    target.mkdir()
    make_db(target / "app.db")
    good = (target / "app.db").read_bytes()
    with pytest.raises(SmokeCheckFailed):
        checkout(repo, r.id, target)
    assert (target / "app.db").read_bytes() == good
