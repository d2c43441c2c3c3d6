"""`casnap copy`: snapshots from the repository at --repo to another (--to REPO), or from another
into it (--from REPO). The other repository has its own password sources (--to-password-*,
--from-password-*); a missing destination is created, as commit creates a missing repository."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import click

from casnap.cli.main import Context, cli, holds_config, pass_ctx, warn
from casnap.cli.options import SNAPSHOT, filter_options, snapshot_filter
from casnap.cli.output import emit_json, human, printable, progress_bar
from casnap.cli.passwords import Passwords, other_passwords
from casnap.cli.pipes import printing
from casnap.constants import ENCRYPTIONS
from casnap.errors import (
    IntegrityError,
    InvalidArgument,
    NotARepository,
    RepositoryGone,
    RepositoryNotFound,
)
from casnap.locations import Location, S3Url, as_location, parse_location

if TYPE_CHECKING:
    from casnap.copier import CopyResult, SnapshotCopy
    from casnap.repository import Repository


def other_location(text: str, option: str) -> Location:
    """Where the REPO of --to or --from lies, read as --repo is (a directory or an s3:// URL)."""
    try:
        return parse_location(text)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{option}: {exc}") from exc


def open_source(c: Context, location: Location, passwords: Passwords) -> Repository:
    """The repository snapshots are copied from (it must exist)."""
    from casnap.repository import Repository

    try:
        repo = Repository.open(location, passwords)
    except RepositoryNotFound as exc:
        raise RepositoryNotFound(f"{exc}; nothing to copy from") from exc
    return _listen(c, repo, passwords)


def open_destination(
    c: Context, location: Location, passwords: Passwords, encryption: str | None
) -> Repository:
    """The repository snapshots are copied into, created when the directory is missing or
    empty: encrypted (repokey) when asked, or by default on S3 or when a password source is
    set."""
    from casnap.repository import Repository

    on_s3 = isinstance(location, S3Url)
    chosen = encryption or ("repokey" if on_s3 or passwords.given() else "none")
    passwords.creating = lambda: not holds_config(location)  # a prompt then asks twice
    if encryption is None and on_s3:
        passwords.plain_hint = "`--to-encryption none` makes a plain one"
    try:
        repo = Repository.open_or_init(location, password=passwords, encryption=chosen)
    except NotARepository:
        if not holds_config(location):
            raise
        repo = Repository.open(location, passwords)  # another process created it meanwhile
    return _listen(c, repo, passwords)


def _listen(c: Context, repo: Repository, passwords: Passwords) -> Repository:
    repo.notify = c.notice
    repo.warn = warn
    c.opened.append(repo)  # a snapshot whose manifest does not read is warned of at the end
    if not repo.encrypted and passwords.given():
        c.note_once(f"repository {repo.backend.location} is not encrypted; no password used")
    return repo


def _same_place(a: Location, b: Location) -> bool:
    return as_location(a) == as_location(b)  # folders with their links followed


@cli.command()
@click.argument("id", nargs=-1, type=SNAPSHOT)
@click.option("--to", "to_repo", metavar="REPO", help="Copy from --repo into REPO.")
@click.option("--from", "from_repo", metavar="REPO", help="Copy from REPO into --repo.")
@click.option(
    "--from-password-file",
    metavar="FILE",
    help="The password of the --from repository, read from FILE. Without this option or "
    "--from-password-command (not both): CASNAP_FROM_PASSWORD_FILE, "
    "CASNAP_FROM_PASSWORD_COMMAND, CASNAP_FROM_PASSWORD, a prompt on a terminal.",
)
@click.option(
    "--from-password-command",
    metavar="CMD",
    help="Run CMD (no shell) for the password of the --from repository (not with "
    "--from-password-file; beats every CASNAP_FROM_PASSWORD* variable).",
)
@click.option(
    "--to-password-file",
    metavar="FILE",
    help="The password of the --to repository, read from FILE. Without this option or "
    "--to-password-command (not both): CASNAP_TO_PASSWORD_FILE, CASNAP_TO_PASSWORD_COMMAND, "
    "CASNAP_TO_PASSWORD, a prompt on a terminal.",
)
@click.option(
    "--to-password-command",
    metavar="CMD",
    help="Run CMD (no shell) for the password of the --to repository (not with "
    "--to-password-file; beats every CASNAP_TO_PASSWORD* variable).",
)
@click.option(
    "--to-encryption",
    type=click.Choice(ENCRYPTIONS),
    default=None,
    help="Encryption of a destination this copy creates (default: repokey on S3 or when the "
    "destination has a password source set, else none); an existing one keeps its own.",
)
@filter_options()
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@pass_ctx
def copy(
    c: Context,
    id: tuple[str, ...],
    to_repo: str | None,
    from_repo: str | None,
    from_password_file: str | None,
    from_password_command: str | None,
    to_password_file: str | None,
    to_password_command: str | None,
    to_encryption: str | None,
    filter_paths: tuple[str, ...],
    filter_tags: tuple[str, ...],
    as_json: bool,
) -> None:
    """Copy snapshots between two repositories, sending only the chunks the destination lacks.

    With --to REPO the snapshots of --repo go into REPO; with --from REPO those of REPO go into
    --repo. ID... names snapshots of the source (ids, prefixes, latest, tags, with --path/--tag);
    none: every snapshot. A snapshot the destination holds already (the same id, or a copy made
    before) is skipped, so running a copy again, or after it was interrupted, completes it. Each
    snapshot is committed on its own (packs, index file, then its manifest); between two plain
    repositories it keeps its id. A missing destination is created. Both repositories are held
    under the shared lock. A snapshot the source cannot give whole (damaged) is passed over and
    named, the others copied, and the copy exits 5.

    Example: casnap --repo ./backups copy --to /mnt/offsite/backups latest
    """
    c.refuse_no_lock()
    if (to_repo is None) == (from_repo is None):
        raise click.UsageError("give one of --to REPO and --from REPO")
    if to_repo is not None:
        if from_password_file or from_password_command:
            raise click.UsageError("--from-password-file/-command go with --from REPO")
        other = other_location(to_repo, "--to")
        if _same_place(other, c.repo_path):
            raise InvalidArgument(f"--to {to_repo} is the repository at --repo")
        passwords = other_passwords("to", to_password_file, to_password_command, other)
        src = c.open()
        dst_at, dst_passwords = other, passwords
        dst_password = "--to-password-file"
    else:
        assert from_repo is not None
        if to_password_file or to_password_command:
            raise click.UsageError("--to-password-file/-command go with --to REPO")
        other = other_location(from_repo, "--from")
        if _same_place(other, c.repo_path):
            raise InvalidArgument(f"--from {from_repo} is the repository at --repo")
        passwords = other_passwords("from", from_password_file, from_password_command, other)
        src = open_source(c, other, passwords)
        dst_at, dst_passwords = c.repo_path, c.passwords
        dst_password = "--password-file"
    src.on_unwritable = c.note_once  # only read: a read-only one is copied without its lock
    flt = snapshot_filter(c, src, filter_paths, filter_tags)  # refused before anything is made
    from casnap import copier, rollback

    copier.chosen(src, id, flt)  # so is a selection of no snapshot (copied, it is taken again)
    dst = open_destination(c, dst_at, dst_passwords, to_encryption)
    created = dst.created is not None
    r = copier.CopyResult(str(src.backend.location), str(dst.backend.location))
    try:
        _say_encryption(c, src, dst, to_encryption, dst_password)
        for last in (False, True):
            try:
                with progress_bar(c, "copy") as progress:
                    copier.copy_snapshots(src, dst, id, select=flt, progress=progress, result=r)
                break
            except RepositoryGone:  # the destination, deleted since this host kept its config
                if last or dst.kept_config is None:
                    raise
                dst.close()  # made anew, once
                c.opened.remove(dst)
                dst = open_destination(c, dst_at, dst_passwords, to_encryption)
                created = dst.created is not None
                r = copier.CopyResult(str(src.backend.location), str(dst.backend.location))
    except BaseException:
        rollback.take_back(dst)  # made for a copy that stopped before it stored anything
        if not as_json:
            _print_stored(r)
        raise
    for why in src.store.index_damaged.values():  # left out: what needs it is not copied
        warn(
            f"{why} in {src.backend.location}: left out, so what needs the chunks it names "
            "reads as damaged (`casnap repair-index` rebuilds the index)"
        )
    t = r.to_json()
    if created and (t["copied"] or not r.damaged):  # else taken back: it would hold nothing
        kind = "encrypted repository (repokey)" if dst.encrypted else "repository"
        c.say(f"created {kind} at {dst.backend.location}")
    with printing(f"{t['copied']} snapshot(s) copied into {r.destination}"):
        if as_json:
            emit_json(t)
        else:
            _print(r)
    if r.damaged:
        raise IntegrityError(_damaged(r))


def _say_encryption(
    c: Context, src: Repository, dst: Repository, to_encryption: str | None, password: str
) -> None:
    """Note an --to-encryption an existing destination does not follow; warn of a new plain
    destination for an encrypted source."""
    created = dst.created is not None
    if not created and to_encryption is not None and dst.encrypted != (to_encryption != "none"):
        kind = "encrypted" if dst.encrypted else "not encrypted"
        c.note_once(
            f"--to-encryption {to_encryption}: the existing repository {dst.backend.location} "
            f"is {kind} and keeps its own (the option applies to a destination the copy creates)"
        )
    if created and src.encrypted and not dst.encrypted:
        how = (  # a password set for it encrypts nothing once none was asked for
            "as --to-encryption none asks"
            if to_encryption == "none"
            else f"--to-encryption repokey, or a password for it such as {password}, encrypts it"
        )
        warn(
            f"copying from an encrypted repository into a new plain one at "
            f"{dst.backend.location} ({how})",
            always=True,
        )


def _print(r: CopyResult) -> None:
    for s in r.snapshots:
        if s.copied:
            click.echo(_copied(s))
        else:
            dest = printable(str(r.destination), backslash=False)
            click.echo(f"{s.source[:8]} already in {dest} as {s.destination[:8]}")
    for d in r.damaged:  # what cannot be read names a file of the source's snapshot
        why = printable(f"damaged in the source: {d.error}", backslash=False)
        click.echo(f"not copied {d.source[:8]}: {why}")
    t = r.to_json()
    damaged = f", {len(r.damaged)} not copied (damaged in the source)" if r.damaged else ""
    click.echo(
        f"{t['copied']} snapshot(s) copied, {t['present']} already there{damaged}; "
        f"{t['chunks_sent']} chunks sent, {human(t['bytes_written'])} written "
        f"({r.seconds:.2f} s)"
    )


def _copied(s: SnapshotCopy) -> str:
    return (
        f"copied {s.source[:8]} -> {s.destination[:8]}: {s.chunks_sent} chunks sent, "
        f"{human(s.bytes_written)} written, {s.chunks_present} already there"
    )


def _print_stored(r: CopyResult) -> None:
    """The snapshots a copy that stopped (an error, a signal) stored before it, which stay: the
    error line alone said nothing of them. Best effort: what stopped the copy is reported."""
    stored = [s for s in r.snapshots if s.copied]
    if not stored:
        return
    dest = printable(str(r.destination), backslash=False)
    with contextlib.suppress(Exception):
        for s in stored:
            click.echo(_copied(s))
        click.echo(
            f"{len(stored)} snapshot(s) copied into {dest} before the copy stopped; they stay, "
            "and a rerun copies the rest"
        )


def _damaged(r: CopyResult) -> str:
    """The one line of a copy that passed over snapshots damaged in the source: the first one
    and its file, how many more, what became of the others."""
    first = r.damaged[0]
    more = f" (and {len(r.damaged) - 1} more)" if len(r.damaged) > 1 else ""
    t = r.to_json()
    return (
        f"{len(r.damaged)} snapshot(s) not copied, damaged in the source: snapshot "
        f"{first.source[:8]}: {first.error}{more}; {t['copied']} copied, {t['present']} already "
        "there (`casnap verify` the source)"
    )
