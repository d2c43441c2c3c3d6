"""Damage is named by the file it spoils, not only by its chunk: a chunk list that cannot be read
(its pack cut short, or damaged) in checkout, cat and diff, a damaged chunk in copy."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap.cli import cli
from casnap.committer import commit
from casnap.errors import IntegrityError
from casnap.ids import ObjectId
from casnap.packs import pack_key
from casnap.repository import Repository
from tests.helpers_gc import flip_byte


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stderr


@pytest.mark.parametrize("size", [3000, 3 * 1024 * 1024], ids=["small", "large"])
@pytest.mark.parametrize("damage", ["flipped", "cut"])
def test_an_unreadable_chunk_list_names_its_file(tmp_path: Path, size: int, damage: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rng = random.Random(size)
    (data / "kept.bin").write_bytes(rng.randbytes(size))
    (data / "spoilt.bin").write_bytes(rng.randbytes(size))
    root = tmp_path / "repo"
    repo = Repository.init(root)
    commit(repo, data)
    repo.ensure_index()
    snap = repo.load_snapshot(repo.resolve("latest"))
    (entry,) = [e for e in snap.files if e.path == "spoilt.bin"]
    e = repo.store.entry(ObjectId.from_hex(entry.lists[0]))
    repo.close()
    pack = root / pack_key(e.pack)
    if damage == "flipped":
        flip_byte(pack, e.offset + e.length // 2)
    else:
        with open(pack, "r+b") as f:
            f.truncate(e.offset + 1)
    common = ("-q", "--repo", str(root), "--data", str(data))
    out = tmp_path / "out"
    for args in (
        ("checkout", "latest", "--to", str(out), "--no-safety-snapshot"),
        ("cat", "latest", "spoilt.bin"),
        ("diff", "latest"),
    ):
        (data / "spoilt.bin").write_bytes(b"changed")  # diff reads the snapshot's side
        code, err = run(*common, *args)
        assert code == IntegrityError.exit_code, (args, err)
        assert "spoilt.bin: its chunk list: chunk " in err, (args, err)
    assert not out.exists()


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_copy_names_the_file_of_a_damaged_chunk(tmp_path: Path, encrypted: bool) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "spoilt.bin").write_bytes(random.Random(4).randbytes(300_000))
    root = tmp_path / "repo"
    repo = Repository.init(root, password="pw" if encrypted else None)
    commit(repo, data)
    repo.ensure_index()
    (entry,) = [
        e for e in repo.load_snapshot(repo.resolve("latest")).files if e.path == "spoilt.bin"
    ]
    e = repo.store.entry(repo.chunk_refs(entry)[1][0])
    repo.close()
    flip_byte(root / pack_key(e.pack), e.offset + e.length // 2)
    env = {"CASNAP_PASSWORD": "pw", "CASNAP_TO_PASSWORD": "pw"} if encrypted else {}
    result = CliRunner().invoke(
        cli,
        ["-q", "--repo", str(root), "copy", "--to", str(tmp_path / "other")],
        env={**env, "CASNAP_TO_PASSWORD_FILE": None, "CASNAP_PASSWORD_FILE": None},
    )
    assert result.exit_code == IntegrityError.exit_code, result.stderr
    assert "spoilt.bin" in result.stderr, result.stderr
