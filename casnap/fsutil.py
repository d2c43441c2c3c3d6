"""casnap's own files on disk: private modes, durable writes, and temp files of dead processes.

Every folder casnap creates in a repository is 0700 and every file 0600, the mode given when it is
created (never chmod afterwards), so a umask can only narrow it: a repository holds copies of
files the data dir may hide from other users. Writes that must survive a crash are fsynced, their
folder too. A temp file is named `.casnap-tmp-<pid>-<host tag>-<random>`: a process killed while it
wrote one (a commit's SQLite image, an object or a lock being put) leaves it behind, and the next
casnap on the same host removes it once that pid no longer runs; a file whose process still runs,
or that another host made, is never touched.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import math
import os
import re
import stat
import sys
import tempfile
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from casnap import libc
from casnap.constants import TEMP_PREFIX
from casnap.errors import (
    CasnapError,
    HostileManifest,
    InvalidArgument,
    SourceError,
    from_oserror,
    shortened,
)
from casnap.fsdir import Dir, remove_tree
from casnap.ids import Hasher, ObjectId
from casnap.procs import pid_alive, pid_namespace

FILE_MODE = 0o600  # every file casnap writes into a repository (objects, locks, scratch files)
DIR_MODE = 0o700  # every folder, the repository root included


def resolved(
    path: str | os.PathLike[str], what: str, error: type[CasnapError] = SourceError
) -> Path:
    """path made absolute with its symbolic links followed (Path.resolve; a part that does not
    exist is kept as given). A loop of links on the way, which Python 3.11 reports as a
    RuntimeError, is error in one line naming what the path is: the CasnapError of its role
    (RepositoryError for a repository; SourceError for a data dir, a checkout target, copies)."""
    try:
        return Path(path).resolve()
    except RuntimeError as exc:
        shown = shortened(os.path.abspath(path))
        raise error(
            f"{what} {shown} cannot be reached: a loop of symbolic links (each leads to another, "
            "none to a file or folder)"
        ) from exc


def opener(path: str, flags: int) -> int:
    """An `opener` for open(): a file it creates is 0600."""
    return os.open(path, flags | getattr(os, "O_CLOEXEC", 0), FILE_MODE)


def create_file(path: Path) -> None:
    """Create an empty 0600 file at a fresh path (FileExistsError when it exists), for a writer
    that opens the path itself (SQLite, shutil.copyfile) and then keeps that mode."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))


def make_dirs(path: Path, durable: bool = True) -> None:
    """mkdir -p path, every folder it creates 0700 and (durable) made durable in its parent
    (fsynced); existing folders are left as they are."""
    missing = []
    p = Path(path)
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, DIR_MODE)
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue
        if not durable:
            continue
        fd = os.open(folder.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # a filesystem that cannot sync a folder
                raise
        finally:
            os.close(fd)


def missing(path: Path) -> list[Path]:
    """path and the folders above it that do not exist, deepest first: what `mkdir -p path`
    makes."""
    out: list[Path] = []
    while not os.path.lexists(path) and path.parent != path:
        out.append(path)
        path = path.parent
    return out


@contextlib.contextmanager
def new_folder(path: Path) -> Iterator[None]:
    """mkdir -p path (path 0700, its parents as the umask makes them) for the block to fill;
    when the block fails (an error, a Ctrl-C or SIGTERM), the folders made here are removed
    again, those left empty: an init stopped before its config leaves no empty folder."""
    made: list[Path] = []
    try:
        for folder in reversed(missing(path)):
            try:
                os.mkdir(folder, DIR_MODE if folder == path else 0o777)
                made.append(folder)
            except FileExistsError:
                if not folder.is_dir():
                    raise
        if not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(path))
    except OSError as exc:
        raise from_oserror(exc, f"creating {path}") from exc
    try:
        yield
    except BaseException:
        for folder in reversed(made):  # the deepest first; one something landed in stays
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise


def tighten_root(root: Path) -> bool:
    """Take group and other access away from a repository root we own: one stat and at most one
    chmod close everything below it, whatever modes an older casnap gave those files. A root
    owned by another user, or that cannot be changed (a read-only mount), is left as it is.
    True when the mode was changed."""
    try:
        st = os.stat(root)
        if not st.st_mode & 0o077 or st.st_uid != os.geteuid():
            return False
        os.chmod(root, st.st_mode & 0o700)
    except OSError:
        return False
    return True


def fsync_dir(path: Path) -> None:
    """Make a rename, link or new entry inside path durable; an I/O error is raised (a
    filesystem that cannot sync a directory, EINVAL, is not an error)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Make a written file durable (fsync works through any descriptor of the file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise from_oserror(exc, f"writing {path}") from exc


# syncfs reports a failed writeback (EIO, ENOSPC) of any file of the filesystem since Linux 5.8;
# before that it returned 0 whatever happened, so it could not vouch for a file
_SYNCFS_REPORTS_SINCE = (5, 8)


@functools.cache
def _syncfs_call() -> Callable[[int], int] | None:
    """libc's syncfs when it can vouch for the files it syncs (Linux >= 5.8), else None."""
    if not sys.platform.startswith("linux"):
        return None
    release = os.uname().release.split(".")
    try:
        version = (int(release[0]), int("".join(c for c in release[1][:3] if c.isdigit()) or 0))
    except (IndexError, ValueError):
        return None
    if version < _SYNCFS_REPORTS_SINCE:
        return None
    return libc.function("syncfs", "c_int")


def can_syncfs() -> bool:
    """True when syncfs can make many files durable at once and report any failed write."""
    return _syncfs_call() is not None


def syncfs(fd: int, what: str) -> None:
    """Make everything written to the filesystem holding fd durable (one call for any number
    of files); a write that failed since fd was opened is raised as a CasnapError. Only where
    can_syncfs() (callers fsync each file otherwise)."""
    call = _syncfs_call()
    if call is None:
        raise CasnapError("syncfs cannot report failed writes here: fsync each file instead")
    if call(fd) != 0:
        code = libc.last_errno()
        raise from_oserror(OSError(code, os.strerror(code)), f"syncing {what}")


def hash_file(path: Path) -> ObjectId:
    """BLAKE3 of a whole file, read in 1 MiB blocks."""
    h = Hasher()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    except OSError as exc:
        raise from_oserror(exc, f"reading {path}") from exc
    return h.digest()


def seconds_from_env(name: str, default: float) -> float:
    """A wait in seconds set by environment variable name (a finite number >= 0), else
    default; InvalidArgument for anything else."""
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        value = float(text)
    except ValueError as exc:
        raise InvalidArgument(f"{name}={text!r} is not a number of seconds") from exc
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(f"{name}={text!r} is not a number of seconds >= 0")
    return value


def hostname() -> str:
    """This machine's name, as socket.gethostname() gives it (uname's nodename), without
    importing socket (~2 ms of every command's start)."""
    return os.uname().nodename


def host_tag(pidns: int | None) -> str:
    """The tag of this host's temp names: its name and PID namespace (a container sharing the
    host name has pids of its own), CRC-32; the name alone without a namespace."""
    name = hostname() + ("" if pidns is None else f"\0{pidns}")
    return f"{zlib.crc32(name.encode()):08x}"


HOST_TAG = host_tag(pid_namespace())
LEGACY_TAG = host_tag(None)  # of temp names made before the namespace was part of the tag
# A checkout (or `verify --smoke`) stages files in `.casnap-tmp-stage-<pid>-<host tag>-<random>/`:
# skipped by every scan as a casnap temp name, removed by the next run on this host once that pid
# is gone.
STAGE_PREFIX = f"{TEMP_PREFIX}stage-"


# Every name casnap gives what it makes beside a user's files, and only those (its shapes of
# older versions too): a temp file (`.db`, `.json`, SQLite's side files of a `.db`), a staging
# dir or its disposable copy (tail: 12 hex digits, or mkdtemp's 8 characters), a file copied
# across mount points before its rename (a temp file; `<pid>-move-<name>` in older versions),
# diff's scratch dir. A scan passes over these and says so; any other name starting with
# TEMP_PREFIX is the user's.
_OWN_NAME = re.compile(
    re.escape(TEMP_PREFIX)
    + r"(?:(?:[0-9]+-(?:[0-9a-f]{8}-)?)?[0-9a-f]{32}(?:\.db(?:-journal|-wal|-shm)?|\.json)?"
    r"|stage-[0-9]+-(?:[0-9a-f]{8}-)?(?:[0-9a-f]{12}|[0-9a-z_]{8})"
    r"|[0-9]+-move-.{1,80}"
    r"|diff-[0-9a-z_]{8})",
    re.DOTALL,
)


def is_own_name(name: str) -> bool:
    """True for a name of the shape casnap gives its own temp files and staging dirs."""
    return _OWN_NAME.fullmatch(name) is not None


def temp_name(suffix: str = "") -> str:
    """A fresh temp file name owned by this process."""
    return f"{TEMP_PREFIX}{os.getpid()}-{HOST_TAG}-{uuid.uuid4().hex}{suffix}"


def _owner(name: str) -> int | None:
    """The pid that made a temp file on this host; None for other names and other hosts."""
    if not name.startswith(TEMP_PREFIX):
        return None
    parts = name[len(TEMP_PREFIX) :].split("-", 2)
    if len(parts) < 3 or not parts[0].isdigit() or parts[1] not in (HOST_TAG, LEGACY_TAG):
        return None
    return int(parts[0])


def left_by_dead_process(name: str) -> bool:
    """True for a temp file made on this host by a process that no longer runs."""
    pid = _owner(name)
    return pid is not None and pid != os.getpid() and not pid_alive(pid)


def remove_stale(root: Path, recursive: bool = True) -> list[Path]:
    """Remove the temp files dead processes left in root (and below it when recursive)."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for dirpath, dirnames, filenames in os.walk(root):  # symbolic links are not followed
        if not recursive:
            dirnames.clear()
        for name in filenames:
            if left_by_dead_process(name):
                path = Path(dirpath, name)
                try:
                    path.unlink()
                except OSError:
                    continue  # gone already, or not ours to fix here (a read-only target)
                removed.append(path)
    return removed


def read_cached(path: str | os.PathLike[str], limit: int | None = None) -> bytes:
    """The bytes of a file of the user's cache dir (all, or its first limit): OSError when it
    is not a regular file. Opened without waiting, as a FIFO put in its place would make a
    read wait for a writer forever."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        os.set_blocking(fd, True)
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read() if limit is None else f.read(limit)
    finally:
        os.close(fd)


def is_cached(path: str | os.PathLike[str]) -> bool:
    """Whether a cache file is there; one this user may not look at (a cache folder another
    user made: one `sudo casnap`) is a miss, as one that does not read is: never an error."""
    return os.path.isfile(path)  # False on any OSError, a permission denied included


def cache_dir() -> Path:
    """casnap's folder in the user's cache dir (safe to delete at any time): `$CASNAP_CACHE_DIR`,
    else `$XDG_CACHE_HOME/casnap`, else `~/.cache/casnap`; when the home folder does not exist
    (a service user's HOME=/nonexistent), `cache` in the user's private scratch folder: a home
    folder is never made (its parents would have been, to keep a cache)."""
    explicit = os.environ.get("CASNAP_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "casnap"
    home = os.path.expanduser("~")
    if not os.path.isdir(home):
        return private_scratch() / "cache"
    return Path(home) / ".cache" / "casnap"


def system_tmp() -> Path:
    """The system's temp dir (`$TMPDIR`, else /tmp)."""
    return Path(tempfile.gettempdir())


def private_scratch() -> Path:
    """This user's scratch folder outside every repository, `$TMPDIR/casnap-<uid>` (0700): an
    encrypted repository keeps no plaintext database image inside itself, even for a moment."""
    path = Path(tempfile.gettempdir()) / f"casnap-{os.getuid()}"
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        pass
    except OSError as exc:
        raise from_oserror(exc, f"creating {path}") from exc
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        # someone else's (or a link): never used; a folder of this process instead, removed
        # when it ends (one a kill -9 leaves holds sealed or scratch files of that process only)
        if not _own_scratch:
            try:
                _own_scratch.append(Path(tempfile.mkdtemp(prefix=f"casnap-{os.getuid()}-")))
            except OSError as exc:
                raise from_oserror(exc, f"creating a scratch folder in {path.parent}") from exc
            atexit.register(_remove_own_scratch, _own_scratch[0])
        return _own_scratch[0]
    return path


_own_scratch: list[Path] = []  # this process's own scratch folder, made when first needed


def _remove_own_scratch(path: Path) -> None:
    """Remove this process's own scratch folder as it ends (what cannot be removed stays)."""
    import shutil  # only here: most commands never need it

    shutil.rmtree(path, ignore_errors=True)


def stage_name(tail: str = "") -> str:
    """The name of a staging dir of this process: `.casnap-tmp-stage-<pid>-<host tag>-` then
    tail (tagged as temp files are: another host's or container's pids mean nothing here)."""
    return f"{STAGE_PREFIX}{os.getpid()}-{HOST_TAG}-{tail}"


def _stage_owner(name: str) -> int | None:
    """The pid that made the staging dir name on this host (or, untagged, with a casnap older
    than the tag); None for another host's or PID namespace's, and for other names."""
    if not name.startswith(STAGE_PREFIX):
        return None
    parts = name[len(STAGE_PREFIX) :].split("-")
    if not parts[0].isdigit() or len(parts) not in (2, 3):
        return None
    if len(parts) == 3 and parts[1] not in (HOST_TAG, LEGACY_TAG):
        return None
    return int(parts[0])


def left_stage(name: str) -> bool:
    """True for the name of a staging dir a process of this host made and no longer runs."""
    pid = _stage_owner(name)
    return pid is not None and pid != os.getpid() and not pid_alive(pid)


# the mark of a checkout swapping files in (swapmark.py): no manifest path holds a backslash
SWAP_MARK = "\\swapping"


def remove_stale_stages_in(d: Dir) -> None:
    """Remove the staging dirs in d whose process no longer runs (never following a link). One
    holding a swap mark keeps it, and nothing else: the target it names may hold files of two
    snapshots until a full checkout into it is done (swapmark.finished removes it then)."""
    for name in d.names():
        if left_stage(name):
            with contextlib.suppress(OSError, CasnapError):
                try:
                    stage = d.sub(name)
                except (HostileManifest, SourceError):  # a link or a file: unlinked below
                    stage = None
                if stage is not None:
                    with stage:
                        if stage.lstat(SWAP_MARK) is not None:
                            for child in stage.names():
                                if child != SWAP_MARK:
                                    remove_tree(stage, child)
                            continue
                remove_tree(d, name)


def remove_stale_stages(folder: Path) -> None:
    """remove_stale_stages_in for a folder given by path (one casnap made or was given)."""
    with contextlib.suppress(CasnapError):
        with Dir.open(folder) as d:
            remove_stale_stages_in(d)
