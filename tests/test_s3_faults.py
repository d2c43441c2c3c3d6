"""An S3 store that misbehaves or is changed behind casnap's back: a pack deleted by another
tool, a store that ignores a Range header, a listing that leaves out a snapshot. No command may
save a snapshot that does not restore, call the repository damaged when it is whole, or delete
what a snapshot needs."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from casnap.errors import IntegrityError
from tests.conftest import evolve_app, make_app
from tests.tcpproxy import CuttingProxy
from tests.test_s3 import bucket_objects, run
from tests.util import snapshot_tree

PW = "correct horse battery staple"


def _client() -> object:
    from casnap.backends.s3 import make_client

    return make_client()


@pytest.mark.parametrize("password", [None, PW], ids=["plain", "encrypted"])
def test_a_commit_stops_at_a_pack_deleted_from_the_bucket(
    password: str | None, s3_bucket: str, tmp_path: Path
) -> None:
    """Another tool deletes a pack the index names: the next commit that reads files would reuse
    its chunks (the index, kept in the local cache, still names them) and save a snapshot that
    cannot be restored. It stops instead, naming the pack and the way out."""
    repo = f"s3://{s3_bucket}/app"
    data = tmp_path / "data"
    data.mkdir()
    kept = random.Random(5).randbytes(300_000)
    (data / "kept.bin").write_bytes(kept)
    init = ("init", "-q") if password else ("init", "-q", "--encryption", "none")
    assert run(repo, data, *init, password=password)[0] == 0
    code, out, err = run(repo, data, "commit", "-q", password=password)
    assert code == 0, err
    (lost,) = [k for k in bucket_objects(s3_bucket) if k.startswith("app/packs/")]
    client = _client()
    client.delete_object(Bucket=s3_bucket, Key=lost)  # type: ignore[attr-defined]
    client.close()  # type: ignore[attr-defined]
    (data / "copy.bin").write_bytes(kept)  # every chunk "already stored", in the lost pack
    code, out, err = run(repo, data, "commit", "-q", password=password)
    assert code == IntegrityError.exit_code, out + err
    (line,) = err.strip().splitlines()
    assert lost.rsplit("/", 1)[-1][:8] in line and "repair-index" in line, line
    code, out, _ = run(repo, data, "log", "--json", password=password)
    assert out.count('"id"') == 1  # nothing committed


@pytest.mark.parametrize("password", [None, PW], ids=["plain", "encrypted"])
def test_a_store_that_ignores_the_range_header_is_read_right(
    password: str | None,
    s3_server: str,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTP lets a server ignore a Range header and answer 200 with the whole object (a
    caching proxy in front of the store, a store that does not do ranges): the part asked for
    is in it. Reads through such a store restore the snapshot and verify it whole; casnap
    called every pack "truncated" (exit 5 and 9) though nothing was damaged."""
    repo = f"s3://{s3_bucket}/app"
    data = tmp_path / "data"
    make_app(data, rows=40, vectors=60)
    init = ("init", "-q") if password else ("init", "-q", "--encryption", "none")
    assert run(repo, data, *init, password=password)[0] == 0
    code, out, err = run(repo, data, "commit", "-q", password=password)
    assert code == 0, err
    monkeypatch.setenv("CASNAP_CACHE_DIR", str(tmp_path / "fresh-cache"))  # nothing kept here
    with CuttingProxy(s3_server) as proxy:
        monkeypatch.setenv("CASNAP_S3_ENDPOINT", proxy.endpoint)
        proxy.rewrite(rb"\r\n[Rr]ange: bytes=[0-9-]+", b"")
        code, out, err = run(
            repo,
            data,
            "checkout",
            "latest",
            "--to",
            str(tmp_path / "out"),
            "-q",
            password=password,
        )
        assert code == 0, err
        assert snapshot_tree(tmp_path / "out") == snapshot_tree(data)
        code, out, err = run(repo, data, "verify", "--read-data", password=password)
        assert code == 0, out + err
        assert proxy.rewritten


def test_gc_stops_when_the_listing_leaves_out_a_snapshot_this_host_knows(
    s3_server: str,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store whose listing of snapshots/ leaves a snapshot out (a listing bug, a lagging
    index of a store that promises consistency): gc took the snapshot for forgotten and deleted
    its data. A manifest this host keeps a copy of and the listing left out is looked up; found
    stored, the listing is not trusted and gc stops before deleting anything."""
    repo = f"s3://{s3_bucket}/app"
    data = tmp_path / "data"
    make_app(data, rows=40, vectors=60)
    assert run(repo, data, "init", "-q", "--encryption", "none")[0] == 0
    ids = []
    for step in range(2):
        evolve_app(data, step)
        code, out, err = run(repo, data, "commit", "-q")
        assert code == 0, err
        ids.append(out.strip())
    first, second = ids
    common = len(os.path.commonprefix([first, second]))
    shown = first[: common + 1]  # a listing of this prefix holds the first snapshot alone
    with CuttingProxy(s3_server) as proxy:
        monkeypatch.setenv("CASNAP_S3_ENDPOINT", proxy.endpoint)
        proxy.rewrite(
            rb"prefix=app%2Fsnapshots%2F&", b"prefix=app%2Fsnapshots%2F" + shown.encode() + b"&"
        )
        code, out, err = run(repo, data, "gc", "--max-unused", "0")
        assert proxy.rewritten
        assert code == 1, out + err
        (line,) = err.strip().splitlines()
        assert f"snapshots/{second}" in line and "listing" in line, line
    monkeypatch.setenv("CASNAP_S3_ENDPOINT", s3_server)
    code, out, err = run(repo, data, "verify", "--read-data")
    assert code == 0, out + err
    for sid in ids:
        code, out, err = run(repo, data, "checkout", sid, "--to", str(tmp_path / sid), "-q")
        assert code == 0, err
