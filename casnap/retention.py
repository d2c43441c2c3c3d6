"""Retention: which snapshots a keep policy keeps, and forgetting the others.

The policy is restic's: snapshots are taken newest first; each bucket rule (last, hourly, daily,
weekly, monthly, yearly) keeps the newest snapshot of each of its N most recent distinct buckets,
and the oldest snapshot when it has buckets left at the end (as restic 0.16+ and borg 1.2+ do:
the first snapshot is not lost before the rule has its N); keep-within keeps everything newer
than the newest snapshot minus a duration; keep-tag keeps what carries the tags. A snapshot is
kept when any rule keeps it. The decision functions are pure, over (id, time, tags); `prune`
and `forget` apply them to a repository, group by group (the pre-checkout snapshots of a group
are a group of their own: GroupKey).
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from casnap import heads, locks, selection
from casnap.config import parse_time
from casnap.constants import SAFETY_TAG
from casnap.errors import CasnapError, InvalidArgument, InvalidPolicy, SnapshotNotFound
from casnap.ids import ObjectId
from casnap.manifest import Snapshot
from casnap.repository import Repository
from casnap.selection import SnapshotFilter

if TYPE_CHECKING:  # gc (numpy) is imported when a prune runs it
    from casnap.collector import GcReport
    from casnap.locks import Held

UNLIMITED = -1  # a bucket count that keeps one snapshot in every bucket


# -- durations -------------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+)([ymwdh])")


@dataclass(frozen=True)
class Duration:
    """A calendar duration for keep-within: years, months, days and hours (a week is 7 days)."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    @classmethod
    def parse(cls, text: str) -> Duration:
        """Parse `1y2m3d4h` style text (units y, m = months, w, d, h, each at most once, in
        any order; restic's: no minutes)."""
        s = text.strip().lower()
        parts = _DURATION.findall(s)
        if not s or "".join(n + u for n, u in parts) != s:
            raise InvalidPolicy(
                f"invalid duration {text!r}: use numbers with units y, m (months), w, d, h "
                "(e.g. 2d, 1y2m; no minutes, as in restic)"
            )
        units = [u for _, u in parts]
        if len(set(units)) != len(units):
            raise InvalidPolicy(f"invalid duration {text!r}: a unit is given twice")
        v = {u: int(n) for n, u in parts}
        return cls(v.get("y", 0), v.get("m", 0), v.get("w", 0) * 7 + v.get("d", 0), v.get("h", 0))

    @property
    def zero(self) -> bool:
        return not (self.years or self.months or self.days or self.hours)

    def before(self, t: dt.datetime) -> dt.datetime:
        """t minus this duration, calendar fields normalised the way Go's AddDate does."""
        months = t.year * 12 + (t.month - 1) - self.years * 12 - self.months
        try:
            first = t.replace(year=months // 12, month=months % 12 + 1, day=1)
            return first + dt.timedelta(days=t.day - 1 - self.days, hours=-self.hours)
        except (ValueError, OverflowError):  # before year 1: everything is within
            return dt.datetime.min.replace(tzinfo=t.tzinfo)

    def __str__(self) -> str:
        """Largest unit first, weeks as days: `2h30m` (30 months) is `30m2h`."""
        out = "".join(
            f"{n}{u}"
            for n, u in ((self.years, "y"), (self.months, "m"), (self.days, "d"), (self.hours, "h"))
            if n
        )
        return out or "0h"


# -- the pure policy -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """What retention needs to know of a snapshot."""

    id: str
    time: dt.datetime  # timezone-aware
    tags: tuple[str, ...] = ()
    order: int = 0  # place in the repository's listing: of equal times, the later made is newer


@dataclass(frozen=True)
class Policy:
    """Keep rules; counts are numbers of buckets (UNLIMITED for all), 0 = rule unused."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration | None = None
    tags: tuple[tuple[str, ...], ...] = ()  # keep a snapshot carrying all tags of any one entry

    def __post_init__(self) -> None:
        for name in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
            if getattr(self, name) < UNLIMITED:
                raise InvalidPolicy(f"keep-{name} must be a count >= 0 (or {UNLIMITED}: all)")

    @property
    def empty(self) -> bool:
        """True when no rule would keep anything."""
        counts = (self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly)
        return not any(counts) and (self.within is None or self.within.zero) and not any(self.tags)

    def describe(self) -> str:
        parts = [
            f"keep-{name} {'all' if n == UNLIMITED else n}"
            for name, n in (
                ("last", self.last),
                ("hourly", self.hourly),
                ("daily", self.daily),
                ("weekly", self.weekly),
                ("monthly", self.monthly),
                ("yearly", self.yearly),
            )
            if n
        ]
        if self.within is not None and not self.within.zero:
            parts.append(f"keep-within {self.within}")
        parts.extend(f"keep-tag {','.join(t)}" for t in self.tags if t)
        return ", ".join(parts) or "no rule"


@dataclass(frozen=True)
class Decision:
    """Whether one snapshot is kept, and by which rules."""

    item: Item
    keep: bool
    reasons: tuple[str, ...]


def _local(t: dt.datetime, tz: dt.tzinfo | None) -> dt.datetime:
    return t.astimezone(tz) if tz is not None else t.astimezone()


def _hour(t: dt.datetime) -> int:
    return ((t.year * 100 + t.month) * 100 + t.day) * 100 + t.hour


def _day(t: dt.datetime) -> int:
    return (t.year * 100 + t.month) * 100 + t.day


def _week(t: dt.datetime) -> int:
    iso = t.isocalendar()  # ISO 8601: weeks start on Monday, week 1 holds the first Thursday
    return iso.year * 100 + iso.week


def _month(t: dt.datetime) -> int:
    return t.year * 100 + t.month


def _year(t: dt.datetime) -> int:
    return t.year


_BUCKETS: tuple[tuple[str, Callable[[dt.datetime], int]], ...] = (
    ("hourly", _hour),
    ("daily", _day),
    ("weekly", _week),
    ("monthly", _month),
    ("yearly", _year),
)


def newest_first(items: Iterable[Item]) -> list[Item]:
    """Items sorted newest first; equal times by their order in the repository's listing (a
    snapshot after its parent: manifest.chronological), then by id, deterministic either way."""
    return sorted(items, key=lambda i: (i.time, i.order, i.id), reverse=True)


def apply_policy(
    items: Iterable[Item],
    policy: Policy,
    tz: dt.tzinfo | None = dt.UTC,
    now: dt.datetime | None = None,
) -> list[Decision]:
    """Decide every item, newest first. Buckets are computed in tz (None: the local zone).

    keep-within is measured from the newest item not later than now (default: the current
    time), as restic does: one dated years ahead by a wrong clock would otherwise take the
    cutoff with it and leave every real snapshot older than it. With none, all are within."""
    ordered = newest_first(items)
    if not ordered:
        return []
    cutoff = None
    if policy.within is not None and not policy.within.zero:
        now = now or dt.datetime.now(dt.UTC)
        newest = next((i.time for i in ordered if i.time <= now), None)
        if newest is None:  # every one in the future
            cutoff = dt.datetime.min.replace(tzinfo=dt.UTC)
        else:
            cutoff = policy.within.before(newest)
    counts = {"last": policy.last} | {name: getattr(policy, name) for name, _ in _BUCKETS}
    last_seen: dict[str, int | None] = dict.fromkeys(counts)
    out = []
    for nr, item in enumerate(ordered):
        reasons: list[str] = []
        for wanted in policy.tags:
            if wanted and all(t in item.tags for t in wanted):
                reasons.append(f"tag {','.join(wanted)}")
        if cutoff is not None and item.time > cutoff:
            reasons.append(f"within {policy.within}")
        local = _local(item.time, tz)

        def serial(_t: dt.datetime, n: int = nr) -> int:
            return n  # every snapshot its own bucket

        for name, bucket in (("last", serial), *_BUCKETS):
            left = counts[name]
            if left == 0:
                continue
            value = bucket(local)
            # the oldest snapshot is kept too while the rule has buckets left (restic 0.16+,
            # borg 1.2+): the history reaches as far back as it can until the rule is met
            oldest = nr == len(ordered) - 1 and value == last_seen[name]
            if value != last_seen[name] or oldest:
                last_seen[name] = value
                if left > 0:
                    counts[name] = left - 1
                reasons.append(f"oldest {name}" if oldest else name)
        out.append(Decision(item, bool(reasons), tuple(reasons)))
    return out


# -- groups ----------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class GroupKey:
    """Snapshots are pruned per host, data dir and committed paths (() = the whole dir), as
    restic groups by host and paths: hosts sharing a repository keep their own snapshots. The
    pre-checkout snapshots a checkout saves (SAFETY_TAG) are a group of their own beside them:
    newer than the commits they follow, among them they took the places of `--keep-last N` and
    of each day's `--keep-daily` and displaced the commits the user made."""

    host: str
    source: str
    paths: tuple[str, ...]
    pre_checkout: bool = False

    def describe(self) -> str:
        where = f"{self.host}:{self.source} [{' '.join(self.paths) if self.paths else 'whole dir'}]"
        return f"{where} ({SAFETY_TAG})" if self.pre_checkout else where


def group_snapshots(
    snaps: Iterable[tuple[ObjectId, Snapshot]],
) -> dict[GroupKey, list[tuple[ObjectId, Snapshot]]]:
    """Snapshots by (host, source dir, paths, pre-checkout or not), each group oldest first,
    groups sorted (a pre-checkout group after the commits' group it sits beside)."""
    groups: dict[GroupKey, list[tuple[ObjectId, Snapshot]]] = {}
    for sid, snap in snaps:
        key = GroupKey(snap.host, snap.source, snap.paths, SAFETY_TAG in snap.tags)
        groups.setdefault(key, []).append((sid, snap))
    return dict(sorted(groups.items()))


# -- applying it -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupResult:
    """The decisions for one group, newest first."""

    key: GroupKey
    decisions: tuple[Decision, ...]

    def to_json(self) -> dict[str, Any]:
        def row(d: Decision) -> dict[str, Any]:
            return {
                "id": d.item.id,
                "time": d.item.time.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "tags": list(d.item.tags),
                "reasons": list(d.reasons),
            }

        return {
            "host": self.key.host,
            "source": self.key.source,
            "paths": list(self.key.paths),
            "pre_checkout": self.key.pre_checkout,
            "keep": [row(d) for d in self.decisions if d.keep],
            "remove": [row(d) for d in self.decisions if not d.keep],
        }


@dataclass
class PruneReport:
    """What prune or forget removed (or, with dry_run, would remove)."""

    dry_run: bool
    policy: str
    groups: list[GroupResult] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: int = 0
    manifest_bytes_removed: int = 0  # stored size of the manifests removed (their data: gc)
    seconds: float = 0.0
    # tags named as snapshots that more snapshots carry: (tag, how many carry it, the newest's
    # id, the one forgotten); for stderr, not part of the JSON
    tags_named: list[tuple[str, int, str]] = field(default_factory=list)
    gc: GcReport | None = None  # the gc that followed (with gc=PCT), not part of the JSON

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "policy": self.policy,
            "groups": [g.to_json() for g in self.groups],
            "removed": list(self.removed),
            "kept": self.kept,
            "manifest_bytes_removed": self.manifest_bytes_removed,
            "seconds": self.seconds,
        }


def item_of(sid: ObjectId, snap: Snapshot, order: int = 0) -> Item:
    return Item(sid.hex(), parse_time(snap.time), snap.tags, order)


def prune(
    repo: Repository,
    policy: Policy,
    *,
    select: SnapshotFilter | None = None,
    dry_run: bool = False,
    tz: dt.tzinfo | None = None,
    gc: float | None = None,
) -> PruneReport:
    """Forget the snapshots policy does not keep, in every group (or the groups whose snapshots
    select matches: with paths, those committed with all of them; see selection.py).

    Refuses an empty policy: a prune that keeps nothing is always a mistake; so is a keep-tag
    naming a tag no snapshot carries (SnapshotNotFound, nothing removed). Buckets use tz
    (None: the local time zone, as restic does). Data is reclaimed by gc afterwards: with gc
    (its max-unused percentage), under the same lock, planned before anything is forgotten
    (see _remove); not when select matches no snapshot.
    """
    if policy.empty:
        raise InvalidPolicy(
            "prune needs at least one keep rule (--keep-last, --keep-hourly, --keep-daily, "
            "--keep-weekly, --keep-monthly, --keep-yearly, --keep-within or --keep-tag; a count "
            "or duration of 0 is no rule, as in restic); "
            "to drop named snapshots use `casnap forget`; `casnap gc` frees space without "
            "forgetting any (what restic's bare prune does)"
        )
    t0 = time.perf_counter()
    report = PruneReport(dry_run=dry_run, policy=policy.describe())
    with repo.lock("prune", dry_run=dry_run) as held:
        repo.refresh()
        snaps = repo.snapshots(files=True)
        _refuse_unknown_tags(policy, snaps)
        for key, members in group_snapshots(snaps).items():
            if select is not None:
                members = select.select(members)
                if not members:
                    continue
            decisions = apply_policy(
                (item_of(s, snap, n) for n, (s, snap) in enumerate(members)), policy, tz
            )
            report.groups.append(GroupResult(key, tuple(decisions)))
            report.kept += sum(d.keep for d in decisions)
            report.removed.extend(d.item.id for d in decisions if not d.keep)
        _remove(repo, report, dry_run, gc if select is None or report.groups else None, held)
    report.seconds = time.perf_counter() - t0
    return report


def _refuse_unknown_tags(policy: Policy, snaps: Iterable[tuple[ObjectId, Snapshot]]) -> None:
    """SnapshotNotFound when a keep-tag names a tag no snapshot of the repository carries (but
    SAFETY_TAG, casnap's own, carried by none before the first checkout saves one): a typo
    that keeps nothing, so the prune would remove every snapshot of a group it was to keep. As
    a --path no snapshot was committed with, it stops the prune with nothing removed. So does a
    list (`a,b`: all of them) whose tags no snapshot carries together."""
    tag_sets = {frozenset(snap.tags) for _, snap in snaps}
    carried = set().union(*tag_sets)
    others = replace(policy, tags=tuple(t for t in policy.tags if t != (SAFETY_TAG,)))
    if SAFETY_TAG not in carried and others.empty:  # alone, before a checkout saved one
        raise SnapshotNotFound(
            f"--keep-tag {SAFETY_TAG}: no snapshot carries it yet (a checkout that replaces "
            "files saves the first), so as the only rule it keeps nothing: nothing pruned"
        )
    carried.add(SAFETY_TAG)
    named = dict.fromkeys(tag for wanted in policy.tags for tag in wanted)
    missing = [tag for tag in named if tag not in carried]
    if missing:
        what = f"tags {', '.join(missing)}" if len(missing) > 1 else f"tag {missing[0]}"
        raise SnapshotNotFound(
            f"--keep-tag: no snapshot in the repository carries the {what} (mistyped?): "
            "nothing pruned"
        )
    # `a,b` keeps what carries both: each carried, but never together, keeps nothing either
    apart = [
        ",".join(wanted)
        for wanted in policy.tags
        if len(wanted) > 1 and not any(set(wanted) <= tags for tags in tag_sets)
    ]
    if apart:
        raise SnapshotNotFound(
            f"--keep-tag {' '.join(apart)}: no snapshot in the repository carries all of "
            "those tags together (a comma means all of them; repeat --keep-tag for any of "
            "them): nothing pruned"
        )


def forget(
    repo: Repository,
    refs: Sequence[str],
    *,
    select: SnapshotFilter | None = None,
    dry_run: bool = False,
    gc: float | None = None,
) -> PruneReport:
    """Forget the named snapshots (ids, unique prefixes, `latest`, tags: their newest snapshot,
    as resolve() reads them), or without names every snapshot select matches. Names resolve only
    among the snapshots select matches; with gc, then gc as prune runs it (when any was named).

    Every name is resolved before anything is removed, so one bad name removes nothing. A tag
    named that more snapshots carry gets a note in the report's notes.
    """
    select = select or SnapshotFilter()
    if not refs and not select.active:
        raise InvalidArgument("forget needs snapshots to forget, or a filter (tags, paths)")
    t0 = time.perf_counter()
    named = " ".join(refs)
    how = " ".join(x for x in (named, select.describe()) if x)
    report = PruneReport(dry_run=dry_run, policy=f"forget {how}")
    with repo.lock("forget", dry_run=dry_run) as held:
        repo.refresh()
        # the heads name them (what each snapshot holds is not read); a snapshot whose manifest
        # does not read is forgotten by its id, and stops any other forget (below)
        snaps = repo.snapshots(skip_damaged=True)
        if refs:
            targets: list[ObjectId] = []
            resolver = selection.Resolver(snaps, select, repo.damaged)  # made once: many names
            for ref in dict.fromkeys(refs):  # a name given twice is one name
                bad = heads.named(repo.damaged, ref) if not select.active else []
                if len(bad) == 1 and not any(s.hex().startswith(ref.lower()) for s, _ in snaps):
                    targets.append(bad[0])
                    continue
                hit = resolver.resolve(ref)
                targets.append(hit.id)
                carrying = resolver.carrying(ref)
                if hit.by == "tag" and carrying > 1:
                    report.tags_named.append((ref, carrying, hit.id.hex()))
            targets = list(dict.fromkeys(targets))
        else:
            targets = [sid for sid, _ in select.select(snaps)]
        # a damaged manifest of a snapshot it keeps stops it, as it stops gc; one it forgets
        # (a file list casnap cannot read) goes
        repo.snapshots(files=True, but=set(targets))  # a set: looked up per snapshot
        report.removed = [sid.hex() for sid in targets]
        report.kept = len(snaps) + len(repo.damaged) - len(targets)
        _remove(repo, report, dry_run, gc if targets else None, held)
    report.seconds = time.perf_counter() - t0
    return report


def _remove(
    repo: Repository,
    report: PruneReport,
    dry_run: bool,
    gc: float | None,
    held: Held | None = None,
) -> None:
    """Delete the manifests of report.removed (a dry run only counts them), adding up their
    stored size; with gc (max-unused), then gc, into report.gc. Hold the lock (held: confirmed
    before each delete, Held.before_delete).

    gc is planned first, as if they were forgotten already: it reads and checks everything it
    needs (the manifests, the index files, the pack directories, every chunk list), so damage
    that stops gc stops the prune before any snapshot is forgotten. A failure after that (a
    pack gc repacks found damaged, a full disk) names the snapshots forgotten by then."""
    from casnap import collector  # numpy: only for a prune that runs gc

    t0 = time.perf_counter()
    planned = None
    if gc is not None:
        gone = frozenset(ObjectId.from_hex(h) for h in report.removed)
        try:
            planned = collector.plan(repo, max_unused=gc, exclude=gone)
        except CasnapError as exc:
            raise type(exc)(f"{exc} (no snapshot forgotten)") from exc
    sizes = repo.manifest_sizes()
    forgotten: list[str] = []
    try:
        with repo.backend.deleting():  # durable together, before gc deletes what they used
            for hex_id in report.removed:
                report.manifest_bytes_removed += sizes.get(hex_id, 0)
                if not dry_run:
                    locks.before_delete(held, in_a_row=True)
                    repo.remove_snapshot(ObjectId.from_hex(hex_id))
                    forgotten.append(hex_id)
        if planned is not None:
            collector.carry_out(repo, planned, dry_run=dry_run, held=held)
            repo.refresh()
            planned.report.seconds = time.perf_counter() - t0
            report.gc = planned.report
    except CasnapError as exc:
        if not forgotten:
            raise
        named = ", ".join(sorted(h[:8] for h in forgotten))
        raise type(exc)(f"{exc} (forgot {len(forgotten)} snapshot(s) first: {named})") from exc
