"""The scratch folder of an encrypted repository, `$TMPDIR/casnap-<uid>`: when that name is
taken by something casnap may not use (a link, another user's folder), each process uses a
folder of its own instead and removes it when it ends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import make_app

PW = "correct horse"


def casnap(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmp), "CASNAP_PASSWORD": PW}
    env.pop("CASNAP_PASSWORD_FILE", None)
    env.pop("CASNAP_PASSWORD_COMMAND", None)
    return subprocess.run(
        [sys.executable, "-m", "casnap", *args], env=env, capture_output=True, text=True
    )


def test_a_scratch_folder_of_its_own_is_removed_when_the_command_ends(tmp_path: Path) -> None:
    tmp, elsewhere = tmp_path / "tmp", tmp_path / "elsewhere"
    tmp.mkdir()
    elsewhere.mkdir()
    (tmp / f"casnap-{os.getuid()}").symlink_to(elsewhere)  # planted by another local user
    data, repo = tmp_path / "data", tmp_path / "repo"
    make_app(data, rows=50, vectors=100)
    common = ("--repo", str(repo), "--data", str(data))
    for args in (("init", "--encryption", "repokey"), ("commit", "-q"), ("log",)):
        done = casnap(tmp, *common, *args)
        assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp.iterdir()) == [f"casnap-{os.getuid()}"]
    assert not any(elsewhere.iterdir())  # the link was never followed
