"""After repair-index drops chunks, the next commit of unchanged files stores them again instead
of reusing entries that name them (the stat cache would otherwise save a broken snapshot)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.conftest import make_app
from tests.test_encryption import PW, run
from tests.util import snapshot_tree


@pytest.mark.parametrize("password", [None, PW], ids=["plain", "encrypted"])
def test_a_commit_after_a_lossy_repair_heals(password: str | None, tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_app(data, rows=200, vectors=400)
    for f in data.rglob("*"):  # older than any racy window: the stat cache trusts them
        os.utime(f, (time.time() - 3600, time.time() - 3600))
    repo = tmp_path / "backups"
    assert run(repo, data, "commit", "-q", password=password)[0] == 0
    pack = max(
        (p for p in (repo / "packs").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    raw = bytearray(pack.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    pack.write_bytes(bytes(raw))
    code, out, err = run(repo, data, "repair-index", "--json", password=password)
    assert json.loads(out)["missing"] > 0, err
    assert code == 9, err  # as without --json: blobs the snapshots need are lost
    assert err.startswith("casnap: error: repair-index:") and len(err.strip().splitlines()) == 1
    code, out, err = run(repo, data, "commit", "-m", "heal", "--json", password=password)
    assert code == 0, err
    healed = json.loads(out)
    assert healed["bytes_read"] > 0  # files were read again, not reused by fingerprint
    code, out, err = run(repo, data, "verify", "--read-data", "--json", password=password)
    assert healed["id"] not in json.loads(out).get("affected", []), out
    target = tmp_path / "out"
    code, _, err = run(repo, data, "checkout", "latest", "--to", str(target), password=password)
    assert code == 0, err
    assert snapshot_tree(target) == snapshot_tree(data)
    code, out, err = run(repo, data, "commit", "--json", password=password)
    again = json.loads(out)
    assert again["bytes_read"] == 0, again  # and the next commit reuses entries again


def test_objects_under_packs_that_are_no_packs_are_not_counted_as_packs(tmp_path: Path) -> None:
    """Files another tool left under packs/ are left out and named, and the summary counts the
    packs read and the packs damaged apart from them: none is damaged here."""
    data = tmp_path / "data"
    make_app(data, rows=40, vectors=60)
    repo = tmp_path / "backups"
    assert run(repo, data, "commit", "-q", password=None)[0] == 0
    packs = sum(1 for p in (repo / "packs").rglob("*") if p.is_file())
    (repo / "packs" / "notes.txt").write_text("mine\n")
    (repo / "packs" / "ab").mkdir(exist_ok=True)
    (repo / "packs" / "ab" / "abcdef").write_text("mine too\n")
    code, out, err = run(repo, data, "repair-index", password=None)
    assert code == 0, err
    assert "packs/notes.txt: not a pack name; left out" in out, out
    assert f"from {packs} packs, 0 pack(s) damaged, 2 other object(s) left out" in err, err
    code, out, err = run(repo, data, "repair-index", "--json", password=None)
    assert code == 0, err
    report = json.loads(out)
    assert report["packs"] == packs and len(report["skipped"]) == 2, report
