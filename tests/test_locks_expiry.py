"""Locks shared by several hosts (casnap/locks.py, docs/FORMAT.md "Locks"): a holder refreshes its
lock while it runs, a lock not refreshed for the stale age is stale whatever its host, and a
holder whose lock was taken away says so when it ends.

Small intervals are passed to `locked(...)`; "another host" is a lock object written with another
host name, as a process there would write it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap import locks
from casnap.backends import Backend, LocalBackend, MemoryBackend
from casnap.cli import cli
from casnap.errors import LockError
from casnap.repository import Repository
from tests.helpers_reliability import wait_for

REFRESH = 0.05
STALE = 1.0


def remote_lock(
    backend: Backend,
    age: float,
    exclusive: bool = False,
    operation: str = "commit",
    key: str = "locks/" + "e" * 32,
) -> str:
    """A lock of a process on another host, last refreshed `age` seconds ago; its key."""
    now = time.time()
    body = {
        "host": "backup-host-2",
        "pid": 4242,
        "start": None,
        "exclusive": exclusive,
        "operation": operation,
        "taken": now - age - 600,
        "time": now - age,
    }
    backend.put(key, json.dumps(body).encode())
    return key


def refreshers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "casnap-lock-refresh"]


def test_a_refreshed_lock_outlives_the_stale_age() -> None:
    backend = MemoryBackend()
    with locks.locked(backend, "commit", exclusive=False, refresh=REFRESH, stale=STALE):
        (first,) = locks.holders(backend)
        held_since = time.monotonic()
        seen = {first.key}
        while time.monotonic() - held_since < 2.5 * STALE:
            seen.update(h.key for h in locks.holders(backend))
            time.sleep(REFRESH)
        # a gc of "another host" judging by the same stale age finds the lock alive
        with pytest.raises(LockError, match=r"shared lock held by commit"):
            with locks.locked(backend, "gc", exclusive=True, wait=0, refresh=REFRESH, stale=STALE):
                pass
        (now,) = locks.holders(backend)  # one object at a time: each old one is deleted
        assert now.key != first.key and len(seen) > 3  # written afresh, again and again
        assert now.time > first.time and now.taken == first.taken  # same holder, new time
        assert not now.stale(STALE)
    assert locks.holders(backend) == []
    assert refreshers() == []  # the thread stopped with the block


def test_an_unrefreshed_lock_of_another_host_is_removed_by_the_next_locker() -> None:
    backend = MemoryBackend()
    fresh = remote_lock(backend, age=0, exclusive=True, operation="gc")
    with pytest.raises(LockError, match=r"pid 4242 on backup-host-2.*stale after 30 min"):
        with locks.locked(backend, "commit", exclusive=False, wait=0):
            pass
    assert backend.exists(fresh)  # its pid cannot be checked from here: kept
    backend.delete(fresh)
    old = remote_lock(backend, age=2 * STALE, exclusive=True, operation="gc")
    with locks.locked(backend, "commit", exclusive=False, wait=0, refresh=REFRESH, stale=STALE):
        assert not backend.exists(old)  # stale whatever its host: removed by whoever finds it
        assert [h.operation for h in locks.holders(backend)] == ["commit"]
    assert locks.holders(backend) == []


def test_unlock_removes_unrefreshed_locks_of_any_host_and_keeps_fresh_ones() -> None:
    backend = MemoryBackend()
    old = remote_lock(backend, age=2 * STALE)
    fresh_key = remote_lock(backend, age=0, key="locks/" + "f" * 32)
    removed, kept = locks.unlock(backend, stale=STALE)
    assert [(i.key, why) for i, why in removed] == [(old, "not refreshed for 2 s")]
    assert [i.key for i in kept] == [fresh_key]
    removed, kept = locks.unlock(backend, force=True, stale=STALE)
    assert [(i.key, why) for i, why in removed] == [(fresh_key, "forced")] and kept == []


def test_unlock_cli_removes_a_lock_of_another_host_after_the_stale_age(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    data = tmp_path / "data"
    data.mkdir()
    key = remote_lock(repo.backend, age=31 * 60, exclusive=True, operation="prune")
    result = CliRunner().invoke(cli, ["--repo", str(tmp_path / "repo"), "unlock"])
    assert result.exit_code == 0, result.stderr
    assert f"removed {key}" in result.stdout and "not refreshed for 31 min" in result.stdout
    assert "backup-host-2" in result.stdout
    assert not repo.backend.exists(key)


def test_gc_waiting_for_a_commit_of_another_host_proceeds_once_its_lock_expires(
    tmp_path: Path,
) -> None:
    """The commit's host stopped refreshing (it crashed, or lost the network): gc waits, and
    proceeds once the lock is older than the stale age, removing it."""
    backend = LocalBackend(tmp_path / "repo")
    commit_lock = remote_lock(backend, age=STALE - 0.4)
    heard: list[str] = []
    with locks.locked(
        backend, "gc", exclusive=True, wait=60, notify=heard.append, refresh=REFRESH, stale=STALE
    ):
        assert not backend.exists(commit_lock)
        assert [h.operation for h in locks.holders(backend)] == ["gc"]
    assert len(heard) == 1 and "shared lock held by commit (pid 4242 on backup-host-2" in heard[0]
    assert locks.holders(backend) == []


def test_a_holder_whose_lock_was_removed_fails_when_it_ends() -> None:
    """`unlock --force` (or a host that judged the lock stale) took the lock away while the
    block ran: its protection was gone, so the end of the block says so instead of success."""
    backend = MemoryBackend()
    with pytest.raises(LockError, match=r"commit on memory:\w+ finished, but its lock was removed"):
        with locks.locked(backend, "commit", exclusive=False, refresh=REFRESH, stale=STALE):
            locks.unlock(backend, force=True)
            wait_for(lambda: refreshers() == [], timeout=30)  # refreshing noticed it and stopped
    assert locks.holders(backend) == []
    with pytest.raises(LockError, match="its lock was removed"):  # noticed at the end at least
        with locks.locked(backend, "verify", exclusive=False):
            locks.unlock(backend, force=True)


def test_an_error_of_the_block_is_not_replaced_by_the_lost_lock() -> None:
    backend = MemoryBackend()
    with pytest.raises(KeyError):
        with locks.locked(backend, "commit", exclusive=False):
            locks.unlock(backend, force=True)
            raise KeyError("the block's own error")
    assert locks.holders(backend) == [] and refreshers() == []


def test_an_error_of_the_block_is_not_replaced_by_a_release_that_fails(tmp_path: Path) -> None:
    """The store fails the block (a server gone mid-upload) and then the lock's removal: the
    command ends with the block's error, not the removal's, after one try at the removal (each
    try of a store that is gone waits out its retries; the lock goes stale, and the next
    command of this host removes it)."""
    from tests import faults as F

    backend = F.install(
        LocalBackend(tmp_path / "repo"), "delete:fail:1:locks/,delete:fail:2:locks/"
    )
    with pytest.raises(KeyError, match="the block's own error"):
        with locks.locked(backend, "commit", exclusive=False):
            raise KeyError("the block's own error")
    assert refreshers() == []
    assert len(locks.holders(backend)) == 1  # left, for the next locker or unlock


def test_lock_intervals_are_checked() -> None:
    with pytest.raises(ValueError, match="refresh"):
        with locks.locked(MemoryBackend(), "gc", exclusive=True, refresh=5, stale=5):
            pass


def test_a_lock_this_process_holds_carries_its_host_pid_and_times() -> None:
    backend = MemoryBackend()
    before = time.time()
    with locks.locked(backend, "gc", exclusive=True):
        (info,) = locks.holders(backend)
        assert info.pid == os.getpid() and info.exclusive and info.operation == "gc"
        assert info.taken is not None and before <= info.taken <= info.time
        assert not info.stale()


def test_a_commit_whose_lock_was_taken_away_keeps_no_snapshot(tmp_path: Path) -> None:
    """A commit that finds at its end that its lock was removed (found stale elsewhere, or
    `unlock --force`) cannot vouch for its snapshot: a gc may have deleted data it names, and a
    later commit would take that snapshot's entries by fingerprint. Its manifest is removed."""
    from casnap.committer import commit
    from tests.conftest import evolve_app, make_app

    data = tmp_path / "data"
    make_app(data, rows=60, vectors=80)
    repo = Repository.open_or_init(tmp_path / "repo")
    commit(repo, data, message="first")
    before = {sid for sid, _ in repo.snapshots()}
    index_before = set(os.listdir(tmp_path / "repo" / "index"))
    evolve_app(data, 1)
    taken: list[int] = []

    def progress(done: int, total: int) -> None:
        if not taken:
            taken.append(locks.unlock(repo.backend, force=True).__len__())

    with pytest.raises(LockError, match="its snapshot .* was removed"):
        commit(repo, data, message="lost its lock", progress=progress)
    assert taken and taken[0] >= 1  # its lock (and any copy a refresh left) removed
    fresh = Repository.open(tmp_path / "repo")
    assert {sid for sid, _ in fresh.snapshots()} == before
    # its index file taken back too: no later commit takes its chunks as stored
    assert set(os.listdir(tmp_path / "repo" / "index")) == index_before
    again = commit(fresh, data, message="again")
    assert again.bytes_added > 0  # its new chunks stored again, not taken from the index
    from casnap.checker import verify

    assert verify(Repository.open(tmp_path / "repo"), read_data=True).ok


@pytest.mark.parametrize("when", [1e20, -1e20, 1e18, 253402300800.0])
def test_a_lock_with_a_time_no_clock_can_show_is_an_unreadable_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: float
) -> None:
    """A lock whose times are finite but past any date (a damaged or hostile lock object) is a
    lock that cannot be read: a command waits for it and says so (exit 6), `unlock` removes
    it; never an internal error while it is shown."""
    Repository.init(tmp_path / "repo")
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a\n")
    backend = LocalBackend(tmp_path / "repo")
    body = {"host": "h2", "pid": 4242, "exclusive": True, "operation": "gc"}
    backend.put("locks/" + "d" * 32, json.dumps({**body, "taken": when, "time": when}).encode())
    repo_args = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    monkeypatch.setenv("CASNAP_LOCK_WAIT", "0")
    held = CliRunner().invoke(cli, [*repo_args, "commit"])
    assert held.exit_code == 6, held.stderr
    assert "cannot be read" in held.stderr and "internal error" not in held.stderr
    freed = CliRunner().invoke(cli, [*repo_args, "unlock", "--force"])
    assert freed.exit_code == 0, freed.stderr
    assert not backend.exists("locks/" + "d" * 32)
    assert CliRunner().invoke(cli, [*repo_args, "commit"]).exit_code == 0


def test_a_lock_dated_ahead_of_this_clock_is_said_to_be(tmp_path: Path) -> None:
    """A lock another host wrote with its clock hours ahead is not found stale before that time
    has passed here: the message says its time is ahead, so the clocks are looked at."""
    from casnap.lockinfo import LockInfo

    ahead = LockInfo("locks/x", "other-host", 7, None, True, "gc", time.time() + 3 * 3600)
    message = ahead.conflict_message("/r")
    assert "3 h ahead of this machine's clock" in message
    assert "`casnap unlock --force`" in message
    now = ahead._replace(time=time.time())
    assert "ahead" not in now.conflict_message("/r")
