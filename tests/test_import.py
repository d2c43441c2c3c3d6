"""casnap import: the seed procedure's dated copies become snapshots with their original times,
at their data-dir paths, in time order, once; log --path, latest --path and prune then see them."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap.cli import cli
from casnap.config import iso_time
from casnap.importer import IMPORTED_TAG, _link, import_copies, plan, stamp_of
from casnap.repository import Repository
from tests.helpers_smoke import evolve_app, make_app


def local(*args: int) -> dt.datetime:
    return dt.datetime(*args).astimezone()


def stamp(t: dt.datetime) -> str:
    return iso_time(t)


def set_mtime(path: Path, t: dt.datetime) -> None:
    ns = int(t.timestamp()) * 1_000_000_000
    os.utime(path, ns=(ns, ns))


def tree(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under root: bytes, mtime and inode (an import only reads the copies)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = (p.read_bytes(), st.st_mtime_ns, st.st_ino)
    return out


def rows(db: Path) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return conn.execute("SELECT * FROM documents ORDER BY id").fetchall()


@pytest.fixture
def seed(tmp_path: Path) -> tuple[Path, Path]:
    """A data dir and the backups/ dir the seed procedure left over three days."""
    data = make_app(tmp_path / "data")
    backups = tmp_path / "backups"
    backups.mkdir()
    shutil.copytree(data, backups / "data_20241231_235959")  # a dated copy of the whole dir
    for day in (1, 2, 3):
        if day > 1:
            evolve_app(data, day)
        shutil.copyfile(data / "app.db", backups / f"app_2025010{day}_120000.db")
        if day < 3:
            shutil.copytree(data / "faiss", backups / f"faiss_2025010{day}")
    shutil.copyfile(data / "app.db", backups / "app_latest.db")
    set_mtime(backups / "app_latest.db", local(2025, 1, 3, 12, 0, 5))
    shutil.copytree(data / "faiss", backups / "faiss")  # rsync'd: no date in its name
    for f in (backups / "faiss").iterdir():
        set_mtime(f, local(2025, 1, 3, 11, 0, 0))
    set_mtime(backups / "faiss" / "flat.index", local(2025, 1, 3, 11, 30, 0))
    (backups / "notes.txt").write_text("how we back up")
    (backups / ".DS_Store").write_bytes(b"\0\0")
    (backups / "app_20250101.tar.gz").write_bytes(b"not really")
    return data, backups


EXPECTED = [  # (name, path, time, time from)
    ("data_20241231_235959", None, local(2024, 12, 31, 23, 59, 59), "name"),
    ("faiss_20250101", "faiss", local(2025, 1, 1), "name"),
    ("app_20250101_120000.db", "app.db", local(2025, 1, 1, 12), "name"),
    ("faiss_20250102", "faiss", local(2025, 1, 2), "name"),
    ("app_20250102_120000.db", "app.db", local(2025, 1, 2, 12), "name"),
    ("faiss", "faiss", local(2025, 1, 3, 11, 30), "mtime"),
    ("app_20250103_120000.db", "app.db", local(2025, 1, 3, 12), "name"),
    ("app_latest.db", "app.db", local(2025, 1, 3, 12, 0, 5), "mtime"),
]


def run(tmp_path: Path, data: Path, *args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, ["--repo", str(tmp_path / "repo"), "--data", str(data), *args])
    return r.exit_code, r.stdout, r.stderr


def test_names_carry_their_times_and_data_dir_names() -> None:
    cases = {
        "app_20250101_120000.db": (local(2025, 1, 1, 12), "app.db"),
        "app-2025-01-01T12-30-15.db": (local(2025, 1, 1, 12, 30, 15), "app.db"),
        "faiss_20250102": (local(2025, 1, 2), "faiss"),
        "2025-01-03_0815": (local(2025, 1, 3, 8, 15), ""),
        "data_20241231_235959": (local(2024, 12, 31, 23, 59, 59), "data"),
        "20250104_app.db": (local(2025, 1, 4), "app.db"),
    }
    for name, expected in cases.items():
        assert stamp_of(name) == expected, name
    for name in ("app_latest.db", "app.db", "app_20251301.db", "build_123456789.db"):
        assert stamp_of(name) is None, name


def test_dry_run_plans_in_time_order_and_creates_nothing(
    seed: tuple[Path, Path], tmp_path: Path
) -> None:
    data, backups = seed
    before = tree(backups)
    code, out, err = run(tmp_path, data, "import", str(backups), "--dry-run", "--json")
    assert code == 0, err
    assert not (tmp_path / "repo").exists()
    doc = json.loads(out)
    assert doc["dry_run"] and doc["imported"] == 0
    got = [(i["name"], i["path"], i["time"], i["time_from"]) for i in doc["items"]]
    assert got == [(n, p, stamp(t), f) for n, p, t, f in EXPECTED]
    assert {i["status"] for i in doc["items"]} == {"planned"}
    assert [i["kind"] for i in doc["items"]][:2] == ["data dir", "folder"]
    skipped = {s["name"]: s["reason"] for s in doc["skipped"]}
    assert set(skipped) == {"notes.txt", "app_20250101.tar.gz"}  # .DS_Store: passed over
    code, out, err = run(tmp_path, data, "import", str(backups), "--dry-run")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("would import") and "(all)" in lines[0]
    latest = next(line for line in lines if "app_latest.db" in line)
    assert "app.db" in latest and "time from its mtime" in latest
    assert "2025-01-03 12:00:05" in latest
    assert any(line.startswith("skipped") and "notes.txt" in line for line in lines)
    assert tree(backups) == before


def test_import_commits_each_copy_at_its_time_once(seed: tuple[Path, Path], tmp_path: Path) -> None:
    data, backups = seed
    before = tree(backups)
    code, out, err = run(tmp_path, data, "import", str(backups), "--json")
    assert code == 0, err
    assert "created repository" in err
    doc = json.loads(out)
    assert doc["imported"] == len(EXPECTED) and doc["already_imported"] == 0
    assert tree(backups) == before  # read only; no stage left behind
    assert sorted(os.listdir(backups)) == sorted(before_names(before) | {".DS_Store"})

    repo = Repository.open(tmp_path / "repo")
    snaps = repo.snapshots()  # oldest first
    assert [(s.message, s.paths, s.time) for _, s in snaps] == [
        (f"imported from {n}", (p,) if p else (), stamp(t)) for n, p, t, _ in EXPECTED
    ]
    assert all(s.tags == (IMPORTED_TAG,) for _, s in snaps)
    assert {s.source for _, s in snaps} == {str(data.resolve())}
    # committed oldest first: each database copy's parent is the one before
    db = [(sid, s) for sid, s in snaps if s.paths == ("app.db",)]
    assert [s.parent for _, s in db[1:]] == [sid.hex() for sid, _ in db[:-1]]
    assert db[1][1].stats["files_changed"] == 1

    # importing again adds nothing
    code, out, err = run(tmp_path, data, "import", str(backups), "--json")
    assert code == 0, err
    again = json.loads(out)
    assert again["imported"] == 0 and again["already_imported"] == len(EXPECTED)
    assert [i["snapshot"] for i in again["items"]] == [i["snapshot"] for i in doc["items"]]
    assert len(Repository.open(tmp_path / "repo").snapshots()) == len(EXPECTED)

    # a new copy later: only it is imported
    evolve_app(data, 9)
    shutil.copyfile(data / "app.db", backups / "app_20250104_120000.db")
    code, out, err = run(tmp_path, data, "import", str(backups), "--json")
    new = [i for i in json.loads(out)["items"] if i["status"] == "imported"]
    assert [i["name"] for i in new] == ["app_20250104_120000.db"]


def before_names(t: dict) -> set[str]:
    return {k.split("/")[0] for k in t}


def test_log_latest_and_prune_see_imported_snapshots(
    seed: tuple[Path, Path], tmp_path: Path
) -> None:
    data, backups = seed
    code, _, err = run(tmp_path, data, "import", str(backups))
    assert code == 0, err
    code, out, _ = run(tmp_path, data, "log", "--path", "app.db", "--json")
    logged = json.loads(out)
    assert [r["message"] for r in logged] == [
        "imported from app_latest.db",
        "imported from app_20250103_120000.db",
        "imported from app_20250102_120000.db",
        "imported from app_20250101_120000.db",
    ]
    code, out, _ = run(tmp_path, data, "log", "--path", "faiss")
    assert len(out.splitlines()) == 4 and "2025-01-03 11:30:00" in out.splitlines()[1]

    # latest --path: the newest copy of each
    out_dir = tmp_path / "restored"
    code, _, err = run(
        tmp_path, data, "checkout", "latest", "--path", "faiss", "--to", str(out_dir), "--no-smoke"
    )
    assert code == 0, err
    for f in (backups / "faiss").iterdir():
        assert (out_dir / "faiss" / f.name).read_bytes() == f.read_bytes(), f.name
    assert not (out_dir / "app.db").exists()
    code, out_bytes, err = cat(tmp_path, data, "latest", "app.db", "--path", "app.db")
    assert code == 0, err
    (tmp_path / "latest.db").write_bytes(out_bytes)
    assert rows(tmp_path / "latest.db") == rows(backups / "app_latest.db")
    code, out_bytes, err = cat(tmp_path, data, "imported", "faiss/ivf.index", "--path", "faiss")
    assert (code, out_bytes) == (0, (backups / "faiss" / "ivf.index").read_bytes()), err
    code, out_bytes, err = cat(tmp_path, data, "latest", "faiss/ivf.index", "--tag", "imported")
    assert code == 4 and out_bytes == b""  # the newest imported snapshot is app_latest.db's
    # an older copy, named by its id, holds that day's data
    first_faiss = json.loads(run(tmp_path, data, "log", "--path", "faiss", "--json")[1])[-1]
    code, out_bytes, _ = cat(tmp_path, data, first_faiss["id"], "faiss/flat.index")
    assert out_bytes == (backups / "faiss_20250101" / "flat.index").read_bytes()
    # the whole-dir copy restores as the data dir it was
    whole = tmp_path / "whole"
    code, _, err = run(
        tmp_path, data, "checkout", "latest", "--path", ".", "--to", str(whole), "--no-smoke"
    )
    assert code == 0, err
    copy = backups / "data_20241231_235959"
    assert sorted(p.relative_to(whole) for p in whole.rglob("*") if p.is_file()) == sorted(
        p.relative_to(copy) for p in copy.rglob("*") if p.is_file()
    )
    assert rows(whole / "app.db") == rows(copy / "app.db")

    # retention groups imported snapshots with the data dir's own
    code, out, err = run(
        tmp_path, data, "prune", "--keep-last", "2", "--path", "app.db", "--dry-run", "--json"
    )
    assert code == 0, err
    (group,) = json.loads(out)["groups"]
    assert [k["id"] for k in group["keep"]] == [r["id"] for r in logged[:2]]
    # and a commit of the live data dir chains on the newest import of the same path
    code, out, err = run(tmp_path, data, "commit", "app.db", "--json")
    assert code == 0, err
    repo = Repository.open(tmp_path / "repo")
    live = repo.load_snapshot(repo.resolve(json.loads(out)["id"]))
    assert live.parent == logged[0]["id"]


def cat(tmp_path: Path, data: Path, *args: str) -> tuple[int, bytes, str]:
    r = CliRunner().invoke(
        cli, ["--repo", str(tmp_path / "repo"), "--data", str(data), "cat", *args]
    )
    return r.exit_code, r.stdout_bytes, r.stderr


def test_library_import_and_data_names(tmp_path: Path) -> None:
    """The operation itself: --data-name marks whole-dir copies; a WAL copy keeps its -wal;
    copies staged on another filesystem than the folder still import (copied, not linked)."""
    data = make_app(tmp_path / "app-data")
    backups = tmp_path / "old"
    backups.mkdir()
    shutil.copytree(data, backups / "snapshot-2025-02-01")
    shutil.copytree(data, backups / "2025-02-02")
    live = tmp_path / "live.db"
    wal = backups / "app_20250203_080000.db"
    with contextlib.closing(sqlite3.connect(live)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("CREATE TABLE documents(id INTEGER PRIMARY KEY, title TEXT)")
        conn.execute("INSERT INTO documents VALUES (1, 'in the wal')")
        conn.commit()
        shutil.copyfile(live, wal)  # copied while open: the rows are in the -wal
        shutil.copyfile(str(live) + "-wal", str(wal) + "-wal")
    assert Path(str(wal) + "-wal").stat().st_size > 0
    copied = {p.name: p.read_bytes() for p in backups.iterdir() if p.is_file()}
    repo = Repository.init(tmp_path / "repo")
    planned = plan(repo, backups, data, data_names=["snapshot"])
    kinds = {i.name: (i.kind, i.path) for i in planned.items}
    assert kinds == {
        "snapshot-2025-02-01": ("data dir", None),
        "2025-02-02": ("data dir", None),
        "app_20250203_080000.db": ("file", "app.db"),
    }
    result = import_copies(repo, backups, data, data_names=["snapshot"])
    assert result.imported == 3
    sid = repo.resolve("latest", ["app.db"])
    (entry,) = repo.load_snapshot(sid).files
    assert entry.kind == "sqlite"
    out = tmp_path / "restored.db"
    from casnap.staging import restore_entry

    restore_entry(repo, entry, out)
    assert rows(out) == [(1, "in the wal")]  # the -wal's content was captured
    assert {p.name: p.read_bytes() for p in backups.iterdir() if p.is_file()} == copied
    assert not [n for n in os.listdir(backups) if n.startswith(".casnap")]


def test_a_copy_on_another_filesystem_is_staged_as_a_copy(tmp_path: Path) -> None:
    """Where a hard link cannot be made (the stage on another filesystem), the staged file is a
    copy with the same bytes, mode and mtime."""
    other = Path("/dev/shm")
    if not other.is_dir() or other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem to stage on")
    src = tmp_path / "app_20250101_120000.db"
    src.write_bytes(b"x" * 5000)
    os.chmod(src, 0o640)
    set_mtime(src, local(2025, 1, 1, 12))
    with tempfile.TemporaryDirectory(dir=other) as stage:
        dest = Path(stage) / "app.db"
        _link(src, dest)
        st, sst = dest.stat(), src.stat()
        assert dest.read_bytes() == src.read_bytes() and st.st_ino != sst.st_ino
        assert (st.st_mode, st.st_mtime_ns) == (sst.st_mode, sst.st_mtime_ns)


def test_import_refuses_the_repository_and_missing_folders(
    seed: tuple[Path, Path], tmp_path: Path
) -> None:
    data, backups = seed
    code, _, err = run(tmp_path, data, "import", str(tmp_path / "nowhere"))
    assert code == 7 and "nowhere" in err
    code, _, err = run(tmp_path, data, "init")
    code, _, err = run(tmp_path, data, "import", str(tmp_path / "repo" / "tmp"))
    assert code == 2 and "inside the repository" in err
    # a repository kept inside the folder is not a copy
    inner = backups / "casnap-repo"
    CliRunner().invoke(cli, ["--repo", str(inner), "init"])
    result = plan(Repository.open(tmp_path / "repo"), backups, data)
    assert {"name": "casnap-repo", "reason": "a casnap repository"} in result.skipped
    # the folder holding the data dir: the data dir is no copy of itself
    result = plan(Repository.open(tmp_path / "repo"), tmp_path, data)
    assert {"name": "data", "reason": "the data dir itself (commit it)"} in result.skipped
    assert "repo" in {s["name"] for s in result.skipped}


def test_import_refuses_another_casnap_repository_and_its_folders(
    seed: tuple[Path, Path], tmp_path: Path
) -> None:
    """`mv backups old-backups && casnap import old-backups` (the README's retention example)
    where backups/ was already casnap's own default repository: its packs/, index/ and
    snapshots/ were planned as copies of data-dir folders of those names. A folder that is a
    casnap repository, or lies inside one, is refused before anything is made: `copy --from`
    is what takes its snapshots."""
    data, _ = seed
    other = tmp_path / "old-backups"
    CliRunner().invoke(cli, ["--repo", str(other), "--data", str(data), "commit", "-q"])
    assert (other / "config").is_file()
    for folder in (other, other / "snapshots"):
        code, out, err = run(tmp_path, data, "import", str(folder), "--dry-run")
        assert code == 2, (out, err)
        assert "casnap repository" in err and "copy --from" in err, err
        assert out == ""
    assert not (tmp_path / "repo").exists()


def test_a_copy_dated_before_1970_is_skipped(tmp_path: Path) -> None:
    """A name dated before 1970 (which no snapshot can record) is listed skipped, and importing
    the folder imports the rest."""
    data = make_app(tmp_path / "app-data")
    backups = tmp_path / "old"
    backups.mkdir()
    shutil.copytree(data, backups / "snapshot-1969-12-30")
    shutil.copytree(data, backups / "snapshot-2025-02-01")
    repo = Repository.init(tmp_path / "repo")
    planned = plan(repo, backups, data, data_names=["snapshot"])
    assert [i.name for i in planned.items] == ["snapshot-2025-02-01"]
    assert planned.skipped == [
        {"name": "snapshot-1969-12-30", "reason": "its time lies before 1970"}
    ]
    result = import_copies(repo, backups, data, data_names=["snapshot"])
    assert result.imported == 1


def test_a_copy_dated_past_what_a_date_holds_is_skipped(tmp_path: Path) -> None:
    """tmpfs and btrfs keep any 64-bit second: an undated copy whose mtime lies past the year
    9999 (or before the year 1) is listed as in the future (before 1970), not a crash."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm")
    with tempfile.TemporaryDirectory(dir=shm) as where:
        backups = Path(where)
        for name, ns in (("app_latest.db", 1 << 80), ("faiss", -(1 << 80))):
            path = backups / name
            if name == "faiss":
                path.mkdir()
                path = path / "ivf.index"
            path.write_bytes(b"SQLite format 3\x00" + bytes(84))
            os.utime(path, ns=(ns, ns))
            if path.stat().st_mtime_ns != ns:
                pytest.skip("/dev/shm does not keep such a time (not tmpfs)")
        planned = plan(None, backups, tmp_path / "data", data_names=["data"])
    assert planned.items == []
    assert sorted(planned.skipped, key=lambda s: s["name"]) == [
        {"name": "app_latest.db", "reason": "its time lies in the future"},
        {"name": "faiss", "reason": "its time lies before 1970"},
    ]
