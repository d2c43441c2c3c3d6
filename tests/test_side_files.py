"""A database whose -journal, -wal or -shm is no regular file (a FIFO, a folder, a symbolic
link): SQLite would open it (a FIFO blocks that open for ever, inside C, where Ctrl-C and
SIGTERM never reach casnap, its repository lock held) or create files beside it. commit, diff
and checkout refuse the database with one line naming the file and what it is (exit 7), and
create nothing in the data dir. The CLI runs in a subprocess with a timeout, so a hang fails
the test instead of stopping the run."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from casnap.errors import EXIT_CODES
from tests.helpers_reliability import run_casnap
from tests.test_hostile_layouts import CHROMA_TABLES, hostile_chroma
from tests.util import raw_tree

WHAT = {"fifo": "a FIFO", "folder": "a directory", "link": "a symbolic link"}


def make_odd(path: Path, kind: str) -> None:
    """Something other than a regular file at path."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:  # a link to a regular file outside the data dir
        target = path.parent.parent / "elsewhere.bin"
        target.write_bytes(b"\0" * 4096)
        path.symlink_to(target)


def insert(db: Path, value: int) -> None:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        if value == 0:
            conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (?)", (value,))
        conn.commit()


def names(folder: Path) -> list[str]:
    """Every name in folder, FIFOs and folders too (raw_tree sees regular files only)."""
    return sorted(os.listdir(folder))


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    base = ["--repo", str(tmp_path / "repo"), "--data", str(tmp_path / "data")]
    return run_casnap([*base, *args], timeout=60)


def refused(proc: subprocess.CompletedProcess[str], side: Path, kind: str) -> str:
    """The run failed with exit 7 and one line naming side and what it is."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == EXIT_CODES["source"], (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("casnap: warning")]
    assert len(lines) == 1 and lines[0].startswith("casnap: error: "), proc.stderr
    assert f"{side} is {WHAT[kind]}" in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("suffix", "kind"),
    [
        ("-journal", "fifo"),
        ("-wal", "fifo"),
        ("-shm", "fifo"),
        ("-journal", "folder"),
        ("-wal", "link"),
    ],
)
@pytest.mark.parametrize("command", ["commit", "diff", "checkout"])
def test_a_side_file_that_is_no_regular_file_refuses_the_database(
    tmp_path: Path, command: str, suffix: str, kind: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "d.db"
    insert(db, 0)
    first = cli(tmp_path, "commit", "-q")
    assert first.returncode == 0, first.stderr
    insert(db, 1)  # changed since: every command reads it
    side = data / f"d.db{suffix}"
    make_odd(side, kind)
    before, listed = raw_tree(data), names(data)
    args = {"commit": ["commit"], "diff": ["diff", first.stdout.strip()]}
    proc = cli(tmp_path, *args.get(command, ["checkout", first.stdout.strip()]))
    refused(proc, side, kind)
    assert names(data) == listed  # no -shm, no -journal made beside it
    assert raw_tree(data) == before
    side.unlink() if kind != "folder" else side.rmdir()
    proc = cli(tmp_path, *args.get(command, ["checkout", first.stdout.strip()]))
    assert proc.returncode == 0, proc.stderr


def test_a_chroma_database_with_a_fifo_journal_is_refused_not_waited_on(tmp_path: Path) -> None:
    """The commit's check of a Chroma store reads chroma.sqlite3 through SQLite before the
    capture does: it refuses it the same way."""
    data = tmp_path / "data"
    hostile_chroma(
        data,
        CHROMA_TABLES
        + "create table collections(id, name, dimension);"
        + "create table embeddings(embedding_id, segment_id);",
    )
    side = data / "chroma" / "chroma.sqlite3-journal"
    os.mkfifo(side)
    listed = names(data / "chroma")
    refused(cli(tmp_path, "commit"), side, "fifo")
    assert names(data / "chroma") == listed
