"""Progress callbacks of commit, checkout and verify; the CLI bar only on a terminal."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap.cli import Context, cli, progress_bar
from casnap.committer import commit
from casnap.progress import REPORT_STEP, ByteProgress
from casnap.repository import Repository
from casnap.restorer import checkout
from casnap.staging import smoke_verify
from tests.helpers_smoke import evolve_app, make_app


class Recorder:
    """A progress callback that keeps every (done, total) it is given."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))

    def assert_complete(self, total: int) -> None:
        assert self.calls[0] == (0, total)
        assert self.calls[-1] == (total, total)
        assert {t for _, t in self.calls} == {total}  # the total never changes
        done = [d for d, _ in self.calls]
        assert done == sorted(done) and len(set(done)) == len(done)  # strictly increasing


@pytest.fixture
def app(tmp_path: Path) -> Path:
    return make_app(tmp_path / "data")


def test_commit_progress_counts_every_byte_to_the_total(app: Path, tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    rec = Recorder()
    r = commit(repo, app, progress=rec)
    rec.assert_complete(r.logical_bytes)
    evolve_app(app)
    rec2 = Recorder()
    r2 = commit(repo, app, progress=rec2)  # unchanged files count as done without being read
    rec2.assert_complete(r2.logical_bytes)


def test_checkout_and_verify_progress_reach_the_total(app: Path, tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, app).id
    rec = Recorder()
    r = checkout(repo, sid, tmp_path / "out", progress=rec)
    rec.assert_complete(r.bytes_written)
    assert r.bytes_written == repo.load_snapshot(repo.resolve(sid)).logical_bytes
    rec = Recorder()
    v = smoke_verify(repo, sid, progress=rec)
    rec.assert_complete(v.bytes_verified)


def test_byte_progress_is_monotonic_clamped_and_throttled() -> None:
    rec = Recorder()
    bar = ByteProgress(3 * REPORT_STEP, rec)
    for _ in range(REPORT_STEP // 4096):
        bar.add(4096)  # one step's worth in small pieces: reported once
    bar.advance_to(10)  # never goes back
    bar.add(10 * REPORT_STEP)  # clamped to the total
    bar.finish()
    assert rec.calls == [
        (0, 3 * REPORT_STEP),
        (REPORT_STEP, 3 * REPORT_STEP),
        (3 * REPORT_STEP,) * 2,
    ]


def test_cli_prints_no_progress_off_a_terminal(app: Path, tmp_path: Path) -> None:
    base = ["--repo", str(tmp_path / "repo"), "--data", str(app)]
    result = CliRunner().invoke(cli, [*base, "commit"])
    assert result.exit_code == 0
    lines = result.stderr.splitlines()  # the first commit creates the repository
    assert len(lines) == 2 and lines[0].startswith("created repository at") and "saved" in lines[1]
    sid = result.stdout.strip()
    result = CliRunner().invoke(cli, [*base, "checkout", sid, "--to", str(tmp_path / "o")])
    assert result.exit_code == 0 and "%" not in result.stderr and "\r" not in result.stderr
    assert len(result.stderr.splitlines()) == 2  # restored ..., smoke checks passed ...
    result = CliRunner().invoke(cli, ["-q", *base, "checkout", sid, "--to", str(tmp_path / "q")])
    assert result.exit_code == 0 and result.stderr == ""
    result = CliRunner().invoke(cli, ["-q", *base, "commit"])
    assert result.exit_code == 0 and result.stderr == "" and len(result.stdout.strip()) == 64


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_shows_bytes_rate_and_percent_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", term)
    with progress_bar(Context(Path("r"), Path("d"), quiet=False), "restore") as bar:
        assert bar is not None
        bar(0, 4 * 1024 * 1024)
        bar(2 * 1024 * 1024, 4 * 1024 * 1024)
        bar(4 * 1024 * 1024, 4 * 1024 * 1024)
    out = term.getvalue()
    assert "restore" in out and "100%" in out and "4.0 MiB / 4.0 MiB" in out and "/s" in out
    with progress_bar(Context(Path("r"), Path("d"), quiet=True), "restore") as bar:
        assert bar is None


def test_verify_reports_structure_then_data_progress(app: Path, tmp_path: Path) -> None:
    from casnap.checker import verify

    repo = Repository.init(tmp_path / "repo")
    commit(repo, app)
    evolve_app(app)
    commit(repo, app)
    packs = sum(size for _, size in repo.backend.list("packs/"))
    rec = Recorder()
    assert verify(repo, progress=rec).ok
    rec.assert_complete(packs)  # one run: the pack directories
    rec = Recorder()
    assert verify(repo, read_data=True, progress=rec).ok
    runs = [i for i, (done, _) in enumerate(rec.calls) if done == 0]
    assert len(runs) == 2  # the directories, then the packs read
    first, second = Recorder(), Recorder()
    first.calls, second.calls = rec.calls[: runs[1]], rec.calls[runs[1] :]
    first.assert_complete(packs)
    second.assert_complete(packs)
