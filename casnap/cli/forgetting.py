"""Commands that forget snapshots: prune (by a retention policy) and forget (by name or
filter), each followed by gc when asked."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from casnap.cli.main import Context, cli, pass_ctx, warn
from casnap.cli.maintenance import DRY_RUN_DONE, _print_gc, gc_done, max_unused_option
from casnap.cli.options import (
    SNAPSHOT,
    Given,
    filter_hosts,
    filter_options,
    host_option,
    snapshot_filter,
)
from casnap.cli.output import emit_json, human, printable
from casnap.cli.pipes import printing
from casnap.errors import AmbiguousSnapshot, SnapshotNotFound

if TYPE_CHECKING:  # the operations are imported by the command that runs them
    from casnap import collector, retention


def forgot_done(r: retention.PruneReport, gc_report: collector.GcReport | None, dry: bool) -> str:
    """What prune or forget did, for the line of an output that then failed."""
    if dry:
        return DRY_RUN_DONE
    done = f"{len(r.removed)} snapshot(s) forgotten"
    return f"{done}, {gc_done(gc_report, r.manifest_bytes_removed)}" if gc_report else done


def _forget_json(r: retention.PruneReport, gc_report: collector.GcReport | None) -> dict[str, Any]:
    """prune's or forget's report with the gc that followed, and the bytes both freed."""
    out = r.to_json()
    out["gc"] = gc_report.to_json() if gc_report else None
    out["bytes_freed"] = r.manifest_bytes_removed + (gc_report.bytes_freed if gc_report else 0)
    return out


def _print_groups(report: retention.PruneReport) -> None:
    for g in report.groups:
        keep = sum(d.keep for d in g.decisions)
        where = printable(g.key.describe(), backslash=False)
        click.echo(f"{where}: keep {keep}, remove {len(g.decisions) - keep} snapshot(s)")
        for d in g.decisions:
            label = " ".join(f"[{printable(t)}]" for t in d.item.tags)
            why = ", ".join(d.reasons)
            when = d.item.time.astimezone().strftime("%Y-%m-%d %H:%M:%S")
            verb = "keep  " if d.keep else "remove"
            click.echo(f"  {verb} {d.item.id[:8]}  {when}  {why:<24} {label}".rstrip())


def keep_option(period: str, text: str) -> Callable[[Any], Any]:
    """A `--keep-<period> N` option of prune."""
    return click.option(
        f"--keep-{period}",
        type=click.IntRange(min=-1),
        default=0,
        metavar="N",
        help=f"Keep {text} (-1: all).",
    )


@cli.command()
@keep_option("last", "the N newest snapshots")
@keep_option("hourly", "the newest snapshot of each of the last N hours with one")
@keep_option("daily", "the newest snapshot of each of the last N days with one")
@keep_option("weekly", "the newest snapshot of each of the last N ISO weeks with one")
@keep_option("monthly", "the newest snapshot of each of the last N months with one")
@keep_option("yearly", "the newest snapshot of each of the last N years with one")
@click.option(
    "--keep-within",
    default=None,
    metavar="DURATION",
    type=Given("a duration"),
    help="Keep snapshots newer than the group's newest (not dated in the future) minus "
    "DURATION: numbers with units y, "
    "m (months), w, d, h, e.g. 2d, 1w, 1y2m3h. As in restic, m is months and there are no "
    "minutes: 2h30m is 30 months and 2 hours.",
)
@click.option(
    "--keep-tag",
    "keep_tags",
    multiple=True,
    metavar="TAG[,TAG]",
    help="Keep snapshots carrying the tag(s) (repeatable; comma: all of them). Exit 4, nothing "
    "pruned, when no snapshot in the repository carries one of them (a typo), or a list whole.",
)
@click.option(
    "--path",
    "paths",
    multiple=True,
    metavar="P",
    help="Only snapshots committed with path P (data-dir relative, ./P, or a path to it; "
    "repeatable: with all of them; `.`: whole-dir snapshots). Exit 4 when none is.",
)
@host_option("Only snapshots taken on host H (repeatable: any of them). Exit 4 when none is.")
@click.option(
    "--dry-run", is_flag=True, help="List what would be kept and removed; change nothing."
)
@click.option("--no-gc", is_flag=True, help="Forget snapshots but do not run gc afterwards.")
@max_unused_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@pass_ctx
def prune(
    c: Context,
    keep_last: int,
    keep_hourly: int,
    keep_daily: int,
    keep_weekly: int,
    keep_monthly: int,
    keep_yearly: int,
    keep_within: str | None,
    keep_tags: tuple[str, ...],
    paths: tuple[str, ...],
    dry_run: bool,
    no_gc: bool,
    max_unused: float,
    as_json: bool,
) -> None:
    """Forget snapshots a retention policy does not keep, then gc.

    Rules work as in restic, per group of snapshots with the same host, data dir and paths (the
    pre-checkout snapshots a checkout saved are a group of their own): each
    --keep-hourly/daily/weekly/monthly/yearly N keeps the newest snapshot of each of the last N
    periods that have one, and the group's oldest snapshot while fewer than N periods have one
    (as restic 0.16+ and borg 1.2+ do); a snapshot is kept when any rule keeps it. At least one
    rule is needed.
    """
    from casnap import retention, selection

    policy = retention.Policy(
        last=keep_last,
        hourly=keep_hourly,
        daily=keep_daily,
        weekly=keep_weekly,
        monthly=keep_monthly,
        yearly=keep_yearly,
        within=retention.Duration.parse(keep_within) if keep_within else None,
        tags=selection.parse_tags(keep_tags, "--keep-tag"),
    )
    repo = c.open()
    select = snapshot_filter(c, repo, paths, ()) if paths or filter_hosts() else None
    # a dry run's gc: what the real run's then frees (--no-gc: none)
    gc = None if no_gc else max_unused
    r = retention.prune(repo, policy, select=select, dry_run=dry_run, gc=gc)
    if select is not None and not r.groups:
        raise SnapshotNotFound(f"no snapshot {select.describe()}: nothing pruned")
    gc_report = r.gc
    with printing(forgot_done(r, gc_report, dry_run)):
        if as_json:
            emit_json(_forget_json(r, gc_report))
            return
        _print_groups(r)
        verbs = ("would remove", "would keep") if dry_run else ("removed", "kept")
        c.say(
            f"{verbs[0]} {len(r.removed)} snapshot(s) ({human(r.manifest_bytes_removed)} of "
            f"manifests), {verbs[1]} {r.kept} ({r.policy})"
        )
        if gc_report is not None:
            _print_gc(c, gc_report, r.manifest_bytes_removed)


@cli.command()
@click.argument("snapshots", nargs=-1, type=SNAPSHOT)
@filter_options(
    "Forget every snapshot committed with path P (data-dir relative, ./P, or a path to it; "
    "repeatable: with all of them; `.`: whole-dir snapshots); with SNAPSHOTS, only they may be "
    "named.",
    "Forget every snapshot carrying tag T (repeatable: any of them; `a,b`: both); with "
    "SNAPSHOTS, only they may be named.",
    "Forget every snapshot taken on host H (repeatable: any of them); with SNAPSHOTS, only "
    "they may be named.",
)
@click.option("--prune", "run_gc", is_flag=True, help="Run gc afterwards to free the space.")
@click.option("--dry-run", is_flag=True, help="Show what would be forgotten; change nothing.")
@max_unused_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@pass_ctx
def forget(
    c: Context,
    snapshots: tuple[str, ...],
    filter_paths: tuple[str, ...],
    filter_tags: tuple[str, ...],
    run_gc: bool,
    dry_run: bool,
    max_unused: float,
    as_json: bool,
) -> None:
    """Forget SNAPSHOTS, or every snapshot --tag / --path select; the data goes at the next gc.

    A snapshot named by tag is the newest carrying it (as everywhere): `forget nightly` forgets
    one snapshot, `forget --tag nightly` every snapshot tagged nightly. Names are resolved before
    anything is forgotten, so one bad name forgets nothing. Filters that select nothing exit 4.

    Example: casnap forget --tag pre-checkout --prune
    """
    from casnap import retention

    if not snapshots and not filter_paths and not filter_tags and not filter_hosts():
        raise click.UsageError(
            "name SNAPSHOTS to forget, or select them with --tag, --path or --host"
        )
    repo = c.open()
    select = snapshot_filter(c, repo, filter_paths, filter_tags)
    gc = max_unused if run_gc else None
    try:
        r = retention.forget(repo, snapshots, select=select, dry_run=dry_run, gc=gc)
        if not r.removed:
            raise SnapshotNotFound(f"no snapshot {select.describe()}")
    except SnapshotNotFound as exc:  # a rerun of a `forget --prune` stopped before its gc?
        if isinstance(exc, AmbiguousSnapshot):
            raise
        hint = UNPRUNED if run_gc else ""
        if len(snapshots) > 1:  # every name must match; one may be gone since an earlier run
            hint += (
                " (every name must match: forgotten already? name only those `casnap log` lists)"
            )
        raise SnapshotNotFound(f"{exc}: nothing forgotten{hint}") from exc
    for tag, carrying, newest in r.tags_named:
        warn(
            f"{carrying} snapshots carry the tag {tag}; forgetting only the newest "
            f"({newest[:8]}): --tag {tag} selects them all"
        )
    gc_report = r.gc
    with printing(forgot_done(r, gc_report, dry_run)):
        if as_json:
            emit_json(_forget_json(r, gc_report))
            return
        for sid in r.removed:
            click.echo(sid)
        c.say(
            f"{'would forget' if dry_run else 'forgot'} {len(r.removed)} snapshot(s) "
            f"({human(r.manifest_bytes_removed)} of manifests)"
        )
        if gc_report is not None:
            _print_gc(c, gc_report, r.manifest_bytes_removed)


# what the rerun of a `forget --prune` stopped between its forget and its gc is told
UNPRUNED = (
    " (if an earlier `forget --prune` was stopped between its forget and its gc, `casnap gc` "
    "frees the space)"
)
