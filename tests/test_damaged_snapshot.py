"""One snapshot whose manifest does not read (a flipped bit, a cut object) among good ones.

It stopped every command that lists snapshots, commit included (backups stopped until the file
was deleted by hand), and `forget ID` could not remove it. Commands that delete nothing now list
the others and warn of it once done; gc, prune and any other forget stop at it, as gc must never
take its chunks for unused; `forget ID` removes it; naming it is its error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from casnap.committer import commit
from casnap.errors import IntegrityError
from casnap.ids import ObjectId
from casnap.repository import Repository
from tests.conftest import evolve_app
from tests.helpers_reliability import small_app, small_config
from tests.test_crafted_manifests import cli
from tests.test_hostile import one_line
from tests.util import snapshot_tree

TREES: dict[str, dict] = {}  # the data dir as each snapshot took it


@pytest.fixture
def spoiled(tmp_path: Path) -> tuple[Path, Path, list[str], str]:
    """Three snapshots of a small data dir; the middle one's manifest has a flipped byte."""
    data = small_app(tmp_path / "data")
    repo = Repository.init(tmp_path / "repo", small_config())
    ids = []
    for step in range(3):
        if step:
            evolve_app(data, step)
        ids.append(commit(repo, data).id)
        TREES[ids[-1]] = snapshot_tree(data)
    manifest = tmp_path / "repo" / "snapshots" / ids[1]
    raw = bytearray(manifest.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    manifest.write_bytes(bytes(raw))
    return tmp_path / "repo", data, ids, ids[1]


def _warned(stderr: str, bad: str) -> None:
    lines = [line for line in stderr.splitlines() if "warning" in line]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"casnap: warning: snapshot {bad[:8]} left out: ")
    assert f"casnap forget {bad[:8]}" in lines[0]


def test_commands_that_delete_nothing_pass_over_it(
    spoiled: tuple[Path, Path, list[str], str], tmp_path: Path
) -> None:
    repo_dir, data, ids, bad = spoiled
    listed = cli(repo_dir, data, "log")
    assert listed.returncode == 0, listed.stderr
    assert ids[0][:8] in listed.stdout and ids[2][:8] in listed.stdout
    assert bad[:8] not in listed.stdout
    _warned(listed.stderr, bad)
    evolve_app(data, 3)
    done = cli(repo_dir, data, "commit", "--json")
    assert done.returncode == 0, done.stderr  # the backups go on
    _warned(done.stderr, bad)
    made = json.loads(done.stdout)["id"]
    assert Repository.open(repo_dir).load_snapshot(ObjectId.from_hex(made)).parent == ids[2]
    out = tmp_path / "out"
    restored = cli(repo_dir, data, "checkout", ids[0], "--to", str(out))
    assert restored.returncode == 0, restored.stderr
    _warned(restored.stderr, bad)
    assert snapshot_tree(out) == TREES[ids[0]]
    named = cli(repo_dir, data, "checkout", bad[:8], "--to", str(tmp_path / "named"))
    one_line(named, 5, rf"snapshots/{bad}.*`casnap forget {bad[:8]}` removes that snapshot")
    assert not (tmp_path / "named").exists()


def test_deleting_commands_stop_at_it_and_forget_by_id_removes_it(
    spoiled: tuple[Path, Path, list[str], str],
) -> None:
    repo_dir, data, ids, bad = spoiled
    held = sorted(p.name for p in (repo_dir / "snapshots").iterdir())
    for args in (("gc",), ("prune", "--keep-last", "1"), ("forget", ids[0])):
        one_line(cli(repo_dir, data, *args), 5, f"snapshots/{bad}.*gc, prune and forget stop")
        assert sorted(p.name for p in (repo_dir / "snapshots").iterdir()) == held
    gone = cli(repo_dir, data, "forget", bad[:8])
    assert gone.returncode == 0, gone.stderr
    assert not (repo_dir / "snapshots" / bad).exists()
    for args in (("gc",), ("verify", "--read-data")):
        proc = cli(repo_dir, data, *args)
        assert proc.returncode == 0, proc.stderr
        assert "warning" not in proc.stderr


def test_the_python_api_stops_unless_asked_and_never_for_file_lists(
    spoiled: tuple[Path, Path, list[str], str],
) -> None:
    repo_dir, _data, ids, bad = spoiled
    repo = Repository.open(repo_dir)
    with pytest.raises(IntegrityError, match="gc, prune and forget stop here"):
        repo.snapshots()
    assert [s.hex() for s, _ in repo.snapshots(skip_damaged=True)] == [ids[0], ids[2]]
    assert [s.hex() for s in repo.damaged] == [bad]
    repo.skip_damaged = True
    with pytest.raises(IntegrityError, match="gc, prune and forget stop here"):
        repo.snapshots(files=True)  # what gc and prune read


def test_latest_and_tags_are_not_guessed_past_it(
    spoiled: tuple[Path, Path, list[str], str], tmp_path: Path
) -> None:
    """Its time and tags do not read: it may be the newest, or carry the tag. A reference that
    needs them is its error; the others are named by their ids."""
    repo_dir, data, ids, bad = spoiled
    for ref in ("latest", "nightly"):
        proc = cli(repo_dir, data, "checkout", ref, "--to", str(tmp_path / ref))
        one_line(proc, 5, rf"snapshots/{bad}.*name a snapshot by its id.*casnap forget {bad[:8]}")
        assert not (tmp_path / ref).exists()
    proc = cli(repo_dir, data, "checkout", ids[2][:8], "--to", str(tmp_path / "named"))
    assert proc.returncode == 0, proc.stderr


def test_two_damaged_snapshots_are_forgotten_as_the_error_says(
    spoiled: tuple[Path, Path, list[str], str],
) -> None:
    """With two damaged manifests, `forget` of one stops at the other: the way out each error
    and warning names is one forget of both, which removes them (not one each, which the other
    stops, each naming the other in turn)."""
    repo_dir, data, ids, bad = spoiled
    other = repo_dir / "snapshots" / ids[0]
    raw = bytearray(other.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    other.write_bytes(bytes(raw))
    both = " ".join(sorted([bad[:8], ids[0][:8]]))
    proc = cli(repo_dir, data, "forget", bad[:8])
    one_line(proc, 5, rf"gc, prune and forget stop.*`casnap forget {both}` removes those")
    listed = cli(repo_dir, data, "log")
    warnings = [line for line in listed.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2 and all(f"`casnap forget {both}`" in w for w in warnings)
    gone = cli(repo_dir, data, "forget", *both.split())
    assert gone.returncode == 0, gone.stderr
    assert sorted(p.name for p in (repo_dir / "snapshots").iterdir()) == [ids[2]]


def test_a_filter_never_names_a_damaged_snapshot_by_a_shared_prefix(
    spoiled: tuple[Path, Path, list[str], str],
) -> None:
    """A prefix that a good snapshot the filter leaves out shares with a damaged one does not
    name the damaged one: whether it carries the tag does not read. `forget --tag T PREFIX`
    removed it (as `forget --tag T` with its whole id refuses to)."""
    repo_dir, data, ids, bad = spoiled
    assert cli(repo_dir, data, "forget", bad[:8]).returncode == 0
    crafted = ids[0][:4] + ("0" if ids[0][4] != "0" else "1") * 60
    (repo_dir / "snapshots" / crafted).write_bytes(b"not a manifest")
    held = sorted(p.name for p in (repo_dir / "snapshots").iterdir())
    for args in (
        ("forget", "--tag", "nightly", ids[0][:4]),
        ("show", "--tag", "nightly", ids[0][:4]),
    ):
        one_line(cli(repo_dir, data, *args), 5, f"snapshots/{crafted}.*casnap forget {crafted[:8]}")
        assert sorted(p.name for p in (repo_dir / "snapshots").iterdir()) == held


@pytest.mark.parametrize("kind", ["folder", "link to a folder"])
def test_a_folder_in_a_manifests_place_is_damage_not_absence(
    spoiled: tuple[Path, Path, list[str], str], tmp_path: Path, kind: str
) -> None:
    """The newest manifest replaced by a folder (or a link to one): `latest` named the older
    snapshot without a word, and gc would have taken the newest one's chunks for unused."""
    repo_dir, data, ids, bad = spoiled
    assert cli(repo_dir, data, "forget", bad[:8]).returncode == 0
    newest = repo_dir / "snapshots" / ids[2]
    newest.unlink()
    if kind == "folder":
        newest.mkdir()
    else:
        (tmp_path / "elsewhere").mkdir()
        newest.symlink_to(tmp_path / "elsewhere")
    proc = cli(repo_dir, data, "checkout", "latest", "--to", str(tmp_path / "out"))
    one_line(proc, 5, rf"snapshots/{ids[2]}.*casnap forget {ids[2][:8]}")
    assert not (tmp_path / "out").exists()
    one_line(cli(repo_dir, data, "gc"), 5, f"snapshots/{ids[2]}.*gc, prune and forget stop")
    _warned(cli(repo_dir, data, "log").stderr, ids[2])
    if kind == "folder":
        (newest / "a file").write_text("not casnap's")
        one_line(cli(repo_dir, data, "forget", ids[2][:8]), 5, "folder holding files.*move it")
        assert (newest / "a file").read_text() == "not casnap's"
        (newest / "a file").unlink()
    assert cli(repo_dir, data, "forget", ids[2][:8]).returncode == 0
    assert not os.path.lexists(newest)
    assert kind == "folder" or (tmp_path / "elsewhere").is_dir()  # the link went, not its folder
    assert cli(repo_dir, data, "gc").returncode == 0
