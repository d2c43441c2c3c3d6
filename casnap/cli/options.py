"""Options several commands share: the --path / --tag / --host snapshot filters and how a
snapshot reference is resolved through them."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from casnap.cli.main import Context
from casnap.config import EARLIEST_TIME
from casnap.errors import CasnapError

if TYPE_CHECKING:
    from casnap import selection
    from casnap.ids import ObjectId
    from casnap.repository import Repository

PATH_FILTER_HELP = (
    "Only snapshots committed with path P (data-dir relative, ./P, or a path to it) may be "
    "named; `latest` is then the newest of them (repeatable: with all of them; `.`: whole-dir "
    "snapshots)."
)
TAG_FILTER_HELP = (
    "Only snapshots carrying tag T may be named (repeatable: any of them; `a,b`: both)."
)
HOST_FILTER_HELP = "Only snapshots taken on host H (repeatable: any of them)."
HOSTS_KEY = "casnap.hosts"


def _keep_hosts(ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]) -> None:
    """Keep the --host values; one naming no host (`--host "$UNSET"`) is a usage error, as an
    empty --tag is: it would select no snapshot, or widen a forget's filter if dropped."""
    for v in value:
        if not v.strip():
            raise click.BadParameter(
                f"{v!r} names no host (an unset variable?); give a host name, or leave --host out",
                param_hint="--host",
            )
    ctx.meta[HOSTS_KEY] = value


def host_option(help_text: str = HOST_FILTER_HELP) -> Callable[[Callable[..., Any]], Any]:
    """Add `--host H` to a command; snapshot_filter reads it from the command's context, so the
    commands' own signatures stay as they are."""
    return click.option(
        "--host",
        multiple=True,
        metavar="H",
        expose_value=False,
        callback=_keep_hosts,
        help=help_text,
    )


def filter_hosts() -> tuple[str, ...]:
    """The --host values of the command running (none: any host)."""
    ctx = click.get_current_context(silent=True)
    return tuple(ctx.meta.get(HOSTS_KEY, ())) if ctx is not None else ()


def filter_options(
    path_help: str = PATH_FILTER_HELP,
    tag_help: str = TAG_FILTER_HELP,
    host_help: str = HOST_FILTER_HELP,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add `--path P`, `--tag T` (as filter_paths and filter_tags) and `--host H` to a command."""

    def add(f: Callable[..., Any]) -> Callable[..., Any]:
        f = host_option(host_help)(f)
        f = click.option("--tag", "filter_tags", multiple=True, metavar="T[,T]", help=tag_help)(f)
        return click.option("--path", "filter_paths", multiple=True, metavar="P", help=path_help)(f)

    return add


def snapshot_filter(
    c: Context, repo: Repository, paths: tuple[str, ...], tags: tuple[str, ...]
) -> selection.SnapshotFilter:
    """The filter the --path, --tag and --host values give, paths read against the data dir."""
    from casnap import selection

    hosts = filter_hosts()
    if not paths and not tags and not hosts:
        return selection.SnapshotFilter()
    try:
        snaps = repo.snapshots() if paths else []
    except CasnapError:
        snaps = []  # a damaged manifest (verify reports it): read paths against the data dir
    return selection.make_filter(snaps, c.data, paths, tags, hosts)


def resolve_ref(
    c: Context, repo: Repository, ref: str, paths: tuple[str, ...], tags: tuple[str, ...]
) -> ObjectId:
    """The snapshot ref names among those the filters let through."""
    from casnap import selection

    flt = snapshot_filter(c, repo, paths, tags)
    return selection.resolve(repo.snapshots(), ref, flt, repo.damaged).id


class Given(click.ParamType):
    """A string that must not be empty: `--smoke-cmd "$CHECK"` with CHECK unset would run
    nothing and pass. With path, a Path, never `""` (which would name the working dir)."""

    name = "text"

    def __init__(self, what: str, path: bool = False) -> None:
        self.what = what
        self.path = path

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail(f"{value!r} is empty (an unset variable?): give {self.what}", param, ctx)
        return Path(value) if self.path and isinstance(value, str) else value


SNAPSHOT = Given("a snapshot id, a prefix of one, a tag or latest")
"""A snapshot argument: `checkout "$ID"` with ID unset is a usage error, not an unknown id."""


class Number(click.FloatRange):
    """A float range that refuses nan (which passes every range comparison) and infinities."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class Percent(Number):
    """A percentage from 0 to 100, with or without its `%` (restic's `--max-unused 5%`); with
    unlimited, restic's `unlimited` is 100."""

    def __init__(self, min_open: bool = False, unlimited: bool = False) -> None:
        super().__init__(0, 100, min_open=min_open)
        self.unlimited = unlimited

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if self.unlimited and isinstance(value, str) and value.strip() == "unlimited":
            return 100.0
        if isinstance(value, str) and value.strip().endswith("%"):
            value = value.strip()[:-1]
        if isinstance(value, str):
            try:
                float(value)
            except ValueError:  # restic's `1/5` subset among them
                self.fail(
                    f"{value!r} is not a percentage: give a percentage such as 10 or 10%",
                    param,
                    ctx,
                )
        return super().convert(value, param, ctx)


class SnapshotTime(click.ParamType):
    """A point in time as ISO 8601 (`2025-01-01T12:00:00Z`, `+02:00`) or `YYYY-MM-DD HH:MM:SS`;
    without an offset it is local time. Refuses times before 1970 and in the future."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, dt.datetime):
            return value
        try:
            t = dt.datetime.fromisoformat(str(value).strip())
        except ValueError:
            self.fail(
                f"{value!r} is not a time: give ISO 8601 (2025-01-01T12:00:00Z) or "
                "YYYY-MM-DD HH:MM:SS (local time)",
                param,
                ctx,
            )
        try:  # compared as times (a year below 1000 has fewer digits)
            aware: dt.datetime | None = t.astimezone(dt.UTC)
        except (ValueError, OverflowError):  # local year 1 lies before year 1 in UTC
            aware = None
        if aware is None or aware < EARLIEST_TIME:
            self.fail(
                f"{value!r} lies before 1970 (the earliest time a snapshot records)", param, ctx
            )
        if aware > dt.datetime.now(dt.UTC):
            self.fail(f"{value!r} lies in the future", param, ctx)
        return t if t.tzinfo is not None else t.astimezone()
