"""Paths a user gives on the command line: data-dir paths (commit, checkout, --path filters); the
repository location is read by locations.py. One reading for every command, so `./app.db`,
`data/app.db` and `/srv/app/data/app.db` name the same file wherever a path is taken.

A data-dir path is relative to the data dir (`./x` too). A path that, read from the working
directory, lies inside the data dir (an absolute path, or `data/app.db` run beside `data/`) is
turned into its data-dir-relative form. `.` and the data dir itself mean all of it. When both
readings of a relative path lie inside the data dir, the one naming something that exists wins
(the caller says what exists: the data dir on disk, a snapshot's files); the data-dir reading
first. A relative path whose reading from the working directory lies outside the data dir has
only the data-dir reading, whatever lies beside the working directory (`nonexist` run beside
`data/` is `data/nonexist`, then not found there). A path that has no reading inside the data
dir (absolute outside it, or `../x` from outside it) is an InvalidArgument naming it.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from casnap.errors import InvalidArgument, SourceError
from casnap.manifest import Snapshot

ALL = "."  # the whole data dir


def _inside(full: str, data_dir: Path) -> str | None:
    """full (an absolute path) relative to data_dir as a POSIX path, `.` for data_dir itself;
    None when it lies outside. Symbolic links in data_dir or in full's parents are followed;
    the last component of full is not (it may be a link inside the data dir)."""
    full = os.path.normpath(full)
    roots = dict.fromkeys((os.path.abspath(data_dir), os.path.realpath(data_dir)))
    forms = [full]
    if full != os.path.dirname(full):  # not `/`
        forms.append(os.path.join(os.path.realpath(os.path.dirname(full)), os.path.basename(full)))
    for form in forms:
        for root in roots:
            if form == root:
                return ALL
            if form.startswith(root.rstrip(os.sep) + os.sep):
                return Path(os.path.relpath(form, root)).as_posix()
    return None


def _one(given: str, data_dir: Path, exists: Callable[[str], bool]) -> str:
    """The data-dir-relative form of one user-given path (ALL for the whole dir)."""
    if not given:
        raise InvalidArgument("an empty path names nothing; give `.` for the whole data dir")
    if os.path.isabs(given):
        rel = _inside(given, data_dir)
        if rel is None:
            raise InvalidArgument(f"{given} is outside the data dir {data_dir}")
        return rel
    in_dir: str | None = posixpath.normpath(given.replace(os.sep, "/"))
    if in_dir == ".." or str(in_dir).startswith("../"):
        in_dir = None
    from_cwd = _inside(os.path.abspath(given), data_dir)
    for rel in (in_dir, from_cwd):
        if rel is not None and (rel == ALL or exists(rel)):
            return rel
    if from_cwd is not None and os.path.lexists(given):  # names a file in the data dir on disk
        return from_cwd
    if in_dir is not None:  # what the working dir holds outside the data dir is no reading
        return in_dir
    if from_cwd is not None:
        return from_cwd
    raise InvalidArgument(f"{given} is outside the data dir {data_dir}")


def normalize_paths(
    given: Iterable[str], data_dir: Path | str, exists: Callable[[str], bool] | None = None
) -> tuple[str, ...]:
    """Sorted data-dir-relative POSIX paths for user-given paths; () means the whole data dir.

    exists(rel) tells whether a reading names something (default: it exists in the data dir on
    disk). A path inside another given path adds nothing and is dropped.
    """
    root = Path(data_dir)
    if exists is None:

        def exists(rel: str) -> bool:
            return os.path.lexists(root / rel)

    out: set[str] = set()
    for p in given:
        rel = _one(p, root, exists)
        if rel == ALL:
            return ()
        out.add(rel)
    return tuple(sorted(p for p in out if not any(p.startswith(q + "/") for q in out)))


def exclude_patterns(given: Iterable[str], data_dir: Path) -> tuple[str, ...]:
    """--exclude globs with their leading components that hold no wildcard read as every path
    is (`./faiss`, `data/faiss` beside the data dir, `/srv/app/data/faiss/*.tmp`), so they match
    data-dir paths; a glob without `/` (`*.tmp`, `cache`) matches a name at any depth, as given.
    InvalidArgument for one outside the data dir or naming all of it."""
    out = []
    for pattern in given:
        if not pattern:
            raise InvalidArgument("--exclude needs a pattern")
        parts = (pattern.rstrip("/") or "/").split("/")
        name = len(parts) == 1 and parts[0] not in (".", "..")
        if name or any(c in parts[0] for c in "*?["):
            out.append(pattern)  # a name, or a glob from its first component: as given
            continue
        n = next((i for i, p in enumerate(parts) if any(c in p for c in "*?[")), len(parts))
        literal = "/".join(parts[:n]) or "/"
        try:
            rel = _one(literal, data_dir, lambda r: os.path.lexists(data_dir / r))
        except InvalidArgument as exc:
            raise InvalidArgument(f"--exclude {pattern}: {exc}") from exc
        if rel == ALL and n == len(parts):
            raise InvalidArgument(f"--exclude {pattern} would leave out the whole data dir")
        slash = "/" if pattern.endswith("/") else ""  # folders only
        out.append("/".join(([] if rel == ALL else [rel]) + parts[n:]) + slash)
    return tuple(out)


def commit_paths(given: Sequence[str], data_dir: Path) -> tuple[str, ...]:
    """normalize_paths for commit: each path must exist in the data dir (SourceError if not)."""
    rels = normalize_paths(given, data_dir)
    for rel in rels:
        if not os.path.lexists(data_dir / rel):
            raise SourceError(f"{rel} does not exist in the data dir {data_dir}")
    return rels


def refuse_excluded_paths(
    given: Sequence[str], excludes: Sequence[str], rels: Sequence[str], data_dir: Path
) -> None:
    """InvalidArgument when an exclude (excludes: exclude_patterns of given, in order) leaves
    out a path the commit is given, whole (`commit faiss --exclude '*/'`): the snapshot would
    hold nothing of it. The data dir itself is never matched (capture.is_excluded)."""
    from casnap import capture

    for rel in rels:
        full = data_dir / rel
        folder = full.is_dir() and not full.is_symlink()
        for shown, pattern in zip(given, excludes, strict=True):
            if capture.is_excluded(rel, (pattern,), folder):
                raise InvalidArgument(
                    f"--exclude {shown} would leave out {rel}, which the commit is given: "
                    "nothing of it would be stored"
                )


def snapshot_holds(snap: Snapshot) -> Callable[[str], bool]:
    """exists() for paths of a snapshot: rel is one of its files or folders."""
    names = {f.path for f in snap.files}
    folders = folders_above(names) | (set(snap.dirs) - {"."})
    return lambda rel: rel in names or rel in folders


def folders_above(paths: Iterable[str]) -> set[str]:
    """The folders above paths ("a" and "a/b" for "a/b/c"): each folder climbed from once."""
    out: set[str] = set()
    for parent in {p.rpartition("/")[0] for p in paths}:
        while parent and parent not in out:
            out.add(parent)
            parent = parent.rpartition("/")[0]
    return out
