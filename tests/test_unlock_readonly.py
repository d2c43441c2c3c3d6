"""Locks a user must deal with (unreadable lock files, locks of dead or remote processes:
`casnap unlock`), and repositories that cannot be written (read with --no-lock, or without a
lock automatically, scratch files outside the repository)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap.cli import cli
from casnap.committer import commit
from casnap.errors import EXIT_CODES
from casnap.repository import Repository
from tests.helpers_reliability import dead_pid
from tests.helpers_smoke import evolve_app, make_app


def invoke(repo: Path, data: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        cli, ["--repo", str(repo), "--data", str(data), *args], env={"CASNAP_LOCK_WAIT": "0"}
    )
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def repo_data(tmp_path: Path) -> tuple[Path, Path]:
    data = make_app(tmp_path / "data")
    repo = Repository.init(tmp_path / "repo")
    commit(repo, data, tags=["first"])
    evolve_app(data)
    commit(repo, data)
    return tmp_path / "repo", data


def write_lock(repo: Path, name: str, body: bytes | dict) -> Path:
    (repo / "locks").mkdir(exist_ok=True)
    path = repo / "locks" / name
    path.write_bytes(body if isinstance(body, bytes) else json.dumps(body).encode())
    return path


def lock_body(host: str, pid: int, operation: str = "gc") -> dict:
    return {
        "host": host,
        "pid": pid,
        "start": None,
        "exclusive": True,
        "operation": operation,
        "time": time.time(),  # refreshed just now: only its pid can make it stale
    }


def test_an_unreadable_lock_file_is_named_and_unlock_removes_it(
    repo_data: tuple[Path, Path],
) -> None:
    repo, data = repo_data
    bad = write_lock(repo, "0badc0de", b"\x00 not json")
    code, _, err = invoke(repo, data, "gc")
    assert code == EXIT_CODES["locked"]
    assert str(bad) in err and "cannot be read" in err and "casnap unlock" in err
    assert len(err.strip().splitlines()) == 1
    code, out, err = invoke(repo, data, "unlock")
    assert code == 0, err
    assert "locks/0badc0de" in out and "cannot be read" in out
    assert out.count("cannot be read") == 1, out  # said once, not again as the reason
    assert not bad.exists()
    assert invoke(repo, data, "gc")[0] == 0


def test_unlock_removes_stale_locks_and_live_ones_only_with_force(
    repo_data: tuple[Path, Path],
) -> None:
    repo, data = repo_data
    stale = write_lock(repo, "5a1e", lock_body(socket.gethostname(), dead_pid()))
    remote = write_lock(repo, "4e307e", lock_body("backup-host-2", 4242, "prune"))
    code, out, err = invoke(repo, data, "unlock")
    assert code == 0, err
    assert "locks/5a1e" in out and "no longer runs" in out
    assert not stale.exists() and remote.exists()
    assert "locks/4e307e" in err and "backup-host-2" in err and "--force" in err
    code, _, err = invoke(repo, data, "commit")
    assert code == EXIT_CODES["locked"] and "pid 4242 on backup-host-2" in err
    assert "casnap unlock --force" in err
    code, out, err = invoke(repo, data, "unlock", "--force", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert [(r["key"], r["host"], r["pid"], r["operation"]) for r in report["removed"]] == [
        ("locks/4e307e", "backup-host-2", 4242, "prune")
    ]
    assert report["removed"][0]["reason"] == "forced" and report["kept"] == []
    assert not remote.exists()
    code, out, err = invoke(repo, data, "unlock")
    assert code == 0 and out == "" and "removed 0 lock(s)" in err


def test_unlock_keeps_a_lock_of_a_running_process(repo_data: tuple[Path, Path]) -> None:
    repo, data = repo_data
    mine = write_lock(repo, "11fe", lock_body(socket.gethostname(), os.getpid(), "commit"))
    code, out, err = invoke(repo, data, "unlock")
    assert code == 0 and mine.exists() and "kept locks/11fe" in err
    code, out, err = invoke(repo, data, "unlock", "--force")
    assert code == 0 and not mine.exists()
    assert f"pid {os.getpid()}" in out


def test_no_lock_never_writes_a_snapshot_without_a_lock(repo_data: tuple[Path, Path]) -> None:
    """--no-lock reads without a lock; a checkout that must first save the target's unsaved
    data commits a snapshot, and that commit still takes its lock: with a gc holding the
    exclusive lock it waits (here: fails at once, exit 6) instead of writing under it."""
    repo, data = repo_data
    (data / "notes.txt").write_text("no snapshot holds this")
    write_lock(repo, "9c", lock_body(socket.gethostname(), os.getpid(), "gc"))
    before = sorted(p.name for p in (repo / "snapshots").iterdir())
    code, out, err = invoke(repo, data, "--no-lock", "checkout", "first")
    assert code == EXIT_CODES["locked"], err
    assert sorted(p.name for p in (repo / "snapshots").iterdir()) == before
    assert (data / "notes.txt").read_text() == "no snapshot holds this"


# -- read-only repositories ------------------------------------------------------------------------


def _mount_read_only_works(tmp: Path) -> bool:
    probe = tmp / "probe"
    probe.mkdir()
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && ! touch "$0/x"'
    try:
        done = subprocess.run(
            ["unshare", "-m", "sh", "-c", script, str(probe)], capture_output=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[list[str]]:
    """A command prefix that runs a command with tmp_path/repo read-only: a read-only bind mount
    in a private mount namespace (as root), else the directory tree made read-only by mode."""
    repo = tmp_path / "repo"
    if os.geteuid() == 0:
        if not _mount_read_only_works(tmp_path):
            pytest.skip("cannot make a read-only mount here")
        script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
        yield ["unshare", "-m", "sh", "-c", script, str(repo)]
        return
    for folder, _, files in os.walk(repo):
        for name in files:
            os.chmod(os.path.join(folder, name), 0o444)
        os.chmod(folder, 0o555)
    try:
        yield []
    finally:
        for folder, _, _ in os.walk(repo):
            os.chmod(folder, 0o755)


def tree(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.lstat().st_mode) for p in root.rglob("*"))


READING = [
    ["log"],
    ["show", "latest"],
    ["ls", "latest", "-l"],
    ["cat", "first", "faiss/ivf.meta.json"],
    ["diff", "first"],
    ["diff", "first", "latest"],
    ["stats"],
    ["stats", "latest"],
    ["verify", "--read-data"],
    ["check", "--smoke"],
    ["checkout", "first", "--to", "OUT"],
]


def test_a_read_only_repository_can_be_read(
    repo_data: tuple[Path, Path], tmp_path: Path, read_only: list[str]
) -> None:
    repo, data = repo_data
    before = tree(repo)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "CASNAP_LOCK_WAIT": "0"}
    base = [sys.executable, "-m", "casnap", "--repo", str(repo), "--data", str(data)]
    for n, args in enumerate(READING):
        args = [str(tmp_path / f"out{n}") if a == "OUT" else a for a in args]
        for extra in ([], ["--no-lock"]):
            done = subprocess.run(
                [*read_only, *base, *extra, *args], capture_output=True, text=True, env=env
            )
            assert done.returncode == 0, (args, extra, done.stderr)
            assert "Traceback" not in done.stderr
            notes = [line for line in done.stderr.splitlines() if "reading without" in line]
            locking = args[0] not in ("log", "show", "ls")
            assert len(notes) == (1 if locking and not extra else 0), (args, done.stderr)
        assert list(scratch.iterdir()) == []  # private scratch dirs are removed
    done = subprocess.run([*read_only, *base, "commit"], capture_output=True, text=True, env=env)
    assert done.returncode == EXIT_CODES["storage"], done.stderr  # writing is refused, one line
    assert len(done.stderr.strip().splitlines()) == 1
    done = subprocess.run(
        [*read_only, *base, "--no-lock", "gc"], capture_output=True, text=True, env=env
    )
    assert done.returncode == EXIT_CODES["usage"] and "--no-lock" in done.stderr
    assert tree(repo) == before


@pytest.mark.parametrize("direction", ["--to", "--from"])
def test_a_read_only_repository_can_be_copied_from(
    repo_data: tuple[Path, Path], tmp_path: Path, read_only: list[str], direction: str
) -> None:
    """An offsite repository mounted read-only is copied from as it is read: its shared lock is
    skipped, saying so; copy stopped with exit 8 ("writing .../locks/...: Read-only file
    system"), with nothing to say what to do."""
    repo, data = repo_data
    before = tree(repo)
    dest = tmp_path / "dest"
    env = {**os.environ, "CASNAP_LOCK_WAIT": "0"}
    casnap = [sys.executable, "-m", "casnap", "--data", str(data)]
    if direction == "--to":
        args = [*casnap, "--repo", str(repo), "copy", "--to", str(dest)]
    else:
        args = [*casnap, "--repo", str(dest), "copy", "--from", str(repo)]
    done = subprocess.run([*read_only, *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert sum("reading without" in line for line in done.stderr.splitlines()) == 1
    assert "2 snapshot(s) copied" in done.stdout
    assert tree(repo) == before
    assert len(Repository.open(dest).snapshots()) == 2


def test_a_checkout_that_cannot_write_its_lock_saves_no_snapshot_without_one(
    repo_data: tuple[Path, Path],
) -> None:
    """A checkout reads a repository whose locks/ it may not write without a lock; the
    pre-checkout snapshot of the data it would replace was then stored with none at all, so a
    gc of another user could delete the chunks it reused meanwhile. It takes a commit's lock,
    which it must write: refused, the data dir is left as it was."""
    from tests.test_hostile import cli_unprivileged

    repo, data = repo_data
    evolve_app(data)  # data no snapshot holds: a checkout would save it first
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    snapshots = sorted((repo / "snapshots").iterdir())
    (repo / "locks").mkdir(exist_ok=True)
    (repo / "locks").chmod(0o500)
    try:
        proc = cli_unprivileged(repo, data, "checkout", "first")
    finally:
        (repo / "locks").chmod(0o700)
    assert proc.returncode == EXIT_CODES["storage"], proc.stderr
    assert "Permission denied" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted((repo / "snapshots").iterdir()) == snapshots
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before
