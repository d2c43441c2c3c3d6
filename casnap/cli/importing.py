"""The import command: copies an older backup procedure left, turned into snapshots with their
original times."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from casnap.cli.main import Context, cli, pass_ctx, warn
from casnap.cli.options import Given
from casnap.cli.output import emit_json, human, local_time, printable, progress_bar
from casnap.cli.passwords import INIT_PLAIN
from casnap.cli.pipes import printing
from casnap.errors import NotARepository, RepositoryNotFound

if TYPE_CHECKING:
    from casnap.importer import ImportItem, ImportResult
    from casnap.repository import Repository


def _existing(c: Context) -> Repository | None:
    """The repository at --repo, or None while --repo is missing or empty (it is created only
    once there is something to import)."""
    from casnap.repository import Repository

    c.refuse_no_lock()
    try:
        return c.listen(Repository.open(c.repo_path, c.passwords))
    except RepositoryNotFound:
        return None


def _create(c: Context) -> Repository:
    from casnap.repository import Repository

    c.passwords.creating = lambda: not c.holds_config()  # a new repository: a prompt asks twice
    c.passwords.plain_hint = INIT_PLAIN if c.on_s3 else ""
    try:
        repo = Repository.open_or_init(
            c.repo_path, password=c.passwords, encryption=c.auto_encryption()
        )
    except NotARepository:
        if not c.holds_config():
            raise
        repo = Repository.open(c.repo_path, c.passwords)  # another command created it meanwhile
    return c.listen(repo)


def _line(item: ImportItem) -> str:
    what = {"planned": "would import", "imported": "imported", "already imported": "already"}
    sid = (item.snapshot or "")[:8]
    name = printable(item.name) + ("/" if item.kind != "file" else "")
    where = printable(item.path) if item.path is not None else "(all)"
    text = f"{what[item.status]:<12} {sid:<8} {local_time(item.time)}  {where:<16} <- {name}"
    if item.time_from == "mtime":
        text += "  (time from its mtime: its name holds no date)"
    if item.status == "imported":
        text += f"  {human(item.bytes_added)} added"
    return text


@cli.command(name="import")
@click.argument("dir", metavar="DIR", type=Given("the folder of copies", path=True))
@click.option(
    "--data-name",
    "data_names",
    multiple=True,
    metavar="NAME",
    type=Given("a folder name"),
    help="A dated folder named NAME_<date> is a copy of the whole data dir (repeatable; default: "
    "the data dir's own name, e.g. data_20250101/; a folder named by a date alone is one too).",
)
@click.option("--dry-run", is_flag=True, help="Print the plan; commit nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@pass_ctx
def import_(
    c: Context, dir: Path, data_names: tuple[str, ...], dry_run: bool, as_json: bool
) -> None:
    """Turn the copies in DIR (an older backup procedure's) into snapshots with their times.

    Each copy becomes one snapshot of the data dir, committed at the time its name carries
    (app_20250101_120000.db, faiss_20250101/, 2025-01-01T12-00-00: local time), else at its
    mtime (a folder: its newest file's), which the plan says. A copy's place in the data dir is
    its name without the date: app_20250101_120000.db and app_latest.db are committed as path
    app.db, faiss_20250101/ and faiss/ as path faiss, a dated copy of the data dir (see
    --data-name) as the whole dir, so `log --path app.db`, `checkout latest --path faiss` and
    prune see them with later commits. Copies are committed oldest first, tagged `imported`, the
    message naming the copy; one already imported is skipped, so importing DIR again adds only
    new copies. DIR is only read.

    Example: casnap --repo ./casnap-repo import ./backups --dry-run
    """
    from casnap.importer import import_copies, plan

    repo = _existing(c)
    folder = dir  # the folder of copies
    result = plan(repo, folder, c.data, data_names)
    if not dry_run and any(i.status == "planned" for i in result.items):
        created = repo is None
        if repo is None:
            repo = _create(c)
        with progress_bar(c, "import") as progress:
            result = import_copies(repo, folder, c.data, data_names=data_names, progress=progress)
        if created:  # said once a commit succeeded: a mistyped --repo must not pass unseen
            c.say(f"created repository at {c.where}")
    result.dry_run = dry_run
    for w in result.warnings:
        warn(w)
    done = (
        "nothing was changed (--dry-run)" if dry_run else f"{result.imported} snapshot(s) imported"
    )
    with printing(done):  # a stdout closed or full: said so, with what was imported
        if as_json:
            emit_json(result.to_json())
            return
        _print(c, result)


def _print(c: Context, result: ImportResult) -> None:
    if result.dry_run:
        todo = sum(1 for i in result.items if i.status == "planned")
        c.say(
            f"plan: import {todo} cop{'y' if todo == 1 else 'ies'} from "
            f"{printable(result.source)} as snapshots of {printable(result.data_dir)} "
            f"({result.already} already imported)"
        )
    for item in result.items:
        click.echo(_line(item))
    for s in result.skipped:
        click.echo(f"{'skipped':<12} {printable(s['name'])}: {s['reason']}")
    if not result.dry_run:
        added = sum(i.bytes_added for i in result.items)
        c.say(
            f"{result.imported} imported, {result.already} already imported, "
            f"{len(result.skipped)} skipped; {human(added)} added"
        )
