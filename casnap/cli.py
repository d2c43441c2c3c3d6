"""The casnap command line: parse, call the Repository API, print. Errors are mapped here, once."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from casnap.errors import CasnapError, from_oserror
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
        except click.ClickException as exc:
            exc.show()
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
        return Repository.open(self.repo_path)

    def say(self, text: str) -> None:
        """A human message on stderr, unless -q."""
        if not self.quiet:
            click.echo(text, err=True)


pass_ctx = click.make_pass_decorator(Context)


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


@click.group(cls=CasnapGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--repo",
    envvar="CASNAP_REPO",
    default="./backups",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Repository directory (env CASNAP_REPO).",
)
@click.option(
    "--data",
    envvar="CASNAP_DATA",
    default="./data",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Data directory to snapshot and restore (env CASNAP_DATA).",
)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but results and errors.")
@click.version_option(package_name="casnap")
@click.pass_context
def cli(ctx: click.Context, repo: Path, data: Path, quiet: bool) -> None:
    """casnap: deduplicating, verified snapshots of a SQLite + FAISS data directory."""
    ctx.obj = Context(repo, data, quiet)


@cli.command()
@pass_ctx
def init(c: Context) -> None:
    """Create an empty repository at --repo (a missing or empty directory)."""
    repo = Repository.init(c.repo_path)
    c.say(f"created casnap repository {repo.config['id'][:8]} at {c.repo_path}")


@cli.command()
@click.argument("paths", nargs=-1)
@click.option("-m", "--message", default="", help="Message stored with the snapshot.")
@click.option("--tag", "tags", multiple=True, help="Tag the snapshot (repeatable).")
@click.option("--exclude", "excludes", multiple=True, help="Skip files matching GLOB (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@pass_ctx
def commit(
    c: Context,
    paths: tuple[str, ...],
    message: str,
    tags: tuple[str, ...],
    excludes: tuple[str, ...],
    as_json: bool,
) -> None:
    """Snapshot the data dir, or PATHS inside it, into the repository.

    SQLite databases are captured through SQLite's online backup API (consistent while the app
    writes); files unchanged since the last snapshot of the same paths are not read again. The
    repository is created on first use when --repo is missing or empty.
    """
    repo = Repository.open_or_init(c.repo_path)
    r = repo.commit(c.data, paths, excludes=excludes, message=message, tags=tags)
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
    type=click.Path(path_type=Path),
    default=None,
    help="Restore into DIR instead of the data dir.",
)
@click.option(
    "--no-safety-snapshot",
    is_flag=True,
    help="Do not save target files that no snapshot holds before replacing them.",
)
@click.option("--force", is_flag=True, help="Restore a database even while a process has it open.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@pass_ctx
def checkout(
    c: Context,
    snapshot: str,
    paths: tuple[str, ...],
    target: Path | None,
    no_safety_snapshot: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Restore SNAPSHOT (id, unique prefix, `latest` or a tag) into the data dir.

    Every chunk and every file is verified before anything is swapped in; each file is replaced
    atomically. Files absent from the snapshot are removed (full checkout only). Data that no
    snapshot holds is first saved as a snapshot tagged `pre-checkout`.
    """
    repo = c.open()
    dest = target if target is not None else c.data
    r = repo.checkout(snapshot, dest, paths, safety_snapshot=not no_safety_snapshot, force=force)
    if as_json:
        emit_json(r.to_json())
        return
    if r.safety_snapshot:
        c.say(f"saved the replaced data as snapshot {r.safety_snapshot[:8]} (tag pre-checkout)")
    c.say(
        f"restored snapshot {r.id[:8]} into {dest}: {r.files_written} written, "
        f"{r.files_unchanged} unchanged, {r.files_removed} removed; all hashes verified"
    )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the snapshots as a JSON list.")
@pass_ctx
def log(c: Context, as_json: bool) -> None:
    """List snapshots, newest first."""
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
    """Show one snapshot: its metadata and files with sizes and hashes."""
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
@click.option("--size-mb", default=40.0, show_default=True, help="Size of generated sample data.")
@click.option("--seed", default=0, show_default=True, help="Seed of the generated sample data.")
@click.pass_context
def demo(ctx: click.Context, size_mb: float, seed: int) -> None:
    """Generate sample data into an empty data dir, commit, change it, commit again, show log."""
    from casnap import sample

    c: Context = ctx.obj
    if sample.is_empty(c.data):
        c.say(f"generating {size_mb:.0f} MB of sample data (SQLite + FAISS) into {c.data}")
        sample.generate(c.data, size_mb=size_mb, seed=seed)
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


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="casnap")
