"""casnap import of copies the old procedure left in the states a running app leaves them: a
copy taken mid-transaction with its hot `-journal` beside it, side files that are no regular
file. What is imported is what SQLite reads from the copy, and the copies stay as they were."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from pathlib import Path

from casnap.importer import import_copies
from casnap.repository import Repository
from casnap.staging import restore_entry


def copy_mid_transaction(tmp_path: Path, dest: Path) -> None:
    """dest (and its -journal): a `cp` of a rollback-journal database taken while a writer was
    half-way through a transaction that spilled pages into the file, as a crash leaves it."""
    live = tmp_path / "live.db"
    with contextlib.closing(sqlite3.connect(live)) as conn:
        conn.execute("CREATE TABLE t(x TEXT)")
        conn.executemany("INSERT INTO t VALUES (?)", [("a" * 500,)] * 400)
        conn.commit()
    with contextlib.closing(sqlite3.connect(live, isolation_level=None)) as conn:
        conn.execute("PRAGMA cache_size=2")  # the changed pages spill into the file
        conn.execute("BEGIN")
        conn.execute("UPDATE t SET x = 'b' || x")
        shutil.copyfile(live, dest)
        shutil.copyfile(f"{live}-journal", f"{dest}-journal")
        conn.execute("ROLLBACK")


def changed_rows(db: Path, tmp_path: Path) -> int:
    """The rows of the uncommitted transaction SQLite reads from db alone (a private copy)."""
    alone = tmp_path / "alone.db"
    shutil.copyfile(db, alone)
    try:
        with contextlib.closing(sqlite3.connect(alone)) as conn:
            return int(conn.execute("SELECT count(*) FROM t WHERE x LIKE 'b%'").fetchone()[0])
    finally:
        alone.unlink()


def test_a_copy_with_its_hot_journal_is_imported_rolled_back(tmp_path: Path) -> None:
    """A copy whose hot -journal was copied beside it holds pages of a transaction that never
    committed; SQLite rolls them back when it opens the pair, and so must the import (as a
    commit does with a data dir's hot journal), never storing the half-written state."""
    backups = tmp_path / "backups"
    backups.mkdir()
    copy = backups / "app_20250301_120000.db"
    copy_mid_transaction(tmp_path, copy)
    pair = {p.name: p.read_bytes() for p in backups.iterdir()}
    assert changed_rows(copy, tmp_path) > 0  # the file alone holds the uncommitted changes
    repo = Repository.init(tmp_path / "repo")
    result = import_copies(repo, backups, tmp_path / "data")
    assert result.imported == 1
    (entry,) = repo.load_snapshot(repo.resolve("latest", ["app.db"])).files
    out = tmp_path / "restored.db"
    restore_entry(repo, entry, out)
    assert changed_rows(out, tmp_path) == 0
    assert {p.name: p.read_bytes() for p in backups.iterdir()} == pair  # the copies untouched
    assert not [n for n in os.listdir(backups) if n.startswith(".casnap")]


def test_a_copy_whose_side_file_is_no_regular_file_is_skipped_by_name(tmp_path: Path) -> None:
    """A copy whose -wal is a symbolic link (or whose -journal is a folder) cannot be read as
    SQLite reads the pair: it is listed as skipped, naming that side file in the folder of
    copies, and the other copies are imported; the import stopped at it (exit 7) with an error
    naming the file in a private stage that no longer exists."""
    backups = tmp_path / "backups"
    backups.mkdir()
    for day in (1, 2, 3):
        with contextlib.closing(sqlite3.connect(backups / f"app_2025010{day}_120000.db")) as conn:
            conn.execute("CREATE TABLE t(x)")
    (tmp_path / "elsewhere").write_bytes(b"")
    os.symlink(tmp_path / "elsewhere", backups / "app_20250101_120000.db-wal")
    (backups / "app_20250102_120000.db-journal").mkdir()
    repo = Repository.init(tmp_path / "repo")
    result = import_copies(repo, backups, tmp_path / "data")
    assert [i.name for i in result.items] == ["app_20250103_120000.db"]
    assert result.imported == 1
    reasons = {s["name"]: s["reason"] for s in result.skipped}
    assert set(reasons) == {"app_20250101_120000.db", "app_20250102_120000.db"}
    assert "app_20250101_120000.db-wal is a symbolic link" in reasons["app_20250101_120000.db"]
    assert "app_20250102_120000.db-journal is a folder" in reasons["app_20250102_120000.db"]
