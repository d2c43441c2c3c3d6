"""Commit: stat cache, paths and excludes, SQLite side files, a writer running meanwhile."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from casnap import fsutil
from casnap.changes import diff
from casnap.committer import commit
from casnap.errors import InvalidArgument, SourceError
from casnap.repository import Repository
from casnap.restorer import checkout


def age(root: Path, seconds: int = 60) -> None:
    """Set every file's mtime in the past, so the stat cache may trust it."""
    past = time.time() - seconds
    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, (past, past))


def repo_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_unchanged_commit_reads_nothing_and_adds_under_one_percent(
    app: Path, tmp_path: Path
) -> None:
    age(app)
    repo = Repository.init(tmp_path / "repo")
    first = commit(repo, app)
    assert first.files_new == 7 and first.bytes_read > 0
    size_before = repo_bytes(tmp_path / "repo")
    second = commit(repo, app)
    assert second.files_unchanged == 7
    assert second.bytes_read == 0
    data_size = sum(p.stat().st_size for p in app.rglob("*") if p.is_file())
    assert repo_bytes(tmp_path / "repo") - size_before < 0.01 * data_size


def test_changed_file_is_read_again(app: Path, tmp_path: Path) -> None:
    age(app)
    repo = Repository.init(tmp_path / "repo")
    commit(repo, app)
    with open(app / "faiss" / "hnsw.index", "r+b") as f:
        f.seek(100)
        f.write(b"\x01\x02")
    r = commit(repo, app)
    assert r.files_changed == 1 and r.files_unchanged == 6


def test_paths_and_excludes(app: Path, tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    (app / ".DS_Store").write_bytes(b"junk")
    only_db = commit(repo, app, ["app.db"])
    snap = repo.load_snapshot(repo.resolve(only_db.id))
    assert [f.path for f in snap.files] == ["app.db"] and snap.paths == ("app.db",)
    no_meta = commit(repo, app, excludes=["*.meta.json", ".DS_Store"])
    names = [f.path for f in repo.load_snapshot(repo.resolve(no_meta.id)).files]
    assert names == ["app.db", "faiss/hnsw.index", "faiss/ivf.index", "faiss/shard_000.index"]
    with pytest.raises(SourceError):
        commit(repo, app, ["missing.db"])
    with pytest.raises(InvalidArgument):  # a usage error (exit 2), not a source error
        commit(repo, app, ["../outside"])


def test_files_named_as_os_litter_are_stored_as_any_other(tmp_path: Path) -> None:
    """`Thumbs.db`, `.DS_Store` and `desktop.ini` are the user's files like any other (a database
    may be called Thumbs.db): stored and restored, as restic and borg do; only casnap's own
    temp files are passed over."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(data / "Thumbs.db")) as db:
        db.execute("CREATE TABLE t(x)")
        db.execute("INSERT INTO t VALUES (42)")
        db.commit()
    (data / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (data / "sub" / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (data / fsutil.temp_name(".db")).write_bytes(b"a temp file of casnap's own")
    repo = Repository.init(tmp_path / "repo")
    result = commit(repo, data)
    files = {f.path: f for f in repo.load_snapshot(repo.resolve(result.id)).files}
    assert sorted(files) == [".DS_Store", "Thumbs.db", "sub/desktop.ini"]
    assert files["Thumbs.db"].kind == "sqlite"
    checkout(repo, result.id, tmp_path / "out")
    assert (tmp_path / "out" / ".DS_Store").read_bytes() == (data / ".DS_Store").read_bytes()
    assert (tmp_path / "out" / "sub" / "desktop.ini").read_text() == "[.ShellClassInfo]\n"
    with contextlib.closing(sqlite3.connect(tmp_path / "out" / "Thumbs.db")) as db:
        assert db.execute("SELECT x FROM t").fetchall() == [(42,)]


def test_only_names_casnap_makes_are_passed_over_and_each_is_said(tmp_path: Path) -> None:
    """A user's file whose name merely starts like casnap's temp files (`.casnap-tmp-draft.md`)
    is stored like any other; the names casnap itself makes (a temp file, a checkout's staging
    dir, a file copied across mounts before its rename, a diff's scratch dir) are passed over,
    each named in a warning, so nothing is left out without a word."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "notes.txt").write_text("kept")
    user = ["sub/.casnap-tmp-draft.md", ".casnap-tmp-", ".casnap-tmp-1-2-3", ".casnap-tmp-stage-x"]
    for name in user:
        (data / name).write_text(f"the user's {name}")
    own = [
        fsutil.temp_name(),
        f"sub/{fsutil.temp_name('.db')}",
        fsutil.temp_name(".db") + "-journal",
        f"{fsutil.stage_name(uuid.uuid4().hex[:12])}/app.db",
        f".casnap-tmp-{os.getpid()}-move-notes.txt",
        ".casnap-tmp-diff-k2j_x9a1",
    ]
    for name in own:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(b"casnap's own")
    repo = Repository.init(tmp_path / "repo")
    result = commit(repo, data)
    files = {f.path for f in repo.load_snapshot(repo.resolve(result.id)).files}
    assert files == {"notes.txt", *user}
    passed_over = sorted(w.split(":", 1)[0] for w in result.warnings)
    assert passed_over == sorted(name.split("/app.db")[0] for name in own), result.warnings
    assert all("casnap's own temp" in w for w in result.warnings), result.warnings
    changes = diff(repo, "latest", data_dir=data)
    counts = changes.summary
    assert counts["files_added"] == counts["files_changed"] == counts["files_removed"] == 0
    assert counts["files_unchanged"] == len(files)
    out = tmp_path / "out"
    checkout(repo, result.id, out)
    assert (
        out / "sub" / ".casnap-tmp-draft.md"
    ).read_text() == "the user's sub/.casnap-tmp-draft.md"


def test_sqlite_detected_by_header_and_side_files_not_stored(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with contextlib.closing(sqlite3.connect(data / "store.bin")) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute("CREATE TABLE t(x)")
        db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(500)])
        db.commit()
        assert (data / "store.bin-wal").exists()
        repo = Repository.init(tmp_path / "repo")
        sid = commit(repo, data).id
    files = repo.load_snapshot(repo.resolve(sid)).files
    assert [(f.path, f.kind) for f in files] == [("store.bin", "sqlite")]
    out = tmp_path / "out"
    checkout(repo, sid, out, safety_snapshot=False)
    with contextlib.closing(sqlite3.connect(out / "store.bin")) as db:
        assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 500  # rows from the WAL
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


WRITER = r"""
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=30)
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE IF NOT EXISTS log(id INTEGER PRIMARY KEY, pad TEXT)")
db.commit()
print("ready", flush=True)
i = 0
deadline = time.time() + 60
while time.time() < deadline:
    with db:
        db.execute("INSERT INTO log(pad) VALUES (?)", ("x" * 300,))
        db.execute("INSERT INTO log(pad) VALUES (?)", ("y" * 300,))
    i += 1
"""


def test_commit_while_a_writer_inserts_in_wal_mode(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db_path = data / "app.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        repo = Repository.init(tmp_path / "repo")
        ids = []
        for _ in range(4):
            time.sleep(0.2)
            ids.append(commit(repo, data).id)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    counts = []
    for n, sid in enumerate(ids):
        out = tmp_path / f"out{n}"
        checkout(repo, sid, out, force=True, safety_snapshot=False)
        with contextlib.closing(sqlite3.connect(out / "app.db")) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            count, top = db.execute("SELECT count(*), max(id) FROM log").fetchone()
        # each transaction inserts two rows: a committed state has an even, gapless count
        assert count % 2 == 0 and count == top
        counts.append(count)
    assert counts == sorted(counts) and counts[-1] > counts[0]


def test_file_with_sqlite_header_but_no_database_is_kept_as_bytes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    body = b"SQLite format 3\x00" + bytes(range(256)) * 10
    (data / "fake.db").write_bytes(body)
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data).id
    assert [(f.path, f.kind) for f in repo.load_snapshot(repo.resolve(sid)).files] == [
        ("fake.db", "file")
    ]
    checkout(repo, sid, tmp_path / "out", safety_snapshot=False)
    assert (tmp_path / "out" / "fake.db").read_bytes() == body


def test_reading_an_idle_wal_database_leaves_no_side_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with contextlib.closing(sqlite3.connect(data / "app.db")) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t(x)")
        db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(300)])
        db.commit()
    assert sorted(p.name for p in data.iterdir()) == ["app.db"]  # closed: -wal/-shm gone
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data).id
    assert sorted(p.name for p in data.iterdir()) == ["app.db"]
    r = checkout(repo, sid, data)  # hashes the database in place to compare it
    assert r.files_written == 0
    assert sorted(p.name for p in data.iterdir()) == ["app.db"]
    out = tmp_path / "out"
    checkout(repo, sid, out, safety_snapshot=False)
    with contextlib.closing(sqlite3.connect(out / "app.db")) as db:
        assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 300


def test_symbolic_links_are_skipped_with_a_warning(app: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "vectors.index").write_bytes(b"x" * 100)
    (app / "linked").symlink_to(outside, target_is_directory=True)
    r = commit(Repository.init(tmp_path / "repo"), app)
    assert any(w.startswith("linked: symbolic link not stored") for w in r.warnings)
    assert r.files_new == 7  # the seven regular files, nothing through the link
    # a link is the user's choice, not something lost: `commit -q` keeps it quiet
    assert r.left_out == []


def test_names_a_manifest_refuses_are_skipped_with_a_warning(app: Path, tmp_path: Path) -> None:
    """A stored manifest must read back: a name it would refuse is skipped, as a link is."""
    (app / "back\\slash.txt").write_bytes(b"x")
    (app / "c:notes.txt").write_bytes(b"y")
    repo = Repository.init(tmp_path / "repo")
    r = commit(repo, app)
    assert r.files_new == 7
    assert sum("not stored" in w for w in r.warnings) == 2
    assert sorted(w.split(":")[0] for w in r.left_out) == ["back\\slash.txt", "c"]
    assert [len(s.files) for _, s in Repository.open(tmp_path / "repo").snapshots()] == [7]


@pytest.mark.parametrize("name", ["back\\slash", "c:notes"])
def test_folders_a_manifest_refuses_are_skipped_with_a_warning(
    app: Path, tmp_path: Path, name: str
) -> None:
    """A folder whose name a manifest refuses held only files it skipped, yet its mode went
    into the manifest's folders: the check before storing refused the snapshot, and every
    commit of the data dir failed. The folder is skipped whole, with one warning."""
    odd = app / name / "inner"
    odd.mkdir(parents=True)
    (odd / "f.txt").write_bytes(b"x")
    repo = Repository.init(tmp_path / "repo")
    r = commit(repo, app)
    assert r.files_new == 7
    assert [w for w in r.warnings if "not stored" in w] == [
        f"{name}: not stored (manifests refuse a path with a backslash or one starting with a "
        "drive letter)"
    ]
    snap = Repository.open(tmp_path / "repo").load_snapshot(repo.resolve(r.id))
    assert len(snap.files) == 7 and not any(name in d for d in snap.dirs)
    assert commit(repo, app, allow_empty=True).id
