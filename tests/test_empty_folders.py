"""Folders a snapshot holds without files (an app's empty `uploads/`, a store's folder not yet
written to) come back with a checkout, as restic and borg restore them: with their recorded
modes, within the paths checked out, never where a file of the snapshot or of the target
stands."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from click.testing import CliRunner

from casnap.cli import cli
from tests.test_hostile import cli_unprivileged


def run(repo: Path, data: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--repo", str(repo), "--data", str(data), *args])
    return result.exit_code, result.stdout, result.stderr


def make_data(data: Path) -> None:
    (data / "docs").mkdir(parents=True)
    (data / "docs" / "a.txt").write_text("a")
    (data / "uploads").mkdir(0o750)
    (data / "store" / "segments" / "empty").mkdir(parents=True)
    (data / "store" / "kept.txt").write_text("k")
    os.chmod(data / "uploads", 0o750)  # whatever the umask
    os.chmod(data / "store" / "segments", 0o700)


def committed(tmp_path: Path) -> tuple[Path, Path, Path]:
    """make_data's data dir committed once: (data, repo, a folder to check out --to)."""
    data, repo = tmp_path / "data", tmp_path / "repo"
    make_data(data)
    assert run(repo, data, "commit", "-q")[0] == 0
    return data, repo, tmp_path / "out"


@contextlib.contextmanager
def reopened(roots: list[Path], folders: list[str]) -> Iterator[None]:
    """At the end, the folders (below each root) a test shut given 0o755 again, so that its
    tmp_path can be removed."""
    try:
        yield
    finally:
        for root in roots:
            for folder in folders:
                if (root / folder).exists():
                    os.chmod(root / folder, 0o755)


def checkout_unprivileged(repo: Path, data: Path, out: Path) -> None:
    """The latest snapshot checked out --to out by a process without root's capabilities:
    without a warning."""
    proc = cli_unprivileged(repo, data, "checkout", "latest", "--to", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["warnings"] == []


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_checkout_into_a_new_folder_restores_empty_folders_with_their_modes(
    tmp_path: Path,
) -> None:
    data, repo, out = committed(tmp_path)
    code, stdout, stderr = run(repo, data, "checkout", "latest", "--to", str(out), "--json")
    assert code == 0, stderr
    assert (out / "uploads").is_dir() and mode(out / "uploads") == 0o750
    assert (out / "store" / "segments" / "empty").is_dir()
    assert mode(out / "store" / "segments") == 0o700
    assert (out / "docs" / "a.txt").read_text() == "a"
    report = json.loads(stdout)
    assert report["folders_created"] == ["store/segments", "store/segments/empty", "uploads"]


def test_a_checkout_of_some_paths_restores_the_empty_folders_below_them_only(
    tmp_path: Path,
) -> None:
    data, repo, out = committed(tmp_path)
    code, stdout, stderr = run(repo, data, "checkout", "latest", "store", "--to", str(out))
    assert code == 0, stderr
    assert "0 removed, 2 empty folders created; all hashes verified" in stdout + stderr
    assert (out / "store" / "segments" / "empty").is_dir()
    assert not (out / "uploads").exists()
    assert not (out / "docs").exists()


def test_a_full_checkout_into_the_data_dir_puts_back_a_removed_empty_folder(
    tmp_path: Path,
) -> None:
    data, repo, _ = committed(tmp_path)
    (data / "uploads").rmdir()
    (data / "other").mkdir()  # one the snapshot does not name: left as it is
    code, _, stderr = run(repo, data, "checkout", "latest")
    assert code == 0, stderr
    assert (data / "uploads").is_dir() and mode(data / "uploads") == 0o750
    assert (data / "other").is_dir()


def test_a_file_standing_where_an_empty_folder_goes_is_saved_then_replaced(
    tmp_path: Path,
) -> None:
    """In the data dir the file is one the snapshot does not hold: saved in the pre-checkout
    snapshot, removed, and the folder made in its place."""
    data, repo, _ = committed(tmp_path)
    (data / "uploads").rmdir()
    (data / "uploads").write_text("written by the app since")
    code, stdout, stderr = run(repo, data, "checkout", "latest", "--json")
    assert code == 0, stderr
    assert (data / "uploads").is_dir()
    saved = json.loads(stdout)["safety_snapshot"]
    assert saved is not None
    code, content, _ = run(repo, data, "cat", saved, "uploads")
    assert code == 0 and content == "written by the app since"


def test_a_checkout_into_a_folder_holding_a_file_where_an_empty_folder_goes_says_so(
    tmp_path: Path,
) -> None:
    """In a checkout of some paths nothing is removed: the folder is not made, and the
    warning names it; every file is restored."""
    data, repo, _ = committed(tmp_path)
    (data / "uploads").rmdir()
    (data / "uploads").write_text("mine")
    (data / "docs" / "a.txt").write_text("changed")
    code, stdout, stderr = run(repo, data, "checkout", "latest", "docs", "uploads", "--json")
    assert code == 0, stderr
    assert (data / "uploads").read_text() == "mine"
    assert (data / "docs" / "a.txt").read_text() == "a"
    warnings = json.loads(stdout)["warnings"]
    assert any("uploads" in w and "folder" in w for w in warnings), warnings


def test_empty_folders_below_a_read_only_folder_are_restored_by_its_owner(
    tmp_path: Path,
) -> None:
    """A user who may not write into a folder of mode 0o500 made it so, then the folders below
    it: they were not restored (a warning each) and one of mode 0o000 was made but said not
    restored. Each is made open to its owner and given its recorded mode once what it holds
    is made."""
    data, repo, out = tmp_path / "data", tmp_path / "repo", tmp_path / "out"
    (data / "ro" / "inner" / "deeper").mkdir(parents=True)
    (data / "ro" / "shut").mkdir()
    (data / "a.txt").write_text("a")
    bits = {"ro/inner/deeper": 0o750, "ro/inner": 0o500, "ro/shut": 0, "ro": 0o500}
    for folder, given in bits.items():  # innermost first
        os.chmod(data / folder, given)
    assert run(repo, data, "commit", "-q")[0] == 0
    os.chmod(tmp_path, 0o777)  # the checkout below runs without root's capabilities
    with reopened([data, out], ["ro", "ro/inner", "ro/shut"]):
        checkout_unprivileged(repo, data, out)
        assert (out / "ro" / "inner" / "deeper").is_dir()
        assert {f: mode(out / f) for f in bits} == bits


def test_a_read_only_folder_holding_files_is_restored_by_its_owner(tmp_path: Path) -> None:
    """A user who is not root could not restore a folder of mode 0o500 holding files: moving
    it in whole needs write permission on it, and so does a rename into it (exit 8, nothing
    restored). A folder whose mode shuts its owner out is given that mode once the checkout
    has filled it, innermost first."""
    data, repo, out = tmp_path / "data", tmp_path / "repo", tmp_path / "out"
    (data / "ro" / "sub").mkdir(parents=True)
    (data / "ro" / "x.txt").write_text("x")
    (data / "ro" / "sub" / "y.txt").write_text("y")
    (data / "ro" / "sub" / "empty").mkdir()
    bits = {"ro/sub/empty": 0o500, "ro/sub": 0o500, "ro": 0o555}
    for folder, given in bits.items():  # innermost first
        os.chmod(data / folder, given)
    os.chmod(tmp_path, 0o777)  # what follows runs without root's capabilities
    with reopened([data, out], ["ro", "ro/sub", "ro/sub/empty"]):
        proc = cli_unprivileged(repo, data, "commit", "-q")
        assert proc.returncode == 0, proc.stderr
        checkout_unprivileged(repo, data, out)
        assert (out / "ro" / "sub" / "y.txt").read_text() == "y"
        assert {f: mode(out / f) for f in bits} == bits


def test_a_read_only_data_dir_is_restored_into_a_new_folder_by_its_owner(tmp_path: Path) -> None:
    """The target a checkout creates gets the data dir's recorded mode: given 0o555 at once,
    a user who is not root could put nothing in it (exit 8, naming a folder the refused
    checkout then removed). It is given that mode once the checkout has filled it."""
    data, repo, out = tmp_path / "data", tmp_path / "repo", tmp_path / "out"
    (data / "sub").mkdir(parents=True)
    (data / "x.txt").write_text("x")
    (data / "sub" / "y.txt").write_text("y")
    os.chmod(data, 0o555)
    os.chmod(tmp_path, 0o777)  # what follows runs without root's capabilities
    with reopened([tmp_path], ["data", "out"]):
        proc = cli_unprivileged(repo, data, "commit", "-q")
        assert proc.returncode == 0, proc.stderr
        checkout_unprivileged(repo, data, out)
        assert (out / "sub" / "y.txt").read_text() == "y"
        assert mode(out) == 0o555
