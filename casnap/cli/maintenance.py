"""Commands that maintain and check the repository: gc, verify (and its alias check), repair-index,
unlock, stats (prune and forget, which end with gc, are in forgetting.py)."""

from __future__ import annotations

import errno
import inspect
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import click

from casnap.cli.main import Context, cli, pass_ctx
from casnap.cli.options import (
    HOST_FILTER_HELP,
    PATH_FILTER_HELP,
    SNAPSHOT,
    TAG_FILTER_HELP,
    Given,
    Percent,
    filter_options,
    resolve_ref,
    snapshot_filter,
)
from casnap.cli.output import emit_json, human, local_time, paths_label, printable, progress_bar
from casnap.cli.pipes import StdoutFailed, output_failed, printing
from casnap.cli.restoring import _smoke_summary
from casnap.constants import DEFAULT_MAX_UNUSED
from casnap.errors import CasnapError, CheckFailed

if TYPE_CHECKING:  # the operations are imported by the command that runs them
    from casnap import collector
    from casnap.checker import SmokeVerifyResult, VerifyReport
    from casnap.repair import RepairReport

# -- maintenance: gc, verify, repair-index, stats -------------------------------------------------


def _print_checks(report: dict[str, Any]) -> None:
    for ch in report["checks"]:
        mark = "FAIL" if not ch["ok"] else "warn" if ch.get("warning") else "ok  "
        where = printable(ch["path"]) if ch["path"] else "-"
        detail = printable(str(ch["detail"]), backslash=False)
        click.echo(f"  {mark} {ch['check']:<17} {where:<28} {detail}")


def _print_gc(c: Context, r: collector.GcReport, manifests: int = 0) -> None:
    """gc's report; manifests: bytes of the snapshot manifests prune or forget deleted first,
    counted in what was freed."""
    would = "would " if r.dry_run else ""
    c.say(
        f"gc: {r.snapshots} snapshots reference {r.referenced_blobs} blobs; "
        f"{r.packs_before} packs ({human(r.pack_bytes_before)})"
    )
    c.say(
        f"gc: {would}delete {r.packs_deleted + r.packs_unindexed} pack(s) "
        f"({r.packs_unindexed} named by no index), {would}repack {r.packs_repacked} into "
        f"{r.packs_written}, {would}drop {r.index_entries_dropped} index entries, "
        f"{would}replace {r.index_files_removed} index file(s) with {r.index_files_written}, "
        f"{would}remove {r.temp_files_removed} temp file(s)"
    )
    deleted, wrote = ("would delete", "would write") if r.dry_run else ("deleted", "wrote")
    detail = f"{deleted} {human(r.bytes_deleted + manifests)}"
    detail += f", {human(manifests)} of it snapshot manifests;" if manifests else ","
    net = freed_phrase(r.bytes_freed + manifests, dry_run=r.dry_run)
    click.echo(f"{net} ({detail} {wrote} {human(r.bytes_written)})")


DRY_RUN_DONE = "nothing was changed (--dry-run)"


def gc_done(r: collector.GcReport, manifests: int = 0) -> str:
    """What a gc did, for the line of an output that then failed (cli/pipes.printing)."""
    if r.dry_run:
        return DRY_RUN_DONE
    return f"gc is done: {freed_phrase(r.bytes_freed + manifests, dry_run=False)}"


def freed_phrase(net: int, *, dry_run: bool) -> str:
    """ "freed 48 B", or "grew by 13 B" when gc wrote more than it deleted (an index file
    larger than those it replaced)."""
    would = "would " if dry_run else ""
    if net < 0:
        return f"{would}grow by {human(-net)}" if dry_run else f"grew by {human(-net)}"
    return f"{would}free {human(net)}" if dry_run else f"freed {human(net)}"


max_unused_option = click.option(
    "--max-unused",
    type=Percent(unlimited=True),
    default=DEFAULT_MAX_UNUSED,
    show_default=True,
    metavar="PCT",
    help="Repack a pack when more than PCT% of it is unreferenced (`unlimited`, as restic "
    "writes it, is 100: only packs wholly unreferenced go).",
)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Report what would be freed; change nothing.")
@max_unused_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@pass_ctx
def gc(c: Context, dry_run: bool, max_unused: float, as_json: bool) -> None:
    """Delete data no snapshot references and repack mostly-unused packs.

    Takes the exclusive lock: waits for running commits and checkouts, and they wait for it.
    Also removes packs and temp files left by interrupted commits.
    """
    from casnap import collector

    r = collector.collect(c.open(), dry_run=dry_run, max_unused=max_unused)
    with printing(gc_done(r)):  # a stdout closed or full: said so, with what gc did
        if as_json:
            emit_json(r.to_json())
            return
        _print_gc(c, r)


@cli.command(name="verify")
@click.argument("snapshots", nargs=-1, type=SNAPSHOT)
@click.option("--read-data", is_flag=True, help="Read every pack and re-hash every chunk.")
@click.option(
    "--read-data-subset",
    type=Percent(min_open=True),
    default=None,
    metavar="PCT",
    help="Read a random PCT% of the packs.",
)
@click.option(
    "--smoke",
    is_flag=True,
    help="Also restore SNAPSHOTS (default `latest`) into a temporary staging dir and run the "
    "smoke checks there (SQLite integrity, FAISS read/ntotal/search, framework stores).",
)
@click.option(
    "--smoke-cmd",
    metavar="CMD",
    default=None,
    type=Given("a command"),
    help="Also run CMD on each restored snapshot, with $CASNAP_STAGED_DIR naming a disposable "
    "copy of it (CMD may write there).",
)
@filter_options()
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@pass_ctx
def verify_cmd(
    c: Context,
    snapshots: tuple[str, ...],
    read_data: bool,
    read_data_subset: float | None,
    smoke: bool,
    smoke_cmd: str | None,
    filter_paths: tuple[str, ...],
    filter_tags: tuple[str, ...],
    as_json: bool,
) -> None:
    """Check that the repository (or SNAPSHOTS) is whole; report every problem.

    Without options the structure is checked: manifests, index files, pack directories and chunk
    lists. --read-data also reads every pack and verifies every chunk's hash. Exits 9 when
    anything is wrong, naming the damaged chunks and the snapshots and files they break. With
    SNAPSHOTS, only their chunks are followed and only packs holding them are read; manifests,
    index and pack directories are always checked whole.

    --smoke then restores each of SNAPSHOTS (default `latest`) into a temporary dir, every hash
    verified, and runs the checkout smoke checks on it; --smoke-cmd runs a command on a
    disposable copy of it, named by $CASNAP_STAGED_DIR. The data dir is never touched.

    Example: casnap verify --smoke latest
    """
    from casnap.checker import verify
    from casnap.staging import raise_if_smoke_failed, smoke_verify

    if read_data and read_data_subset is not None:
        raise click.UsageError("--read-data and --read-data-subset exclude each other")
    subset = read_data_subset
    repo = c.open()
    select = snapshot_filter(c, repo, filter_paths, filter_tags)
    with progress_bar(c, "verify", "read data") as progress:
        r = verify(
            repo,
            snapshots,
            read_data=read_data,
            subset_pct=subset,
            select=select,
            progress=progress,
        )
    smoked = []
    if (smoke or smoke_cmd) and r.ok:
        done = set()  # `verify ID latest` naming one snapshot twice restores it once
        for ref in snapshots or ("latest",):
            sid = resolve_ref(c, repo, ref, filter_paths, filter_tags)
            if sid in done:
                continue
            done.add(sid)
            with progress_bar(c, f"restore {sid.short}") as progress:
                smoked.append(
                    smoke_verify(
                        repo, sid.hex(), smoke_checks=smoke, smoke_cmd=smoke_cmd, progress=progress
                    )
                )
    try:
        _print_verify(c, r, smoked, as_json, bool(smoke or smoke_cmd))
    except StdoutFailed as exc:  # damage found outranks a report that cannot be written
        if r.ok or exc.errno == errno.EPIPE:
            raise
        raise CheckFailed(f"verify: {r.summary()} ({output_failed(exc)})") from exc
    if not r.ok:
        raise CheckFailed(f"verify: {r.summary()}")
    raise_if_smoke_failed(smoked)


def _print_verify(
    c: Context, r: VerifyReport, smoked: list[SmokeVerifyResult], as_json: bool, smoking: bool
) -> None:
    """verify's report: its problems and summary, then each snapshot's smoke checks."""
    if as_json:
        out = r.to_json()
        if smoking:
            out["smoke"] = [s.to_json() for s in smoked] if r.ok else None
        emit_json(out)
    else:
        for p in r.problems:
            click.echo(printable(p.line(), backslash=False))
        for note in r.notes:
            c.say(f"note: {note}")
        if r.ok:
            click.echo(f"verify: {r.summary()}")
        elif smoking:
            c.say("smoke checks not run: the repository has the problems above")
        for s in smoked:
            click.echo(
                f"snapshot {s.id[:8]}: {s.files} files, {human(s.bytes_verified)} restored, "
                "every hash verified"
            )
            if s.smoke is not None:
                _print_checks(s.smoke)
                click.echo(_smoke_summary(s.smoke))


cli.add_command(
    click.Command(
        "check",
        params=verify_cmd.params,
        callback=verify_cmd.callback,
        # verify's docstring dedented first: after this unindented line, click would keep its indent
        help="The same as `casnap verify` (restic's name for it).\n\n"
        + inspect.cleandoc(verify_cmd.help or ""),
        short_help="The same as verify: check that the repository is whole.",
    )
)


@cli.command(name="repair-index")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@pass_ctx
def repair_index(c: Context, as_json: bool) -> None:
    """Rebuild the index from the packs alone (after index files were lost or damaged).

    Damaged packs are salvaged chunk by chunk or skipped, and reported. Takes the exclusive lock.
    """
    from casnap import repair

    r = repair.repair_index(c.open())
    lost = (
        f"repair-index: {r.missing} blob(s) the snapshots need are in no intact pack; "
        "run `casnap verify` to see which files they break"
    )
    done = f"the index is rebuilt: {r.chunks_indexed} chunks indexed from {r.packs} packs"
    try:
        # stdout takes the report, and without --json the packs left out: a stdout closed or
        # full fails in one line saying what is done
        with printing(done) if as_json or r.skipped else nullcontext():
            _print_repair(c, r, as_json)
    except CasnapError as exc:  # blobs lost outrank a report that cannot be written
        if r.missing:
            raise CheckFailed(f"{lost} ({exc})") from exc
        raise
    if r.missing:  # with --json too: the exit code, not only the report, says blobs are lost
        raise CheckFailed(lost)


def _print_repair(c: Context, r: RepairReport, as_json: bool) -> None:
    if as_json:
        emit_json(r.to_json())
        return
    for key, reason in r.skipped:
        click.echo(printable(f"{key}: {reason}", backslash=False))
    others = f", {r.others} other object(s) left out" if r.others else ""
    c.say(
        f"repair-index: {r.chunks_indexed} chunks indexed from {r.packs} packs, "
        f"{len(r.skipped) - r.others} pack(s) damaged{others}, "
        f"{r.index_files_removed} old index file(s) removed"
    )


@cli.command()
@click.option(
    "--force",
    is_flag=True,
    help="Also remove locks whose process may still run (refreshed lately on another host, or "
    "alive here): only when you know it is gone.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@pass_ctx
def unlock(c: Context, force: bool, as_json: bool) -> None:
    """Remove stale locks: those not refreshed for 30 minutes (their holder, on any host,
    stopped), those of processes of this host that no longer run, and lock files that cannot be
    read. Prints each lock removed and why.

    A lock another host refreshed lately cannot be checked from here, so it is kept (and named)
    unless --force, which removes every lock: a commit or gc still running would then lose its
    protection (and fail when it ends). Takes no lock itself.

    Example: casnap unlock
    """
    from casnap import locks

    repo = c.open()
    removed, kept = locks.unlock(repo.backend, force=force)
    # stdout takes the report, or the locks removed: a stdout closed or full fails in one line
    # saying how many were removed
    with printing(f"{len(removed)} lock(s) removed") if as_json or removed else nullcontext():
        if as_json:
            emit_json(
                {
                    "removed": [info.to_json() | {"reason": why} for info, why in removed],
                    "kept": [info.to_json() for info in kept],
                }
            )
            return
        for info, why in removed:  # an unreadable lock's description says why already
            said = info.describe() if not info.readable else f"{info.describe()} ({why})"
            click.echo(printable(f"removed {info.key}: {said}", backslash=False))
    for info in kept:
        c.say(f"kept {info.key}: {info.describe()} (--force removes it)")
    c.say(f"removed {len(removed)} lock(s)")


@cli.command(name="stats")
@click.argument("snapshot", required=False, type=SNAPSHOT)
@filter_options(
    PATH_FILTER_HELP + " Without SNAPSHOT: list only those in the per-snapshot table.",
    TAG_FILTER_HELP + " Without SNAPSHOT: list only those in the per-snapshot table.",
    HOST_FILTER_HELP + " Without SNAPSHOT: list only those in the per-snapshot table.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as one JSON object.")
@pass_ctx
def stats_cmd(
    c: Context,
    snapshot: str | None,
    filter_paths: tuple[str, ...],
    filter_tags: tuple[str, ...],
    as_json: bool,
) -> None:
    """Show sizes, dedup and compression; with SNAPSHOT, the new bytes of each of its files.

    The per-snapshot table's ADDED is what `log` shows: the bytes the snapshot's commit added to
    the repository (packs, index and manifest). With SNAPSHOT, NEW is what its files hold that no
    older snapshot still in the repository holds.

    Example: casnap stats --path app.db
    """
    from casnap import stats

    repo = c.open()
    if snapshot is not None:
        sid = resolve_ref(c, repo, snapshot, filter_paths, filter_tags)
        s = stats.snapshot_stats(repo, sid.hex())
        if as_json:
            emit_json(s.to_json())
            return
        click.echo(
            f"snapshot {s.id[:8]} ({local_time(s.time)}): {human(s.logical_bytes)} of files, "
            f"{human(s.new_bytes)} new against {s.older_snapshots} older snapshot(s)"
        )
        click.echo(f"{'NEW':>10} {'NEW PLAIN':>10} {'CHUNKS':>13} {'SIZE':>10}  PATH")
        for f in s.files:
            click.echo(
                f"{human(f.new_bytes):>10} {human(f.new_plain_bytes):>10} "
                f"{f'{f.new_chunks}/{f.chunks}':>13} {human(f.size):>10}  {printable(f.path)}"
            )
        return
    select = snapshot_filter(c, repo, filter_paths, filter_tags)
    r = stats.repository_stats(repo)
    listed = {sid.hex() for sid, _ in select.select(repo.snapshots())}
    r.snapshots_added = [a for a in r.snapshots_added if a.id in listed]
    if as_json:
        emit_json(r.to_json())
        return
    click.echo(f"snapshots          {r.snapshots} ({r.files} files)")
    click.echo(f"logical bytes      {human(r.logical_bytes)}")
    click.echo(f"unique chunk bytes {human(r.unique_bytes)} in {r.unique_chunks} chunks")
    click.echo(
        f"stored bytes       {human(r.stored_bytes)} (packs {human(r.pack_bytes)}, index "
        f"{human(r.index_bytes)}, manifests {human(r.manifest_bytes)})"
    )
    click.echo(f"dedup ratio        {r.dedup_ratio:.2f}x (logical / unique)")
    click.echo(f"compression ratio  {r.compression_ratio:.2f}x (unique / stored in packs)")
    click.echo("")
    if select.active:
        click.echo(f"snapshots {select.describe()}:")
    click.echo(f"{'ID':<9} {'TIME':<19} {'SIZE':>10} {'ADDED':>10}  PATHS / TAGS")
    for a in r.snapshots_added:
        label = " ".join([paths_label(a.paths), *(f"[{printable(t)}]" for t in a.tags)])
        click.echo(
            f"{a.id[:8]:<9} {local_time(a.time):<19} {human(a.logical_bytes):>10} "
            f"{human(a.bytes_added):>10}  {label}"
        )
