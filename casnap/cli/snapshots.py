"""Commands that make, restore and inspect snapshots: init, commit, checkout, diff, log, show,
demo."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from casnap.cli.main import Context, after_landing, cli, pass_ctx, warn
from casnap.cli.options import Number, SnapshotTime, filter_options, resolve_ref, snapshot_filter
from casnap.cli.output import emit_json, human, local_time, paths_label, printable, progress_bar
from casnap.cli.passwords import INIT_PLAIN
from casnap.cli.pipes import printing
from casnap.constants import ENCRYPTIONS
from casnap.errors import (
    AccessDenied,
    DatabaseBusy,
    EmptySnapshot,
    HostileManifest,
    InconsistentData,
    IntegrityError,
    InvalidArgument,
    NotARepository,
    PathTooLong,
    RepositoryGone,
    SourceError,
    StorageFull,
    UnreadableSource,
)

if TYPE_CHECKING:  # each command imports the operations it runs
    from casnap.committer import CommitResult
    from casnap.repository import Repository
    from casnap.restorer import CheckoutResult


@cli.command()
@click.option(
    "--encryption",
    type=click.Choice(ENCRYPTIONS),
    default=None,
    help="repokey: every object encrypted and authenticated, the master key stored in the "
    "repository sealed by the password (see docs/FORMAT.md). Default: repokey for an "
    "s3:// repository, none for a local directory.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@pass_ctx
def init(c: Context, encryption: str | None, as_json: bool) -> None:
    """Create an empty repository at --repo (a missing or empty directory, or an s3:// URL whose
    prefix holds nothing; a missing bucket is created).

    Optional: commit creates the repository on first use (encrypted when a password source is
    set, always on S3). A directory holding anything but a README.md or .gitkeep is refused, so
    nothing else is ever overwritten.

    Example: CASNAP_PASSWORD_FILE=~/.casnap-pw casnap --repo /backups/app init --encryption repokey
    """
    from casnap.repository import Repository

    c.passwords.creating = True
    if encryption is None:
        encryption = c.default_encryption()
        c.passwords.plain_hint = "`--encryption none` makes a plain one"
    password = c.passwords if encryption == "repokey" else None
    repo = Repository.init(c.repo_path, password=password)
    where = c.where
    if as_json:
        with printing(f"repository {repo.config['id'][:8]} is created at {where}"):
            emit_json(
                {
                    "id": repo.config["id"],
                    "path": where,
                    "format": repo.config["casnap_format"],
                    "encryption": encryption,
                }
            )
        return
    kind = "encrypted " if repo.encrypted else ""
    c.say(f"created {kind}casnap repository {repo.config['id'][:8]} at {where}")
    if not repo.encrypted and c.passwords.given():
        warn(
            "a password is set, but this repository is not encrypted (--encryption none); "
            "`init --encryption repokey` makes an encrypted one"
        )
    if repo.encrypted:
        c.say(
            "keep the password safe: without it the repository cannot be read "
            "(`casnap key export FILE` keeps a copy of the key apart from the repository)"
        )


def open_or_create(c: Context) -> tuple[Repository, bool]:
    """The repository at --repo, and whether it was created here because the directory (or S3
    prefix) was missing or empty (a failed first commit then takes it back); a missing data dir
    is reported first, so that creates nothing."""
    from casnap.repository import Repository

    c.refuse_no_lock()
    c.passwords.creating = lambda: not c.holds_config()  # a new repository: a prompt asks twice
    c.passwords.plain_hint = INIT_PLAIN if c.on_s3 else ""
    try:
        repo = Repository.open_or_init(
            c.repo_path, c.data, password=c.passwords, encryption=c.auto_encryption()
        )
    except NotARepository:
        if not c.holds_config():
            raise
        repo = Repository.open(c.repo_path, c.passwords)  # another commit created it meanwhile
    return c.listen(repo), repo.created is not None


def say_created(c: Context, repo: Repository) -> None:
    """The message for a repository commit created: a mistyped --repo must not pass unseen."""
    kind = "encrypted repository (repokey)" if repo.encrypted else "repository"
    c.say(f"created {kind} at {c.where}")


@cli.command()
@click.argument("paths", nargs=-1)
@click.option(
    "-m", "--message", default="", metavar="MSG", help="Message stored with the snapshot."
)
@click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="T",
    help="Tag the snapshot (repeatable); not 4+ hex digits alone (`2026`), read as an id.",
)
@click.option(
    "--exclude",
    "excludes",
    multiple=True,
    metavar="GLOB",
    help="Skip files matching GLOB (repeatable).",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Refuse to commit (exit 9) when a FAISS index is shorter than its header promises, a "
    "framework store's files disagree, a SQLite database cut short is found as it is read, a "
    ".meta.json sidecar's ntotal disagrees with its index, or a file vanished before its read.",
)
@click.option(
    "--allow-empty",
    is_flag=True,
    help="Store a snapshot with no files even where the last snapshot of the same paths had some.",
)
@click.option(
    "--skip-unreadable",
    is_flag=True,
    help="Leave out files and folders that cannot be read for lack of permission, or whose path "
    "is longer than the system's limit (listed in the summary and recorded in the snapshot) "
    "instead of failing.",
)
@click.option(
    "--time",
    "when",
    type=SnapshotTime(),
    default=None,
    metavar="T",
    help="Record T as the snapshot's time instead of now (importing an old copy): ISO 8601 or "
    "'YYYY-MM-DD HH:MM:SS' (local time without an offset); log, latest and prune order by it.",
)
@click.option(
    "--host",
    default=None,
    metavar="NAME",
    help="Record NAME as the host instead of this machine's name (as restic's backup --host), "
    "for a container whose name changes each run: snapshots group, and find their parent, by "
    "host.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@pass_ctx
def commit(
    c: Context,
    paths: tuple[str, ...],
    message: str,
    tags: tuple[str, ...],
    excludes: tuple[str, ...],
    strict: bool,
    allow_empty: bool,
    skip_unreadable: bool,
    when: dt.datetime | None,
    host: str | None,
    as_json: bool,
) -> None:
    """Snapshot the data dir, or PATHS inside it, into the repository.

    Each SQLite database is captured as one committed state, read under SQLite's read
    transaction (consistent while the app writes): the image SQLite's online backup API would
    copy; one a crashed writer left with a hot journal, from a private copy SQLite rolls back
    (the data dir is never written). Files unchanged since the last snapshot of the same paths
    are not read again. The repository is created on first use when --repo is missing or empty.

    What a checkout's smoke checks would find is checked first, from headers, metadata and
    counts (nothing is loaded or unpickled): a FAISS index shorter than its header promises, a
    Chroma, LangChain or LlamaIndex store whose files are damaged or whose counts disagree, a
    SQLite database cut short, found as it is read (a checkout refuses these: warned of even
    with -q), a .meta.json sidecar stating another ntotal (a checkout warns too). One warning
    line per problem on stderr; with --strict an error and nothing is committed. A plain file
    deleted before it is read is left out, with a warning (with --strict, an error). A
    repository inside the data dir is never stored. Prints the new snapshot id.

    Example: casnap commit -m "before migration" --tag pre-migration
    """
    from casnap.committer import commit as commit_snapshot

    def attempt(repo: Repository) -> CommitResult:
        with progress_bar(c, "commit") as progress:
            try:
                return commit_snapshot(
                    repo,
                    c.data,
                    paths,
                    excludes=excludes,
                    message=message,
                    tags=tags,
                    strict=strict,
                    progress=progress,
                    allow_empty=allow_empty,
                    skip_unreadable=skip_unreadable,
                    time=when,
                    host=host,
                )
            except UnreadableSource as exc:
                raise UnreadableSource(f"{exc} (--skip-unreadable leaves such files out)") from exc
            except PathTooLong as exc:
                raise PathTooLong(
                    f"{exc}, or --exclude it (--skip-unreadable leaves such files out)"
                ) from exc
            except EmptySnapshot as exc:
                raise EmptySnapshot(f"{exc} (--allow-empty stores it)") from exc
            except InconsistentData as exc:
                raise InconsistentData(f"{exc} (--strict)") from exc

    repo, created = open_or_create(c)
    stored = lambda r: f"the commit completed: snapshot {r.id} is stored"  # noqa: E731
    with after_landing(stored):  # a signal once its manifest is stored: said so, with its id
        try:
            r = attempt(repo)
        except RepositoryGone:  # deleted since this host kept its config: made anew, once
            repo.close()
            repo, created = open_or_create(c)
            r = attempt(repo)
    with after_landing(stored, r):
        if created:  # said once the commit succeeded, so a failed one prints its error alone
            say_created(c, repo)
        for note in r.notes:
            c.note_once(note)
        for w in r.warnings:
            warn(w, always=w in r.damage)
        with printing(f"snapshot {r.id} is stored"):  # a stdout closed or full: said so
            if as_json:
                emit_json(r.to_json())
                return
            c.say(
                f"snapshot {r.id[:8]} saved: {r.files_new} new, {r.files_changed} changed, "
                f"{r.files_unchanged} unchanged files; {human(r.bytes_read)} read, "
                f"{human(r.bytes_added)} added ({r.seconds:.2f} s)"
            )
            click.echo(r.id)


@cli.command()
@click.argument("snapshot")
@click.argument("paths", nargs=-1)
@click.option(
    "--to",
    "target",
    metavar="DIR",
    default=None,
    help="Restore into DIR instead of the data dir (not a folder inside it, nor, for a full "
    "checkout, one holding it: refused). A full checkout removes the files DIR holds that the "
    "snapshot lacks (saved first as a pre-checkout snapshot) only when DIR is known to hold "
    "this data: an earlier full checkout went into it, or a snapshot was committed from it; "
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
    full checkout went into it or a snapshot was committed from it, else refused unless
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

        refuse_overlap(Path(target).absolute(), c.data.absolute(), target, whole=not paths)
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
        except IntegrityError as exc:  # damaged or missing data: the target is left as it was
            raise IntegrityError(
                f"{exc}; `casnap verify --read-data` names every snapshot and file the damage "
                "spoils, and an older snapshot may hold these files intact"
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
        c.say(
            f"restored {_restored(r, into=False)} into {r.target}: {r.files_written} written, "
            f"{r.files_unchanged} unchanged, {r.files_removed} removed; all hashes verified"
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
    return f"smoke checks {state}: {len(checks)} checks on {len(files)} files" + (
        ", smoke command included" if cmd else ""
    )


@cli.command()
@filter_options(
    "List only snapshots committed with path P (repeatable: with all of them; `.`: whole-dir "
    "snapshots).",
    "List only snapshots carrying tag T (repeatable: any of them; `a,b`: both).",
    "List only snapshots taken on host H (repeatable: any of them).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the snapshots as a JSON list.")
@pass_ctx
def log(
    c: Context, filter_paths: tuple[str, ...], filter_tags: tuple[str, ...], as_json: bool
) -> None:
    """List snapshots, newest first.

    One line per snapshot: id prefix, local time, the host it was taken on (when the snapshots
    listed come from more than one), file count, total size, bytes its commit added to the
    repository (packs, index and manifest), the paths it was committed with (`(all)`: the whole
    data dir), tags and message. Any id prefix of 4+ hex digits, a tag or `latest` names a
    snapshot in the other commands.

    Example: casnap log --path app.db
    """
    from casnap import stats

    repo = c.open()
    flt = snapshot_filter(c, repo, filter_paths, filter_tags)
    rows = stats.log_rows(repo, flt)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        c.say(f"no snapshots {flt.describe()}" if flt.active else "no snapshots")
        return
    labels = [paths_label(r["paths"]) for r in rows]
    width = min(max(len("PATHS"), *(len(x) for x in labels)), 32)
    hosts = [printable(r["host"]) for r in rows]
    host_width = max(len("HOST"), *(len(h) for h in hosts)) if len(set(hosts)) > 1 else 0
    host_head = f"{'HOST':<{host_width}} " if host_width else ""
    click.echo(
        f"{'ID':<9} {'TIME':<19} {host_head}{'FILES':>5} {'SIZE':>10} {'ADDED':>10}  "
        f"{'PATHS':<{width}}  TAGS / MESSAGE"
    )
    for r, where, host in zip(rows, labels, hosts, strict=True):
        label = " ".join(f"[{printable(t)}]" for t in r["tags"])
        text = " ".join(x for x in (label, printable(r["message"])) if x)
        host_cell = f"{host:<{host_width}} " if host_width else ""
        click.echo(
            f"{r['id'][:8]:<9} {local_time(r['time']):<19} {host_cell}{r['files']:>5} "
            f"{human(r['logical_bytes']):>10} {human(r['bytes_added']):>10}  "
            f"{where:<{width}}  {text}".rstrip()
        )


@cli.command()
@click.argument("snapshot")
@filter_options()
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON.")
@pass_ctx
def show(
    c: Context,
    snapshot: str,
    filter_paths: tuple[str, ...],
    filter_tags: tuple[str, ...],
    as_json: bool,
) -> None:
    """Show one snapshot: its metadata and files with sizes and hashes.

    SNAPSHOT is an id, a unique prefix of 4+ hex digits, `latest` or a tag. Lists every file with
    its size, chunk count, kind (`sqlite`: a database, stored as its image) and BLAKE3 hash.
    Control characters in names are shown escaped (`\\n`, `\\x1b`); --json keeps them exact.

    Example: casnap show latest --path app.db
    """
    repo = c.open()
    sid = resolve_ref(c, repo, snapshot, filter_paths, filter_tags)
    s = repo.load_snapshot(sid)
    if as_json:
        d = json.loads(s.encode())
        d["id"] = sid.hex()
        emit_json(d)
        return
    click.echo(f"snapshot {sid.hex()}")
    click.echo(f"  time     {local_time(s.time)}  ({printable(s.user)}@{printable(s.host)})")
    click.echo(f"  source   {printable(s.source)}")
    click.echo(f"  paths    {paths_label(s.paths)}")
    if s.message:
        click.echo(f"  message  {printable(s.message)}")
    if s.tags:
        click.echo(f"  tags     {', '.join(printable(t) for t in s.tags)}")
    click.echo(f"  files    {len(s.files)}, {human(s.logical_bytes)}")
    click.echo("")
    click.echo(f"{'SIZE':>10} {'CHUNKS':>7}  {'KIND':<6} {'BLAKE3':<16}  PATH")
    for f in s.files:
        click.echo(
            f"{human(f.size):>10} {f.chunks:>7}  {f.kind:<6} {f.hash[:16]}  {printable(f.path)}"
        )


@cli.command()
@click.option(
    "--size-mb",
    type=Number(min=0, min_open=True),
    metavar="N",
    default=40.0,
    show_default=True,
    help="Size of generated sample data.",
)
@click.option(
    "--seed", default=0, show_default=True, metavar="S", help="Seed of the generated sample data."
)
@click.pass_context
def demo(ctx: click.Context, size_mb: float, seed: int) -> None:
    """Generate sample data into an empty data dir, commit, change it, commit again, show log.

    The sample is a SQLite app.db and FAISS Flat, IVF and HNSW indexes with .meta.json sidecars;
    the second commit shows how little an evolving data dir adds to the repository.

    Example: casnap demo --size-mb 40
    """
    from casnap import committer, sample

    c: Context = ctx.obj
    if sample.is_empty(c.data):
        c.say(f"generating {size_mb:.0f} MB of sample data (SQLite + FAISS) into {c.data}")
        sample.generate(c.data, size_mb=size_mb, seed=seed)
    elif not sample.is_sample(c.data):
        raise click.UsageError(
            f"{c.data} holds data demo did not generate, and demo changes only its own sample "
            "data: point --data at an empty dir, or use `casnap commit`"
        )
    elif ctx.get_parameter_source("size_mb") is not click.core.ParameterSource.DEFAULT:
        c.say(
            f"--size-mb {size_mb:g} is not used: {c.data} holds the sample an earlier demo "
            "generated, which this one changes (an empty data dir gets a new sample)"
        )
    repo, created = open_or_create(c)
    if created:
        say_created(c, repo)
    step = len(repo.snapshots()) + 1
    first = committer.commit(repo, c.data, message="demo: current data")
    c.say(f"commit 1: snapshot {first.id[:8]}, {human(first.bytes_added)} added")
    changes = sample.evolve(c.data, step, seed=seed)
    c.say("changed the data: " + ", ".join(f"{k} {v}" for k, v in changes.items()))
    second = committer.commit(repo, c.data, message=f"demo: after change step {step}")
    c.say(
        f"commit 2: snapshot {second.id[:8]}, {human(second.bytes_read)} read, "
        f"{human(second.bytes_added)} added for {human(second.logical_bytes)} of data"
    )
    ctx.invoke(log)
