"""A full checkout and the files of its target it cannot read.

A file `commit --skip-unreadable` left out is recorded in the snapshot (`skipped`): a full
checkout of that snapshot leaves it alone, as it leaves an excluded file, instead of stopping at
it (exit 8) on every later checkout, `--no-safety-snapshot` or not. A file the snapshot does
not account for that cannot be read stops a full checkout, whose one line says why the checkout
needed to read it (to save it before removing or replacing it); `--no-safety-snapshot` needs no
such read and removes or replaces it.

chmod 000 binds root only without its capabilities: run as root, these tests run casnap under
setpriv (tests.test_hostile.unprivileged), or are skipped where that cannot drop them.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from casnap.constants import SAFETY_TAG
from casnap.errors import EXIT_CODES
from casnap.repository import Repository
from tests.helpers_reliability import casnap_env
from tests.test_hostile import one_line, unprivileged


def run(base: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI on base (--repo, --data), run where chmod 000 denies access."""
    return subprocess.run(
        [*unprivileged(), sys.executable, "-m", "casnap", *base, *args],
        env=casnap_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def ok(base: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    done = run(base, *args)
    assert done.returncode == 0, (args, done.stderr)
    return done


def locked(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0)
    return path


@pytest.fixture
def world(tmp_path: Path) -> tuple[list[str], Path]:
    unprivileged()  # skipped here when chmod cannot deny access
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("a\n")
    (data / "sub" / "b.txt").write_text("b\n")
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    return base, data


@pytest.mark.parametrize("save", [True, False])
def test_a_file_the_snapshot_skipped_is_left_alone(
    world: tuple[list[str], Path], save: bool
) -> None:
    base, data = world
    secret = locked(data / "secret.txt", "only its owner's\n")
    (data / "closed").mkdir()
    (data / "closed" / "inner.txt").write_text("in a folder no one may list\n")
    (data / "closed").chmod(0)
    done = ok(base, "commit", "--skip-unreadable", "--json")
    assert sorted(json.loads(done.stdout)["skipped"]) == ["closed", "secret.txt"]
    (data / "a.txt").write_text("changed since\n")  # replaced: saved first unless told not to
    (data / "new.txt").write_text("made since\n")  # removed
    extra = [] if save else ["--no-safety-snapshot"]
    done = ok(base, "checkout", "latest", "--json", *extra)
    result = json.loads(done.stdout)
    assert result["removed"] == ["new.txt"] and result["written"] == ["a.txt"]
    assert (data / "a.txt").read_text() == "a\n" and not (data / "new.txt").exists()
    assert stat.S_IMODE(secret.stat().st_mode) == 0 and secret.read_text() == "only its owner's\n"
    assert stat.S_IMODE((data / "closed").stat().st_mode) == 0
    assert (data / "closed" / "inner.txt").read_text() == "in a folder no one may list\n"
    if save:  # what the checkout replaced and removed is saved; what it left alone is not read
        repo = Repository.open(Path(base[1]))
        saved = repo.load_snapshot(repo.resolve(result["safety_snapshot"]))
        assert SAFETY_TAG in saved.tags
        assert {f.path for f in saved.files} >= {"a.txt", "new.txt"}
        assert sorted(saved.skipped) == ["closed", "secret.txt"]
    else:
        assert result["safety_snapshot"] is None
    ok(base, "checkout", "latest", *extra)  # and again: nothing left to do


def test_a_file_the_snapshot_lacks_that_cannot_be_read_stops_it_saying_why(
    world: tuple[list[str], Path],
) -> None:
    base, data = world
    ok(base, "commit", "-q")
    new = locked(data / "new.txt", "made since, for its owner only\n")
    line = one_line(run(base, "checkout", "latest"), EXIT_CODES["storage"], "Permission denied")
    assert "new.txt" in line and "lacks it" in line and "pre-checkout snapshot" in line, line
    assert "--no-safety-snapshot" in line, line
    assert new.exists()
    done = ok(base, "checkout", "latest", "--no-safety-snapshot")
    assert "1 removed" in done.stderr and not new.exists()


def test_a_file_it_replaces_that_cannot_be_read_stops_it_saying_why(
    world: tuple[list[str], Path],
) -> None:
    base, data = world
    ok(base, "commit", "-q")
    a = locked(data / "a.txt", "changed since, for its owner only\n")
    line = one_line(run(base, "checkout", "latest"), EXIT_CODES["storage"], "Permission denied")
    assert "a.txt" in line and "compare" in line and "pre-checkout snapshot" in line, line
    assert "--no-safety-snapshot" in line, line
    assert stat.S_IMODE(a.stat().st_mode) == 0
    done = ok(base, "checkout", "latest", "--no-safety-snapshot")
    assert "1 written" in done.stderr
    assert a.read_text() == "a\n" and stat.S_IMODE(a.stat().st_mode) != 0


def test_a_folder_the_snapshot_lacks_that_cannot_be_listed_stops_it_saying_why(
    world: tuple[list[str], Path],
) -> None:
    base, data = world
    ok(base, "commit", "-q")
    (data / "closed").mkdir()
    (data / "closed" / "inner.txt").write_text("made since\n")
    (data / "closed").chmod(0)
    for extra in ([], ["--no-safety-snapshot"]):
        line = one_line(
            run(base, "checkout", "latest", *extra), EXIT_CODES["storage"], "Permission denied"
        )
        assert "closed" in line and "lacks" in line, line
    os.chmod(data / "closed", 0o700)
    assert (data / "closed" / "inner.txt").read_text() == "made since\n"


def test_a_smoke_command_sees_the_data_dir_but_what_cannot_be_read(
    world: tuple[list[str], Path],
) -> None:
    """The smoke command's copy of the data dir as it will be: a file the checkout leaves alone
    and cannot read is left out of it, said in a warning, rather than stopping the checkout."""
    base, data = world
    locked(data / "secret.txt", "only its owner's\n")
    ok(base, "commit", "--skip-unreadable", "-q")
    (data / "a.txt").write_text("changed since\n")
    sees = 'test -f "$CASNAP_STAGED_DIR/a.txt" && test ! -e "$CASNAP_STAGED_DIR/secret.txt"'
    done = ok(base, "checkout", "latest", "--smoke-cmd", sees)
    warned = [x for x in done.stderr.splitlines() if "warning" in x and "smoke command" in x]
    assert len(warned) == 1 and "secret.txt" in warned[0], done.stderr
    assert (data / "a.txt").read_text() == "a\n"


def test_a_folder_of_other_files_is_refused_as_such_though_some_may_not_be_listed(
    world: tuple[list[str], Path], tmp_path: Path
) -> None:
    """`--to /etc` run by a user: the refusal of a folder not known to hold this data comes
    first, not an error for the first folder there that user may not list."""
    base, _data = world
    ok(base, "commit", "-q")
    other = tmp_path / "other"
    (other / "private").mkdir(parents=True)
    (other / "private" / "key").write_text("the other app's\n")
    (other / "private").chmod(0)
    (other / "config").write_text("the other app's\n")
    line = one_line(
        run(base, "checkout", "latest", "--to", str(other)), EXIT_CODES["usage"], "remove 1 file"
    )
    assert "config" in line and "--force" in line, line
    line = one_line(
        run(base, "checkout", "latest", "--to", str(other), "--force"),
        EXIT_CODES["storage"],
        "Permission denied",
    )
    assert "private" in line and "lacks" in line, line
    assert (other / "config").read_text() == "the other app's\n"
    os.chmod(other / "private", 0o700)
