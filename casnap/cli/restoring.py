"""The checkout command: restore a snapshot into the data dir (or --to DIR), verified,
smoke-checked and swapped in, and what it prints."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from casnap.cli.main import Context, after_landing, cli, pass_ctx, warn
from casnap.cli.options import SNAPSHOT, Given, filter_options, resolve_ref
from casnap.cli.output import emit_json, local_time, progress_bar
from casnap.cli.pipes import printing
from casnap.errors import (
    AccessDenied,
    DamagedIndex,
    DatabaseBusy,
    HostileManifest,
    IntegrityError,
    InvalidArgument,
    SmokeCheckFailed,
    SourceError,
    StorageFull,
)

if TYPE_CHECKING:  # the command imports the operation it runs
    from casnap.restorer import CheckoutResult


@cli.command()
@click.argument("snapshot", type=SNAPSHOT)
@click.argument("paths", nargs=-1)
@click.option(
    "--to",
    "target",
    metavar="DIR",
    default=None,
    help="Restore into DIR instead of the data dir (not a folder inside it, nor, for a full "
    "checkout, one holding it: refused). A full checkout removes the files DIR holds that the "
    "snapshot lacks (saved first as a pre-checkout snapshot) only when DIR is known to hold "
    "this data: an earlier full checkout went into it, or a commit was made from it, here; "
    "elsewhere it is refused unless --force.",
)
@click.option(
    "--no-safety-snapshot",
    is_flag=True,
    help="Do not save target files that no snapshot holds before replacing them.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Restore a database even while a process has it open; in a --to DIR not known to hold "
    "this data, remove the files the snapshot lacks (saved first as a pre-checkout snapshot).",
)
@click.option(
    "--no-smoke",
    is_flag=True,
    help="Skip the built-in smoke checks (SQLite integrity, FAISS read/search, framework "
    "stores); hashes are still verified and --smoke-cmd still runs.",
)
@click.option(
    "--smoke-cmd",
    metavar="CMD",
    default=None,
    type=Given("a command"),
    help="Also run CMD through the shell with $CASNAP_STAGED_DIR naming a disposable copy of "
    "the restored files (CMD may write there, as Chroma does when it opens a store: the files "
    "swapped in are the verified ones); a non-zero exit aborts the checkout.",
)
@click.option(
    "--all-paths",
    is_flag=True,
    help="Restore the newest snapshot of each group of snapshots committed with the same paths "
    "(e.g. `commit app.db` and `commit faiss` on their own schedules), of SNAPSHOT's data dir "
    "and host, at once; the plan is printed first.",
)
@filter_options()
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@pass_ctx
def checkout(
    c: Context,
    snapshot: str,
    paths: tuple[str, ...],
    target: str | None,
    no_safety_snapshot: bool,
    force: bool,
    no_smoke: bool,
    smoke_cmd: str | None,
    all_paths: bool,
    filter_paths: tuple[str, ...],
    filter_tags: tuple[str, ...],
    as_json: bool,
) -> None:
    """Restore SNAPSHOT (id, unique prefix, `latest` or a tag) into the data dir.

    Files are restored into a private staging dir beside the target (0700), every chunk and
    file hash verified, then smoke-checked there: each SQLite database passes PRAGMA
    integrity_check (quick_check above 256 MiB) and has its tables listed; each FAISS index is
    read, its ntotal compared with its .meta.json sidecar (a disagreement the snapshot itself
    holds is a warning, as its commit said), and searched once; each Chroma, LangChain or
    LlamaIndex store is read file by file (pickles walked, never loaded) and its counts
    compared; then --smoke-cmd, if given, runs on a disposable copy of the staged dir. Only when
    all pass is each file swapped in with an atomic rename; otherwise the target is left
    untouched and the failed check and file are named (exit 9). Files absent
    from the snapshot are removed (full checkout only; from a --to DIR only when an earlier
    full checkout went into it or a commit was made from it, on this host, else refused unless
    --force), but for those its commit excluded or could not read. Data that no snapshot holds
    is first saved as a snapshot tagged `pre-checkout`. With PATHS, only those files are
    restored (and checked). A database in use is refused (exit 6): --force overrides open
    descriptors, never a SQLite lock. A repository inside the target is never touched; a
    target inside the repository is refused.

    Example: casnap checkout pre-migration --smoke-cmd './scripts/search-test.sh'
    """
    from casnap import selection
    from casnap.paths import normalize_paths, snapshot_holds

    if target == "":  # Path("") is the working dir: a full checkout would empty it
        raise InvalidArgument("--to is empty; give the directory to restore into")
    if target is not None:  # inside the data dir, or holding it: refused before anything
        from casnap.placement import refuse_overlap

        refuse_overlap(Path(target).absolute(), c.data.absolute(), target, paths)
    from casnap.smoke import probe_ahead

    # a whole snapshot, a folder or an index may hold FAISS indexes: their checker starts now
    faiss = not paths or any(p.endswith(".index") or not Path(p).suffix for p in paths)
    click.get_current_context().with_resource(probe_ahead(not no_smoke and faiss))
    from casnap import removals
    from casnap.restorer import checkout as checkout_snapshot

    repo = c.open()
    sid = resolve_ref(c, repo, snapshot, filter_paths, filter_tags)
    if paths:  # read against the data dir; each must name a file or folder of the snapshot
        paths = normalize_paths(paths, c.data, snapshot_holds(repo.snapshot(sid)))
    dest = (Path(target) if target is not None else c.data).absolute()
    if all_paths and not as_json:
        named = repo.snapshot(sid)
        for group_id, snap in selection.newest_of_groups(
            repo.snapshots(), named.source, named.host
        ):
            what = " ".join(snap.paths) or "(all)"
            c.say(f"plan: {what} from snapshot {group_id.short} ({local_time(snap.time)})")
    with progress_bar(c, "restore") as progress, after_landing(_checkout_done):
        try:
            r = checkout_snapshot(
                repo,
                sid.hex(),
                dest,
                paths,
                safety_snapshot=not no_safety_snapshot,
                force=force,
                smoke=not no_smoke,
                smoke_cmd=smoke_cmd,
                progress=progress,
                all_paths=all_paths,
                data_dir=c.data,
            )
        except DatabaseBusy as exc:
            hint = "or use --force" if exc.overridable else "(--force does not override that)"
            raise DatabaseBusy(f"{exc} {hint}", exc.overridable) from exc
        except HostileManifest:
            raise
        except DamagedIndex as exc:  # no older snapshot reads without the index either
            raise DamagedIndex(
                f"{exc}; every checkout reads the index: `casnap repair-index` rebuilds it from "
                "the packs, then `casnap verify` names what the damage spoils"
            ) from exc
        except IntegrityError as exc:  # damaged or missing data: the target is left as it was
            raise IntegrityError(
                f"{exc}; `casnap verify --read-data` names every snapshot and file the damage "
                "spoils, and an older snapshot may hold these files intact"
            ) from exc
        except SmokeCheckFailed as exc:
            if no_smoke or any(ch.get("check") == "smoke-cmd" for ch in exc.checks):
                raise
            raise SmokeCheckFailed(
                f"{exc} (--no-smoke restores it without these checks; every hash is still "
                "verified)",
                exc.checks,
            ) from exc
        except InvalidArgument as exc:
            if removals.UNKNOWN_TARGET not in getattr(exc, "__notes__", ()):
                raise
            how = "after saving them in a pre-checkout snapshot"
            if no_safety_snapshot:
                how = "without saving them"
            raise InvalidArgument(f"{exc}; --force removes them, {how}") from exc
        except (AccessDenied, StorageFull, SourceError) as exc:
            notes = getattr(exc, "__notes__", ())
            if any(n in notes for n in (removals.UNREADABLE_REMOVED, removals.UNREADABLE_REPLACED)):
                what = "removes" if removals.UNREADABLE_REMOVED in notes else "replaces"
                hint = f"--no-safety-snapshot {what} it without saving it"
                raise type(exc)(f"{exc} ({hint})") from exc
            if "safety-snapshot" not in notes:
                raise
            raise type(exc)(
                f"saving the pre-checkout snapshot of the data this checkout replaces failed, "
                f"nothing was replaced: {exc} (--no-safety-snapshot replaces it without saving)"
            ) from exc
    with after_landing(_checkout_done, r):
        for w in r.warnings:
            warn(w)
        for ch in (r.smoke or {}).get("checks", []):
            if ch.get("warning"):
                warn(f"{ch['check']} on {ch['path']}: {ch['detail']}")
        if as_json:
            with printing(_restored(r)):
                emit_json(r.to_json())
            return
        if r.safety_snapshot:
            c.say(f"saved the replaced data as snapshot {r.safety_snapshot[:8]} (tag pre-checkout)")
        made = len(r.folders_created)
        folders = f", {made} empty folder{'s' if made > 1 else ''} created" if made else ""
        c.say(
            f"restored {_restored(r, into=False)} into {r.target}: {r.files_written} written, "
            f"{r.files_unchanged} unchanged, {r.files_removed} removed{folders}; all hashes "
            "verified"
        )
        if r.smoke is not None:
            c.say(_smoke_summary(r.smoke))


def _restored(r: CheckoutResult, into: bool = True) -> str:
    """`snapshot X restored into DIR` (into=False: `snapshot X`), for the lines saying so."""
    ids = [src["id"][:8] for src in r.sources] or [r.id[:8]]
    what = f"snapshots {', '.join(ids)}" if len(ids) > 1 else f"snapshot {ids[0]}"
    return f"{what} restored into {r.target}" if into else what


def _checkout_done(r: CheckoutResult) -> str:
    """What a checkout a signal stopped once its swap had begun completed."""
    saved = r.safety_snapshot and f"snapshot {r.safety_snapshot[:8]} (tag pre-checkout)"
    return f"the checkout completed: {_restored(r)}" + (
        f", the replaced data saved as {saved}" if saved else ""
    )


def _smoke_summary(report: dict[str, Any]) -> str:
    checks = report["checks"]
    files = {ch["path"] for ch in checks if ch["path"]}
    cmd = any(ch["check"] == "smoke-cmd" for ch in checks)
    state = "passed" if report["ok"] else "FAILED"
    counted = f"{_count(len(checks), 'check')} on {_count(len(files), 'file')}"
    return f"smoke checks {state}: {counted}" + (", smoke command included" if cmd else "")


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"
