"""S3 repositories shared by several writers, and `copy` into S3, on the test's own S3 server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import evolve_app, make_app
from tests.helpers_hosts import assert_whole, race
from tests.s3server import moto_server
from tests.test_s3 import bucket_objects, run
from tests.util import snapshot_tree

PW = "shared secret"


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
    ids = race(repo, env, datas, ["gc", "-q"])
    assert assert_whole(repo, PW, ids, datas, tmp_path) == set(ids)


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


def test_a_bucket_of_one_name_on_two_endpoints_is_two_repositories(
    s3_bucket: str, s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Backups to two stores (CASNAP_S3_ENDPOINT) that each hold a bucket of the same name: the
    config and key kept for one were taken for the other's, so every command after a switch of
    endpoint failed once with 'not the one this host opened there before' (exit 3). Each store
    now keeps its own."""
    data = tmp_path / "data"
    make_app(data, rows=60, vectors=120)
    repo = f"s3://{s3_bucket}/app"
    first = s3_env["CASNAP_S3_ENDPOINT"]
    (tmp_path / "moto2").mkdir()
    with moto_server(tmp_path / "moto2") as second:
        ids = {}
        for url in (first, second):
            monkeypatch.setenv("CASNAP_S3_ENDPOINT", url)
            code, out, err = run(repo, data, "commit", "-q", password=PW)
            assert code == 0, err
            ids[url] = out.strip()
        for _ in range(2):
            for url in (first, second):
                monkeypatch.setenv("CASNAP_S3_ENDPOINT", url)
                code, out, err = run(repo, data, "log", "--json", password=PW)
                assert code == 0, err
                assert [row["id"] for row in json.loads(out)] == [ids[url]]


@pytest.mark.parametrize("anew", ["plain", "another password"])
def test_a_repository_made_anew_in_the_bucket_opens_on_a_host_keeping_the_old_one(
    anew: str, s3_bucket: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    """A host keeps the config of an encrypted repository; its objects are deleted and a
    repository made anew at that prefix, plain or with another password. The host's commands
    stopped on the kept config: 'repository ... is encrypted' (exit 10) without a password,
    'config is damaged or tampered with' (exit 5) with the new one, on every run until its
    cache was deleted. They now read the stored config and use the new repository."""
    from casnap.backends.s3 import make_client

    data = tmp_path / "data"
    make_app(data, rows=60, vectors=120)
    repo = f"s3://{s3_bucket}/app"
    assert run(repo, data, "commit", "-q", password=PW)[0] == 0
    assert run(repo, data, "log", password=PW)[0] == 0  # the config and key file are kept
    client = make_client()
    for key in bucket_objects(s3_bucket):
        client.delete_object(Bucket=s3_bucket, Key=key)
    client.close()
    password = None if anew == "plain" else "another"
    other = dict(s3_env, CASNAP_CACHE_DIR=str(tmp_path / "other-host"))
    encryption = "none" if password is None else "repokey"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CASNAP_CACHE_DIR", other["CASNAP_CACHE_DIR"])
        assert run(repo, data, "init", "--encryption", encryption, password=password)[0] == 0
        code, out, err = run(repo, data, "commit", "-q", password=password)
        assert code == 0, err
    new_id = out.strip()
    for _ in range(2):
        code, out, err = run(repo, data, "log", "--json", password=password)
        assert code == 0, err
        assert [row["id"] for row in json.loads(out)] == [new_id]


def test_a_cache_this_user_cannot_read_is_passed_over(
    s3_bucket: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    """A cache folder left unreadable (made by another user: one `sudo casnap`) failed every
    command on the repository with exit 8 naming a file in it; the cache is a shortcut, and one
    that does not read is a miss, as the docs say."""
    import subprocess
    import sys

    from tests.test_hostile import unprivileged

    repo, data = f"s3://{s3_bucket}/c", tmp_path / "data"
    make_app(data, rows=40, vectors=80)
    env = dict(s3_env, CASNAP_PASSWORD=PW, CASNAP_CACHE_DIR=str(tmp_path / "cache"))
    base = [sys.executable, "-m", "casnap", "--repo", repo, "--data", str(data)]
    first = subprocess.run([*base, "commit", "-q"], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    kept = subprocess.run([*base, "log"], env=env, capture_output=True, text=True)
    assert kept.returncode == 0, kept.stderr  # an open keeps the config in the cache
    locked = tmp_path / "cache" / "locations"
    assert locked.is_dir()
    locked.chmod(0)
    try:
        for args in (["commit", "-q", "--allow-empty"], ["log", "--json"]):
            p = subprocess.run(
                [*unprivileged(), *base, *args], env=env, capture_output=True, text=True
            )
            assert p.returncode == 0, (args, p.stderr)
    finally:
        locked.chmod(0o700)
    assert first.stdout.strip() in {row["id"] for row in json.loads(p.stdout)}
