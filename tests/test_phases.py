"""Where the time of a commit and a checkout goes: the `phases` of their --json reports, and the
recorder behind them. Relations only (which phases ran, what the wall clock bounds), no timings."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from casnap import commit
from casnap.cli import cli
from casnap.phases import Phases
from casnap.repository import Repository
from tests.helpers_smoke import make_app

ROOT = Path(__file__).resolve().parent.parent
COMMIT = {"open", "scan", "capture", "chunk", "compress", "write", "index", "manifest"}
CHECKOUT = {"open", "plan", "read", "decode", "verify", "write", "smoke", "save", "swap"}
# phases only the calling thread runs, one after the other: together within the wall clock
COMMIT_SERIAL = ("open", "scan", "capture", "index", "manifest")
CHECKOUT_SERIAL = ("open", "plan", "verify", "smoke", "save", "swap")
HOUR_AGO = time.time() - 3600


def run(base: list[str], *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, [*base, *args, "--json"])
    assert result.exit_code == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def check_shape(phases: dict[str, float], names: set[str], serial: tuple[str, ...]) -> None:
    """Every documented phase and `wall`, as non-negative floats; the calling thread's phases
    within the wall clock."""
    assert set(phases) == names | {"wall"}
    assert all(isinstance(v, float) and v >= 0 for v in phases.values()), phases
    assert sum(phases[n] for n in serial) <= phases["wall"], phases


def age(root: Path) -> None:
    """Every file last written an hour ago: the next commit may trust their stat fingerprints."""
    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, (HOUR_AGO, HOUR_AGO))


@pytest.fixture
def base(tmp_path: Path) -> list[str]:
    data = make_app(tmp_path / "data")
    age(data)
    return ["--repo", str(tmp_path / "repo"), "--data", str(data)]


def test_a_commit_reports_the_time_of_each_phase(base: list[str]) -> None:
    phases = run(base, "commit")["phases"]
    check_shape(phases, COMMIT, COMMIT_SERIAL)
    # app.db went through SQLite's backup API; every file was read, cut and hashed, and all of
    # it was new: compressed and written to packs, named by a new index file
    for name in ("open", "scan", "capture", "chunk", "compress", "write", "index", "manifest"):
        assert phases[name] > 0, (name, phases)


def test_a_commit_of_unchanged_files_spends_nothing_on_storing_data(
    base: list[str], tmp_path: Path
) -> None:
    run(base, "commit")
    same = run(base, "commit")  # the stat cache vouches for every file
    assert same["bytes_read"] == 0 and same["files_unchanged"] > 0
    phases = same["phases"]
    check_shape(phases, COMMIT, COMMIT_SERIAL)
    for name in ("capture", "chunk", "compress", "write", "index"):
        assert phases[name] == 0, (name, phases)
    assert phases["manifest"] > 0

    # the same bytes written again: every file is read (and app.db copied) once more, but each
    # chunk is stored already, so nothing is compressed and no pack is written
    data = tmp_path / "data"
    for p in data.rglob("*"):
        if p.is_file():
            p.write_bytes(p.read_bytes())
    age(data)
    again = run(base, "commit")
    assert again["bytes_read"] > 0 and again["chunks_new"] == 0
    phases = again["phases"]
    check_shape(phases, COMMIT, COMMIT_SERIAL)
    assert phases["capture"] > 0 and phases["chunk"] > 0
    assert phases["compress"] == 0 and phases["write"] == 0, phases


def test_a_checkout_reports_the_time_of_each_phase(base: list[str], tmp_path: Path) -> None:
    sid = run(base, "commit")["id"]
    out = tmp_path / "out"
    phases = run(base, "checkout", sid, "--to", str(out), "--no-safety-snapshot")["phases"]
    check_shape(phases, CHECKOUT, CHECKOUT_SERIAL)
    for name in ("open", "plan", "read", "decode", "verify", "write", "smoke", "swap"):
        assert phases[name] > 0, (name, phases)
    assert phases["save"] == 0  # nothing in the target to save

    # nothing smoke-checked, and data no snapshot holds saved first: a commit inside
    (out / "app.db").write_bytes(b"not a database, and held by no snapshot")
    report = run(base, "checkout", sid, "--to", str(out), "--no-smoke")
    assert report["safety_snapshot"]
    phases = report["phases"]
    check_shape(phases, CHECKOUT, CHECKOUT_SERIAL)
    assert phases["smoke"] == 0 and phases["save"] > 0 and phases["write"] > 0


def test_the_first_operation_on_a_repository_counts_its_opening(tmp_path: Path) -> None:
    data = make_app(tmp_path / "data")
    Repository.init(tmp_path / "repo")
    repo = Repository.open(tmp_path / "repo")
    assert repo.opened_at is not None and repo.opened_at <= time.perf_counter()
    first = commit(repo, data)
    assert repo.opened_at is None  # counted once: the next operation's clock starts at its call
    check_shape(first.phases, COMMIT, COMMIT_SERIAL)
    second = commit(repo, data)
    check_shape(second.phases, COMMIT, COMMIT_SERIAL)
    assert second.to_json()["phases"] == second.phases


def test_every_phase_is_documented() -> None:
    text = (ROOT / "docs" / "JSON.md").read_text()
    for command, names in (("commit", COMMIT), ("checkout", CHECKOUT)):
        section = re.search(rf"## `casnap {command} --json`\n(.*?)(?=\n## )", text, re.S)
        assert section, command
        for name in (*names, "wall"):
            assert f"`{name}`" in section.group(1), (command, name)


# -- the recorder ---------------------------------------------------------------------------------


def test_phases_add_up_from_many_threads() -> None:
    phases = Phases()

    def work() -> None:
        for _ in range(1000):
            phases.add("chunk", 0.001)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert phases.report(["chunk", "write"])["chunk"] == pytest.approx(8.0)
    assert phases.report(["chunk", "write"])["write"] == 0.0


def test_a_timed_block_counts_when_it_raises_and_entry_alone_counts() -> None:
    phases = Phases()
    with pytest.raises(ValueError), phases.timed("scan"):
        raise ValueError("x")
    assert phases.seconds("scan") > 0

    class Slow:
        exited = False

        def __enter__(self) -> str:
            return "image"

        def __exit__(self, *exc: object) -> None:
            self.exited = True

    manager = Slow()
    with phases.entered("capture", manager) as value:
        assert value == "image"
        counted = phases.seconds("capture")
        assert counted > 0
    assert manager.exited and phases.seconds("capture") == counted  # the body was not counted


def test_the_clock_starts_when_the_opening_began() -> None:
    class Opened:
        opened_at: float | None = time.perf_counter()

    thing = Opened()
    began = thing.opened_at
    phases = Phases.begin(thing)
    assert phases.start == began and thing.opened_at is None
    assert phases.report([])["wall"] >= 0
    before = time.perf_counter()
    assert Phases.begin(thing).start >= before  # opened once: a later operation starts at its call
