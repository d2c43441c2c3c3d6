"""A pack deleted behind casnap's back (by hand, or a disk's damage) while the index still names
it: a commit that would reuse chunks stops, naming the pack and the way out, instead of saving a
snapshot that cannot be restored."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from casnap.errors import IntegrityError
from tests.test_encryption import PW, run
from tests.util import snapshot_tree


def packs_of(repo: Path) -> set[Path]:
    return {p for p in (repo / "packs").rglob("*") if p.is_file()}


@pytest.mark.parametrize("how", ["deleted", "emptied", "cut"])
@pytest.mark.parametrize("password", [None, PW], ids=["plain", "encrypted"])
def test_a_commit_stops_at_a_pack_the_index_names_and_the_repository_lacks(
    password: str | None, how: str, tmp_path: Path
) -> None:
    data, repo = tmp_path / "data", tmp_path / "repo"
    data.mkdir()
    rng = random.Random(5)
    kept = rng.randbytes(300_000)
    (data / "kept.bin").write_bytes(kept)
    code, out, err = run(repo, data, "commit", "-q", password=password)
    assert code == 0, err
    (lost,) = packs_of(repo)
    if how == "deleted":
        lost.unlink()
    elif how == "emptied":  # a file of no bytes where the pack was (a disk's damage)
        lost.write_bytes(b"")
    else:  # a copy cut short: its first half is there, the frames its index names end later
        with lost.open("r+b") as f:
            f.truncate(lost.stat().st_size // 2)
    # the same bytes under a new name: every chunk is "already stored", in the lost pack
    (data / "copy.bin").write_bytes(kept)
    code, out, err = run(repo, data, "commit", "-q", password=password)
    assert code == IntegrityError.exit_code, out + err
    (line,) = err.strip().splitlines()
    assert lost.name[:8] in line and "repair-index" in line, line
    code, out, _ = run(repo, data, "log", "--json", password=password)
    assert out.count('"id"') == 1  # nothing committed

    code, _, err = run(repo, data, "repair-index", password=password)
    assert code == 9, err  # the first snapshot lost its chunks
    code, out, err = run(repo, data, "commit", "-q", password=password)
    assert code == 0, err
    target = tmp_path / "out"
    code, _, err = run(repo, data, "checkout", out.strip(), "--to", str(target), password=password)
    assert code == 0, err
    assert snapshot_tree(target) == snapshot_tree(data)
