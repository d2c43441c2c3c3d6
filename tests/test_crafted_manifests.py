"""Crafted manifests a hostile tester built: each is refused with one error line and the
documented exit code (never an internal error), and `verify` finds what `checkout` refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from casnap.backends import LocalBackend
from casnap.committer import commit
from casnap.errors import IntegrityError
from casnap.ids import hash_bytes
from casnap.manifest import Snapshot, compress_manifest, decompress_manifest
from casnap.repository import Repository
from tests.helpers_reliability import run_casnap, small_app, small_config
from tests.test_hostile import one_line


@pytest.fixture
def made(tmp_path: Path) -> tuple[Path, Path, str]:
    """A local repository with one snapshot of a small real data dir."""
    data = small_app(tmp_path / "data")
    repo = Repository.init(tmp_path / "repo", small_config())
    sid = commit(repo, data).id
    return tmp_path / "repo", data, sid


def manifest_of(repo_dir: Path, sid: str) -> dict:
    raw = decompress_manifest(LocalBackend(repo_dir).get(f"snapshots/{sid}"), "m")
    return json.loads(raw)


def store(repo_dir: Path, d: dict) -> str:
    """Store d as a manifest (canonical JSON, as casnap writes it); its id."""
    raw = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    sid = hash_bytes(raw).hex()
    LocalBackend(repo_dir).put(f"snapshots/{sid}", compress_manifest(raw))
    return sid


def cli(repo: Path, data: Path, *args: str):
    return run_casnap(["--repo", str(repo), "--data", str(data), *args])


# -- the manifest's time --------------------------------------------------------------------------

BAD_TIMES = [
    "garbage",
    "2026-12-07T00:00:00+05:00",
    "1-01-01T00:00:00.000000Z",  # what casnap once wrote for year 1
    "0001-01-01T00:00:00.000000Z",  # shown in local time west of Greenwich: year 0
    "2025-02-30T00:00:00.000000Z",
    "2025-01-01T00:00:00.000000",
    " 2025-01-01T00:00:00.000000Z",
]


@pytest.mark.parametrize("when", BAD_TIMES)
def test_a_malformed_time_is_an_integrity_error(made: tuple[Path, Path, str], when: str) -> None:
    repo_dir, _, sid = made
    d = manifest_of(repo_dir, sid)
    d["time"] = when
    raw = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(IntegrityError, match="time"):
        Snapshot.decode(raw, "snapshots/x")
    with pytest.raises(IntegrityError, match="time"):
        Snapshot.decode_head(raw, "snapshots/x", lambda: raw)


def test_times_casnap_writes_are_read(made: tuple[Path, Path, str]) -> None:
    repo_dir, _, sid = made
    d = manifest_of(repo_dir, sid)
    for when in ("1000-01-01T00:00:00.000000Z", "1969-07-20T20:17:40.000000Z", d["time"]):
        d["time"] = when
        raw = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
        assert Snapshot.decode(raw).time == when


@pytest.mark.parametrize("when", ["garbage", "2026-12-07T00:00:00+05:00"])
def test_listing_commands_refuse_a_malformed_time(made: tuple[Path, Path, str], when: str) -> None:
    repo_dir, data, sid = made
    d = manifest_of(repo_dir, sid)
    d["time"] = when
    bad = store(repo_dir, d)
    for args in (["log"], ["show", bad], ["stats"], ["prune", "--keep-last", "1"]):
        one_line(cli(repo_dir, data, *args), 5, f"snapshots/{bad}.*time")


# -- a file entry's chunker -----------------------------------------------------------------------


def nested(depth: int) -> dict:
    value: dict = {"name": "fastcdc"}
    for _ in range(depth):
        value = {"x": value}
    return value


@pytest.mark.parametrize(
    "chunker",
    [
        nested(600),
        nested(2),
        {"name": "faiss-cdc", "vectors": [[4096]]},
        {"name": "fastcdc", "extra": {"min": 1}},
        {f"k{i}": i for i in range(200)},
        {"name": "faiss-cdc", "vectors": list(range(100))},
        ["name", "fastcdc"],
    ],
    ids=["deep", "nested", "list-in-list", "object", "many-fields", "long-list", "not-object"],
)
def test_a_chunker_holding_more_than_parameters_is_refused(
    made: tuple[Path, Path, str], chunker: object
) -> None:
    repo_dir, _, sid = made
    d = manifest_of(repo_dir, sid)
    d["files"][0]["chunker"] = chunker
    raw = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(IntegrityError, match="chunker"):
        Snapshot.decode(raw, "snapshots/x")


def test_chunkers_casnap_writes_are_read(made: tuple[Path, Path, str]) -> None:
    repo_dir, _, sid = made
    d = manifest_of(repo_dir, sid)
    kept = Snapshot.decode(json.dumps(d).encode())
    assert {f.chunker["name"] for f in kept.files} >= {"sqlite", "faiss-cdc", "fastcdc"}
    d["files"][0]["chunker"] = {"name": "x", "f": 0.5, "big": 1 << 70, "n": None, "l": [1, "a"]}
    raw = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    assert Snapshot.decode(raw).encode() == raw


def test_a_deeply_nested_chunker_is_an_integrity_error_everywhere(
    made: tuple[Path, Path, str], tmp_path: Path
) -> None:
    repo_dir, data, sid = made
    d = manifest_of(repo_dir, sid)
    d["files"][0]["chunker"] = nested(600)
    bad = store(repo_dir, d)
    target = tmp_path / "target"
    first = d["files"][0]["path"]
    for args in (
        ["show", bad],
        ["ls", bad],
        ["cat", bad, first],
        ["diff", sid, bad],
        ["checkout", bad, "--to", str(target)],
        ["gc"],
    ):
        one_line(cli(repo_dir, data, *args), 5, f"snapshots/{bad}.*chunker")
    assert not target.exists()
    one_line(cli(repo_dir, data, "verify"), 9, f"damaged snapshot.*{bad[:8]}")
