"""RetryingBackend (casnap/backends/retrying.py): transient storage failures are retried with
jittered exponential backoff, the calls keep their meaning (put-if-absent stays exact, a list
yields each key once), and a failure that persists surfaces as one error.

Faults come from wrapping a real backend (tests/faults.py); `sleep` is injected to record the
delays, so nothing here really sleeps.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from casnap import collector, retention
from casnap.backends import Backend, LocalBackend, MemoryBackend
from casnap.backends.retrying import RetryingBackend
from casnap.errors import (
    AccessDenied,
    CasnapError,
    IntegrityError,
    ObjectMissing,
    StorageFull,
    TransientError,
)
from casnap.repository import Repository
from tests import faults as F
from tests.conftest import evolve_app
from tests.helpers_reliability import Ledger, check_healthy, small_app, small_config


def _blob(seed: int, size: int = 3000) -> bytes:
    return random.Random(seed).randbytes(size)


def retrying(
    inner: Backend, attempts: int = 4, seed: int = 0
) -> tuple[RetryingBackend, list[float]]:
    """inner wrapped for retries; the delays it slept are recorded in the list, not slept."""
    slept: list[float] = []
    backend = RetryingBackend(
        inner,
        attempts=attempts,
        base_delay=0.5,
        max_delay=30.0,
        sleep=slept.append,
        rng=random.Random(seed),
    )
    return backend, slept


def _stored(tmp_path: Path) -> LocalBackend:
    """A local backend holding a few objects."""
    local = LocalBackend(tmp_path / "repo")
    for i in range(6):
        local.put(f"packs/{i:02x}/obj{i}", _blob(i))
    return local


# -- each call kind --------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["transient", "lost"])
def test_a_transient_failure_of_each_call_is_retried(tmp_path: Path, action: str) -> None:
    local = _stored(tmp_path)
    faulty = F.FaultyBackend(
        local, [F.Fault(op, action, 1, "", 1) for op in ("put", "get", "list", "delete")]
    )
    backend, slept = retrying(faulty)
    assert backend.put("packs/aa/new", _blob(99)) is True  # exact even when its answer was lost
    assert backend.get("packs/00/obj0") == _blob(0)
    listed = list(backend.list("packs/"))
    assert sorted(listed) == sorted(local.list("packs/"))  # each key once, though retried
    assert len(listed) == 7
    backend.delete("packs/01/obj1")
    assert not local.exists("packs/01/obj1")
    assert sorted(f.op for f, _ in faulty.fired) == ["delete", "get", "list", "put"]
    assert len(slept) == 4  # one wait per retried call


def test_a_list_broken_off_part_way_yields_no_key_twice(tmp_path: Path) -> None:
    local = _stored(tmp_path)
    faulty = F.FaultyBackend(local, [F.transient("list", 1, times=2)])
    backend, slept = retrying(faulty, attempts=3)
    keys = [k for k, _ in backend.list("packs/")]
    assert sorted(keys) == sorted(k for k, _ in local.list("packs/"))
    assert len(keys) == len(set(keys)) == 6  # the first half was listed three times
    assert len(slept) == 2


def test_commit_and_checkout_succeed_through_transient_faults(tmp_path: Path) -> None:
    """A real commit, gc and checkout through Repository.open_backend, with the first call of
    every kind on every folder failing transiently (some before, some after they landed)."""
    inner = MemoryBackend()
    Repository.init_backend(inner, small_config(), tmp_path / "tmp")
    data = small_app(tmp_path / "data")
    plan = [
        F.transient(op, 1, prefix) for op in ("put", "get", "list") for prefix in ("packs/",)
    ] + [
        F.answer_lost("put", 1, "index/"),
        F.answer_lost("put", 1, "snapshots/"),
        F.transient("put", 1, "locks/"),
        F.answer_lost("delete", 1, "locks/"),
        F.transient("get", 1, "index/"),
        F.transient("list", 1, "snapshots/"),
        F.transient("get", 2, "snapshots/"),
        F.transient("get", 1, "config"),
        F.transient("delete", 1, "packs/"),
    ]
    faulty = F.FaultyBackend(inner, plan)
    backend, slept = retrying(faulty)
    ledger = Ledger()
    ledger.commit(Repository.open_backend(backend, tmp_path / "tmp"), data, message="s0")
    evolve_app(data, 1)
    ledger.commit(Repository.open_backend(backend, tmp_path / "tmp"), data, message="s1")
    repo = Repository.open_backend(backend, tmp_path / "tmp")
    first = next(iter(ledger.trees))
    retention.forget(repo, [first])
    del ledger.trees[first]
    collector.collect(Repository.open_backend(backend, tmp_path / "tmp"), max_unused=0.0)
    ledger.check(Repository.open_backend(backend, tmp_path / "tmp"), tmp_path / "out")
    fired = {(f.op, f.prefix) for f, _ in faulty.fired}
    assert {("put", "packs/"), ("get", "packs/"), ("put", "index/"), ("put", "snapshots/")} <= (
        fired
    ), fired
    assert {("put", "locks/"), ("delete", "locks/"), ("delete", "packs/")} <= fired, fired
    assert len(slept) == len(faulty.fired)
    check_healthy(inner, ledger, tmp_path / "check", data)


# -- giving up -------------------------------------------------------------------------------------


def _call(backend: Backend, op: str) -> object:
    """One call of the kind op on the objects _stored made."""
    calls = {
        "put": lambda: backend.put("packs/aa/new", b"x"),
        "get": lambda: backend.get("packs/00/obj0"),
        "list": lambda: list(backend.list("packs/")),
        "delete": lambda: backend.delete("packs/00/obj0"),
    }
    return calls[op]()


@pytest.mark.parametrize("op", ["put", "get", "list", "delete"])
def test_a_persistent_failure_fails_once_after_n_attempts(tmp_path: Path, op: str) -> None:
    local = _stored(tmp_path)
    faulty = F.FaultyBackend(local, [F.transient(op, 1, times=None)])
    backend, slept = retrying(faulty, attempts=5)
    with pytest.raises(TransientError, match=r"injected timeout.*gave up after 5 attempts") as info:
        _call(backend, op)
    assert "\n" not in str(info.value)
    assert isinstance(info.value.__cause__, TransientError)  # the last failure, kept as cause
    assert len(faulty.fired) == 5 and len(slept) == 4
    assert not local.exists("packs/aa/new")


@pytest.mark.parametrize("op", ["put", "get", "list", "delete"])
def test_once_a_call_gave_up_later_calls_get_one_attempt_until_one_succeeds(
    tmp_path: Path, op: str
) -> None:
    """A store that is gone (a server killed mid-commit) made each later request wait out its
    retries too, the lock's release after the failed upload among them: minutes of silence.
    Once a call gave up, every later one is tried once, until one gets through."""
    local = _stored(tmp_path)
    faulty = F.FaultyBackend(local, [F.transient(op, 1, times=None)])
    backend, slept = retrying(faulty, attempts=5)
    with pytest.raises(TransientError, match="gave up after 5 attempts"):
        _call(backend, op)
    assert len(slept) == 4 and len(faulty.fired) == 5
    with pytest.raises(TransientError, match="gave up after 1 attempt"):
        _call(backend, op)
    assert len(slept) == 4  # tried once, no wait
    backend.inner = local  # the store is back
    _call(backend, op)
    backend.inner = F.FaultyBackend(local, [F.transient(op, 1)])
    _call(backend, op)  # once one got through, a failure is retried again
    assert len(slept) == 5


@pytest.mark.parametrize(
    "error", [ObjectMissing, IntegrityError, AccessDenied, StorageFull, ValueError, CasnapError]
)
def test_errors_a_retry_cannot_fix_are_never_retried(error: type[Exception]) -> None:
    calls: list[str] = []

    class Failing(MemoryBackend):
        def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
            calls.append(key)
            raise error(f"{key}: no")

        def put(self, key: str, data: bytes | memoryview) -> bool:
            calls.append(key)
            raise error(f"{key}: no")

    backend, slept = retrying(Failing())
    with pytest.raises(error):
        backend.get("k")
    with pytest.raises(error):
        backend.put("k", b"v")
    assert calls == ["k", "k"] and slept == []


def test_an_invalid_key_is_refused_before_any_call() -> None:
    faulty = F.FaultyBackend(MemoryBackend(), [F.transient("put", 1, times=None)])
    backend, slept = retrying(faulty)
    with pytest.raises(ValueError, match="invalid backend key"):
        backend.put("../escape", b"x")
    assert faulty.fired == [] and slept == []


# -- backoff ---------------------------------------------------------------------------------------


def test_backoff_delays_grow_and_are_jittered() -> None:
    """Full jitter: retry n waits a random time in [0, min(max, base * 2**n)]. Over many runs
    the longest wait of each retry doubles up to the cap, and the waits are spread out."""
    runs: list[list[float]] = []
    for seed in range(200):
        faulty = F.FaultyBackend(MemoryBackend(), [F.transient("get", 1, times=None)])
        backend, slept = retrying(faulty, attempts=9, seed=seed)
        with pytest.raises(TransientError):
            backend.get("k")
        runs.append(slept)
    caps = [min(30.0, 0.5 * 2**n) for n in range(8)]
    assert all(len(r) == 8 for r in runs)
    for n, cap in enumerate(caps):
        waits = [r[n] for r in runs]
        assert all(0.0 <= w <= cap for w in waits)
        assert max(waits) > 0.9 * cap  # the range reaches its cap
        assert min(waits) < 0.1 * cap  # and its bottom: jittered, not a fixed ladder
        assert len(set(waits)) == len(waits)
    longest = [max(r[n] for r in runs) for n in range(8)]
    assert longest[:6] == sorted(longest[:6]) and longest[5] > 8 * longest[1]
    assert longest[6] <= 30.0 and longest[7] <= 30.0  # capped


# -- put-if-absent ---------------------------------------------------------------------------------


def test_put_stays_exact_when_a_landed_put_lost_its_answer(tmp_path: Path) -> None:
    local = LocalBackend(tmp_path / "repo")
    faulty = F.FaultyBackend(
        local, [F.answer_lost("put", 1, "locks/ours"), F.answer_lost("put", 1, "locks/theirs")]
    )
    backend, _ = retrying(faulty)
    # ours landed on the first try, its answer lost; the retry finds our bytes: True
    assert backend.put("locks/ours", b"mine") is True
    # someone else's object was there all along: the retry finds other bytes: False
    local.put("locks/theirs", b"theirs")
    assert backend.put("locks/theirs", b"mine") is False
    assert local.get("locks/theirs") == b"theirs"
    # no fault left: a plain False is passed on without reading anything back
    assert backend.put("locks/ours", b"mine") is False
    assert [f.action for f, _ in faulty.fired] == ["lost", "lost"]


def test_put_whose_first_try_failed_before_landing_is_exact(tmp_path: Path) -> None:
    local = LocalBackend(tmp_path / "repo")
    local.put("packs/aa/taken", b"other bytes")
    faulty = F.FaultyBackend(
        local, [F.transient("put", 1, "packs/aa/free"), F.transient("put", 1, "packs/aa/taken")]
    )
    backend, _ = retrying(faulty)
    assert backend.put("packs/aa/free", b"data") is True
    assert backend.put("packs/aa/taken", b"data") is False
    assert local.get("packs/aa/free") == b"data" and local.get("packs/aa/taken") == b"other bytes"
    assert len(faulty.fired) == 2


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        RetryingBackend(MemoryBackend(), attempts=0)
    with pytest.raises(ValueError):
        RetryingBackend(MemoryBackend(), base_delay=-1)
