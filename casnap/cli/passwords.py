"""Where a password comes from: an option given on the command line (--password-file or
--password-command; both is a usage error, as in restic), else the variables in order
(CASNAP_PASSWORD_FILE, CASNAP_PASSWORD_COMMAND, CASNAP_PASSWORD), else a no-echo prompt on a
terminal: an option given always beats every variable. Without any of them and without a
terminal: one line naming the options, never a wait.

A password is read only when a repository turns out to be encrypted (or one is created), once
per command. One trailing newline of a file or a command's output is not part of the password.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable

import click

from casnap.cli.output import on_terminal
from casnap.constants import PASSWORD_COMMAND_TIMEOUT
from casnap.errors import PasswordError
from casnap.fsutil import seconds_from_env
from casnap.locations import Location, describe
from casnap.procs import child, user_environ

SOURCES = (
    "--password-file (CASNAP_PASSWORD_FILE), --password-command (CASNAP_PASSWORD_COMMAND) "
    "or CASNAP_PASSWORD"
)

NEW_SOURCES = "--new-password-file or CASNAP_NEW_PASSWORD"
MAX_PASSWORD_FILE = 4096  # bytes: a password file, not a device or a large file by mistake


def _strip_newline(text: str) -> str:
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


def _nonempty(password: str, where: str) -> str:
    if not password:
        raise PasswordError(f"{where} gives an empty password")
    return password


def read_password_file(path: str, what: str) -> str:
    """The password in a file; PasswordError naming the file when it cannot be read."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_PASSWORD_FILE + 1)
    except OSError as exc:
        raise PasswordError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_PASSWORD_FILE:
        raise PasswordError(f"{what} {path} holds more than {MAX_PASSWORD_FILE} bytes")
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise PasswordError(f"{what} {path} is not UTF-8 text") from exc
    return _nonempty(_strip_newline(text), f"{what} {path}")


def run_password_command(command: str) -> str:
    """The password a command prints on stdout (its stderr and a terminal stay its own)."""
    try:
        args = shlex.split(command)
    except ValueError as exc:
        raise PasswordError(f"password command {command!r} cannot be parsed: {exc}") from exc
    if not args:
        raise PasswordError("the password command is empty")
    import subprocess  # only when a command gives the password

    limit = seconds_from_env("CASNAP_PASSWORD_TIMEOUT", PASSWORD_COMMAND_TIMEOUT) or None
    late = PasswordError(
        f"password command {args[0]!r} gave no password within {limit or 0:g} s, stopped "
        "(CASNAP_PASSWORD_TIMEOUT sets how long to wait; 0: no limit)"
    )
    deadline = time.monotonic() + limit if limit is not None else None
    try:
        with child(args, stdout=subprocess.PIPE, env=user_environ()) as proc:
            assert proc.stdout is not None  # read as a password file is: stopped past its size
            try:
                raw = _read_until(proc.stdout.fileno(), MAX_PASSWORD_FILE + 1, deadline, late)
            except PasswordError as exc:
                if exc is late and proc.poll() is not None:  # it ended: not it, what it started
                    raise PasswordError(
                        f"password command {args[0]!r} ended, but a process it started held its "
                        f"output open for {limit or 0:g} s: its password was not taken (start "
                        "such a process with its output elsewhere, `... >/dev/null &`; "
                        "CASNAP_PASSWORD_TIMEOUT sets how long to wait)"
                    ) from None
                raise
            if len(raw) > MAX_PASSWORD_FILE:
                raise PasswordError(
                    f"password command {args[0]!r} printed more than {MAX_PASSWORD_FILE} bytes"
                )
            try:
                proc.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise late from None  # child() stops it, and what it started
    except OSError as exc:
        raise PasswordError(
            f"password command {args[0]!r} cannot be run: {exc.strerror or exc}"
        ) from exc
    if proc.returncode != 0:
        raise PasswordError(f"password command {args[0]!r} failed (exit {proc.returncode})")
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise PasswordError(f"password command {args[0]!r} printed no UTF-8 text") from exc
    return _nonempty(_strip_newline(text), f"password command {args[0]!r}")


def _read_until(fd: int, limit: int, deadline: float | None, late: Exception) -> bytes:
    """Up to limit bytes read from fd until its end; late raised once deadline (monotonic) has
    passed first."""
    raw = b""
    while len(raw) < limit:
        if deadline is not None and not _ready(fd, deadline):
            raise late
        piece = os.read(fd, limit - len(raw))
        if not piece:
            break
        raw += piece
    return raw


def _ready(fd: int, deadline: float) -> bool:
    """True once fd has something to read (or its end), False when deadline passes first;
    waited for a day at most at a time: select() takes no wait past the platform's time_t (a
    CASNAP_PASSWORD_TIMEOUT of 1e10, no limit in practice, was an OverflowError)."""
    import select

    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if select.select([fd], [], [], min(left, 86400.0))[0]:
            return True


def _prompt(text: str, confirm: bool) -> str:
    try:
        password = click.prompt(
            text, hide_input=True, confirmation_prompt=confirm, err=True, show_default=False
        )
    except UnicodeDecodeError as exc:
        raise PasswordError("the password typed is not text in the terminal's encoding") from exc
    except click.Abort as exc:  # click's for Ctrl-C and for Ctrl-D (end of input) alike
        if isinstance(exc.__context__, EOFError):
            raise PasswordError("no password given: the input ended at the prompt") from exc
        raise
    return _nonempty(str(password), "the prompt")


class Passwords:
    """The password of the repository at --repo, asked for at most once per command.

    `file` and `command` are the options given on the command line (at most one of them);
    `env` names the variable holding the password itself, and with `_FILE` and `_COMMAND` the
    variables consulted when no option is given; `option` is the options' common prefix and
    `sources` the sources a missing password is asked for: the other repository of `copy` has
    its own (see `other_passwords`)."""

    def __init__(
        self,
        file: str | None,
        command: str | None,
        location: Location,
        env: str = "CASNAP_PASSWORD",
        sources: str = SOURCES,
        option: str = "--password",
    ) -> None:
        if file is not None and command is not None:  # restic refuses them too: which one
            raise click.UsageError(  # was meant cannot be told (an empty one: an unset variable)
                f"{option}-file and {option}-command both given: give one password source"
            )
        for value, kind in ((file, "file"), (command, "command")):
            if value == "":  # an unset variable: never the prompt or a variable in its place
                raise click.UsageError(f"{option}-{kind} is empty: give a password source")
        self.file = file or None
        self.command = command or None
        self.location = location
        self.env = env
        self.option = option
        self.sources = sources
        self._password: str | None = None
        # a new repository (a prompt asks twice); a check is run only when a prompt or the
        # missing-password message needs it, so a command given a password asks no storage
        self.creating: bool | Callable[[], bool] = False
        # how to make a plain repository instead, where encryption was chosen by default (S3)
        self.plain_hint = ""

    def _given(self) -> tuple[str | None, str | None]:
        """The password file or command to use: the option given, else the first variable set
        (the file's before the command's)."""
        if self.file or self.command:
            return self.file, self.command
        file = os.environ.get(f"{self.env}_FILE")
        if file:
            return file, None
        return None, os.environ.get(f"{self.env}_COMMAND") or None

    def given(self) -> bool:
        """True when a source other than the prompt is set (commit then creates an encrypted
        repository)."""
        return any(self._given()) or bool(os.environ.get(self.env))

    def __call__(self) -> str:
        if self._password is None:
            self._password = self._read()
        return self._password

    def _new(self) -> bool:
        """Whether the repository is being created, its check (if one was set) run once."""
        if callable(self.creating):
            self.creating = self.creating()
        return self.creating

    def _read(self) -> str:
        file, command = self._given()
        if file or command:
            kind = "file" if file else "command"
            given = self.file or self.command  # an option, else the variable named here
            source = f"{self.option}-{kind}" if given else f"{self.env}_{kind.upper()}"
            try:
                if file:
                    return read_password_file(file, "password file")
                return run_password_command(str(command))
            except PasswordError as exc:  # a variable set long ago is found by its name
                raise PasswordError(
                    f"{exc} (given by {source}, for repository {describe(self.location)})"
                ) from exc
        env = os.environ.get(self.env)
        if env:
            return env
        if on_terminal(sys.stdin):
            return _prompt(f"password for repository {describe(self.location)}", self._new())
        if self._new():
            plain = f"; {self.plain_hint}" if self.plain_hint else ""
            raise PasswordError(
                f"a new encrypted repository at {describe(self.location)} needs a password: give "
                f"it with {self.sources} (no terminal to ask on){plain}"
            )
        raise PasswordError(
            f"repository {describe(self.location)} is encrypted: give its password with "
            f"{self.sources} (no terminal to ask on)"
        )


INIT_PLAIN = "`casnap init --encryption none` first makes a plain one"


def other_passwords(
    role: str, file: str | None, command: str | None, location: Location
) -> Passwords:
    """The password of the repository `copy` names with --from or --to (role "from" or "to"):
    --ROLE-password-file or --ROLE-password-command (not both), else CASNAP_ROLE_PASSWORD_FILE,
    CASNAP_ROLE_PASSWORD_COMMAND, CASNAP_ROLE_PASSWORD, else a prompt on a terminal."""
    env = f"CASNAP_{role.upper()}_PASSWORD"
    sources = (
        f"--{role}-password-file ({env}_FILE), --{role}-password-command ({env}_COMMAND) or {env}"
    )
    return Passwords(file, command, location, env=env, sources=sources, option=f"--{role}-password")


def new_password(file: str | None) -> str:
    """A new password: --new-password-file, CASNAP_NEW_PASSWORD, else a prompt asked twice."""
    if file:
        return read_password_file(file, "new password file")
    env = os.environ.get("CASNAP_NEW_PASSWORD")
    if env:
        return env
    if on_terminal(sys.stdin):
        return _prompt("new password", confirm=True)
    raise PasswordError(f"give the new password with {NEW_SOURCES} (no terminal to ask on)")
