"""Commands that make and inspect snapshots: init, commit, log, show, demo (checkout is in
restoring.py)."""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING

import click

from casnap.cli.main import Context, after_landing, cli, pass_ctx, warn
from casnap.cli.options import (
    SNAPSHOT,
    Number,
    SnapshotTime,
    filter_options,
    resolve_ref,
    snapshot_filter,
)
from casnap.cli.output import emit_json, human, local_time, paths_label, printable, progress_bar
from casnap.cli.passwords import INIT_PLAIN
from casnap.cli.pipes import printing
from casnap.constants import ENCRYPTIONS
from casnap.errors import (
    EmptySnapshot,
    InconsistentData,
    NotARepository,
    PathTooLong,
    RepositoryGone,
    UnreadableSource,
)

if TYPE_CHECKING:  # each command imports the operations it runs
    from casnap.committer import CommitResult
    from casnap.repository import Repository


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
    from casnap import rollback
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
            try:
                r = attempt(repo)
            except RepositoryGone:  # deleted since this host kept its config: made anew, once
                repo.close()
                repo, created = open_or_create(c)
                r = attempt(repo)
        except BaseException:
            rollback.take_back(repo)  # made for a commit a signal stopped before it began
            raise
    with after_landing(stored, r):
        if created:  # said once the commit succeeded, so a failed one prints its error alone
            say_created(c, repo)
        for note in r.notes:
            c.note_once(note)
        for w in r.warnings:
            warn(w, always=w in r.damage or w in r.interrupted or w in r.left_out)
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
@click.argument("snapshot", type=SNAPSHOT)
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
    # the log last: a stdout closed or full fails in one line saying the commits are stored
    with printing(f"snapshots {first.id[:8]} and {second.id[:8]} are stored"):
        ctx.invoke(log)
