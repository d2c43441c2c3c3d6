"""A plain file the app deletes between the commit's scan and its read (an app that deletes and
makes files all the time) is left out of the snapshot, as if the scan had not seen it, with one
warning line: the commit succeeds, where it failed with "vanished while committing" (exit 7).
--strict refuses it (exit 9, nothing committed), as it refuses a snapshot with any consistency
problem. A database that vanishes still stops the commit.

The file is deleted at a chosen backend call (tests.faults: "call" hooks in process, "unlink"
for the command line): a pack written while an earlier file is read, so after the scan and the
checks and before the file's own read, with no test hook in casnap.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path

import faiss
import numpy as np
import pytest

from casnap.backends import MemoryBackend
from casnap.checker import verify
from casnap.committer import commit
from casnap.errors import EXIT_CODES, EmptySnapshot, SourceError
from casnap.repository import Repository
from casnap.restorer import checkout
from tests import faults as F
from tests.helpers_rag import LANGCHAIN_DIR, make_langchain
from tests.helpers_reliability import casnap_env, run_casnap, small_config

PACK = 4096  # small packs: the first is written while the first large file is read
VECTORS = 64_000  # a 4 MiB index: 8000 vectors (0.5 MiB) were read whole, sidecar too, before a
# busy machine ran the first pack's put
GONE = "vanished before it was read (deleted meanwhile); left out of the snapshot"


def _churn(data: Path) -> None:
    """big.bin (3 MiB, read on its own first), then churn/f00..f19 (small)."""
    rng = np.random.default_rng(5)
    (data / "churn").mkdir(parents=True)
    (data / "big.bin").write_bytes(rng.bytes(3 << 20))
    for n in range(20):
        (data / "churn" / f"f{n:02}").write_bytes(rng.bytes(300 + n))


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _repo(tmp_path: Path, hook: F.Fault) -> Repository:
    backend = F.FaultyBackend(MemoryBackend(), [hook])
    return Repository.init_backend(backend, small_config(PACK), tmp_path / "t")


def _unlink(*paths: Path) -> F.Fault:
    """At the first pack written: the app deletes paths."""

    def gone(_key: str) -> None:
        for p in paths:
            p.unlink()

    return F.call_after("put", 1, gone, "packs/")


def _restored(repo: Repository, sid: str, out: Path) -> dict[str, bytes]:
    checkout(repo, sid, out, safety_snapshot=False, smoke=False)
    return _files(out)


def test_a_file_deleted_before_its_read_is_left_out_with_one_warning(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _churn(data)
    repo = _repo(tmp_path, _unlink(data / "churn" / "f17"))

    result = commit(repo, data)

    assert result.warnings == [f"churn/f17: {GONE}"]
    assert result.damage == [] and result.skipped == []
    assert result.files_new == 20
    (entry_paths,) = [[e.path for e in repo.load_snapshot(repo.resolve(result.id)).files]]
    assert "churn/f17" not in entry_paths and len(entry_paths) == 20
    assert _restored(repo, result.id, tmp_path / "out") == _files(data)
    assert verify(repo).ok


def test_a_file_deleted_while_it_is_read_is_left_out(tmp_path: Path) -> None:
    """The read goes on through the open descriptor; the file is gone when the read is
    checked, so what was read of it is not stored. Made again later, it is read as new."""
    data = tmp_path / "data"
    _churn(data)
    before = _files(data)
    repo = _repo(tmp_path, _unlink(data / "big.bin"))

    result = commit(repo, data)

    assert result.warnings == [f"big.bin: {GONE}"]
    assert result.files_new == 20
    assert _restored(repo, result.id, tmp_path / "out") == _files(data)
    assert verify(repo).ok
    (data / "big.bin").write_bytes(before["big.bin"])
    again = commit(repo, data)
    assert again.warnings == [] and again.files_new == 1 and again.files_unchanged == 20
    assert _restored(repo, again.id, tmp_path / "again") == before


def test_a_file_deleted_and_made_again_while_it_is_read_is_stored_as_made(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    _churn(data)
    big = data / "big.bin"
    new = np.random.default_rng(9).bytes(1 << 20)

    def remade(_key: str) -> None:
        big.unlink()
        big.write_bytes(new)

    repo = _repo(tmp_path, F.call_after("put", 1, remade, "packs/"))
    result = commit(repo, data)
    assert result.warnings == []
    assert _restored(repo, result.id, tmp_path / "out")["big.bin"] == new


def test_a_database_deleted_before_its_read_still_stops_the_commit(tmp_path: Path) -> None:
    """A database is the data an app keeps; a snapshot without it is no snapshot of the app,
    so its vanishing is an error as before (exit 7), and nothing is committed."""
    data = tmp_path / "data"
    _churn(data)
    with contextlib.closing(sqlite3.connect(data / "churn" / "z.db")) as db:
        db.execute("CREATE TABLE t(x)")
        db.execute("INSERT INTO t VALUES (1)")
        db.commit()
    repo = _repo(tmp_path, _unlink(data / "churn" / "z.db"))

    with pytest.raises(SourceError, match=r"churn/z\.db vanished while committing"):
        commit(repo, data)
    assert repo.snapshots() == []


@pytest.mark.parametrize("new", ["app.db.tmp", "staging/app.db"], ids=["beside", "staging"])
def test_a_database_renamed_over_another_meanwhile_is_left_out_under_its_old_name(
    tmp_path: Path, new: str
) -> None:
    """An app that saves by writing a new database beside its own (`VACUUM INTO`, a copy), or in
    a folder of its own inside the data dir, and renaming it over: the scan saw both, the new
    one is gone by its read. Its bytes are the database's under the name it was renamed to,
    which the commit reads: the old name is left out with a warning saying where it went, and
    the commit succeeds (it stopped with exit 7, as for a deleted database)."""
    data = tmp_path / "data"
    _churn(data)
    (data / "churn" / "staging").mkdir()
    for name, rows in (("app.db", 1), (new, 5)):
        with contextlib.closing(sqlite3.connect(data / "churn" / name)) as db:
            db.execute("CREATE TABLE t(x)")
            db.executemany("INSERT INTO t VALUES (?)", [(n,) for n in range(rows)])
            db.commit()

    def renamed(_key: str) -> None:
        os.rename(data / "churn" / new, data / "churn" / "app.db")

    repo = _repo(tmp_path, F.call_after("put", 1, renamed, "packs/"))
    result = commit(repo, data)

    (warning,) = result.warnings
    assert warning.startswith(f"churn/{new}: renamed to churn/app.db meanwhile"), warning
    restored = _restored(repo, result.id, tmp_path / "out")
    assert f"churn/{new}" not in restored
    with contextlib.closing(sqlite3.connect(tmp_path / "out" / "churn" / "app.db")) as db:
        (rows,) = db.execute("SELECT count(*) FROM t").fetchone()
    assert rows == 5  # read after the rename: the new database
    assert verify(repo).ok


def test_a_database_renamed_out_of_the_data_dir_still_stops_the_commit(tmp_path: Path) -> None:
    """Renamed to a name the commit does not read (outside the data dir): the database is gone
    from the snapshot, as if deleted, so the commit stops as for a deleted one."""
    data = tmp_path / "data"
    _churn(data)
    with contextlib.closing(sqlite3.connect(data / "churn" / "z.db")) as db:
        db.execute("CREATE TABLE t(x)")
        db.commit()

    def moved(_key: str) -> None:
        os.rename(data / "churn" / "z.db", tmp_path / "z.db")

    repo = _repo(tmp_path, F.call_after("put", 1, moved, "packs/"))
    with pytest.raises(SourceError, match=r"churn/z\.db vanished while committing"):
        commit(repo, data)
    assert repo.snapshots() == []


def _index_and_sidecar(data: Path, stated: int) -> None:
    """faiss/flat.index (VECTORS: read on its own, the first of many packs written early in its
    read, so a hook on that put runs long before the sidecar is read) and its sidecar
    stating ntotal `stated`."""
    (data / "faiss").mkdir(parents=True)
    index = faiss.IndexFlatL2(16)
    index.add(np.random.default_rng(3).standard_normal((VECTORS, 16)).astype("float32"))
    faiss.write_index(index, str(data / "faiss" / "flat.index"))
    (data / "faiss" / "flat.meta.json").write_text(json.dumps({"ntotal": stated}))


def test_a_sidecar_deleted_before_its_read_leaves_the_index_alone_judged(tmp_path: Path) -> None:
    """The commit checked the index against a sidecar that disagrees (a warning), then the
    sidecar went before it was read: the snapshot holds the index alone, which a checkout's
    smoke checks find nothing wrong with, so the warning about the pair goes too."""
    data = tmp_path / "data"
    _index_and_sidecar(data, stated=VECTORS - 1)
    repo = _repo(tmp_path, _unlink(data / "faiss" / "flat.meta.json"))

    result = commit(repo, data)

    assert result.warnings == [f"faiss/flat.meta.json: {GONE}"]
    files = [e.path for e in repo.load_snapshot(repo.resolve(result.id)).files]
    assert files == ["faiss/flat.index"]
    out = tmp_path / "out"
    done = checkout(repo, result.id, out, safety_snapshot=False)
    assert done.smoke is not None and done.smoke["ok"], done.smoke


def test_an_index_deleted_before_its_read_takes_its_problems_along(tmp_path: Path) -> None:
    """An index cut short (damage a checkout refuses, said even with -q) that the app then
    deleted: the snapshot does not hold it, so neither its damage nor its pair's warning
    stands."""
    data = tmp_path / "data"
    (data / "a.bin").parent.mkdir(parents=True)
    (data / "a.bin").write_bytes(np.random.default_rng(4).bytes(3 << 20))
    _index_and_sidecar(data / "z", stated=VECTORS)
    index = data / "z" / "faiss" / "flat.index"
    index.write_bytes(index.read_bytes()[:100_000])  # cut short
    repo = _repo(tmp_path, _unlink(index))

    result = commit(repo, data)

    assert result.warnings == [f"z/faiss/flat.index: {GONE}"]
    assert result.damage == []


def _cli_world(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    data = tmp_path / "data"
    _churn(data)
    repo = tmp_path / "repo"
    Repository.init(repo, small_config(PACK)).close()
    env = casnap_env(**{F.UNLINK: str(data / "churn" / "f17")})
    return data, repo, env


@pytest.mark.parametrize("flags", [[], ["-q"], ["--json"]])
def test_the_command_line_warns_once_and_succeeds(tmp_path: Path, flags: list[str]) -> None:
    data, repo, env = _cli_world(tmp_path)
    args = ["--repo", str(repo), "--data", str(data), "commit", *flags]

    done = run_casnap(args, env=env, faults="put:unlink:1:packs/")

    assert done.returncode == 0, done.stderr
    warned = [x for x in done.stderr.splitlines() if "warning" in x]
    if flags == ["-q"]:
        assert warned == []
    else:
        assert warned == [f"casnap: warning: churn/f17: {GONE}"]
    if flags == ["--json"]:
        assert json.loads(done.stdout)["warnings"] == [f"churn/f17: {GONE}"]
    assert not os.path.exists(data / "churn" / "f17")


def test_strict_refuses_a_snapshot_a_file_vanished_from(tmp_path: Path) -> None:
    data, repo, env = _cli_world(tmp_path)
    args = ["--repo", str(repo), "--data", str(data), "commit", "--strict"]

    done = run_casnap(args, env=env, faults="put:unlink:1:packs/")

    assert done.returncode == EXIT_CODES["check-failed"], done.stderr
    assert done.stderr.splitlines() == [
        "casnap: error: 1 consistency problem(s), nothing committed: churn/f17: deleted while "
        "committing (--strict)"
    ]
    assert not (repo / "snapshots").exists() or not list((repo / "snapshots").iterdir())
    assert not list((repo / "locks").iterdir())


def test_a_store_file_deleted_before_its_read_leaves_the_store_judged_as_stored(
    tmp_path: Path,
) -> None:
    """A LangChain store whose index.pkl the app deleted after the scan: the commit says of the
    store what it says of one found without that file, where its check of the store as the
    scan saw it said the file could not be read."""
    data = tmp_path / "data"
    make_langchain(data)
    (data / "a.bin").write_bytes(np.random.default_rng(6).bytes(3 << 20))  # read first
    pkl = data / LANGCHAIN_DIR / "index.pkl"
    repo = _repo(tmp_path, _unlink(pkl))

    result = commit(repo, data)

    found_without = commit(Repository.init(tmp_path / "without"), data)
    assert result.warnings == [*found_without.warnings, f"{LANGCHAIN_DIR}/index.pkl: {GONE}"]
    assert result.damage == found_without.damage


def test_a_commit_whose_every_file_vanished_is_refused_as_empty(tmp_path: Path) -> None:
    """As if the scan had found nothing: a commit that would store no file where the last
    snapshot held some is refused (exit 7), unless allow_empty."""
    data = tmp_path / "data"
    data.mkdir()
    big = data / "big.bin"
    big.write_bytes(np.random.default_rng(8).bytes(3 << 20))
    armed: list[bool] = []

    def gone(_key: str) -> None:
        if armed:
            big.unlink(missing_ok=True)

    repo = _repo(tmp_path, F.Fault("put", "call", 1, "packs/", None, gone))
    commit(repo, data)
    big.write_bytes(np.random.default_rng(9).bytes(3 << 20))  # changed: read again
    armed.append(True)

    with pytest.raises(EmptySnapshot):
        commit(repo, data)
    assert len(repo.snapshots()) == 1
    big.write_bytes(np.random.default_rng(10).bytes(3 << 20))
    assert commit(repo, data, allow_empty=True).warnings == [f"big.bin: {GONE}"]
