"""The global options read: an empty variable, an empty --data, a repository location that does
not parse. A bad value is kept until the command's own options are read, so `casnap log --help`
prints the help whatever CASNAP_REPO holds (the help reads no repository), as restic's does;
the command itself then says it, one line, exit 2."""

from __future__ import annotations

import os
from collections.abc import Callable

import click

from casnap.errors import InvalidArgument
from casnap.locations import Location, parse_location

ENVIRONMENT = click.core.ParameterSource.ENVIRONMENT
DEFAULT = click.core.ParameterSource.DEFAULT
BAD_GLOBAL = "casnap.bad_global"  # ctx.meta: the usage error a global option's value made


def read_location(ctx: click.Context, repo: str, data: str) -> Location:
    """The repository's location; InvalidArgument for an empty variable, --data or location."""
    _refuse_empty_variables(ctx)
    if not data:  # Path("") would be the working directory: never what an empty value meant
        raise InvalidArgument("--data is empty; give the data directory")
    try:
        return parse_location(repo)
    except InvalidArgument as exc:
        if ctx.get_parameter_source("repo") == ENVIRONMENT:
            raise InvalidArgument(f"CASNAP_REPO: {exc}") from exc
        raise


def _refuse_empty_variables(ctx: click.Context) -> None:
    """An empty CASNAP_REPO or CASNAP_DATA (`export CASNAP_REPO="$REPO"` with REPO unset) is a
    usage error, as an empty --repo or --data is: click passes over an empty variable, so the
    default (./backups, ./data of the working dir) took its place and a commit made a repository
    there. The default is for a variable that is not set."""
    for name, variable, what in (
        ("repo", "CASNAP_REPO", "the repository"),
        ("data", "CASNAP_DATA", "the data directory"),
    ):
        if ctx.get_parameter_source(name) == DEFAULT and os.environ.get(variable) == "":
            raise InvalidArgument(
                f"{variable} is set but empty; give {what} (or unset it for the default)"
            )


def keep_bad_global(ctx: click.Context, exc: Exception) -> None:
    """Keep a global option's usage error for the command to raise once its --help had its turn."""
    ctx.meta[BAD_GLOBAL] = exc


def parse_command_args(
    parse: Callable[[click.Context, list[str]], list[str]], ctx: click.Context, args: list[str]
) -> list[str]:
    """A command's parse_args: its --help first, then a global option's kept usage error (which
    outranks one of the command's own options)."""
    bad = ctx.meta.get(BAD_GLOBAL)
    try:
        rest = parse(ctx, args)
    except click.UsageError:
        if bad is None:
            raise
        rest = []
    if bad is not None:
        raise bad
    return rest
