"""SIGKILL the real CLI (`python -m casnap`) at many points of a commit and of a checkout.

Kill points come two ways: deterministic ones from faults injected by running the CLI through
`python -m tests.faulty_cli` (the process SIGKILLs itself right after its nth backend put, nth
backend get, or nth file swapped into place), and spread ones (SIGKILL from outside at fractions
of the measured run time, counted from the moment the process holds its repository lock). After
every kill: the repository verifies, every earlier snapshot restores byte for byte, the next
commit succeeds, no file of an interrupted checkout is torn (each is its old or its new version),
rerunning the checkout completes it, the data the checkout replaced is still held by a snapshot,
and no temp file outlives the next run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from casnap import retention
from casnap.backends import LocalBackend
from casnap.checker import verify
from casnap.collector import collect
from casnap.committer import commit
from casnap.constants import DEFAULT_MAX_UNUSED, SAFETY_TAG, TEMP_PREFIX
from casnap.fsutil import HOST_TAG, STAGE_PREFIX
from casnap.repository import Repository
from casnap.restorer import checkout
from casnap.staging import smoke_verify
from tests import faults as F
from tests.conftest import evolve_app
from tests.helpers_reliability import (
    ROOT,
    Ledger,
    casnap_command,
    casnap_env,
    dead_pid,
    file_hashes,
    run_casnap,
    small_app,
    small_config,
    temp_files,
    verify_repository,
)
from tests.util import snapshot_tree

PACK = 8 * 1024  # ~20 pack writes per commit of the data below
GC_CLEANS = {"packs", "index", "snapshots"}  # folders whose leftover temp files gc removes
SPREAD = (0.0, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.05)  # fractions of the measured run time
# Deterministic kill points: the nth call, n at these fractions of the calls the operation makes.
SPAN = tuple(i / 12 for i in range(1, 13))


def nth(frac: float, total: int) -> int:
    """The call a fraction of the way through `total` calls (1-based)."""
    return max(1, min(total, round(frac * total)))


@dataclass
class Base:
    """A repository with snapshots s0, s1 and a data dir changed since (step 2, not committed)."""

    root: Path
    ledger: Ledger
    first: str  # s0
    old: dict[str, str]  # file hashes of the data dir before the operation
    old_tree: dict[str, bytes]
    new: dict[str, str]  # file hashes of s0 (what a checkout writes)
    commit_puts: int
    checkout_puts: int
    checkout_gets: int
    checkout_swaps: int
    commit_seconds: float
    checkout_seconds: float

    def copy(self, dest: Path) -> tuple[Path, Path]:
        shutil.copytree(self.root / "repo", dest / "repo")
        shutil.copytree(self.root / "data", dest / "data")
        return dest / "repo", dest / "data"


def _counts(repo_dir: Path, data: Path, scratch: Path, op: str, ref: str = "") -> list[int]:
    """Backend puts, gets and deletes an operation makes (on a throwaway copy)."""
    shutil.copytree(repo_dir, scratch / "repo")
    shutil.copytree(data, scratch / "data")
    counting = [F.fail(op, 10**9) for op in ("put", "get", "delete")]
    backend = F.FaultyBackend(LocalBackend(scratch / "repo"), counting)
    repo = Repository.open_backend(backend, scratch / "repo" / "tmp")
    if op == "commit":
        commit(repo, scratch / "data")
    elif op == "gc":
        collect(repo, max_unused=0.0)
    elif op == "prune":
        retention.prune(repo, retention.Policy(last=1), gc=DEFAULT_MAX_UNUSED)  # one lock
    else:
        checkout(repo, ref, scratch / "data", smoke=False, data_dir=scratch / "data")
    return backend.plan.counts


def _timed(args: list[str], repo_dir: Path) -> float:
    """Seconds the CLI holds its repository lock: the span in which a kill hits real work."""
    proc = subprocess.Popen([sys.executable, "-m", "casnap", *args], env=casnap_env(), cwd=ROOT)
    locks = repo_dir / "locks"
    while proc.poll() is None and not any(locks.iterdir()):
        time.sleep(0.0002)
    t0 = time.perf_counter()
    while proc.poll() is None and any(locks.iterdir()):
        time.sleep(0.0002)
    held = time.perf_counter() - t0
    assert proc.wait(timeout=60) == 0
    return held


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    root = tmp_path_factory.mktemp("kill-base")
    data = small_app(root / "data", rows=600, vectors=2000)
    repo = Repository.init(root / "repo", small_config(PACK))
    ledger = Ledger()
    first = ledger.commit(repo, data, message="s0")
    evolve_app(data, 1)
    ledger.commit(repo, data, message="s1")
    evolve_app(data, 2)
    (data / "notes.txt").write_text("written after the last snapshot")
    new = {f.path: f.hash for f in repo.load_snapshot(repo.resolve(first)).files}
    puts, _, _ = _counts(root / "repo", data, root / "count-commit", "commit", first)
    checkout_puts, gets, _ = _counts(
        root / "repo", data, root / "count-checkout", "checkout", first
    )
    old = file_hashes(data)
    swaps = sum(1 for p, h in new.items() if old.get(p) != h)
    timing = root / "timing"
    r, d = Base(root, ledger, first, old, {}, new, 0, 0, 0, 0, 0, 0).copy(timing)
    commit_s = _timed(["--repo", str(r), "--data", str(d), "commit"], r)
    checkout_s = _timed(["--repo", str(r), "--data", str(d), "checkout", first], r)
    return Base(
        root,
        ledger,
        first,
        old,
        snapshot_tree(data),
        new,
        puts,
        checkout_puts,
        gets,
        swaps,
        commit_s,
        checkout_s,
    )


def run_killed(args: list[str], repo_dir: Path, faults: str = "", delay: float | None = None):
    """Run the CLI; SIGKILLed by the fault hook, or from outside `delay` s after it locks."""
    proc = subprocess.Popen(
        casnap_command(args, faults),
        env=casnap_env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if delay is not None:
        locks = repo_dir / "locks"
        while proc.poll() is None and not (locks.is_dir() and any(locks.iterdir())):
            time.sleep(0.0005)
        time.sleep(delay)
        proc.kill()
    _out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err
    return proc.returncode


def after_kill(base: Base, repo_dir: Path, data: Path, scratch: Path) -> Repository:
    """The repository verifies and every snapshot of the ledger restores byte for byte."""
    repo = Repository.open(repo_dir)
    verify_repository(repo)
    base.ledger.check(repo, scratch)
    return repo


# -- commit ----------------------------------------------------------------------------------------


def check_commit_kill(base: Base, repo_dir: Path, data: Path, scratch: Path) -> None:
    tree = snapshot_tree(data)
    repo = after_kill(base, repo_dir, data, scratch)
    extra = [sid.hex() for sid, _ in repo.snapshots() if sid.hex() not in base.ledger.trees]
    assert len(extra) <= 1
    ledger = Ledger(dict(base.ledger.trees))
    for sid in extra:  # the killed commit got as far as its manifest: it must be whole
        ledger.record(sid, tree)
    ledger.check(repo, scratch, extra)
    leftover = temp_files(repo_dir / "tmp", data)
    # the next commit runs, verifies, and cleans what the killed one left in tmp/
    sid = ledger.commit(Repository.open(repo_dir), data, message="after kill")
    ledger.check(Repository.open(repo_dir), scratch, [sid])
    assert not temp_files(repo_dir / "tmp", data), f"left behind: {leftover}"
    assert not list((repo_dir / "locks").iterdir())
    # a put killed half-way leaves its temp file beside the object: gc removes those
    assert {p.relative_to(repo_dir).parts[0] for p in temp_files(repo_dir)} <= GC_CLEANS
    collect(Repository.open(repo_dir))
    assert not temp_files(repo_dir)
    ledger.check(Repository.open(repo_dir), scratch)


@pytest.mark.parametrize("frac", SPAN, ids=lambda f: f"put-at-{f:.2f}")
def test_commit_killed_after_put(base: Base, frac: float, tmp_path: Path) -> None:
    n = nth(frac, base.commit_puts)  # 1 is the lock, then packs, the index file, the manifest
    repo_dir, data = base.copy(tmp_path)
    rc = run_killed(
        ["--repo", str(repo_dir), "--data", str(data), "commit"], repo_dir, f"put:kill:{n}"
    )
    assert rc == -9
    check_commit_kill(base, repo_dir, data, tmp_path / "scratch")


@pytest.mark.parametrize("frac", SPREAD, ids=lambda f: f"at-{f:.2f}")
def test_commit_killed_at_a_spread_moment(base: Base, frac: float, tmp_path: Path) -> None:
    repo_dir, data = base.copy(tmp_path)
    rc = run_killed(
        ["--repo", str(repo_dir), "--data", str(data), "commit"],
        repo_dir,
        delay=frac * base.commit_seconds,
    )
    assert rc in (0, -9)
    check_commit_kill(base, repo_dir, data, tmp_path / "scratch")


# -- checkout --------------------------------------------------------------------------------------


def check_checkout_kill(base: Base, repo_dir: Path, data: Path, scratch: Path) -> None:
    now = file_hashes(data)
    for path in set(base.old) | set(base.new):
        allowed = {base.old.get(path), base.new.get(path)}  # None: absent
        assert now.get(path) in allowed, f"{path} is torn: neither its old nor its new version"
    repo = after_kill(base, repo_dir, data, scratch)
    # rerun the checkout: it completes, and removes what the killed one staged
    checkout(Repository.open(repo_dir), base.first, data, smoke=False, data_dir=data)
    assert file_hashes(data) == base.new
    assert not temp_files(data), "staged files of the killed checkout are left in the target"
    # nothing lost: the data the checkout replaced is held by a pre-checkout snapshot
    repo = Repository.open(repo_dir)
    saved = [sid for sid, s in repo.snapshots() if SAFETY_TAG in s.tags]
    assert saved, "the replaced data was not saved"
    trees = []
    for sid in saved:
        out = scratch / f"saved-{sid.short}"
        checkout(repo, sid.hex(), out, safety_snapshot=False, smoke=False)
        trees.append(snapshot_tree(out))
    assert base.old_tree in trees, "the data the checkout replaced is lost"
    verify_repository(Repository.open(repo_dir))
    # the killed checkout staged beside the target: the rerun removed that staging dir
    assert not [p for p in temp_files(data.parent) if p.name.startswith(STAGE_PREFIX)]
    collect(Repository.open(repo_dir))
    assert not temp_files(repo_dir), "gc left temp files behind"


def checkout_args(repo_dir: Path, data: Path, base: Base) -> list[str]:
    return ["--repo", str(repo_dir), "--data", str(data), "checkout", base.first]


@pytest.mark.parametrize("n", range(1, 6), ids=lambda n: f"after-swap-{n}")
def test_checkout_killed_between_file_swaps(base: Base, n: int, tmp_path: Path) -> None:
    assert base.checkout_swaps == 5  # app.db, two indexes and their sidecars change
    repo_dir, data = base.copy(tmp_path)
    # renames into the target only: the pre-checkout commit renames cache files of its own
    rc = run_killed(checkout_args(repo_dir, data, base), repo_dir, f"replace:kill:{n}:{data}/")
    assert rc == -9
    swapped = [p for p, h in file_hashes(data).items() if base.new.get(p) == h != base.old.get(p)]
    assert len(swapped) == n  # half restored on purpose: n files new, the rest old
    check_checkout_kill(base, repo_dir, data, tmp_path / "scratch")


@pytest.mark.parametrize("frac", SPAN, ids=lambda f: f"get-at-{f:.2f}")
def test_checkout_killed_after_get(base: Base, frac: float, tmp_path: Path) -> None:
    n = nth(frac, base.checkout_gets)
    repo_dir, data = base.copy(tmp_path)
    rc = run_killed(checkout_args(repo_dir, data, base), repo_dir, f"get:kill:{n}")
    assert rc == -9
    check_checkout_kill(base, repo_dir, data, tmp_path / "scratch")


@pytest.mark.parametrize("frac", SPAN[::2], ids=lambda f: f"put-at-{f:.2f}")
def test_checkout_killed_while_saving_the_replaced_data(
    base: Base, frac: float, tmp_path: Path
) -> None:
    n = nth(frac, base.checkout_puts)  # the lock, then the pre-checkout snapshot's objects
    repo_dir, data = base.copy(tmp_path)
    rc = run_killed(checkout_args(repo_dir, data, base), repo_dir, f"put:kill:{n}")
    assert rc == -9
    assert file_hashes(data) == base.old  # nothing is swapped before the safety snapshot
    check_checkout_kill(base, repo_dir, data, tmp_path / "scratch")


@pytest.mark.parametrize("frac", SPREAD, ids=lambda f: f"at-{f:.2f}")
def test_checkout_killed_at_a_spread_moment(base: Base, frac: float, tmp_path: Path) -> None:
    repo_dir, data = base.copy(tmp_path)
    rc = run_killed(
        checkout_args(repo_dir, data, base), repo_dir, delay=frac * base.checkout_seconds
    )
    assert rc in (0, -9)
    check_checkout_kill(base, repo_dir, data, tmp_path / "scratch")


# -- gc and prune ----------------------------------------------------------------------------------

GC = ["gc", "--max-unused", "0"]  # rewrite every pack that holds anything unreferenced
PRUNE = ["prune", "--keep-last", "1"]  # forget all but the newest snapshot, then gc


@dataclass
class GcBase:
    """A repository with s1 and s2, s0 forgotten (gc has data to reclaim and packs to rewrite),
    and the leftovers of killed writers: a half-written pack and a database image."""

    root: Path
    ledger: Ledger
    counts: dict[str, list[int]]  # operation -> [puts, gets, deletes]
    seconds: dict[str, float]

    def copy(self, dest: Path) -> tuple[Path, Path]:
        shutil.copytree(self.root / "repo", dest / "repo")
        shutil.copytree(self.root / "data", dest / "data")
        return dest / "repo", dest / "data"


@pytest.fixture(scope="module")
def gc_base(tmp_path_factory: pytest.TempPathFactory) -> GcBase:
    root = tmp_path_factory.mktemp("gc-base")
    data = small_app(root / "data", rows=600, vectors=2000)
    repo = Repository.init(root / "repo", small_config(PACK))
    ledger = Ledger()
    s0 = ledger.commit(repo, data, message="s0")
    for step in (1, 2):
        evolve_app(data, step)
        ledger.commit(repo, data, message=f"s{step}")
    retention.forget(repo, [s0])
    del ledger.trees[s0]
    pid = dead_pid()
    for folder, name in (("packs/00", ""), ("tmp", ".db")):
        (root / "repo" / folder).mkdir(parents=True, exist_ok=True)
        leftover = f"{TEMP_PREFIX}{pid}-{HOST_TAG}-{'0' * 32}{name}"
        (root / "repo" / folder / leftover).write_bytes(b"half-written" * 1000)
    counts = {op: _counts(root / "repo", data, root / f"count-{op}", op) for op in ("gc", "prune")}
    seconds = {}
    for name, args in (("gc", GC), ("prune", PRUNE)):
        r, d = GcBase(root, ledger, {}, {}).copy(root / f"timing-{name}")
        seconds[name] = _timed(["--repo", str(r), "--data", str(d), *args], r)
    return GcBase(root, ledger, counts, seconds)


def check_gc_kill(gc_base: GcBase, repo_dir: Path, data: Path, scratch: Path, op: str) -> None:
    repo = Repository.open(repo_dir)
    verify_repository(repo)
    ledger = Ledger(dict(gc_base.ledger.trees))
    if op == "prune":  # prune was told to forget all but the newest: those may be gone
        listed = {sid.hex() for sid, _ in repo.snapshots()}
        newest = list(ledger.trees)[-1]
        assert newest in listed, "prune lost the snapshot it keeps"
        ledger.trees = {s: t for s, t in ledger.trees.items() if s in listed}
    ledger.check(repo, scratch)
    # the next commit succeeds; rerunning the operation finishes it and leaves nothing behind
    sid = ledger.commit(Repository.open(repo_dir), data, message="after kill")
    args = GC if op == "gc" else PRUNE
    proc = run_casnap(["--repo", str(repo_dir), "--data", str(data), *args])
    assert proc.returncode == 0, proc.stderr
    if op == "prune":  # one per group: the copy's data dir is a new group (another source)
        newest = list(gc_base.ledger.trees)[-1]
        ledger.trees = {s: ledger.trees[s] for s in (newest, sid)}
    repo = Repository.open(repo_dir)
    verify_repository(repo)
    ledger.check(repo, scratch)
    assert {s.hex() for s, _ in repo.snapshots()} == set(ledger.trees)
    assert not temp_files(repo_dir), "gc left temp files behind"
    assert not list((repo_dir / "locks").iterdir())


@pytest.mark.parametrize("frac", SPAN[1::2], ids=lambda f: f"put-at-{f:.2f}")
def test_gc_killed_after_put(gc_base: GcBase, frac: float, tmp_path: Path) -> None:
    n = nth(frac, gc_base.counts["gc"][0])  # the lock, the repacked packs, the new index
    repo_dir, data = gc_base.copy(tmp_path)
    rc = run_killed(["--repo", str(repo_dir), "--data", str(data), *GC], repo_dir, f"put:kill:{n}")
    assert rc == -9
    check_gc_kill(gc_base, repo_dir, data, tmp_path / "scratch", "gc")


@pytest.mark.parametrize("frac", SPAN[1::2], ids=lambda f: f"delete-at-{f:.2f}")
def test_gc_killed_after_delete(gc_base: GcBase, frac: float, tmp_path: Path) -> None:
    n = nth(frac, gc_base.counts["gc"][2])  # old index files, then old packs, then the lock
    repo_dir, data = gc_base.copy(tmp_path)
    args = ["--repo", str(repo_dir), "--data", str(data), *GC]
    rc = run_killed(args, repo_dir, f"delete:kill:{n}")
    assert rc == -9
    check_gc_kill(gc_base, repo_dir, data, tmp_path / "scratch", "gc")


@pytest.mark.parametrize("frac", SPREAD, ids=lambda f: f"at-{f:.2f}")
def test_gc_killed_at_a_spread_moment(gc_base: GcBase, frac: float, tmp_path: Path) -> None:
    repo_dir, data = gc_base.copy(tmp_path)
    args = ["--repo", str(repo_dir), "--data", str(data), *GC]
    rc = run_killed(args, repo_dir, delay=frac * gc_base.seconds["gc"])
    assert rc in (0, -9)
    check_gc_kill(gc_base, repo_dir, data, tmp_path / "scratch", "gc")


@pytest.mark.parametrize("frac", SPAN[2::3], ids=lambda f: f"delete-at-{f:.2f}")
def test_prune_killed_after_delete(gc_base: GcBase, frac: float, tmp_path: Path) -> None:
    n = nth(frac, gc_base.counts["prune"][2])  # the forgotten manifest, then gc's deletes
    repo_dir, data = gc_base.copy(tmp_path)
    args = ["--repo", str(repo_dir), "--data", str(data), *PRUNE]
    rc = run_killed(args, repo_dir, f"delete:kill:{n}")
    assert rc == -9
    check_gc_kill(gc_base, repo_dir, data, tmp_path / "scratch", "prune")


def _smoke_verify_gets(repo_dir: Path, ref: str, scratch: Path) -> tuple[int, int]:
    """Backend gets of `verify --smoke ref`: (structure check, then the staged restore)."""
    shutil.copytree(repo_dir, scratch)
    backend = F.FaultyBackend(LocalBackend(scratch), [F.fail("get", 10**9)])
    repo = Repository.open_backend(backend, scratch / "tmp")
    verify(repo, [ref])
    checked = backend.plan.counts[0]
    smoke_verify(repo, ref)
    return checked, backend.plan.counts[0] - checked


@pytest.mark.parametrize("frac", SPAN[2::3], ids=lambda f: f"get-at-{f:.2f}")
def test_smoke_verify_killed_after_get(base: Base, frac: float, tmp_path: Path) -> None:
    """verify --smoke restores a snapshot into a staging dir inside the repository; killed while
    restoring, it leaves that dir behind, and the next run removes it."""
    repo_dir, data = base.copy(tmp_path)
    checked, restoring = _smoke_verify_gets(repo_dir, base.first, tmp_path / "count")
    n = checked + nth(frac, restoring)
    args = ["--repo", str(repo_dir), "--data", str(data), "verify", "--smoke", base.first]
    assert run_killed(args, repo_dir, f"get:kill:{n}") == -9
    assert temp_files(repo_dir / "tmp"), "nothing staged when killed"
    before = file_hashes(data)
    after_kill(base, repo_dir, data, tmp_path / "scratch")
    proc = run_casnap(args)
    assert proc.returncode == 0, proc.stderr
    assert not temp_files(repo_dir), "the killed verify's staging dir is left behind"
    assert file_hashes(data) == before  # the data dir is never touched


def test_a_commit_after_a_checkout_killed_mid_swap_says_the_data_dir_is_mixed(
    base: Base, tmp_path: Path
) -> None:
    repo_dir, data = base.copy(tmp_path)
    rc = run_killed(checkout_args(repo_dir, data, base), repo_dir, f"replace:kill:2:{data}/")
    assert rc == -9  # two files of the snapshot in place, the rest as they were
    args = ["--repo", str(repo_dir), "--data", str(data)]
    done = run_casnap([*args, "-q", "commit", "--json"])  # said even with -q (a nightly job)
    assert done.returncode == 0, done.stderr  # what is there is saved all the same
    warned = [line for line in done.stderr.splitlines() if "interrupted" in line]
    assert len(warned) == 1, done.stderr
    assert json.loads(done.stdout)["interrupted"] == [warned[0].split("warning: ", 1)[1]]
    assert base.first[:8] in warned[0] and str(data) in warned[0]
    assert "two snapshots" in warned[0] and f"casnap checkout {base.first[:8]}" in warned[0]
    again = run_casnap([*args, "commit"])  # said until a checkout finishes the job
    assert again.returncode == 0 and "interrupted" in again.stderr
    finish = run_casnap([*args, "checkout", base.first])
    assert finish.returncode == 0, finish.stderr
    assert file_hashes(data) == base.new
    after = run_casnap([*args, "commit"])
    assert after.returncode == 0 and "interrupted" not in after.stderr, after.stderr


def test_the_mixed_data_dir_is_said_until_a_full_checkout_into_it(
    base: Base, tmp_path: Path
) -> None:
    """A checkout into another folder beside the data dir, or of some paths only, removes the
    staging dirs killed runs left there; the killed swap's mark stays with its data dir, which
    still holds files of two snapshots (before, the warning went with the staging dir)."""
    repo_dir, data = base.copy(tmp_path)
    rc = run_killed(checkout_args(repo_dir, data, base), repo_dir, f"replace:kill:2:{data}/")
    assert rc == -9
    args = ["--repo", str(repo_dir), "--data", str(data)]
    beside = run_casnap([*args, "checkout", base.first, "--to", str(tmp_path / "beside")])
    assert beside.returncode == 0, beside.stderr
    some = run_casnap([*args, "checkout", base.first, sorted(base.new)[0]])
    assert some.returncode == 0, some.stderr
    done = run_casnap([*args, "commit"])
    assert done.returncode == 0 and "interrupted" in done.stderr, done.stderr
    assert not [
        p
        for p in tmp_path.iterdir()
        if p.name.startswith(".casnap") and any(c.name != "\\swapping" for c in p.iterdir())
    ], "a killed run's staged files are left"
    finish = run_casnap([*args, "checkout", base.first])
    assert finish.returncode == 0, finish.stderr
    after = run_casnap([*args, "commit"])
    assert after.returncode == 0 and "interrupted" not in after.stderr, after.stderr


def test_a_checkout_killed_while_it_removes_what_the_snapshot_lacks_is_said_too(
    base: Base, tmp_path: Path
) -> None:
    """Every file of the snapshot is in place, but of two files it lacks one is still there: the
    data dir holds files of two snapshots until the removals are done, so the mark stays until
    then (it went with the staging dir before the first removal, and no commit said it)."""
    repo_dir, data = base.copy(tmp_path)
    (data / "more-notes.txt").write_text("another file the snapshot lacks")
    rc = run_killed(checkout_args(repo_dir, data, base), repo_dir, f"remove:kill:1:{data}/")
    assert rc == -9
    now = file_hashes(data)
    assert {p: now[p] for p in base.new} == base.new  # every file of the snapshot swapped in
    assert len(set(now) - set(base.new)) == 1  # one of the two it lacks removed, one left
    args = ["--repo", str(repo_dir), "--data", str(data)]
    done = run_casnap([*args, "commit"])
    assert done.returncode == 0, done.stderr
    assert "interrupted" in done.stderr and "two snapshots" in done.stderr, done.stderr
    finish = run_casnap([*args, "checkout", base.first])
    assert finish.returncode == 0, finish.stderr
    assert file_hashes(data) == base.new
    after = run_casnap([*args, "commit"])
    assert after.returncode == 0 and "interrupted" not in after.stderr, after.stderr


def test_a_checkout_killed_before_its_swap_leaves_no_such_warning(
    base: Base, tmp_path: Path
) -> None:
    repo_dir, data = base.copy(tmp_path)
    rc = run_killed(checkout_args(repo_dir, data, base), repo_dir, "get:kill:3")
    assert rc == -9
    assert file_hashes(data) == base.old
    done = run_casnap(["--repo", str(repo_dir), "--data", str(data), "commit"])
    assert done.returncode == 0 and "interrupted" not in done.stderr, done.stderr
