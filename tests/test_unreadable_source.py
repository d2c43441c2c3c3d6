"""Files and folders of the data dir that the user running casnap may not read or enter: a
commit stops on them, naming --skip-unreadable, and with it leaves them out, said so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from casnap.errors import EXIT_CODES
from tests.helpers_reliability import casnap_env, small_app
from tests.test_hostile import one_line, unprivileged


def as_user(repo: Path, data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [*unprivileged(), sys.executable, "-m", "casnap", "--repo", str(repo)]
    return subprocess.run(
        [*cmd, "--data", str(data), *args],
        env=casnap_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_folder_that_may_be_listed_but_not_entered_is_left_out(tmp_path: Path) -> None:
    data = small_app(tmp_path / "data")
    shut = data / "shut"
    shut.mkdir()
    (shut / "inside.txt").write_text("its name can be listed, the file not reached")
    shut.chmod(0o644)  # read (list the names), no execute (stat or open what it holds)
    repo = tmp_path / "repo"
    try:
        one_line(as_user(repo, data, "commit"), EXIT_CODES["storage"], "skip-unreadable")
        proc = as_user(repo, data, "commit", "--skip-unreadable", "--json")
    finally:
        shut.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["skipped"] == ["shut/inside.txt"]
    assert "shut/inside.txt" in proc.stderr and "Traceback" not in proc.stderr
    assert os.path.exists(shut / "inside.txt")


def test_diff_against_the_data_dir_leaves_out_what_it_cannot_read(tmp_path: Path) -> None:
    data = small_app(tmp_path / "data")
    (data / "secret.txt").write_text("for its owner only")
    (data / "secret.txt").chmod(0)
    (data / "closed").mkdir()
    (data / "closed" / "x.txt").write_text("in a folder nobody may list")
    repo = tmp_path / "repo"
    try:
        (data / "closed").chmod(0o311)  # enter, not list
        assert as_user(repo, data, "commit", "--skip-unreadable").returncode == 0
        (data / "faiss" / "notes.txt").write_text("added since")
        proc = as_user(repo, data, "diff", "latest", "--json")
    finally:
        (data / "closed").chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    changed = {f["path"]: f["status"] for f in out["files"] if f["status"] != "unchanged"}
    assert changed == {"faiss/notes.txt": "added"}
    assert sorted(out["skipped"]) == ["closed", "secret.txt"]
    assert "secret.txt: not readable, left out of the diff" in proc.stderr


def test_a_database_whose_wal_may_not_be_read_is_named_and_can_be_left_out(
    tmp_path: Path,
) -> None:
    import contextlib
    import sqlite3

    data = small_app(tmp_path / "data")
    db = data / "w.db"
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as app:
        app.execute("PRAGMA journal_mode=WAL")
        app.execute("PRAGMA wal_autocheckpoint=0")
        app.execute("CREATE TABLE t(x)")
        app.execute("INSERT INTO t VALUES (1)")
        wal = data / "w.db-wal"
        wal.chmod(0)
        repo = tmp_path / "repo"
        proc = as_user(repo, data, "commit")
        one_line(proc, EXIT_CODES["storage"], "w.db-wal")
        assert "skip-unreadable" in proc.stderr
        proc = as_user(repo, data, "commit", "--skip-unreadable", "--json")
        wal.chmod(0o644)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["skipped"] == ["w.db"]


def test_a_full_checkout_passes_over_a_file_its_snapshot_could_not_read(tmp_path: Path) -> None:
    """A file in a folder that may be listed but not entered, left out of the snapshot: a full
    checkout into the data dir leaves it, without asking its lstat (which that folder refuses
    too); it stopped the checkout, unable to tell whether the snapshot lacked it."""
    data = small_app(tmp_path / "data")
    shut = data / "shut"
    shut.mkdir()
    (shut / "inside.txt").write_text("kept")
    (data / "notes.txt").write_text("v1")
    repo = tmp_path / "repo"
    try:
        shut.chmod(0o644)
        assert as_user(repo, data, "commit", "--skip-unreadable").returncode == 0
        (data / "notes.txt").write_text("v2")
        proc = as_user(repo, data, "checkout", "latest")
    finally:
        shut.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    assert (data / "notes.txt").read_text() == "v1"
    assert (shut / "inside.txt").read_text() == "kept"
