"""Putting staged files in place: renamed one by one, or a whole new folder at once, then the
folders that changed made durable.

Every staged file is durable before it is renamed (staging.py, durable.py). A folder the target
lacks whose staged copy holds exactly files being placed (a checkout into an empty or new dir,
a new folder of a snapshot) is moved in with one rename, its folders given their recorded modes
and owners first and made durable: its files appear together, each whole. Any other file is
renamed into its folder, created as needed (fsdir.Tree). Last the folders renamed into are
synced: one syncfs per filesystem where it reports failures (fsutil.can_syncfs), else one fsync
per folder.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Collection, Iterable, Sequence

from casnap import fsutil
from casnap.errors import SourceError, from_oserror
from casnap.formats.sqlite import SQLITE_SIDE_SUFFIXES
from casnap.fsdir import Dir, Tree, split

DirAttrs = Callable[[str], tuple[int, tuple[int, int] | None]]


def _ancestors(rel: str) -> list[str]:
    """The folders above rel, outermost first ("a", "a/b" for "a/b/c")."""
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _inside(rel: str, folder: str) -> bool:
    return rel.startswith(folder + "/")


def swap_in(
    tree: Tree, stage: Dir, placing: Sequence[tuple[str, bool]], dir_attrs: DirAttrs
) -> tuple[list[str], set[str]]:
    """Put every staged file of placing (path, whether it replaces a database) in place: new
    folders moved whole, the other files renamed one by one (the stale -wal, -shm and -journal
    beside a database it replaces removed first: SQLite would replay a stale WAL). Returns the
    files placed, in order, and the folders renamed into (for sync_folders)."""
    written: list[str] = []
    touched: set[str] = set()
    with Tree(stage) as staged:
        whole = new_folders(tree, staged, [rel for rel, _ in placing])
        touched |= move_folders(tree, staged, whole, dir_attrs)
        moving = set(whole)
        for rel, replaces_db in placing:
            if moved(rel, moving):
                written.append(rel)
                continue
            head, name = split(rel)
            parent = tree.dir(head, create=True)
            source = staged.dir(head)
            if parent is None or source is None:
                raise SourceError(f"{tree.root.path / head} vanished during the checkout")
            if replaces_db:
                for suffix in SQLITE_SIDE_SUFFIXES:
                    parent.unlink(name + suffix)
            source.rename(name, parent, name)
            touched.add(head)
            written.append(rel)
    return written, touched


def new_folders(tree: Tree, staged: Tree, rels: Sequence[str]) -> list[str]:
    """The outermost folders the target lacks whose staged copy holds exactly files of rels
    (nothing else: no other file, link or special file), on the staging dir's filesystem:
    each can be moved in whole."""
    stage_dev = os.fstat(staged.root.fd).st_dev
    missing: dict[str, bool] = {}
    found: dict[str, list[str]] = {}
    for rel in rels:
        for folder in _ancestors(rel):
            absent = missing.get(folder)
            if absent is None:
                absent = missing[folder] = tree.dir(folder) is None
            if absent:
                found.setdefault(folder, []).append(rel)
                break
    out = []
    for folder, files in found.items():
        head = split(folder)[0]
        parent = tree.dir(head)
        if parent is None or os.fstat(parent.fd).st_dev != stage_dev:
            continue
        held = set()
        for rel, st in staged.walk(folder):
            if stat.S_ISDIR(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                break
            held.add(rel)
        else:
            if held == set(files):
                out.append(folder)
    return out


def move_folders(tree: Tree, staged: Tree, folders: Sequence[str], dir_attrs: DirAttrs) -> set[str]:
    """Move each staged folder into the target whole, every folder in it given its mode and
    owner (dir_attrs, outermost first) and made durable first; returns the folders renamed
    into."""
    if not folders:
        return set()
    inside = [rel for folder in folders for rel in _folders_below(staged, folder)]
    for rel in inside:
        d = staged.dir(rel)
        if d is None:
            raise SourceError(f"staged folder {rel} vanished")
        mode, owner = dir_attrs(rel)
        try:
            if owner is not None:
                os.chown(d.fd, *owner)
            os.chmod(d.fd, mode & 0o7777)
        except OSError as exc:
            raise from_oserror(exc, f"setting the mode of {d.path}") from exc
    _sync(staged, inside)
    touched = set()
    for folder in folders:
        head, name = split(folder)
        parent, source = tree.dir(head), staged.dir(head)
        if parent is None or source is None:
            raise SourceError(f"{tree.root.path / head} vanished during the checkout")
        source.rename(name, parent, name)
        touched.add(head)
    return touched


def moved(rel: str, folders: Collection[str]) -> bool:
    """Whether rel lies in one of the folders moved whole."""
    return bool(folders) and any(a in folders for a in _ancestors(rel))


def _folders_below(staged: Tree, folder: str) -> list[str]:
    """folder and every folder below it, outermost first."""
    return [folder, *(rel for rel, st in staged.walk(folder) if stat.S_ISDIR(st.st_mode))]


def sync_folders(tree: Tree, folders: Iterable[str]) -> None:
    """Make what was renamed into folders (relative to the tree) durable."""
    _sync(tree, sorted(folders))


def _sync(tree: Tree, folders: Sequence[str]) -> None:
    """fsync the folders of a tree: those on its root's filesystem with one syncfs when that
    reports failures and there is more than one, the others one by one."""
    batched = len(folders) > 1 and fsutil.can_syncfs()
    dev = os.fstat(tree.root.fd).st_dev
    whole = False
    for rel in folders:
        d = tree.dir(rel)
        if d is None:
            continue
        if batched and os.fstat(d.fd).st_dev == dev:
            whole = True
        else:
            d.fsync()
    if whole:
        fsutil.syncfs(tree.root.fd, str(tree.root.path))
