"""A file whose chunk list cannot be read (its pack cut short, or damaged) is named by checkout,
cat and diff: the error says which file it spoils, not only which chunk."""

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
