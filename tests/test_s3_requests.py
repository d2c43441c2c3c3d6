"""What a warm `log` and a commit that finds nothing changed ask of S3, counted on the real moto
server (tests/s3server.py) through the client's own event hooks, and the lock protocol that the
commit's single listing and its one-request release still carry: a commit refused while an
exclusive lock is held, commits of two hosts racing a forget and a gc lose nothing, and a lock
taken away is noticed by its holder with or without conditional deletes."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from casnap import checkout, collector, copy_snapshots, locks, retention
from casnap.backends.base import Backend
from casnap.committer import commit
from casnap.constants import FRAME_TARGET
from casnap.errors import LockError
from casnap.repository import Repository
from casnap.stats import log_rows
from tests.conftest import evolve_app, make_app
from tests.helpers_hosts import assert_whole, race
from tests.helpers_reliability import wait_for
from tests.test_s3 import run
from tests.util import snapshot_tree

PW = "request counting"


def s3_backend(repo: Repository) -> Any:
    """The S3Backend below the repository's retrying (and caching, encrypting) layers."""
    layer: Backend | None = repo.raw_backend
    while layer is not None and not hasattr(layer, "_client"):
        layer = getattr(layer, "inner", None)
    assert layer is not None, "not an S3 repository"
    return layer


def s3_client(repo: Repository) -> Any:
    """The boto3 client of the repository's S3Backend."""
    return s3_backend(repo)._client


class Requests:
    """Every request the client sends, as (operation, key or listing prefix), recorded by a
    botocore hook registered on that client (each API call passes it once)."""

    def __init__(self, repo: Repository) -> None:
        self.sent: list[tuple[str, str]] = []
        s3_client(repo).meta.events.register("provide-client-params.s3", self._note)

    def _note(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.sent.append((model.name, str(params.get("Key", params.get("Prefix", "")))))

    def operations(self) -> Counter[str]:
        return Counter(op for op, _ in self.sent)


def open_s3(url: str) -> tuple[Repository, Requests]:
    repo = Repository.open(url, password=lambda: PW)
    return repo, Requests(repo)


def count_new_clients(monkeypatch: pytest.MonkeyPatch) -> Requests:
    """The requests of every S3 client made from now on, counted from its first one."""
    import casnap.backends.s3 as s3

    requests = Requests.__new__(Requests)
    requests.sent = []
    made = s3.make_client

    def counted() -> Any:
        client = made()
        client.meta.events.register("provide-client-params.s3", requests._note)
        return client

    monkeypatch.setattr(s3, "make_client", counted)
    return requests


def open_or_init_s3(url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Repository, Requests]:
    """As the commit command opens it (creating it when missing), counted from its first
    request."""
    requests = count_new_clients(monkeypatch)
    repo = Repository.open_or_init(url, password=lambda: PW, encryption="repokey")
    return repo, requests


def committed_twice(url: str, data: Path) -> None:
    """A repository at url holding data, and this host's cache warm: the first commit creates
    it, the second (a new process's view) fetches and keeps the config, key file and
    manifest, and records fingerprints old enough to vouch for the files."""
    make_app(data, rows=60, vectors=120)
    repo = Repository.open_or_init(url, password=lambda: PW, encryption="repokey")
    commit(repo, data, message="first")
    repo.close()
    time.sleep(0.2)  # past the racy window: the next commit's fingerprints vouch for the files
    repo = Repository.open(url, password=lambda: PW)
    commit(repo, data, message="second")
    repo.close()


def test_a_warm_no_change_commit_is_one_listing_and_no_download(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"s3://{s3_bucket}/r"
    data = tmp_path / "data"
    committed_twice(url, data)
    repo, requests = open_or_init_s3(url, monkeypatch)  # as the commit command opens it
    result = commit(repo, data, message="again")
    repo.close()
    assert result.files_unchanged == result.files_new + result.files_unchanged > 0
    assert result.bytes_read == 0
    ops = requests.operations()
    assert ops["ListObjectsV2"] == 1, requests.sent
    assert ops["GetObject"] == 0, requests.sent
    # its lock and its manifest; the lock removed at the end, which says it was still there
    assert ops["PutObject"] == 2 and ops["DeleteObject"] == 1, requests.sent
    assert sum(ops.values()) == 4, requests.sent  # no HEAD of the config nor of the lock


def test_a_warm_no_change_commit_command_given_a_password_asks_nothing_more(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command, not only the API: with a password given there is no prompt to make ask
    twice, so it does not ask the store whether the repository is new (a HEAD of its config)."""
    url = f"s3://{s3_bucket}/r"
    data = tmp_path / "data"
    committed_twice(url, data)
    requests = count_new_clients(monkeypatch)
    code, _, err = run(url, data, "commit", "-q", password=PW)
    assert code == 0, err
    ops = requests.operations()
    assert ops["HeadObject"] == 0 and ops["ListObjectsV2"] == 1, requests.sent
    assert sum(ops.values()) == 4, requests.sent


def test_a_warm_log_on_s3_is_one_listing(s3_bucket: str, tmp_path: Path) -> None:
    url = f"s3://{s3_bucket}/r"
    committed_twice(url, tmp_path / "data")
    repo, requests = open_s3(url)
    assert len(log_rows(repo)) == 2
    repo.close()
    assert requests.sent == [("ListObjectsV2", "r/snapshots/")]


def test_a_warm_checkout_lists_its_snapshots_again_with_its_lock_not_apart(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command resolves `latest` with one listing of snapshots/; with its lock taken, the
    snapshots it checks again come in the lock's own listing (not in one more), then the index
    files are listed (after the lock's check: see locks.LISTED_WITH_LOCK)."""
    url = f"s3://{s3_bucket}/r"
    data = tmp_path / "data"
    committed_twice(url, data)
    requests = count_new_clients(monkeypatch)
    out = tmp_path / "out"
    code, _, err = run(url, data, "checkout", "latest", "--to", str(out), "-q", password=PW)
    assert code == 0, err
    assert snapshot_tree(out) == snapshot_tree(data)
    listings = [key for op, key in requests.sent if op == "ListObjectsV2"]
    assert listings == ["r/snapshots/", "r/", "r/index/"], requests.sent


def test_a_commit_is_refused_while_an_exclusive_lock_is_held(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing that carries the snapshots is still the lock's check: a live exclusive lock
    of another host stops the commit before it stores anything, and its own lock is gone."""
    url = f"s3://{s3_bucket}/r"
    data = tmp_path / "data"
    committed_twice(url, data)
    evolve_app(data, 1)
    repo, requests = open_s3(url)
    now = time.time()
    held = {"host": "gc-host", "pid": 4242, "start": None, "exclusive": True}
    held |= {"operation": "gc", "taken": now, "time": now}
    assert repo.backend.put("locks/" + "e" * 32, json.dumps(held).encode())  # sealed
    before = {key for key, _ in repo.raw_backend.list("")}
    monkeypatch.setenv("CASNAP_LOCK_WAIT", "0")
    with pytest.raises(LockError, match="exclusive lock held by gc"):
        commit(repo, data, message="refused")
    assert {key for key, _ in repo.raw_backend.list("")} == before  # nothing stored, nor left
    repo.close()
    assert ("ListObjectsV2", "r/") in requests.sent  # one listing for the lock and the rest


def test_no_change_commits_of_two_hosts_racing_a_forget_and_gc_lose_nothing(
    s3_bucket: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    """Each host commits data it committed before (a warm cache, entries reused from the parent
    by fingerprint) while another host forgets those parents and runs gc: whichever order the
    locks give them, every snapshot left reads back whole."""
    url = f"s3://{s3_bucket}/shared"
    env = dict(s3_env, CASNAP_PASSWORD=PW)
    datas, parents = [], []
    for n in range(2):
        d = tmp_path / f"host{n}"
        make_app(d, seed=20 + n, rows=80, vectors=160)
        assert run(url, d, "commit", "-q", password=PW)[0] == 0
        evolve_app(d, 1)  # the parent alone holds these chunks
        time.sleep(0.2)  # past the racy window: the next commits reuse every entry
        code, out, err = run(url, d, "commit", "-q", password=PW)
        assert code == 0, err
        datas.append(d)
        parents.append(out.strip())
    ids = race(url, env, datas, ["forget", *parents, "--prune", "-q"])
    assert set(ids) <= assert_whole(url, PW, ids, datas, tmp_path)


def test_a_lock_taken_away_on_s3_is_noticed_by_its_release_alone(
    s3_bucket: str, tmp_path: Path
) -> None:
    """Refreshes and the release are conditional deletes of the lock's own objects, which
    answer whether each was still there: a lock refreshed to the end is released without a HEAD,
    one that `unlock --force` removed meanwhile still fails its holder."""
    url = f"s3://{s3_bucket}/r"
    committed_twice(url, tmp_path / "data")
    repo, requests = open_s3(url)
    with locks.locked(repo.backend, "commit", exclusive=False, refresh=0.05, stale=30):
        wait_for(lambda: requests.operations()["PutObject"] >= 3, timeout=30)  # refreshed
    assert locks.holders(repo.backend) == []
    assert requests.operations()["HeadObject"] == 0, requests.sent
    with pytest.raises(LockError, match="its lock was removed while it ran"):
        with locks.locked(repo.backend, "commit", exclusive=False):
            locks.unlock(repo.backend, force=True)
    assert locks.holders(repo.backend) == []
    repo.close()


def test_a_store_without_conditional_deletes_gets_a_head_before_the_release(
    s3_bucket: str, tmp_path: Path
) -> None:
    """Where the store is known not to honour `If-Match` on a delete (a 204 would not say the
    lock was there), the release looks first, and a lock taken away is still noticed."""
    url = f"s3://{s3_bucket}/r"
    committed_twice(url, tmp_path / "data")
    repo, requests = open_s3(url)
    s3_backend(repo).conditional_deletes = False
    with locks.locked(repo.backend, "commit", exclusive=False):
        pass
    assert requests.operations()["HeadObject"] == 1, requests.sent
    with pytest.raises(LockError, match="its lock was removed while it ran"):
        with locks.locked(repo.backend, "commit", exclusive=False):
            locks.unlock(repo.backend, force=True)
    repo.close()


def test_a_copy_out_of_s3_fetches_whole_packs_not_frame_by_frame(
    s3_bucket: str, tmp_path: Path
) -> None:
    """copy reads the frames it needs from an S3 source as spans, a pack or so per request,
    not one ranged GET per 512 KiB frame; what it copies restores whole."""
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(9)
    (data / "blob.bin").write_bytes(rng.integers(0, 256, 12 << 20, dtype=np.uint8).tobytes())
    url = f"s3://{s3_bucket}/src"
    repo = Repository.open_or_init(url, password=lambda: PW, encryption="repokey")
    sid = commit(repo, data).id
    repo.close()
    src, requests = open_s3(url)
    dst = Repository.open_or_init(tmp_path / "dst")
    done = copy_snapshots(src, dst)
    gets = [key for op, key in requests.sent if op == "GetObject" and "/packs/" in key]
    frames = (12 << 20) // FRAME_TARGET
    assert done.snapshots[0].copied and 0 < len(gets) < frames // 4
    dsid = done.snapshots[0].destination
    checkout(dst, dsid, tmp_path / "out", safety_snapshot=False)
    assert snapshot_tree(tmp_path / "out") == snapshot_tree(data)
    assert dsid != sid  # named with the plain destination's ids
    src.close()
    dst.close()


def test_a_gc_on_s3_looks_its_lock_up_far_less_often_than_it_deletes(
    s3_bucket: str, tmp_path: Path
) -> None:
    """A gc confirmed its lock with a HEAD request before each delete: as many requests again
    as objects deleted on a remote store. It looks the lock up at most once a second now (and
    writes it afresh before the first delete, as before); what it keeps still restores."""
    data = tmp_path / "data"
    data.mkdir()
    url = f"s3://{s3_bucket}/gc"
    repo = Repository.open_or_init(url, password=lambda: PW, encryption="repokey")
    rng = np.random.default_rng(4)
    for _ in range(12):  # a pack of its own for each snapshot
        (data / "blob.bin").write_bytes(rng.integers(0, 256, 64 << 10, dtype=np.uint8).tobytes())
        last = commit(repo, data).id
    retention.forget(repo, [s.hex() for s, _ in repo.snapshots() if s.hex() != last])
    repo.close()
    repo, requests = open_s3(url)
    collector.collect(repo, max_unused=0)
    deletes = [key for op, key in requests.sent if op == "DeleteObject" and "/locks/" not in key]
    heads = [key for op, key in requests.sent if op == "HeadObject" and "/locks/" in key]
    assert len(deletes) >= 11, requests.operations()
    assert len(heads) <= 2 + len(deletes) // 4, requests.operations()
    checkout(repo, last, tmp_path / "out", safety_snapshot=False)
    assert snapshot_tree(tmp_path / "out") == snapshot_tree(data)
    repo.close()


@pytest.mark.parametrize(
    "kind,name",
    [
        ("data", "endpoints"),
        ("data", "partitions"),
        ("data", "sdk-default-configuration"),
        ("service", "service-2"),
        ("service", "endpoint-rule-set-1"),
    ],
)
def test_the_client_reads_botocores_model_files_as_botocore_does(kind: str, name: str) -> None:
    """casnap's loader parses botocore's bundled files with orjson (the endpoints file and the S3
    model are 2.7 MB of JSON at each start): the same data as botocore's own loader, plain
    (.json) and compressed (.json.gz) files alike."""
    import botocore.loaders

    from casnap.backends.s3models import S3Loader

    ours, theirs = S3Loader(), botocore.loaders.Loader()
    if kind == "data":
        assert ours.load_data(name) == theirs.load_data(name)
    else:
        assert ours.load_service_model("s3", name) == theirs.load_service_model("s3", name)
