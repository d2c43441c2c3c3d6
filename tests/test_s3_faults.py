"""An S3 store that misbehaves or is changed behind casnap's back: a pack deleted by another
tool, a store that ignores a Range header, a listing that leaves out a snapshot. No command may
save a snapshot that does not restore, call the repository damaged when it is whole, or delete
what a snapshot needs."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from casnap.errors import IntegrityError
from tests.test_s3 import bucket_objects, run

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
