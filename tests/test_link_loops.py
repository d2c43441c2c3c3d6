"""A path that is a loop of symbolic links (`ln -s b a; ln -s a b`), given for a repository, a
data dir, a checkout target or a folder of copies: one line naming it and the documented exit
code, never an internal error, and nothing created."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap.cli import cli
from casnap.committer import commit
from casnap.errors import EXIT_CODES, RepositoryError, SourceError
from casnap.repository import Repository

REPO, SOURCE = EXIT_CODES["repository"], EXIT_CODES["source"]

CASES = [
    # (arguments, with LOOP for the loop and REPO for a real repository; exit code)
    (["-r", "LOOP", "log"], REPO),
    (["-r", "LOOP/sub", "log"], REPO),
    (["-r", "LOOP", "init"], REPO),
    (["-r", "LOOP", "commit"], REPO),
    (["-r", "LOOP", "verify"], REPO),
    (["-r", "LOOP", "key", "list"], REPO),
    (["-r", "LOOP", "key", "import", "KEYFILE"], REPO),
    (["-r", "REPO", "copy", "--to", "LOOP"], REPO),
    (["-r", "REPO", "checkout", "latest", "--to", "LOOP"], SOURCE),
    (["-r", "REPO", "checkout", "latest", "--to", "LOOP/sub"], SOURCE),
    (["-r", "REPO", "--data", "LOOP", "checkout", "latest"], SOURCE),
    (["-r", "REPO", "--data", "LOOP", "diff", "latest"], SOURCE),
    (["-r", "REPO", "--data", "LOOP", "commit"], SOURCE),
    (["-r", "REPO", "import", "LOOP"], SOURCE),
    (["-r", "REPO", "--data", "LOOP", "import", "COPIES"], SOURCE),
]


@pytest.fixture
def place(tmp_path: Path) -> Path:
    """tmp_path with a loop a -> b -> a, a repository with one snapshot, a data dir and a
    folder of copies."""
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    data = tmp_path / "data"
    data.mkdir()
    (data / "f.txt").write_bytes(b"x\n")
    commit(Repository.init(tmp_path / "repo"), data)
    (tmp_path / "copies").mkdir()
    (tmp_path / "copies" / "app_20250101_120000.db").write_bytes(b"y\n")
    (tmp_path / "key").write_text("{}")
    return tmp_path


def invoke(place: Path, args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    names = {
        "LOOP": str(place / "a"),
        "REPO": str(place / "repo"),
        "COPIES": str(place / "copies"),
        "KEYFILE": str(place / "key"),
    }
    argv = [names.get(a.split("/")[0], a.split("/")[0]) + a[len(a.split("/")[0]) :] for a in args]
    if "--data" not in argv:
        argv = ["--data", str(place / "data"), *argv]
    result = CliRunner().invoke(cli, argv, env=env)
    return result.exit_code, result.stderr


def listing(place: Path) -> list[str]:
    paths = (p.relative_to(place) for p in place.rglob("*"))
    return sorted(p.as_posix() for p in paths if "locks" not in p.parts)


@pytest.mark.parametrize(("args", "code"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_a_loop_of_links_is_one_line_and_its_exit_code(
    place: Path, args: list[str], code: int
) -> None:
    before = listing(place)
    got, err = invoke(place, args)
    assert got == code, err
    assert err.count("\n") == 1 and "loop of symbolic links" in err, err
    assert listing(place) == before


def test_a_loop_named_by_the_environment_is_one_line(place: Path) -> None:
    got, err = invoke(place, ["log"], env={"CASNAP_REPO": str(place / "a")})
    assert got == REPO and err.count("\n") == 1 and "loop of symbolic links" in err, err


def test_a_loop_among_the_copies_is_skipped(place: Path) -> None:
    (place / "copies" / "app_latest.db").symlink_to("../a")
    got, err = invoke(place, ["-r", "REPO", "import", "COPIES", "--dry-run"])
    assert got == 0, err


def test_the_python_api_raises_casnap_errors(place: Path) -> None:
    with pytest.raises(RepositoryError, match="loop of symbolic links"):
        Repository.open(place / "a")
    with pytest.raises(RepositoryError, match="loop of symbolic links"):
        Repository.init(place / "a")
    with pytest.raises(SourceError, match="loop of symbolic links"):
        commit(Repository.open(place / "repo"), place / "a")
