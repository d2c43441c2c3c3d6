"""A checkout whose swap cannot be completed does not lose data: a database whose replacement
fails keeps its -wal."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from casnap.committer import commit
from casnap.constants import TEMP_PREFIX
from casnap.errors import CasnapError
from casnap.repository import Repository
from casnap.restorer import checkout

CRASHING_APP = """
import os, signal, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA wal_autocheckpoint=0")
for i in range(500):
    db.execute("INSERT INTO k(v) VALUES (?)", (f"committed {i}",))
os.kill(os.getpid(), signal.SIGKILL)  # its 500 committed rows stay in the -wal
"""


def rows(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return int(conn.execute("SELECT count(*) FROM k").fetchone()[0])


def db_with_committed_wal(tmp_path: Path) -> tuple[Repository, str, Path]:
    """A repository holding a WAL database of 3000 rows; an app then committed 500 more, which
    sit only in the -wal beside it (the app died: nothing checkpointed them)."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    db = data / "w.db"
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE k(id INTEGER PRIMARY KEY, v TEXT)")
        conn.executemany("INSERT INTO k(v) VALUES (?)", [(f"base {i}",) for i in range(3000)])
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (data / "notes.txt").write_text("notes v1\n")
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data).id
    subprocess.run([sys.executable, "-c", CRASHING_APP, str(db)], check=False)
    (data / "notes.txt").write_text("notes v2\n")
    assert (data / "w.db-wal").stat().st_size > 0 and rows(db) == 3500
    return repo, sid, data


def state(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Bytes, mtime and inode of every file under root but a database's -shm (whose marks any
    reader rewrites) and casnap's temp files."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith("-shm") and not p.name.startswith(TEMP_PREFIX)
    }


def temp_names(*roots: Path) -> list[Path]:
    return [p for r in roots for p in r.rglob(f"{TEMP_PREFIX}*")]


# -- bug: the live database lost its -wal when its replacement failed ------------------------------


def test_a_database_whose_rename_fails_keeps_its_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stale -wal was removed before the restored database was renamed over the old one: a
    rename that then failed (EBUSY: a file mounted over) left the old database without the
    transactions its -wal held. Now the side files come back and the database keeps them."""
    repo, sid, data = db_with_committed_wal(tmp_path)
    before = state(data)
    real = os.replace

    def busy(src: Any, dst: Any, **kwargs: Any) -> None:
        if dst == "w.db" and kwargs.get("dst_dir_fd") is not None:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), dst)
        real(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", busy)
    with pytest.raises(CasnapError, match="busy") as err:
        checkout(repo, sid, data, safety_snapshot=False)
    monkeypatch.undo()
    assert "w.db" in str(err.value)
    assert rows(data / "w.db") == 3500
    assert (data / "w.db-wal").read_bytes() == before["w.db-wal"][0]
    assert not temp_names(data, tmp_path)
