"""A database a crashed writer left with a hot rollback journal (killed mid-transaction, its
changed pages already in the database file): commit and checkout capture its last committed
state, as any SQLite client that opens it shows it, and never write to the data dir."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from casnap import Repository, checkout, commit
from casnap.errors import EXIT_CODES, SourceError
from casnap.formats.sqlite import hot_journal
from tests.helpers_reliability import run_casnap
from tests.test_db_capture import make_db, rows
from tests.test_hostile import cli_unprivileged, one_line
from tests.util import raw_tree

# A writer in rollback-journal mode, killed (SIGKILL) inside a transaction large enough to spill
# changed pages into the database file (a cache of a few pages).
CRASH = r"""
import os, signal, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=" + sys.argv[2])
conn.execute("PRAGMA cache_size=10")
conn.execute("BEGIN")
conn.execute("UPDATE t SET body = randomblob(length(body))")
conn.execute("INSERT INTO t (body) SELECT randomblob(700) FROM t")
conn.execute("DELETE FROM t WHERE id % 5 = 0")
os.kill(os.getpid(), signal.SIGKILL)
"""


def crash_writer(db: Path, mode: str = "DELETE") -> None:
    """Leave db with a hot journal: a writer killed with SIGKILL mid-transaction."""
    before = db.read_bytes()
    proc = subprocess.run([sys.executable, "-c", CRASH, str(db), mode], capture_output=True)
    assert proc.returncode == -9, proc.stderr
    journal = db.parent / (db.name + "-journal")
    assert journal.stat().st_size > 0 and hot_journal(db)
    assert db.read_bytes() != before  # pages of the unfinished transaction reached the file
    with (
        contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as ro,
        pytest.raises(sqlite3.OperationalError, match="readonly"),
    ):
        ro.execute("SELECT count(*) FROM t").fetchone()  # SQLite must roll it back first


def committed_state(data: Path, seed: int = 0) -> tuple[str, list[tuple[int, bytes]]]:
    """data/app.db made and committed (by SQLite): the rows a reader sees."""
    make_db(data / "app.db", rows=400, seed=seed)
    return rows(data / "app.db")


@pytest.mark.parametrize("mode", ["DELETE", "PERSIST"])
def test_a_commit_captures_the_last_committed_state_and_touches_nothing(
    tmp_path: Path, mode: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    expected = committed_state(data)
    assert expected[0] == "ok"
    crash_writer(data / "app.db", mode)
    before = raw_tree(data)
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data).id
    assert raw_tree(data) == before  # the database and its journal byte for byte, and no more
    assert list(repo.tmp_dir.iterdir()) == []  # the private copy is gone
    (entry,) = repo.load_snapshot(repo.resolve(sid)).files
    assert entry.kind == "sqlite" and entry.source is None  # read again next time
    out = tmp_path / "out"
    checkout(repo, sid, out, safety_snapshot=False)
    assert rows(out / "app.db") == expected
    assert sorted(p.name for p in out.iterdir()) == ["app.db"]


def test_the_cli_checks_out_and_commits_over_a_hot_journal(tmp_path: Path) -> None:
    """The crash the backup is for: a checkout of an older snapshot saves the database's last
    committed state first, then replaces it (its journal removed); a commit succeeds."""
    data = tmp_path / "data"
    data.mkdir()
    old = committed_state(data)
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    first = run_casnap([*base, "commit", "-q"])
    assert first.returncode == 0, first.stderr
    with contextlib.closing(sqlite3.connect(data / "app.db")) as conn:  # committed since
        conn.execute("DELETE FROM t WHERE id % 2 = 0")
        conn.commit()
    newer = rows(data / "app.db")
    crash_writer(data / "app.db")
    proc = run_casnap([*base, "checkout", first.stdout.strip()])
    assert proc.returncode == 0, proc.stderr
    assert "tag pre-checkout" in proc.stderr
    assert sorted(p.name for p in data.iterdir()) == ["app.db"]
    assert rows(data / "app.db") == old
    saved = tmp_path / "saved"
    proc = run_casnap([*base, "checkout", "pre-checkout", "--to", str(saved)])
    assert proc.returncode == 0, proc.stderr
    assert rows(saved / "app.db") == newer
    crash_writer(data / "app.db")
    before = raw_tree(data)
    proc = run_casnap([*base, "commit", "-q"])
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert raw_tree(data) == before
    proc = run_casnap([*base, "checkout", "latest", "--to", str(tmp_path / "last")])
    assert proc.returncode == 0, proc.stderr
    assert rows(tmp_path / "last" / "app.db") == old


@pytest.mark.parametrize("case", ["writer-holds-its-lock", "zeroed-header", "other-database"])
def test_a_journal_that_is_not_hot_changes_nothing(tmp_path: Path, case: str) -> None:
    """The database is read in place under SQLite's lock, as before: no copy is made (a scratch
    file would fail this commit), and the image holds the committed state."""
    data = tmp_path / "data"
    data.mkdir()
    db = data / "app.db"
    expected = committed_state(data)
    repo = Repository.init(tmp_path / "repo")
    (tmp_path / "not-a-dir").write_bytes(b"")
    repo.tmp_dir = tmp_path / "not-a-dir" / "tmp"
    with contextlib.ExitStack() as stack:
        if case == "writer-holds-its-lock":  # a live transaction: its journal is not hot
            writer = stack.enter_context(contextlib.closing(sqlite3.connect(db)))
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("UPDATE t SET body = x'00' WHERE id < 50")
        elif case == "zeroed-header":  # what journal_mode=PERSIST leaves after a commit
            with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
                conn.execute("PRAGMA journal_mode=PERSIST")
                conn.execute("INSERT INTO t (body) VALUES (x'01')")
            expected = rows(db)
        else:  # the hot journal of a database moved away, beside another one
            other = data / "other.db"
            make_db(other, seed=1)
            crash_writer(other)
            other.rename(tmp_path / "moved.db")
        journal = data / ("other.db-journal" if case == "other-database" else "app.db-journal")
        assert journal.stat().st_size > 0
        sid = commit(repo, data).id
    entries = {f.path: f for f in repo.load_snapshot(repo.resolve(sid)).files}
    assert entries["app.db"].kind == "sqlite"
    out = tmp_path / "out"
    repo.tmp_dir = tmp_path / "repo" / "tmp"
    checkout(repo, sid, out, safety_snapshot=False, paths=["app.db"])
    assert rows(out / "app.db") == expected


def test_a_hot_journal_that_cannot_be_rolled_back_aside_is_named(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    committed_state(data)
    crash_writer(data / "app.db")
    before = raw_tree(data)
    repo = Repository.init(tmp_path / "repo")
    (tmp_path / "not-a-dir").write_bytes(b"")
    repo.tmp_dir = tmp_path / "not-a-dir" / "tmp"  # no private copy can be made
    with pytest.raises(SourceError) as caught:
        commit(repo, data)
    message = str(caught.value)
    assert str(data / "app.db") in message
    assert "hot journal left by a writer that crashed" in message
    assert "open the database once with sqlite3 or its app" in message
    assert caught.value.exit_code == EXIT_CODES["source"]
    assert raw_tree(data) == before


def test_a_checkout_says_it_failed_saving_the_pre_checkout_snapshot(tmp_path: Path) -> None:
    """A journal casnap may not read (another user's app crashed): one line naming the database
    and the step that failed; nothing is replaced."""
    data = tmp_path / "data"
    data.mkdir()
    committed_state(data)
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    first = run_casnap([*base, "commit", "-q"])
    assert first.returncode == 0, first.stderr
    with contextlib.closing(sqlite3.connect(data / "app.db")) as conn:
        conn.execute("DELETE FROM t WHERE id % 2 = 0")
        conn.commit()
    crash_writer(data / "app.db")
    journal = data / "app.db-journal"
    journal.chmod(0)
    before = raw_tree(data)
    try:
        proc = cli_unprivileged(tmp_path / "repo", data, "checkout", first.stdout.strip())
    finally:
        journal.chmod(0o644)
    line = one_line(proc, EXIT_CODES["storage"], "saving the pre-checkout snapshot")
    assert "app.db has a hot journal left by a writer that crashed" in line
    assert "open the database once with sqlite3 or its app" in line
    assert raw_tree(data) == before
