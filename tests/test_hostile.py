"""Hostile and bad input: crafted manifests, damaged repositories, fuzzed parsers, and every
user error the CLI can meet answered with one line on stderr and the documented exit code."""

from __future__ import annotations

from pathlib import Path

import pytest

from casnap.backends import MemoryBackend
from casnap.repository import Repository
from tests.helpers_reliability import small_app


@pytest.mark.parametrize("cut", [16, 100, 3000, 20_000], ids=lambda n: f"first-{n}-bytes")
def test_damaged_database_in_the_data_dir_is_kept_as_bytes(tmp_path: Path, cut: int) -> None:
    """A file that starts like SQLite but that SQLite cannot read is stored as it is: a backup
    tool keeps what is there rather than refusing to snapshot anything."""
    data = small_app(tmp_path / "data")
    whole = (data / "app.db").read_bytes()
    (data / "broken.db").write_bytes(whole[:cut] + b"\xff" * 5000)
    repo = Repository.init_backend(MemoryBackend(), tmp_dir=tmp_path / "t")
    sid = repo.commit(data).id
    kinds = {f.path: f.kind for f in repo.load_snapshot(repo.resolve(sid)).files}
    assert kinds["broken.db"] == "file" and kinds["app.db"] == "sqlite"
    out = tmp_path / "out"
    repo.checkout(sid, out, safety_snapshot=False)
    assert (out / "broken.db").read_bytes() == (data / "broken.db").read_bytes()
