"""Hard links in a snapshot: a commit whose scope leaves out a file's other names (an exclude,
committed paths, a checkout of some paths) records its links as a fresh commit would, and a
manifest casnap would refuse is never stored."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from casnap import committer
from casnap.backends import LocalBackend
from casnap.committer import commit
from casnap.errors import EXIT_CODES, InternalError
from casnap.ids import ObjectId, hash_bytes
from casnap.manifest import compress_manifest, decompress_manifest
from casnap.repository import Repository
from casnap.restorer import checkout
from tests.helpers_reliability import run_casnap


def linked(data: Path, *names: str) -> Path:
    """data holding one file under each of names, all hard links of one inode, written a minute
    ago (so the stat cache trusts it)."""
    first = data / names[0]
    first.parent.mkdir(parents=True, exist_ok=True)
    first.write_bytes(b"data\n")
    for name in names[1:]:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        os.link(first, data / name)
    age(data / names[0])
    return data


def age(path: Path) -> None:
    past = time.time() - 60
    os.utime(path, (past, past))


def links(repo_dir: Path, sid: str) -> dict[str, str | None]:
    """Each file of the snapshot and the earlier path it links to, read back as every command
    reads it (a repository opened afresh, every file list checked)."""
    repo = Repository.open(repo_dir)
    repo.snapshots(files=True)
    return {f.path: f.link for f in repo.load_snapshot(ObjectId.from_hex(sid)).files}


def fresh(
    tmp_path: Path, data: Path, paths: Sequence[str] = (), excludes: Sequence[str] = ()
) -> dict[str, str | None]:
    """What a commit of the same files into a new repository records."""
    where = tmp_path / f"fresh-{len(list(tmp_path.glob('fresh-*')))}"
    sid = commit(Repository.init(where), data, paths, excludes=excludes).id
    return links(where, sid)


def test_a_commit_excluding_the_first_name_of_a_link_drops_the_link(tmp_path: Path) -> None:
    data = linked(tmp_path / "data", "x/a", "y/b")
    repo = Repository.init(tmp_path / "repo")
    first = commit(repo, data).id
    assert links(tmp_path / "repo", first) == {"x/a": None, "y/b": "x/a"}
    second = commit(repo, data, excludes=["x"])
    assert second.files_unchanged == 1 and second.bytes_read == 0  # y/b from the parent
    assert links(tmp_path / "repo", second.id) == {"y/b": None}
    assert links(tmp_path / "repo", second.id) == fresh(tmp_path, data, excludes=["x"])
    third = commit(Repository.open(tmp_path / "repo"), data)  # refused the manifest before
    assert links(tmp_path / "repo", third.id) == {"x/a": None, "y/b": "x/a"}
    out = tmp_path / "out"
    checkout(Repository.open(tmp_path / "repo"), second.id, out, safety_snapshot=False)
    assert (out / "y" / "b").read_bytes() == b"data\n"


def test_a_reused_link_is_pointed_at_the_first_name_this_snapshot_holds(tmp_path: Path) -> None:
    data = linked(tmp_path / "data", "x/a", "y/b", "z/c")
    repo = Repository.init(tmp_path / "repo")
    commit(repo, data)
    second = commit(repo, data, excludes=["x"])
    assert second.files_unchanged == 2
    assert links(tmp_path / "repo", second.id) == {"y/b": None, "z/c": "y/b"}
    assert links(tmp_path / "repo", second.id) == fresh(tmp_path, data, excludes=["x"])
    out = tmp_path / "out"
    checkout(Repository.open(tmp_path / "repo"), second.id, out, safety_snapshot=False)
    assert (out / "y" / "b").stat().st_ino == (out / "z" / "c").stat().st_ino


def test_a_link_restored_alone_is_committed_as_a_file_of_its_own(tmp_path: Path) -> None:
    data = linked(tmp_path / "data", "x/a", "y/b")
    repo = Repository.init(tmp_path / "repo")
    first = commit(repo, data).id
    (data / "x" / "a").write_bytes(b"changed\n")  # both names: one file
    age(data / "x" / "a")
    checkout(repo, first, data, ["y/b"], safety_snapshot=False)
    assert (data / "y" / "b").stat().st_ino != (data / "x" / "a").stat().st_ino
    again = commit(Repository.open(tmp_path / "repo"), data)
    assert again.files_changed == 1 and again.files_unchanged == 1  # y/b by the checkout's record
    assert links(tmp_path / "repo", again.id) == {"x/a": None, "y/b": None}
    assert links(tmp_path / "repo", again.id) == fresh(tmp_path, data)
    assert commit(Repository.open(tmp_path / "repo"), data).files_unchanged == 2


def test_a_commit_of_some_paths_after_a_checkout_drops_a_link_it_leaves_out(
    tmp_path: Path,
) -> None:
    data = linked(tmp_path / "data", "x/a", "y/b")
    repo = Repository.init(tmp_path / "repo")
    first = commit(repo, data).id
    (data / "x" / "a").write_bytes(b"changed\n")
    checkout(repo, first, data, safety_snapshot=False)
    assert (data / "y" / "b").stat().st_ino == (data / "x" / "a").stat().st_ino
    only_y = commit(Repository.open(tmp_path / "repo"), data, ["y"])
    assert only_y.files_unchanged == 0 and only_y.bytes_read == 0  # by the checkout's record
    assert links(tmp_path / "repo", only_y.id) == {"y/b": None}
    assert links(tmp_path / "repo", only_y.id) == fresh(tmp_path, data, ["y"])
    assert commit(Repository.open(tmp_path / "repo"), data, ["y"]).files_unchanged == 1


def test_a_manifest_casnap_would_refuse_is_never_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit that makes a manifest its readers refuse (here a link to a path it lacks, as
    a reused entry once kept) fails as a bug does, and stores nothing: every later command of
    the repository goes on."""
    data = linked(tmp_path / "data", "x/a", "y/b")
    repo = Repository.init(tmp_path / "repo")
    first = commit(repo, data).id
    monkeypatch.setattr(
        committer, "_linked", lambda primary, path: primary._replace(path=path, link="gone")
    )
    with pytest.raises(InternalError, match="nothing committed.*links 'y/b' to 'gone'"):
        commit(repo, data)
    monkeypatch.undo()
    again = Repository.open(tmp_path / "repo")
    assert [sid.hex() for sid, _ in again.snapshots(files=True)] == [first]
    assert links(tmp_path / "repo", commit(again, data).id) == {"x/a": None, "y/b": "x/a"}


def test_forget_removes_a_snapshot_whose_links_casnap_refuses(tmp_path: Path) -> None:
    """A repository holding the manifest a reused link once made (y/b linked to an x/a the
    snapshot lacks, an --exclude x commit): every command that reads it stops with the way out,
    and `forget` of that snapshot (with --prune too) takes it, after which all commands go on."""
    data = linked(tmp_path / "data", "x/a", "y/b")
    repo_dir = tmp_path / "repo"
    base = ["--repo", str(repo_dir), "--data", str(data)]
    good = commit(Repository.init(repo_dir), data).id
    d = json.loads(decompress_manifest(LocalBackend(repo_dir).get(f"snapshots/{good}"), "m"))
    d["files"] = [f for f in d["files"] if f["path"] == "y/b"]
    d["totals"] = {"files": 1, "bytes": d["files"][0]["size"]}
    d["time"] = "2099-01-01T00:00:00.000000Z"  # the latest: the next commit's parent
    raw = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    bad = hash_bytes(raw).hex()
    LocalBackend(repo_dir).put(f"snapshots/{bad}", compress_manifest(raw))
    for args in (["commit"], ["checkout", good], ["gc"], ["forget", good]):
        proc = run_casnap([*base, *args])
        assert proc.returncode == EXIT_CODES["integrity"], proc.stderr
        assert "links 'y/b' to 'x/a'" in proc.stderr and f"forget {bad[:8]}" in proc.stderr
    assert len(Repository.open(repo_dir).snapshots()) == 2  # nothing forgotten
    proc = run_casnap([*base, "forget", bad[:8], "--prune"])
    assert proc.returncode == 0, proc.stderr
    for args in (
        ["commit"],
        ["checkout", "latest"],
        ["gc"],
        ["verify"],
        ["prune", "--keep-last", "1"],
    ):
        proc = run_casnap([*base, *args])
        assert proc.returncode == 0, (args, proc.stderr)
    assert [sid.hex() for sid, _ in Repository.open(repo_dir).snapshots()] != [good]


@pytest.mark.parametrize("other", ["zzz/copy.faiss", "a/copy.faiss"])
def test_a_link_to_a_store_file_read_again_takes_what_was_read_again(
    tmp_path: Path, other: str
) -> None:
    """A framework store rewritten while the commit reads it is read again (instants.py): a hard
    link elsewhere to one of its files, the same file, is stored with what was read again,
    whichever of the two names comes first."""
    from tests.test_instants import _index_bytes, store_before_a_big_file

    data = tmp_path / "data"
    store = store_before_a_big_file(data)
    (data / other).parent.mkdir()
    os.link(store / "index.faiss", data / other)
    newer = _index_bytes(120)
    fired: list[int] = []

    def rewrite_once(done: int, total: int) -> None:
        if done > total // 2 and not fired:  # while zz.bin is read: the store was read already
            fired.append(done)
            with open(store / "index.faiss", "r+b") as f:  # in place: both names
                f.write(newer)

    repo = Repository.init(tmp_path / "repo")
    result = commit(repo, data, progress=rewrite_once)
    assert fired
    files = {
        f.path: f for f in Repository.open(tmp_path / "repo").snapshots(files=True)[0][1].files
    }
    first, second = sorted(["store/index.faiss", other])
    assert (files[first].link, files[second].link) == (None, first)
    assert files[first].hash == files[second].hash == hash_bytes(newer).hex()
    assert (data / other).read_bytes() == newer
    assert not any("kept changing" in w for w in result.warnings)


def test_a_database_with_another_name_keeps_what_its_own_wal_holds(tmp_path: Path) -> None:
    """A WAL database whose file has a second name: SQLite shows through each name what that
    name's `-wal` holds. Captured once through the first name (`alias.db`, no `-wal`), both
    were stored without the transactions in `w.db-wal`: the table they made was lost."""
    import contextlib
    import sqlite3

    data = tmp_path / "data"
    data.mkdir()
    with contextlib.closing(sqlite3.connect(data / "w.db", isolation_level=None)) as app:
        app.execute("PRAGMA journal_mode=WAL")
        app.execute("PRAGMA wal_autocheckpoint=0")
        app.execute("CREATE TABLE t(x)")
        app.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(50)])
        os.link(data / "w.db", data / "alias.db")
        assert (data / "w.db-wal").stat().st_size > 0
        repo = Repository.init(tmp_path / "repo")
        sid = commit(repo, data).id
    out = tmp_path / "out"
    checkout(repo, sid, out, safety_snapshot=False)
    with contextlib.closing(sqlite3.connect(out / "w.db")) as db:
        assert db.execute("SELECT count(*) FROM t").fetchone() == (50,)
    # once checkpointed, both names show one state again: stored as one file and a link
    again = commit(repo, data).id
    by_path = {e.path: e for e in repo.load_snapshot(repo.resolve(again)).files}
    assert by_path["w.db"].link == "alias.db" and by_path["w.db"].hash == by_path["alias.db"].hash
