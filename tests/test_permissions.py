"""The repository is private to its owner: root and folders 0700, every file 0600, whatever the
umask, on every write (commit, gc, repair-index, verify --smoke, diff), and in tmp/ too."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap import capture, dbimage
from casnap.cli import cli
from casnap.committer import commit
from casnap.repository import Repository
from tests.helpers_smoke import evolve_app, make_app


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def run(repo: Path, data: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--repo", str(repo), "--data", str(data), *args])
    return result.exit_code, result.stdout, result.stderr


def open_to_others(root: Path) -> list[str]:
    """Every file or folder under root (root included) that group or others may access."""
    found = []
    for p in [root, *root.rglob("*")]:
        mode = p.lstat().st_mode
        if mode & 0o077:
            kind = "dir" if stat.S_ISDIR(mode) else "file"
            found.append(f"{p.relative_to(root.parent)} ({kind} {stat.S_IMODE(mode):04o})")
    return found


def test_repository_stays_private_under_a_permissive_umask(tmp_path: Path) -> None:
    data = make_app(tmp_path / "data")
    os.chmod(data / "app.db", 0o600)
    repo = tmp_path / "backups"
    with umask(0o022):
        assert run(repo, data, "init")[0] == 0
        assert stat.S_IMODE(repo.stat().st_mode) == 0o700
        assert run(repo, data, "commit", "-m", "one")[0] == 0
        evolve_app(data)
        assert run(repo, data, "commit", "-m", "two")[0] == 0
        assert run(repo, data, "forget", "latest")[0] == 0
        evolve_app(data, 2)
        code, _, err = run(repo, data, "diff", "latest")
        assert code == 0, err
        assert run(repo, data, "commit", "-m", "three")[0] == 0
        code, _, err = run(repo, data, "gc", "--max-unused", "0")
        assert code == 0, err
        code, _, err = run(repo, data, "repair-index")
        assert code == 0, err
        code, _, err = run(repo, data, "verify", "--smoke")
        assert code == 0, err
        assert run(repo, data, "verify", "--read-data")[0] == 0
    for sub in ("config", "packs", "index", "snapshots", "locks", "tmp"):
        assert (repo / sub).exists(), sub
    assert open_to_others(repo) == []


def test_commit_through_the_api_creates_a_private_repository(tmp_path: Path) -> None:
    data = make_app(tmp_path / "data")
    with umask(0o002):
        repo = Repository.open_or_init(tmp_path / "new" / "backups", data)
        commit(repo, data)
    assert open_to_others(tmp_path / "new" / "backups") == []


def modes_in(folder: Path) -> dict[str, int]:
    """Name -> permission bits of everything in folder (not below it)."""
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}


@pytest.mark.parametrize("idle_wal", [False, True], ids=["rollback", "idle-wal"])
def test_database_images_in_tmp_are_private(tmp_path: Path, idle_wal: bool) -> None:
    db = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        if idle_wal:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("CREATE TABLE t(x)")
        conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(500)])
        conn.commit()
        if idle_wal:  # keep the -wal: copy it aside while the connection holds it open
            wal = Path(str(db) + "-wal").read_bytes()
    if idle_wal:
        Path(str(db) + "-wal").write_bytes(wal)
        Path(str(db) + "-shm").unlink(missing_ok=True)
        assert dbimage.idle_wal_database(db)
    scratch = tmp_path / "repo" / "tmp"
    seen: dict[str, int] = {}
    with umask(0o022), capture.sqlite_image(db, scratch) as image:
        seen = modes_in(scratch)
        with contextlib.closing(sqlite3.connect(image)) as conn:  # a journal beside the image
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t VALUES (1)")
            seen.update(modes_in(scratch))
            conn.rollback()
    assert stat.S_IMODE(scratch.stat().st_mode) == 0o700
    assert len(seen) >= 2 and any(n.endswith(("-journal", "-wal")) for n in seen)
    assert {n: m for n, m in seen.items() if m != 0o600} == {}


def test_open_tightens_the_root_of_an_older_repository(tmp_path: Path) -> None:
    data = make_app(tmp_path / "data")
    root = tmp_path / "backups"
    commit(Repository.init(root), data)
    os.chmod(root, 0o755)  # as a casnap without private modes left it
    os.chmod(root / "config", 0o644)
    Repository.open(root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "config").stat().st_mode) == 0o644  # reachable by nobody else


def test_init_in_an_existing_empty_dir_makes_it_private(tmp_path: Path) -> None:
    root = tmp_path / "backups"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    Repository.init(root)
    assert open_to_others(root) == []
