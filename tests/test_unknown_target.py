"""A full checkout `--to` a folder nothing says holds this data removes nothing there unasked.

A full checkout removes the target's files the snapshot lacks. Into the data dir that is the
point; into any other folder (`--to /tmp`, `--to /etc`) it removed every file there the snapshot
lacked (saved in a pre-checkout snapshot, but gone from where they were), where a restic or borg
restore never deletes what it did not write. Such a checkout goes on only into a folder known
to hold this data: one holding no file the snapshot lacks, the data dir, a folder an earlier
full checkout from this repository went into, or one a snapshot of this repository was
committed from on this host. Anywhere else it is refused before anything is read or written
(exit 2, one line: how many files, one of them, and `--force`), unless `--force`.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from casnap.committer import commit
from casnap.constants import SAFETY_TAG
from casnap.errors import EXIT_CODES, InvalidArgument
from casnap.repository import Repository
from casnap.restorer import checkout
from tests.test_hostile import one_line
from tests.test_target_overlap import run
from tests.util import raw_tree


def ok(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = run(cwd, *args)
    assert done.returncode == 0, (args, done.stderr)
    return done


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def files_of(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


DATA = {"a.txt": "a\n", "sub/b.txt": "b\n"}
OTHERS = {"notes.txt": "another app's notes\n", "otherapp/state.json": "{}\n"}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """./data committed into ./backups; ./shared holds another app's files."""
    write(tmp_path / "data", DATA)
    ok(tmp_path, "commit", "-q")
    write(tmp_path / "shared", OTHERS)
    return tmp_path


def snapshots(home: Path) -> int:
    return len(list((home / "backups" / "snapshots").iterdir()))


def no_stage_left(root: Path) -> None:
    assert not [p for p in root.rglob(".casnap-tmp-*")], list(root.rglob(".casnap-tmp-*"))


@pytest.mark.parametrize("extra", [[], ["--no-safety-snapshot"], ["--json"], ["--no-smoke"]])
def test_a_full_checkout_into_a_folder_of_other_files_is_refused(
    home: Path, extra: list[str]
) -> None:
    before = raw_tree(home / "shared")
    done = run(home, "checkout", "latest", "--to", "shared", *extra)
    line = one_line(done, EXIT_CODES["usage"], r"would remove 2 files")
    assert "notes.txt" in line or "otherapp/state.json" in line, line
    assert "--force" in line, line
    if extra == ["--no-safety-snapshot"]:
        assert "without saving" in line, line
    else:
        assert "pre-checkout snapshot" in line, line
    assert done.stdout == ""
    assert raw_tree(home / "shared") == before
    assert snapshots(home) == 1  # nothing saved
    no_stage_left(home)


def test_force_removes_them_saved_first_and_the_folder_is_known_from_then_on(home: Path) -> None:
    done = ok(home, "checkout", "latest", "--to", "shared", "--force", "--json")
    result = json.loads(done.stdout)
    assert files_of(home / "shared") == DATA
    assert sorted(result["removed"]) == sorted(OTHERS)
    repo = Repository.open(home / "backups")
    saved = repo.load_snapshot(repo.resolve(result["safety_snapshot"]))
    assert SAFETY_TAG in saved.tags and {f.path for f in saved.files} >= set(OTHERS)
    # a full checkout went into it: the next one removes what the snapshot lacks unasked
    write(home / "shared", {"later.txt": "made by the restored app\n"})
    ok(home, "checkout", "latest", "--to", "shared")
    assert files_of(home / "shared") == DATA


def test_a_folder_made_anew_where_a_checkout_target_was_is_not_known(home: Path) -> None:
    """The record of a full checkout named its target by path: another folder put at that path,
    holding other files, counted as known and lost them unasked. The record keeps the folder's
    identity (device and inode), as the data dir is known by its own. (The old folder is kept
    aside here: a folder removed, its inode number free, may give it to the next one made.)"""
    ok(home, "checkout", "latest", "--to", "restored")
    (home / "restored").rename(home / "aside")
    write(home / "restored", {"precious.txt": "not this data\n"})
    before = raw_tree(home / "restored")
    one_line(run(home, "checkout", "latest", "--to", "restored"), EXIT_CODES["usage"], "--force")
    assert raw_tree(home / "restored") == before
    ok(home, "checkout", "latest", "--to", "restored", "--force")
    write(home / "restored", {"later.txt": "made by the restored app\n"})
    ok(home, "checkout", "latest", "--to", "restored")  # the folder the full checkout went into
    assert files_of(home / "restored") == DATA


def test_a_folder_holding_only_the_snapshots_files_needs_no_force(home: Path) -> None:
    for to in ("fresh", "fresh/deeper"):  # missing, then inside one just restored
        ok(home, "checkout", "latest", "--to", to)
    empty = home / "empty"
    empty.mkdir()
    (empty / "sub").mkdir()  # folders are never removed: an empty one is no reason to refuse
    ok(home, "checkout", "latest", "--to", "empty")
    assert files_of(empty) == DATA
    same = home / "same"
    write(same, {"a.txt": "changed since\n"})  # replaced, nothing removed
    done = ok(home, "checkout", "latest", "--to", "same")
    assert files_of(same) == DATA and "0 removed" in done.stderr


def test_the_data_dir_by_any_name_is_known(home: Path) -> None:
    write(home / "data", {"extra.txt": "written after the commit\n"})
    (home / "link").symlink_to("data")
    for to in ("data", "./data/", "link", str(home / "data")):
        ok(home, "checkout", "latest", "--to", to)
        assert files_of(home / "data") == DATA, to
        write(home / "data", {"extra.txt": "written after the commit\n"})
    ok(home, "checkout", "latest")  # no --to: the data dir
    assert files_of(home / "data") == DATA
    # a --data never committed from is the data dir all the same (a move to a new machine)
    write(home / "moved", {"a.txt": "old\n", "stray.txt": "x\n"})
    ok(home, "--data", "moved", "checkout", "latest")
    assert files_of(home / "moved") == DATA


def test_a_folder_a_snapshot_was_committed_from_is_known(home: Path) -> None:
    first = Repository.open(home / "backups").snapshots()[-1][0].hex()
    write(home / "shared", {"a.txt": "shared's own\n"})
    ok(home, "--data", "shared", "commit", "-q")  # the repository holds shared's data too
    write(home / "shared", {"later.txt": "after that commit\n"})
    ok(home, "checkout", first, "--to", "shared")
    assert files_of(home / "shared") == DATA


def test_a_checkout_of_some_paths_does_not_make_a_folder_known(home: Path) -> None:
    """`checkout latest a.txt --to shared` replaced a file no snapshot held there, so it saved a
    pre-checkout snapshot of shared and recorded what it placed: neither says shared holds this
    data."""
    write(home / "shared", {"a.txt": "shared's own\n"})
    done = ok(home, "checkout", "latest", "a.txt", "--to", "shared")
    assert "tag pre-checkout" in done.stderr
    before = raw_tree(home / "shared")
    one_line(run(home, "checkout", "latest", "--to", "shared"), EXIT_CODES["usage"], "remove 2")
    assert raw_tree(home / "shared") == before


def test_a_snapshot_of_the_same_path_on_another_host_does_not_make_it_known(
    tmp_path: Path, host_name: Callable[[str], None]
) -> None:
    write(tmp_path / "data", DATA)
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, tmp_path / "data").id
    shared = tmp_path / "shared"
    write(shared, OTHERS)
    host_name("app-2")  # the same path on another machine is another folder
    commit(repo, shared)
    host_name("app-1")
    with pytest.raises(InvalidArgument, match="would remove 2 files"):
        checkout(repo, sid, shared, smoke=False)
    assert files_of(shared) == OTHERS


def test_the_library_refuses_alike_and_takes_force_or_the_data_dir(tmp_path: Path) -> None:
    write(tmp_path / "data", DATA)
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, tmp_path / "data").id
    shared = tmp_path / "shared"
    write(shared, OTHERS)
    before = len(repo.snapshots())
    with pytest.raises(InvalidArgument, match="would remove 2 files"):
        checkout(repo, sid, shared, smoke=False)
    assert files_of(shared) == OTHERS and len(repo.snapshots()) == before
    checkout(repo, sid, shared, ["a.txt"], smoke=False)  # some paths: nothing removed
    assert files_of(shared) == {**OTHERS, "a.txt": "a\n"}
    r = checkout(repo, sid, shared, smoke=False, data_dir=shared)
    assert files_of(shared) == DATA and r.files_removed == 2
    other = tmp_path / "other"
    write(other, OTHERS)
    checkout(repo, sid, other, smoke=False, force=True)
    assert files_of(other) == DATA


def test_a_stale_wal_beside_a_database_it_restores_is_still_dealt_with(tmp_path: Path) -> None:
    """A -wal left beside a database the checkout replaces would corrupt the restored one: it
    is removed with no --force, as before, though the folder is known to no record; a folder
    also holding a file the snapshot lacks is refused with the -wal untouched."""
    data = tmp_path / "data"
    data.mkdir()
    with contextlib.closing(sqlite3.connect(data / "app.db")) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t(x)")
        db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(50)])
        db.commit()
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data).id
    with contextlib.closing(sqlite3.connect(data / "app.db")) as db:
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(50, 300)])
        db.commit()
        stale = (data / "app.db-wal").read_bytes()
    target = tmp_path / "target"
    target.mkdir()
    (target / "app.db").write_bytes((data / "app.db").read_bytes())
    (target / "app.db-wal").write_bytes(stale)
    (target / "stray.txt").write_text("not ours")
    before = raw_tree(target)
    with pytest.raises(InvalidArgument, match="would remove 1 file .*stray.txt"):
        checkout(repo, sid, target)
    assert raw_tree(target) == before
    (target / "stray.txt").unlink()
    r = checkout(repo, sid, target)
    assert r.files_removed == 0 and not (target / "app.db-wal").exists()
    restored_as_committed(target)
    # a -wal left where the database itself is gone: the database the checkout restores there
    # would open with it, so it goes as before (saved first, as a file no snapshot holds)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "app.db-wal").write_bytes(stale)
    r = checkout(repo, sid, elsewhere)
    assert r.safety_snapshot is not None and not (elsewhere / "app.db-wal").exists()
    restored_as_committed(elsewhere)


def restored_as_committed(target: Path) -> None:
    with contextlib.closing(sqlite3.connect(target / "app.db")) as db:
        assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 50
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_manifest_naming_a_folder_as_its_source_does_not_make_it_known(tmp_path: Path) -> None:
    """Whether a snapshot was committed from a folder was read from the manifests' `source` and
    `host`, which a repository someone else made can say anything in: a manifest naming
    `--to`'s folder as its source had a full checkout remove that folder's own files. What
    this host committed from is its own record now (the user's cache dir, as for checkouts)."""
    from tests.test_crafted_manifests import manifest_of, store

    write(tmp_path / "data", DATA)
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, tmp_path / "data").id
    victim = tmp_path / "victim"
    write(victim, {"my_thesis.txt": "in no snapshot\n"})
    forged = manifest_of(tmp_path / "repo", sid)
    forged["source"] = str(victim)
    store(tmp_path / "repo", forged)
    repo = Repository.open(tmp_path / "repo")
    with pytest.raises(InvalidArgument, match="would remove 1 file"):
        checkout(repo, sid, victim, smoke=False, safety_snapshot=False)
    assert files_of(victim) == {"my_thesis.txt": "in no snapshot\n"}


def test_the_refusal_does_not_deny_a_full_checkout_an_older_record_cannot_tell(
    tmp_path: Path,
) -> None:
    """A record older versions wrote does not say whether its checkout was full: the refusal
    said "no full checkout from this repository went into it", when one may have. It says what
    this host knows: it has no record of one."""
    from casnap import restored

    write(tmp_path / "data", DATA)
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, tmp_path / "data").id
    aside = tmp_path / "aside"
    checkout(repo, sid, aside, smoke=False)
    path = restored._path(repo.id, str(aside))
    record = json.loads(path.read_text())
    del record["host"], record["whole"]  # the shape versions before `whole` wrote
    path.write_text(json.dumps(record))
    write(aside, {"stray.txt": "x\n"})
    with pytest.raises(InvalidArgument, match="would remove 1 file") as refused:
        checkout(repo, sid, aside, smoke=False)
    assert "went into it" not in str(refused.value)
    assert "no record of a full checkout from this repository into it" in str(refused.value)
