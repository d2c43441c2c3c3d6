"""What to store of the data dir: files found, SQLite databases told by their header.

Knows nothing of the repository it stores into, but never enters a folder holding a casnap
repository (any: locations.holds_repository), whose files are no data. The image of a database
is dbimage.py's, stat fingerprints are fingerprints.py's (both reached through here too).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from casnap import dbimage
from casnap.errors import HostileManifest, PathTooLong, SourceError, from_oserror, shortened
from casnap.fingerprints import fingerprint as fingerprint
from casnap.fingerprints import is_racy as is_racy
from casnap.fingerprints import open_source as open_source
from casnap.fingerprints import settled_fingerprint as settled_fingerprint
from casnap.fingerprints import wait_for_truncate as wait_for_truncate
from casnap.formats import hnsw, sniff
from casnap.formats.sqlite import (
    SQLITE_SIDE_SUFFIXES,
    check_side_files,
    check_side_files_readable,
    is_sqlite,
    is_sqlite_header,
)
from casnap.fsutil import is_own_name, resolved
from casnap.locations import holds_repository
from casnap.manifestfields import MAX_PATH_DEPTH, check_path


class SourceFile(NamedTuple):
    """A file of the data dir to snapshot."""

    path: str  # relative, POSIX
    full: str  # absolute
    kind: str  # "file" or "sqlite"
    stat: os.stat_result | None = None  # its lstat when the scan found it
    head: bytes | None = None  # its first SNIFF_BYTES, when the scan read them

    @property
    def abspath(self) -> Path:
        """`full` as a Path, made when asked for (a scan of many files, and the reading of small
        ones through `full`, would spend more on making Paths than on the rest)."""
        return Path(self.full)


def is_excluded(rel: str, excludes: Sequence[str], folder: bool | None = None) -> bool:
    """True when rel (or its file name, or a folder above it) matches an exclude glob. A glob
    ending in `/` matches folders only (as in .gitignore) when folder says rel is none; when
    it is not known (None), rel itself may match it too: what reads a snapshot's excludes
    (those written before the rule too) errs on leaving a file alone."""
    if rel == ".":  # the data dir itself: `*` or `*/` leave out what it holds, not all of it
        return False
    parts = rel.split("/")
    for pattern in excludes:
        folders_only = pattern.endswith("/") and folder is False
        pattern = pattern.rstrip("/")
        for i in range(len(parts) - 1 if folders_only else len(parts)):
            if fnmatch.fnmatchcase("/".join(parts[: i + 1]), pattern):
                return True
            if fnmatch.fnmatchcase(parts[i], pattern):
                return True
    return False


def _is_folder(full: str, entry: os.DirEntry[str] | None) -> bool | None:
    """Whether full is a folder (not a link to one); None when that cannot be told."""
    try:
        if entry is not None:
            return entry.is_dir(follow_symlinks=False)
        return stat.S_ISDIR(os.lstat(full).st_mode)
    except OSError:
        return None


def is_ignored_name(name: str) -> bool:
    """casnap's own temp files and staging dirs, by the exact shapes of their names
    (fsutil.is_own_name), skipped everywhere; a user's `.casnap-tmp-notes.md` is not."""
    return is_own_name(name)


def side_file_base(name: str) -> str | None:
    """For `x.db-wal` (or -shm, -journal) the base name `x.db`; None for other names."""
    for suffix in SQLITE_SIDE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def in_scope(rel: str, paths: Sequence[str]) -> bool:
    """True when rel lies within the committed paths (all of the dir when paths is empty)."""
    return not paths or any(rel == p or rel.startswith(p + "/") for p in paths)


def require_data_dir(data_dir: Path) -> None:
    """SourceError unless data_dir is an existing directory (a loop of links said as one)."""
    if not data_dir.is_dir():
        resolved(data_dir, "data dir")
        raise SourceError(f"data dir {data_dir} does not exist or is not a directory")


@dataclass
class ScanOptions:
    """What a scan leaves out and what it reports besides the files.

    prune: absolute, resolved folders never entered (the repository when it lies in the data
    dir), and prune_ids the same folders by identity (reached another way: a bind mount);
    skipped: gets "<path>: why" for links, special files and what left_out gets; dirs: gets the
    mode and owner of every folder visited ("." for the data dir) and of the folders above the
    given paths;
    unreadable: when given, folders that cannot be listed are added to it instead of failing;
    repositories: gets the path of every folder left out because it holds a casnap repository
    (another one than a pruned folder); kind_of: see below.
    """

    prune: Sequence[Path] = ()
    prune_ids: frozenset[tuple[int, int]] = frozenset()  # (device, inode) of folders to skip
    skipped: list[str] | None = None
    # when given, also gets the entries of skipped that no snapshot can hold (a name a manifest
    # refuses, folders nested too deeply), which are lost, not chosen as a link is
    left_out: list[str] | None = None
    dirs: dict[str, tuple[int, int, int]] | None = None
    unreadable: list[str] | None = None
    # when given, paths too long to name (ENAMETOOLONG) go here rather than to unreadable
    too_long: list[str] | None = None
    repositories: list[str] | None = None
    # the kind of a file the caller knows from its lstat alone (the stat cache: unchanged since
    # a snapshot said), so it is not opened to read its header; None: read it
    kind_of: Callable[[str, os.stat_result], str | None] | None = None

    def lose(self, warning: str) -> None:
        """Note what no snapshot can hold in skipped and left_out (those given)."""
        for out in (self.skipped, self.left_out):
            if out is not None:
                out.append(warning)


def scan(
    data_dir: Path,
    paths: Sequence[str] = (),
    excludes: Sequence[str] = (),
    skipped: list[str] | None = None,
    options: ScanOptions | None = None,
) -> list[SourceFile]:
    """Every file to snapshot under data_dir (within paths), sorted by path.

    Folders holding a casnap repository are not entered (their paths go to
    `options.repositories` when given). Symbolic links, special files and files whose paths a
    manifest refuses (a backslash, a leading drive letter, folders nested too deeply) are skipped
    (their paths go to `skipped` when given); SQLite side files are skipped when their database
    is present: the backup API captures their content.
    """
    require_data_dir(data_dir)
    opts = options or ScanOptions()
    if skipped is not None:
        opts.skipped = skipped
    pruned = {str(p) for p in opts.prune}
    found: list[SourceFile] = []
    kinds: dict[str, str] = {}  # of the files found so far, by path
    roots = [data_dir / p for p in paths] if paths else [data_dir]
    if opts.dirs is not None:
        for rel in {"."} | {q for p in paths for q in _ancestors(p) if storable(q)}:
            with contextlib.suppress(OSError):
                st = os.lstat(data_dir / rel)
                opts.dirs[rel] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)

    def visit(full: str, rel: str, entry: os.DirEntry[str] | None = None) -> None:
        name = entry.name if entry is not None else os.path.basename(full)
        folder = _is_folder(full, entry)
        if is_excluded(rel, excludes, folder) or full in pruned:
            return
        if is_ignored_name(name):
            if opts.skipped is not None:
                opts.skipped.append(
                    f"{rel}: not stored (casnap's own temp file or staging dir, by its name: a "
                    "running casnap's, or left by one that was killed)"
                )
            return
        try:
            st = entry.stat(follow_symlinks=False) if entry is not None else os.lstat(full)
        except FileNotFoundError:
            return
        except PermissionError as exc:  # in a folder that may be listed, not entered
            if opts.unreadable is None:
                raise from_oserror(exc, f"reading {full}") from exc
            opts.unreadable.append(rel)
            return
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:
                raise from_oserror(exc, f"reading {full}") from exc
            passed = opts.unreadable if opts.too_long is None else opts.too_long
            if passed is None:  # as for a file it may not read
                raise PathTooLong(f"{shortened(full)}: {too_long(full)}") from exc
            passed.append(rel)
            return
        if stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) in opts.prune_ids:
                return
            if rel != "." and holds_repository(full):  # never its data: one failed open else
                if opts.repositories is not None:
                    opts.repositories.append(rel)
                return
            if rel != "." and not storable(rel):  # nor what it holds: all skipped, as one
                opts.lose(_unstorable(rel))
                return
            if rel.count("/") + 1 >= MAX_PATH_DEPTH:  # what it holds no manifest can name
                opts.lose(
                    f"{rel}: not stored (folders nested too deeply: a manifest holds at most "
                    f"{MAX_PATH_DEPTH} levels)"
                )
                return
            if opts.dirs is not None:
                opts.dirs[rel] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            try:
                with os.scandir(full) as listing:
                    children = sorted(listing, key=lambda e: e.name)
            except PermissionError as exc:
                if opts.unreadable is None:
                    raise from_oserror(exc, f"listing {full}") from exc
                opts.unreadable.append(rel)
                return
            except OSError as exc:
                raise from_oserror(exc, f"listing {full}") from exc
            for child in children:
                visit(child.path, child.name if rel == "." else f"{rel}/{child.name}", child)
        elif stat.S_ISREG(st.st_mode):
            if not storable(rel):
                # a manifest holding it could not be read back: every later command would fail
                opts.lose(_unstorable(rel))
                return
            base = side_file_base(name)
            if base is not None and is_sqlite(os.path.join(os.path.dirname(full), base)):
                base_rel = rel[: len(rel) - len(name)] + base
                # a database stored as bytes (SQLite cannot open it) keeps its -wal or -journal
                if kinds.get(base_rel) != "file" or name.endswith("-shm"):
                    return
            kind = opts.kind_of(rel, st) if opts.kind_of is not None else None
            head = None
            if kind is None:
                head = sniff(full)
                kind = "sqlite" if is_sqlite_header(head) else "file"
            found.append(SourceFile(rel, full, kind, st, head))
            kinds[rel] = kind
        elif opts.skipped is not None:
            what = "symbolic link" if stat.S_ISLNK(st.st_mode) else "special file"
            opts.skipped.append(f"{rel}: {what} not stored (casnap stores regular files)")

    for root in roots:
        visit(str(root), root.relative_to(data_dir).as_posix())
    found.sort(key=lambda s: s.path)
    return found


def too_long(full: str) -> str:
    """Why full cannot be read: its length against the system's limit, and what to do (the
    options of the command that met it are its own to add)."""
    try:
        limit = os.pathconf("/", "PC_PATH_MAX")
    except (OSError, ValueError):
        limit = 4096
    return (
        f"its path is {len(os.fsencode(full))} bytes, longer than the system's limit ({limit}): "
        "shorten it"
    )


def path_too_long(full: str) -> bool:
    """True when the path full is too long to be reached by its path (ENAMETOOLONG)."""
    try:
        os.lstat(full)
    except OSError as exc:
        return exc.errno == errno.ENAMETOOLONG
    return False


def left_out(data_dir: Path, rel: str, of: str = "the snapshot") -> str:
    """The warning for a file or folder a commit (or what `of` names) left out because it
    could not be read."""
    full = os.path.join(data_dir, rel)
    if path_too_long(full):
        return f"{shortened(rel)}: {too_long(full)}; left out of {of}"
    return f"{shortened(rel)}: not readable, left out of {of}"


def vanished(rel: str, strict: bool = False, renamed: str | None = None) -> str:
    """The warning for a plain file a commit left out because it was deleted before its read
    (or while it was read: what was read of it is not stored), or a database renamed over
    another file the commit reads; strict: the problem for which a --strict commit stores
    nothing."""
    if renamed is not None:
        gone = f"renamed to {shortened(renamed)} meanwhile"
        return f"{shortened(rel)}: {gone}" + ("" if strict else "; left out of the snapshot")
    if strict:
        return f"{shortened(rel)}: deleted while committing"
    gone = "vanished before it was read (deleted meanwhile); left out of the snapshot"
    return f"{shortened(rel)}: {gone}"


def _unstorable(rel: str) -> str:
    """The warning for a file or folder skipped because no manifest may name it."""
    return (
        f"{rel}: not stored (manifests refuse a path with a backslash or one starting with a "
        "drive letter)"
    )


def storable(rel: str) -> bool:
    """True when a manifest can name the file at rel: no backslash, no leading drive letter,
    not nested too deeply. No snapshot holds another one, nor can save it (a checkout leaves
    it in place)."""
    try:
        check_path(rel)
    except HostileManifest:
        return False
    return True


def _ancestors(rel: str) -> list[str]:
    """The folders above rel inside the data dir ("a", "a/b" for "a/b/c")."""
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def inside(path: Path, folder: Path) -> bool:
    """True when path is folder or lies below it (both absolute and resolved)."""
    return path == folder or folder in path.parents


def record_layout(path: Path) -> tuple[int, int] | None:
    """(record size, head size) of a file its folder describes as fixed-size records: hnswlib's
    data_level0.bin beside a header.bin that parses. The header is read without following a
    link and only if it is a small regular file; None otherwise. The answer only steers how the
    file is chunked (dedup), never what is stored."""
    if path.name != hnsw.DATA:
        return None
    try:
        fd = os.open(path.parent / hnsw.HEADER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            raw = f.read(hnsw.HEADER_SIZE + 1)
        except OSError:
            return None
    return hnsw.level0_records(raw)


def estimated_size(src: SourceFile) -> int:
    """Bytes a commit will read for a file: its size, plus its -wal for a database (the backup
    image holds the pages of both, so this bounds it from above); a plain file's size as the scan
    saw it."""
    if src.kind == "file" and src.stat is not None:
        return src.stat.st_size
    total = 0
    files = [src.abspath]
    if src.kind == "sqlite":
        files.append(Path(str(src.abspath) + "-wal"))
    for p in files:
        with contextlib.suppress(OSError):
            total += os.stat(p).st_size
    return total


def sqlite_image(
    path: Path, tmp_dir: Path, on_wait: Callable[[str], None] | None = None
) -> contextlib.AbstractContextManager[Path]:
    """The image a commit stores of the database at path, in a fresh private file of tmp_dir
    that is deleted afterwards (dbimage.py); SourceError when a side file of it is no regular
    file (formats/sqlite.check_side_files)."""
    check_side_files(path)
    check_side_files_readable(path)
    return dbimage.sqlite_image(path, tmp_dir, on_wait)
