"""`casnap key`: the passwords of an encrypted repository (list, add, passwd, remove, export,
import)."""

from __future__ import annotations

from pathlib import Path

import click

from casnap.cli.main import CommandGroup, Context, cli, pass_ctx
from casnap.cli.options import Given
from casnap.cli.output import emit_json, local_time, printable
from casnap.cli.passwords import new_password
from casnap.cli.pipes import printing

NEW_PASSWORD_FILE = click.option(
    "--new-password-file",
    metavar="FILE",
    type=Given("a file name"),
    help="Read the new password from FILE (else CASNAP_NEW_PASSWORD, else a prompt asked twice).",
)
JSON = click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")


@cli.group(name="key", cls=CommandGroup)  # its commands take -q after their names too
def key_group() -> None:
    """Manage the passwords of an encrypted repository.

    Each password is a key file sealing the one master key; changing, adding or removing one
    rewrites no data. The password of the command (--password-file, CASNAP_PASSWORD, ...)
    must open one of them.
    """


@key_group.command(name="list")
@JSON
@pass_ctx
def key_list(c: Context, as_json: bool) -> None:
    """List the key files; * marks the one this password opens.

    Example: casnap key list
    """
    from casnap import keyring  # here: --help and the other commands do without it

    repo = c.open(reads_keys=True)
    found = keyring.list_keys(repo)  # reads key files only: no lock, so a read-only copy works
    if as_json:
        emit_json([k.to_json() for k in found])
        return
    for k in found:
        mark = "*" if k.current else " "
        when = local_time(k.created) if k.created else "-" * 19
        click.echo(f"{mark} {k.id[:8]}  {when}  {printable(k.kdf, backslash=False)}")


@key_group.command(name="add")
@NEW_PASSWORD_FILE
@JSON
@pass_ctx
def key_add(c: Context, new_password_file: str | None, as_json: bool) -> None:
    """Add a password: a new key file for the same master key.

    Example: CASNAP_NEW_PASSWORD=... casnap key add
    """
    from casnap import keyring

    repo = c.open()
    keyring.require_keys(repo)  # a plain repository: said before a new password is asked for
    password = new_password(new_password_file)
    with repo.lock("key add"):
        kf = keyring.add_key(repo, password)
    if as_json:
        with printing(f"key {kf.id[:8]} is added"):
            emit_json({"added": kf.id})
        return
    c.say(f"added key {kf.id[:8]}")


@key_group.command(name="passwd")
@NEW_PASSWORD_FILE
@JSON
@pass_ctx
def key_passwd(c: Context, new_password_file: str | None, as_json: bool) -> None:
    """Change the password of the key this password opens (the old password stops working).

    The master key stays: a copy of the old key file (an S3 repository's, kept in another host's
    cache; a `key export`) still opens the repository with the old password (docs/USAGE.md).

    Example: casnap --password-file old.txt key passwd --new-password-file new.txt
    """
    from casnap import keyring

    repo = c.open()
    keyring.require_keys(repo)  # a plain repository: said before a new password is asked for
    password = new_password(new_password_file)
    with repo.lock("key passwd"):
        old, new, others = keyring.change_password(repo, password, c.passwords())
    also = ", ".join(k[:8] for k in others)
    also = f" (key {also}, sealed by the old password too, removed)" if others else ""
    if as_json:
        with printing(f"the password is changed: key {old[:8]} replaced by {new.id[:8]}{also}"):
            emit_json({"removed": old, "added": new.id, "also_removed": others})
        return
    c.say(f"password changed: key {old[:8]} replaced by {new.id[:8]}{also}")


@key_group.command(name="remove")
@click.argument("key_id", metavar="ID")
@JSON
@pass_ctx
def key_remove(c: Context, key_id: str, as_json: bool) -> None:
    """Remove the key file ID (a unique prefix will do); never the one this password opens.

    The master key stays: a copy of the removed key file (an S3 repository's, kept in another
    host's cache; a `key export`) still opens the repository with its password (docs/USAGE.md).

    Example: casnap key remove 3f2a9c1e
    """
    from casnap import keyring

    repo = c.open()
    with repo.lock("key remove"):
        removed = keyring.remove_key(repo, key_id)
    if as_json:
        with printing(f"key {removed[:8]} is removed"):
            emit_json({"removed": removed})
        return
    c.say(f"removed key {removed[:8]}")


@key_group.command(name="export")
@click.argument("dest", metavar="FILE", type=Given("a file name", path=True))
@click.option(
    "--force",
    is_flag=True,
    help="Replace FILE when it exists (a symbolic link: the link itself, never what it names; "
    "never a device, FIFO or socket).",
)
@JSON
@pass_ctx
def key_export(c: Context, dest: Path, force: bool, as_json: bool) -> None:
    """Write the key this password opens to FILE (0600), still sealed by this password: with
    it, `key import` makes the repository readable again if its key files are lost.

    Example: casnap key export ~/casnap-key.json
    """
    from casnap import keyring

    repo = c.open(reads_keys=True)
    kf = keyring.export_key(repo, dest, force)  # reads the key in use only: no lock
    if as_json:
        with printing(f"key {kf.id[:8]} is exported to {dest}"):
            emit_json({"exported": kf.id, "path": str(dest)})
        return
    c.say(f"exported key {kf.id[:8]} to {dest} (it opens with this password)")


@key_group.command(name="import")
@click.argument("src", metavar="FILE", type=Given("the exported key file", path=True))
@JSON
@pass_ctx
def key_import(c: Context, src: Path, as_json: bool) -> None:
    """Put a key exported with `key export` back into the repository; the password must open
    it, and it must be a key of this repository.

    Example: casnap key import ~/casnap-key.json
    """
    from casnap import keyring

    c.refuse_no_lock()
    kf, added = keyring.import_key(c.repo_path, src, c.passwords)
    if as_json:
        with printing(
            f"key {kf.id[:8]} is imported" if added else f"key {kf.id[:8]} is there already"
        ):
            emit_json({"imported": kf.id, "added": added})
        return
    c.say(f"imported key {kf.id[:8]}" if added else f"key {kf.id[:8]} is there already")
