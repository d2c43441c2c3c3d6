"""S3 repositories shared by several writers, and `copy` into S3, on the test's own S3 server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import evolve_app, make_app
from tests.test_s3 import bucket_objects, run
from tests.util import snapshot_tree

PW = "shared secret"


def _with_hostname(name: str, argv: list[str]) -> list[str]:
    """argv run under its own host name (a UTS namespace) when this machine allows it."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return argv
    probe = subprocess.run(
        [unshare, "-u", "sh", "-c", "hostname probe-host"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        return argv
    script = 'hostname "$0" && exec "$@"'
    return [unshare, "-u", "sh", "-c", script, name, *argv]


def test_commits_of_two_hosts_and_a_gc_race_into_one_bucket(
    s3_bucket: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    repo = f"s3://{s3_bucket}/shared"
    env = dict(s3_env, CASNAP_PASSWORD=PW)
    seed = tmp_path / "seed"
    make_app(seed, seed=3, rows=80, vectors=160)
    assert run(repo, seed, "commit", "-q", password=PW)[0] == 0
    assert run(repo, seed, "forget", "latest", password=PW)[0] == 0  # leaves garbage for gc
    datas = []
    for n in range(2):
        d = tmp_path / f"host{n}"
        make_app(d, seed=10 + n, rows=120, vectors=200)
        evolve_app(d, 1)
        datas.append(d)
    casnap = [sys.executable, "-m", "casnap", "--repo", repo]
    procs = [
        subprocess.Popen(
            _with_hostname(f"host-{n}", [*casnap, "--data", str(d), "commit", "-q"]),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n, d in enumerate(datas)
    ]
    procs.append(
        subprocess.Popen(
            _with_hostname("host-gc", [*casnap, "gc", "-q"]),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    )
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        outs.append(out.decode().strip())
    code, out, err = run(repo, seed, "log", "--json", password=PW)
    assert code == 0, err
    assert {r["id"] for r in json.loads(out)} == set(outs[:2])
    code, _, err = run(repo, seed, "verify", "--read-data", password=PW)
    assert code == 0, err
    for sid, d in zip(outs[:2], datas, strict=True):
        target = tmp_path / f"out-{sid[:8]}"
        code, _, err = run(repo, d, "checkout", sid, "--to", str(target), "-q", password=PW)
        assert code == 0, err
        assert snapshot_tree(target) == snapshot_tree(d)


def test_copy_from_local_to_s3_sends_only_what_is_missing(
    s3_bucket: str, s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    make_app(data, rows=120, vectors=200)
    local = tmp_path / "local"
    ids = []
    for step in range(3):
        if step:
            evolve_app(data, step)
        code, out, err = run(str(local), data, "commit", "-q")
        assert code == 0, err
        ids.append(out.strip())
    dest = f"s3://{s3_bucket}/copy"
    monkeypatch.setenv("CASNAP_TO_PASSWORD", PW)
    code, out, err = run(str(local), data, "copy", "--to", dest, "--json")
    assert code == 0, err
    assert json.loads(out)["copied"] == 3
    before = bucket_objects(s3_bucket)
    code, out, err = run(str(local), data, "copy", "--to", dest, "--json")
    assert code == 0, err
    again = json.loads(out)
    assert again["copied"] == 0 and again["chunks_sent"] == 0
    after = bucket_objects(s3_bucket)
    data_keys = {k for k in after if not k.startswith("copy/locks/")}
    assert data_keys == {k for k in before if not k.startswith("copy/locks/")}
    for body in after.values():
        assert b"app.db" not in body and b"shard_000" not in body  # encrypted on S3
    code, out, err = run(dest, data, "log", "--json", password=PW)
    assert code == 0, err
    assert len(json.loads(out)) == 3
    target = tmp_path / "restored"
    code, _, err = run(dest, data, "checkout", "latest", "--to", str(target), "-q", password=PW)
    assert code == 0, err
    assert snapshot_tree(target) == snapshot_tree(data)


@pytest.mark.parametrize("what", ["log"])
def test_a_warm_cache_makes_log_list_only(what: str, s3_bucket: str, tmp_path: Path) -> None:
    """log on S3 with a warm cache: the manifests come from the cache, only the listing from
    the bucket (the server's request log is not available, so the cache files are checked)."""
    data = tmp_path / "data"
    make_app(data, rows=60, vectors=120)
    repo = f"s3://{s3_bucket}/c"
    assert run(repo, data, "commit", "-q", password=PW)[0] == 0
    assert run(repo, data, what, password=PW)[0] == 0
    cache = Path(os.environ["CASNAP_CACHE_DIR"])
    cached = [p for p in cache.rglob("*") if p.is_file() and "snapshots" in p.parts]
    assert cached, "the manifest was not cached"
