"""Checkout never loses data: verification before swap, safety snapshots, stale WAL, busy DB."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from casnap import presave
from casnap.committer import commit
from casnap.constants import SAFETY_TAG
from casnap.errors import DatabaseBusy, IntegrityError, SourceError
from casnap.manifestfields import MAX_PATH_DEPTH
from casnap.repository import Repository
from casnap.restorer import checkout
from tests.conftest import evolve_app
from tests.helpers_rag import evolve_langchain, make_langchain, query_langchain
from tests.helpers_reliability import dead_pid
from tests.util import one_row_wal_db, raw_tree, snapshot_tree


def flip_byte_in_packs(repo_dir: Path) -> None:
    """Flip one byte in the first frame of every pack (app.db's first pages: files are committed
    in path order, and every test here restores app.db)."""
    for pack in (repo_dir / "packs").rglob("*"):
        if pack.is_file():
            data = bytearray(pack.read_bytes())
            data[40] ^= 0xFF
            pack.write_bytes(bytes(data))


@pytest.mark.parametrize("into_existing", [False, True])
def test_corrupt_pack_fails_checkout_and_leaves_target_untouched(
    app: Path, tmp_path: Path, into_existing: bool
) -> None:
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, app).id
    target = tmp_path / "target"
    if into_existing:
        shutil.copytree(app, target)
        evolve_app(target, 1)  # different content, so files would be replaced
    else:
        target.mkdir()
    before = raw_tree(target)
    flip_byte_in_packs(tmp_path / "repo")
    with pytest.raises(IntegrityError) as err:
        checkout(Repository.open(tmp_path / "repo"), sid, target, safety_snapshot=False)
    assert "chunk" in str(err.value)
    assert raw_tree(target) == before
    assert not [p for p in target.rglob("*") if p.name.startswith(".casnap-tmp-")]


def test_checkout_saves_unsaved_data_first(app: Path, tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    first = commit(repo, app).id
    evolve_app(app, 1)
    (app / "notes.txt").write_text("written after the last snapshot")
    unsaved = snapshot_tree(app)
    r = checkout(repo, first, app)
    assert r.safety_snapshot is not None
    safety = repo.load_snapshot(repo.resolve(r.safety_snapshot))
    assert SAFETY_TAG in safety.tags
    assert not (app / "notes.txt").exists()
    checkout(repo, SAFETY_TAG, app)  # the tag names the newest safety snapshot
    assert snapshot_tree(app) == unsaved


def test_files_no_snapshot_can_hold_are_left_in_place(app: Path, tmp_path: Path) -> None:
    """A file whose path a manifest refuses (a backslash, a drive letter, folders nested past
    MAX_PATH_DEPTH) cannot be saved by the safety snapshot: a full checkout removed it all
    the same, and it was lost. It is left where it is, as a folder or a link is."""
    repo = Repository.init(tmp_path / "repo")
    first = commit(repo, app).id
    deep = app.joinpath(*["d"] * MAX_PATH_DEPTH)
    deep.mkdir(parents=True)
    odd = [app / "back\\slash.txt", app / "c:notes.txt", app / "faiss" / "x\\y", deep / "f"]
    for n, path in enumerate(odd):
        path.write_text(f"only copy {n}")
    (app / "notes.txt").write_text("written after the last snapshot")
    r = checkout(repo, first, app, smoke=False)
    assert r.safety_snapshot is not None
    for n, path in enumerate(odd):
        assert path.read_text() == f"only copy {n}"
    assert not (app / "notes.txt").exists()
    assert "notes.txt" in {f.path for f in repo.load_snapshot(repo.resolve(SAFETY_TAG)).files}


def test_data_written_while_a_checkout_runs_is_saved_first(app: Path, tmp_path: Path) -> None:
    """Files a snapshot held when the checkout planned, written again while it staged (an app
    still running): the swap replaced and removed them without saving the new content, since
    the plan had found nothing to save. The smoke command writes them here, as such an app
    would meanwhile."""
    repo = Repository.init(tmp_path / "repo")
    (app / "notes.txt").write_text("v1")
    first = commit(repo, app).id
    (app / "notes.txt").write_text("v2")
    (app / "extra.txt").write_text("a file the first snapshot lacks")
    commit(repo, app)
    write = (
        'printf "written during the checkout" > "$CASNAP_TARGET_DIR/notes.txt"; '
        'printf "also written during it" > "$CASNAP_TARGET_DIR/extra.txt"'
    )
    r = checkout(repo, first, app, smoke=False, smoke_cmd=write)
    assert (app / "notes.txt").read_text() == "v1" and not (app / "extra.txt").exists()
    assert r.safety_snapshot is not None
    out = tmp_path / "saved"
    checkout(repo, r.safety_snapshot, out, smoke=False)
    assert (out / "notes.txt").read_text() == "written during the checkout"
    assert (out / "extra.txt").read_text() == "also written during it"


def test_files_written_meanwhile_into_folders_the_target_lacked_are_saved_first(
    tmp_path: Path,
) -> None:
    """A checkout into a dir that lacks the snapshot's folders looks each folder up once; a
    process that makes one and writes files there while the checkout stages is still seen, and
    what it wrote is saved before the swap replaces it."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    for name in ("a.txt", "b.txt", "c.txt"):
        (data / "sub" / name).write_text(f"snapshot {name}")
    repo = Repository.init(tmp_path / "repo")
    snap = commit(repo, data).id
    target = tmp_path / "target"
    target.mkdir()
    write = 'mkdir "$CASNAP_TARGET_DIR/sub" && printf late > "$CASNAP_TARGET_DIR/sub/c.txt"'
    r = checkout(repo, snap, target, smoke=False, smoke_cmd=write)
    assert (target / "sub" / "c.txt").read_text() == "snapshot c.txt"
    assert r.safety_snapshot is not None
    out = tmp_path / "saved"
    checkout(repo, r.safety_snapshot, out, smoke=False)
    assert (out / "sub" / "c.txt").read_text() == "late"


def test_a_save_after_the_pre_checkout_snapshot_stops_the_swap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An app that saves its LangChain store (and its app.db) once more after the checkout took
    its pre-checkout snapshot and before the swap: the swap replaced that save, which no
    snapshot held. The checkout now stops before its first rename, the save left in place."""
    data = tmp_path / "data"
    make_langchain(data)
    repo = Repository.init(tmp_path / "repo")
    first = commit(repo, data).id
    evolve_langchain(data, 1)
    real = presave.save
    last: dict[str, bytes] = {}
    answers: list[list[list[str]]] = []

    def then_the_app_saves(*args: Any, **kwargs: Any) -> str:
        saved = real(*args, **kwargs)
        evolve_langchain(data, 2)  # the app's last save, after which it stops
        last.update(snapshot_tree(data))
        answers.append(query_langchain(data))
        return saved

    monkeypatch.setattr(presave, "save", then_the_app_saves)
    with pytest.raises(SourceError, match="written while the checkout ran"):
        checkout(repo, first, data)
    monkeypatch.undo()
    assert snapshot_tree(data) == last  # the last save is still there
    r = checkout(repo, first, data)  # the app stopped: it is saved, then replaced
    assert r.safety_snapshot is not None
    saved = tmp_path / "saved"
    checkout(repo, r.safety_snapshot, saved, safety_snapshot=False)
    assert snapshot_tree(saved) == last and query_langchain(saved) == answers[0]
    assert query_langchain(data) != answers[0]


def test_a_leftover_wal_read_by_the_plan_is_not_taken_for_a_write(tmp_path: Path) -> None:
    """A database whose -wal an app left (killed) is read by the plan through SQLite, which
    (as root) chowns the -wal, changing its ctime only: that is no write, and with everything
    held no safety snapshot is made."""
    data = tmp_path / "data"
    data.mkdir()
    one_row_wal_db(data / "w.db")
    repo = Repository.init(tmp_path / "repo")
    first = commit(repo, data).id
    app = "import os, sqlite3, sys; db = sqlite3.connect(sys.argv[1]); "
    app += "db.execute('INSERT INTO t VALUES (2)'); db.commit(); os._exit(0)"
    subprocess.run([sys.executable, "-c", app, str(data / "w.db")], check=True)
    assert (data / "w.db-wal").exists()
    commit(repo, data)
    r = checkout(repo, first, data, smoke=False)
    assert r.safety_snapshot is None and r.files_written == 1


def test_a_file_held_only_by_a_snapshot_whose_pack_is_gone_is_not_replaced(
    app: Path, tmp_path: Path
) -> None:
    """A file counts as saved when a snapshot holds its content; with that snapshot's pack gone
    (deleted by hand, expired by a bucket's lifecycle rule), a checkout removed the last copy of
    it. It now stops before touching anything, naming the file and the pack, and once
    repair-index and a commit stored the file again the checkout goes ahead."""
    from casnap.repair import repair_index

    repo_dir = tmp_path / "repo"
    repo = Repository.init(repo_dir)
    old = commit(repo, app).id
    packs_before = set((repo_dir / "packs").rglob("*"))
    (app / "precious.txt").write_text("written once, committed once")
    evolve_app(app, 1)
    commit(repo, app)
    for pack in set((repo_dir / "packs").rglob("*")) - packs_before:
        if pack.is_file():
            pack.unlink()  # the new snapshot's own chunks are gone
    before = raw_tree(app)
    repo = Repository.open(repo_dir)
    with pytest.raises(IntegrityError, match="^(app.db|precious.txt): .*repair-index") as err:
        checkout(repo, old, app)
    assert "packs/" in str(err.value) or "pack " in str(err.value)
    assert raw_tree(app) == before

    shutil.copytree(app, tmp_path / "copy", symlinks=True)
    checkout(repo, old, tmp_path / "copy", safety_snapshot=False, force=True)  # save nothing
    assert not (tmp_path / "copy" / "precious.txt").exists()

    repair_index(repo)
    healed = commit(repo, app).id  # reads the files again: the lost chunks are stored afresh
    checkout(repo, old, app)
    assert not (app / "precious.txt").exists()
    checkout(repo, healed, app)
    assert (app / "precious.txt").read_text() == "written once, committed once"


def test_latest_never_names_a_safety_snapshot(app: Path, tmp_path: Path) -> None:
    """A restore test forced into a scratch dir holding other files saves them as a
    pre-checkout snapshot; `latest` must still name the newest backup, or a later `checkout
    latest` of the data dir would replace it with the scratch dir's files."""
    repo = Repository.init(tmp_path / "repo")
    nightly = commit(repo, app).id
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "stray.txt").write_text("a file of the scratch dir")
    r = checkout(repo, nightly, scratch, force=True)  # a folder no checkout went into before
    assert r.safety_snapshot is not None
    assert repo.resolve("latest").hex() == nightly
    assert repo.resolve("latest", paths=[]).hex() == nightly
    assert repo.resolve("latest", tags=[SAFETY_TAG]).hex() == r.safety_snapshot
    assert repo.resolve(SAFETY_TAG).hex() == r.safety_snapshot  # the undo is named by its tag
    checkout(repo, "latest", app)
    assert not (app / "stray.txt").exists() and (app / "app.db").exists()


def test_no_safety_snapshot_when_everything_is_held(app: Path, tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    first = commit(repo, app).id
    evolve_app(app, 1)
    commit(repo, app)
    r = checkout(repo, first, app)
    assert r.safety_snapshot is None and r.files_written > 0
    assert len(repo.snapshots()) == 2


def test_stale_wal_is_removed_on_checkout(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db_path = data / "app.db"
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t(x)")
        db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
        db.commit()
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data).id
    # the app writes more rows; keep a copy of its WAL before it is checkpointed away
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100, 400)])
        db.commit()
        stale = (data / "app.db-wal").read_bytes()
    assert len(stale) > 0
    (data / "app.db-wal").write_bytes(stale)  # a WAL left over beside the database
    r = checkout(repo, sid, data)
    assert r.safety_snapshot is not None  # the 300 rows in the WAL were saved first
    assert not (data / "app.db-wal").exists()
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 100
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    saved = tmp_path / "saved"
    checkout(repo, r.safety_snapshot, saved, safety_snapshot=False)
    with contextlib.closing(sqlite3.connect(saved / "app.db")) as db:
        assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 400


HOLDER = r"""
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1])
db.execute("INSERT INTO docs(title, body) VALUES ('x', 'y')")
db.commit()
print("open", flush=True)
time.sleep(60)
"""


def test_checkout_refuses_a_database_open_elsewhere(app: Path, tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, app).id
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(app / "app.db")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
        before = raw_tree(app)
        with pytest.raises(DatabaseBusy, match="open in process"):
            checkout(repo, sid, app)
        assert raw_tree(app) == before
        r = checkout(repo, sid, app, force=True)
        assert r.written == ["app.db"]
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_checkout_removes_database_images_a_killed_run_left(app: Path, tmp_path: Path) -> None:
    from casnap.fsutil import HOST_TAG

    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, app).id
    scratch = tmp_path / "repo" / "tmp"
    scratch.mkdir(exist_ok=True)
    left = scratch / f".casnap-tmp-{dead_pid()}-{HOST_TAG}-abc.db"
    left.write_bytes(b"image of a killed checkout")
    checkout(repo, sid, tmp_path / "out", safety_snapshot=False)
    assert not left.exists()


def test_temp_files_of_another_pid_namespace_are_left_alone(app: Path, tmp_path: Path) -> None:
    """A container sharing the host name has pids of its own: its temp files are not taken for
    those of a dead process here; those of older casnap versions (tagged by host name alone)
    still are."""
    from casnap.fsutil import LEGACY_TAG, host_tag
    from casnap.procs import pid_namespace

    here = pid_namespace()
    assert here is not None
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, app).id
    scratch = tmp_path / "repo" / "tmp"
    scratch.mkdir(exist_ok=True)
    theirs = scratch / f".casnap-tmp-{dead_pid()}-{host_tag(here + 1)}-abc.db"
    legacy = scratch / f".casnap-tmp-{dead_pid()}-{LEGACY_TAG}-abc.db"
    for f in (theirs, legacy):
        f.write_bytes(b"image")
    checkout(repo, sid, tmp_path / "out", safety_snapshot=False)
    assert theirs.exists() and not legacy.exists()


def test_staging_dirs_of_another_pid_namespace_are_left_alone(app: Path, tmp_path: Path) -> None:
    """A container sharing the host name (or another host sharing the folder) stages its own
    checkout beside a target in the same folder: its staging dir, named by a pid that means
    nothing here, was removed whole as a killed run's while it ran, so its swap failed half
    way. Staging dirs carry the host tag temp files carry; untagged ones of older casnap
    versions and this host's of dead processes are still removed."""
    from casnap.fsutil import HOST_TAG, STAGE_PREFIX, host_tag
    from casnap.procs import pid_namespace

    here = pid_namespace()
    assert here is not None
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, app).id
    gone = dead_pid()
    theirs = tmp_path / f"{STAGE_PREFIX}{gone}-{host_tag(here + 1)}-0123456789ab"
    ours = tmp_path / f"{STAGE_PREFIX}{gone}-{HOST_TAG}-0123456789ab"
    legacy = tmp_path / f"{STAGE_PREFIX}{gone}-0123456789ab"
    for stage in (theirs, ours, legacy):
        stage.mkdir()
        (stage / "app.db").write_bytes(b"staged by a checkout")
    checkout(repo, sid, tmp_path / "out", safety_snapshot=False, smoke=False)
    assert (theirs / "app.db").exists()
    assert not ours.exists() and not legacy.exists()
    staged = [p.name for p in tmp_path.iterdir() if p.name.startswith(STAGE_PREFIX)]
    assert staged == [theirs.name]  # the checkout's own is gone too


def test_an_error_inside_a_stage_names_the_folder_not_its_descriptor(tmp_path: Path) -> None:
    """Files are staged through /proc/<pid>/fd/<n> (so swapping folders cannot redirect a
    write), but a failure is reported with the staging folder's own path."""
    from casnap.errors import CasnapError, StorageFull
    from casnap.staging import Stage

    with pytest.raises(StorageFull) as info:
        with Stage(tmp_path) as stage:
            assert str(stage.path).startswith("/proc/")
            raise StorageFull(
                f"writing {stage.path / 'faiss' / 'x.index'}: no space left on device"
            )
    message = str(info.value)
    assert "/proc/" not in message
    assert (
        message.startswith(f"writing {tmp_path}/.casnap-tmp-stage-") and "faiss/x.index" in message
    )
    assert isinstance(info.value, CasnapError)


def test_a_full_checkout_into_the_home_folder_is_refused(
    app: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--to ~` (or `/`, or an unset variable in `--to $HOME/$DIR`) would save the whole folder
    as a pre-checkout snapshot, then remove every file the snapshot lacks: refused before any
    of it, as no data dir lives there; naming files (a partial checkout removes nothing) is
    allowed."""
    from casnap.errors import InvalidArgument

    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    monkeypatch.setenv("HOME", str(home))
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, app).id
    before = len(repo.snapshots())
    with pytest.raises(InvalidArgument, match="home folder"):
        checkout(repo, sid, home, smoke=False)
    assert (home / "thesis.tex").read_text() == "years of work"
    assert len(repo.snapshots()) == before  # nothing saved, nothing written
    checkout(repo, sid, home, ["app.db"], smoke=False)
    assert (home / "app.db").is_file() and (home / "thesis.tex").is_file()


def test_a_file_left_in_place_and_written_during_the_checkout_keeps_its_times(
    tmp_path: Path,
) -> None:
    """A file the checkout found already as the snapshot holds it, written by an app while the
    checkout ran (here by the smoke command, once the plan is made): the checkout set its mtime
    back to the snapshot's, so the next commit took it for the snapshot's content (no byte
    read) and no snapshot held the app's write. It is left with its own times now, and the next
    commit reads it."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "conf.txt").write_text("aaaa\n")
    (data / "other.txt").write_text("one\n")
    repo = Repository.init(tmp_path / "repo")
    first = commit(repo, data).id
    (data / "other.txt").write_text("two\n")
    commit(repo, data)
    app_writes = f"printf 'BBBB\\n' > {data / 'conf.txt'}"
    r = checkout(repo, first, data, smoke_cmd=app_writes)
    assert r.unchanged == ["conf.txt"] and (data / "conf.txt").read_text() == "BBBB\n"
    latest = commit(repo, data).id
    saved = tmp_path / "saved"
    checkout(repo, latest, saved, safety_snapshot=False)
    assert (saved / "conf.txt").read_text() == "BBBB\n"


def test_only_a_whole_mark_of_a_dead_checkout_into_the_data_dir_is_said(tmp_path: Path) -> None:
    """The mark a killed swap leaves is read with care: made by hand, a link, a FIFO, for
    another target, or in a live process's staging dir, it says nothing (and never hangs)."""
    import json
    import os

    from casnap import swapmark
    from casnap.fsutil import HOST_TAG, STAGE_PREFIX

    data = tmp_path / "data"
    data.mkdir()
    sid = "ab" * 32

    def stage(pid: int, tail: str) -> Path:
        made = tmp_path / f"{STAGE_PREFIX}{pid}-{HOST_TAG}-{tail}"
        made.mkdir()
        return made

    def body(target: Path) -> str:
        return json.dumps({"snapshot": sid, "target": str(target), "time": 1.7e9})

    (stage(dead_pid(), "0000000000a1") / swapmark.MARK).write_text(body(tmp_path / "other"))
    (stage(dead_pid(), "0000000000a2") / swapmark.MARK).write_text("{not json")
    (stage(dead_pid(), "0000000000a3") / swapmark.MARK).symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_text(body(data))
    os.mkfifo(stage(dead_pid(), "0000000000a4") / swapmark.MARK)
    (stage(os.getppid(), "0000000000a5") / swapmark.MARK).write_text(body(data))  # alive
    assert swapmark.interrupted(data) == []
    (stage(dead_pid(), "0000000000a6") / swapmark.MARK).write_text(body(data))
    [line] = swapmark.interrupted(data)
    assert f"snapshot {sid[:8]} into {data}" in line and "two snapshots" in line
