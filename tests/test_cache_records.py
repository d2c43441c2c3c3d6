"""The user's cache dir is safe to damage: a record of what a checkout restored that does not
parse as one costs a full read of the data dir, never an error (restored.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from casnap import restored
from casnap.committer import commit
from casnap.repository import Repository
from casnap.restorer import checkout
from tests.helpers_reliability import casnap_env, run_casnap, small_app, small_config
from tests.util import one_row_wal_db

DAMAGED_RECORDS = {
    "files-a-list": lambda source: {"source": source, "files": []},
    "files-a-string": lambda source: {"source": source, "files": "x"},
    "infinite-fingerprint": lambda source: {"source": source, "files": {"a": [[1e999], "ab"]}},
    "record-a-list": lambda source: [source],
    "fingerprint-a-dict": lambda source: {"source": source, "files": {"a": [{"x": 1}, "ab"]}},
    "id-a-number": lambda source: {"source": source, "files": {"a": [[1, 2], 7]}},
}


@pytest.mark.parametrize("damage", DAMAGED_RECORDS.values(), ids=DAMAGED_RECORDS.keys())
def test_a_damaged_record_of_restored_files_costs_a_read_not_an_error(
    tmp_path: Path, damage
) -> None:
    data = small_app(tmp_path / "data")
    repo = Repository.init(tmp_path / "repo", small_config())
    sid = commit(repo, data).id
    checkout(repo, sid, data, safety_snapshot=False, smoke=False, force=True)
    records = list(Path(os.environ["CASNAP_CACHE_DIR"]).glob("*/restored/*.json"))
    assert len(records) == 1
    source = json.loads(records[0].read_bytes())["source"]
    records[0].write_text(json.dumps(damage(source)))
    (data / "a.txt").write_bytes(b"changed after the checkout\n")

    proc = run_casnap(["--repo", str(tmp_path / "repo"), "--data", str(data), "commit", "-q"])

    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    new = Repository.open(tmp_path / "repo").resolve("latest")
    restored = tmp_path / "out"
    checkout(Repository.open(tmp_path / "repo"), new.hex(), restored, smoke=False)
    assert (restored / "a.txt").read_bytes() == b"changed after the checkout\n"


FULL_CACHE = """
import json, os, sys
from pathlib import Path
mount = Path(sys.argv[1])
os.environ["CASNAP_CACHE_DIR"] = str(mount)
from casnap import restored
(mount / "rid" / "restored").mkdir(parents=True)
fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
try:
    while True:
        os.write(fd, bytes(1 << 16))
except OSError:
    pass
files = {f"f{i}": ((1, 2, 3, 4), "ab" * 32) for i in range(2000)}
restored.save("rid", restored.Restored("/some/data", files))
print(json.dumps({"left": sorted(p.name for p in (mount / "rid" / "restored").iterdir())}))
"""


def test_a_record_that_does_not_fit_in_the_cache_leaves_no_temp_file(tmp_path: Path) -> None:
    """A full disk under the cache dir costs the record, not a temp file left for good."""
    from tests.test_hostile import in_small_tmpfs

    assert in_small_tmpfs(tmp_path / "cache", FULL_CACHE, str(tmp_path / "cache")) == {"left": []}


def test_a_write_right_after_the_swap_is_not_recorded_as_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An app writing a restored file in place (same size) between the swap and the record of
    what the checkout placed: the record took the new fingerprint for the snapshot's entry, and
    the next commit reused that entry without reading the file, so no snapshot held the
    write. A file the checkout placed has the entry's mtime; one with another was written."""
    from casnap import restored

    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_bytes(b"first")
    repo = Repository.init(tmp_path / "repo")
    first = commit(repo, data).id
    (data / "notes.txt").write_bytes(b"later")
    commit(repo, data)
    real = restored.record

    def app_writes_first(repo_id: str, target: Path, placed: list, *rest: bool) -> None:
        with open(target / "notes.txt", "r+b") as f:
            f.write(b"third")
        real(repo_id, target, placed, *rest)

    monkeypatch.setattr(restored, "record", app_writes_first)
    checkout(repo, first, data, smoke=False)
    monkeypatch.setattr(restored, "record", real)
    sid = commit(repo, data).id
    out = tmp_path / "out"
    checkout(repo, sid, out, smoke=False)
    assert (out / "notes.txt").read_bytes() == b"third"


def test_a_wal_write_right_after_the_swap_is_not_recorded_as_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An app writing a restored WAL database between the swap and the record, then idle with
    its connection open: the database file keeps the entry's size and mtime, the write lies in
    a -wal no checkout leaves, and the record took that state for the snapshot's entry, so the
    next commit reused the entry and no snapshot held the write."""
    import contextlib
    import sqlite3

    from casnap import restored

    data = tmp_path / "data"
    data.mkdir()
    one_row_wal_db(data / "w.db")
    repo = Repository.init(tmp_path / "repo")
    first = commit(repo, data).id
    real = restored.record
    app: list[sqlite3.Connection] = []

    def app_writes_first(repo_id: str, target: Path, placed: list, *rest: bool) -> None:
        db = sqlite3.connect(target / "w.db", isolation_level=None)
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute("INSERT INTO t VALUES (2)")  # stays in the -wal: the app keeps it open
        app.append(db)
        real(repo_id, target, placed, *rest)

    monkeypatch.setattr(restored, "record", app_writes_first)
    checkout(repo, first, data, smoke=False)
    monkeypatch.setattr(restored, "record", real)
    try:
        sid = commit(repo, data).id
    finally:
        app[0].close()
    out = tmp_path / "out"
    checkout(repo, sid, out, smoke=False)
    with contextlib.closing(sqlite3.connect(out / "w.db")) as db:
        assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 2


def test_a_record_naming_files_whose_names_are_no_utf8_is_kept(tmp_path: Path) -> None:
    """A checkout of files whose names are no UTF-8 (read as lone surrogates) records them as
    restored like any other, so the next commit does not read them again."""
    data = tmp_path / "data"
    data.mkdir()
    names = [os.fsdecode(b"caf\xe9.txt"), "plain.txt"]
    for name in names:
        (data / name).write_text(f"content of {name!r}")
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data).id
    target = tmp_path / "out"
    checkout(repo, sid, target, safety_snapshot=False)
    kept = restored.load(repo.id, str(target))
    assert kept is not None and sorted(kept.files) == sorted(names)
    again = commit(repo, target)
    assert again.bytes_read == 0


def test_a_home_that_does_not_exist_is_never_created(tmp_path: Path) -> None:
    """A service user's HOME=/nonexistent (no XDG_CACHE_HOME, no CASNAP_CACHE_DIR): a commit
    and a checkout made that folder, and ~/.cache/casnap in it, to keep their records. The cache
    goes to the user's private temp folder instead, and the records still work there."""
    data = small_app(tmp_path / "data")
    home = tmp_path / "nonexistent"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {k: v for k, v in casnap_env().items() if k not in ("CASNAP_CACHE_DIR", "XDG_CACHE_HOME")}
    env |= {"HOME": str(home), "TMPDIR": str(scratch)}
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    for args in (["commit"], ["checkout", "latest", "--to", str(tmp_path / "out"), "--no-smoke"]):
        done = run_casnap([*base, *args], env=env)
        assert done.returncode == 0, done.stderr
    assert not home.exists()
    cache = scratch / f"casnap-{os.getuid()}" / "cache"
    assert any(p.name == "restored" for p in cache.rglob("*")), list(scratch.rglob("*"))
