"""Another casnap repository kept inside the data dir (or a checkout target) is never stored by a
commit, and a checkout neither removes nor writes anything inside it, as for the repository
itself."""

from __future__ import annotations

import json
import os
from pathlib import Path

from casnap.ids import ObjectId
from casnap.repository import Repository
from tests.helpers_reliability import verify_repository
from tests.test_mistakes import run
from tests.util import raw_tree


def ok(cwd: Path, *args: str) -> str:
    proc = run(cwd, *args)
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc.stdout + proc.stderr


def stored_paths(repo_dir: Path) -> set[str]:
    repo = Repository.open(repo_dir)
    return {f.path for _sid, snap in repo.snapshots() for f in snap.files}


def test_a_repository_inside_the_data_dir_is_neither_stored_nor_dismantled(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a")
    # an older snapshot holding plain files where the other repository will be
    (data / "sub" / "inner").mkdir(parents=True)
    (data / "sub" / "inner" / "config").write_text("plain")
    (data / "sub" / "inner" / "notes.txt").write_text("n")
    old = ok(tmp_path, "commit", "-q").strip()
    for p in (data / "sub" / "inner").iterdir():
        p.unlink()
    (data / "sub" / "inner").rmdir()
    first = ok(tmp_path, "commit", "-q").strip()
    (data / "sub" / "s.txt").write_text("s")
    ok(tmp_path, "--repo", "data/sub/inner", "--data", "data/sub", "commit", "-q")
    inner = data / "sub" / "inner"
    before = raw_tree(inner)

    out = ok(tmp_path, "commit", "--json")
    result = json.loads(out[: out.rindex("}") + 1])
    assert any("sub/inner" in n and "casnap repository" in n for n in result["notes"]), out
    snap = Repository.open(tmp_path / "backups").snapshot(ObjectId.from_hex(result["id"]))
    assert [f.path for f in snap.files] == ["a.txt", "sub/s.txt"]

    for sid in (first, old):
        out = ok(tmp_path, "checkout", sid)
        assert raw_tree(inner) == before, out
    assert "sub/inner/config" in out and "skipped" in out
    assert not (data / "sub" / "s.txt").exists()  # the rest of the checkout did happen
    ok(tmp_path, "--repo", "data/sub/inner", "log")
    verify_repository(Repository.open(inner))
    verify_repository(Repository.open(tmp_path / "backups"))


def test_a_copy_kept_inside_the_data_dir_survives_a_checkout(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "db").mkdir(parents=True)
    for i in range(5):
        (data / "db" / f"f{i}.bin").write_bytes(os.urandom(2000 + i))
    first = ok(tmp_path, "commit", "-q").strip()
    ok(tmp_path, "copy", "--to", "data/offsite")
    offsite = data / "offsite"
    before = raw_tree(offsite)
    (data / "db" / "f0.bin").write_bytes(b"changed")
    (data / "new.txt").write_text("new")
    out = ok(tmp_path, "commit")
    assert "offsite" in out and "casnap repository" in out, out
    assert not [p for p in stored_paths(tmp_path / "backups") if p.startswith("offsite")]

    ok(tmp_path, "checkout", first)
    assert raw_tree(offsite) == before
    assert not (data / "new.txt").exists()
    listed = json.loads(ok(tmp_path, "--repo", "data/offsite", "log", "--json", "-q"))
    assert [s["id"] for s in listed] == [first]
    ok(tmp_path, "--repo", "data/offsite", "verify")
    verify_repository(Repository.open(offsite))
