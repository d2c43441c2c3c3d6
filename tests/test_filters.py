"""--path / --tag filters: `latest` (and tags and prefixes) restricted to snapshots committed with
paths or carrying tags, in every command that takes a snapshot; forget --tag / --path; log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap import selection
from casnap.cli import cli
from casnap.committer import CommitOptions, Committer, commit
from casnap.constants import SAFETY_TAG
from casnap.errors import EXIT_CODES
from casnap.repository import Repository
from tests.helpers_smoke import evolve_app, make_app


@pytest.fixture
def mixed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Snapshots of app.db and of faiss on their own schedules, plus whole-dir ones, oldest
    first: all1, db1, faiss1 [nightly], db2 [nightly,keep], all2, faiss2. Working dir: tmp_path."""
    monkeypatch.chdir(tmp_path)
    data = make_app(tmp_path / "data")
    repo = Repository.init(tmp_path / "repo")
    ids = {}
    ids["all1"] = commit(repo, data).id
    ids["db1"] = commit(repo, data, ["app.db"]).id
    ids["faiss1"] = commit(repo, data, ["faiss"], tags=["nightly"]).id
    evolve_app(data)
    ids["db2"] = commit(repo, data, ["app.db"], tags=["nightly", "keep"]).id
    ids["all2"] = commit(repo, data).id
    ids["faiss2"] = commit(repo, data, ["faiss"]).id
    return ids


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--repo", "repo", "--data", "data", *args])
    return result.exit_code, result.stdout, result.stderr


def ids_of(out: str) -> list[str]:
    return [r["id"] for r in json.loads(out)]


def log_ids(*args: str) -> list[str]:
    code, out, err = run("log", "--json", *args)
    assert code == 0, err
    return ids_of(out)


def test_log_shows_paths_and_filters(mixed: dict[str, str]) -> None:
    m = mixed
    assert log_ids("--path", "app.db") == [m["db2"], m["db1"]]
    assert log_ids("--path", "data/faiss") == [m["faiss2"], m["faiss1"]]
    assert log_ids("--path", ".") == [m["all2"], m["all1"]]
    assert log_ids("--tag", "nightly") == [m["db2"], m["faiss1"]]
    assert log_ids("--tag", "nightly,keep") == [m["db2"]]
    assert log_ids("--tag", "keep", "--tag", "nightly") == [m["db2"], m["faiss1"]]
    assert log_ids("--tag", "nightly", "--path", "faiss") == [m["faiss1"]]
    code, out, _ = run("log", "--json")
    assert {r["id"]: r["paths"] for r in json.loads(out)}[m["all1"]] == []
    code, out, _ = run("log")
    lines = out.splitlines()
    assert "PATHS" in lines[0]
    row = {line.split()[0]: line for line in lines[1:]}
    assert "(all)" in row[m["all1"][:8]] and "app.db" in row[m["db1"][:8]]
    assert "faiss" in row[m["faiss1"][:8]] and "[nightly]" in row[m["faiss1"][:8]]
    code, out, err = run("log", "--tag", "nosuch")
    assert code == 0 and out == "" and "no snapshots" in err


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--path", "app.db"], "db2"),
        (["--path", "./faiss"], "faiss2"),
        (["--path", "."], "all2"),
        (["--tag", "nightly"], "db2"),
        (["--tag", "nightly", "--path", "faiss"], "faiss1"),
    ],
)
def test_latest_honours_filters_in_every_command(
    mixed: dict[str, str], tmp_path: Path, args: list[str], expect: str
) -> None:
    want = mixed[expect]
    code, out, err = run("show", "latest", *args, "--json")
    assert code == 0, err
    assert json.loads(out)["id"] == want
    code, out, err = run("stats", "latest", *args, "--json")
    assert code == 0 and json.loads(out)["id"] == want, err
    code, out, err = run("diff", "latest", *args, "--json")
    assert code == 0 and json.loads(out)["a"]["id"] == want, err
    code, out, err = run("verify", "--smoke", *args, "--json")
    assert code == 0 and [s["id"] for s in json.loads(out)["smoke"]] == [want], err
    code, out, err = run("checkout", "latest", *args, "--to", str(tmp_path / "out"), "--json")
    assert code == 0 and json.loads(out)["id"] == want, err
    code, out, err = run("forget", "latest", *args, "--json")
    assert code == 0 and json.loads(out)["removed"] == [want], err


def test_filters_restrict_tags_and_prefixes(mixed: dict[str, str]) -> None:
    m = mixed
    code, out, _ = run("show", "nightly", "--path", "faiss", "--json")
    assert code == 0 and json.loads(out)["id"] == m["faiss1"]
    code, out, _ = run("diff", m["db1"][:8], "nightly", "--path", "app.db", "--json")
    assert code == 0 and json.loads(out)["b"]["id"] == m["db2"]
    code, _, err = run("show", m["faiss2"][:8], "--path", "app.db")
    assert code == EXIT_CODES["not-found"]
    assert "names no snapshot committed with app.db" in err and len(err.splitlines()) == 1
    code, _, err = run("show", "latest", "--tag", "nosuch")
    assert code == EXIT_CODES["not-found"] and "no snapshot tagged nosuch" in err
    code, _, err = run("show", "nosuch", "--tag", "nightly")
    assert code == EXIT_CODES["not-found"] and "no snapshot matches 'nosuch'" in err


def test_forget_tag_takes_every_snapshot_carrying_it(mixed: dict[str, str]) -> None:
    m = mixed
    code, out, err = run("forget", "--tag", "nightly", "--dry-run", "--json")
    assert code == 0, err
    assert sorted(json.loads(out)["removed"]) == sorted([m["faiss1"], m["db2"]])
    assert len(log_ids()) == 6  # dry run
    code, out, err = run("forget", "--tag", "nightly,keep")
    assert code == 0, err
    assert out.split() == [m["db2"]] and "forgot 1 snapshot(s)" in err
    code, out, err = run("forget", "--path", "data/faiss", "--tag", "nightly")
    assert code == 0 and out.split() == [m["faiss1"]], err
    code, out, err = run("forget", "--path", str(Path("data/app.db").absolute()))
    assert code == 0 and out.split() == [m["db1"]], err
    assert log_ids() == [m["faiss2"], m["all2"], m["all1"]]


def _saved_by_a_checkout(repo: Repository, data: Path) -> str:
    """A snapshot as a checkout saves what it replaces: tagged pre-checkout, a tag a user's
    commit may not give."""
    options = CommitOptions(tags=(SAFETY_TAG,), check_pairs=False, allow_empty=True)
    with repo.lock("commit"):
        return Committer(repo, options).run(data, ()).id


def test_forget_positional_tag_is_its_newest_and_says_so(tmp_path: Path) -> None:
    data = make_app(tmp_path / "data")
    repo = Repository.init(tmp_path / "repo")
    saved = [_saved_by_a_checkout(repo, data) for _ in range(6)]
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    result = CliRunner().invoke(cli, [*base, "forget", "pre-checkout"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split() == [saved[-1]]
    assert "6 snapshots carry the tag pre-checkout" in result.stderr
    assert "--tag pre-checkout" in result.stderr
    result = CliRunner().invoke(cli, [*base, "forget", "--tag", "pre-checkout"])
    assert result.exit_code == 0 and sorted(result.stdout.split()) == sorted(saved[:-1])
    assert Repository.open(tmp_path / "repo").snapshots() == []


def test_forget_needs_names_or_filters_and_a_match(mixed: dict[str, str]) -> None:
    code, _, err = run("forget")
    assert code == EXIT_CODES["usage"] and "--tag" in err and len(err.splitlines()) == 1
    for args in (["--tag", "nosuch"], ["--path", "faiss/ivf.index"]):
        code, _, err = run("forget", *args)
        assert code == EXIT_CODES["not-found"], err
        assert "nothing forgotten" in err
    code, _, err = run("prune", "--keep-last", "1", "--path", "faiss/ivf.index")
    assert code == EXIT_CODES["not-found"]
    assert "no snapshot committed with faiss/ivf.index: nothing pruned" in err
    assert len(log_ids()) == 6


def test_newest_per_path_group(mixed: dict[str, str], tmp_path: Path) -> None:
    repo = Repository.open(tmp_path / "repo")
    groups = selection.newest_per_path_group(repo.snapshots(), str((tmp_path / "data").resolve()))
    assert {k: sid.hex() for k, (sid, _) in groups.items()} == {
        (): mixed["all2"],
        ("app.db",): mixed["db2"],
        ("faiss",): mixed["faiss2"],
    }
    assert selection.newest_per_path_group(repo.snapshots(), "/elsewhere") == {}
    assert repo.resolve("latest", paths=["app.db"]).hex() == mixed["db2"]
    assert repo.resolve("latest", tags=["nightly,keep"]).hex() == mixed["db2"]
    assert repo.resolve("latest", paths=[]).hex() == mixed["all2"]


@pytest.mark.parametrize("command", ["checkout", "cat", "ls"])
def test_a_file_outside_the_paths_of_latest_points_to_path(
    mixed: dict[str, str], command: str, tmp_path: Path
) -> None:
    """`checkout latest app.db` while the newest snapshot was committed with faiss only: the
    error says so and how to name the newest snapshot holding app.db."""
    extra = ["--to", str(tmp_path / "out")] if command == "checkout" else []
    code, out, err = run(command, "latest", "app.db", *extra)
    assert code == EXIT_CODES["not-found"]
    assert f"snapshot {mixed['faiss2'][:8]}, committed with faiss only" in err
    assert "--path app.db" in err
    code, _, err = run(command, "latest", "app.db", "--path", "app.db", *extra)
    assert code == 0, err


@pytest.mark.parametrize("command", ["checkout", "cat", "ls"])
def test_a_path_no_snapshot_was_committed_with_is_not_offered_as_a_path_filter(
    mixed: dict[str, str], command: str, tmp_path: Path
) -> None:
    """A mistyped file (`app.dbb`) outside the paths of latest: the error pointed to `--path
    app.dbb`, which names no snapshot ("no snapshot committed with app.dbb"); a file inside a
    folder committed on its own (`faiss/flat.index` while latest holds app.db only) pointed to
    `--path faiss/flat.index`, which names none either: `--path faiss` does."""
    extra = ["--to", str(tmp_path / "out")] if command == "checkout" else []
    code, _, err = run(command, "latest", "app.dbb", *extra)
    assert code == EXIT_CODES["not-found"]
    assert "--path app.dbb" not in err and "no snapshot was committed with app.dbb" in err, err
    assert "`--path .`" in err  # whole-dir snapshots exist: one of them may hold it
    code, _, err = run(command, "latest", "faiss/flat.index", "--path", "app.db", *extra)
    assert code == EXIT_CODES["not-found"]
    assert "--path faiss/flat.index" not in err and "`--path faiss`" in err, err
    code, _, err = run(command, "latest", "faiss/flat.index", "--path", "faiss", *extra)
    assert code == 0, err


@pytest.mark.parametrize("empty", ["", ",", " , "])
@pytest.mark.parametrize(
    "args",
    [
        ["log"],
        ["forget", "--path", "app.db", "--dry-run"],
        ["verify"],
        ["checkout", "latest", "--to", "out"],
        ["prune", "--keep-last", "1", "--dry-run"],
    ],
    ids=["log", "forget", "verify", "checkout", "prune-keep-tag"],
)
def test_an_empty_tag_is_a_usage_error_not_no_filter(
    mixed: dict[str, str], empty: str, args: list[str]
) -> None:
    """`--tag "$TAG"` with TAG unset was dropped as no filter at all: `forget --tag '' --path
    app.db` forgot every snapshot of app.db, `log` listed every snapshot. A --tag (or
    --keep-tag) value naming no tag is refused, as an empty --path is, before anything runs."""
    option = "--keep-tag" if args[0] == "prune" else "--tag"
    before = sorted(p.name for p in Path("repo/snapshots").iterdir())
    code, out, err = run(*args, option, empty)
    assert code == EXIT_CODES["usage"], (out, err)
    assert "names no tag" in err and option in err, err
    assert out == ""
    assert sorted(p.name for p in Path("repo/snapshots").iterdir()) == before
    assert not Path("out").exists()


@pytest.mark.parametrize("empty", ["", " "])
@pytest.mark.parametrize(
    "args",
    [["log"], ["forget", "--path", "app.db", "--dry-run"], ["verify"]],
    ids=["log", "forget", "verify"],
)
def test_an_empty_host_is_a_usage_error_as_an_empty_tag_is(
    mixed: dict[str, str], empty: str, args: list[str]
) -> None:
    """`--host "$HOST"` with HOST unset selected no snapshot (exit 4, or "no snapshots" with
    exit 0 from log): a value naming no host is a usage error, as `--tag ''` is."""
    code, out, err = run(*args, "--host", empty)
    assert code == EXIT_CODES["usage"], (out, err)
    assert "names no host" in err and "--host" in err, err
    assert out == ""
