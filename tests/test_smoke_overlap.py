"""Smoke checks started file by file during a restore report what checks run after it report."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from casnap import faiss_child, smoke_report
from casnap.committer import commit
from casnap.repository import Repository
from casnap.restorer import checkout
from casnap.smoke import SmokeSession, smoke_check
from casnap.smoke_sqlite import check_sqlite
from casnap.staging import smoke_verify
from tests.helpers_smoke import break_index, make_app


def staged_copy(app: Path, stage: Path) -> dict[str, Path]:
    """Every file of app copied under stage (as a restore stages it): rel -> staged path."""
    view = {}
    for p in sorted(app.rglob("*")):
        if p.is_file():
            rel = p.relative_to(app).as_posix()
            dest = stage / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dest)
            view[rel] = dest
    return view


def outcome(report: smoke_report.SmokeReport) -> list[tuple[str, str, bool, str]]:
    return [(c.check, c.path, c.ok, c.detail) for c in report.checks]


@pytest.mark.parametrize("expect_faiss", [True, False])
def test_checks_started_while_staging_match_checks_run_afterwards(
    tmp_path: Path, expect_faiss: bool
) -> None:
    app = make_app(tmp_path / "app")
    break_index(app / "faiss" / "ivf.index", "garbage")
    extra = app / "second.db"
    with contextlib.closing(sqlite3.connect(extra)) as db:
        db.execute("CREATE TABLE t(a)")
        db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(50)])
        db.commit()
    view = staged_copy(app, tmp_path / "stage")
    databases = ["app.db", "second.db"]
    after = smoke_check(view, view, databases=databases)
    with SmokeSession(databases=databases, expect_faiss=expect_faiss) as session:
        for rel, path in view.items():
            session.staged(rel, path)
        during = session.finish(view, view)
    assert outcome(during) == outcome(after)
    assert not during.ok and [c.path for c in during.failures] == ["faiss/ivf.index"]
    checked = {(c.check, c.path) for c in during.checks}
    assert ("sqlite-integrity", "second.db") in checked
    assert ("faiss-search", "faiss/flat.index") in checked
    assert ("faiss-ntotal", "faiss/hnsw.index") in checked


def test_a_probe_child_that_dies_between_indexes_fails_the_rest(tmp_path: Path) -> None:
    view = staged_copy(make_app(tmp_path / "app"), tmp_path / "stage")
    with SmokeSession(databases=["app.db"]) as session:
        session.staged("faiss/flat.index", view["faiss/flat.index"])
        child = session._child
        assert child is not None
        deadline = time.monotonic() + 60
        while not child.results and time.monotonic() < deadline:
            time.sleep(0.01)
        assert child.results, "the child never read the first index"
        child.proc.kill()  # dies while idle: the indexes handed over after this are not read
        child.proc.wait()
        for rel in ("faiss/hnsw.index", "faiss/ivf.index"):
            session.staged(rel, view[rel])
        report = session.finish(view, view)
    by_path = {(c.check, c.path): c for c in report.checks}
    assert by_path[("faiss-search", "faiss/flat.index")].ok
    for rel in ("faiss/hnsw.index", "faiss/ivf.index"):
        failed = by_path[("faiss-read", rel)]
        assert not failed.ok and "signal 9" in failed.detail
    assert by_path[("sqlite-integrity", "app.db")].ok


def test_checkout_with_overlapped_checks_reports_every_file(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app")
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, app).id
    result = checkout(repo, sid, tmp_path / "out", safety_snapshot=False)
    assert result.smoke is not None and result.smoke["ok"]
    checked = {(c["check"], c["path"]) for c in result.smoke["checks"]}
    for rel in ("faiss/flat.index", "faiss/ivf.index", "faiss/hnsw.index"):
        assert {("faiss-read", rel), ("faiss-ntotal", rel), ("faiss-search", rel)} <= checked
    assert {("sqlite-integrity", "app.db"), ("sqlite-tables", "app.db")} <= checked
    verified = smoke_verify(repo, sid)
    assert verified.ok and verified.smoke == result.smoke


def test_probe_child_loads_faiss_without_casnap(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-P", "-X", "importtime", str(faiss_child.PROBE_SCRIPT)],
        input=b"",
        capture_output=True,
        check=True,
    )
    assert b'{"ready": true}' in done.stdout
    imported = [line.split("|")[-1].strip() for line in done.stderr.decode().splitlines()]
    assert "faiss" in imported
    assert not [m for m in imported if m.startswith("casnap")]


def test_a_cancelled_database_check_stops_and_fails(tmp_path: Path) -> None:
    db = tmp_path / "big.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE t(a, b)")
        conn.execute("CREATE INDEX t_a ON t(a)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, "x" * 50) for i in range(20000)])
        conn.commit()
    assert [c.ok for c in check_sqlite(db, "big.db", threading.Event(), private=True)] == [
        True,
        True,
    ]
    cancel = threading.Event()
    cancel.set()
    (failed,) = check_sqlite(db, "big.db", cancel, private=True)
    assert not failed.ok and "interrupt" in failed.detail


def _record_children(
    monkeypatch: pytest.MonkeyPatch, events: list[str]
) -> list[faiss_child.ProbeChild]:
    """Every FAISS probe child made from now on, and when (in events, beside the opens)."""
    made: list[faiss_child.ProbeChild] = []
    init = faiss_child.ProbeChild.__init__

    def counted(self: faiss_child.ProbeChild) -> None:
        init(self)
        made.append(self)
        events.append("child")

    monkeypatch.setattr(faiss_child.ProbeChild, "__init__", counted)
    open_ = Repository.open.__func__  # type: ignore[attr-defined]

    def opened(cls: type[Repository], *args: object, **kwargs: object) -> Repository:
        events.append("open")
        return open_(cls, *args, **kwargs)

    monkeypatch.setattr(Repository, "open", classmethod(opened))
    return made


@pytest.mark.parametrize(
    ("args", "children"),
    [((), 1), (("--no-smoke",), 0), (("app.db",), 0), (("faiss",), 1)],
    ids=["whole", "no-smoke", "database-only", "folder"],
)
def test_a_checkout_starts_its_faiss_checker_before_opening_the_repository(
    args: tuple[str, ...], children: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checker's start (loading FAISS) overlaps the opening of the repository: one child,
    made before the open, used by the checks; none when no index can be restored."""
    from click.testing import CliRunner

    from casnap.cli import cli

    app, repo_dir = tmp_path / "app", tmp_path / "repo"
    make_app(app)
    repo = Repository.init(repo_dir)
    commit(repo, app)
    repo.close()
    events: list[str] = []
    made = _record_children(monkeypatch, events)
    out = tmp_path / "out"
    argv = ["--repo", str(repo_dir), "--data", str(app), "checkout", "latest", *args]
    result = CliRunner().invoke(cli, [*argv, "--to", str(out), "-q", "--json"])
    assert result.exit_code == 0, result.output
    assert len(made) == children, events
    if children:
        assert events[:2] == ["child", "open"], events
        assert '"faiss-search"' in result.stdout  # its checks ran (in that child)
    assert all(c.proc.poll() is not None for c in made)  # none left running


def test_a_checker_started_for_a_checkout_that_fails_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from casnap.cli import cli

    app, repo_dir = tmp_path / "app", tmp_path / "repo"
    make_app(app)
    Repository.init(repo_dir).close()
    made = _record_children(monkeypatch, [])
    argv = ["--repo", str(repo_dir), "--data", str(app), "checkout", "deadbeef", "--to"]
    result = CliRunner().invoke(cli, [*argv, str(tmp_path / "out")])
    assert result.exit_code != 0
    assert len(made) == 1 and made[0].proc.poll() is not None
