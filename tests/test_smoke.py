"""Staged, smoke-checked checkout: a restore that fails a check leaves the target untouched."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
from click.testing import CliRunner

from casnap.cli import cli
from casnap.committer import commit
from casnap.errors import SmokeCheckFailed
from casnap.faiss_child import ProbeChild, probe_faiss
from casnap.formats.faiss import faiss_header, sidecar_of
from casnap.repository import Repository
from casnap.restorer import checkout
from casnap.smoke import smoke_check
from casnap.smoke_sqlite import check_sqlite
from tests.helpers_smoke import (
    CHECK_FAILED,
    DIM,
    break_index,
    evolve_app,
    leftovers,
    make_app,
    raw_tree,
    write_index,
)
from tests.util import snapshot_tree


def run(repo: Path, data: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--repo", str(repo), "--data", str(data), *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def app(tmp_path: Path) -> Path:
    return make_app(tmp_path / "data")


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(tmp_path / "repo")


def commit_broken(repo: Repository, app: Path, name: str, how: str) -> tuple[str, str]:
    """(good, broken) snapshot ids: the broken one holds an index FAISS cannot read; the data
    dir is back to the good state afterwards."""
    good = commit(repo, app).id
    break_index(app / "faiss" / name, how)
    broken = commit(repo, app).id
    checkout(repo, good, app)
    return good, broken


@pytest.mark.parametrize(("name", "how"), [("ivf.index", "truncate"), ("flat.index", "garbage")])
def test_unreadable_index_aborts_checkout_and_leaves_target_untouched(
    app: Path, repo: Repository, name: str, how: str
) -> None:
    _, broken = commit_broken(repo, app, name, how)
    before = raw_tree(app)
    dir_mtimes = [p.stat().st_mtime_ns for p in (app, app / "faiss")]
    with pytest.raises(SmokeCheckFailed) as err:
        checkout(repo, broken, app)
    assert f"faiss-read on faiss/{name}" in str(err.value)
    assert err.value.checks[0]["check"] == "faiss-read"
    assert err.value.checks[0]["path"] == f"faiss/{name}"
    assert raw_tree(app) == before
    assert [p.stat().st_mtime_ns for p in (app, app / "faiss")] == dir_mtimes
    assert leftovers(app.parent) == []
    assert len(repo.snapshots()) == 2  # no safety snapshot taken for a checkout that never ran


def test_cli_checkout_of_unreadable_index_exits_9_naming_check(app: Path, tmp_path: Path) -> None:
    repo_dir = tmp_path / "repo"
    code, good, _ = run(repo_dir, app, "commit")
    assert code == 0
    break_index(app / "faiss" / "ivf.index", "garbage")
    code, broken, _ = run(repo_dir, app, "commit")
    assert code == 0
    assert run(repo_dir, app, "checkout", good.strip())[0] == 0
    before = raw_tree(app)
    code, _, err = run(repo_dir, app, "checkout", broken.strip())
    assert code == CHECK_FAILED
    assert "faiss-read on faiss/ivf.index" in err and "untouched" in err
    assert len(err.strip().splitlines()) == 1
    assert raw_tree(app) == before and leftovers(app.parent) == []
    # the way past a check the user judges wrong (a store casnap misreads) is named
    assert "--no-smoke restores it without these checks" in err, err
    code, _, err = run(repo_dir, app, "checkout", broken.strip(), "--no-smoke")
    assert code == 0, err


def test_index_already_in_place_is_checked_too(app: Path, repo: Repository) -> None:
    commit(repo, app)
    break_index(app / "faiss" / "ivf.index", "truncate")
    broken = commit(repo, app).id
    before = raw_tree(app)
    with pytest.raises(SmokeCheckFailed, match="faiss-read on faiss/ivf.index"):
        checkout(repo, broken, app)  # nothing to write, but the result would not pass
    assert raw_tree(app) == before


def test_no_smoke_restores_anyway(app: Path, repo: Repository) -> None:
    _, broken = commit_broken(repo, app, "ivf.index", "truncate")
    r = checkout(repo, broken, app, smoke=False)
    assert r.smoke is None and r.files_written == 1
    with pytest.raises(RuntimeError):
        faiss.read_index(str(app / "faiss" / "ivf.index"))


def test_no_smoke_still_runs_the_smoke_command(app: Path, repo: Repository) -> None:
    _, broken = commit_broken(repo, app, "ivf.index", "truncate")
    with pytest.raises(SmokeCheckFailed) as err:
        checkout(repo, broken, app, smoke=False, smoke_cmd="exit 4")
    assert [c["check"] for c in err.value.checks] == ["smoke-cmd"]
    r = checkout(repo, broken, app, smoke=False, smoke_cmd="true")
    assert [c["check"] for c in r.smoke["checks"]] == ["smoke-cmd"] and r.files_written == 1


def test_smoke_command_failure_leaves_target_untouched(app: Path, repo: Repository) -> None:
    first = commit(repo, app).id
    evolve_app(app)
    commit(repo, app)
    before = raw_tree(app)
    with pytest.raises(SmokeCheckFailed) as err:
        checkout(repo, first, app, smoke_cmd="echo 'search returned nothing' >&2; exit 1")
    assert "smoke-cmd" in str(err.value) and "exit code 1" in str(err.value)
    assert "search returned nothing" in str(err.value)
    assert raw_tree(app) == before and leftovers(app.parent) == []


def test_smoke_command_sees_whole_staged_dir(app: Path, repo: Repository, tmp_path: Path) -> None:
    first = commit(repo, app).id
    evolve_app(app)  # app.db and two indexes change; hnsw and its sidecar do not
    commit(repo, app)
    seen = tmp_path / "seen.txt"
    cmd = (
        'test -d "$CASNAP_STAGED_DIR" && test -f "$CASNAP_STAGED_DIR/app.db" && '
        f'(cd "$CASNAP_STAGED_DIR" && find . -type f | sort) > {seen}'
    )
    r = checkout(repo, first, app, smoke_cmd=cmd)
    assert r.smoke is not None and r.smoke["ok"]
    assert r.smoke["checks"][-1]["check"] == "smoke-cmd"
    listed = seen.read_text().split()
    assert "./faiss/hnsw.index" in listed and "./app.db" in listed  # unchanged files included
    assert leftovers(app.parent) == []


def test_smoke_command_sees_other_files_on_partial_checkout(
    app: Path, repo: Repository, tmp_path: Path
) -> None:
    first = commit(repo, app).id
    evolve_app(app)
    cmd = 'test -f "$CASNAP_STAGED_DIR/app.db" && test -f "$CASNAP_STAGED_DIR/faiss/ivf.index"'
    pair = ["faiss/ivf.index", "faiss/ivf.meta.json"]
    r = checkout(repo, first, app, pair, smoke_cmd=cmd, safety_snapshot=False)
    assert r.written == pair
    assert leftovers(app.parent) == []


def test_partial_checkout_of_index_without_its_sidecar_fails(app: Path, repo: Repository):
    first = commit(repo, app).id
    evolve_app(app)  # ivf.index and its sidecar now say 307
    before = raw_tree(app)
    with pytest.raises(SmokeCheckFailed, match="ntotal 300 but faiss/ivf.meta.json says 307"):
        checkout(repo, first, app, ["faiss/ivf.index"], safety_snapshot=False)
    assert raw_tree(app) == before


def test_a_smoke_command_that_writes_changes_only_its_copy(
    app: Path, repo: Repository, tmp_path: Path
) -> None:
    first = commit(repo, app).id
    expected = snapshot_tree(app)
    evolve_app(app)
    commit(repo, app)
    seen = tmp_path / "seen"
    cmd = (
        'echo extra >> "$CASNAP_STAGED_DIR/faiss/flat.index" && '
        'rm "$CASNAP_STAGED_DIR/app.db" && echo "$CASNAP_STAGED_DIR" > ' + str(seen)
    )
    r = checkout(repo, first, app, smoke_cmd=cmd)
    assert r.smoke is not None and [c["check"] for c in r.smoke["checks"]][-1] == "smoke-cmd"
    assert snapshot_tree(app) == expected  # what was verified, not what the command wrote
    copy = Path(seen.read_text().strip())
    assert copy.parent == app.parent and not copy.exists()  # beside the stage, then removed
    assert leftovers(app.parent) == []


def test_a_stale_sidecar_is_a_warning_at_commit_and_at_checkout_alike(
    app: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    assert run(repo, app, "commit")[0] == 0
    index = faiss.read_index(str(app / "faiss" / "flat.index"))
    write_index(index, app / "faiss" / "flat.index", ntotal=index.ntotal + 3)
    code, out, err = run(repo, app, "commit", "--json", "--tag", "stale")
    assert code == 0 and json.loads(out)["damage"] == []
    assert "says ntotal 4003 but the index holds 4000" in err
    assert run(repo, app, "commit", "--strict")[0] == CHECK_FAILED
    code, out, err = run(repo, app, "checkout", "stale", "--to", str(tmp_path / "o"), "--json")
    assert code == 0, err
    (warned,) = [c for c in json.loads(out)["smoke"]["checks"] if c["warning"]]
    assert (warned["check"], warned["path"], warned["ok"]) == (
        "faiss-ntotal",
        "faiss/flat.index",
        True,
    )
    assert err == (
        "casnap: warning: faiss-ntotal on faiss/flat.index: index holds ntotal 4000 but "
        "faiss/flat.meta.json says 4003\n"
    )
    code, out, err = run(repo, app, "-q", "checkout", "stale", "--to", str(tmp_path / "q"))
    assert code == 0 and err == ""  # -q: a warning of nothing a checkout refuses is silenced
    code, out, _ = run(repo, app, "verify", "--smoke", "stale")
    assert code == 0 and "  warn faiss-ntotal" in out


def test_corrupt_database_fails_integrity_check(app: Path, repo: Repository) -> None:
    good = commit(repo, app).id
    db = app / "app.db"
    raw = bytearray(db.read_bytes())
    page = int.from_bytes(raw[16:18], "big")
    for off in range(page + 100, 2 * page - 8):  # scribble over page 2 (a table b-tree page)
        raw[off] = 0x55
    db.write_bytes(bytes(raw))
    bad = commit(repo, app).id
    checkout(repo, good, app)
    before = raw_tree(app)
    with pytest.raises(SmokeCheckFailed, match="sqlite-integrity on app.db"):
        checkout(repo, bad, app)
    assert raw_tree(app) == before


def test_partial_checkout_checks_only_what_it_restores(app: Path, repo: Repository) -> None:
    _, broken = commit_broken(repo, app, "ivf.index", "garbage")
    evolve_app(app)
    commit(repo, app)
    with pytest.raises(SmokeCheckFailed, match="faiss/ivf.index"):
        checkout(repo, broken, app, ["faiss/ivf.index"])
    r = checkout(repo, broken, app, ["app.db"])
    assert r.written == ["app.db"]
    assert {c["path"] for c in r.smoke["checks"]} == {"app.db"}


def test_an_index_restored_beside_a_newer_sidecar_says_to_restore_the_sidecar_too(
    app: Path, repo: Repository
) -> None:
    old = commit(repo, app).id
    evolve_app(app)  # the indexes grow and their sidecars say so
    commit(repo, app)
    with pytest.raises(SmokeCheckFailed, match="restore faiss/ivf.meta.json with it"):
        checkout(repo, old, app, ["faiss/ivf.index"])
    r = checkout(repo, old, app, ["faiss/ivf.index", "faiss/ivf.meta.json"])
    assert r.smoke is not None and r.smoke["ok"]


def test_checkout_reports_checks_and_tables(app: Path, repo: Repository, tmp_path: Path) -> None:
    sid = commit(repo, app).id
    r = checkout(repo, sid, tmp_path / "fresh")
    checks = {(c["check"], c["path"]): c for c in r.smoke["checks"]}
    assert checks[("sqlite-tables", "app.db")]["info"]["tables"] == {"documents": 60, "tags": 10}
    for name in ("flat", "ivf", "hnsw"):
        assert checks[("faiss-search", f"faiss/{name}.index")]["ok"]
        assert checks[("faiss-ntotal", f"faiss/{name}.index")]["ok"]
    assert checks[("faiss-read", "faiss/ivf.index")]["info"]["type"] == "IndexIVFFlat"


def test_failed_checkout_into_new_dir_leaves_nothing(app: Path, repo: Repository, tmp_path: Path):
    _, broken = commit_broken(repo, app, "flat.index", "truncate")
    target = tmp_path / "new" / "place"
    with pytest.raises(SmokeCheckFailed):
        checkout(repo, broken, target)
    assert not (tmp_path / "new").exists()


def test_stale_staging_dir_of_dead_process_is_removed(app: Path, repo: Repository) -> None:
    sid = commit(repo, app).id
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    stale = [
        app / f".casnap-tmp-stage-{proc.pid}-dead",
        app.parent / f".casnap-tmp-stage-{proc.pid}-x",
    ]
    for d in stale:
        (d / "faiss").mkdir(parents=True)
        (d / "faiss" / "x.index").write_bytes(b"half")
    live = app / f".casnap-tmp-stage-{os.getpid()}-mine"  # this process runs: kept
    live.mkdir()
    checkout(repo, sid, app)
    assert not any(d.exists() for d in stale) and live.exists()


def test_verify_smoke_reports_without_touching_data(app: Path, tmp_path: Path) -> None:
    repo_dir = tmp_path / "repo"
    repo = Repository.init(repo_dir)
    good, broken = commit_broken(repo, app, "hnsw.index", "garbage")
    before = raw_tree(app)
    code, out, err = run(repo_dir, app, "verify", "--smoke", broken)
    assert code == CHECK_FAILED
    assert "FAIL faiss-read" in out and "faiss/hnsw.index" in out
    assert "faiss-read on faiss/hnsw.index" in err
    code, out, _ = run(repo_dir, app, "verify", "--smoke", good, "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"]
    (smoked,) = report["smoke"]
    assert smoked["id"] == good and smoked["ok"] and smoked["files"] == 7
    assert {c["check"] for c in smoked["smoke"]["checks"]} >= {"sqlite-integrity", "faiss-search"}
    code, _, _ = run(repo_dir, app, "verify", "--smoke", good, "--smoke-cmd", "exit 3")
    assert code == CHECK_FAILED
    assert raw_tree(app) == before and leftovers(app.parent) == []
    assert leftovers(repo_dir) == []


def test_verify_smoke_restores_each_snapshot_once(app: Path, tmp_path: Path) -> None:
    """`verify --smoke-cmd CMD ID latest` naming one snapshot twice restored it and ran CMD twice
    (a long restore paid twice, and a report with the snapshot in it twice)."""
    repo_dir = tmp_path / "repo"
    repo = Repository.init(repo_dir)
    sid = commit(repo, app).id
    log = tmp_path / "ran.log"
    cmd = f"echo ran >> {log}"
    code, out, _ = run(
        repo_dir, app, "verify", sid, sid[:8], "latest", "--smoke-cmd", cmd, "--json"
    )
    assert code == 0
    assert log.read_text() == "ran\n"
    assert [s["id"] for s in json.loads(out)["smoke"]] == [sid]


def test_faiss_header_recognises_indexes_by_content(tmp_path: Path) -> None:
    x = np.random.default_rng(1).standard_normal((50, DIM)).astype("float32")
    indexes = {
        "IndexFlatIP": faiss.IndexFlatIP(DIM),
        "IndexHNSWFlat": faiss.IndexHNSWFlat(DIM, 4),
        "IndexScalarQuantizer": faiss.IndexScalarQuantizer(DIM, faiss.ScalarQuantizer.QT_8bit),
        "IndexIDMap": faiss.IndexIDMap(faiss.IndexFlatL2(DIM)),
    }
    for name, index in indexes.items():
        index.train(x)
        if name == "IndexIDMap":
            index.add_with_ids(x, np.arange(50, dtype="int64"))
        else:
            index.add(x)
        path = tmp_path / f"{name}.bin"  # no .index suffix: recognised by content
        faiss.write_index(index, str(path))
        header = faiss_header(path.read_bytes()[:64])
        assert header is not None and header.type == name and header.ntotal == 50, name
    binary = faiss.IndexBinaryFlat(64)
    binary.add(np.zeros((3, 8), dtype="uint8"))
    faiss.write_index_binary(binary, str(tmp_path / "b.bin"))
    header = faiss_header((tmp_path / "b.bin").read_bytes()[:64])
    assert header is not None and header.binary and header.ntotal == 3
    garbage = faiss_header(b"IxF2" + bytes(range(60)))
    assert garbage is not None and garbage.ntotal is None
    assert faiss_header(b"Introduction to the data dir\n" * 3) is None
    assert faiss_header(b"SQLite format 3\x00" + bytes(48)) is None


def test_probe_passes_empty_and_binary_indexes(tmp_path: Path) -> None:
    empty = tmp_path / "empty.index"
    faiss.write_index(faiss.IndexFlatL2(DIM), str(empty))
    binary = tmp_path / "bin.index"
    index = faiss.IndexBinaryFlat(64)
    index.add(np.arange(80, dtype="uint8").reshape(10, 8))
    faiss.write_index_binary(index, str(binary))
    r_empty, r_bin = probe_faiss([(empty, False), (binary, True)])
    assert r_empty["ok"] and r_empty["ntotal"] == 0
    assert r_bin["ok"] and r_bin["ntotal"] == 10 and r_bin["type"] == "IndexBinaryFlat"


def test_index_without_header_but_with_sidecar_is_checked(tmp_path: Path) -> None:
    (tmp_path / "a.index").write_bytes(b"")
    (tmp_path / "a.meta.json").write_text(json.dumps({"ntotal": 5}))
    (tmp_path / "notes.index").write_bytes(b"plain text, no sidecar")
    view = {p.name: p for p in tmp_path.iterdir()}
    report = smoke_check(view, view)
    assert [(c.check, c.path, c.ok) for c in report.checks] == [("faiss-read", "a.index", False)]
    assert sidecar_of("faiss/shard_000.index") == "faiss/shard_000.meta.json"


def test_check_sqlite_reports_rows_and_rejects_junk(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE t(a)")
        conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(7)])
        conn.commit()
    ok = check_sqlite(db, "x.db")
    assert [c.ok for c in ok] == [True, True] and ok[1].info["tables"] == {"t": 7}
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 20)
    bad = check_sqlite(junk, "junk.db")
    assert len(bad) == 1 and not bad[0].ok and bad[0].check == "sqlite-integrity"


def test_sample_app_with_random_bytes_in_an_index(tmp_path: Path) -> None:
    from casnap import sample

    data = tmp_path / "data"
    sample.generate(data, size_mb=3, seed=4)
    repo = Repository.init(tmp_path / "repo")
    good = commit(repo, data).id
    victim = data / "faiss" / "shard_001.index"
    victim.write_bytes(np.random.default_rng(9).bytes(victim.stat().st_size))  # no FAISS header
    broken = commit(repo, data).id
    checkout(repo, good, data)
    before = raw_tree(data)
    with pytest.raises(SmokeCheckFailed, match="faiss-read on faiss/shard_001.index"):
        checkout(repo, broken, data)
    with pytest.raises(SmokeCheckFailed, match="smoke-cmd"):
        checkout(repo, good, data, smoke_cmd='test ! -f "$CASNAP_STAGED_DIR/app.db"')
    assert raw_tree(data) == before and leftovers(tmp_path) == []


def test_faiss_reader_that_does_not_finish_fails_the_check(
    app: Path, repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    from casnap import faiss_child

    first = commit(repo, app).id
    evolve_app(app)
    before = raw_tree(app)
    monkeypatch.setattr(faiss_child, "FAISS_PROBE_TIMEOUT", 0.001)  # the child cannot even start
    with pytest.raises(SmokeCheckFailed, match="did not finish") as err:
        checkout(repo, first, app, safety_snapshot=False)
    assert {c["check"] for c in err.value.checks} == {"faiss-read"}
    assert raw_tree(app) == before and leftovers(app.parent) == []


@pytest.mark.parametrize("private", [False, True], ids=["read", "mapped"])
def test_an_index_cut_short_is_said_to_end_early_in_plain_words(
    tmp_path: Path, private: bool
) -> None:
    """FAISS's own text for a short read ("'ret == (size)' failed: read error in : 3998 != 65536
    (Success)", the file name empty when mapped, a staging path otherwise) names neither the
    file the user knows nor what went wrong; the check says the file ends early."""
    path = tmp_path / "ivf.index"
    index = faiss.IndexFlatL2(DIM)
    index.add(np.random.default_rng(5).random((300, DIM), dtype="float32"))
    write_index(index, path)
    break_index(path, "truncate")
    child = ProbeChild()
    assert child.send(path, False, private=private)
    results, *_ = child.finish()
    detail = next(iter(results.values()))["detail"]
    assert detail.startswith("cannot be read: the file ends early"), detail
    assert "read error in" not in detail and "(Success)" not in detail
    assert str(tmp_path) not in detail


def test_a_smoke_command_that_writes_into_the_stage_itself_fails_the_checkout(
    tmp_path: Path,
) -> None:
    """The command runs on a copy of the stage; one that finds the stage beside its copy and
    writes there would put bytes no hash verified in place: the checkout fails instead,
    naming the file, and the target keeps what it held."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("v1")
    repo = Repository.init(tmp_path / "repo")
    first = commit(repo, data).id
    (data / "notes.txt").write_text("v2")
    commit(repo, data)
    cmd = (
        'for d in "$CASNAP_STAGED_DIR"/../.casnap-tmp-stage-*; do '
        '[ "$(cd "$d" && pwd -P)" = "$(cd "$CASNAP_STAGED_DIR" && pwd -P)" ] || '
        'printf tampered > "$d/notes.txt"; done'
    )
    with pytest.raises(SmokeCheckFailed, match="modified notes.txt"):
        checkout(repo, first, data, smoke=False, smoke_cmd=cmd, safety_snapshot=False)
    assert (data / "notes.txt").read_text() == "v2"


def test_an_empty_file_taken_for_an_index_is_said_to_be_empty(tmp_path: Path) -> None:
    """A 0-byte `.index` beside a sidecar: FAISS's words were 'could not mmap(): Invalid
    argument' where the checkout maps it."""
    from casnap.faiss_probe import probe

    empty = tmp_path / "empty.index"
    empty.write_bytes(b"")
    for mapped in (False, True):
        r = probe(str(empty), False, mapped)
        assert not r["ok"] and r["detail"] == "cannot be read: the file is empty (0 bytes)"
