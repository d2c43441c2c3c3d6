"""A commit and a checkout of one data dir, in two processes of one host, do not run at once:
the commit would store a mix of the files the checkout is swapping in. Each lock records the
folder it reads or writes; a shared holder of the same folder is then a conflict when either is
a checkout (locks.LockInfo.clashes). Other folders, and two commits of one, are not held up."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from casnap import checkout, commit
from casnap.errors import LockError
from casnap.repository import Repository
from tests.conftest import make_app

HOLD = """
import sys
from pathlib import Path
from casnap.repository import Repository
repo = Repository.open(sys.argv[1])
with repo.lock(sys.argv[2], folder=Path(sys.argv[3])):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def repo_and_data(tmp_path: Path) -> tuple[Path, Path]:
    data, root = tmp_path / "data", tmp_path / "repo"
    make_app(data, rows=20, vectors=40)
    repo = Repository.init(root)
    commit(repo, data)
    repo.close()
    return root, data


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """held(root, operation, folder): another process holds that lock until the test ends."""
    monkeypatch.setenv("CASNAP_LOCK_WAIT", "0.3")
    procs: list[subprocess.Popen[str]] = []

    def hold(root: Path, operation: str, folder: Path) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(root), operation, str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"

    yield hold
    for proc in procs:
        proc.communicate(timeout=60)


def test_a_commit_waits_for_a_checkout_of_its_data_dir(
    repo_and_data: tuple[Path, Path], held: object
) -> None:
    root, data = repo_and_data
    held(root, "checkout", data)  # type: ignore[operator]
    with pytest.raises(LockError, match=f"checkout of {data.resolve()}"):
        commit(Repository.open(root), data)


def test_a_checkout_waits_for_a_commit_of_its_target(
    repo_and_data: tuple[Path, Path], held: object, tmp_path: Path
) -> None:
    root, data = repo_and_data
    held(root, "commit", data)  # type: ignore[operator]
    (data / "app.db").write_bytes(b"changed")
    with pytest.raises(LockError, match=f"commit of {data.resolve()}"):
        checkout(Repository.open(root), "latest", data)
    assert (data / "app.db").read_bytes() == b"changed"  # untouched


def test_other_folders_and_two_commits_of_one_run_at_once(
    repo_and_data: tuple[Path, Path], held: object, tmp_path: Path
) -> None:
    root, data = repo_and_data
    held(root, "checkout", tmp_path / "elsewhere")  # type: ignore[operator]
    held(root, "commit", data)  # type: ignore[operator]
    assert commit(Repository.open(root), data).id
    out = tmp_path / "out"
    assert checkout(Repository.open(root), "latest", out).files_written > 0
