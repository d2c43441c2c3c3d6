"""A database in use is never replaced under its app, and a locked one never hangs casnap.

The apps here are real SQLite connections in other processes: idle, inside a write transaction,
holding BEGIN EXCLUSIVE, connected to a WAL database, or running as another user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from casnap import locks
from casnap.committer import commit
from casnap.errors import EXIT_CODES, DatabaseBusy
from casnap.repository import Repository
from tests.conftest import evolve_app
from tests.helpers_reliability import casnap_env, run_casnap, small_app
from tests.test_hostile import one_line
from tests.util import raw_tree

HOLD = r"""
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
mode = sys.argv[2]
if mode == "wal":
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("INSERT INTO docs(title, body) VALUES ('wal', 'frame')")
elif mode == "write":
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO docs(title, body) VALUES ('in', 'flight')")
    db.execute("UPDATE docs SET body = 'x' WHERE id < 50")
elif mode == "exclusive":
    db.execute("BEGIN EXCLUSIVE")
    db.execute("INSERT INTO docs(title, body) VALUES ('ex', 'clusive')")
else:
    db.execute("SELECT count(*) FROM docs").fetchone()
print("ready", flush=True)
time.sleep(300)
"""


@contextlib.contextmanager
def app_holding(db: Path, mode: str, prefix: list[str] | None = None) -> Iterator[int]:
    """A process holding db in the given mode until the block ends; yields its pid."""
    proc = subprocess.Popen(
        [*(prefix or []), sys.executable, "-c", HOLD, str(db), mode],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def changed(tmp_path: Path) -> tuple[Path, Path, str]:
    """A repository with one snapshot of data, and data changed since (so checkout replaces)."""
    data = small_app(tmp_path / "data")
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data).id
    evolve_app(data, 1)
    commit(repo, data)  # the changed state is held too: no safety snapshot needed
    return tmp_path / "repo", data, sid


def checkout_cli(repo_dir: Path, data: Path, sid: str, *extra: str, timeout: float = 120):
    env = casnap_env(CASNAP_BUSY_TIMEOUT="2")
    return run_casnap(
        ["--repo", str(repo_dir), "--data", str(data), "checkout", sid, *extra], env, timeout
    )


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_a_write_transaction_keeps_its_journal_even_with_force(
    changed: tuple[Path, Path, str], force: bool
) -> None:
    repo_dir, data, sid = changed
    with app_holding(data / "app.db", "write") as pid:
        assert (data / "app.db-journal").exists()
        before = raw_tree(data)
        extra = ("--force",) if force else ()
        proc = checkout_cli(repo_dir, data, sid, *extra)
        one_line(proc, EXIT_CODES["locked"], f"app.db is in use: process {pid} holds a SQLite lock")
        assert raw_tree(data) == before  # the hot journal and the database untouched


def test_a_wal_connection_is_never_replaced_under_it(changed: tuple[Path, Path, str]) -> None:
    repo_dir, data, sid = changed
    with app_holding(data / "app.db", "wal"):
        before = raw_tree(data)
        proc = checkout_cli(repo_dir, data, sid, "--force")
        one_line(proc, EXIT_CODES["locked"], "SQLite lock")
        assert raw_tree(data) == before
        assert (data / "app.db-wal").stat().st_size > 0


@pytest.mark.parametrize("command", ["commit", "checkout", "diff"])
def test_begin_exclusive_ends_in_exit_6_not_a_hang(
    changed: tuple[Path, Path, str], command: str
) -> None:
    repo_dir, data, sid = changed
    with app_holding(data / "app.db", "exclusive"):
        before = raw_tree(data)
        args = {"commit": ["commit"], "checkout": ["checkout", sid], "diff": ["diff", sid]}
        env = casnap_env(CASNAP_BUSY_TIMEOUT="2")
        t0 = time.monotonic()
        proc = run_casnap(["--repo", str(repo_dir), "--data", str(data), *args[command]], env, 100)
        assert time.monotonic() - t0 < 100  # ended on its own (no timing claim beyond that)
        one_line(proc, EXIT_CODES["locked"], "app.db")
        assert raw_tree(data) == before


def test_a_locked_database_is_announced_once(tmp_path: Path) -> None:
    data = small_app(tmp_path / "data")
    repo = Repository.init(tmp_path / "repo")
    heard: list[str] = []
    repo.notify = heard.append
    os.environ["CASNAP_BUSY_TIMEOUT"] = "1"
    try:
        with app_holding(data / "app.db", "exclusive"), pytest.raises(DatabaseBusy):
            commit(repo, data)
    finally:
        del os.environ["CASNAP_BUSY_TIMEOUT"]
    assert len(heard) == 1 and "app.db" in heard[0] and "waiting up to 1 s" in heard[0]


def test_a_lock_wait_is_announced(tmp_path: Path) -> None:
    data = small_app(tmp_path / "data")
    repo = Repository.init(tmp_path / "repo")
    commit(repo, data)
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with locks.locked(repo.backend, "commit", exclusive=False, wait=0):
            held.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(30)
    heard: list[str] = []
    try:
        with pytest.raises(Exception, match="locked"):
            with locks.locked(repo.backend, "gc", exclusive=True, wait=0.3, notify=heard.append):
                pass
    finally:
        release.set()
        t.join()
    assert len(heard) == 1 and "commit" in heard[0]


def test_an_idle_open_database_needs_force(changed: tuple[Path, Path, str]) -> None:
    repo_dir, data, sid = changed
    with app_holding(data / "app.db", "idle") as pid:
        before = raw_tree(data)
        one_line(checkout_cli(repo_dir, data, sid), EXIT_CODES["locked"], f"process {pid}")
        assert raw_tree(data) == before
        assert checkout_cli(repo_dir, data, sid, "--force").returncode == 0


def as_nobody() -> list[str]:
    """A prefix running a command as user nobody (65534), for a root test run."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to run casnap as another user")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def test_an_app_of_another_user_is_detected(tmp_path: Path) -> None:
    """casnap runs as nobody; the app runs as root, whose descriptors nobody cannot list."""
    prefix = as_nobody()
    home = Path(tempfile.mkdtemp(prefix="casnap-users-"))
    try:
        home.chmod(0o755)
        data = small_app(home / "data")
        repo_dir = home / "repo"
        sid = commit(Repository.init(repo_dir), data).id
        evolve_app(data, 1)
        commit(Repository.open(repo_dir), data)
        for p in [home / "data", home / "repo", *(home / "data").rglob("*"), *repo_dir.rglob("*")]:
            os.chown(p, 65534, 65534)
        env = casnap_env(CASNAP_CACHE_DIR=str(home / "cache"))
        cmd = [
            *prefix,
            sys.executable,
            "-m",
            "casnap",
            "--repo",
            str(repo_dir),
            "--data",
            str(data),
        ]
        with app_holding(data / "app.db", "idle"):
            before = raw_tree(data)
            proc = subprocess.run(
                [*cmd, "checkout", sid, "--no-smoke"],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            one_line(proc, EXIT_CODES["locked"], "cannot inspect|another user")
            assert raw_tree(data) == before
        proc = subprocess.run(
            [*cmd, "checkout", sid, "--no-smoke"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        with sqlite3.connect(data / "app.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        shutil.rmtree(home, ignore_errors=True)


OPENS_THEN_WRITES = r"""
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)  # opens the file now
print("open", flush=True)
db.execute("BEGIN IMMEDIATE")
db.execute("INSERT INTO t VALUES ('the app''s row')")
db.execute("COMMIT")
print("committed", flush=True)
"""


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_a_database_opened_while_it_is_swapped_out_is_put_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, force: bool
) -> None:
    """An app opens the WAL database (a connection per request) after the checkout's last look
    for users of it and before the rename, and waits on the locks casnap holds. Once they were
    released it went on with the old file it had open: it took the -wal and -shm by their
    names, beside the database just restored, and committed its pages into that log, so the
    restored database read pages of the one it replaced (integrity_check failed). Now the
    opener is seen before the locks go: the swap is undone and the app writes into its own
    database. --force lets be only what had it open before."""
    from casnap import inuse, swap
    from casnap.restorer import checkout

    data = tmp_path / "data"
    data.mkdir()
    db_path = data / "app.db"
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE a(y)")
        db.executemany("INSERT INTO a VALUES (?)", [("a" * 300,) for _ in range(200)])
        db.execute("CREATE TABLE t(x)")
        db.execute("INSERT INTO t VALUES ('v1')")
        db.commit()
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data).id
    with contextlib.closing(sqlite3.connect(db_path)) as db:  # other pages, other roots
        db.execute("DROP TABLE a")
        db.execute("INSERT INTO t VALUES ('v2')")
        db.commit()
        db.execute("VACUUM")
        db.execute("CREATE TABLE b(y)")
        db.executemany("INSERT INTO b VALUES (?)", [("b" * 300,) for _ in range(200)])
        db.commit()
    commit(repo, data)
    real = swap.swap_in
    apps: list[subprocess.Popen[str]] = []

    def app_opens_first(*args: object, **kwargs: object) -> object:
        app = subprocess.Popen(
            [sys.executable, "-c", OPENS_THEN_WRITES, str(db_path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        apps.append(app)
        assert app.stdout is not None and app.stdout.readline().strip() == "open"
        return real(*args, **kwargs)  # type: ignore[arg-type]

    def after_a_while(*args: object, **kwargs: object) -> object:
        # an app not held off by the locks commits and exits meanwhile (the swap may not lose
        # a lock it took: a descriptor of the database opened and closed drops them all)
        with contextlib.suppress(subprocess.TimeoutExpired):
            apps[0].wait(timeout=2)
        return real_refuse(*args, **kwargs)  # type: ignore[arg-type]

    real_refuse = inuse.refuse_opened
    monkeypatch.setattr(swap, "swap_in", app_opens_first)
    monkeypatch.setattr(inuse, "refuse_opened", after_a_while)
    try:
        with pytest.raises(DatabaseBusy, match="left as it was") as err:
            checkout(repo, sid, data, smoke=False, force=force)
        assert f"process {apps[0].pid}" in str(err.value)
    finally:
        out, _ = apps[0].communicate(timeout=60)
    assert out.split() == ["committed"]
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT x FROM t").fetchall() == [("v1",), ("v2",), ("the app's row",)]
        assert db.execute("SELECT count(*) FROM b").fetchone()[0] == 200
