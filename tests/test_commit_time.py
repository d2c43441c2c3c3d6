"""commit --time T records T as the snapshot's time (importing old backups): log, `latest` and
retention then order by it; the manifest keeps its time format."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap.cli import cli
from casnap.committer import commit
from casnap.errors import InvalidArgument
from casnap.repository import Repository

MANIFEST_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    (d / "notes.txt").write_text("first")
    return d


@pytest.fixture
def kolkata(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is UTC+05:30 (no daylight saving) for the test."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def run(tmp_path: Path, data: Path, *args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, ["--repo", str(tmp_path / "repo"), "--data", str(data), *args])
    return r.exit_code, r.stdout, r.stderr


def test_library_commit_records_the_given_time(data: Path, tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    when = dt.datetime(2024, 3, 1, 12, 30, 15, 250000, tzinfo=dt.UTC)
    sid = commit(repo, data, time=when).id
    snap = repo.load_snapshot(repo.resolve(sid))
    assert snap.time == "2024-03-01T12:30:15.250000Z"
    # a later commit without a time is newer: `latest` is it, and its parent the old one
    (data / "notes.txt").write_text("second")
    now_id = commit(repo, data).id
    assert repo.resolve("latest").hex() == now_id
    assert repo.load_snapshot(repo.resolve(now_id)).parent == sid


def test_a_naive_time_is_local_time(data: Path, tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    naive = dt.datetime(2023, 7, 4, 8, 0, 0)
    sid = commit(repo, data, time=naive).id
    expected = naive.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert repo.load_snapshot(repo.resolve(sid)).time == expected


def test_local_time_is_the_local_zone(data: Path, tmp_path: Path, kolkata: None) -> None:
    code, out, err = run(tmp_path, data, "commit", "--time", "2024-01-02 03:04:05", "--json")
    assert code == 0, err
    repo = Repository.open(tmp_path / "repo")
    snap = repo.load_snapshot(repo.resolve(json.loads(out)["id"]))
    assert snap.time == "2024-01-01T21:34:05.000000Z"
    code, out, _ = run(tmp_path, data, "log")
    assert "2024-01-02 03:04:05" in out  # shown back in local time
    sid = commit(repo, data, time=dt.datetime(2024, 1, 3, 5, 30)).id
    assert repo.load_snapshot(repo.resolve(sid)).time == "2024-01-03T00:00:00.000000Z"


def test_a_time_in_the_future_is_refused(data: Path, tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    with pytest.raises(InvalidArgument, match="future"):
        commit(repo, data, time=later)
    assert repo.snapshots() == []


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2024-01-02T03:04:05Z", "2024-01-02T03:04:05.000000Z"),
        ("2024-01-02T03:04:05+02:00", "2024-01-02T01:04:05.000000Z"),
        ("2024-01-02T03:04:05.5-01:00", "2024-01-02T04:04:05.500000Z"),
        (
            "2024-01-02 03:04:05",  # local time
            dt.datetime(2024, 1, 2, 3, 4, 5).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        ),
        (
            "2024-01-02",  # local midnight
            dt.datetime(2024, 1, 2).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        ),
    ],
)
def test_cli_time_forms(data: Path, tmp_path: Path, given: str, expected: str) -> None:
    code, out, err = run(tmp_path, data, "commit", "--time", given, "--json")
    assert code == 0, err
    sid = json.loads(out)["id"]
    code, out, _ = run(tmp_path, data, "show", sid, "--json")
    shown = json.loads(out)["time"]
    assert shown == expected and MANIFEST_TIME.match(shown)


@pytest.mark.parametrize("given", ["yesterday", "2024-13-01 00:00:00", "3000-01-01 00:00:00"])
def test_cli_bad_times_are_usage_errors(data: Path, tmp_path: Path, given: str) -> None:
    code, _, err = run(tmp_path, data, "commit", "--time", given)
    assert code == 2, err
    assert "--time" in err and "Traceback" not in err
    assert not (tmp_path / "repo" / "snapshots").exists() or not list(
        (tmp_path / "repo" / "snapshots").iterdir()
    )


def test_log_and_prune_order_by_the_recorded_time(data: Path, tmp_path: Path) -> None:
    # committed out of order: log lists them newest first by recorded time
    days = ["2024-05-03 10:00:00", "2024-05-01 10:00:00", "2024-05-02 09:00:00"]
    ids = {}
    for i, day in enumerate(days):
        (data / "notes.txt").write_text(f"version {i}")
        code, out, err = run(tmp_path, data, "commit", "--time", day, "-m", day)
        assert code == 0, err
        ids[day] = out.strip()
    (data / "notes.txt").write_text("same day, later")
    code, out, _ = run(tmp_path, data, "commit", "--time", "2024-05-02 18:00:00")
    ids["2024-05-02 18:00:00"] = out.strip()
    code, out, _ = run(tmp_path, data, "log", "--json")
    order = [r["id"] for r in json.loads(out)]
    newest_first = sorted(ids, reverse=True)
    assert order == [ids[d] for d in newest_first]
    code, out, _ = run(tmp_path, data, "log")
    assert "2024-05-03 10:00:00" in out.splitlines()[1]  # local time, as given
    # keep-daily 2: the newest of each of the two newest days
    code, out, err = run(tmp_path, data, "prune", "--keep-daily", "2", "--json")
    assert code == 0, err
    removed = set(json.loads(out)["removed"])
    assert removed == {ids["2024-05-01 10:00:00"], ids["2024-05-02 09:00:00"]}


@pytest.mark.parametrize(
    "given",
    [
        "0001-01-01T00:00:00Z",
        "0001-01-01 00:00:00",  # local: before year 1 in UTC west of Greenwich
        "0010-06-01T00:00:00Z",
        "0999-12-31T23:59:59Z",
        "1000-01-01T00:00:00Z",
        "1969-12-31T23:59:59.999999Z",
    ],
)
def test_cli_times_before_1970_are_refused(data: Path, tmp_path: Path, given: str) -> None:
    code, _, err = run(tmp_path, data, "commit", "-q", "--time", given, "-m", "old")
    assert code == 2, err
    assert "Traceback" not in err and "future" not in err
    assert "before 1970" in err and "--time" in err
    code, out, err = run(tmp_path, data, "log")
    assert code in (0, 3) and "Traceback" not in err  # no snapshot (or no repository) to list


def test_the_earliest_time_is_stored_and_read_back(data: Path, tmp_path: Path) -> None:
    code, out, err = run(tmp_path, data, "commit", "-q", "--time", "1970-01-01T00:00:00Z")
    assert code == 0, err
    for args in (["log"], ["stats"], ["prune", "--keep-last", "1"]):
        code, out, err = run(tmp_path, data, *args)
        assert code == 0, (args, err)
    code, out, _ = run(tmp_path, data, "log", "--json")
    assert json.loads(out)[0]["time"] == "1970-01-01T00:00:00.000000Z"


@pytest.mark.parametrize(
    "when",
    [
        dt.datetime(1, 1, 1, tzinfo=dt.UTC),
        dt.datetime(1, 1, 1),  # naive: local time, which may not convert at all
        dt.datetime(999, 1, 1, tzinfo=dt.UTC),
        dt.datetime(1969, 12, 31, 23, 59, tzinfo=dt.UTC),
    ],
)
def test_library_refuses_times_before_1970(data: Path, tmp_path: Path, when: dt.datetime) -> None:
    repo = Repository.init(tmp_path / "repo")
    with pytest.raises(InvalidArgument, match="before 1970"):
        commit(repo, data, time=when)
    assert repo.snapshots() == []


def test_a_time_in_the_future_is_compared_as_a_time(data: Path, tmp_path: Path) -> None:
    # in another zone, the same instant written with an offset is still no future time
    repo = Repository.init(tmp_path / "repo")
    now = dt.datetime.now(dt.timezone(dt.timedelta(hours=-11))) - dt.timedelta(minutes=1)
    sid = commit(repo, data, time=now).id
    assert MANIFEST_TIME.match(repo.load_snapshot(repo.resolve(sid)).time)


def one_time_commits(
    tmp_path: Path, data: Path, n: int, every_other_file: bool = False
) -> list[str]:
    """The ids of n commits given one --time, notes.txt holding v0, v1, ... in turn; with
    every_other_file, every other one commits notes.txt alone (another group of snapshots)."""
    made = []
    for k in range(n):
        (data / "notes.txt").write_text(f"v{k}")
        paths = ["notes.txt"] if every_other_file and k % 2 else []
        code, out, err = run(tmp_path, data, "commit", "-q", "--time", "2026-01-01", *paths)
        assert code == 0, err
        made.append(out.strip())
    return made


def logged(tmp_path: Path, data: Path) -> list[str]:
    """The snapshot ids `log --json` lists, newest first."""
    code, out, err = run(tmp_path, data, "log", "--json")
    assert code == 0, err
    return [s["id"] for s in json.loads(out)]


def test_commits_given_one_time_keep_the_order_they_were_made(data: Path, tmp_path: Path) -> None:
    """Several commits a day with `--time YYYY-MM-DD` share one time: they were ordered by id,
    so `latest` named an older state and `prune --keep-last` removed a newer one. Of equal
    times, a snapshot comes after its parent (the one committed before it)."""
    made = one_time_commits(tmp_path, data, 6)
    code, out, _ = run(tmp_path, data, "cat", "latest", "notes.txt")
    assert (code, out) == (0, "v5")
    assert logged(tmp_path, data) == made[::-1]
    repo = Repository.open(tmp_path / "repo")
    assert [repo.load_snapshot(repo.resolve(s)).parent for s in made[1:]] == made[:-1]
    code, out, _ = run(tmp_path, data, "prune", "--keep-last", "3", "--dry-run", "--json")
    (group,) = json.loads(out)["groups"]
    assert [k["id"] for k in group["keep"]] == made[:2:-1]


def test_forgetting_one_of_a_time_leaves_the_others_in_the_order_they_were_made(
    data: Path, tmp_path: Path
) -> None:
    """The snapshot after a forgotten one names a parent the repository no longer holds: it was
    taken for the first of its time and sorted by id among the first, so `latest` could name an
    older state and `prune --keep-last 1` remove the newest."""
    made = one_time_commits(tmp_path, data, 8)
    after = min(made[2:])  # the lowest id after a gap: sorted by id, it came first
    gone = made.pop(made.index(after) - 1)
    code, _, err = run(tmp_path, data, "forget", "-q", gone)
    assert code == 0, err
    assert logged(tmp_path, data) == made[::-1]
    code, out, _ = run(tmp_path, data, "cat", "latest", "notes.txt")
    assert (code, out) == (0, "v7")


def test_commits_of_one_time_in_several_groups_or_after_gaps_keep_their_order(
    data: Path, tmp_path: Path
) -> None:
    """A parent is chosen within one group (host, data dir, paths): commits of the whole dir and
    of one file given one --time, in turn, were ordered by id across the groups, and so was a
    chain after two forgotten ones; `latest` named an older state. Each manifest records when it
    was made (`stats.made_ns`), which orders them."""
    made = one_time_commits(tmp_path, data, 6, every_other_file=True)
    assert logged(tmp_path, data) == made[::-1]
    code, out, _ = run(tmp_path, data, "cat", "latest", "notes.txt")
    assert (code, out) == (0, "v5")
    for gone in (made.pop(1), made.pop(2)):
        assert run(tmp_path, data, "forget", "-q", gone)[0] == 0
    assert logged(tmp_path, data) == made[::-1]
