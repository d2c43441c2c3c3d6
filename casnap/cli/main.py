"""The casnap command group: global options, the context every command gets, and the one place
where errors become a line on stderr and an exit code."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from casnap.errors import CasnapError, from_oserror
from casnap.repository import Repository

INTERNAL_ERROR = 70
INTERRUPTED = 130


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
        return Repository.open(self.repo_path)

    def say(self, text: str) -> None:
        """A human message on stderr, unless -q."""
        if not self.quiet:
            click.echo(text, err=True)


pass_ctx = click.make_pass_decorator(Context)


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


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="casnap")
