"""A database a crashed writer left with a hot rollback journal (killed mid-transaction, its
changed pages already in the database file): commit and checkout capture its last committed
state, as any SQLite client that opens it shows it, and never write to the data dir."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from casnap import Repository, checkout, commit
from casnap.errors import EXIT_CODES, SourceError
from casnap.formats.sqlite import (
    JOURNAL_MAGIC,
    SUPER_JOURNAL_TAIL,
    ends_in_super_journal,
    hot_journal,
    super_journal,
)
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


def committed_then_changed(tmp_path: Path) -> tuple[Path, str]:
    """data/app.db committed into tmp_path/repo, then changed and committed by SQLite (half its
    rows deleted): the data dir and the first snapshot's id."""
    data = tmp_path / "data"
    data.mkdir()
    committed_state(data)
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    first = run_casnap([*base, "commit", "-q"])
    assert first.returncode == 0, first.stderr
    with contextlib.closing(sqlite3.connect(data / "app.db")) as conn:
        conn.execute("DELETE FROM t WHERE id % 2 = 0")
        conn.commit()
    return data, first.stdout.strip()


def test_a_checkout_says_it_failed_saving_the_pre_checkout_snapshot(tmp_path: Path) -> None:
    """A journal casnap may not read (another user's app crashed): one line naming the database
    and the step that failed; nothing is replaced."""
    data, first = committed_then_changed(tmp_path)
    crash_writer(data / "app.db")
    journal = data / "app.db-journal"
    journal.chmod(0)
    before = raw_tree(data)
    try:
        proc = cli_unprivileged(tmp_path / "repo", data, "checkout", first)
    finally:
        journal.chmod(0o644)
    line = one_line(proc, EXIT_CODES["storage"], "saving the pre-checkout snapshot")
    assert "app.db has a hot journal left by a writer that crashed" in line
    assert "open the database once with sqlite3 or its app" in line
    assert raw_tree(data) == before


# -- a journal that names a super-journal ---------------------------------------------------------


def name_super_journal(journal: Path, name: bytes) -> None:
    """End journal with the record SQLite appends when a transaction spans several databases:
    a page number (PAGER_SJ_PGNO), the super-journal's name, its length, its checksum (its
    bytes summed as C chars: signed on x86, as SQLite there writes it) and the journal magic.
    SQLite rolling the journal back first asks whether that file exists, and afterwards
    deletes it when none of the journals it lists is hot: an ordinary file qualifies."""
    page_size = int.from_bytes(journal.read_bytes()[24:28], "big")
    checksum = sum(b - 256 if b > 127 else b for b in name) & 0xFFFFFFFF
    record = (0x40000000 // page_size + 1).to_bytes(4, "big") + name
    record += len(name).to_bytes(4, "big") + checksum.to_bytes(4, "big") + JOURNAL_MAGIC
    with journal.open("ab") as f:
        f.write(record)


def hostile_journal(tmp_path: Path, named: Path) -> tuple[Path, str, list[tuple[int, bytes]]]:
    """data/app.db committed (a first snapshot in tmp_path/repo), changed and committed by
    SQLite since, then left with a hot journal naming `named` as its super-journal: the data
    dir, the first snapshot's id and the rows SQLite committed last."""
    data, first = committed_then_changed(tmp_path)
    newer = rows(data / "app.db")
    crash_writer(data / "app.db")
    name_super_journal(data / "app.db-journal", os.fsencode(named))
    return data, first, newer[1]


@pytest.mark.parametrize("kind", ["file", "fifo"])
@pytest.mark.parametrize("command", ["commit", "diff", "checkout"])
def test_a_super_journal_named_by_a_hot_journal_is_never_touched(
    tmp_path: Path, command: str, kind: str
) -> None:
    """A crafted journal naming any file as its super-journal: SQLite's rollback would delete
    that file (a FIFO: open it, and wait forever). The file lies outside the data dir; commit,
    diff and checkout's pre-checkout snapshot leave it as it was and store the database's last
    committed state all the same (the file exists: the journal is hot)."""
    victim = tmp_path / "elsewhere" / "victim.txt"
    victim.parent.mkdir()
    if kind == "file":
        victim.write_text("precious\n")
    else:
        os.mkfifo(victim)
    data, first, newer = hostile_journal(tmp_path, victim)
    before = raw_tree(data)
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    args = {"commit": ["commit", "-q"], "diff": ["diff", first], "checkout": ["checkout", first]}
    proc = run_casnap([*base, *args[command]], timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert os.path.lexists(victim)
    if kind == "file":
        assert victim.read_text() == "precious\n"
    if command == "diff":
        assert "M app.db" in proc.stdout and raw_tree(data) == before
        return
    if command == "commit":
        assert raw_tree(data) == before
    else:
        assert "tag pre-checkout" in proc.stderr
    saved = "pre-checkout" if command == "checkout" else "latest"
    out = tmp_path / "out"
    proc = run_casnap([*base, "checkout", saved, "--to", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert rows(out / "app.db") == ("ok", newer)


def test_naming_a_super_journal_that_exists_changes_no_byte_of_the_rollback(
    tmp_path: Path,
) -> None:
    """The image stored of a hot journal naming an existing super-journal is the very image
    stored of the same journal without that record: SQLite rolls both back alike."""
    data = tmp_path / "data"
    data.mkdir()
    expected = committed_state(data)
    crash_writer(data / "app.db")
    plain = tmp_path / "plain"
    shutil.copytree(data, plain)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    name_super_journal(data / "app.db-journal", os.fsencode(victim))
    repo = Repository.init(tmp_path / "repo")
    stored = [repo.load_snapshot(repo.resolve(commit(repo, d).id)).files[0] for d in (plain, data)]
    assert stored[0].hash == stored[1].hash
    assert victim.read_text() == "precious\n"
    out = tmp_path / "out"
    checkout(repo, "latest", out, safety_snapshot=False)
    assert rows(out / "app.db") == expected


@pytest.mark.parametrize("named", ["missing", "empty-file", "missing-non-ascii"])
def test_a_journal_whose_super_journal_is_gone_is_not_rolled_back(
    tmp_path: Path, named: str
) -> None:
    """A super-journal that is gone (or an empty file, which SQLite takes for none) means the
    transaction across databases committed: the journal is not hot, and SQLite reads the
    database as it is. The stored image is the one of what SQLite itself makes of a copy, not
    the rolled-back one."""
    data = tmp_path / "data"
    data.mkdir()
    committed_state(data)
    crash_writer(data / "app.db")
    plain = tmp_path / "plain"
    shutil.copytree(data, plain)
    name = tmp_path / ("gone-\u00fc.sj" if named == "missing-non-ascii" else "gone.sj")
    if named == "empty-file":
        name.write_bytes(b"")
    name_super_journal(data / "app.db-journal", os.fsencode(name))
    # what SQLite makes of it, in a copy (safe: it deletes nothing that is absent to it)
    oracle = tmp_path / "oracle"
    shutil.copytree(data, oracle)
    with contextlib.closing(sqlite3.connect(oracle / "app.db")) as conn:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
    assert sorted(p.name for p in oracle.iterdir()) == ["app.db"]
    before = raw_tree(data)
    repo = Repository.init(tmp_path / "repo")
    stored, expected, rolled_back = (
        repo.load_snapshot(repo.resolve(commit(repo, d).id)).files[0] for d in (data, oracle, plain)
    )
    assert raw_tree(data) == before
    assert stored.hash == expected.hash != rolled_back.hash
    assert name.exists() == (named == "empty-file")


def test_a_super_journal_name_is_read_as_sqlite_reads_it() -> None:
    """readSuperJournal's rules: the magic last, a length from 1 to 512 within the journal, a
    checksum summing the name's bytes; the name ends at its first NUL, and an empty one is
    none. Whatever SQLite would not read as a name still ends in a record whose length casnap
    zeroes in its copy."""

    def record(name: bytes, length: int | None = None, checksum: int | None = None) -> bytes:
        total = sum(name) if checksum is None else checksum
        size = len(name) if length is None else length
        fields = size.to_bytes(4, "big") + total.to_bytes(4, "big") + JOURNAL_MAGIC
        return b"\0" * 600 + name + fields

    assert super_journal(record(b"/x/a.db-sj"), 700) == b"/x/a.db-sj"
    assert super_journal(record(b"/x/a\0tail"), 700) == b"/x/a"
    for bad in (
        record(b"\0/x"),  # starts with NUL: no name
        record(b"/x/a", checksum=1),  # a sector damaged: roll back
        record(b"/x/a", length=0),
        record(b"y" * 513),  # longer than SQLite reads
        record(b"/x/a")[:-1] + b"\0",  # no magic
    ):
        assert super_journal(bad[-SUPER_JOURNAL_TAIL:], len(bad)) is None
    assert super_journal(record(b"/x/a", length=30)[-30:], 30) is None  # past the journal's start
    assert ends_in_super_journal(record(b"y" * 513)[-SUPER_JOURNAL_TAIL:])
