"""Checks of a manifest's fields: safe paths, hard links, times, chunkers, ids and the typed
values of its JSON, each raising what Snapshot.decode turns into an error naming the manifest
(ValueError/TypeError: malformed; HostileManifest: a path or link that could do harm)."""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from casnap.errors import HostileManifest
from casnap.ids import ID_SIZE

if TYPE_CHECKING:
    from casnap.manifest import FileEntry


# Folders a manifest path may go down: no app data lies deeper, and restoring walks a path one
# folder at a time (a crafted path thousands deep exhausted the stack).
MAX_PATH_DEPTH = 256


def check_path(path: str) -> str:
    """A manifest path must be relative, normalised, inside the target, and no deeper than
    MAX_PATH_DEPTH components."""
    if path.count("/") >= MAX_PATH_DEPTH:
        raise HostileManifest(
            f"manifest holds a path nested too deeply ({path.count('/') + 1} levels, at most "
            f"{MAX_PATH_DEPTH}): {path[:80]!r}..."
        )
    if _outside(path) or "\\" in path or (len(path) >= 2 and path[1] == ":"):
        raise HostileManifest(f"manifest holds an unsafe path: {path!r}")
    return path


def check_scope(path: str) -> str:
    """A path a commit was given (a manifest's `paths`) must name a place in the data dir:
    relative, without empty, `.` or `..` components, NUL or what no file name holds. Unlike a
    file's path it may hold a backslash or a drive letter: a commit given such a folder skips
    its files, yet records it."""
    if _outside(path):
        raise HostileManifest(f"manifest holds an unsafe path among its committed paths: {path!r}")
    return path


def _outside(path: str) -> bool:
    """Whether path fails to name a place below the data dir: empty, absolute, with NUL, an
    empty, `.` or `..` component, or what no file name holds."""
    parts = path.split("/")
    return (
        not path
        or path.startswith("/")
        or "\x00" in path
        or "" in parts
        or "." in parts
        or ".." in parts
        or not _encodable(path)
    )


def _encodable(path: str) -> bool:
    """Whether path turns into a file name (os.fsencode): a name read from a folder holds no
    surrogate but those surrogateescape makes of undecodable bytes, a lone one such as
    \\ud800 only a crafted manifest, on which each write would fail."""
    if path.isascii():
        return True
    try:
        os.fsencode(path)
    except UnicodeError:
        return False
    return True


def check_paths(paths: Sequence[str], checked: bool = False) -> None:
    """Reject duplicate paths and a path that is also a folder of another (and each unsafe
    path, unless the caller checked them: checked)."""
    if not checked:
        for p in paths:
            check_path(p)
    seen = set(paths)
    if len(seen) != len(paths):
        once: set[str] = set()
        for p in paths:
            if p in once:
                raise HostileManifest(f"manifest holds the path {p!r} twice")
            once.add(p)
    # each folder looked up once (checked with its own folders): files share their folders, so
    # most paths cost one lookup (a commit checks each manifest it stores too)
    folders: set[str] = set()
    for p in paths:
        while (cut := p.rfind("/")) > 0:
            p = p[:cut]
            if p in folders:
                break
            if p in seen:
                raise HostileManifest(f"manifest holds {p!r} as file and folder")
            folders.add(p)


def check_links(files: Sequence[FileEntry]) -> None:
    """A hard link names another file of the snapshot that is no link itself, with the same
    content: hash, size, chunk list and number of chunks (a checkout links it to that file,
    restored first)."""
    linked = [f for f in files if f.link is not None]
    if not linked:
        return
    by_path = {f.path: f for f in files}
    for f in linked:
        primary = by_path.get(f.link or "")
        if (
            primary is None
            or primary.link is not None
            or (primary.hash, primary.size, primary.lists, primary.chunks)
            != (f.hash, f.size, f.lists, f.chunks)
        ):
            raise HostileManifest(f"manifest links {f.path!r} to {f.link!r}, which it cannot be")


# A file entry's `chunker` is its chunker's name and parameters (chunking.base describe): a flat
# object of JSON scalars and short arrays of them (faiss-cdc's [min, avg, max]). Anything else is
# no chunker casnap wrote, and is refused before it is copied, compared or encoded again.
MAX_CHUNKER_FIELDS = 32
MAX_CHUNKER_ARRAY = 16
_SCALARS = frozenset([str, int, float, bool, type(None)])


def flat_chunker(c: dict[Any, Any]) -> bool:
    """Whether c (an object) holds at most MAX_CHUNKER_FIELDS parameters, each a scalar or an
    array of at most MAX_CHUNKER_ARRAY scalars (all scalars, the common case, told at once: a
    manifest holds one per file)."""
    if len(c) > MAX_CHUNKER_FIELDS:
        return False
    return _SCALARS.issuperset(map(type, c.values())) or all(
        type(v) in _SCALARS
        or (type(v) is list and len(v) <= MAX_CHUNKER_ARRAY and _SCALARS.issuperset(map(type, v)))
        for v in c.values()
    )


def chunker_field(raw: Any) -> dict[str, Any]:
    """The `chunker` of a file entry, a copy; ValueError when it holds more than parameters."""
    if type(raw) is not dict or not all(type(k) is str for k in raw) or not flat_chunker(raw):
        raise ValueError("its chunker is not an object of chunker parameters")
    return dict(raw)


def dirs_field(raw: Any) -> dict[str, tuple[int, int, int]]:
    """The `dirs` field: each folder's [mode, uid, gid]; ValueError naming what is wrong."""
    if type(raw) is not dict:
        raise ValueError("its dirs is not an object of folders")
    out: dict[str, tuple[int, int, int]] = {}
    for rel, value in raw.items():
        if rel != ".":
            check_path(text(rel))
        if type(value) is not list or len(value) != 3:
            raise ValueError(f"folder {rel!r} has no [mode, uid, gid] but {str(value)[:40]!r}")
        mode, uid, gid = (integer(x) for x in value)
        if not (0 <= mode <= 0o7777 and 0 <= uid < 1 << 32 and 0 <= gid < 1 << 32):
            raise ValueError(f"folder {rel!r} has an out-of-range mode or owner")
        out[rel] = (mode, uid, gid)
    return out


def totals_field(raw: Any) -> tuple[int, int] | None:
    """The `totals` field: number of files and their bytes."""
    if raw is None:
        return None
    return count(raw["files"]), count(raw["bytes"])


def origin_field(raw: Any) -> tuple[str, str] | None:
    """The `origin` field: the repository id (hex) and snapshot id a copy was made from."""
    if raw is None:
        return None
    repository = text(raw["repository"])
    hexdigits = all(c in "0123456789abcdef" for c in repository)
    if not (0 < len(repository) <= 2 * ID_SIZE and hexdigits):
        raise ValueError(f"not a repository id: {repository[:80]!r}")
    return repository, object_id(raw["snapshot"])


# every entry names a few ids: checked as a set, in C (a generator over the characters took most
# of the time a commit spends reading the snapshot list)
_HEX_DIGITS = frozenset("0123456789abcdef")
HEX_RUN = re.compile("[0-9a-f]*")


def text(x: Any) -> str:
    if not isinstance(x, str):
        raise TypeError(f"expected a string, got {type(x).__name__}")
    return x


def integer(x: Any) -> int:
    if not isinstance(x, int) or isinstance(x, bool):
        raise TypeError(f"expected an integer, got {type(x).__name__}")
    return x


# sizes and counters fit in 63 bits as in the file system's own fields; larger ones can only be
# crafted, and a sum or a size shown in KiB of them would overflow a float
COUNT_LIMIT = 1 << 63


# a file time in nanoseconds, as Linux gives it: seconds in a signed 64 bits (timespec64), then
# nanoseconds below 10**9. Past 2262-04-11 st_mtime_ns needs more than 63 bits (ext4 keeps times
# to 2446, xfs's bigtime to 2486, tmpfs and btrfs any of this range); each one is restored as is
TIME_NS_LIMIT = 10**9 << 63


def count(x: Any) -> int:
    """A size or a counter: an integer from 0 to COUNT_LIMIT (excluded)."""
    if not 0 <= integer(x) < COUNT_LIMIT:
        raise ValueError(f"out-of-range count {x if abs(x) < 1 << 80 else '(over 80 bits)'}")
    return int(x)


def integers(xs: Any) -> tuple[int, ...]:
    out = tuple(xs)
    for x in out:
        if type(x) is not int:  # JSON gives int or bool: a bool is no integer here
            raise TypeError(f"expected an integer, got {type(x).__name__}")
    return out


# the time every manifest records: a four-digit year, UTC, microseconds
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")


def time_field(x: Any) -> str:
    """A manifest's `time`, as casnap writes it: a year from 1000 to 9998 (any casnap wrote in
    this form, and what every local zone can show) that is a real date."""
    s = text(x)
    try:
        if not (_TIME.fullmatch(s) and 1000 <= int(s[:4]) <= 9998):
            raise ValueError("not YYYY-MM-DDTHH:MM:SS.ffffffZ")
        dt.datetime.fromisoformat(s[:-1])  # a real date: no 31 June, no hour 24
    except ValueError as exc:
        raise ValueError(f"its time {s[:80]!r} is no UTC time as casnap writes it: {exc}") from exc
    return s


def object_id(x: Any) -> str:
    s = text(x)
    if len(s) != 2 * ID_SIZE or not _HEX_DIGITS.issuperset(s):
        raise ValueError(f"not an object id: {s[:80]!r}")
    return s
