"""casnap copy from and into S3 repositories holding objects another tool (or a hostile one) put
there: a manifest that does not read is passed over, as on a local repository."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import evolve_app, make_app
from tests.test_s3 import run
from tests.util import snapshot_tree

GARBAGE = "snapshots/" + "0" * 64  # a snapshot's name, holding no manifest


def plant(bucket: str, key: str, body: bytes) -> None:
    from casnap.backends.s3 import make_client

    client = make_client()
    client.put_object(Bucket=bucket, Key=key, Body=body)
    client.close()


def two_snapshots(repo: str, data: Path) -> list[str]:
    """Two commits of an evolving data dir into repo (plain): their ids."""
    make_app(data, rows=60, vectors=120)
    ids = []
    for step in range(2):
        if step:
            evolve_app(data, step)
        code, out, err = run(repo, data, "commit", "-q")
        assert code == 0, err
        ids.append(out.strip())
    return ids


def test_a_manifest_of_the_s3_source_that_does_not_read_stops_no_other_snapshot(
    s3_bucket: str, tmp_path: Path
) -> None:
    """A garbage object under snapshots/ of an S3 source had every intact snapshot reported
    'not copied ... damaged in the source', each naming the garbage object, and nothing was
    copied (exit 5): reading a file's chunk lists ahead listed the snapshots without passing over
    the one that does not read. A local source copied the intact ones."""
    data, src = tmp_path / "data", f"s3://{s3_bucket}/src"
    assert run(src, data, "init", "--encryption", "none")[0] == 0
    ids = two_snapshots(src, data)
    plant(s3_bucket, f"src/{GARBAGE}", b"garbage{")
    dst = tmp_path / "dst"
    code, out, err = run(src, data, "copy", "--to", str(dst), "--json")
    assert code == 5, err
    result = json.loads(out)
    assert result["copied"] == 2
    assert [d["source"] for d in result["damaged"]] == ["0" * 64]
    target = tmp_path / "restored"
    code, _, err = run(str(dst), data, "checkout", ids[1][:8], "--to", str(target), "-q")
    assert code == 0, err
    assert snapshot_tree(target) == snapshot_tree(data)


def test_a_manifest_of_the_s3_destination_that_does_not_read_stops_no_copy(
    s3_bucket: str, tmp_path: Path
) -> None:
    """A garbage object under snapshots/ of an S3 destination stopped every copy into it once
    its packs and index file were written (exit 5, 'in the destination ...: corrupt manifest',
    pointing to repair-index): the read-back of the copied chunk lists listed the destination's
    snapshots without passing over the one that does not read. A commit passes over it."""
    data, src, dst = tmp_path / "data", tmp_path / "src", f"s3://{s3_bucket}/dst"
    ids = two_snapshots(str(src), data)
    assert run(dst, data, "init", "--encryption", "none")[0] == 0
    plant(s3_bucket, f"dst/{GARBAGE}", b"garbage{")
    code, out, err = run(str(src), data, "copy", "--to", dst, "--json")
    assert code == 0, err
    assert json.loads(out)["copied"] == 2
    code, out, err = run(dst, data, "log", "--json")
    assert code == 0, err
    assert {s["id"] for s in json.loads(out)} == set(ids)
    target = tmp_path / "restored"
    code, _, err = run(dst, data, "checkout", ids[1][:8], "--to", str(target), "-q")
    assert code == 0, err
    assert snapshot_tree(target) == snapshot_tree(data)
