"""Injected backend faults: every operation succeeds or fails with a clear CasnapError, and the
healthy repository afterwards verifies, keeps every snapshot and takes the next commit.

One scenario table runs against LocalBackend and MemoryBackend alike (restic style: faults come
from wrapping the backend, `tests/faults.py`).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from casnap import collector, locks, retention
from casnap.backends import Backend, LocalBackend, MemoryBackend
from casnap.checker import VerifyReport, verify
from casnap.committer import commit
from casnap.errors import CasnapError, IntegrityError, StorageFull
from casnap.repair import repair_index
from casnap.repository import Repository
from casnap.restorer import checkout
from tests import faults as F
from tests.conftest import evolve_app
from tests.helpers_reliability import (
    Ledger,
    check_healthy,
    small_app,
    small_config,
    temp_files,
)
from tests.util import raw_tree, snapshot_tree

OK = "ok"
NA = None  # the operation never makes the call the fault waits for


@dataclass(frozen=True)
class Scenario:
    """A fault and what each operation must answer to it: OK, (error class, message regex), or
    for verify ("report", regex): a report that names the damage it read."""

    name: str
    fault: F.Fault
    outcome: dict[str, object]  # operation -> OK | (class, pattern) | ("report", pattern) | NA


def _err(cls: type[CasnapError], pattern: str) -> tuple[type[CasnapError], str]:
    return (cls, pattern)


def _report(pattern: str) -> tuple[str, str]:
    return ("report", pattern)


IO = _err(CasnapError, r"injected I/O error")
FULL = _err(StorageFull, r"no space left on device")
NOT_INTACT = _err(IntegrityError, r"packs/\w\w/[0-9a-f]{64} did not land intact")
CHUNK = _err(IntegrityError, r"chunk [0-9a-f]{64} in pack [0-9a-f]{64}")
# a byte flipped once on the way: the file's hash catches it, and reading again finds it whole
READ = _err(
    IntegrityError,
    r"chunk [0-9a-f]{64} in pack [0-9a-f]{64}|chunks verifies when read again \(a failing read",
)
INDEX = _err(IntegrityError, r"index/[0-9a-f]{64}: index file does not match its name")
MANIFEST = _err(
    IntegrityError, r"snapshots/[0-9a-f]{64}(: corrupt manifest| does not match its id)"
)
CONFIG = _err(IntegrityError, "config is damaged")
GC_STOP = _err(IntegrityError, "gc stopped before changing anything")

# Operations: commit of changed data; checkout of an older snapshot over the data dir holding
# unsaved changes (so it also saves a pre-checkout snapshot); checkout into a new folder; gc after
# forgetting a snapshot (every pack repacked or deleted); prune keeping the last snapshot; verify
# reading all data.
OPS = ("commit", "checkout", "checkout-new", "gc", "prune", "verify")


OUTCOMES: dict[str, object] = {
    "OK": OK,
    "-": NA,
    "IO": IO,
    "FULL": FULL,
    "SHORT": NOT_INTACT,
    "CHUNK": CHUNK,
    "READ": READ,
    "INDEX": INDEX,
    "MANIF": MANIFEST,
    "CONFIG": CONFIG,
    "GCSTOP": GC_STOP,
    "R:pack": _report(r"packs/\w\w/[0-9a-f]{64}"),
    "R:index": _report(r"index/[0-9a-f]{64}"),
    "R:manif": _report(r"snapshots/[0-9a-f]{64}"),
    "R:io-pack": _report(r"reading packs/.*injected I/O error"),
    "R:io-index": _report(r"reading index/.*injected I/O error"),
}


def S(name: str, fault: F.Fault, spec: str) -> Scenario:
    """A scenario row: one outcome name per operation, in the order of OPS (- : never met)."""
    names = spec.split()
    assert len(names) == len(OPS), name
    return Scenario(name, fault, {op: OUTCOMES[n] for op, n in zip(OPS, names, strict=True)})


# outcome per operation: commit, checkout, checkout-new, gc, prune, verify
SCENARIOS = [
    S("put-fails-lock", F.fail("put", 1, "locks/"), "IO IO IO IO IO IO"),
    S("put-fails-pack-1", F.fail("put", 1, "packs/"), "IO IO - IO - -"),
    S("put-fails-pack-3", F.fail("put", 3, "packs/"), "IO - - - - -"),
    S("put-fails-index", F.fail("put", 1, "index/"), "IO IO - IO - -"),
    S("put-fails-manifest", F.fail("put", 1, "snapshots/"), "IO IO - - - -"),
    S("enospc-at-once", F.no_space(1), "FULL FULL FULL FULL FULL FULL"),
    S("enospc-pack-2", F.no_space(2, "packs/"), "FULL - - - - -"),
    S("enospc-manifest", F.no_space(1, "snapshots/"), "FULL FULL - - - -"),
    # a write that lands short is caught by the read-back and written again
    S("truncate-pack-1", F.truncate_put(1, "packs/"), "OK OK - OK - -"),
    S("truncate-pack-3", F.truncate_put(3, "packs/"), "OK - - - - -"),
    S("truncate-index", F.truncate_put(1, "index/"), "OK OK - OK - -"),
    S("truncate-manifest", F.truncate_put(1, "snapshots/"), "OK OK - - - -"),
    S("truncate-every-pack", F.truncate_put(1, "packs/", None), "SHORT SHORT - SHORT - -"),
    # a byte flipped on the way back from storage (the stored copy is intact)
    S("flip-pack-read-1", F.flip_on_get(1, "packs/"), "OK READ READ OK - R:pack"),
    S("flip-pack-read-9", F.flip_on_get(9, "packs/"), "- READ READ OK - R:pack"),
    S(
        "flip-every-pack-read",
        F.flip_on_get(1, "packs/", None),
        "SHORT CHUNK CHUNK GCSTOP - R:pack",
    ),
    S("flip-index-read", F.flip_on_get(1, "index/"), "INDEX INDEX INDEX GCSTOP - R:index"),
    S(
        "flip-manifest-read",
        F.flip_on_get(1, "snapshots/"),
        "MANIF MANIF MANIF MANIF MANIF R:manif",
    ),
    S("flip-config-read", F.flip_on_get(1, "config"), "CONFIG CONFIG CONFIG CONFIG CONFIG CONFIG"),
    S("get-fails-pack", F.fail("get", 1, "packs/"), "IO IO IO IO - R:io-pack"),
    S("get-fails-index", F.fail("get", 1, "index/"), "IO IO IO IO - R:io-index"),
    S("list-fails-first", F.fail("list", 1), "IO IO IO IO IO IO"),
    S("list-fails-locks", F.fail("list", 1, "locks/"), "IO IO IO IO IO IO"),
    S("list-fails-snapshots", F.fail("list", 1, "snapshots/"), "IO IO IO IO IO IO"),
    S("list-fails-index", F.fail("list", 1, "index/"), "IO IO IO IO - IO"),
    S("delete-fails-index", F.fail("delete", 1, "index/"), "- - - IO - -"),
    S("delete-fails-pack-2", F.fail("delete", 2, "packs/"), "- - - IO - -"),
    S("delete-fails-manifest", F.fail("delete", 1, "snapshots/"), "- - - - IO -"),
    S("delete-fails-lock-once", F.fail("delete", 1, "locks/"), "OK OK OK OK OK OK"),
    # the lock cannot be removed once the work is done: left behind (a warning), not a failure
    S("delete-fails-lock-always", F.fail("delete", 1, "locks/", None), "OK OK OK OK OK OK"),
]

BACKENDS = ("local", "memory")

CASES = [
    pytest.param(kind, op, sc, id=f"{kind}-{op}-{sc.name}")
    for kind in BACKENDS
    for op in OPS
    for sc in SCENARIOS
    if sc.outcome[op] is not NA
]


def make_backend(kind: str, tmp_path: Path) -> Backend:
    if kind == "local":
        return LocalBackend(tmp_path / "repo")
    return MemoryBackend()


@pytest.fixture
def world(tmp_path: Path) -> Callable[[str], tuple[Backend, Ledger, Path]]:
    """A repository with two snapshots of a small real data dir."""

    def build(kind: str) -> tuple[Backend, Ledger, Path]:
        backend = make_backend(kind, tmp_path)
        repo = Repository.init_backend(backend, small_config(), tmp_path / "tmp")
        data = small_app(tmp_path / "data")
        ledger = Ledger()
        ledger.commit(repo, data, message="s0")
        evolve_app(data, 1)
        ledger.commit(repo, data, message="s1")
        return backend, ledger, data

    return build


def _run(op: str, repo: Repository, data: Path, target: Path, first: str) -> object:
    """Run one operation; its result (OK for a verify that found nothing)."""
    if op == "commit":
        return commit(repo, data, message="under fault").id
    if op in ("checkout", "checkout-new"):
        return checkout(repo, first, target, safety_snapshot=(op == "checkout"), smoke=False).id
    if op == "gc":
        return collector.collect(repo, max_unused=0.0)
    if op == "prune":
        return retention.prune(repo, retention.Policy(last=1))
    report = verify(repo, read_data=True)
    return report if not report.ok else OK


@pytest.mark.parametrize(("kind", "op", "sc"), CASES)
def test_operation_under_fault(
    kind: str, op: str, sc: Scenario, world: Callable, tmp_path: Path
) -> None:
    backend, ledger, data = world(kind)
    first = next(iter(ledger.trees))
    target = tmp_path / "out" if op == "checkout-new" else data
    if op == "commit":
        evolve_app(data, 2)
    elif op == "checkout":
        (data / "notes.txt").write_text("unsaved: no snapshot holds this")
    elif op == "checkout-new":
        target.mkdir()
    elif op == "gc":  # s0 forgotten: gc has data to reclaim and packs to rewrite
        retention.forget(Repository.open_backend(backend, tmp_path / "tmp"), [first])
        del ledger.trees[first]
    before_tree = snapshot_tree(data)
    target_before = raw_tree(target)
    wrapped = F.FaultyBackend(backend, [sc.fault])
    expected = sc.outcome[op]
    try:
        result = _run(op, Repository.open_backend(wrapped, tmp_path / "tmp"), data, target, first)
        outcome: object = OK if result == OK or op != "verify" else result
    except CasnapError as exc:
        outcome = exc
    assert wrapped.fired, f"{sc.fault.describe()} never fired during {op}"

    # a read may carry frames the checkout takes from another read (threads decide which read is
    # the nth): a flip there is harmless, and the restored tree is compared byte for byte below
    harmless = outcome == OK and sc.fault.action == "flip" and op in ("checkout", "checkout-new")
    if expected == OK or harmless:
        assert outcome == OK, f"expected success, got {outcome!r}"
    elif expected[0] == "report":  # type: ignore[index]
        assert isinstance(outcome, VerifyReport), f"expected a report, got {outcome!r}"
        assert any(re.search(expected[1], p.line()) for p in outcome.problems), outcome.summary()  # type: ignore[index]
    else:
        cls, pattern = expected  # type: ignore[misc]
        assert isinstance(outcome, cls), f"expected {cls.__name__}, got {outcome!r}"
        assert re.search(pattern, str(outcome)), str(outcome)
        assert "\n" not in str(outcome)

    late = sc.name == "delete-fails-lock-always"  # its lock left after the work is done
    healthy = Repository.open_backend(backend, tmp_path / "tmp")
    if op == "commit" and (outcome == OK or late):
        sid = result if outcome == OK else healthy.resolve("latest").hex()
        ledger.record(sid, before_tree)
    if op == "prune" and first not in {s.hex() for s, _ in healthy.snapshots()}:
        del ledger.trees[first]  # removed as asked; every other snapshot must still be there
    if op in ("checkout", "checkout-new"):
        if outcome == OK or late:
            assert snapshot_tree(target) == ledger.trees[first]
        else:
            assert raw_tree(target) == target_before, "a failed checkout touched the target"
        assert not temp_files(target)
    if late:
        # the lock could not be released: a live process keeps it until it exits, when it is
        # stale and the next casnap removes it; nothing but its objects is left (a gc or prune
        # writes its lock afresh before its first delete: the old object stays too)
        left = locks.holders(backend)
        assert wrapped.fired[0][1] in {h.key for h in left}
        assert left and all(h.pid == os.getpid() for h in left)
        assert len(left) == (2 if op in ("gc", "prune") else 1)
        for h in left:
            backend.delete(h.key)
    check_healthy(backend, ledger, tmp_path / "check", data)


# -- the fault wrappers themselves -----------------------------------------------------------------


def test_enospc_surfaces_as_storage_full_naming_the_object(tmp_path: Path) -> None:
    backend = F.FaultyBackend(LocalBackend(tmp_path / "r"), [F.no_space(2)])
    assert backend.put("a/x", b"1")
    with pytest.raises(StorageFull, match=r"writing a/y in .*: no space left on device"):
        backend.put("a/y", b"2")
    with pytest.raises(StorageFull):  # a full disk stays full
        backend.put("a/z", b"3")
    assert [k for k, _ in backend.list("a/")] == ["a/x"]
    err = F.FaultyBackend(MemoryBackend(), [F.no_space(1)])
    with pytest.raises(StorageFull) as info:
        err.put("k", b"v")
    assert info.value.exit_code == 8


def test_raw_oserror_of_any_backend_becomes_a_casnap_error() -> None:
    class Broken(MemoryBackend):
        def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
            raise OSError(errno.EIO, "device gone")

        def list(self, prefix: str):
            raise PermissionError(errno.EACCES, "no")
            yield  # pragma: no cover

    b = Broken()
    with pytest.raises(CasnapError, match=r"reading k in memory:\w+: device gone"):
        b.get("k")
    with pytest.raises(CasnapError, match="listing packs/") as info:
        list(b.list("packs/"))
    assert info.value.exit_code == 8  # permission denied


def test_damaged_pack_under_its_own_name_is_replaced_not_indexed(tmp_path: Path) -> None:
    """A torn leftover of an earlier write sits under the very name a new pack gets: put-if-absent
    answers "exists", so the store must compare and replace it, or the new index points into a
    damaged pack and poisons this and every later snapshot that shares its chunks."""
    backend = MemoryBackend()
    repo = Repository.init_backend(backend, small_config(), tmp_path / "t")
    data = small_app(tmp_path / "data")
    commit(repo, data)
    packs = [k for k, _ in backend.list("packs/")]
    good = {k: backend.get(k) for k in packs}
    for key in [k for k, _ in backend.list("")]:
        if key != "config":
            backend.delete(key)  # as if that commit had died before writing its index
    for key, blob in good.items():
        backend.put(key, blob[: len(blob) // 3])  # torn leftovers under the right names
    ledger = Ledger()
    sid = ledger.commit(Repository.open_backend(backend, tmp_path / "t"), data)
    assert all(backend.get(k) == blob for k, blob in good.items())
    assert ledger.check(Repository.open_backend(backend, tmp_path / "t"), tmp_path) == 1
    check_healthy(backend, ledger, tmp_path / "c", data)
    assert sid in ledger.trees


def test_truncated_pack_from_an_old_write_fails_naming_the_pack(tmp_path: Path) -> None:
    """Damage after the write (bit rot, an older casnap) is found on read, naming the object."""
    backend = MemoryBackend()
    repo = Repository.init_backend(backend, small_config(), tmp_path / "t")
    data = small_app(tmp_path / "data")
    sid = commit(repo, data).id
    key, _ = max(backend.list("packs/"), key=lambda kv: kv[1])
    blob = backend.get(key)
    backend.delete(key)
    backend.put(key, blob[: len(blob) // 2])
    fresh = Repository.open_backend(backend, tmp_path / "t")
    with pytest.raises(IntegrityError, match=re.escape(key) + " is truncated"):
        checkout(fresh, sid, tmp_path / "out", safety_snapshot=False, smoke=False)
    assert not temp_files(tmp_path / "out")
    backend.delete(key)
    with pytest.raises(IntegrityError, match=re.escape(key) + " is missing"):
        checkout(fresh, sid, tmp_path / "out2", safety_snapshot=False, smoke=False)


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_bit_rot_is_reported_and_repair_keeps_later_commits_whole(
    tmp_path: Path, damage: str
) -> None:
    """A pack damaged after it was written keeps its index entries, and a commit of the same
    data would only point at the damage again: verify names it, repair-index drops the entries
    that no longer decode, and the next commit stores those chunks afresh (healing the old
    snapshot too, as it used the same chunks)."""
    backend = MemoryBackend()
    repo = Repository.init_backend(backend, small_config(), tmp_path / "t")
    data = small_app(tmp_path / "data")
    old = commit(repo, data).id
    key, _ = max(backend.list("packs/"), key=lambda kv: kv[1])
    blob = bytearray(backend.get(key))
    if damage == "flipped":
        blob[len(blob) // 3] ^= 0xFF
    else:
        del blob[len(blob) // 2 :]
    backend.delete(key)
    backend.put(key, bytes(blob))
    report = verify(Repository.open_backend(backend, tmp_path / "t"), read_data=True)
    pack = key.rsplit("/", 1)[-1]
    assert not report.ok and any(
        p.pack == pack and pack[:12] in p.line() for p in report.problems
    ), [p.line() for p in report.problems]
    assert old in report.damaged
    repair_index(Repository.open_backend(backend, tmp_path / "t"))
    tree = snapshot_tree(data)
    ledger = Ledger()
    ledger.record(commit(Repository.open_backend(backend, tmp_path / "t"), data).id, tree)
    ledger.check(Repository.open_backend(backend, tmp_path / "t"), tmp_path / "check")
    report = verify(Repository.open_backend(backend, tmp_path / "t"), read_data=True)
    # the chunks stored afresh also heal the old snapshot, which used the same ones
    assert report.damaged == {}, report.summary()
    ledger.record(old, tree)
    ledger.check(Repository.open_backend(backend, tmp_path / "t"), tmp_path / "check")


def test_every_scenario_is_tried_on_both_backends() -> None:
    per_backend = {k: sum(1 for c in CASES if c.values[0] == k) for k in BACKENDS}
    assert per_backend["local"] == per_backend["memory"] == len(CASES) // 2


def test_spec_parses_and_rejects_garbage() -> None:
    faults = F.parse_spec("put:kill:7, get:flip:2:packs/,replace:kill:1")
    assert [(f.op, f.action, f.nth, f.prefix) for f in faults] == [
        ("put", "kill", 7, ""),
        ("get", "flip", 2, "packs/"),
        ("replace", "kill", 1, ""),
    ]
    for bad in ("put:kill:x", "explode:kill:1", "put:kill", "put:melt:1"):
        with pytest.raises(ValueError):
            F.parse_spec(bad)


def test_spec_faults_keep_the_backend_type(tmp_path: Path) -> None:
    plain = LocalBackend(tmp_path / "a")
    assert F.install(plain, "") is plain and "put" not in vars(plain)
    b = F.install(LocalBackend(tmp_path / "b"), "put:enospc:2:packs/")
    assert isinstance(b, LocalBackend)  # code that asks for the type still gets it
    assert b.put("packs/x", b"1") and b.put("index/y", b"2")
    with pytest.raises(StorageFull, match="writing packs/z"):
        b.put("packs/z", b"3")
    assert not temp_files(tmp_path / "b")


def test_faulty_local_backends_act_only_while_active(tmp_path: Path) -> None:
    """Each LocalBackend made inside gets the spec's faults, counted afresh; outside, LocalBackend
    and os.replace are untouched (a fault never leaks into another test)."""
    real_replace = os.replace
    with F.faulty_local_backends("put:enospc:2:packs/,replace:fail:1"):
        for name in ("a", "b"):
            b = LocalBackend(tmp_path / name)
            assert b.put("packs/x", b"1")
            with pytest.raises(StorageFull):
                b.put("packs/y", b"2")
        (tmp_path / "src").write_bytes(b"s")
        with pytest.raises(OSError, match="injected I/O error"):
            os.replace(tmp_path / "src", tmp_path / "dst")
    assert os.replace is real_replace
    c = LocalBackend(tmp_path / "c")
    assert "put" not in vars(c)
    assert c.put("packs/x", b"1") and c.put("packs/y", b"2")
    os.replace(tmp_path / "src", tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == b"s"
