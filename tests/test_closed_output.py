"""A reader that stops early (`casnap log | head -1`): the command ends quietly with exit 141,
as a process SIGPIPE ended looks to a shell (git and restic end so), its lock released."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from casnap.errors import EXIT_CODES
from tests.helpers_reliability import ROOT, casnap_command, casnap_env, run_casnap

FILES = 1500  # `ls -l` and `ls --json` of them: past the pipe's 64 KiB and head's first read


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    tmp = tmp_path_factory.mktemp("closed")
    data = tmp / "data"
    data.mkdir()
    for i in range(FILES):
        (data / f"note-with-a-long-name-to-make-the-listing-large-{i:05d}.txt").write_text(f"{i}\n")
    base = ["--repo", str(tmp / "repo"), "--data", str(data)]
    for message in ("first", "second"):
        done = run_casnap([*base, "commit", "--allow-empty", "-m", message])
        assert done.returncode == 0, done.stderr
    return base


def _no_lock_left(base: list[str]) -> None:
    locks = Path(base[1]) / "locks"
    assert not locks.exists() or not list(locks.iterdir())


def _into_head(args: list[str], *head: str) -> tuple[int, bytes, bytes]:
    """Run casnap into a real `head` (which reads a little, then exits); casnap's exit code,
    what head printed and casnap's stderr."""
    with subprocess.Popen(
        casnap_command(args),
        env=casnap_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        reader = subprocess.run(["head", *head], stdin=proc.stdout, capture_output=True, timeout=60)
        proc.stdout.close()  # head is the only reader left, and it is gone
        err = proc.stderr.read()
        code = proc.wait(timeout=120)
    return code, reader.stdout, err


@pytest.mark.parametrize(
    ("args", "head"),
    [
        (["ls", "latest", "-l"], ["-1"]),
        (["ls", "latest", "--json"], ["-c", "10"]),
        (["show", "latest"], ["-1"]),
        (["cat", "latest", "note-with-a-long-name-to-make-the-listing-large-00000.txt"], []),
    ],
)
def test_a_reader_that_stops_early_ends_the_command_quietly(
    world: list[str], args: list[str], head: list[str]
) -> None:
    if args[0] == "cat":  # one small file fits the pipe: run it against a reader already gone
        code, err = _into_gone_reader([*world, *args])
    else:
        code, out, err = _into_head([*world, *args], *head)
        assert out
    assert code == EXIT_CODES["output-closed"] == 141, err
    assert err == b""
    _no_lock_left(world)


def _into_gone_reader(args: list[str]) -> tuple[int, bytes]:
    """Run casnap with its stdout a pipe whose reader has already closed it: every write fails,
    whatever the size of the output."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            casnap_command(args),
            env=casnap_env(),
            cwd=ROOT,
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    finally:
        os.close(write_end)
    return done.returncode, done.stderr


@pytest.mark.parametrize(
    "args", [["log"], ["log", "--json"], ["--help"], ["log", "--help"], ["stats", "--json"]]
)
def test_a_reader_gone_before_the_first_line_ends_the_command_quietly(
    world: list[str], args: list[str]
) -> None:
    code, err = _into_gone_reader([*world, *args])
    assert code == 141, err
    assert err == b""
    _no_lock_left(world)
    after = run_casnap([*world, "gc", "--dry-run"])  # an exclusive lock: nothing holds one
    assert after.returncode == 0, after.stderr


def test_stderr_gone_too_ends_the_command_quietly(world: list[str]) -> None:
    """`casnap log 2>&1 | head -1`: stdout and stderr are the same closed pipe."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            casnap_command([*world, "log"]),
            env=casnap_env(),
            cwd=ROOT,
            stdout=write_end,
            stderr=write_end,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 141
    _no_lock_left(world)


def test_cat_with_stdout_closed_says_so(world: list[str]) -> None:
    """`casnap cat SNAPSHOT FILE >&-`: no descriptor to write the file to (Python then has no
    sys.stdout at all): one line and exit 2, not an internal error."""
    name = "note-with-a-long-name-to-make-the-listing-large-00001.txt"
    done = subprocess.run(
        casnap_command([*world, "cat", "latest", name]),
        env=casnap_env(),
        cwd=ROOT,
        capture_output=False,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: os.close(1),
        timeout=120,
    )
    assert done.returncode == EXIT_CODES["usage"], done.stderr
    (line,) = done.stderr.decode().splitlines()
    assert line.startswith("casnap: error: ") and "standard output" in line, line
    _no_lock_left(world)
