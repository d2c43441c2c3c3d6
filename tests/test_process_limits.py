"""The limits a process runs under (`ulimit -n`, `ulimit -v`): the descriptors a command holds at
once stay well below the usual limit of open files (1024), whatever the shape of the data dir;
a command that runs out of memory says so in one line, with a documented exit code, and leaves
the repository as it was."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

from casnap.committer import commit
from casnap.errors import OutOfMemory
from casnap.repository import Repository
from tests.conftest import tree_bytes
from tests.s3server import make_bucket


def limited(n: int):  # noqa: ANN201 - a preexec_fn
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

    return limit


def cli(repo: Path, data: Path, *args: str, nofile: int) -> subprocess.CompletedProcess[str]:
    base = [sys.executable, "-m", "casnap", "--repo", str(repo), "--data", str(data)]
    return subprocess.run(
        [*base, *args], capture_output=True, text=True, preexec_fn=limited(nofile)
    )


def one_file_per_folder(data: Path, folders: int) -> None:
    for i in range(folders):
        folder = data / f"f{i:04d}"
        folder.mkdir(parents=True)
        (folder / "doc.txt").write_text(f"document {i}\n" * (i % 7 + 1))


def test_checkout_of_many_folders_holding_a_file_each_under_a_small_limit(
    tmp_path: Path,
) -> None:
    """Small files are restored in batches of up to 512: each batch held a descriptor for
    every folder it wrote into, two batches at once, so 1,100 folders of one file each took
    more than 1,024 descriptors and the checkout failed ('Too many open files'); 512 is ample
    for a checkout that holds a bounded number of folders open."""
    data, repo_dir = tmp_path / "data", tmp_path / "repo"
    one_file_per_folder(data, 1100)
    commit(Repository.init(repo_dir), data)
    target = tmp_path / "restored"
    p = cli(repo_dir, data, "checkout", "latest", "--to", str(target), nofile=512)
    assert p.returncode == 0, p.stderr
    assert tree_bytes(target) == tree_bytes(data)
    v = cli(repo_dir, data, "verify", "--smoke", "-q", nofile=512)
    assert v.returncode == 0, v.stderr


def test_commit_and_checkout_size_their_open_folders_from_a_low_limit(tmp_path: Path) -> None:
    """A checkout held up to 384 folders open while staging and 256 more while swapping in,
    whatever `ulimit -n` allowed: under 128 (a service started so, or macOS's 256) a checkout
    of 300 folders holding a file each failed ('too many open files'). The folders held open
    are sized from the limit."""
    data, repo_dir = tmp_path / "data", tmp_path / "repo"
    one_file_per_folder(data, 300)
    c = cli(repo_dir, data, "commit", "-q", nofile=96)
    assert c.returncode == 0, c.stderr
    target = tmp_path / "restored"
    p = cli(repo_dir, data, "checkout", "latest", "--to", str(target), nofile=96)
    assert p.returncode == 0, p.stderr
    assert tree_bytes(target) == tree_bytes(data)
    for i in range(0, 300, 2):  # an in-place checkout swaps files into every other folder
        (data / f"f{i:04d}" / "doc.txt").write_text("changed\n")
    q = cli(repo_dir, data, "checkout", "latest", "--force", nofile=96)
    assert q.returncode == 0, q.stderr
    assert tree_bytes(data) == tree_bytes(target)


def test_a_commit_out_of_memory_is_one_line_and_leaves_the_repository_whole(
    tmp_path: Path,
) -> None:
    """An allocation that fails (MemoryError) or a thread that cannot get its stack ended the
    command as an internal error, exit 70 ('please report it'), with an empty message."""
    data, repo_dir = tmp_path / "data", tmp_path / "repo"
    one_file_per_folder(data, 3)
    first = commit(Repository.init(repo_dir), data).id
    (data / "big.bin").write_bytes(os.urandom(64 << 20))
    base = [sys.executable, "-m", "tests.limited_cli", "32", "--repo", str(repo_dir)]
    p = subprocess.run([*base, "--data", str(data), "commit"], capture_output=True, text=True)
    assert p.returncode == OutOfMemory.exit_code, p.stderr
    assert p.stderr.count("\n") == 1 and "out of memory" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and "internal error" not in p.stderr
    repo = Repository.open(repo_dir)
    assert [sid.hex() for sid, _ in repo.snapshots()] == [first]
    (data / "big.bin").unlink()
    v = cli(repo_dir, data, "verify", "--read-data", nofile=1024)
    assert v.returncode == 0 and "pack" not in v.stderr, v.stderr
    again = cli(repo_dir, data, "commit", "-q", nofile=1024)
    assert again.returncode == 0, again.stderr


def test_too_few_descriptors_is_said_as_such_also_on_s3(
    tmp_path: Path, s3_env: dict[str, str], s3_bucket: str
) -> None:
    """A socket that cannot be made for lack of descriptors was reported (after 8 attempts)
    as an endpoint that could not be reached: the limit, not the store, is what to change."""
    make_bucket(s3_bucket)
    script = f"""
import os, sys
from casnap.backends.s3 import S3Backend
from casnap.errors import CasnapError
from casnap.locations import parse_location
backend = S3Backend(parse_location("s3://{s3_bucket}/app"))
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
try:
    backend.get("config")
except CasnapError as exc:
    for fd in held:
        os.close(fd)
    print(type(exc).__name__, exc)
"""
    p = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=s3_env,
        preexec_fn=limited(64),
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("CasnapError ") and "too many open files" in p.stdout, p.stdout
    assert "ulimit -n" in p.stdout and "connect" not in p.stdout, p.stdout
