"""casnap import of copies the old procedure left in the states a running app leaves them: a
copy taken mid-transaction with its hot `-journal` beside it, side files that are no regular
file. What is imported is what SQLite reads from the copy, and the copies stay as they were."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

from casnap.importer import import_copies
from casnap.repository import Repository
from casnap.staging import restore_entry


def rows_db(path: Path, rows: int) -> None:
    """A database at path of one table of `rows` rows of 500 bytes, committed."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE t(x TEXT)")
        conn.executemany("INSERT INTO t VALUES (?)", [("a" * 500,)] * rows)
        conn.commit()


def copy_mid_transaction(tmp_path: Path, dest: Path) -> None:
    """dest (and its -journal): a `cp` of a rollback-journal database taken while a writer was
    half-way through a transaction that spilled pages into the file, as a crash leaves it."""
    live = tmp_path / "live.db"
    rows_db(live, 400)
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


def test_copies_the_user_may_not_read_are_skipped_by_name(tmp_path: Path) -> None:
    """A copy the user running import may not read (a file, a file or a folder inside a folder
    copy) is listed as skipped in the plan, naming what cannot be read, and the others are
    imported: the import stopped at it (exit 8) naming a file in its private stage, and a
    folder it could not enter was left out of a folder copy without a word."""
    from casnap.sample import generate
    from tests.test_unreadable_source import as_user

    data = tmp_path / "data"
    generate(data, size_mb=0.2, seed=3)
    backups = tmp_path / "backups"
    backups.mkdir()
    for day in (1, 2, 6):
        shutil.copyfile(data / "app.db", backups / f"app_2025010{day}_120000.db")
    (backups / "app_20250106_120000.db-wal").write_bytes(b"")
    for day in (3, 4):
        shutil.copytree(data / "faiss", backups / f"faiss_2025010{day}")
    shutil.copytree(data, backups / "data_20250105")
    shut = [
        backups / "app_20250101_120000.db",
        backups / "faiss_20250103" / "ivf.index",
        backups / "data_20250105" / "faiss",
        backups / "app_20250106_120000.db-wal",
    ]
    (backups / "faiss_20250104" / "sub").mkdir()
    (backups / "faiss_20250104" / "sub" / "x.index").write_bytes(b"shard")
    shut.append(backups / "faiss_20250104" / "sub")
    repo = tmp_path / "repo"
    try:
        for p in shut:
            p.chmod(0)
        planned = as_user(repo, data, "import", str(backups), "--dry-run", "--json")
        done = as_user(repo, data, "import", str(backups), "--json")
    finally:
        for p in shut:
            p.chmod(0o755)
    for proc in (planned, done):
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
    reasons = {s["name"]: s["reason"] for s in json.loads(planned.stdout)["skipped"]}
    assert reasons == {
        "app_20250101_120000.db": "cannot be read (Permission denied)",
        "faiss_20250103": "cannot be read: faiss_20250103/ivf.index (Permission denied)",
        "faiss_20250104": "cannot be read: faiss_20250104/sub (Permission denied)",
        "data_20250105": "cannot be read: data_20250105/faiss (Permission denied)",
        "app_20250106_120000.db": "app_20250106_120000.db-wal cannot be read (Permission denied)",
    }
    out = json.loads(done.stdout)
    assert [i["name"] for i in out["items"]] == ["app_20250102_120000.db"]
    assert out["imported"] == 1
    assert not [n for n in os.listdir(backups) if n.startswith(".casnap")]


def test_a_copy_still_being_written_is_skipped_until_it_is_complete(tmp_path: Path) -> None:
    """The old procedure's cron job still runs: a `cp` into the folder is half-way when the
    import plans, and finishes while earlier copies are committed. That copy is skipped, said
    so, and a later import takes it whole: it was stored cut short, and every later import
    called it `already` imported."""
    data = tmp_path / "data"
    data.mkdir()
    backups = tmp_path / "backups"
    backups.mkdir()
    live = data / "app.db"
    rows_db(live, 400)
    shutil.copyfile(live, backups / "app_20250101_120000.db")
    whole = live.read_bytes()
    writing = backups / "app_20250102_120000.db"
    writing.write_bytes(whole[: len(whole) // 2])  # the cp is half-way

    def cp_goes_on(done: int, total: int) -> None:
        if writing.stat().st_size < len(whole):
            with open(writing, "ab") as f:
                f.write(whole[len(whole) // 2 :])

    repo = Repository.init(tmp_path / "repo")
    result = import_copies(repo, backups, data, progress=cp_goes_on)
    assert writing.stat().st_size == len(whole)  # the cp ended during the import
    assert [i.name for i in result.items if i.status == "imported"] == ["app_20250101_120000.db"]
    (skipped,) = result.skipped
    assert skipped["name"] == "app_20250102_120000.db"
    assert "changed while" in skipped["reason"]
    again = import_copies(repo, backups, data)
    assert [i.name for i in again.items if i.status == "imported"] == ["app_20250102_120000.db"]
    (entry,) = repo.load_snapshot(repo.resolve("latest", ["app.db"])).files
    out = tmp_path / "restored.db"
    restore_entry(repo, entry, out)
    with contextlib.closing(sqlite3.connect(out)) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (400,)


def test_a_copy_that_changes_while_it_is_imported_is_named(tmp_path: Path) -> None:
    """A copy written to while its own commit runs: the snapshot is stored as read, and a
    warning names the copy and the snapshot that may hold it incomplete."""
    backups = tmp_path / "backups"
    backups.mkdir()
    copy = backups / "app_20250101_120000.db"
    rows_db(copy, 2000)

    def cp_goes_on(done: int, total: int) -> None:
        with open(copy, "ab") as f:
            f.write(bytes(4096))

    repo = Repository.init(tmp_path / "repo")
    result = import_copies(repo, backups, tmp_path / "data", progress=cp_goes_on)
    assert result.imported == 1
    (sid,) = [i.snapshot for i in result.items]
    assert sid is not None
    (warning,) = result.warnings
    assert warning.startswith("app_20250101_120000.db: changed while it was imported")
    assert f"casnap forget {sid[:8]}" in warning


def test_stamps_with_a_zone_or_fractions_keep_the_data_dir_name() -> None:
    """`date -Iseconds` (2025-01-01T12:00:00+01:00), `date -u +%Y%m%dT%H%M%SZ` and
    `date +%FT%T.%N` stamps: the zone gives the time (not local time) and, like the fraction
    of a second, is part of the stamp; these copies were committed as `app_+01:00.db`,
    `app_Z.db` and `app.123456.db`, beside the history of app.db, at the wrong time."""
    import datetime as dt

    from casnap.importer import stamp_of

    utc = dt.UTC
    cases = {
        "app_2025-01-01T12:00:00+01:00.db": (dt.datetime(2025, 1, 1, 11, tzinfo=utc), "app.db"),
        "app_20250101T120000Z.db": (dt.datetime(2025, 1, 1, 12, tzinfo=utc), "app.db"),
        "app_20250101_120000+0530.db": (dt.datetime(2025, 1, 1, 6, 30, tzinfo=utc), "app.db"),
        "faiss_2025-01-01T12:00:00-05:00": (dt.datetime(2025, 1, 1, 17, tzinfo=utc), "faiss"),
        "app_2025-01-01T12:00:00.123456789Z.db": (
            dt.datetime(2025, 1, 1, 12, 0, 0, 123456, tzinfo=utc),
            "app.db",
        ),
    }
    for name, (when, base) in cases.items():
        got = stamp_of(name)
        assert got is not None, name
        assert (got[0].astimezone(utc), got[1]) == (when, base), name
    local = stamp_of("app_2025-01-01T12:00:00.250.db")
    assert local is not None and local[1] == "app.db"
    assert local[0] == dt.datetime(2025, 1, 1, 12, 0, 0, 250000).astimezone()
    # a counter after the stamp is no zone nor fraction
    assert stamp_of("app_20250101_120000-0001.db") is not None
    assert stamp_of("app_20250101_120000-0001.db")[1] == "app_0001.db"  # type: ignore[index]
    assert stamp_of("app_20250101_120000.1.db")[1] == "app.1.db"  # type: ignore[index]


def test_a_dated_copy_of_the_data_dir_with_a_wal_database_is_only_read(tmp_path: Path) -> None:
    """`cp -a data backups/data_<date>` while the app ran copies its database's -wal and -shm:
    reading that database wrote to the copy's -shm (SQLite rebuilds its index there), so the
    folder of copies was modified, and the copy called changed while it was imported."""
    backups = tmp_path / "backups"
    copy = backups / "data_20250120"
    copy.mkdir(parents=True)
    live = tmp_path / "live.db"
    with contextlib.closing(sqlite3.connect(live)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("CREATE TABLE t(x)")
        conn.execute("INSERT INTO t VALUES ('in the wal')")
        conn.commit()
        for suffix in ("", "-wal", "-shm"):
            shutil.copy2(f"{live}{suffix}", f"{copy / 'app.db'}{suffix}")
    (copy / "notes.txt").write_text("beside it")

    def files() -> dict[str, tuple[bytes, int]]:
        return {
            p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in copy.iterdir() if p.is_file()
        }

    before = files()
    repo = Repository.init(tmp_path / "repo")
    result = import_copies(repo, backups, tmp_path / "data")
    assert result.imported == 1 and result.warnings == []
    assert files() == before
    snap = repo.load_snapshot(repo.resolve("latest"))
    assert sorted(f.path for f in snap.files) == ["app.db", "notes.txt"]
    entry = next(f for f in snap.files if f.path == "app.db")
    out = tmp_path / "restored.db"
    restore_entry(repo, entry, out)
    with contextlib.closing(sqlite3.connect(out)) as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [("in the wal",)]
    assert not [n for n in os.listdir(backups) if n.startswith(".casnap")]


def test_a_latest_folder_is_a_copy_of_its_folder_as_app_latest_db_is_of_app_db(
    tmp_path: Path,
) -> None:
    """`rsync data/faiss/ backups/faiss_latest/` and `cp -a data backups/data_latest` are named
    as `cp app.db backups/app_latest.db` is: they were committed as folders named
    `faiss_latest` and `data_latest` inside the data dir."""
    from casnap.importer import plan

    backups = tmp_path / "backups"
    for name in ("faiss_latest", "data-latest", "app_latest.db"):
        target = backups / name
        if name.endswith(".db"):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"SQLite format 3\x00" + bytes(84))
        else:
            target.mkdir(parents=True)
            (target / "x.index").write_bytes(b"shard")
    planned = plan(None, backups, tmp_path / "data")
    kinds = {i.name: (i.kind, i.path, i.time_from) for i in planned.items}
    assert kinds == {
        "faiss_latest": ("folder", "faiss", "mtime"),
        "data-latest": ("data dir", None, "mtime"),
        "app_latest.db": ("file", "app.db", "mtime"),
    }


def test_an_interrupted_rsyncs_temp_files_are_left_out_of_a_folder_copy(tmp_path: Path) -> None:
    """`rsync data/faiss/ backups/faiss/` stopped part way leaves its temp files in the copy
    (`.hnsw.index.Xy12Ab`, and `.~tmp~/` with --delay-updates): imported, a checkout put them
    into the data dir (warned of as truncated FAISS indexes). They are left out, said once."""
    faiss_copy = tmp_path / "backups" / "faiss_20250301"
    (faiss_copy / ".~tmp~").mkdir(parents=True)
    (faiss_copy / "hnsw.index").write_bytes(b"whole")
    (faiss_copy / ".hnsw.index.Xy12Ab").write_bytes(b"half")
    (faiss_copy / ".~tmp~" / "ivf.index").write_bytes(b"half")
    (faiss_copy / ".hidden").write_bytes(b"the app's own")  # not rsync's: kept
    repo = Repository.init(tmp_path / "repo")
    result = import_copies(repo, tmp_path / "backups", tmp_path / "data")
    assert result.imported == 1
    snap = repo.load_snapshot(repo.resolve("latest"))
    assert sorted(f.path for f in snap.files) == ["faiss/.hidden", "faiss/hnsw.index"]
    assert [w for w in result.warnings if "rsync" in w] == [
        "faiss_20250301: left out 2 temp files of an rsync that did not finish "
        "(.hnsw.index.Xy12Ab, .~tmp~/ivf.index)"
    ]
    assert (faiss_copy / ".hnsw.index.Xy12Ab").exists()  # the copy as it was
