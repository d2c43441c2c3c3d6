"""A database is captured once: its image streams from the file under a read transaction, equal
to what SQLite's backup API gives, with no scratch copy, and still one committed state while the
app writes."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from casnap import Repository, checkout, commit, dbimage, restored
from tests.helpers_memory import MB, run_measured


def make_db(path: Path, mode: str = "DELETE", rows: int = 600, *, seed: int = 0) -> None:
    """A database with overflow pages and free pages still holding what deleted rows left."""
    rng = np.random.default_rng(seed)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA journal_mode={mode}")
        conn.execute("PRAGMA secure_delete = OFF")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
        conn.execute("CREATE INDEX t_body ON t (body)")
        conn.executemany(
            "INSERT INTO t (body) VALUES (?)",
            [(rng.bytes(int(n)),) for n in rng.integers(10, 3000, size=rows)],
        )
        conn.commit()
        conn.execute("DELETE FROM t WHERE id % 3 = 0")
        conn.commit()


def rows(path: Path) -> tuple[str, list[tuple[int, bytes]]]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        return check, conn.execute("SELECT id, body FROM t ORDER BY id").fetchall()


def backup_bytes(path: Path, scratch: Path) -> bytes:
    """The image as SQLite's backup API makes it into a fresh file (free pages cleared)."""
    with dbimage.backup_file(path, scratch) as (image, _opened):
        return image.read_bytes()


def image_bytes(path: Path, scratch: Path, how: str = "read") -> bytes:
    with dbimage.open_image(path, scratch) as image:
        assert image.how == how
        data = image.read()
        assert image.intact()
    return data


@contextlib.contextmanager
def live(path: Path, *, empty_log: bool) -> Iterator[sqlite3.Connection]:
    """A connection holding a WAL database open (its -wal and -shm present), the log emptied
    by a checkpoint or left holding the frames of a last write."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("INSERT INTO t (body) VALUES (x'00')")
        if empty_log:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        yield conn
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["DELETE", "WAL"])
def test_an_image_read_in_place_equals_the_backup_apis(tmp_path: Path, mode: str) -> None:
    db = tmp_path / "app.db"
    make_db(db, mode)
    scratch = tmp_path / "scratch"
    assert db.read_bytes() != backup_bytes(db, scratch)  # header and free pages differ
    assert image_bytes(db, scratch) == backup_bytes(db, scratch)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db", "scratch"]
    assert list(scratch.iterdir()) == []


def test_an_image_of_a_header_sqlite_does_not_trust_equals_the_backup_apis(tmp_path: Path) -> None:
    """A version-valid-for number other than the change counter: SQLite takes the size from the
    file, and so does the image."""
    db = tmp_path / "app.db"
    make_db(db)
    raw = bytearray(db.read_bytes())
    raw[92:96] = (int.from_bytes(raw[24:28], "big") + 7).to_bytes(4, "big")
    raw[28:32] = (1).to_bytes(4, "big")
    raw[96:100] = (3008000).to_bytes(4, "big")
    db.write_bytes(raw)
    scratch = tmp_path / "scratch"
    assert image_bytes(db, scratch) == backup_bytes(db, scratch)


def test_a_wal_database_with_frames_in_its_log_goes_through_the_backup_api(
    tmp_path: Path,
) -> None:
    db = tmp_path / "app.db"
    make_db(db)
    scratch = tmp_path / "scratch"
    with live(db, empty_log=False):
        assert (tmp_path / "app.db-wal").stat().st_size > 0
        assert image_bytes(db, scratch, how="backup") == backup_bytes(db, scratch)
        with live(db, empty_log=True):
            assert image_bytes(db, scratch) == backup_bytes(db, scratch)


@pytest.mark.parametrize("case", ["rollback", "idle-wal", "live-wal"])
def test_a_commit_reads_a_database_in_place_with_no_scratch_image(
    tmp_path: Path, case: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "app.db"
    make_db(db, "DELETE" if case == "rollback" else "WAL")
    repo = Repository.init(tmp_path / "repo")
    (tmp_path / "not-a-dir").write_bytes(b"")
    repo.tmp_dir = tmp_path / "not-a-dir" / "tmp"  # any scratch file would fail the commit
    with contextlib.ExitStack() as stack:
        if case == "live-wal":
            stack.enter_context(live(db, empty_log=True))
        expected = backup_bytes(db, tmp_path / "scratch")
        sid = commit(repo, data).id
    assert {p.name for p in data.iterdir()} == {"app.db"}  # nothing left beside it
    out = tmp_path / "out"
    checkout(repo, sid, out, safety_snapshot=False)
    assert (out / "app.db").read_bytes() == expected
    assert rows(out / "app.db") == rows(db) and rows(db)[0] == "ok"


def test_a_rollback_writer_waits_until_the_image_is_read(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    make_db(db)
    expected = backup_bytes(db, tmp_path / "scratch")
    writer = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        with dbimage.open_image(db, tmp_path / "scratch") as image:
            head = image.read(1 << 16)
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                writer.execute("DELETE FROM t")
            data = head + image.read()
        assert data == expected
        writer.execute("DELETE FROM t")  # the lock went with the image
    finally:
        writer.close()


def test_wal_writes_and_checkpoints_during_the_read_never_reach_the_image(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    make_db(db)
    scratch = tmp_path / "scratch"
    with live(db, empty_log=True) as app:
        expected = backup_bytes(db, scratch)
        with dbimage.open_image(db, scratch) as image:
            assert image.how == "read"
            head = image.read(4096)
            app.execute("DELETE FROM t WHERE id % 2 = 1")
            app.executemany("INSERT INTO t (body) VALUES (?)", [(b"new" * 900,)] * 200)
            app.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # cannot pass the image's snapshot
            data = head + image.read()
    assert data == expected
    restored = tmp_path / "restored.db"
    restored.write_bytes(data)
    assert rows(restored)[1] == rows_of(expected, tmp_path)


def rows_of(image: bytes, tmp_path: Path) -> list[tuple[int, bytes]]:
    path = tmp_path / "other.db"
    path.write_bytes(image)
    return rows(path)[1]


def test_an_idle_wal_database_changed_during_the_read_is_read_again(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    make_db(db, "WAL")
    assert dbimage.idle_wal_database(db)
    with dbimage.open_image(db, tmp_path / "scratch") as image:
        image.read(4096)
        with contextlib.closing(sqlite3.connect(db)) as app:  # opened and written meanwhile
            app.execute("DELETE FROM t")
            app.commit()
        image.read()
        assert not image.intact()
    with dbimage.sqlite_image(db, tmp_path / "scratch") as path:
        assert rows(path)[1] == []


def test_a_checkout_smoke_check_maps_a_bounded_part_of_a_large_database(
    tmp_path: Path,
) -> None:
    """quick_check reads a staged database through a memory map; mapped pages count as the
    process's memory, so only a bounded part of a large database is mapped."""
    data = tmp_path / "data"
    data.mkdir()
    with contextlib.closing(sqlite3.connect(data / "app.db")) as conn:
        conn.execute("CREATE TABLE t (body BLOB)")
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50000) "
            "INSERT INTO t SELECT zeroblob(4000) FROM n"
        )
        conn.commit()
    assert (data / "app.db").stat().st_size > 200 * MB
    repo = tmp_path / "repo"
    base = ["--repo", str(repo), "--data", str(data)]
    proc, _ = run_measured([*base, "commit"])
    assert proc.returncode == 0, proc.stderr
    peaks = {}
    for smoke in ("--no-smoke", "--json"):
        out = tmp_path / f"out{smoke}"
        proc, peaks[smoke] = run_measured(
            [*base, "checkout", "latest", "--to", str(out), "--no-safety-snapshot", smoke]
        )
        assert proc.returncode == 0, proc.stderr
    assert '"sqlite-integrity"' in proc.stdout  # the smoke check ran
    assert peaks["--json"] < peaks["--no-smoke"] + 100 * MB, peaks


@pytest.mark.parametrize("mode", ["DELETE", "WAL", "WAL-open"])
def test_a_database_whose_name_is_not_utf8_is_captured(tmp_path: Path, mode: str) -> None:
    """A file name is bytes: one that is no UTF-8 (read as a lone surrogate) stopped the commit
    with an internal error where the database's name went into SQLite's URI."""
    data = tmp_path / "data"
    data.mkdir()
    db = data / os.fsdecode(b"caf\xe9.db")  # latin-1 bytes
    make_db(data / "plain.db", mode.split("-")[0], rows=50)
    os.rename(data / "plain.db", db)
    with contextlib.ExitStack() as stack:
        if mode == "WAL-open":  # frames in its log: SQLite's backup API reads it
            conn = stack.enter_context(contextlib.closing(sqlite3.connect(os.fsencode(db))))
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            conn.execute("DELETE FROM t WHERE id % 5 = 0")
            conn.commit()
        repo = Repository.init(tmp_path / "repo")
        sid = commit(repo, data).id
        expected = named_rows(db)
    out = tmp_path / "out"
    checkout(repo, sid, out)  # its smoke checks open it too
    assert named_rows(out / db.name) == expected and expected[0] == "ok"


def named_rows(path: Path) -> tuple[str, list[tuple[int, bytes]]]:
    """rows() for any file name (bytes, no URI)."""
    with contextlib.closing(sqlite3.connect(os.fsencode(path))) as conn:
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        return check, conn.execute("SELECT id, body FROM t ORDER BY id").fetchall()


def test_a_database_deleted_before_sqlite_opens_it_is_said_to_be(tmp_path: Path) -> None:
    """SQLite says only "unable to open database file" of a database deleted between the scan
    and its read (an app's `VACUUM INTO` copy replaced meanwhile): the error says it is gone."""
    from casnap.errors import SourceError

    path = tmp_path / "copy.db"
    with pytest.raises(SourceError, match=r"copy\.db: deleted while the commit read it"):
        with dbimage._sqlite_errors(path):
            sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    path.mkdir()  # there, and no database: SQLite's own words
    with pytest.raises(SourceError, match="cannot read database"):
        with dbimage._sqlite_errors(path):
            sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def test_a_data_dir_whose_name_is_not_utf8_is_checked_out_into(tmp_path: Path) -> None:
    """The record of what a checkout restored is kept under a hash of the target's name: one
    that is no UTF-8 stopped the checkout with an internal error once its files were in place
    (into the data dir, its pre-checkout snapshot saved)."""
    data = tmp_path / os.fsdecode(b"d\xe9ta")
    data.mkdir()
    make_db(data / "app.db", "WAL", rows=50)
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data).id
    expected = named_rows(data / "app.db")
    with contextlib.closing(sqlite3.connect(os.fsencode(data / "app.db"))) as conn:
        conn.execute("DELETE FROM t WHERE id % 5 = 0")
        conn.commit()
    for target in (tmp_path / os.fsdecode(b"out\xff"), data):
        checkout(repo, sid, target)
        record = restored.load(repo.id, str(target))  # what the next commit need not read
        assert record is not None and list(record.files) == ["app.db"]
        assert named_rows(target / "app.db") == expected


def test_a_file_with_sqlite_header_sqlite_cannot_open_is_stored_with_a_warning(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "app.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE t(x)")
        conn.commit()
    raw = bytearray(db.read_bytes())
    raw[16:18] = (768).to_bytes(2, "big")  # a page size SQLite refuses
    db.write_bytes(bytes(raw))
    repo = Repository.init(tmp_path / "repo")
    result = commit(repo, data)
    (entry,) = repo.load_snapshot(repo.resolve(result.id)).files
    assert entry.kind == "file"  # its bytes, as they are
    assert result.warnings == [
        "app.db: SQLite's header, but SQLite cannot open it (file is not a database): "
        "stored as plain bytes, unchecked"
    ]


def test_the_wal_of_a_file_sqlite_cannot_open_is_stored_beside_its_bytes(tmp_path: Path) -> None:
    """A WAL database whose header went bad (SQLite refuses it) with transactions still in its
    -wal: the file is stored as plain bytes, and so is its -wal, which a scan leaves out beside
    a database. It held the last transactions, lost else; restored, the pair reads as before
    once the header is mended."""
    data = tmp_path / "data"
    data.mkdir()
    db = data / "app.db"
    writer = (
        "import os, signal, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA journal_mode=WAL'); c.execute('PRAGMA wal_autocheckpoint=0')\n"
        "c.execute('CREATE TABLE t(x)'); c.execute('INSERT INTO t VALUES (1)')\n"
        "c.execute('PRAGMA wal_checkpoint(TRUNCATE)')\n"
        "c.execute('INSERT INTO t VALUES (2)')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", writer, str(db)], check=False)
    wal = (data / "app.db-wal").read_bytes()
    assert len(wal) > 0  # the second row lives there only
    raw = bytearray(db.read_bytes())
    good = bytes(raw[16:18])
    raw[16:18] = (768).to_bytes(2, "big")  # a page size SQLite refuses
    db.write_bytes(bytes(raw))
    for f in data.iterdir():  # older than any racy window: the next commit reuses entries
        os.utime(f, (1_600_000_000, 1_600_000_000))
    repo = Repository.init(tmp_path / "repo")
    result = commit(repo, data)
    stored = {e.path: e for e in repo.load_snapshot(repo.resolve(result.id)).files}
    assert sorted(stored) == ["app.db", "app.db-wal"]
    assert result.warnings == [
        "app.db: SQLite's header, but SQLite cannot open it (file is not a database): "
        "stored as plain bytes, unchecked, with its -wal"
    ]
    again = commit(repo, data)  # unchanged: the entries are reused
    assert again.bytes_read == 0
    assert sorted(e.path for e in repo.load_snapshot(repo.resolve(again.id)).files) == sorted(
        stored
    )
    target = tmp_path / "out"
    checkout(repo, again.id, target, smoke=False)
    assert (target / "app.db-wal").read_bytes() == wal
    mended = bytearray((target / "app.db").read_bytes())
    mended[16:18] = good
    (target / "app.db").write_bytes(bytes(mended))
    with contextlib.closing(sqlite3.connect(target / "app.db")) as conn:
        assert conn.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,)]
