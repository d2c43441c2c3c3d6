"""The casnap command line: parse, call the Repository API, print. Errors are mapped here, once."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from casnap import gc as collector
from casnap import repair, retention, stats, verify
from casnap.checkout import newest_per_group
from casnap.errors import (
    AccessDenied,
    CasnapError,
    CheckFailed,
    EmptySnapshot,
    SmokeCheckFailed,
    from_oserror,
)
from casnap.ids import ObjectId
from casnap.progress import ProgressFn
from casnap.repository import Repository, parse_time

INTERNAL_ERROR = 70
INTERRUPTED = 130


def human(n: float) -> str:
    """Bytes as a short human-readable size (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def local_time(iso: str) -> str:
    return parse_time(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")


class CasnapGroup(click.Group):
    """A click group that turns every error into one line on stderr and its exit code."""

    def main(self, args: Sequence[str] | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(args, **kwargs)
            code = rv if isinstance(rv, int) else 0
        except click.exceptions.Exit as exc:
            code = exc.exit_code
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "casnap"
            click.echo(f"casnap: error: {exc.format_message()} (see '{where} --help')", err=True)
            code = exc.exit_code
        except click.ClickException as exc:
            click.echo(f"casnap: error: {exc.format_message()}", err=True)
            code = exc.exit_code
        except click.Abort:
            click.echo("casnap: interrupted", err=True)
            code = INTERRUPTED
        except CasnapError as exc:
            click.echo(f"casnap: error: {exc}", err=True)
            code = exc.exit_code
        except KeyboardInterrupt:
            click.echo("casnap: interrupted", err=True)
            code = INTERRUPTED
        except OSError as exc:
            err = from_oserror(exc, exc.filename or "I/O")
            click.echo(f"casnap: error: {err}", err=True)
            code = err.exit_code
        except Exception as exc:  # noqa: BLE001 - last resort: never a traceback for a user
            if os.environ.get("CASNAP_DEBUG"):
                raise
            click.echo(f"casnap: internal error: {type(exc).__name__}: {exc}", err=True)
            code = INTERNAL_ERROR
        sys.exit(code)


class Context:
    """Global options, passed to every command."""

    def __init__(self, repo: Path, data: Path, quiet: bool) -> None:
        self.repo_path = repo
        self.data = data
        self.quiet = quiet

    def open(self) -> Repository:
        return self.listen(Repository.open(self.repo_path))

    def listen(self, repo: Repository) -> Repository:
        """Let the repository say what it waits for (a lock, a locked database) on a terminal."""
        repo.notify = self.notice
        return repo

    def say(self, text: str) -> None:
        """A human message on stderr, unless -q."""
        if not self.quiet:
            click.echo(text, err=True)

    def notice(self, text: str) -> None:
        """A passing remark on stderr (a wait under way), on a terminal and unless -q."""
        if not self.quiet and sys.stderr.isatty():
            click.echo(f"casnap: {text}", err=True)


pass_ctx = click.make_pass_decorator(Context)


class ProgressBar:
    """A (bytes done, total) callback drawing click's progress bar with size, rate and ETA."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: Any = None
        self.last = 0
        self.t0 = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.t0 = time.monotonic()
            self.bar = click.progressbar(
                length=max(total, 1),
                label=self.label,
                file=sys.stderr,
                show_eta=True,
                show_percent=True,
                width=24,
                item_show_func=self._text,
            )
            self.bar.__enter__()
        self.bar.update(max(0, done - self.last), current_item=(done, total))
        self.last = max(self.last, done)

    def _text(self, item: tuple[int, int] | None) -> str:
        if item is None:
            return ""
        done, total = item
        rate = done / max(time.monotonic() - self.t0, 1e-6)
        return f"{human(done)} / {human(total)}  {human(rate)}/s"

    def close(self) -> None:
        """Finish the bar (a final redraw and a newline), if one was drawn."""
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@contextlib.contextmanager
def progress_bar(c: Context, label: str) -> Iterator[ProgressFn | None]:
    """A progress callback drawing a bar on stderr; None (no output) with -q or off a terminal."""
    if c.quiet or not sys.stderr.isatty():
        yield None
        return
    bar = ProgressBar(label)
    try:
        yield bar
    finally:
        bar.close()


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


@click.group(cls=CasnapGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--repo",
    envvar="CASNAP_REPO",
    default="./backups",
    show_default=True,
    type=click.Path(path_type=Path, readable=False),
    help="Repository directory (env CASNAP_REPO).",
)
@click.option(
    "--data",
    envvar="CASNAP_DATA",
    default="./data",
    show_default=True,
    type=click.Path(path_type=Path, readable=False),
    help="Data directory to snapshot and restore (env CASNAP_DATA).",
)
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="Print nothing but results, warnings and errors (no progress bar).",
)
@click.version_option(package_name="casnap")
@click.pass_context
def cli(ctx: click.Context, repo: Path, data: Path, quiet: bool) -> None:
    """casnap: deduplicating, verified snapshots of a SQLite + FAISS data directory."""
    ctx.obj = Context(repo, data, quiet)


@cli.command()
@pass_ctx
def init(c: Context) -> None:
    """Create an empty repository at --repo (a missing or empty directory).

    Optional: commit creates the repository on first use. A directory holding anything but a
    README.md or .gitkeep is refused, so nothing else is ever overwritten.

    Example: casnap --repo /backups/app init
    """
    repo = Repository.init(c.repo_path)
    c.say(f"created casnap repository {repo.config['id'][:8]} at {c.repo_path}")


@cli.command()
@click.argument("paths", nargs=-1)
@click.option("-m", "--message", default="", help="Message stored with the snapshot.")
@click.option("--tag", "tags", multiple=True, help="Tag the snapshot (repeatable).")
@click.option("--exclude", "excludes", multiple=True, help="Skip files matching GLOB (repeatable).")
@click.option(
    "--strict",
    is_flag=True,
    help="Refuse to commit (exit 9) when a FAISS index is shorter than its header promises, "
    "has no .meta.json sidecar, or its sidecar's ntotal disagrees with the index.",
)
@click.option(
    "--allow-empty",
    is_flag=True,
    help="Store a snapshot with no files even where the last snapshot of the same paths had some.",
)
@click.option(
    "--skip-unreadable",
    is_flag=True,
    help="Leave out files and folders that cannot be read for lack of permission (listed in the "
    "summary and recorded in the snapshot) instead of failing.",
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
    as_json: bool,
) -> None:
    """Snapshot the data dir, or PATHS inside it, into the repository.

    SQLite databases are captured through SQLite's online backup API (consistent while the app
    writes); files unchanged since the last snapshot of the same paths are not read again. The
    repository is created on first use when --repo is missing or empty.

    Each FAISS index is checked from its header fields alone: a file shorter than its header
    promises (a write cut short), a missing .meta.json sidecar or a different ntotal is a warning
    on stderr, one line per problem, or with --strict an error. Prints the new snapshot id.

    Example: casnap commit -m "before migration" --tag pre-migration
    """
    repo = c.listen(Repository.open_or_init(c.repo_path, c.data))
    with progress_bar(c, "commit") as progress:
        try:
            r = repo.commit(
                c.data,
                paths,
                excludes=excludes,
                message=message,
                tags=tags,
                strict=strict,
                progress=progress,
                allow_empty=allow_empty,
                skip_unreadable=skip_unreadable,
            )
        except AccessDenied as exc:
            raise AccessDenied(f"{exc} (--skip-unreadable leaves such files out)") from exc
        except EmptySnapshot as exc:
            raise EmptySnapshot(f"{exc} (--allow-empty stores it)") from exc
    for note in r.notes:
        c.say(f"casnap: note: {note}")
    for w in r.warnings:
        click.echo(f"casnap: warning: {w}", err=True)
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
    type=click.Path(path_type=Path, readable=False),
    default=None,
    help="Restore into DIR instead of the data dir.",
)
@click.option(
    "--no-safety-snapshot",
    is_flag=True,
    help="Do not save target files that no snapshot holds before replacing them.",
)
@click.option("--force", is_flag=True, help="Restore a database even while a process has it open.")
@click.option(
    "--no-smoke",
    is_flag=True,
    help="Skip the built-in smoke checks (SQLite integrity, FAISS read/search); hashes are "
    "still verified and --smoke-cmd still runs.",
)
@click.option(
    "--smoke-cmd",
    metavar="CMD",
    default=None,
    help="Also run CMD through the shell with the restored files in $CASNAP_STAGED_DIR; a "
    "non-zero exit aborts the checkout.",
)
@click.option(
    "--all-paths",
    is_flag=True,
    help="Restore the newest snapshot of each group of snapshots committed with the same paths "
    "(e.g. `commit app.db` and `commit faiss` on their own schedules) at once; the plan is "
    "printed first.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@pass_ctx
def checkout(
    c: Context,
    snapshot: str,
    paths: tuple[str, ...],
    target: Path | None,
    no_safety_snapshot: bool,
    force: bool,
    no_smoke: bool,
    smoke_cmd: str | None,
    all_paths: bool,
    as_json: bool,
) -> None:
    """Restore SNAPSHOT (id, unique prefix, `latest` or a tag) into the data dir.

    Files are restored into a private staging dir beside the target (0700), every chunk and
    file hash verified, then smoke-checked there: each SQLite database passes PRAGMA
    integrity_check (quick_check above 256 MiB) and has its tables listed; each FAISS index is
    read, its ntotal compared with its .meta.json sidecar, and searched once; then --smoke-cmd,
    if given, runs. Only when all pass is each file swapped in with an atomic rename; otherwise
    the target is left untouched and the failed check and file are named (exit 9). Files absent
    from the snapshot are removed (full checkout only). Data that no snapshot holds is first
    saved as a snapshot tagged `pre-checkout`. With PATHS, only those files are restored (and
    checked). A database in use is refused (exit 6): --force overrides open descriptors, never
    a SQLite lock. A repository inside the target is never touched; a target inside the
    repository is refused.

    Example: casnap checkout pre-migration --smoke-cmd './scripts/search-test.sh'
    """
    repo = c.open()
    dest = target if target is not None else c.data
    if all_paths and not as_json:
        for sid, snap in newest_per_group(repo, repo.load_snapshot(repo.resolve(snapshot)).source):
            what = " ".join(snap.paths) or "(all)"
            c.say(f"plan: {what} from snapshot {sid.short} ({local_time(snap.time)})")
    with progress_bar(c, "restore") as progress:
        r = repo.checkout(
            snapshot,
            dest,
            paths,
            safety_snapshot=not no_safety_snapshot,
            force=force,
            smoke=not no_smoke,
            smoke_cmd=smoke_cmd,
            progress=progress,
            all_paths=all_paths,
        )
    for w in r.warnings:
        click.echo(f"casnap: warning: {w}", err=True)
    if as_json:
        emit_json(r.to_json())
        return
    if r.safety_snapshot:
        c.say(f"saved the replaced data as snapshot {r.safety_snapshot[:8]} (tag pre-checkout)")
    c.say(
        f"restored snapshot {r.id[:8]} into {dest}: {r.files_written} written, "
        f"{r.files_unchanged} unchanged, {r.files_removed} removed; all hashes verified"
    )
    if r.smoke is not None:
        c.say(_smoke_summary(r.smoke))


def _smoke_summary(report: dict[str, Any]) -> str:
    checks = report["checks"]
    files = {ch["path"] for ch in checks if ch["path"]}
    cmd = any(ch["check"] == "smoke-cmd" for ch in checks)
    state = "passed" if report["ok"] else "FAILED"
    return f"smoke checks {state}: {len(checks)} checks on {len(files)} files" + (
        ", smoke command included" if cmd else ""
    )


def _print_checks(report: dict[str, Any]) -> None:
    for ch in report["checks"]:
        mark = "ok  " if ch["ok"] else "FAIL"
        where = ch["path"] or "-"
        click.echo(f"  {mark} {ch['check']:<17} {where:<28} {ch['detail']}")


@cli.command()
@click.argument("a")
@click.argument("b", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as one JSON object.")
@pass_ctx
def diff(c: Context, a: str, b: str | None, as_json: bool) -> None:
    """Show what changed from snapshot A to snapshot B, or to the data dir as it is now.

    Files added (A), removed (D) and changed (M), with the bytes and chunks the new side shares
    with A and the new ones; for SQLite databases the tables whose rows or schema changed (+rows
    added -rows removed, rows updated); for FAISS indexes the index type and the change of ntotal.
    Without B, the data dir is read the way commit reads it (within A's paths and excludes) and
    chunked with the repository's chunker; nothing is written to the repository.

    Example: casnap diff pre-migration latest
    """
    from casnap.diff import diff as run_diff

    repo = c.open()
    result = run_diff(repo, a, b, data_dir=c.data if b is None else None)
    if as_json:
        emit_json(result.to_json())
        return
    _print_diff(result.to_json())


def _signed(n: int | None) -> str:
    return "?" if n is None else f"{n:+d}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _count(n: int | None) -> str:
    return "-" if n is None else str(n)


def _print_diff(d: dict[str, Any]) -> None:
    right = d["b"]["id"][:8] if "id" in d["b"] else f"data dir {d['b']['data_dir']}"
    click.echo(f"diff {d['a']['id'][:8]} -> {right}")
    marks = {"added": "A", "removed": "D", "changed": "M"}
    for f in d["files"]:
        if f["status"] == "unchanged":
            continue
        size = (
            f"{human(f['size_b'])}"
            if f["size_a"] is None
            else f"{human(f['size_a'])}"
            if f["size_b"] is None
            else f"{human(f['size_a'])} -> {human(f['size_b'])}"
        )
        line = f"  {marks[f['status']]} {f['path']:<30} {size}"
        if f["status"] != "removed":
            line += (
                f"  (shared {human(f['bytes_shared'])}, new {human(f['bytes_new'])} "
                f"in {_plural(f['chunks_new'], 'chunk')})"
            )
        click.echo(line)
        for t in f["tables"]:
            if t["status"] == "changed":
                rows = f"{t['rows_a']} -> {t['rows_b']} rows"
                if t["added"] is not None:
                    rows += f" (+{t['added']} -{t['removed']}"
                    rows += f", {t['updated']} updated)" if t["updated"] is not None else ")"
                schema = ", schema changed" if t["schema_changed"] else ""
                click.echo(f"      table {t['name']}: {rows}{schema}")
            else:
                n = t["rows_b"] if t["status"] == "added" else t["rows_a"]
                click.echo(f"      table {t['name']}: {t['status']} ({n} rows)")
        ix = f["index"]
        if ix is not None:
            kind = ix["type_b"] or ix["type_a"]
            if ix["type_a"] and ix["type_b"] and ix["type_a"] != ix["type_b"]:
                kind = f"{ix['type_a']} -> {ix['type_b']}"
            click.echo(
                f"      index {kind}: ntotal {_count(ix['ntotal_a'])} -> {_count(ix['ntotal_b'])} "
                f"({_signed(ix['ntotal_delta'])})"
            )
            for side, problem in (("old", ix["problem_a"]), ("new", ix["problem_b"])):
                if problem:
                    click.echo(f"      {side} side {problem}")
    s = d["summary"]
    click.echo(
        f"{s['files_changed']} changed, {s['files_added']} added, {s['files_removed']} removed, "
        f"{s['files_unchanged']} unchanged; {human(s['bytes_new'])} new in "
        f"{_plural(s['chunks_new'], 'chunk')}, {human(s['bytes_shared'])} shared"
    )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the snapshots as a JSON list.")
@pass_ctx
def log(c: Context, as_json: bool) -> None:
    """List snapshots, newest first.

    One line per snapshot: id prefix, local time, file count, total size, bytes the snapshot added
    to the repository, tags and message. Any id prefix of 4+ hex digits, a tag or `latest` names a
    snapshot in the other commands.

    Example: casnap log --json
    """
    repo = c.open()
    rows = []
    sizes = repo.manifest_sizes()
    for sid, s in reversed(repo.snapshots()):
        rows.append(
            {
                "id": sid.hex(),
                "time": s.time,
                "message": s.message,
                "tags": list(s.tags),
                "paths": list(s.paths),
                "host": s.host,
                "files": len(s.files),
                "logical_bytes": s.logical_bytes,
                "bytes_added": s.stats.get("bytes_added", 0) + sizes.get(sid.hex(), 0),
            }
        )
    if as_json:
        emit_json(rows)
        return
    if not rows:
        c.say("no snapshots")
        return
    click.echo(f"{'ID':<9} {'TIME':<19} {'FILES':>5} {'SIZE':>10} {'ADDED':>10}  TAGS / MESSAGE")
    for r in rows:
        label = " ".join(f"[{t}]" for t in r["tags"])
        text = " ".join(x for x in (label, r["message"]) if x)
        click.echo(
            f"{r['id'][:8]:<9} {local_time(r['time']):<19} {r['files']:>5} "
            f"{human(r['logical_bytes']):>10} {human(r['bytes_added']):>10}  {text}"
        )


@cli.command()
@click.argument("snapshot")
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON.")
@pass_ctx
def show(c: Context, snapshot: str, as_json: bool) -> None:
    """Show one snapshot: its metadata and files with sizes and hashes.

    SNAPSHOT is an id, a unique prefix of 4+ hex digits, `latest` or a tag. Lists every file with
    its size, chunk count, kind (`sqlite` when captured through the backup API) and BLAKE3 hash.

    Example: casnap show latest
    """
    repo = c.open()
    sid = repo.resolve(snapshot)
    s = repo.load_snapshot(sid)
    if as_json:
        d = json.loads(s.encode())
        d["id"] = sid.hex()
        emit_json(d)
        return
    click.echo(f"snapshot {sid.hex()}")
    click.echo(f"  time     {local_time(s.time)}  ({s.user}@{s.host})")
    click.echo(f"  source   {s.source}" + (f"  paths: {' '.join(s.paths)}" if s.paths else ""))
    if s.message:
        click.echo(f"  message  {s.message}")
    if s.tags:
        click.echo(f"  tags     {', '.join(s.tags)}")
    click.echo(f"  files    {len(s.files)}, {human(s.logical_bytes)}")
    click.echo("")
    click.echo(f"{'SIZE':>10} {'CHUNKS':>7}  {'KIND':<6} {'BLAKE3':<16}  PATH")
    for f in s.files:
        click.echo(f"{human(f.size):>10} {f.chunks:>7}  {f.kind:<6} {f.hash[:16]}  {f.path}")


@cli.command()
@click.option(
    "--size-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=40.0,
    show_default=True,
    help="Size of generated sample data.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the generated sample data.")
@click.pass_context
def demo(ctx: click.Context, size_mb: float, seed: int) -> None:
    """Generate sample data into an empty data dir, commit, change it, commit again, show log.

    The sample is a SQLite app.db and FAISS Flat, IVF and HNSW indexes with .meta.json sidecars;
    the second commit shows how little an evolving data dir adds to the repository.

    Example: casnap demo --size-mb 40
    """
    from casnap import sample

    c: Context = ctx.obj
    if sample.is_empty(c.data):
        c.say(f"generating {size_mb:.0f} MB of sample data (SQLite + FAISS) into {c.data}")
        sample.generate(c.data, size_mb=size_mb, seed=seed)
    elif not sample.is_sample(c.data):
        raise click.UsageError(
            f"{c.data} holds data demo did not generate, and demo changes only its own sample "
            "data: point --data at an empty dir, or use `casnap commit`"
        )
    repo = Repository.open_or_init(c.repo_path)
    step = len(repo.snapshots()) + 1
    first = repo.commit(c.data, message="demo: current data")
    c.say(f"commit 1: snapshot {first.id[:8]}, {human(first.bytes_added)} added")
    changes = sample.evolve(c.data, step, seed=seed)
    c.say("changed the data: " + ", ".join(f"{k} {v}" for k, v in changes.items()))
    second = repo.commit(c.data, message=f"demo: after change step {step}")
    c.say(
        f"commit 2: snapshot {second.id[:8]}, {human(second.bytes_read)} read, "
        f"{human(second.bytes_added)} added for {human(second.logical_bytes)} of data"
    )
    ctx.invoke(log)


# -- maintenance: gc, prune, forget, verify, repair-index, stats ----------------------------------


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
    freed, deleted, wrote = ("freed", "deleted", "wrote")
    if r.dry_run:
        freed, deleted, wrote = ("would free", "would delete", "would write")
    detail = f"{deleted} {human(r.bytes_deleted + manifests)}"
    detail += f", {human(manifests)} of it snapshot manifests;" if manifests else ","
    click.echo(
        f"{freed} {human(r.bytes_freed + manifests)} ({detail} {wrote} {human(r.bytes_written)})"
    )


max_unused_option = click.option(
    "--max-unused",
    type=click.FloatRange(0, 100),
    default=collector.DEFAULT_MAX_UNUSED,
    show_default=True,
    metavar="PCT",
    help="Repack a pack when more than PCT% of it is unreferenced.",
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
    r = collector.collect(c.open(), dry_run=dry_run, max_unused=max_unused)
    if as_json:
        emit_json(r.to_json())
        return
    _print_gc(c, r)


def _print_groups(report: retention.PruneReport) -> None:
    for g in report.groups:
        keep = sum(d.keep for d in g.decisions)
        click.echo(f"{g.key.describe()}: keep {keep}, remove {len(g.decisions) - keep} snapshot(s)")
        for d in g.decisions:
            label = " ".join(f"[{t}]" for t in d.item.tags)
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
    help="Keep snapshots newer than the group's newest minus DURATION (2d, 1w, 1y2m3h).",
)
@click.option(
    "--keep-tag",
    "keep_tags",
    multiple=True,
    metavar="TAG[,TAG]",
    help="Keep snapshots carrying the tag(s) (repeatable; comma: all of them).",
)
@click.option(
    "--path",
    "paths",
    multiple=True,
    help="Only the group of snapshots committed with exactly these paths (repeatable; "
    "`.` for whole-dir snapshots).",
)
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

    Rules work as in restic, per group of snapshots with the same data dir and paths: each
    --keep-hourly/daily/weekly/monthly/yearly N keeps the newest snapshot of each of the last N
    periods that have one; a snapshot is kept when any rule keeps it. At least one rule is needed.
    """
    policy = retention.Policy(
        last=keep_last,
        hourly=keep_hourly,
        daily=keep_daily,
        weekly=keep_weekly,
        monthly=keep_monthly,
        yearly=keep_yearly,
        within=retention.Duration.parse(keep_within) if keep_within else None,
        tags=tuple(tuple(t for t in tag.split(",") if t) for tag in keep_tags),
    )
    group = retention.normalize_group_paths(paths, c.data) if paths else None
    repo = c.open()
    r = retention.prune(repo, policy, paths=group, dry_run=dry_run)
    gc_report = None
    if dry_run:
        gone = frozenset(ObjectId.from_hex(i) for i in r.removed)
        gc_report = collector.collect(
            repo, dry_run=True, max_unused=max_unused, assume_forgotten=gone
        )
    elif not no_gc:
        gc_report = collector.collect(repo, max_unused=max_unused)
    if as_json:
        emit_json(_forget_json(r, gc_report))
        return
    if group is not None and not r.groups:
        c.say(f"no snapshots were committed with the paths {' '.join(group) or '.'}")
    _print_groups(r)
    verbs = ("would remove", "would keep") if dry_run else ("removed", "kept")
    c.say(
        f"{verbs[0]} {len(r.removed)} snapshot(s) ({human(r.manifest_bytes_removed)} of "
        f"manifests), {verbs[1]} {r.kept} ({r.policy})"
    )
    if gc_report is not None:
        _print_gc(c, gc_report, r.manifest_bytes_removed)


def _forget_json(r: retention.PruneReport, gc_report: collector.GcReport | None) -> dict[str, Any]:
    """prune's or forget's report with the gc that followed, and the bytes both freed."""
    out = r.to_json()
    out["gc"] = gc_report.to_json() if gc_report else None
    out["bytes_freed"] = r.manifest_bytes_removed + (gc_report.bytes_freed if gc_report else 0)
    return out


@cli.command()
@click.argument("snapshots", nargs=-1, required=True)
@click.option("--prune", "run_gc", is_flag=True, help="Run gc afterwards to free the space.")
@click.option("--dry-run", is_flag=True, help="Show what would be forgotten; change nothing.")
@max_unused_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@pass_ctx
def forget(
    c: Context,
    snapshots: tuple[str, ...],
    run_gc: bool,
    dry_run: bool,
    max_unused: float,
    as_json: bool,
) -> None:
    """Forget SNAPSHOTS (ids, unique prefixes or tags); their data goes at the next gc."""
    repo = c.open()
    r = retention.forget(repo, snapshots, dry_run=dry_run)
    gc_report = None
    if run_gc and dry_run:
        gone = frozenset(ObjectId.from_hex(i) for i in r.removed)
        gc_report = collector.collect(
            repo, dry_run=True, max_unused=max_unused, assume_forgotten=gone
        )
    elif run_gc:
        gc_report = collector.collect(repo, max_unused=max_unused)
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


@cli.command(name="verify")
@click.argument("snapshots", nargs=-1)
@click.option("--read-data", is_flag=True, help="Read every pack and re-hash every chunk.")
@click.option(
    "--read-data-subset",
    type=click.FloatRange(0, 100, min_open=True),
    default=None,
    metavar="PCT",
    help="Read a random PCT% of the packs.",
)
@click.option(
    "--smoke",
    is_flag=True,
    help="Also restore SNAPSHOTS (default `latest`) into a temporary staging dir and run the "
    "smoke checks there (SQLite integrity, FAISS read/ntotal/search).",
)
@click.option(
    "--smoke-cmd",
    metavar="CMD",
    default=None,
    help="Also run CMD on each restored snapshot with it in $CASNAP_STAGED_DIR.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@pass_ctx
def verify_cmd(
    c: Context,
    snapshots: tuple[str, ...],
    read_data: bool,
    read_data_subset: float | None,
    smoke: bool,
    smoke_cmd: str | None,
    as_json: bool,
) -> None:
    """Check that the repository (or SNAPSHOTS) is whole; report every problem.

    Without options the structure is checked: manifests, index files, pack directories and chunk
    lists. --read-data also reads every pack and verifies every chunk's hash. Exits 9 when
    anything is wrong, naming the damaged chunks and the snapshots and files they break. With
    SNAPSHOTS, only their chunks are followed and only packs holding them are read; manifests,
    index and pack directories are always checked whole.

    --smoke then restores each of SNAPSHOTS (default `latest`) into a temporary dir, every hash
    verified, and runs the checkout smoke checks on it; --smoke-cmd runs a command there with
    $CASNAP_STAGED_DIR set. The data dir is never touched.

    Example: casnap verify --smoke latest
    """
    if read_data and read_data_subset is not None:
        raise click.UsageError("--read-data and --read-data-subset exclude each other")
    subset = read_data_subset
    repo = c.open()
    r = verify.verify(repo, snapshots, read_data=read_data, subset_pct=subset)
    smoked = []
    if (smoke or smoke_cmd) and r.ok:
        for ref in snapshots or ("latest",):
            with progress_bar(c, "verify") as progress:
                smoked.append(
                    repo.smoke_verify(
                        ref, smoke_checks=smoke, smoke_cmd=smoke_cmd, progress=progress
                    )
                )
    if as_json:
        out = r.to_json()
        if smoke or smoke_cmd:
            out["smoke"] = [s.to_json() for s in smoked] if r.ok else None
        emit_json(out)
    else:
        for p in r.problems:
            click.echo(p.line())
        for note in r.notes:
            c.say(f"note: {note}")
        if r.ok:
            click.echo(f"verify: {r.summary()}")
        elif smoke or smoke_cmd:
            c.say("smoke checks not run: the repository has the problems above")
        for s in smoked:
            click.echo(
                f"snapshot {s.id[:8]}: {s.files} files, {human(s.bytes_verified)} restored, "
                "every hash verified"
            )
            if s.smoke is not None:
                _print_checks(s.smoke)
                click.echo(_smoke_summary(s.smoke))
    if not r.ok:
        raise CheckFailed(f"verify: {r.summary()}")
    bad = [(s.id, ch) for s in smoked if s.smoke for ch in s.smoke["checks"] if not ch["ok"]]
    if bad:
        listed = "; ".join(
            f"{sid[:8]} {ch['check']}"
            + (f" on {ch['path']}" if ch["path"] else "")
            + f": {ch['detail']}"
            for sid, ch in bad[:3]
        )
        raise SmokeCheckFailed(f"smoke checks failed: {listed}", [ch for _, ch in bad])


@cli.command(name="repair-index")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@pass_ctx
def repair_index(c: Context, as_json: bool) -> None:
    """Rebuild the index from the packs alone (after index files were lost or damaged).

    Damaged packs are salvaged chunk by chunk or skipped, and reported. Takes the exclusive lock.
    """
    r = repair.repair_index(c.open())
    if as_json:
        emit_json(r.to_json())
        return
    for key, reason in r.skipped:
        click.echo(f"{key}: {reason}")
    c.say(
        f"repair-index: {r.chunks_indexed} chunks indexed from {r.packs} packs, "
        f"{len(r.skipped)} pack(s) damaged, {r.index_files_removed} old index file(s) removed"
    )
    if r.missing:
        raise CheckFailed(
            f"repair-index: {r.missing} blob(s) the snapshots need are in no intact pack; "
            "run `casnap verify` to see which files they break"
        )


@cli.command(name="stats")
@click.argument("snapshot", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as one JSON object.")
@pass_ctx
def stats_cmd(c: Context, snapshot: str | None, as_json: bool) -> None:
    """Show sizes, dedup and compression; with SNAPSHOT, the new bytes of each of its files."""
    repo = c.open()
    if snapshot is not None:
        s = stats.snapshot_stats(repo, snapshot)
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
                f"{f'{f.new_chunks}/{f.chunks}':>13} {human(f.size):>10}  {f.path}"
            )
        return
    r = stats.repository_stats(repo)
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
    click.echo(f"{'ID':<9} {'TIME':<19} {'SIZE':>10} {'ADDED':>10}  PATHS / TAGS")
    for a in r.snapshots_added:
        label = " ".join([*(a.paths or ("(all)",)), *(f"[{t}]" for t in a.tags)])
        click.echo(
            f"{a.id[:8]:<9} {local_time(a.time):<19} {human(a.logical_bytes):>10} "
            f"{human(a.added_bytes + a.manifest_bytes):>10}  {label}"
        )


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="casnap")
