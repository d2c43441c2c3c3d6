"""Checkout from an s3:// repository (moto on 127.0.0.1, tests/s3server.py): snapshots committed
on this host are planned from the chunk lists kept in the local cache, without a ranged GET of a
list; with a cold cache the lists are read (and kept), and the restore is byte-identical."""

from __future__ import annotations

from pathlib import Path

import pytest

from casnap import Repository
from casnap.backends import s3
from casnap.manifest import FileEntry
from tests.conftest import evolve_app, make_app
from tests.test_s3 import run
from tests.util import snapshot_tree


def test_a_checkout_from_s3_plans_from_the_kept_chunk_lists(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    make_app(data, rows=150, vectors=240)
    repo = f"s3://{s3_bucket}/x"
    assert run(repo, data, "init", "--encryption", "none")[0] == 0
    for step in range(2):
        if step:
            evolve_app(data, step)
        code, _, err = run(repo, data, "commit", "-q")
        assert code == 0, err
    state = snapshot_tree(data)
    reads: list[str] = []  # the objects of every GET made
    during: list[str] = []  # of those, the ones made while chunk lists were resolved
    real_get = s3.S3Backend._get
    real_resolve = Repository.resolve_lists

    def counted(self: s3.S3Backend, key: str, name: str, offset: int, length: int | None) -> bytes:
        reads.append(key)
        return real_get(self, key, name, offset, length)

    def resolving(self: Repository, entry: FileEntry) -> tuple[bytes, int, int]:
        before = len(reads)
        try:
            return real_resolve(self, entry)
        finally:
            during.extend(reads[before:])

    monkeypatch.setattr(s3.S3Backend, "_get", counted)
    monkeypatch.setattr(Repository, "resolve_lists", resolving)

    for n, cold in enumerate((False, True)):
        if cold:  # another host's view: nothing kept
            monkeypatch.setenv("CASNAP_CACHE_DIR", str(tmp_path / "cold-cache"))
        target = tmp_path / f"out{n}"
        code, _, err = run(repo, data, "checkout", "latest", "--to", str(target), "-q")
        assert code == 0, err
        assert snapshot_tree(target) == state
        assert reads  # the data
        lists = [key for key in during if key.startswith("packs/")]
        assert bool(lists) == cold, lists
        reads.clear()
        during.clear()
