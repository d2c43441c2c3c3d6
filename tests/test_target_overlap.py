"""A checkout `--to` a folder inside the data dir (`--to data/faiss`), or a full one `--to` a
folder holding it (`--to .` beside ./data), is refused before anything is read or written: the
first put the snapshot's whole tree inside that folder and removed what it held, the second
emptied the data dir. One line (exit 2) names the way around."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from casnap.errors import EXIT_CODES
from tests.helpers_reliability import casnap_env, small_app
from tests.util import raw_tree


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI run from cwd with the default --repo (./backups) and --data (./data)."""
    return subprocess.run(
        [sys.executable, "-m", "casnap", *args],
        cwd=cwd,
        env=casnap_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    small_app(tmp_path / "data", rows=40, vectors=60)
    done = run(tmp_path, "commit", "-q")
    assert done.returncode == 0, done.stderr
    (tmp_path / "data" / "faiss" / "notes.txt").write_text("not in any snapshot\n")
    return tmp_path


@pytest.mark.parametrize(
    ("to", "paths", "hint"),
    [
        ("data/faiss", [], "casnap checkout SNAPSHOT faiss"),
        (
            "data/faiss",
            ["app.db"],
            "(faiss/app.db); to restore it in place, check out without --to",
        ),
        ("data/sub", ["app.db"], "(sub/app.db); to restore it in place, check out without --to"),
        ("./data/faiss/", [], "casnap checkout SNAPSHOT faiss"),
        (".", [], "lies inside"),
    ],
)
def test_a_target_overlapping_the_data_dir_is_refused(
    home: Path, to: str, paths: list[str], hint: str
) -> None:
    before = raw_tree(home / "data")
    done = run(home, "checkout", "latest", *paths, "--to", to)
    assert done.returncode == EXIT_CODES["usage"], done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("casnap: error: refusing to check out into"), line
    assert hint in line, line
    if paths:  # `checkout latest app.db --to data/sub` said "(sub/sub/...); to restore sub in
        # place, name it (`casnap checkout SNAPSHOT sub`)": a folder the snapshot lacks
        assert "whole tree" not in line and "SNAPSHOT" not in line, line
    assert raw_tree(home / "data") == before
    assert len(list((home / "backups" / "snapshots").iterdir())) == 1  # nothing saved


def test_the_data_dir_itself_some_paths_into_a_parent_and_data_as_target_still_work(
    home: Path,
) -> None:
    (home / "data" / "faiss" / "notes.txt").unlink()
    for args in (
        ["checkout", "latest", "--to", "data"],  # the data dir, named
        ["checkout", "latest", "app.db", "--to", "."],  # some paths beside the data dir
        ["--data", "data/faiss", "checkout", "latest", "--to", "data/faiss"],  # as asked
    ):
        done = run(home, *args)
        assert done.returncode == 0, (args, done.stderr)
    assert (home / "app.db").is_file()
    assert (home / "data" / "faiss" / "faiss").is_dir()
