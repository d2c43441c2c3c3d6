"""The descriptors a command holds at once stay well below the usual limit of open files (1024,
`ulimit -n`), whatever the shape of the data dir: a checkout of many folders holding a file
each restores them all, and a limit too small for any command is one line naming the limit."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

from casnap.committer import commit
from casnap.repository import Repository
from tests.conftest import tree_bytes


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
