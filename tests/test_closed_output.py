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


def _stdout_closed(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    """Run casnap started with its stdout closed (`>&-`)."""
    return subprocess.run(
        casnap_command(args),
        env=casnap_env(),
        cwd=ROOT,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: os.close(1),  # noqa: PLW1509 - the child only closes a descriptor
        timeout=120,
    )


@pytest.mark.parametrize(
    "args", [["log"], ["log", "--json"], ["ls", "latest"], ["show", "latest"], ["stats"]]
)
def test_a_listing_with_stdout_closed_fails_as_cat_does(world: list[str], args: list[str]) -> None:
    """`casnap log >&-` exited 0 having printed nothing: with no stdout to write its output to,
    it fails as cat does then (one line, exit 2), its lock released."""
    done = _stdout_closed([*world, *args])
    assert done.returncode == EXIT_CODES["usage"], done.stderr
    (line,) = done.stderr.decode().splitlines()
    assert line.startswith("casnap: error: standard output is closed"), line
    _no_lock_left(world)


def _small_world(tmp_path: Path) -> tuple[list[str], Path]:
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("hello\n")
    repo = tmp_path / "repo"
    return ["--repo", str(repo), "--data", str(data)], repo


def _stored(repo: Path) -> list[str]:
    return sorted(p.name for p in (repo / "snapshots").iterdir())


@pytest.mark.parametrize("flags", [[], ["-q"], ["--json"]])
def test_a_commit_with_stdout_closed_says_its_snapshot_is_stored(
    tmp_path: Path, flags: list[str]
) -> None:
    """`casnap commit >&-` exited 0 and its snapshot's id went nowhere. It fails as cat does
    then (one line, exit 2), after the snapshot is stored, and the line names it. `commit -q`
    prints the id too (a result, not a message), so it has the same to say."""
    base, repo = _small_world(tmp_path)
    done = _stdout_closed([*base, "commit", *flags])
    assert done.returncode == EXIT_CODES["usage"], done.stderr
    (line,) = [x for x in done.stderr.decode().splitlines() if "created repository" not in x]
    (sid,) = _stored(repo)
    assert line.startswith("casnap: error: standard output is closed"), line
    assert f"snapshot {sid} is stored" in line, line
    assert not list((repo / "locks").iterdir())
    after = run_casnap([*base, "log", "--json"])
    assert after.returncode == 0 and sid in after.stdout, after.stderr


FULL = Path("/dev/full")


@pytest.mark.skipif(not FULL.exists(), reason="no /dev/full")
@pytest.mark.parametrize(
    "args",
    [
        ["commit", "-q"],
        ["commit"],
        ["commit", "--json"],
        ["log"],
        ["show", "latest", "--json"],
        ["cat", "latest", "notes.txt"],
        ["checkout", "latest", "--to", "OUT", "--json"],
    ],
)
def test_output_to_a_full_disk_says_writing_it_failed(tmp_path: Path, args: list[str]) -> None:
    """`casnap commit -q > /dev/full` said "I/O: no space left on device" (exit 8) after its
    snapshot was saved: the line says that writing the output failed and, for a commit, that
    its snapshot is stored (by its id); for a checkout, that it restored the snapshot."""
    base, repo = _small_world(tmp_path)
    out = tmp_path / "out"
    args = [str(out) if a == "OUT" else a for a in args]
    if args[0] != "commit":
        assert run_casnap([*base, "commit", "-q"]).returncode == 0
    before = set(_stored(repo)) if repo.exists() else set()
    with FULL.open("wb") as full:
        done = subprocess.run(
            casnap_command([*base, *args]),
            env=casnap_env(),
            cwd=ROOT,
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    assert done.returncode == EXIT_CODES["storage"], done.stderr
    lines = done.stderr.decode().splitlines()
    errors = [x for x in lines if x.startswith("casnap: error:")]
    assert errors == lines[-1:], lines
    assert errors[0].startswith(
        "casnap: error: writing the output to standard output failed: no space left on device"
    ), errors
    if args[0] == "commit":
        (sid,) = set(_stored(repo)) - before
        assert errors[0].endswith(f"; snapshot {sid} is stored"), errors
    if args[0] == "checkout":
        assert errors[0].endswith(f"restored into {out}"), errors
        assert (out / "notes.txt").read_text() == "hello\n"
    assert not list((repo / "locks").iterdir())
