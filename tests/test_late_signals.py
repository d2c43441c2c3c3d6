"""A signal that lands once a command's work has landed (a checkout's swap begun, a commit's
manifest stored): the work is not taken back, the command ends with the signal's exit code (130,
143) as for any signal, and its one line says what completed, so a script or service manager
that sees the exit code is not misled into thinking the data dir was left as it was.

The signal is sent by the process itself at a chosen call (tests.faults: just before the nth
rename into the target, or the removal of the lock): a real signal, at a precise point, with no
test hook in casnap.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers_reliability import run_casnap

SIGNALS = [("term", 143, "terminated"), ("int", 130, "interrupted")]


def _ok(*args: str | Path) -> str:
    done = run_casnap([str(a) for a in args])
    assert done.returncode == 0, done.stderr
    return done.stdout


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _snapshots(repo: Path) -> list[dict]:
    return json.loads(_ok("--repo", repo, "log", "--json"))


def _two_versions(tmp_path: Path) -> tuple[Path, Path, str, dict[str, bytes]]:
    """A data dir committed twice (five files); then changed and given a file no snapshot
    holds. (data, repo, the first snapshot's id, the files of the first snapshot)."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    repo = tmp_path / "repo"
    _ok("--repo", repo, "init")
    first: dict[str, bytes] = {}
    for version in (1, 2):
        for n in range(5):
            (data / "sub" / f"f{n}.txt").write_text(f"file {n}, version {version}\n")
        _ok("--repo", repo, "--data", data, "commit", "-q")
        if version == 1:
            first = _files(data)
    (data / "sub" / "f0.txt").write_text("an edit no snapshot holds\n")
    (data / "extra.txt").write_text("a file no snapshot holds\n")
    (first_id,) = [s["id"] for s in _snapshots(repo)][-1:]
    return data, repo, first_id, first


@pytest.mark.parametrize(("action", "code", "said"), SIGNALS)
@pytest.mark.parametrize("json_out", [False, True])
def test_a_signal_during_the_swap_reports_the_completed_checkout(
    tmp_path: Path, action: str, code: int, said: str, json_out: bool
) -> None:
    """SIGTERM (or Ctrl-C) at the second rename of a checkout into the data dir: every file was
    swapped in and the file the snapshot lacks removed, yet the command said only "terminated"
    (143), as if nothing had changed. The line now says the checkout completed and names the
    snapshot restored and the pre-checkout snapshot holding the data it replaced."""
    data, repo, first_id, first = _two_versions(tmp_path)
    args = ["--repo", str(repo), "--data", str(data), "checkout", first_id[:12], "--no-smoke"]
    done = run_casnap(args + (["--json"] if json_out else []), faults=f"replace:{action}:2:{data}/")

    assert _files(data) == first  # all swapped in, extra.txt removed
    (pre,) = [s for s in _snapshots(repo) if "pre-checkout" in s["tags"]]
    assert done.returncode == code, done.stderr
    assert done.stderr.splitlines() == [
        f"casnap: {said}; the checkout completed: snapshot {first_id[:8]} restored into {data}, "
        f"the replaced data saved as snapshot {pre['id'][:8]} (tag pre-checkout)"
    ]
    assert done.stdout == ""
    assert not os.listdir(repo / "locks")
    # the record of what the checkout placed stands: the next commit reads nothing again
    again = json.loads(_ok("--repo", repo, "--data", data, "commit", "--json"))
    assert again["bytes_read"] == 0, again


def test_a_signal_while_the_checkout_releases_its_lock_reports_it_completed(
    tmp_path: Path,
) -> None:
    """The swap is over and the repository's lock is being removed when SIGTERM comes: the
    lock is removed, and the line says the checkout completed (no pre-checkout snapshot:
    --no-safety-snapshot)."""
    data, repo, first_id, first = _two_versions(tmp_path)
    args = ["--repo", str(repo), "--data", str(data), "checkout", first_id, "--no-smoke"]
    done = run_casnap([*args, "--no-safety-snapshot"], faults="delete:term:1:locks/")

    assert _files(data) == first
    said = f"casnap: terminated; the checkout completed: snapshot {first_id[:8]} restored into"
    assert (done.returncode, done.stderr.splitlines()) == (143, [f"{said} {data}"])
    assert not os.listdir(repo / "locks")


@pytest.mark.parametrize(("action", "code", "said"), SIGNALS)
def test_a_signal_once_the_manifest_is_stored_names_the_snapshot(
    tmp_path: Path, action: str, code: int, said: str
) -> None:
    """A commit whose manifest is stored when the signal comes (here: while its lock is
    removed) keeps its snapshot; its line says so and names it, as the line of a commit whose
    stdout is closed does, where it said only "terminated"."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("notes\n")
    repo = tmp_path / "repo"
    _ok("--repo", repo, "init")
    args = ["--repo", str(repo), "--data", str(data), "commit", "-q"]
    done = run_casnap(args, faults=f"delete:{action}:1:locks/")

    (snap,) = _snapshots(repo)
    assert (done.returncode, done.stderr.splitlines()) == (
        code,
        [f"casnap: {said}; the commit completed: snapshot {snap['id']} is stored"],
    )
    assert done.stdout == ""
    assert not os.listdir(repo / "locks")


def test_a_signal_before_the_swap_still_says_only_the_signal(tmp_path: Path) -> None:
    """Before the first rename the checkout is stopped with nothing replaced: one bare line."""
    data, repo, first_id, _first = _two_versions(tmp_path)
    before = _files(data)
    args = ["--repo", str(repo), "--data", str(data), "checkout", first_id, "--no-smoke"]
    # the pre-checkout snapshot's manifest: stored, but the swap has not begun
    done = run_casnap(args, faults="put:term:1:snapshots/")
    assert (done.returncode, done.stderr) == (143, "casnap: terminated\n")
    assert _files(data) == before
