"""One error hierarchy for casnap; each class carries the exit code the CLI returns for it.

The CLI maps these to one line on stderr in a single place (`casnap.cli.main`). The exit codes are
part of the interface and are documented in README.md.
"""

from __future__ import annotations

import os
import resource  # here: its import opens a file, which may be what the process lacks


class CasnapError(Exception):
    """Base of every error casnap reports to a user."""

    exit_code = 1


class RepositoryError(CasnapError):
    """The repository is missing, is not a casnap repository, or cannot be used."""

    exit_code = 3


class RepositoryNotFound(RepositoryError):
    """No repository at the given location. `why`: what is missing, when more than the
    repository (an S3 bucket), for a message to name."""

    def __init__(self, message: str, why: str = "") -> None:
        super().__init__(message)
        self.why = why


class RepositoryGone(RepositoryNotFound):
    """The repository this host kept a config of is no longer stored (its copies dropped): a
    command that creates a missing repository (commit, copy) opens it again, once."""


class NotARepository(RepositoryError):
    """The location exists and holds something that is not a casnap repository."""


class InitUnderWay(NotARepository):
    """The location holds an encrypted init's key file but no config, written in the last
    INIT_WAIT_SECONDS: that init may be about to write its config (a first commit waits)."""


class UnsupportedFormat(RepositoryError):
    """The repository was written by a newer casnap (format version too high)."""


class SnapshotNotFound(CasnapError):
    """An id, prefix or tag names no snapshot, or more than one."""

    exit_code = 4


class AmbiguousSnapshot(SnapshotNotFound):
    """A prefix or tag names more than one snapshot."""


class IntegrityError(CasnapError):
    """Stored data does not match its hash, or cannot be parsed: the repository is damaged."""

    exit_code = 5


class DamagedIndex(IntegrityError):
    """An index file does not read: every snapshot's chunks are looked up in the index, so
    `casnap repair-index` (which rebuilds it from the packs) is the way out, not another one."""


class HostileManifest(IntegrityError):
    """A manifest names a path outside the target (absolute, `..`, duplicate, through a symlink)."""


class SealedUnderPlainConfig(IntegrityError):
    """An encrypted object in a repository whose config is plain: the config was replaced (a
    downgrade), so nothing of it is read as damage of one snapshot."""


class LockError(CasnapError):
    """The repository is locked by another process, or a database is in use."""

    exit_code = 6


class DatabaseBusy(LockError):
    """A SQLite database is locked or open for writing by another process.

    `overridable`: what stops the checkout is an open descriptor (or one casnap cannot rule
    out), which the caller may choose to override; a SQLite lock is never overridable."""

    def __init__(self, message: str, overridable: bool = False) -> None:
        super().__init__(message)
        self.overridable = overridable


class SourceError(CasnapError):
    """The data to snapshot cannot be read consistently (missing, changing while read)."""

    exit_code = 7


class FileVanished(SourceError):
    """A plain file of the data dir was deleted between the scan and its read (or while it was
    read): a commit leaves it out, as if the scan had not seen it (reading.Reader.read_one)."""


class EmptySnapshot(SourceError):
    """A commit would store no file where the last snapshot of the same paths held some."""


class NotADatabase(SourceError):
    """A file carries SQLite's header but SQLite cannot read it; it is stored as plain bytes."""


class HotJournal(SourceError):
    """A database a crashed writer left with a hot rollback journal could not be captured as
    SQLite shows it (rolled back in a private copy)."""


class PathTooLong(SourceError):
    """A path in the data dir is longer than the system lets a program name a file (PATH_MAX):
    it cannot be opened by its path (a commit can be told to leave such files out)."""


class TransientError(CasnapError):
    """A storage request failed in a way a retry may fix: a timeout, a connection reset, a 5xx
    answer, throttling (backends raise it; backends/retrying.py retries it). silent: the store
    sent nothing for a whole read timeout (retried less: see RETRY_SILENT_ATTEMPTS)."""

    silent = False


class StorageFull(CasnapError):
    """A write failed because the disk is full or over quota, or the file would pass the size
    a process or filesystem allows."""

    exit_code = 8


class AccessDenied(CasnapError):
    """A file or directory cannot be read or written for lack of permission."""

    exit_code = 8


class UnreadableSource(AccessDenied):
    """A file or folder of the data dir cannot be read for lack of permission (a commit can be
    told to leave such files out)."""


class OutOfMemory(CasnapError):
    """An allocation failed (MemoryError), or a thread could not be started: the machine's
    memory, or a limit of the process (`ulimit -v`, `ulimit -u`), is too small for the command.
    Not a bug of casnap, so not an internal error."""


def out_of_memory(exc: BaseException) -> OutOfMemory | None:
    """The OutOfMemory exc means (a MemoryError, or the RuntimeError of a thread that could not
    start), or None."""
    if isinstance(exc, MemoryError):
        what = str(exc)
    elif isinstance(exc, RuntimeError) and str(exc) == "can't start new thread":
        what = "cannot start a thread"
    else:
        return None
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    limit = "" if soft == resource.RLIM_INFINITY else f" (ulimit -v: {soft >> 20} MiB)"
    return OutOfMemory(
        f"out of memory{f' ({what})' if what else ''}: the machine's free memory or this "
        f"process's address space limit{limit} is too small for the command"
    )


class InvalidArgument(CasnapError):
    """A user-given argument cannot be used: a path outside the data dir, a repository URL, a
    checkout into the repository itself."""

    exit_code = 2


class InvalidPolicy(InvalidArgument):
    """A retention policy is missing, empty or malformed (a prune that would keep nothing)."""


class CheckFailed(CasnapError):
    """A restored file failed a smoke check, or verify found problems."""

    exit_code = 9


class SmokeCheckFailed(CheckFailed):
    """A smoke check of restored files failed; nothing was swapped in.

    `checks` holds the failed checks as JSON-ready dicts (check, path, ok, detail, info).
    """

    def __init__(self, message: str, checks: list[dict] | None = None) -> None:
        super().__init__(message)
        self.checks = list(checks or [])


class InconsistentData(CheckFailed):
    """A FAISS index and its sidecar disagree (or the sidecar is missing) under --strict."""


class PasswordError(CasnapError):
    """An encrypted repository's password is missing, or no key of the repository opens with it
    (a wrong password, or a key file not of this repository)."""

    exit_code = 10


class InternalError(CasnapError):
    """casnap found a fault of its own before it did harm (a manifest it made that its readers
    would refuse: nothing stored); what any other unexpected exception is reported as too."""

    exit_code = 70


class Terminated(BaseException):
    """SIGTERM arrived (a service manager stopping casnap, `timeout`, `kill`), or SIGHUP (its
    terminal closed), or Ctrl-C once a command runs: raised in the main thread of the command
    line so the command unwinds, its lock released. The exit code is the shell's for a process
    the signal ended."""

    exit_code = 143  # 128 + SIGTERM

    def __init__(self, message: str = "terminated", signum: int = 15) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


def landed(exc: BaseException, result: object) -> None:
    """Mark exc, the exception of a signal (Terminated, or KeyboardInterrupt for Ctrl-C), as
    raised once the operation's work had landed (a checkout's swap begun, a commit's manifest
    stored), result being what the operation would have returned: nothing is taken back, the
    command stops as for any signal, and its line says what completed (`what_landed`)."""
    exc.landed = result  # type: ignore[attr-defined]


def what_landed(exc: BaseException) -> object | None:
    """What the operation exc stopped had completed (`landed`), or None."""
    return getattr(exc, "landed", None)


class OutputClosed(Exception):
    """The reader of the command line's output went away (`casnap log | head -1`): the command
    ends quietly with the code a shell shows for a process SIGPIPE ended, as git and restic
    end then (raised by the command line only, once the command has unwound)."""

    exit_code = 141  # 128 + SIGPIPE


EXIT_CODES: dict[str, int] = {
    "ok": 0,
    "error": CasnapError.exit_code,
    "usage": 2,
    "repository": RepositoryError.exit_code,
    "not-found": SnapshotNotFound.exit_code,
    "integrity": IntegrityError.exit_code,
    "locked": LockError.exit_code,
    "source": SourceError.exit_code,
    "storage": StorageFull.exit_code,
    "check-failed": CheckFailed.exit_code,
    "password": PasswordError.exit_code,
    "internal": InternalError.exit_code,
    "interrupted": 130,
    "terminated": Terminated.exit_code,
    "hung-up": 129,  # 128 + SIGHUP
    "output-closed": OutputClosed.exit_code,
}


class ObjectMissing(IntegrityError):
    """An object the repository refers to is not in the backend."""


class DamagedSource(IntegrityError):
    """A snapshot a copy reads cannot be read whole from its source repository (a chunk or chunk
    list missing or damaged there): the copy passes over it and copies the others."""


def shortened(path: str, keep: int = 60) -> str:
    """path as its first and last `keep` characters around '…' when it is longer: a line that
    names a path of thousands of characters stays one readable line."""
    return path if len(path) <= 2 * keep + 1 else f"{path[:keep]}…{path[-keep:]}"


NO_SPACE = "no space left on device"  # ENOSPC: blocks, or inodes (out_of_inodes tells)
NO_INODES = "no free inodes left on device (see df -i)"


def out_of_inodes(path: str | bytes | os.PathLike[str] | None) -> bool:
    """True when the file system of path (absolute; or of its folder, for a file not made) has
    no free inode: a full inode table fails a new file with the errno of a full disk, and
    `df` then shows free space."""
    if path is None or not os.path.isabs(path):
        return False
    for place in (path, os.path.dirname(path)):
        try:
            st = os.statvfs(place)
        except (OSError, ValueError):
            continue
        return bool(st.f_files) and (st.f_ffree if os.geteuid() == 0 else st.f_favail) == 0
    return False


def from_oserror(exc: OSError, what: str) -> CasnapError:
    """Turn an OSError into the CasnapError a user should see, naming what was being done."""
    import errno

    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC and out_of_inodes(exc.filename):
        return StorageFull(f"{what}: {NO_INODES}")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"{what}: {NO_SPACE}")
    if exc.errno == errno.EFBIG:  # the process's file size limit, or the filesystem's (FAT: 4 GiB)
        return StorageFull(f"{what}: file too large for the file size limit or the filesystem")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return AccessDenied(f"{what}: {reason}")
    if exc.errno == errno.EMFILE:  # not the file's fault, nor the disk's: the process's limit
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return CasnapError(
            f"{what}: too many open files (this process may hold {soft} at once: raise the "
            "limit, ulimit -n)"
        )
    if exc.errno == errno.ENFILE:
        return CasnapError(f"{what}: too many open files in the system (its file table is full)")
    if exc.errno == errno.ENAMETOOLONG:  # what names the path: thousands of characters
        return PathTooLong(
            f"{shortened(what)}: a path longer than the system lets a program name (PATH_MAX), "
            "or a name longer than its folder allows"
        )
    return CasnapError(f"{what}: {reason}")
