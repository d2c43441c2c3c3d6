"""Concurrent casnap processes: no lost snapshot, no deadlock, a clear message naming the holder
of a lock that makes a process give up, and locks of killed processes recovered."""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from casnap import locks
from casnap.backends import LocalBackend
from casnap.committer import commit
from casnap.config import encode_config
from casnap.constants import TEMP_PREFIX
from casnap.errors import ObjectMissing
from casnap.repository import Repository
from tests import faults as F
from tests.conftest import evolve_app
from tests.helpers_reliability import (
    ROOT,
    Ledger,
    casnap_command,
    casnap_env,
    small_app,
    small_config,
    temp_files,
    verify_repository,
    wait_for,
)
from tests.util import snapshot_tree

HOLDER = r"""
import sys
from casnap import locks
from casnap.backends import LocalBackend
with locks.locked(LocalBackend(sys.argv[1]), sys.argv[2], exclusive=sys.argv[3] == "x"):
    print("locked", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


class Holder:
    """A live process holding a repository lock until told to let go (or killed)."""

    def __init__(self, repo: Path, operation: str, exclusive: bool) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(repo), operation, "x" if exclusive else "s"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=casnap_env(),
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "released"
        self.close()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.close()

    def close(self) -> None:
        self.proc.wait(timeout=30)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


def start(
    repo: Path, data: Path, *args: str, faults: str = "", **env: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        casnap_command(["--repo", str(repo), "--data", str(data), *args], faults),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=casnap_env(**env),
        cwd=ROOT,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)  # a deadlock fails here
    assert "Traceback" not in err
    return proc.returncode, out, err


def test_concurrent_commits_and_checkouts_lose_nothing(tmp_path: Path) -> None:
    """Four commits of different data dirs and two checkouts run at once, twice over."""
    repo_dir = tmp_path / "repo"
    repo = Repository.init(repo_dir, small_config(16 * 1024))
    dirs = [small_app(tmp_path / f"data{i}", seed=i, rows=300, vectors=1200) for i in range(4)]
    ledger = Ledger()
    first = ledger.commit(repo, dirs[0], message="base")
    for round_ in range(2):
        trees = {}
        procs = []
        for i, d in enumerate(dirs):
            evolve_app(d, 10 * round_ + i)
            trees[i] = snapshot_tree(d)
            procs.append(start(repo_dir, d, "commit", "-m", f"r{round_}-{i}"))
        outs = [tmp_path / f"out{round_}-{k}" for k in range(2)]
        readers = [start(repo_dir, dirs[0], "checkout", first, "--to", str(o)) for o in outs]
        for i, p in enumerate(procs):
            code, out, err = finish(p)
            assert code == 0, err
            ledger.record(out.strip(), trees[i])
        for p in readers:
            assert finish(p)[0] == 0
        for o in outs:
            assert snapshot_tree(o) == ledger.trees[first]
    fresh = Repository.open(repo_dir)
    assert ledger.check(fresh, tmp_path / "check") == 9
    verify_repository(fresh)
    assert not temp_files(repo_dir) and not list((repo_dir / "locks").iterdir())


def test_a_process_that_gives_up_names_the_lock_holder(tmp_path: Path) -> None:
    data = small_app(tmp_path / "data")
    repo_dir = tmp_path / "repo"
    commit(Repository.init(repo_dir, small_config()), data)
    holder = Holder(repo_dir, "gc", exclusive=True)
    try:
        code, _out, err = finish(start(repo_dir, data, "commit", CASNAP_LOCK_WAIT="0.3"))
        assert code == 6
        (line,) = err.splitlines()
        pattern = (
            rf"casnap: error: repository .*repo is locked: exclusive lock held by gc "
            rf"\(pid {holder.proc.pid} on {re.escape(socket.gethostname())}, since .*\)"
        )
        assert re.fullmatch(pattern, line), line
        # a checkout gives up the same way, and neither left its own lock behind
        code, _out, err = finish(
            start(
                repo_dir,
                data,
                "checkout",
                "latest",
                "--to",
                str(tmp_path / "o"),
                **{"CASNAP_LOCK_WAIT": "0"},
            )
        )
        assert code == 6 and "held by gc" in err
        assert [h.pid for h in locks.holders(LocalBackend(repo_dir))] == [holder.proc.pid]
    finally:
        holder.release()
    assert len(Repository.open(repo_dir).snapshots()) == 1


def test_a_waiting_commit_proceeds_once_the_holder_lets_go(tmp_path: Path) -> None:
    data = small_app(tmp_path / "data")
    repo_dir = tmp_path / "repo"
    commit(Repository.init(repo_dir, small_config()), data)
    holder = Holder(repo_dir, "gc", exclusive=True)
    waiting = start(repo_dir, data, "commit", "-m", "waited")
    backend = LocalBackend(repo_dir)
    try:
        # the commit reaches the lock and keeps trying: its own lock comes and goes
        wait_for(lambda: any(h.pid == waiting.pid for h in locks.holders(backend)), interval=0)
        assert waiting.poll() is None
        assert len(Repository.open(repo_dir).snapshots()) == 1
    finally:
        holder.release()
    code, out, err = finish(waiting)
    assert code == 0, err
    assert Repository.open(repo_dir).resolve("latest").hex() == out.strip()
    assert locks.holders(backend) == []


KILLED_HOLDERS = ("lock-holder", "commit", "gc")


@pytest.mark.parametrize("who", KILLED_HOLDERS)
def test_lock_of_a_killed_process_is_recovered(tmp_path: Path, who: str) -> None:
    """A process SIGKILLed while it holds a lock (a bare exclusive holder, a casnap commit right
    after locking, a casnap gc right after locking) blocks nobody: its lock is stale."""
    data = small_app(tmp_path / "data")
    repo_dir = tmp_path / "repo"
    commit(Repository.init(repo_dir, small_config()), data)
    backend = LocalBackend(repo_dir)
    if who == "lock-holder":
        holder = Holder(repo_dir, "gc", exclusive=True)
        pid, operation = holder.proc.pid, "gc"
        holder.kill()
    else:
        proc = start(repo_dir, data, who, faults="put:kill:1:locks/")
        assert finish(proc)[0] == -signal.SIGKILL
        pid, operation = proc.pid, who
    (stale,) = locks.holders(backend)  # left behind, its holder dead
    assert (stale.pid, stale.operation, stale.exclusive) == (pid, operation, operation == "gc")
    assert stale.stale()
    evolve_app(data, 1)
    code, out, err = finish(start(repo_dir, data, "commit", CASNAP_LOCK_WAIT="0"))
    assert code == 0, err  # no waiting: the dead holder's lock is stale and removed
    assert locks.holders(backend) == []
    assert Repository.open(repo_dir).resolve("latest").hex() == out.strip()
    with locks.locked(backend, "gc", exclusive=True, wait=0):  # exclusive: conflicts with any
        assert [h.pid for h in locks.holders(backend)] == [os.getpid()]


def test_commits_during_gc_and_prune_lose_nothing(tmp_path: Path) -> None:
    """gc and prune (exclusive) race commits and a checkout (shared), three rounds: whoever waits,
    every snapshot the policy keeps restores and the repository verifies."""
    repo_dir = tmp_path / "repo"
    repo = Repository.init(repo_dir, small_config(16 * 1024))
    data = small_app(tmp_path / "data", rows=300, vectors=1200)
    other = small_app(tmp_path / "other", seed=7, rows=300, vectors=1200)
    ledger = Ledger()
    first = ledger.commit(repo, other, message="kept by its own group")
    for round_ in range(3):
        evolve_app(data, round_)
        tree = snapshot_tree(data)
        procs = [
            start(repo_dir, data, "commit", "-m", f"round {round_}"),
            start(repo_dir, data, "gc", "--max-unused", "0"),
            start(repo_dir, data, "prune", "--keep-last", "2"),
            start(repo_dir, data, "checkout", first, "--to", str(tmp_path / f"o{round_}")),
        ]
        results = [finish(p) for p in procs]
        assert [r[0] for r in results] == [0, 0, 0, 0], [r[2] for r in results]
        ledger.record(results[0][1].strip(), tree)
        assert snapshot_tree(tmp_path / f"o{round_}") == ledger.trees[first]
    fresh = Repository.open(repo_dir)
    listed = {sid.hex() for sid, _ in fresh.snapshots()}
    newest = list(ledger.trees)[-2:]  # the data dir's group keeps its last two
    assert set(newest) <= listed and first in listed
    assert ledger.check(fresh, tmp_path / "check", [first, *newest]) == 3
    verify_repository(fresh)
    assert not temp_files(repo_dir) and not list((repo_dir / "locks").iterdir())


def test_a_snapshot_forgotten_between_the_listing_and_its_read_is_not_there(
    tmp_path: Path,
) -> None:
    """Reading the snapshots is a listing, then one read per manifest: a prune or forget that
    ends in between (a checkout or show resolves its ref before it takes its lock) removes a
    manifest already listed. That snapshot is gone, not damaged: the others are listed and
    resolve, and no error asks to remove a manifest."""
    data = small_app(tmp_path / "data")
    repo_dir = tmp_path / "repo"
    repo = Repository.init(repo_dir, small_config())
    ids = []
    for step in range(3):
        evolve_app(data, step)
        ids.append(commit(repo, data, message=f"s{step}").id)
    gc_view = tmp_path / "gc-view"
    shutil.copytree(repo_dir, gc_view)

    def forgetting(root: Path) -> F.FaultyBackend:
        """root's backend, whose first listing of snapshots/ is followed by the deletion of
        the second snapshot's manifest (a prune that ends right then)."""

        def forgotten(_key: str) -> None:
            (root / "snapshots" / ids[1]).unlink()

        racing_list = F.call_after("list", 1, forgotten, prefix="snapshots/")
        return F.FaultyBackend(LocalBackend(root), [racing_list])

    racing = Repository.open_backend(forgetting(repo_dir), tmp_path / "tmp")
    listed = [sid.hex() for sid, _snap in racing.snapshots()]
    assert listed == [ids[0], ids[2]]
    assert racing.resolve("latest").hex() == ids[2]
    # gc, prune and forget read every file list under the exclusive lock, which no deleting
    # command shares: a manifest that vanishes then is a damaged repository, and they stop
    strict = Repository.open_backend(forgetting(gc_view), tmp_path / "tmp")
    with pytest.raises(ObjectMissing, match="gc, prune and forget stop here"):
        strict.snapshots(files=True)


def test_a_second_checkout_into_a_target_waits_for_the_first(tmp_path: Path) -> None:
    """Two checkouts into one target at once each planned against what the target held before
    the other's swap: both reported success and left a mix of the two snapshots. The second now
    waits for the first (CASNAP_LOCK_WAIT) and, given up, exits 6 without touching the target;
    run again, it restores its snapshot whole."""
    repo_dir, target = tmp_path / "repo", tmp_path / "target"
    a, b = small_app(tmp_path / "a", seed=1), small_app(tmp_path / "b", seed=2)
    for i in range(20):
        (a / f"only-a-{i}.txt").write_text("a" * i)
        (b / f"only-b-{i}.txt").write_text("b" * i)
    repo = Repository.init(repo_dir)
    sid_a, sid_b = commit(repo, a).id, commit(repo, b).id
    repo.close()
    env = casnap_env()
    base = ["--repo", str(repo_dir), "-q", "checkout", "--to", str(target), "--no-smoke"]
    done = subprocess.run(casnap_command([*base, sid_a]), env=env, cwd=ROOT, check=False)
    assert done.returncode == 0
    tree_a = snapshot_tree(target)
    started, go = tmp_path / "started", tmp_path / "go"
    pause = f"touch {started}; while [ ! -e {go} ]; do sleep 0.01; done"
    first = subprocess.Popen(  # stopped in its smoke command, before its swap
        casnap_command([*base, sid_b, "--smoke-cmd", pause]), env=env, cwd=ROOT
    )
    try:
        wait_for(started.exists)
        second = subprocess.run(
            casnap_command([*base, sid_a]),
            env=casnap_env(CASNAP_LOCK_WAIT="0"),
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert second.returncode == 6, second.stderr
        assert "checkout" in second.stderr and str(target) in second.stderr
        assert snapshot_tree(target) == tree_a  # not touched
    finally:
        go.touch()
        assert first.wait(timeout=120) == 0
    assert {p for p in snapshot_tree(target) if "only-a" in p} == set()
    again = subprocess.run(casnap_command([*base, sid_a]), env=env, cwd=ROOT, check=False)
    assert again.returncode == 0
    assert snapshot_tree(target) == tree_a


def test_a_checkout_waiting_for_its_target_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds the target folder's flock (a checkout from another repository, or
    an app that locks its data dir): the checkout says once that it waits, as it does for a
    repository lock (the command line shows it on a terminal), then gives up (LockError, exit 6),
    the target untouched."""
    from casnap.errors import LockError
    from casnap.restorer import checkout

    app, target = small_app(tmp_path / "a", seed=1), tmp_path / "target"
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, app).id
    target.mkdir()
    heard: list[str] = []
    repo.notify = heard.append
    monkeypatch.setenv("CASNAP_LOCK_WAIT", "0.3")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_FLOCK, str(target)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(LockError, match="another checkout into"):
            checkout(repo, sid, target, smoke=False)
    finally:
        holder.communicate(timeout=60)
    assert heard == [
        f"waiting up to 0 s for {target}: another checkout into it or a commit of it runs"
    ]
    assert list(target.iterdir()) == []


def test_a_commit_waits_for_a_checkout_into_its_data_dir_from_another_repository(
    tmp_path: Path,
) -> None:
    """A checkout from one repository swapping files into the data dir while a commit of it into
    another repository read it: the commit stored the database of one snapshot beside the
    indexes of the other, a state the data dir never held, and said nothing (each repository's
    lock sees only its own holders). The checkout's flock on its target now stops the commit
    too: it waits for the checkout (CASNAP_LOCK_WAIT, then exit 6, nothing stored) and, run
    again, stores the snapshot whole."""
    data, other = small_app(tmp_path / "data", seed=1), small_app(tmp_path / "b", seed=2)
    repo_b = Repository.init(tmp_path / "repo-b")
    sid_b = commit(repo_b, other).id
    repo_b.close()
    tree_b = snapshot_tree(other)
    started, go = tmp_path / "started", tmp_path / "go"
    pause = f"touch {started}; while [ ! -e {go} ]; do sleep 0.01; done"
    checkout = subprocess.Popen(  # holds its target's flock, stopped before its swap
        casnap_command(
            ["--repo", str(tmp_path / "repo-b"), "-q", "checkout", "--to", str(data), "--force"]
            + [sid_b, "--smoke-cmd", pause]
        ),
        env=casnap_env(),
        cwd=ROOT,
    )
    base = ["--repo", str(tmp_path / "repo-a"), "--data", str(data), "-q", "commit"]
    try:
        wait_for(started.exists)
        waited = subprocess.run(
            casnap_command(base),
            env=casnap_env(CASNAP_LOCK_WAIT="0"),
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert waited.returncode == 6, waited.stderr
        assert "checkout" in waited.stderr and str(data) in waited.stderr
    finally:
        go.touch()
        assert checkout.wait(timeout=120) == 0
    repo_a = Repository.open(tmp_path / "repo-a") if (tmp_path / "repo-a").exists() else None
    assert repo_a is None or repo_a.snapshots() == []
    done = subprocess.run(casnap_command(base), env=casnap_env(), cwd=ROOT, check=False)
    assert done.returncode == 0
    restored = tmp_path / "restored"
    repo_a = Repository.open(tmp_path / "repo-a")
    from casnap.restorer import checkout as check_out

    check_out(repo_a, repo_a.snapshots()[0][0].hex(), restored, smoke=False)
    assert snapshot_tree(restored) == tree_b


def test_a_checkout_waits_for_a_commit_of_its_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a commit reads its data dir it holds a shared flock on it: a checkout into that
    folder (from any repository) cannot take its own, so it waits instead of swapping files
    the commit is reading."""
    data = small_app(tmp_path / "data", seed=1)
    repo = Repository.init(tmp_path / "repo")
    tried: list[bool] = []
    commit(repo, data, progress=lambda done, total: tried.append(_flocked(data)))
    assert tried and all(tried)
    assert not _flocked(data)  # released once the commit is done


def test_a_checkout_into_a_folder_holding_the_data_dir_waits_for_its_commit(
    tmp_path: Path,
) -> None:
    """A data dir inside another's (one repository backs up app/, another app/vectors/): a
    checkout into app/ replaces what a commit of app/vectors/ reads. The commit's shared flock
    is on each folder above its data dir too, so that checkout's (on app/) waits."""
    outer = tmp_path / "app"
    data = small_app(outer / "vectors", seed=1)
    repo = Repository.init(tmp_path / "repo")
    tried: list[bool] = []
    commit(repo, data, progress=lambda done, total: tried.append(_flocked(outer)))
    assert tried and all(tried)


def _flocked(folder: Path) -> bool:
    """True when another open of folder holds a flock on it now (an exclusive one is refused)."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


HOLD_FLOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


# Started by the test, it loads the command line, says it is ready and waits for the word: the
# commits it starts then open the missing repository within a few milliseconds of each other.
TOGETHER = r"""
import os, sys, time
from casnap.cli.main import main
import casnap.committer, casnap.repository
ready, go, *args = sys.argv[1:]
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.0005)
sys.argv = ["casnap", *args]
main()
"""


def test_first_commits_racing_into_a_missing_repository_all_land(tmp_path: Path) -> None:
    """Four commits started together into a repository nobody made yet, several rounds: one
    of them creates it, the others open that one (none sees a half-made folder as "not a casnap
    repository"), and every snapshot lands in the one repository, which verifies."""
    rng = random.Random(11)
    dirs = []
    for k in range(4):
        d = tmp_path / f"d{k}"
        (d / "sub").mkdir(parents=True)
        (d / f"f{k}.txt").write_bytes(rng.randbytes(2000))
        (d / "sub" / "g.bin").write_bytes(rng.randbytes(5000))
        dirs.append(d)
    for round_ in range(6):
        repo_dir = tmp_path / f"repo{round_}"
        go = tmp_path / f"go{round_}"
        procs = []
        for k, d in enumerate(dirs):
            ready = tmp_path / f"ready{round_}-{k}"
            args = ["-q", "--repo", str(repo_dir), "--data", str(d), "commit"]
            cmd = [sys.executable, "-c", TOGETHER, str(ready), str(go), *args]
            procs.append(
                subprocess.Popen(
                    cmd,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=casnap_env(),
                    cwd=ROOT,
                )
            )
            wait_for(ready.exists)
        go.touch()
        results = [finish(p) for p in procs]
        assert [r[0] for r in results] == [0, 0, 0, 0], [r[2] for r in results]
        repo = Repository.open(repo_dir)
        assert {sid.hex() for sid, _ in repo.snapshots()} == {r[1].strip() for r in results}
        verify_repository(repo)
        assert not temp_files(repo_dir) and not list((repo_dir / "locks").iterdir())


def test_a_first_commit_waits_for_a_repository_another_process_is_creating(
    tmp_path: Path,
) -> None:
    """A repository folder that holds nothing but the temp file of a running init (its config
    not linked yet) is being made: a first commit waits for its config and commits into that
    repository, not a new one beside it, nor failing as "not a casnap repository"."""
    data = small_app(tmp_path / "data")
    repo_dir = tmp_path / "repo"
    repo_dir.mkdir(mode=0o700)
    initer = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        from casnap.fsutil import HOST_TAG

        temp = repo_dir / f"{TEMP_PREFIX}{initer.pid}-{HOST_TAG}-{'0' * 32}"
        cfg = small_config()
        temp.write_bytes(encode_config(cfg))
        proc = start(repo_dir, data, "commit")
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=3)  # without waiting for the config, it would have failed by now
        os.link(temp, repo_dir / "config")  # the init's config lands, as LocalBackend.put links it
        temp.unlink()
    finally:
        assert initer.stdin is not None
        initer.stdin.close()
        initer.wait()
    code, out, err = finish(proc)
    assert code == 0, err
    repo = Repository.open(repo_dir)
    assert repo.id == cfg["id"]
    assert [sid.hex() for sid, _ in repo.snapshots()] == [out.strip()]
    verify_repository(repo)


def test_a_first_commit_takes_over_what_a_killed_init_left(tmp_path: Path) -> None:
    """The temp file of an init killed before its config landed (its process gone, on this
    host), alone in the folder: no init is under way, so a first commit (and an init) makes the
    repository there at once, the temp file removed, instead of waiting and then refusing the
    folder as "not a casnap repository" for ever (the temp file is hidden from `ls`)."""
    from casnap.fsutil import HOST_TAG

    data = small_app(tmp_path / "data")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for name, cmd in (("repo", "commit"), ("inited", "init")):
        repo_dir = tmp_path / name
        repo_dir.mkdir(mode=0o700)
        temp = repo_dir / f"{TEMP_PREFIX}{dead.pid}-{HOST_TAG}-{'0' * 32}"
        temp.write_bytes(encode_config(small_config()))
        code, out, err = finish(start(repo_dir, data, cmd))
        assert code == 0, err
        assert not temp.exists()
        repo = Repository.open(repo_dir)
        assert len(repo.snapshots()) == (1 if cmd == "commit" else 0)
