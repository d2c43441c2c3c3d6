"""The stat cache for databases: an idle SQLite database (WAL or rollback journal) whose file and
-wal keep their fingerprint is taken from the parent snapshot without SQLite's backup API; a
write, a rewrite that keeps size and mtime, or a journal that may hold a transaction to roll back
makes the next commit read it again."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from casnap.committer import commit
from casnap.formats.sqlite import hot_journal
from casnap.manifest import FileEntry
from casnap.repository import Repository
from casnap.restorer import checkout

ROWS = 400


def age(root: Path, seconds: int = 60) -> None:
    """Move every file's mtime into the past, out of the racy window of the next commit."""
    past = time.time() - seconds
    for p in root.iterdir():
        os.utime(p, (past, past))


def make_db(path: Path, journal_mode: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA journal_mode={journal_mode}")
        db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT)")
        db.executemany("INSERT INTO t(body) VALUES (?)", [(f"row {i}" * 20,) for i in range(ROWS)])
        db.commit()


@contextlib.contextmanager
def held_open(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to a WAL database that stays open, as an idle application's does: its
    -wal and -shm stay beside it, and its writes stay in the -wal (no checkpoint)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute("UPDATE t SET body = body WHERE id = 1")  # opens the -wal, writes a frame
        yield db
    finally:
        db.close()


def entry(repo: Repository, sid: str, path: str = "app.db") -> FileEntry:
    snap = repo.load_snapshot(repo.resolve(sid))
    return next(f for f in snap.files if f.path == path)


def body(db_path: Path, row: int) -> str:
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        return str(db.execute("SELECT body FROM t WHERE id = ?", (row,)).fetchone()[0])


def test_an_open_wal_database_nobody_writes_is_taken_from_the_parent(tmp_path: Path) -> None:
    """The case of an application that keeps its database open between writes. Reading it opens
    its -wal, and SQLite run as root (as here) then gives the -wal to the database's owner, which
    moves its ctime: the fingerprint recorded must be the one that open leaves, or the database
    would be captured again by every commit."""
    data = tmp_path / "data"
    data.mkdir()
    make_db(data / "app.db", "WAL")
    repo = Repository.init(tmp_path / "repo")
    with held_open(data / "app.db"):
        assert sorted(p.name for p in data.iterdir()) == ["app.db", "app.db-shm", "app.db-wal"]
        age(data)
        first = commit(repo, data)
        assert first.bytes_read > 0
        second = commit(repo, data)
        assert (second.bytes_read, second.files_unchanged) == (0, 1)
        assert entry(repo, second.id) == entry(repo, first.id)  # the parent's entry, as it was
        third = commit(repo, data)
        assert third.bytes_read == 0


def idle_database(tmp_path: Path) -> tuple[Repository, Path]:
    """A new repository and a data dir holding one rollback-journal database, old enough for
    its fingerprint to vouch for it."""
    data = tmp_path / "data"
    data.mkdir()
    make_db(data / "app.db", "DELETE")
    age(data)
    return Repository.init(tmp_path / "repo"), data


def test_an_idle_rollback_journal_database_is_taken_from_the_parent(tmp_path: Path) -> None:
    repo, data = idle_database(tmp_path)
    first = commit(repo, data)
    second = commit(repo, data)
    assert first.bytes_read > 0 and second.bytes_read == 0
    assert entry(repo, second.id) == entry(repo, first.id)


def test_a_write_to_an_open_wal_database_is_captured_with_the_new_content(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    make_db(data / "app.db", "WAL")
    repo = Repository.init(tmp_path / "repo")
    with held_open(data / "app.db") as db:
        age(data)
        first = commit(repo, data)
        assert commit(repo, data).bytes_read == 0
        db.execute("UPDATE t SET body = 'changed' WHERE id = 7")  # lands in the -wal
        age(data)  # even with an old mtime: the -wal's size and ctime moved
        second = commit(repo, data)
    assert second.bytes_read > 0 and second.files_changed == 1
    assert entry(repo, second.id).hash != entry(repo, first.id).hash
    checkout(repo, second.id, tmp_path / "out", safety_snapshot=False)
    assert body(tmp_path / "out" / "app.db", 7) == "changed"
    checkout(repo, first.id, tmp_path / "old", safety_snapshot=False)
    assert body(tmp_path / "old" / "app.db", 7) == "row 6" * 20


def test_a_database_rewritten_under_its_old_size_and_mtime_is_read_again(
    tmp_path: Path,
) -> None:
    """A rewrite in place that keeps the size, with the mtime set back (as `cp -p` or a restore
    tool does): only the ctime tells, and it does."""
    data = tmp_path / "data"
    data.mkdir()
    db_path = data / "app.db"
    make_db(db_path, "DELETE")
    age(data)
    repo = Repository.init(tmp_path / "repo")
    first = commit(repo, data)
    st = db_path.stat()
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        db.execute("UPDATE t SET body = ? WHERE id = 3", ("x" * len("row 2" * 20),))
        db.commit()
    os.utime(db_path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (db_path.stat().st_size, db_path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    second = commit(repo, data)
    assert second.bytes_read > 0 and second.files_changed == 1
    checkout(repo, second.id, tmp_path / "out", safety_snapshot=False)
    assert body(tmp_path / "out" / "app.db", 3) == "x" * len("row 2" * 20)
    assert entry(repo, first.id).hash != entry(repo, second.id).hash


def _hot_journal_without_a_change(db_path: Path) -> None:
    """A rollback journal a writer synced before it wrote a page of the database (a crash at
    that point): SQLite's magic header, the page size, one record holding page 1 as it is."""
    page_size = 4096
    with open(db_path, "rb") as f:
        page1 = f.read(page_size)
    header = bytearray(512)  # one sector
    header[0:8] = bytes.fromhex("d9d505f920a163d7")  # the journal magic
    header[8:12] = (1).to_bytes(4, "big")  # records
    header[12:16] = (0).to_bytes(4, "big")  # checksum nonce
    header[16:20] = (db_path.stat().st_size // page_size).to_bytes(4, "big")  # original pages
    header[20:24] = (512).to_bytes(4, "big")  # sector size
    header[24:28] = page_size.to_bytes(4, "big")
    record = (1).to_bytes(4, "big") + page1 + (0).to_bytes(4, "big")
    (db_path.parent / (db_path.name + "-journal")).write_bytes(bytes(header) + record)


def test_a_database_with_a_hot_journal_is_never_taken_from_the_parent(tmp_path: Path) -> None:
    """Its file alone does not say what it holds, whatever its fingerprint: SQLite must read it,
    after rolling the journal back (in a private copy), and the entry read vouches for nothing."""
    data = tmp_path / "data"
    data.mkdir()
    db_path = data / "app.db"
    make_db(db_path, "DELETE")
    age(data)
    repo = Repository.init(tmp_path / "repo")
    first = commit(repo, data)
    assert entry(repo, first.id).source is not None  # the stat cache would serve it
    fingerprint = (db_path.stat().st_size, db_path.stat().st_mtime_ns, db_path.stat().st_ctime_ns)
    _hot_journal_without_a_change(db_path)
    assert hot_journal(db_path)
    st = db_path.stat()
    assert (st.st_size, st.st_mtime_ns, st.st_ctime_ns) == fingerprint  # the file did not move
    second = commit(repo, data)
    assert second.bytes_read > 0 and second.files_unchanged == 1  # read: the same content
    assert entry(repo, second.id).hash == entry(repo, first.id).hash
    assert entry(repo, second.id).source is None
    assert hot_journal(db_path)  # the data dir as it was


def test_which_journals_are_hot(tmp_path: Path) -> None:
    db_path = tmp_path / "app.db"
    make_db(db_path, "DELETE")
    journal = tmp_path / "app.db-journal"
    assert not hot_journal(db_path)  # none
    journal.write_bytes(b"")
    assert not hot_journal(db_path)  # truncated (journal_mode=TRUNCATE)
    journal.write_bytes(bytes(1024))
    assert not hot_journal(db_path)  # header zeroed (journal_mode=PERSIST)
    _hot_journal_without_a_change(db_path)
    assert hot_journal(db_path)
    journal.unlink()
    os.mkfifo(journal)
    assert hot_journal(db_path)  # not a regular file: never opened, never trusted


def test_a_snapshot_of_another_host_is_no_parent(
    tmp_path: Path, host_name: Callable[[str], None]
) -> None:
    """Hosts sharing a repository keep their data dirs at the same path: a commit's parent (its
    stat cache, its guard against an emptied data dir) is its own host's newest snapshot, as
    restic's is. Another host's made the first commit of an empty data dir fail, and its
    entries stood for files this host never read."""
    repo, data = idle_database(tmp_path)
    first = commit(repo, data)
    assert commit(repo, data).files_unchanged == 1  # its own parent: taken from it
    host_name("app-2")
    second = commit(repo, data)
    assert second.files_unchanged == 0
    assert repo.load_snapshot(repo.resolve(second.id)).parent is None
    assert commit(repo, data).files_unchanged == 1  # app-2's own snapshot is its parent now
    host_name("app-3")
    (data / "app.db").unlink()
    empty = commit(repo, data)  # app-3's first commit, of a data dir it keeps empty
    assert repo.load_snapshot(repo.resolve(empty.id)).files == ()
    host_name("app-1")
    assert repo.load_snapshot(repo.resolve(first.id)).files  # app-1's history is untouched
