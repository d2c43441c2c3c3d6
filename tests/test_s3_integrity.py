"""What guards the bytes of an s3:// repository on their way, against a real S3 HTTP server
(moto on 127.0.0.1, tests/s3server.py): every upload carries the CRC32 of its body for the store
to check (the SHA-256 SigV4 would add over plain HTTP is not computed: the CRC32 catches a body
damaged on its way, and casnap checks every object's hash when it reads it), and a pack damaged
in the bucket is caught by checkout and by `verify --read-data`."""

from __future__ import annotations

import base64
import os
import random
import zlib
from pathlib import Path
from typing import Any

import pytest

from casnap import Repository
from casnap.backends.s3 import S3Backend, make_client
from casnap.errors import CheckFailed, IntegrityError
from casnap.locations import S3Url
from tests.conftest import make_app
from tests.s3server import make_bucket
from tests.test_s3 import run
from tests.util import snapshot_tree

PW = "integrity on the wire"


def test_a_put_sends_the_crc32_of_its_body_and_does_not_hash_it_for_the_signature(
    s3_bucket: str,
) -> None:
    make_bucket(s3_bucket)
    backend = S3Backend(S3Url(s3_bucket, "x"))
    sent: list[dict[str, Any]] = []

    def note(request: Any, **_: Any) -> None:
        if request.method == "PUT":
            sent.append({k.lower(): v for k, v in request.headers.items()})

    backend._client.meta.events.register("before-send.s3", note)
    body = random.Random(3).randbytes(3 * 1024 * 1024 + 5)
    try:
        assert backend.put("packs/00/a", body)
        assert backend.get("packs/00/a") == body
    finally:
        backend.close()
    (headers,) = sent
    crc = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
    assert headers["x-amz-checksum-crc32"] in (crc, crc.encode())
    assert headers["x-amz-content-sha256"] in ("UNSIGNED-PAYLOAD", b"UNSIGNED-PAYLOAD")


def _damage_one_pack(bucket: str) -> str:
    """Flip a byte in the middle of the largest pack of the bucket, in place: the damage a
    store or a path could do to a stored body. Its key."""
    client = make_client()
    try:
        packs = [
            item
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for item in page.get("Contents", ())
            if "/packs/" in item["Key"]
        ]
        key = max(packs, key=lambda item: item["Size"])["Key"]
        body = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        body[len(body) // 2] ^= 0x40
        client.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    finally:
        client.close()
    return key


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_pack_damaged_in_the_bucket_is_caught(
    encrypted: bool, s3_bucket: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    make_app(data, rows=150, vectors=240)
    (data / "random.bin").write_bytes(random.Random(5).randbytes(3 * 1024 * 1024))
    repo = f"s3://{s3_bucket}/x"
    pw = PW if encrypted else None
    init = ["init"] + ([] if encrypted else ["--encryption", "none"])
    code, _, err = run(repo, data, *init, password=pw)
    assert code == 0, err
    code, _, err = run(repo, data, "commit", "-q", password=pw)
    assert code == 0, err
    target = tmp_path / "whole"
    code, _, err = run(repo, data, "checkout", "latest", "--to", str(target), "-q", password=pw)
    assert code == 0, err
    assert snapshot_tree(target) == snapshot_tree(data)

    _damage_one_pack(s3_bucket)
    target = tmp_path / "damaged"
    code, _, err = run(repo, data, "checkout", "latest", "--to", str(target), "-q", password=pw)
    assert code != 0
    assert not target.exists() or snapshot_tree(target) != snapshot_tree(data)
    code, out, _ = run(repo, data, "verify", "--read-data", password=pw)
    assert code == CheckFailed.exit_code, out
    assert "damaged" in out


def test_the_client_is_made_without_listing_every_bundled_service_model(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore checks the name of the service a client is made for by listing all of its ~400
    bundled models (a third of making the client); casnap's loader knows only S3's, and the
    client still works."""
    import botocore

    data = str(Path(botocore.__file__).parent / "data")
    listed: list[str] = []
    real = os.listdir

    def listdir(path: Any = ".") -> list[str]:
        listed.append(os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "listdir", listdir)
    client = make_client()
    monkeypatch.setattr(os, "listdir", real)
    try:
        bucket = "casnap-listing-check"
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="k", Body=b"v")
        assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        assert [item["Key"] for page in pages for item in page["Contents"]] == ["k"]
    finally:
        client.close()
    assert listed, "botocore lists no folder at all: this test no longer sees what it checks"
    assert data not in {p.rstrip("/") for p in listed}


def test_a_pack_cut_short_in_the_bucket_names_the_file_past_the_cut(
    s3_bucket: str, tmp_path: Path
) -> None:
    """A span of a pack is fetched in one request; when the pack was cut short, the files whose
    frames lie before the cut still restore, and the error names the file past it, with its
    damaged chunk, not the first file whose span failed."""
    data = tmp_path / "data"
    data.mkdir()
    rng = random.Random(8)
    (data / "a.bin").write_bytes(rng.randbytes(2 * 1024 * 1024))
    (data / "b.bin").write_bytes(rng.randbytes(2 * 1024 * 1024))
    repo = f"s3://{s3_bucket}/x"
    assert run(repo, data, "init", "--encryption", "none")[0] == 0
    code, _, err = run(repo, data, "commit", "-q")
    assert code == 0, err
    code, _, err = run(repo, data, "checkout", "latest", "--to", str(tmp_path / "warm"), "-q")
    assert code == 0, err  # the chunk lists are now kept in the local cache
    with Repository.open(repo) as opened:
        opened.ensure_index()
        snap = opened.load_snapshot(opened.resolve("latest"))
        (b,) = [e for e in snap.files if e.path == "b.bin"]
        first = opened.store.entry(opened.chunk_refs(b)[0][0])
    client = make_client()
    try:
        key = f"x/packs/{first.pack.hex()[:2]}/{first.pack.hex()}"
        body = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        client.put_object(Bucket=s3_bucket, Key=key, Body=body[: first.offset + 100])
    finally:
        client.close()
    target = tmp_path / "cut"
    code, _, err = run(repo, data, "checkout", "latest", "--to", str(target), "-q")
    assert code == IntegrityError.exit_code, err
    assert "b.bin: chunk " in err and "a.bin" not in err, err
    assert "truncated" in err, err
