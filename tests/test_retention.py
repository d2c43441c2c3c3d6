"""Retention: restic keep rules as pure functions (table-driven); prune and forget on a repo."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap import checker, collector, retention
from casnap.checker import verify
from casnap.cli import cli
from casnap.committer import commit
from casnap.errors import EXIT_CODES, InvalidPolicy, SnapshotNotFound
from casnap.ids import ObjectId
from casnap.packs import pack_key
from casnap.repository import Repository
from casnap.restorer import checkout
from casnap.retention import Duration, Item, Policy, apply_policy
from tests.helpers_gc import copy_state, evolve, flip_byte, make_data, same_content

UTC = dt.UTC


def t(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def items(*specs: str | tuple[str, str, tuple[str, ...]]) -> list[Item]:
    """Items named s0, s1, ... from times (or (id, time, tags) tuples)."""
    out = []
    for i, spec in enumerate(specs):
        if isinstance(spec, tuple):
            out.append(Item(spec[0], t(spec[1]), spec[2]))
        else:
            out.append(Item(f"s{i}", t(spec)))
    return out


def kept(decisions: list[retention.Decision]) -> list[str]:
    return [d.item.id for d in decisions if d.keep]


# (name, policy, snapshots, ids kept, newest first)
CASES = [
    (
        "keep-last 2 of 5",
        Policy(last=2),
        items(
            "2024-01-01 10:00",
            "2024-01-02 10:00",
            "2024-01-03 10:00",
            "2024-01-04 10:00",
            "2024-01-05 10:00",
        ),
        ["s4", "s3"],
    ),
    (
        "keep-last counts snapshots with equal times separately, ordered by id",
        Policy(last=2),
        items(
            ("a", "2024-01-01 10:00", ()),
            ("c", "2024-01-02 10:00", ()),
            ("b", "2024-01-02 10:00", ()),
        ),
        ["c", "b"],
    ),
    (
        "keep-last 1 with a tie keeps the larger id",
        Policy(last=1),
        items(("b", "2024-01-02 10:00", ()), ("c", "2024-01-02 10:00", ())),
        ["c"],
    ),
    (
        "keep-last larger than the list keeps all",
        Policy(last=10),
        items("2024-01-01 10:00", "2024-01-02 10:00"),
        ["s1", "s0"],
    ),
    (
        "keep-daily keeps the newest of each day; midnight starts a new day",
        Policy(daily=3),
        items(
            "2024-01-01 08:00",
            "2024-01-01 20:00",
            "2024-01-02 09:00",
            "2024-01-03 23:59",
            "2024-01-04 00:00",
        ),
        ["s4", "s3", "s2"],
    ),
    (
        "keep-daily counts days that have a snapshot, not calendar days",
        Policy(daily=2),
        items("2024-01-01 10:00", "2024-01-05 10:00", "2024-01-09 10:00"),
        ["s2", "s1"],
    ),
    (
        "keep-hourly",
        Policy(hourly=2),
        items("2024-01-01 10:05", "2024-01-01 10:55", "2024-01-01 11:10", "2024-01-01 12:00"),
        ["s3", "s2"],
    ),
    (
        "keep-weekly uses ISO weeks: Mon 2024-12-30 is in 2025-W01 with Sun 2025-01-05",
        Policy(weekly=2),
        items(
            "2024-12-29 12:00",  # Sunday, 2024-W52
            "2024-12-30 12:00",  # Monday, 2025-W01
            "2025-01-05 12:00",  # Sunday, 2025-W01
            "2025-01-06 12:00",  # Monday, 2025-W02
        ),
        ["s3", "s2"],
    ),
    (
        "keep-weekly 3 reaches back into the previous ISO year",
        Policy(weekly=3),
        items("2024-12-29 12:00", "2024-12-30 12:00", "2025-01-05 12:00", "2025-01-06 12:00"),
        ["s3", "s2", "s0"],
    ),
    (
        "keep-monthly",
        Policy(monthly=2),
        items("2024-01-31 23:00", "2024-02-01 01:00", "2024-02-28 10:00", "2024-03-01 00:00"),
        ["s3", "s2"],
    ),
    (
        "keep-yearly",
        Policy(yearly=2),
        items("2022-06-01 10:00", "2023-01-01 00:00", "2023-12-31 23:59", "2024-01-01 00:00"),
        ["s3", "s2"],
    ),
    (
        "unlimited daily keeps one per day for every day, and the oldest (never exhausted)",
        Policy(daily=retention.UNLIMITED),
        items("2024-01-01 08:00", "2024-01-01 09:00", "2024-01-02 08:00", "2024-01-03 08:00"),
        ["s3", "s2", "s1", "s0"],
    ),
    (
        "a rule with buckets left keeps the oldest snapshot too (restic 0.16+, borg 1.2+)",
        Policy(yearly=5),
        items("2024-01-10 10:00", "2024-06-01 10:00", "2025-03-01 10:00", "2025-04-01 10:00"),
        ["s3", "s1", "s0"],
    ),
    (
        "a rule whose buckets are all used keeps no oldest",
        Policy(daily=2),
        items("2024-01-01 08:00", "2024-01-01 20:00", "2024-01-02 09:00"),
        ["s2", "s1"],
    ),
    (
        "keep-last never needs the oldest: each snapshot is its own bucket",
        Policy(last=1, monthly=3),
        items("2024-01-01 08:00", "2024-01-01 20:00", "2024-01-02 09:00"),
        ["s2", "s0"],
    ),
    (
        "keep-within is measured from the newest snapshot, strictly after the cutoff",
        Policy(within=Duration.parse("2d")),
        items("2024-03-08 11:59", "2024-03-08 12:00", "2024-03-08 12:01", "2024-03-10 12:00"),
        ["s3", "s2"],
    ),
    (
        "keep-within 1w is seven days",
        Policy(within=Duration.parse("1w")),
        items("2024-03-02 12:00", "2024-03-03 12:01", "2024-03-10 12:00"),
        ["s2", "s1"],
    ),
    (
        "keep-within 1m from Mar 31 reaches to Mar 2 (Feb 31 normalised)",
        Policy(within=Duration.parse("1m")),
        items("2024-03-01 23:00", "2024-03-02 00:01", "2024-03-31 00:00"),
        ["s2", "s1"],
    ),
    (
        "keep-tag keeps tagged snapshots only",
        Policy(tags=(("keep",),)),
        items(
            ("a", "2024-01-01 10:00", ("keep",)),
            ("b", "2024-01-02 10:00", ()),
            ("c", "2024-01-03 10:00", ("other",)),
        ),
        ["a"],
    ),
    (
        "keep-tag with a comma list needs all of them",
        Policy(tags=(("x", "y"),)),
        items(
            ("a", "2024-01-01 10:00", ("x",)),
            ("b", "2024-01-02 10:00", ("x", "y")),
            ("c", "2024-01-03 10:00", ("y",)),
        ),
        ["b"],
    ),
    (
        "pre-checkout snapshots follow the same rules",
        Policy(last=1),
        items(
            ("a", "2024-01-01 10:00", ()),
            ("p", "2024-01-02 10:00", ("pre-checkout",)),
            ("b", "2024-01-03 10:00", ()),
        ),
        ["b"],
    ),
    (
        "rules combine: kept when any rule keeps",
        Policy(last=1, daily=2, tags=(("pin",),)),
        items(
            ("a", "2024-01-01 10:00", ("pin",)),
            ("b", "2024-01-02 10:00", ()),
            ("c", "2024-01-03 09:00", ()),
            ("d", "2024-01-03 10:00", ()),
        ),
        ["d", "b", "a"],
    ),
]


@pytest.mark.parametrize(("name", "policy", "snaps", "expected"), CASES, ids=[c[0] for c in CASES])
def test_apply_policy(name: str, policy: Policy, snaps: list[Item], expected: list[str]) -> None:
    decisions = apply_policy(snaps, policy, tz=UTC)
    assert kept(decisions) == expected
    assert [d.item.id for d in decisions] == [i.id for i in retention.newest_first(snaps)]
    for d in decisions:
        assert d.keep == bool(d.reasons)


def test_reasons_name_every_rule_that_kept() -> None:
    decisions = apply_policy(
        items("2024-01-01 10:00", "2024-01-02 10:00"),
        Policy(last=1, daily=5, weekly=1, within=Duration.parse("1h")),
        tz=UTC,
    )
    by_id = {d.item.id: d.reasons for d in decisions}
    assert by_id["s1"] == ("within 1h", "last", "daily", "weekly")
    assert by_id["s0"] == ("daily",)


def test_the_oldest_kept_for_a_rule_with_buckets_left_says_so() -> None:
    """A user who starts with `--keep-daily 7 --keep-monthly 12` loses the very first snapshot
    in restic 0.14 (another of its month is newer); restic 0.16+ and borg 1.2+ keep it while
    a rule has buckets left, and name why (`oldest daily snapshot`, `daily[oldest]`)."""
    decisions = apply_policy(
        items("2024-01-01 08:00", "2024-01-01 20:00", "2024-01-02 09:00"),
        Policy(daily=7, monthly=12, last=1),
        tz=UTC,
    )
    by_id = {d.item.id: d.reasons for d in decisions}
    assert by_id == {
        "s2": ("last", "daily", "monthly"),
        "s1": ("daily",),
        "s0": ("oldest daily", "oldest monthly"),
    }
    # the oldest in a bucket of its own is kept by the rule itself, named as usual
    decisions = apply_policy(items("2024-01-01 08:00", "2024-01-02 09:00"), Policy(daily=7))
    assert [d.reasons for d in decisions] == [("daily",), ("daily",)]


def test_keep_within_is_measured_from_the_newest_snapshot_not_in_the_future() -> None:
    """A snapshot dated in the future (a host whose clock ran years ahead, copied in from
    such a repository) moved keep-within's cutoff with it: `--keep-within 7d` kept it alone and
    removed every real snapshot. restic measures from the newest snapshot not in the future
    (a future one is still kept: it lies after the cutoff)."""
    snaps = items("2024-03-01 10:00", "2024-03-05 10:00", "2024-03-07 10:00", "2031-01-01 10:00")
    now = t("2024-03-08 00:00")
    decisions = apply_policy(snaps, Policy(within=Duration.parse("3d")), tz=UTC, now=now)
    assert kept(decisions) == ["s3", "s2", "s1"]
    # every snapshot in the future: none to measure from, so none is older than the cutoff
    decisions = apply_policy(
        snaps, Policy(within=Duration.parse("3d")), tz=UTC, now=t("2020-01-01 00:00")
    )
    assert kept(decisions) == ["s3", "s2", "s1", "s0"]


def test_buckets_follow_the_time_zone() -> None:
    # 23:30 and 00:30 UTC fall on the same day at UTC+2 but on two days at UTC
    snaps = items("2024-01-01 21:30", "2024-01-01 23:30", "2024-01-02 00:30")
    assert kept(apply_policy(snaps, Policy(daily=2), tz=UTC)) == ["s2", "s1"]
    plus2 = dt.timezone(dt.timedelta(hours=2))
    assert kept(apply_policy(snaps, Policy(daily=2), tz=plus2)) == ["s2", "s0"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2d", Duration(days=2)),
        ("1w", Duration(days=7)),
        ("3h", Duration(hours=3)),
        ("1y2m", Duration(years=1, months=2)),
        ("1y2m1w3d4h", Duration(1, 2, 10, 4)),
        ("4h1d", Duration(days=1, hours=4)),
    ],
)
def test_duration_parse(text: str, expected: Duration) -> None:
    assert Duration.parse(text) == expected


@pytest.mark.parametrize("text", ["", "2", "d", "2x", "1d1d", "-1d", "1.5d", "2 d"])
def test_duration_rejects(text: str) -> None:
    with pytest.raises(InvalidPolicy):
        Duration.parse(text)


def test_keep_within_m_is_months_shown_largest_unit_first() -> None:
    """As in restic, `m` is months and minutes are no unit: `2h30m` is 2 hours and 30 months,
    shown largest unit first (`30m2h`), which reads as minutes to one who took `m` for them. The
    option's help and USAGE say what `m` is."""
    assert Duration.parse("2h30m") == Duration(months=30, hours=2)
    assert str(Duration.parse("2h30m")) == "30m2h"
    assert str(Duration.parse("4h3d2m1y")) == "1y2m3d4h"
    assert str(Duration.parse("1w2h")) == "7d2h"
    help_text = " ".join(
        next(p.help or "" for p in cli.commands["prune"].params if p.name == "keep_within").split()
    )
    assert "m (months)" in help_text and "no minutes" in help_text, help_text
    usage = (Path(__file__).resolve().parent.parent / "docs" / "USAGE.md").read_text()
    section = usage[usage.index("## casnap prune") :].split("\n## ")[0]
    assert "`m` is months" in " ".join(section.split()), section[:400]
    with pytest.raises(InvalidPolicy, match=r"m \(months\)"):
        Duration.parse("30min")


def test_duration_before_normalises_like_go() -> None:
    assert Duration.parse("1m").before(t("2024-03-31 00:00")) == t("2024-03-02 00:00")
    assert Duration.parse("1y").before(t("2024-02-29 12:00")) == t("2023-03-01 12:00")
    assert Duration.parse("1d2h").before(t("2024-01-01 01:00")) == t("2023-12-30 23:00")
    assert Duration.parse("9999y").before(t("2024-01-01 00:00")).year == 1


def test_empty_policy() -> None:
    assert Policy().empty
    assert Policy(within=Duration()).empty
    assert not Policy(tags=(("x",),)).empty
    with pytest.raises(InvalidPolicy):
        Policy(last=-2)


# -- on a repository -------------------------------------------------------------------------------


@pytest.fixture
def utc_zone():
    """Run with the local time zone set to UTC (the CLI buckets in local time, as restic does)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def run(*args: str) -> tuple[int, str]:
    """Exit code and output (stdout alone with --json, else stdout and stderr together)."""
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout if "--json" in args else result.output


def test_seed_policy_per_path_groups(tmp_path: Path, monkeypatch, utc_zone) -> None:
    """`commit app.db` twice a day and `commit faiss` daily for a week, then the seed's policy:
    keep-daily 5 for app.db, keep-last 3 for faiss; each group pruned on its own."""
    data = make_data(tmp_path / "data")
    root = tmp_path / "repo"
    clock = {"now": "2024-05-01T00:00:00.000000Z"}
    monkeypatch.setattr("casnap.committer.now_iso", lambda: clock["now"])
    repo = Repository.init(root)
    db_states: dict[str, Path] = {}
    for day in range(1, 8):
        for hour in (2, 14):
            evolve(data, day * 100 + hour, faiss_too=False)
            clock["now"] = f"2024-05-0{day}T{hour:02d}:00:00.000000Z"
            sid = commit(repo, data, ["app.db"]).id
            db_states[sid] = copy_state(data, tmp_path / f"db-{day}-{hour}")
        clock["now"] = f"2024-05-0{day}T03:00:00.000000Z"
        commit(repo, data, ["faiss"])
    base = ["--repo", str(root), "--data", str(data)]

    code, out = run(*base, "prune", "--keep-daily", "5", "--path", "app.db", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert [g["paths"] for g in report["groups"]] == [["app.db"]]
    keep = report["groups"][0]["keep"]
    assert [k["time"][:13] for k in keep] == [f"2024-05-0{d}T14" for d in (7, 6, 5, 4, 3)]
    assert all(k["reasons"] == ["daily"] for k in keep)
    assert len(report["removed"]) == 9
    assert report["gc"]["bytes_freed"] > 0

    code, out = run(*base, "prune", "--keep-last", "3", "--path", "faiss", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert len(report["removed"]) == 4
    assert [k["time"][:10] for k in report["groups"][0]["keep"]] == [
        "2024-05-07",
        "2024-05-06",
        "2024-05-05",
    ]

    repo = Repository.open(root)
    groups = retention.group_snapshots(repo.snapshots())
    assert {k.paths: len(v) for k, v in groups.items()} == {("app.db",): 5, ("faiss",): 3}
    assert verify(repo, read_data=True).ok
    for sid, snap in repo.snapshots():
        if snap.paths == ("app.db",):
            out_dir = tmp_path / f"out-{sid.short}"
            checkout(repo, sid.hex(), out_dir, safety_snapshot=False)
            state = db_states[sid.hex()]
            expected = tmp_path / f"exp-{sid.short}"
            expected.mkdir()
            shutil.copy2(state / "app.db", expected / "app.db")
            assert same_content(out_dir, expected)


def test_hosts_sharing_a_repository_are_pruned_apart(
    tmp_path: Path, host_name: Callable[[str], None]
) -> None:
    """Two app servers, each with its /srv/app/data (here one path), commit into one repository:
    as restic groups by host and paths, `--keep-last 1` keeps the newest of each host, not only
    the newest of all (which would forget every snapshot of the other host)."""
    data = make_data(tmp_path / "data")
    root = tmp_path / "repo"
    repo = Repository.init(root)
    ids = {}
    for name in ("app-1", "app-2"):
        host_name(name)
        for step in (1, 2):
            evolve(data, step + (10 if name == "app-2" else 0))
            ids[name, step] = commit(repo, data).id
    code, out = run("--repo", str(root), "--data", str(data), "prune", "--keep-last", "1", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert sorted(report["removed"]) == sorted([ids["app-1", 1], ids["app-2", 1]])
    assert [(g["host"], [k["id"] for k in g["keep"]]) for g in report["groups"]] == [
        ("app-1", [ids["app-1", 2]]),
        ("app-2", [ids["app-2", 2]]),
    ]


def test_prune_refuses_without_rules(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data")
    repo = Repository.init(tmp_path / "repo")
    commit(repo, data)
    code, out = run("--repo", str(tmp_path / "repo"), "--data", str(data), "prune")
    assert code == InvalidPolicy.exit_code == 2
    assert "at least one keep rule" in out
    # restic's bare `prune` only frees unreferenced data: casnap's is gc, and the line says so
    assert "`casnap gc` frees space" in out
    with pytest.raises(InvalidPolicy):
        retention.prune(repo, Policy(within=Duration()))
    assert len(Repository.open(tmp_path / "repo").snapshots()) == 1


@pytest.mark.parametrize("rule", [["--keep-last", "0"], ["--keep-within", "0d"]])
def test_prune_with_only_a_zero_rule_says_zero_is_no_rule(tmp_path: Path, rule: list[str]) -> None:
    """--keep-last 0 is accepted by the option (as restic's, 0 means the rule is unused), so a
    refusal saying only that a keep rule is needed contradicts what the user just gave."""
    data = make_data(tmp_path / "data")
    repo = Repository.init(tmp_path / "repo")
    commit(repo, data)
    code, out = run("--repo", str(tmp_path / "repo"), "--data", str(data), "prune", *rule)
    assert code == 2
    assert "at least one keep rule" in out and "0 is no rule" in out
    assert len(Repository.open(tmp_path / "repo").snapshots()) == 1


@pytest.mark.parametrize(
    "rules",
    [["--keep-tag", "nosuch"], ["--keep-last", "1", "--keep-tag", "pin,nosuch"]],
    ids=["alone", "beside-a-tag-that-is-carried"],
)
def test_prune_keep_tag_no_snapshot_carries_is_an_error(tmp_path: Path, rules: list[str]) -> None:
    """A mistyped `--keep-tag` kept nothing, so the prune removed every snapshot of the group
    (`--path` of a path no snapshot has exits 4): it is that error now, and nothing is removed."""
    data = make_data(tmp_path / "data")
    root = tmp_path / "repo"
    repo = Repository.init(root)
    for step in range(3):
        evolve(data, step + 1)
        commit(repo, data, tags=("pin",) if step == 0 else ())
    before = sorted(p.name for p in root.rglob("*") if p.is_file())
    base = ["--repo", str(root), "--data", str(data)]
    code, out = run(*base, "prune", *rules)
    assert code == SnapshotNotFound.exit_code == EXIT_CODES["not-found"], out
    code_path, out_path = run(*base, "prune", "--keep-last", "1", "--path", "nosuch")
    assert code == code_path, out_path
    assert len(out.splitlines()) == 1 and "nosuch" in out and "nothing pruned" in out, out
    assert "pin" not in out.replace("pin,nosuch", ""), out  # only the tag no snapshot carries
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == before
    with pytest.raises(SnapshotNotFound):
        retention.prune(repo, Policy(tags=(("nosuch",),)), dry_run=True)


def test_prune_keep_tag_list_no_snapshot_carries_whole_is_an_error(tmp_path: Path) -> None:
    """`--keep-tag a,b` keeps the snapshots carrying both: when each tag is carried, but by no
    snapshot together (one who took the comma for `or`), it kept nothing and the prune removed
    every snapshot, exit 0. It is the error of a tag no snapshot carries, nothing removed."""
    data = make_data(tmp_path / "data")
    root = tmp_path / "repo"
    repo = Repository.init(root)
    for step in range(3):
        evolve(data, step + 1)
        commit(repo, data, tags=(("daily",), ("weekly",), ())[step])
    before = sorted(p.name for p in root.rglob("*") if p.is_file())
    base = ["--repo", str(root), "--data", str(data)]
    code, out = run(*base, "prune", "--keep-tag", "daily,weekly")
    assert code == SnapshotNotFound.exit_code, out
    assert len(out.splitlines()) == 1 and "daily,weekly" in out and "nothing pruned" in out, out
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == before
    code, out = run(*base, "prune", "--keep-tag", "daily", "--keep-tag", "weekly", "--json")
    assert code == 0, out
    assert len(json.loads(out)["removed"]) == 1


def test_prune_keep_tag_pre_checkout_before_any_checkout_is_no_error(tmp_path: Path) -> None:
    """pre-checkout is casnap's own tag, no typo: a scheduled prune that keeps those snapshots
    runs before the first checkout has saved one."""
    data = make_data(tmp_path / "data")
    root = tmp_path / "repo"
    repo = Repository.init(root)
    for step in range(2):
        evolve(data, step + 1)
        commit(repo, data)
    base = ["--repo", str(root), "--data", str(data)]
    code, out = run(*base, "prune", "--keep-last", "1", "--keep-tag", "pre-checkout", "--json")
    assert code == 0, out
    assert len(json.loads(out)["removed"]) == 1


def test_prune_keep_tag_pre_checkout_alone_before_any_checkout_is_an_error(
    tmp_path: Path,
) -> None:
    """As the only rule, before any checkout saved a pre-checkout snapshot, it keeps nothing:
    the prune would remove every snapshot, so it is the error of a tag no snapshot carries."""
    data = make_data(tmp_path / "data")
    root = tmp_path / "repo"
    repo = Repository.init(root)
    for step in range(2):
        evolve(data, step + 1)
        commit(repo, data)
    before = sorted(p.name for p in root.rglob("*") if p.is_file())
    base = ["--repo", str(root), "--data", str(data)]
    code, out = run(*base, "prune", "--keep-tag", "pre-checkout")
    assert code == SnapshotNotFound.exit_code, out
    assert "pre-checkout" in out and "nothing pruned" in out, out
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == before


def test_prune_dry_run_lists_and_changes_nothing(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data")
    root = tmp_path / "repo"
    repo = Repository.init(root)
    for step in range(4):
        evolve(data, step + 1)
        commit(repo, data, tags=("pin",) if step == 0 else ())
    base = ["--repo", str(root), "--data", str(data)]
    code, out = run(*base, "prune", "--keep-last", "1", "--keep-tag", "pin", "--dry-run")
    assert code == 0, out
    lines = out.splitlines()
    assert sum(line.strip().startswith("keep ") for line in lines) == 2
    assert sum(line.strip().startswith("remove ") for line in lines) == 2
    assert any("tag pin" in line and "[pin]" in line for line in lines)
    assert "would free" in out
    assert len(Repository.open(root).snapshots()) == 4
    # with --no-gc the dry run reports no gc: the real run then frees nothing but manifests
    args = ["prune", "--keep-last", "1", "--keep-tag", "pin", "--no-gc", "--json"]
    code, out = run(*base, *args, "--dry-run")
    assert code == 0 and json.loads(out)["gc"] is None, out
    code, out = run(*base, *args)
    report = json.loads(out)
    assert len(report["removed"]) == 2 and report["gc"] is None
    assert len(Repository.open(root).snapshots()) == 2


def test_pre_checkout_snapshots_are_a_group_of_their_own(tmp_path: Path) -> None:
    """Each checkout over unsaved data saves a pre-checkout snapshot, newer than every commit:
    in the commits' group `--keep-last 3` kept three of them and removed every real commit. They
    are a group of their own, where each rule applies to them apart, and never displace one."""
    data = make_data(tmp_path / "data")
    root = tmp_path / "repo"
    repo = Repository.init(root)
    commits = []
    for step in range(4):
        evolve(data, step + 1)
        commits.append(commit(repo, data).id)
    saved = []
    for step in range(3):
        evolve(data, step + 10)  # unsaved: the checkout saves it first
        saved.append(checkout(repo, commits[step], data).safety_snapshot)
    assert None not in saved
    base = ["--repo", str(root), "--data", str(data)]
    code, out = run(*base, "prune", "--keep-last", "3", "--dry-run", "--json")
    assert code == 0, out
    groups = json.loads(out)["groups"]
    assert [(g["pre_checkout"], [k["id"] for k in g["keep"]]) for g in groups] == [
        (False, commits[:0:-1]),
        (True, saved[::-1]),
    ]
    assert json.loads(out)["removed"] == [commits[0]]
    code, out = run(*base, "prune", "--keep-last", "3", "--dry-run")
    assert code == 0, out
    headers = [line for line in out.splitlines() if line.endswith("snapshot(s)")]
    assert len(headers) == 2 and "pre-checkout" not in headers[0], out
    assert "pre-checkout" in headers[1] and "keep 3, remove 0" in headers[1], out
    # --keep-daily 1: the day's newest commit, and the newest pre-checkout snapshot apart
    code, out = run(*base, "prune", "--keep-daily", "1", "--json")
    assert code == 0, out
    repo = Repository.open(root)
    assert {s.hex() for s, _ in repo.snapshots()} == {commits[-1], saved[-1]}
    assert verify(repo, read_data=True).ok
    keys = list(retention.group_snapshots(repo.snapshots()))
    assert [k.pre_checkout for k in keys] == [False, True]
    assert keys[0].describe() + " (pre-checkout)" == keys[1].describe()


def test_forget_by_prefix_and_tag_then_gc(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data")
    root = tmp_path / "repo"
    repo = Repository.init(root)
    ids = []
    for step in range(4):
        evolve(data, step + 1)
        ids.append(commit(repo, data, tags=("nightly",) if step == 2 else ()).id)
    base = ["--repo", str(root), "--data", str(data)]
    code, out = run(*base, "forget", ids[0][:10], "nosuchsnapshot")
    assert code == 4, out
    assert len(Repository.open(root).snapshots()) == 4  # one bad name: nothing forgotten
    # a rerun of `forget A B` after A went (an earlier run, stopped): the way on is named
    assert "forgotten already" in out and "`casnap log`" in out, out
    code, out = run(*base, "forget", ids[0][:10], "nightly", "--prune", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert sorted(report["removed"]) == sorted([ids[0], ids[2]])
    assert report["gc"]["packs_repacked"] + report["gc"]["packs_deleted"] > 0
    repo = Repository.open(root)
    assert [s.hex() for s, _ in repo.snapshots()] == [ids[1], ids[3]]
    assert checker.verify(repo, read_data=True).ok
    assert collector.collect(repo).packs_deleted == 0  # forget --prune already collected


def eight_snapshots(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    data = make_data(tmp_path / "data")
    root = tmp_path / "repo"
    repo = Repository.init(root)
    ids = []
    for step in range(8):
        evolve(data, step + 1, faiss_too=step % 2 == 0)
        ids.append(commit(repo, data).id)
    return root, data, ids


@pytest.mark.parametrize(
    "args",
    [
        ["prune", "--keep-last", "1"],
        ["prune", "--keep-last", "1", "--json"],
        ["forget", "FIRST", "SECOND", "--prune"],
        ["forget", "FIRST", "--prune", "--json"],
    ],
)
def test_a_damaged_index_stops_prune_before_any_snapshot_is_forgotten(
    tmp_path: Path, args: list[str]
) -> None:
    """prune (and forget --prune) reads and checks what its gc needs, the index files first,
    before it forgets anything: an index file that no longer matches its name stops it with
    every snapshot still there, and the error says nothing was forgotten."""
    root, data, ids = eight_snapshots(tmp_path)
    index_files = sorted((root / "index").iterdir())
    flip_byte(index_files[3], index_files[3].stat().st_size // 2)
    args = [{"FIRST": ids[0], "SECOND": ids[1][:8]}.get(a, a) for a in args]
    result = CliRunner().invoke(cli, ["--repo", str(root), "--data", str(data), *args])
    assert result.exit_code == 5, result.output
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert "does not match its name" in line and "no snapshot forgotten" in line, line
    assert {s.hex() for s, _ in Repository.open(root).snapshots()} == set(ids)


@pytest.mark.parametrize("command", ["prune", "forget"])
def test_gc_failing_after_snapshots_were_forgotten_names_them(tmp_path: Path, command: str) -> None:
    """A failure gc meets only once it carries out its plan (a damaged frame of a pack it
    repacks, read then) comes after the snapshots were forgotten: its error line says which."""
    root, data, ids = eight_snapshots(tmp_path)
    repo = Repository.open(root)
    gone = frozenset(ObjectId.from_hex(i) for i in ids[:6])
    planned = collector.plan(repo, exclude=gone)
    pack = next(f.pack for f in planned.fates.values() if f.action == collector.REPACK)
    _ids, fields = planned.keep.rows(pack)
    frame = next(f for f in fields if f["type"] == 0)  # a data frame still needed
    flip_byte(root / pack_key(pack), int(frame["offset"]) + int(frame["length"]) // 2)
    if command == "prune":
        args = ["prune", "--keep-last", "2"]
    else:
        args = ["forget", *(i[:12] for i in ids[:6]), "--prune"]
    result = CliRunner().invoke(cli, ["--repo", str(root), "--data", str(data), *args])
    assert result.exit_code == 5, result.output
    (line,) = result.stderr.splitlines()
    assert "gc stopped before deleting anything" in line, line
    assert "forgot 6 snapshot(s) first: " + ", ".join(sorted(i[:8] for i in ids[:6])) in line
    assert {s.hex() for s, _ in Repository.open(root).snapshots()} == set(ids[6:])


@pytest.mark.parametrize("how", ["id", "tag"])
def test_a_forget_prune_stopped_before_its_gc_says_how_to_finish(tmp_path: Path, how: str) -> None:
    """`forget X --prune` killed between the forget and its gc: X is gone, its data not. The
    same command run again said only that no snapshot matches X (exit 4), leaving the user no
    way to tell the space is still taken; its line now names `casnap gc` as the step that
    frees it, and gc does."""
    import signal
    import subprocess
    import sys

    data = make_data(tmp_path / "data")
    root = tmp_path / "repo"
    repo = Repository.init(root)
    ids = []
    for step in range(3):
        evolve(data, step + 1)
        ids.append(commit(repo, data, tags=("old",) if step == 0 else ()).id)
    base = ["--repo", str(root), "--data", str(data)]
    args = ["forget", ids[0][:10] if how == "id" else "--tag", *([] if how == "id" else ["old"])]
    args.append("--prune")
    done = subprocess.run(
        [sys.executable, "-m", "tests.faulty_cli", "delete:kill:1:snapshots/", *base, *args],
        cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert [s.hex() for s, _ in Repository.open(root).snapshots()] == ids[1:]
    result = CliRunner().invoke(cli, [*base, *args])
    assert result.exit_code == 4, result.output
    # the killed forget's lock: found stale (its process is gone) and said so as it is removed
    stale, line = result.stderr.splitlines()
    assert stale.startswith("casnap: warning: removed stale lock locks/"), stale
    assert "nothing forgotten" in line and "`casnap gc`" in line, line
    assert collector.collect(Repository.open(root)).bytes_freed > 0
    assert verify(Repository.open(root), read_data=True).ok
