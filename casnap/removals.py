"""What a full checkout removes from its target, and the folders it may remove it from.

A full checkout removes the target's files that the snapshots' scopes cover but none of them
holds: what an app wrote since, in the data dir. It leaves alone casnap's own temp files, any
repository inside the target, what a snapshot excluded or recorded as skipped (a file or folder
`commit --skip-unreadable` could not read: no snapshot says what it should hold), and what no
manifest can name. The list comes from the folders' listings alone (and a database's header,
whose side files go with it), before any file is read.

Removing a file the snapshot lacks is what a checkout into the data dir is for; anywhere else it
would delete what the checkout did not write (a restic or borg restore never does). So a full
checkout removes files only from a folder known to hold this repository's data (`known`): the
data dir, or one this host's record (restored.py, in the user's cache dir) says an earlier full
checkout from this repository went into, or a commit into it was made from (not a pre-checkout
snapshot: a checkout of some paths saves one of any folder it writes into). Never a manifest's
`source` and `host`: a repository someone else made can name any folder there.
Anywhere else it is refused before anything is read or written unless forced (`refuse`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from casnap import capture, selection, swap
from casnap import restored as restored_files
from casnap.errors import AccessDenied, InvalidArgument
from casnap.fsdir import Tree
from casnap.present import Present
from casnap.repository import Repository

# notes on the errors below, for the CLI to name its options: --force for the refusal,
# --no-safety-snapshot for a file the checkout must read to save it
UNKNOWN_TARGET = "unknown-target"
UNREADABLE_REMOVED = "unreadable-removed"
UNREADABLE_REPLACED = "unreadable-replaced"


def listed(
    tree: Tree,
    sel: selection.Selection,
    in_repo: Callable[[str, os.stat_result], bool],
    denied: list[AccessDenied],
) -> list[str]:
    """The files of the target (held open as tree) a full checkout of sel removes, sorted. The
    folders it may not list are added to denied (see unlisted)."""
    keep = set(sel.entries)
    excludes = sorted(sel.excludes())
    skipped = sorted(sel.skipped())

    def skip(rel: str, name: str, st: os.stat_result) -> bool:
        return (
            capture.is_ignored_name(name) or in_repo(rel, st) or capture.is_excluded(rel, excludes)
        )

    def unread(rel: str) -> bool:  # before its lstat, which its folder may refuse too
        return bool(skipped) and capture.in_scope(rel, skipped)

    out = []
    try:
        for rel, st in tree.walk(skip=skip, denied=denied, leave=unread):
            if not stat.S_ISREG(st.st_mode) or rel in keep or not sel.covers(rel):
                continue
            if not capture.storable(rel):  # no snapshot could save it: left in place
                continue
            parent, name = tree.parent_of(rel)
            if parent is None:
                continue  # its folder was moved away meanwhile: nothing of ours to remove
            base = capture.side_file_base(name)
            if base is not None and swap.is_sqlite(parent, base):
                continue  # removed with its database, or kept with it
            out.append(rel)
    except AccessDenied as exc:
        raise unlisted(exc) from exc
    return out


def unlisted(exc: AccessDenied) -> AccessDenied:
    """The error for a folder of the target a full checkout may not list (exc): it cannot tell
    which of the files there the snapshot lacks."""
    return AccessDenied(
        f"{exc}: a full checkout looks in every folder it covers for the files the snapshot "
        "lacks, to remove them; nothing was changed"
    )


def unsaved(tree: Tree, present: Present, removing: list[str]) -> list[str]:
    """Those of removing (of the target held open as tree) that no snapshot holds: read and
    hashed unless their fingerprint is known; one that cannot be read stops the checkout
    (unreadable: saying why it was read)."""
    out = []
    for rel in removing:
        parent, name = tree.parent_of(rel)
        if parent is None:
            continue  # its folder was moved away meanwhile
        try:
            digest = present.hash_of(parent, name, rel)
        except AccessDenied as exc:
            raise unreadable(exc, removed=True) from exc
        if not present.held(digest, rel):
            out.append(rel)
    return out


def known(repo: Repository, target: Path, fd: int, data_dir: Path | None) -> bool:
    """Whether target (open as fd) is known to hold repo's data: the data dir (by identity,
    whatever path names it), or a folder this host's record (restored.py) says a full checkout
    from repo went into or a commit into repo was made from."""
    here = os.fstat(fd)
    if data_dir is not None:
        try:
            st = os.stat(data_dir)
        except (OSError, ValueError):
            st = None
        if st is not None and (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino):
            return True
    # this host's own record, never a manifest's source and host: a repository made elsewhere
    # can name any folder in them
    return restored_files.whole_checkout(repo.id, str(target), (here.st_dev, here.st_ino))


def refuse(removing: list[str], sel: selection.Selection, shown: object) -> None:
    """InvalidArgument (noted UNKNOWN_TARGET): a full checkout of sel into shown, a folder not
    known to hold this data, would remove removing. Not for the side files of a database sel
    restores alone (a stale -wal left beside it would corrupt it: they go wherever it is
    restored, saved first), nor for a file where sel has a folder (the plan names it: in the
    way, not to be removed)."""
    holds = selection.holds(sel.entries)
    others = [rel for rel in removing if not _beside_restored_db(rel, sel) and not holds(rel)]
    if not others:
        return
    n = len(others)
    which = f"{others[0]}" if n == 1 else f"such as {others[0]}"
    err = InvalidArgument(
        f"refusing a full checkout into {shown}: it would remove {n} file{'s' if n > 1 else ''} "
        f"there that the snapshot lacks ({which}), and nothing says that folder holds this "
        "data (it is not the data dir, and this host has no record of a full checkout from this "
        "repository into it, nor of a commit into it made from there)"
    )
    err.add_note(UNKNOWN_TARGET)
    raise err


def _beside_restored_db(rel: str, sel: selection.Selection) -> bool:
    """Whether rel is a -wal, -shm or -journal of a database sel restores."""
    head, _, name = rel.rpartition("/")
    base = capture.side_file_base(name)
    if base is None:
        return False
    held = sel.entries.get(f"{head}/{base}" if head else base)
    return held is not None and held[0].kind == "sqlite"


def unreadable(exc: AccessDenied, removed: bool) -> AccessDenied:
    """The error for a target file a checkout must read and cannot: exc, with why it reads it
    (noted UNREADABLE_REMOVED or UNREADABLE_REPLACED)."""
    if removed:
        why = (
            "the snapshot lacks it, so this full checkout removes it, and reads it first to "
            "save it in a pre-checkout snapshot"
        )
    else:
        why = (
            "the snapshot holds a file there, and this checkout reads this one to compare the "
            "two, and to save it in a pre-checkout snapshot before replacing it"
        )
    err = AccessDenied(f"{exc}: {why}; nothing was changed")
    err.add_note(UNREADABLE_REMOVED if removed else UNREADABLE_REPLACED)
    return err
