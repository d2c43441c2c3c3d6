"""Hosts sharing one repository, as restic users run them: each host names its own snapshots with
`--host` (latest, log, checkout, forget, prune), and `log` says which host took which."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap.cli import cli
from casnap.committer import commit
from casnap.repository import Repository
from tests.helpers_gc import evolve, make_data


@pytest.fixture
def shared(tmp_path: Path, host_name: Callable[[str], None]) -> tuple[list[str], dict[str, str]]:
    """app-1 commits its data dir, then app-2 commits the same path with other data: app-2's
    snapshot is the newest of the repository."""
    data = make_data(tmp_path / "data")
    root = tmp_path / "repo"
    repo = Repository.init(root)
    ids = {}
    for step, name in enumerate(("app-1", "app-2"), start=1):
        host_name(name)
        evolve(data, step)
        ids[name] = commit(repo, data, tags=["nightly"]).id
    host_name("app-1")
    return ["--repo", str(root), "--data", str(data)], ids


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout if "--json" in args else result.output


def test_host_names_the_latest_snapshot_of_that_host(shared, tmp_path: Path) -> None:
    """`latest` is the newest of every host (restic's too); `--host app-1` makes it app-1's, so
    a host restores its own data and not the other host's newer snapshot of the same path."""
    base, ids = shared
    code, out = run(*base, "show", "latest", "--json")
    assert code == 0, out
    assert json.loads(out)["id"] == ids["app-2"]
    for command in (["show", "latest"], ["show", "nightly"], ["ls", "latest"]):
        code, out = run(*base, *command, "--host", "app-1", "--json")
        assert code == 0, out
        assert ids["app-1"] in out and ids["app-2"] not in out
    code, out = run(*base, "checkout", "latest", "--host", "app-1", "--to", str(tmp_path / "o"))
    assert code == 0, out
    assert f"restored snapshot {ids['app-1'][:8]}" in out
    # --all-paths takes the newest of each path group of the named snapshot's host
    to = str(tmp_path / "all")
    code, out = run(*base, "checkout", "latest", "--host", "app-1", "--all-paths", "--to", to)
    assert code == 0, out
    assert f"from snapshot {ids['app-1'][:8]}" in out and ids["app-2"][:8] not in out
    code, out = run(*base, "show", "latest", "--host", "nowhere")
    assert code == 4 and "of host nowhere" in out


def test_log_shows_and_filters_hosts(shared) -> None:
    base, ids = shared
    code, out = run(*base, "log")
    assert code == 0, out
    header, *lines = out.splitlines()
    assert header.split()[:3] == ["ID", "TIME", "HOST"]
    assert [line.split()[3] for line in lines] == ["app-2", "app-1"]
    code, out = run(*base, "log", "--host", "app-2", "--json")
    assert code == 0, out
    assert [r["id"] for r in json.loads(out)] == [ids["app-2"]]


def test_forget_and_prune_take_host(shared, host_name: Callable[[str], None]) -> None:
    base, ids = shared
    code, out = run(*base, "forget", "--host", "app-2", "--dry-run", "--json")
    assert code == 0, out
    assert json.loads(out)["removed"] == [ids["app-2"]]
    code, out = run(*base, "prune", "--keep-last", "1", "--host", "nowhere")
    assert code == 4 and "of host nowhere" in out
    # a tag no snapshot carries is a typo (exit 4); one only app-2's carry keeps none of app-1's
    code, out = run(*base, "prune", "--keep-tag", "none", "--host", "app-1")
    assert code == 4 and "tag none" in out
    host_name("app-2")
    evolve(Path(base[3]), 3)
    weekly = commit(Repository.open(Path(base[1])), Path(base[3]), tags=["weekly"]).id
    host_name("app-1")
    code, out = run(*base, "prune", "--keep-tag", "weekly", "--host", "app-1", "--json")
    assert code == 0, out
    assert json.loads(out)["removed"] == [ids["app-1"]]
    code, out = run(*base, "log", "--json")
    assert [r["id"] for r in json.loads(out)] == [weekly, ids["app-2"]]


def test_commit_host_names_the_host_a_container_changes(tmp_path: Path, monkeypatch) -> None:
    """A container gets a new host name each run: its snapshots formed a group per run, so
    `prune --keep-last 1` kept them all, and each first commit found no parent and read every
    file again. `commit --host app` (restic's `backup --host`) records one name for them."""
    data = make_data(tmp_path / "data")
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    ids = []
    for run_no in range(2):
        monkeypatch.setattr("casnap.fsutil.hostname", lambda n=run_no: f"c0ffee{n}")
        code, out = run(*base, "commit", "--host", "app", "--json")
        assert code == 0, out
        report = json.loads(out)
        ids.append(report["id"])
    assert report["files_new"] == 0  # the first run is its parent (none without --host)
    code, out = run(*base, "show", "latest", "--json")
    assert json.loads(out)["host"] == "app"
    code, out = run(*base, "prune", "--keep-last", "1", "--json")
    assert code == 0, out
    assert json.loads(out)["removed"] == [ids[0]]


@pytest.mark.parametrize("name", ["", "two\nlines"])
def test_commit_host_must_be_a_name(tmp_path: Path, name: str) -> None:
    data = make_data(tmp_path / "data")
    code, out = run("--repo", str(tmp_path / "repo"), "--data", str(data), "commit", "--host", name)
    assert code == 2 and "--host" in out and "not a host name" in out
    assert not (tmp_path / "repo" / "snapshots").exists() or not any(
        (tmp_path / "repo" / "snapshots").iterdir()
    )
