"""A deleting command that stalls past the stale age (a suspended VM, a SIGSTOP) while another
host finds its lock stale and commits: what it then deletes must not break that commit.

The stall is simulated where it matters: at gc's listing of packs/ (its plan is made from
listings taken before), its lock object is aged past LOCK_STALE_SECONDS, as a real stall would
leave it, and a commit of the same data runs: it removes the lock as stale and reuses the chunks
the plan is about to delete. The deleting command must then stop before its first delete. And a
lock it cannot read is no lock it may pass over."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from casnap import collector, retention
from casnap.backends import LocalBackend
from casnap.committer import commit
from casnap.constants import LOCK_STALE_SECONDS
from casnap.errors import CasnapError, LockError, StorageFull
from casnap.repository import Repository
from casnap.restorer import checkout
from tests import faults as F
from tests.conftest import evolve_app
from tests.helpers_reliability import small_app, small_config, verify_repository
from tests.test_concurrency import Holder
from tests.util import snapshot_tree


def _age_locks(repo_dir: Path) -> None:
    """Every lock object's time pushed back past the stale age, as a stall of its holder leaves
    it (its refresh thread stopped with it)."""
    for path in (repo_dir / "locks").iterdir():
        record = json.loads(path.read_text())
        record["time"] -= LOCK_STALE_SECONDS + 60
        path.write_text(json.dumps(record))


def _stall(repo_dir: Path, during: Callable[[], None]) -> None:
    """A stall of every lock holder of repo_dir past the stale age, during which `during` runs."""
    _age_locks(repo_dir)
    during()


def _stalled_at_plan(repo_dir: Path, tmp: Path, during: Callable[[], None]) -> Repository:
    """The repository, opened so that `during` runs once its holder listed packs/ (its plan is
    made), after its lock was aged past the stale age."""

    def stall(_key: str) -> None:
        _age_locks(repo_dir)
        during()

    backend = F.FaultyBackend(LocalBackend(repo_dir), [F.call_after("list", 1, stall, "packs/")])
    return Repository.open_backend(backend, tmp)


@pytest.mark.parametrize("how", ["gc", "forget --prune"])
def test_a_stalled_gc_deletes_nothing_a_commit_made_meanwhile_needs(
    tmp_path: Path, how: str
) -> None:
    """A gc (or forget --prune) stalled after its plan, past the stale age: a commit on another
    host removed its lock as stale and stored a snapshot whose chunks only the forgotten snapshot
    held. Resumed, the gc deleted them (the commit had reported success; verify then found its
    snapshot broken) and only then failed on its lost lock. It now stops before deleting
    anything, with the lock error, and the commit's snapshot reads back whole."""
    data = small_app(tmp_path / "data")
    repo_dir = tmp_path / "repo"
    first = Repository.init(repo_dir, small_config())
    old = commit(first, data).id
    if how == "gc":
        retention.forget(first, [old])
    first.close()
    made: list[str] = []

    def other_host_commits() -> None:
        other = Repository.open(repo_dir)
        made.append(commit(other, data, host="other-host").id)
        other.close()

    stalled = _stalled_at_plan(repo_dir, tmp_path / "tmp", other_host_commits)
    with pytest.raises(LockError, match="lock was removed"):
        if how == "gc":
            collector.collect(stalled)
        else:
            retention.forget(stalled, [old], gc=5.0)
    stalled.close()
    _whole(repo_dir, made, data, tmp_path / "out")


def _whole(repo_dir: Path, made: list[str], data: Path, target: Path) -> None:
    """The other host's snapshot (made) landed, the repository verifies, and it restores as
    the data dir."""
    assert made
    fresh = Repository.open(repo_dir)
    verify_repository(fresh)
    checkout(fresh, made[0], target, safety_snapshot=False, smoke=False)
    assert snapshot_tree(target) == snapshot_tree(data)


def _full_disk_after(key: str) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), key)


def test_a_stalled_rollback_deletes_no_pack_a_commit_made_meanwhile_indexed(
    tmp_path: Path,
) -> None:
    """A commit that failed once its index file landed takes back that file and its packs under
    the exclusive lock. Stalled past the stale age after it listed index/ (what it checks the
    packs against), its lock was removed by a commit of the same data on another host, which
    found the same packs stored and indexed them. Resumed, the rollback deleted them, breaking
    the other host's snapshot; it now stops (leaving them to gc)."""
    data = small_app(tmp_path / "data")
    repo_dir = tmp_path / "repo"
    first = Repository.init(repo_dir, small_config(4096))
    commit(first, data)
    first.close()
    evolve_app(data, 1)
    made: list[str] = []

    def stall(_key: str) -> None:
        _age_locks(repo_dir)
        other = Repository.open(repo_dir)
        made.append(commit(other, data, host="other-host").id)
        other.close()

    backend = F.FaultyBackend(
        LocalBackend(repo_dir),
        [
            F.call_after("put", 1, _full_disk_after, "index/"),
            # the commit's own load of the index, then the rollback's check of the packs
            F.call_after("list", 2, stall, "index/"),
        ],
    )
    with pytest.raises(StorageFull):
        commit(Repository.open_backend(backend, tmp_path / "tmp"), data)
    _whole(repo_dir, made, data, tmp_path / "out")


def test_a_lock_that_cannot_be_fetched_stops_a_gc(tmp_path: Path) -> None:
    """A commit holds its shared lock; gc lists it but its read of the lock object fails (an
    I/O error, a store that keeps failing). gc took such a lock for one removed meanwhile and
    went on, deleting what the running commit may need; it now stops, deleting nothing, and
    the lock of the commit is left as it was."""
    data = small_app(tmp_path / "data")
    repo_dir = tmp_path / "repo"
    first = Repository.init(repo_dir, small_config())
    old = commit(first, data).id
    retention.forget(first, [old])
    first.close()
    before = sorted(p.name for p in (repo_dir / "packs").rglob("*") if p.is_file())
    holder = Holder(repo_dir, "commit", exclusive=False)
    try:
        unreadable = F.FaultyBackend(LocalBackend(repo_dir), [F.fail("get", 1, "locks/")])
        with pytest.raises(CasnapError):
            collector.collect(Repository.open_backend(unreadable, tmp_path / "tmp"))
        assert sorted(p.name for p in (repo_dir / "packs").rglob("*") if p.is_file()) == before
        assert len(list((repo_dir / "locks").iterdir())) == 1
    finally:
        holder.release()


def test_a_stalled_checkout_replaces_nothing_its_broken_safety_snapshot_held(
    tmp_path: Path,
) -> None:
    """A checkout saves what it replaces as a pre-checkout snapshot, reusing the chunks an older
    snapshot holds. Stalled past the stale age right then, its lock was removed by a forget
    --prune of that older snapshot on another host, which deleted those chunks. Resumed, the
    checkout swapped its files in and failed only at the end: the data it replaced survived
    only in a pre-checkout snapshot that no longer verifies. It now stops before replacing any
    file, removes that snapshot, and leaves the target as it was."""
    old_data = small_app(tmp_path / "old")
    new_data = small_app(tmp_path / "new", seed=1)
    repo_dir = tmp_path / "repo"
    first = Repository.init(repo_dir, small_config())
    old = commit(first, old_data).id
    new = commit(first, new_data).id
    first.close()
    target = tmp_path / "target"
    shutil.copytree(old_data, target)
    (target / "notes.txt").write_text("in no snapshot\n")
    before = snapshot_tree(target)
    pruned: list[int] = []

    def other_host_prunes() -> None:
        other = Repository.open(repo_dir)
        pruned.append(len(retention.forget(other, [old], gc=5.0).removed))
        other.close()

    backend = F.FaultyBackend(
        LocalBackend(repo_dir),
        [F.call_after("put", 1, lambda _key: _stall(repo_dir, other_host_prunes), "packs/")],
    )
    stalled = Repository.open_backend(backend, tmp_path / "tmp")
    with pytest.raises(LockError, match="replacing any file"):
        checkout(stalled, new, target, smoke=False, force=True)
    stalled.close()
    assert pruned == [1]
    assert snapshot_tree(target) == before
    fresh = Repository.open(repo_dir)
    assert [sid.hex() for sid, _ in fresh.snapshots()] == [new]
    verify_repository(fresh)
