"""The casnap command group: global options, the context every command gets, and the one place
where errors become a line on stderr and an exit code."""

from __future__ import annotations

import errno
import gc
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from signal import SIGINT
from typing import TYPE_CHECKING, Any

import click

from casnap import libc, procs, signals
from casnap.cli.output import on_terminal, printable
from casnap.cli.passwords import Passwords
from casnap.cli.pipes import reader_gone, silence_closed, whole_writes
from casnap.cli.settings import keep_bad_global, parse_command_args, read_location
from casnap.errors import (
    CasnapError,
    InternalError,
    InvalidArgument,
    OutputClosed,
    RepositoryNotFound,
    Terminated,
    from_oserror,
    out_of_memory,
    what_landed,
)
from casnap.locations import Location, S3Url, describe

if TYPE_CHECKING:  # imported by the commands that open one: --help does without it
    from casnap.repository import Repository

INTERNAL_ERROR = InternalError.exit_code
INTERRUPTED = 130
# commands that list the snapshots past one whose manifest does not read (none of them deletes)
PASSING_DAMAGED = frozenset(
    {"commit", "checkout", "log", "show", "ls", "cat", "diff", "stats", "demo", "import"}
)


def say_error(message: str) -> None:
    """`casnap: error: <message>` on stderr, always one line (control characters escaped)."""
    click.echo(printable(f"casnap: error: {message}", backslash=False), err=True)


def warn(message: str, *, always: bool = False) -> None:
    """`casnap: warning: <message>` on stderr, one line; -q silences it unless `always` (a
    problem that is an error elsewhere: data a checkout would refuse)."""
    ctx = click.get_current_context(silent=True)
    c = ctx.find_object(Context) if ctx is not None else None
    if c is not None and c.quiet and not always:
        return
    click.echo(printable(f"casnap: warning: {message}", backslash=False), err=True)


@contextmanager
def after_landing(done: Callable[[Any], str], result: object = None) -> Iterator[None]:
    """A signal (SIGTERM, Ctrl-C, SIGHUP) that lands once the command's work has landed (result
    given: the operation returned it; else what the operation recorded on the signal's exception,
    errors.landed) stops the command as any signal does (exit 130, 143), and its line says what
    completed: `casnap: terminated; ` and done(result). Any other signal passes as it is."""
    try:
        yield
    except (Terminated, KeyboardInterrupt) as exc:
        work = result if result is not None else what_landed(exc)
        if work is None:
            raise
        said, signum = "interrupted", int(SIGINT)
        if isinstance(exc, Terminated):
            said, signum = str(exc), exc.signum
        raise Terminated(f"{said}; {done(work)}", signum) from exc


def _parse_args(
    parse: Callable[[click.Context, list[str]], list[str]], ctx: click.Context, args: list[str]
) -> list[str]:
    """parse(ctx, args), a usage error it raises tied to ctx: click raises an option missing
    its value with no context, so the line pointed to `casnap --help`, not the command's."""
    try:
        return parse(ctx, args)
    except click.UsageError as exc:
        if exc.ctx is None:
            exc.ctx = ctx
        raise


class CasnapCommand(click.Command):
    """A command whose usage errors point to its own help."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return parse_command_args(partial(_parse_args, super().parse_args), ctx, args)


class CasnapGroup(click.Group):
    """A click group that turns every error into one line on stderr and its exit code."""

    command_class = CasnapCommand

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return _parse_args(super().parse_args, ctx, args)

    def main(self, args: Sequence[str] | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(args, **kwargs)
            signals.ending()  # done: a signal now would cut short what it says last
            code = rv if isinstance(rv, int) else 0
        except BaseException as exc:
            signals.ending()
            code = _report(exc)
        sys.exit(code)

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        with reader_gone():  # --help, --version
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with reader_gone():
                done = super().invoke(ctx)
                c = ctx.find_object(Context)
                for repo in c.opened if c is not None else ():  # passed over, now said
                    for sid, (exc, _where) in repo.damaged.items():
                        from casnap.heads import damaged_warning

                        warn(damaged_warning(sid, exc, repo.damaged), always=True)
                return done
        except KeyboardInterrupt as exc:  # past click, which would first write a blank line:
            raise Terminated("interrupted", SIGINT) from exc  # unbounded on a full stderr pipe


def _report(exc: BaseException) -> int:
    """Say what ended the command, in one line on stderr; its exit code."""
    if isinstance(exc, OutputClosed):  # the reader has what it wanted: nothing to say
        silence_closed()
        return exc.exit_code
    if isinstance(exc, click.exceptions.Exit):
        return exc.exit_code
    if _no_command(exc):  # a group given no command (`casnap`, `casnap -q`): its help, as is
        assert isinstance(exc, click.UsageError) and exc.ctx is not None
        click.echo(exc.ctx.get_help(), err=True)
        return exc.exit_code
    if isinstance(exc, click.UsageError):
        where = exc.ctx.command_path if exc.ctx is not None else "casnap"
        say_error(f"{_usage_message(exc)} (see '{where} --help')")
        return exc.exit_code
    if isinstance(exc, click.ClickException):
        say_error(exc.format_message())
        return exc.exit_code
    if isinstance(exc, click.Abort | KeyboardInterrupt):
        click.echo("casnap: interrupted", err=True)
        return INTERRUPTED
    if isinstance(exc, CasnapError):
        say_error(str(exc))
        return exc.exit_code
    if isinstance(exc, Terminated):  # its line may name a target: one line all the same
        click.echo(printable(f"casnap: {exc}", backslash=False), err=True)
        return exc.exit_code
    if isinstance(exc, OSError):
        err = from_oserror(exc, exc.filename or "I/O")
        say_error(str(err))
        return err.exit_code
    short = out_of_memory(exc)
    if short is not None:
        say_error(str(short))
        return short.exit_code
    if not isinstance(exc, Exception):  # SystemExit, GeneratorExit
        raise exc
    signalled = _signalled(exc)
    if signalled is not None:  # raised by what a signal interrupted (a failed import)
        click.echo(f"casnap: {signalled[0]}", err=True)
        return signalled[1]
    if os.environ.get("CASNAP_DEBUG"):
        raise exc
    # last resort: never a traceback for a user
    click.echo(printable(f"casnap: internal error: {type(exc).__name__}: {exc}", False), err=True)
    return INTERNAL_ERROR


def _signalled(exc: BaseException) -> tuple[str, int] | None:
    """What to say and the exit code when exc was raised while a SIGTERM or Ctrl-C unwound the
    command (its cause or context, at any depth, is Terminated or KeyboardInterrupt)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, Terminated):
            return str(cause), cause.exit_code
        if isinstance(cause, KeyboardInterrupt):
            return "interrupted", INTERRUPTED
        cause = cause.__cause__ or cause.__context__
    return None


# What restic and borg call a command casnap has under another name.
OTHER_NAMES = {
    "backup": "commit",
    "create": "commit",
    "restore": "checkout",
    "extract": "checkout",
    "snapshots": "log",
    "list": "log",
    "dump": "cat",
    "delete": "forget",
    "compact": "gc",
    "info": "stats",
    "rebuild-index": "repair-index",
}


GROUPS = (
    "casnap groups by host, data dir and paths, always; --host and --path narrow what is pruned"
)

# A restic option casnap lacks, by command: what casnap does instead.
OTHER_OPTIONS = {
    ("checkout", "--target"): "casnap's is `casnap checkout SNAPSHOT --to DIR`",
    ("checkout", "--include"): (
        "casnap's is `casnap checkout SNAPSHOT PATH...` (the files or folders to restore)"
    ),
    ("checkout", "--exclude"): (
        "name what to restore instead: `casnap checkout SNAPSHOT PATH...` (files or folders)"
    ),
    ("checkout", "--delete"): (
        "a full checkout removes the files the snapshot lacks, always (saved first as a "
        "pre-checkout snapshot)"
    ),
    ("checkout", "--dry-run"): (
        "`casnap diff SNAPSHOT` lists what differs between the snapshot and the data dir, "
        "changing nothing"
    ),
    ("commit", "--dry-run"): (
        "`casnap diff latest` shows what a commit would store, writing nothing"
    ),
    ("commit", "--exclude-file"): "give each pattern with --exclude GLOB (repeatable)",
    ("prune", "--group-by"): GROUPS,
    ("forget", "--group-by"): GROUPS,
    ("prune", "--prune"): (
        "prune always runs gc afterwards, as restic's forget --prune does (--no-gc skips it)"
    ),
}


def _no_command(exc: BaseException) -> bool:
    """True for the usage error of a group given options but no command (click's own words)."""
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):
        return exc.ctx is not None
    return (
        isinstance(exc, click.UsageError)
        and exc.ctx is not None
        and isinstance(exc.ctx.command, click.Group)
        and exc.message == "Missing command."
    )


def _usage_message(exc: click.UsageError) -> str:
    """Click's message, or where the option goes when it is a restic habit: a global option
    after the command, a retention rule given to forget or one prune lacks, OTHER_OPTIONS."""
    message = exc.format_message()
    if not isinstance(exc, click.NoSuchOption) or exc.ctx is None:
        return message
    name = exc.option_name
    root = exc.ctx.find_root()
    if name.startswith("--keep-"):
        prune = getattr(root.command, "commands", {}).get("prune")
        rules = [o for p in getattr(prune, "params", ()) for o in p.opts if o.startswith("--keep-")]
        if name in rules:
            return f"No such option '{name}': retention rules go with `casnap prune {name} N`."
        return f"No such option '{name}': prune's keep rules are {', '.join(rules)}."
    hint = OTHER_OPTIONS.get((exc.ctx.info_name or "", name))
    if hint is not None:
        return f"No such option '{name}': {hint}."
    if exc.ctx is not root and any(name in p.opts for p in root.command.params):
        command = exc.ctx.command_path.partition(" ")[2]
        usage = f"casnap {name} ... {command}"
        return f"{name} is a global option: give it before the command (`{usage}`)"
    return message


class Context:
    """Global options, passed to every command."""

    def __init__(
        self,
        repo: Location,
        data: Path,
        quiet: bool,
        no_lock: bool = False,
        passwords: Passwords | None = None,
    ) -> None:
        self.repo_path = repo  # a local directory or an S3 URL (casnap/locations.py)
        self.passwords = passwords or Passwords(None, None, repo)
        self.data = data
        self.quiet = quiet
        self.no_lock = no_lock
        self.opened: list[Repository] = []  # the repositories the command opened (listen)
        self._private_tmp: Path | None = None
        self._noted: set[str] = set()

    @property
    def where(self) -> str:
        """The repository location for messages: the absolute directory, or the URL."""
        return describe(self.repo_path)

    @property
    def on_s3(self) -> bool:
        return isinstance(self.repo_path, S3Url)

    def default_encryption(self) -> str:
        """What `init` makes without --encryption: repokey on S3 (a bucket is shared storage),
        none for a local directory."""
        return "repokey" if self.on_s3 else "none"

    def auto_encryption(self) -> str:
        """What a commit creating the repository makes: repokey on S3, or with a password
        source set; none otherwise."""
        return "repokey" if self.on_s3 or self.passwords.given() else "none"

    def holds_config(self) -> bool:
        """True when the repository location holds a config (another process created it)."""
        return holds_config(self.repo_path)

    def open(self, reads_keys: bool = False) -> Repository:
        """The repository at --repo, for the command running. A command whose operation only
        reads (locks.READ_ONLY_OPERATIONS; reads_keys: `key list` and `key export`, which read
        key files and take no lock) then runs without a lock under --no-lock, or (saying so)
        when a lock cannot be written, and keeps its scratch files in a private temp dir when
        the repository is not writable."""
        from casnap import locks
        from casnap.repository import Repository

        command = click.get_current_context().info_name or ""
        reading = reads_keys or command in locks.READ_ONLY_OPERATIONS or command == "check"
        if not reading:
            self.refuse_no_lock()
        try:
            # verify reads every object from storage, never from the local cache
            cache = command not in ("verify", "check")
            repo = Repository.open(self.repo_path, self.passwords, cache=cache)
        except RepositoryNotFound as exc:
            why = f" ({exc.why})" if exc.why else ""
            raise RepositoryNotFound(
                f"no casnap repository at {self.where}{why}; give --repo DIR or set CASNAP_REPO "
                "(casnap init creates one)",
                exc.why,
            ) from exc
        if reading:
            repo.no_lock = self.no_lock
            repo.on_unwritable = self.note_once
            if not _writable(repo.tmp_dir):
                repo.tmp_dir = self.private_tmp()
        return self.listen(repo)

    def listen(self, repo: Repository) -> Repository:
        """Let the repository say what it waits for (a lock, a locked database) on a terminal,
        and warn of a lock it could not remove or another's stale lock it removed; say once
        when a password was given for a repository that is not encrypted."""
        repo.notify = self.notice
        repo.warn = warn
        # a command that deletes nothing passes over a snapshot whose manifest does not read,
        # with a warning (heads.py): one damaged snapshot must not stop the backups
        command = click.get_current_context().info_name or ""
        repo.skip_damaged = command in PASSING_DAMAGED
        self.opened.append(repo)
        if not repo.encrypted and self.passwords.given():
            self.note_once(f"repository {repo.backend.location} is not encrypted; no password used")
        return repo

    def notice(self, text: str) -> None:
        """A passing remark on stderr (a wait under way), on a terminal and unless -q."""
        if not self.quiet and on_terminal(sys.stderr):
            click.echo(printable(f"casnap: {text}", backslash=False), err=True)

    def refuse_no_lock(self) -> None:
        """--no-lock is for commands that only read the repository; a usage error otherwise."""
        if self.no_lock:
            raise click.UsageError(
                "--no-lock is only for commands that only read the repository (log, show, ls, cat, "
                "diff, stats, verify, check, checkout, key list, key export)"
            )

    def private_tmp(self) -> Path:
        """A temp dir of this process outside the repository, removed when the command ends."""
        if self._private_tmp is None:
            tmp = Path(tempfile.mkdtemp(prefix="casnap-"))
            click.get_current_context().call_on_close(lambda: shutil.rmtree(tmp, True))
            self._private_tmp = tmp
        return self._private_tmp

    def say(self, text: str) -> None:
        """A human message on stderr, unless -q: one line, control characters escaped as in an
        error line (the paths and names it gives are the user's or a repository's)."""
        if not self.quiet:
            click.echo(printable(text, backslash=False), err=True)

    def note_once(self, text: str) -> None:
        """A remark on stderr, unless -q or already made: `casnap: note: ...`."""
        if text not in self._noted:
            self._noted.add(text)
            self.say(f"casnap: note: {text}")


def holds_config(location: Location) -> bool:
    """True when a repository location holds a config (another process created it)."""
    if isinstance(location, S3Url):
        from casnap.backends.s3 import S3Backend

        backend = S3Backend(location)
        try:
            return backend.exists("config")
        finally:
            backend.close()
    return (location / "config").exists()


def _writable(folder: Path) -> bool:
    """True when files can be made in folder (or, while it is missing, in its parent)."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return os.access(folder, os.W_OK | os.X_OK)


pass_ctx = click.make_pass_decorator(Context)


def _quiet_after_command(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_object(Context).quiet = True  # type: ignore[union-attr]


QUIET_HELP = (
    "Print nothing but results and errors (no progress bar, no warnings but those of data a "
    "checkout would refuse)."
)


class CommandGroup(CasnapGroup):
    """The casnap group: every command also takes -q/--quiet after its name."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not any(p.name == "quiet" for p in cmd.params):
            cmd.params.append(
                click.Option(
                    ["-q", "--quiet"],
                    is_flag=True,
                    expose_value=False,
                    callback=_quiet_after_command,
                    help=QUIET_HELP + " Also accepted before the command.",
                )
            )
        super().add_command(cmd, name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """A command restic or borg has under another name is a usage error naming casnap's."""
        if args and args[0] in OTHER_NAMES and args[0] not in self.commands:
            name = args[0]
            raise click.UsageError(
                f"No such command '{name}': casnap's is `casnap {OTHER_NAMES[name]}`.", ctx
            )
        return super().resolve_command(ctx, args)


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-r",
    "--repo",
    envvar="CASNAP_REPO",
    default="./backups",
    show_default=True,
    metavar="DIR|URL",
    help="Repository: a local directory or s3://BUCKET/PREFIX (env CASNAP_REPO; S3 needs "
    "casnap[s3], see README).",
)
@click.option(
    "--data",
    envvar="CASNAP_DATA",
    default="./data",
    show_default=True,
    metavar="DIR",
    help="Data directory to snapshot and restore (env CASNAP_DATA).",
)
@click.option(
    "--password-file",
    metavar="FILE",
    help="Read the password of an encrypted repository from FILE. Without this option or "
    "--password-command (not both): CASNAP_PASSWORD_FILE, CASNAP_PASSWORD_COMMAND, "
    "CASNAP_PASSWORD, a prompt on a terminal; an option given beats every variable.",
)
@click.option(
    "--password-command",
    metavar="CMD",
    help="Run CMD (no shell) and use what it prints as the password (not with --password-file; "
    "beats every CASNAP_PASSWORD* variable).",
)
@click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP)
@click.option(
    "--no-lock",
    is_flag=True,
    help="Read the repository without taking a lock (log, show, ls, cat, diff, stats, verify, "
    "check, checkout, key list, key export): for a read-only repository; nothing may write to "
    "it meanwhile.",
)
@click.version_option(package_name="casnap")
@click.pass_context
def cli(
    ctx: click.Context,
    repo: str,
    data: str,
    password_file: str | None,
    password_command: str | None,
    quiet: bool,
    no_lock: bool,
) -> None:
    """casnap: deduplicating, verified snapshots of a SQLite + FAISS data directory."""
    try:
        repo_path = read_location(ctx, repo, data)
        passwords = Passwords(password_file, password_command, repo_path)
    except (InvalidArgument, click.UsageError) as exc:  # said after the command's --help
        keep_bad_global(ctx, exc)
        return
    ctx.obj = Context(repo_path, Path(data), quiet, no_lock, passwords)


# Allocations between two runs of the cyclic garbage collector's youngest generation (Python's
# default: 700). A commit or checkout of a data dir of many files holds an entry, a dict and a
# few tuples per file and per snapshot it reads, none of them in a cycle: at the default, every
# few hundred of them set off a collection that walked them all again, a tenth of the time of
# such a checkout. Reference counting frees them as before; cycles are still collected.
GC_THRESHOLD = 50_000


def main() -> None:
    """Console-script entry point."""
    # numpy's OpenBLAS starts one thread per core when loaded, each spinning ~0.1 s of CPU that
    # a commit or checkout on a small machine needs (casnap does no linear algebra)
    procs.set_own_environ("OPENBLAS_NUM_THREADS", "1")
    _first, second, third = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, second, third)
    libc.keep_freed_memory()  # before any thread: a page freed is the next block's, no fault
    whole_writes()
    # last before the command: until here a signal ends the process with one line (start.py),
    # from here it unwinds the command, whose errors the group reports (ctypes, which mallopt
    # loads, took long enough for a Ctrl-C to land between the two: a traceback)
    signals.handle()
    try:
        cli.main(prog_name="casnap")
    except SystemExit as exc:
        exit_now(exc.code)
    exit_now(0)


def exit_now(code: str | int | None) -> None:
    """End the process with `code` once its exit handlers ran and its output is flushed, without
    the interpreter's teardown: freeing every module and object one by one took ~50 ms after a
    checkout (the index, the decoded frames) and does nothing the kernel does not do at exit.
    Everything casnap writes is closed, and made durable, before its command returns. Falls
    back to a normal exit when a non-daemon thread still runs or the code is not a number."""
    import atexit
    import threading

    signals.ending()
    if isinstance(code, str) or any(
        t is not threading.main_thread() and not t.daemon for t in threading.enumerate()
    ):
        sys.exit(code)
    atexit._run_exitfuncs()
    try:
        if sys.stdout is not None:  # None when started with its descriptor closed
            sys.stdout.flush()
    except (OSError, ValueError) as exc:  # Python's own exit then ends with 120
        gone = isinstance(exc, OSError) and exc.errno == errno.EPIPE  # the reader left
        code = code or (OutputClosed.exit_code if gone else 120)
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code or 0)
