"""Snapshot references (ids, prefixes, tags) and repository locks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap import locks
from casnap.backends import LocalBackend, MemoryBackend
from casnap.cli import cli
from casnap.committer import commit
from casnap.constants import LOCK_STALE_SECONDS
from casnap.errors import EXIT_CODES, AmbiguousSnapshot, LockError, SnapshotNotFound
from casnap.manifest import compress_manifest
from casnap.repository import Repository
from tests.helpers_reliability import dead_pid


def test_resolve_full_prefix_latest_and_tag(app: Path, tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    a = commit(repo, app, tags=["nightly"]).id
    (app / "x.txt").write_text("x")
    b = commit(repo, app, tags=["nightly"]).id
    assert repo.resolve(a).hex() == a
    assert repo.resolve(a[:6]).hex() == a
    assert repo.resolve(a[:6].upper()).hex() == a
    assert repo.resolve("latest").hex() == b
    assert repo.resolve("nightly").hex() == b  # a tag names its newest snapshot
    with pytest.raises(SnapshotNotFound, match="at least 4"):
        repo.resolve(a[:3])
    with pytest.raises(SnapshotNotFound, match="no snapshot"):
        repo.resolve("0" * 64 if not a.startswith("0") else "1" * 64)
    with pytest.raises(SnapshotNotFound, match="no snapshot"):
        repo.resolve("no-such-tag")


def test_ambiguous_prefix(app: Path, tmp_path: Path) -> None:
    backend = MemoryBackend()
    repo = Repository.init_backend(backend, tmp_dir=tmp_path / "t")
    base = repo.load_snapshot(repo.resolve(commit(repo, app).id))
    seen: dict[str, int] = {}
    n = 0
    while True:  # two real manifests whose ids share 4 hex digits (birthday bound: ~300 tries)
        n += 1
        snap = dataclasses.replace(base, message=f"m{n}")
        prefix = snap.id.hex()[:4]
        if prefix in seen:
            break
        seen[prefix] = n
    for m in (seen[prefix], n):
        s = dataclasses.replace(base, message=f"m{m}")
        backend.put(f"snapshots/{s.id.hex()}", compress_manifest(s.encode()))
    fresh = Repository.open_backend(backend, tmp_path / "t")
    with pytest.raises(AmbiguousSnapshot, match="matches 2 snapshots"):
        fresh.resolve(prefix)


def _tagged(root: Path, sid: str, tag: str) -> str:
    """A snapshot as sid but carrying tag, stored beside it as a repository made before commit
    refused hex tags holds one (or a copy brings one in); its id."""
    repo = Repository.open(root)
    snap = dataclasses.replace(repo.load_snapshot(repo.resolve(sid)), tags=(tag,))
    LocalBackend(root).put(f"snapshots/{snap.id.hex()}", compress_manifest(snap.encode()))
    return snap.id.hex()


def test_a_tag_that_is_also_an_id_prefix_is_ambiguous(app: Path, tmp_path: Path) -> None:
    """A tag spelt like the start of another snapshot's id names neither: the command refuses
    with one line (exit 4) giving the full id of each and the --tag filter for the tagged one;
    a full id always names its snapshot, a filter settles it, and a hex-looking tag that starts
    no id is a tag like any other (commit refuses such tags now: these were stored before)."""
    root = tmp_path / "repo"
    base = ["--repo", str(root), "--data", str(app)]
    first = CliRunner().invoke(cli, [*base, "-q", "commit"])
    a = first.stdout.strip()
    (app / "f").write_text("v2")
    second = CliRunner().invoke(cli, [*base, "-q", "commit"])
    assert second.exit_code == 0, second.output
    b = _tagged(root, second.stdout.strip(), a[:4])
    result = CliRunner().invoke(cli, [*base, "forget", a[:4], "--dry-run"])
    assert result.exit_code == EXIT_CODES["not-found"], result.output
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert "ambiguous" in line and a in line and b in line and f"--tag {a[:4]}" in line, line
    repo = Repository.open(root)
    with pytest.raises(AmbiguousSnapshot):
        repo.resolve(a[:4])
    assert repo.resolve(a).hex() == a and repo.resolve(b).hex() == b
    assert repo.resolve("latest", tags=[a[:4]]).hex() == b
    assert repo.resolve(a[:4], tags=[a[:4]]).hex() == b  # a's id is outside the filter
    result = CliRunner().invoke(cli, [*base, "show", "latest", "--tag", a[:4], "--json"])
    assert json.loads(result.stdout)["id"] == b
    ids = [sid.hex() for sid, _ in repo.snapshots()]
    free = next(t for t in ("2026", "1999", "abcd") if not any(i.startswith(t) for i in ids))
    c = _tagged(root, a, free)  # hex-looking, but no id starts with it
    assert Repository.open(root).resolve(free).hex() == c


@pytest.mark.parametrize("how", ["prefix-of-one", "no-id-yet", "upper-case", "full-id", "new-repo"])
def test_commit_refuses_a_tag_spelt_like_the_start_of_an_id(
    app: Path, tmp_path: Path, how: str
) -> None:
    """`commit --tag 0000` where a snapshot's id starts with 0000 was accepted, and every later
    use of the tag was refused as ambiguous (exit 4). A SNAPSHOT of 4 or more hex digits is read
    as an id first, so a tag spelt so is a trap whether or not an id starts so yet (each new
    snapshot's id may): commit refuses it (exit 2, one line), stores nothing, and a first commit
    leaves no repository behind."""
    root = tmp_path / "repo"
    base = ["--repo", str(root), "--data", str(app)]
    if how != "new-repo":
        made = CliRunner().invoke(cli, [*base, "-q", "commit"])
        assert made.exit_code == 0, made.output
        first = made.stdout.strip()
    else:
        first = "0123456789abcdef" * 4
    tag = {
        "prefix-of-one": first[:4],
        "no-id-yet": "2026",
        "upper-case": "DEADBEEF",
        "full-id": first,
        "new-repo": "cafe",
    }[how]
    (app / "f").write_text("v2")
    result = CliRunner().invoke(cli, [*base, "commit", "--tag", "nightly", "--tag", tag])
    assert result.exit_code == EXIT_CODES["usage"], result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("casnap: error: ") and repr(tag) in line and "hex" in line, line
    assert result.stdout == ""
    if how == "new-repo":
        assert not root.exists()
    else:
        assert [sid.hex() for sid, _ in Repository.open(root).snapshots()] == [first]


def test_commit_takes_tags_that_cannot_be_read_as_an_id(app: Path, tmp_path: Path) -> None:
    """Fewer than 4 hex digits never name an id, and a character past f or a separator makes a
    tag no id could start with: these are tags like any other."""
    root = tmp_path / "repo"
    base = ["--repo", str(root), "--data", str(app)]
    tags = ["abc", "v2026", "2026-01-31", "deadbeefx", "1"]
    done = CliRunner().invoke(cli, [*base, "-q", "commit", *(f"--tag={t}" for t in tags)])
    assert done.exit_code == 0, done.output
    sid = done.stdout.strip()
    repo = Repository.open(root)
    assert all(repo.resolve(t).hex() == sid for t in tags)


@pytest.mark.parametrize("tag", ["latest", "pre-checkout"])
def test_commit_refuses_a_tag_a_snapshot_name_reserves(app: Path, tmp_path: Path, tag: str) -> None:
    """`latest` names the newest snapshot wherever a snapshot is named: a tag `latest` could
    never be named; `pre-checkout` marks the snapshots a checkout saves, which `latest` passes
    over (a user's snapshot tagged so was passed over: a checkout of latest restored an older
    one). commit refuses both (exit 2) and stores nothing."""
    root = tmp_path / "repo"
    base = ["--repo", str(root), "--data", str(app)]
    assert CliRunner().invoke(cli, [*base, "-q", "commit"]).exit_code == 0
    result = CliRunner().invoke(cli, [*base, "commit", "--tag", "nightly", "--tag", tag])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert repr(tag) in line and "reserved" in line, line
    assert len(Repository.open(root).snapshots()) == 1


def test_empty_repository_has_no_latest(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    with pytest.raises(SnapshotNotFound, match="no snapshots"):
        repo.resolve("latest")


def test_exclusive_lock_conflicts_name_the_holder() -> None:
    backend = MemoryBackend()
    with locks.locked(backend, "gc", exclusive=True):
        with pytest.raises(LockError, match=r"exclusive lock held by gc \(pid"):
            with locks.locked(backend, "commit", exclusive=False, wait=0.2):
                pass
    with locks.locked(backend, "commit", exclusive=False):
        with locks.locked(backend, "checkout", exclusive=False, wait=0):
            assert len(locks.holders(backend)) == 2  # shared locks coexist
    assert locks.holders(backend) == []


def test_stale_lock_of_dead_process_is_cleared(tmp_path: Path) -> None:
    backend = MemoryBackend()
    import socket

    body = {
        "host": socket.gethostname(),
        "pid": dead_pid(),
        "start": None,
        "exclusive": True,
        "operation": "gc",
        "time": 0,
    }
    backend.put("locks/deadbeef", json.dumps(body).encode())
    with locks.locked(backend, "commit", exclusive=False, wait=0):
        assert [h.key for h in locks.holders(backend)] != ["locks/deadbeef"]
    assert not backend.exists("locks/deadbeef")


def test_a_fresh_lock_of_another_pid_namespace_is_live_whatever_its_pid(tmp_path: Path) -> None:
    """Containers may share a host name but not their processes (another PID namespace): a pid
    that does not run here says nothing about a lock taken there, which stays live until it is
    not refreshed; one of this namespace whose process is gone is stale at once."""
    import socket
    import time

    from casnap.procs import pid_namespace

    here = pid_namespace()
    assert here is not None  # Linux: /proc/self/ns/pid
    backend = MemoryBackend()
    body = {
        "host": socket.gethostname(),
        "pid": dead_pid(),
        "start": None,
        "exclusive": True,
        "operation": "gc",
        "taken": time.time(),
        "time": time.time(),
    }
    backend.put("locks/" + "aa" * 16, json.dumps(dict(body, pidns=here + 1)).encode())
    backend.put("locks/" + "bb" * 16, json.dumps(dict(body, pidns=here)).encode())
    elsewhere, here_dead = sorted(locks.holders(backend), key=lambda h: h.key)
    assert elsewhere.stale_reason() is None
    assert here_dead.stale_reason() == "its process no longer runs"
    with pytest.raises(LockError, match="exclusive lock held by gc"):
        with locks.locked(backend, "commit", exclusive=False, wait=0):
            pass
    old = dict(body, pidns=here + 1, time=time.time() - 10 * LOCK_STALE_SECONDS)
    backend.delete("locks/" + "aa" * 16)  # puts never overwrite: written again, not refreshed
    backend.put("locks/" + "aa" * 16, json.dumps(old).encode())
    with locks.locked(backend, "commit", exclusive=False, wait=0):  # not refreshed: stale
        pass
    assert not backend.exists("locks/" + "aa" * 16) and not backend.exists("locks/" + "bb" * 16)


def test_a_lock_records_its_pid_namespace(tmp_path: Path) -> None:
    from casnap.procs import pid_namespace

    backend = MemoryBackend()
    with locks.locked(backend, "commit", exclusive=False, wait=0):
        (mine,) = locks.holders(backend)
        assert json.loads(backend.get(mine.key))["pidns"] == pid_namespace()


CRAFTED_LOCKS = {
    "pid-infinite": '{"host": "%(host)s", "pid": 1e400, "exclusive": true, "time": %(now)s}',
    "pid-past-64-bits": '{"host": "%(host)s", "pid": 99999999999999999999, "exclusive": true, '
    '"time": %(now)s}',
    "time-past-a-float": '{"host": "%(host)s", "pid": 5, "exclusive": true, "time": 1'
    + "0" * 400
    + "}",
    "pidns-infinite": '{"host": "%(host)s", "pid": 5, "exclusive": true, "pidns": 1e400, '
    '"time": %(now)s}',
    "pid-minus-one": '{"host": "%(host)s", "pid": -1, "exclusive": true, "time": %(now)s}',
    "pid-zero": '{"host": "%(host)s", "pid": 0, "exclusive": true, "time": %(now)s}',
    "start-a-string": '{"host": "%(host)s", "pid": 1, "start": "x", "exclusive": true, '
    '"time": %(now)s}',
}


@pytest.mark.parametrize("body", CRAFTED_LOCKS.values(), ids=CRAFTED_LOCKS.keys())
def test_a_lock_file_casnap_cannot_have_written_is_unreadable_and_unlock_removes_it(
    tmp_path: Path, body: str
) -> None:
    """Numbers no lock holds (past 64 bits, a pid of 0 or -1, which signal a process group)
    make the lock file unreadable: a locking command names it (exit 6) and `casnap unlock`
    removes it, as it does a torn one."""
    import socket
    import time

    from tests.helpers_reliability import casnap_env, run_casnap
    from tests.test_hostile import one_line

    repo_dir = tmp_path / "repo"
    Repository.init(repo_dir)
    (repo_dir / "locks").mkdir(exist_ok=True)
    lock = repo_dir / "locks" / ("cd" * 16)
    lock.write_text(body % {"host": socket.gethostname(), "now": time.time()})
    env = ["--repo", str(repo_dir), "--data", str(tmp_path / "data")]
    gc = run_casnap([*env, "gc"], env=casnap_env(CASNAP_LOCK_WAIT="0"))
    one_line(gc, 6, "lock file .* cannot be read")
    unlocked = run_casnap([*env, "unlock"])
    assert unlocked.returncode == 0, unlocked.stderr
    assert not lock.exists()
