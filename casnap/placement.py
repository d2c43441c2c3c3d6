"""Where a local repository lies against a data dir or a target: its folders by identity, paths
inside it, a repository nested in a data dir (which commit skips and checkout never touches).
A repository that is not a local directory (root None) lies nowhere on this machine."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from casnap import capture
from casnap.errors import InvalidArgument
from casnap.locations import holds_repository
from casnap.paths import normalize_paths


def folder_ids(root: Path | None) -> frozenset[tuple[int, int]]:
    """(device, inode) of the repository's folders: a folder reached by another path (a
    bind mount) is still recognised as the repository's. What tmp/ holds is left out: those
    folders come and go, and a number freed there may be given to a new folder elsewhere."""
    if root is None:
        return frozenset()
    ids = set()
    for folder, dirs, _files in os.walk(root):  # links are not followed
        if Path(folder) == root / "tmp":
            dirs.clear()
        with contextlib.suppress(OSError):
            st = os.stat(folder)
            ids.add((st.st_dev, st.st_ino))
    return frozenset(ids)


def holds_path(root: Path | None, path: Path) -> bool:
    """True when path is one of the repository's folders or lies below one (by path, or by
    the identity of the folders it passes through)."""
    if root is None:
        return False
    if capture.inside(path.absolute(), root.resolve()):
        return True
    ids = folder_ids(root)
    for folder in (path, *path.parents):
        with contextlib.suppress(OSError):
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in ids:
                return True
    return False


def nested_in(root: Path | None, data_dir: Path) -> list[Path]:
    """The repository, when it lies inside data_dir (resolved): a commit never stores it, a
    checkout never touches it. InvalidArgument (a usage error) when the data dir lies inside
    the repository."""
    if root is None:
        return []
    root = root.resolve()
    if capture.inside(data_dir, root):
        raise InvalidArgument(f"the data dir {data_dir} lies inside the repository {root}")
    return [root] if capture.inside(root, data_dir) else []


def refuse_other_repository(target: Path, shown: Path | str) -> None:
    """InvalidArgument when target, or a folder above it, holds a casnap repository (another
    one than the checkout reads: that one is refused before): a checkout there would take its
    config, packs and snapshots for data files and replace them with a snapshot's."""
    for folder in (target, *target.parents):
        if holds_repository(folder):
            where = "is" if folder == target else f"lies inside {folder}, which is"
            raise InvalidArgument(
                f"refusing to check out into {shown}: it {where} a casnap repository, whose "
                "files a checkout would replace (check out into a data dir, or an empty dir)"
            )


class OtherRepositories:
    """The folders of a checkout target that hold a casnap repository (another one, or this
    one reached any way), each looked for once: a checkout neither removes nor writes anything
    inside them (a full checkout would take their config, packs and snapshots for data files
    no snapshot holds, and remove them)."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)
        self._holds: dict[str, bool] = {}  # by folder path relative to the target

    def holds(self, rel: str) -> bool:
        """True when a folder above rel, below the target, holds a casnap repository."""
        head = rel.rpartition("/")[0]
        if not head:
            return False
        found = self._holds.get(head)
        if found is None:
            found = self.holds(head) or holds_repository(os.path.join(self.target, head))
            self._holds[head] = found
        return found


def refuse_overlap(target: Path, data_dir: Path, shown: str, paths: Sequence[str] = ()) -> None:
    """InvalidArgument when a checkout's --to lies inside the data dir (what it restores would
    land in that folder, and a full checkout would remove what it held) or, for a full checkout
    (no paths), holds the data dir (whose files it would remove as files the snapshot lacks).
    A data dir that is not there overlaps nothing."""
    if not data_dir.is_dir():
        return
    # realpath, not resolve: a loop of links is not an error here (the checkout names it)
    into, data = Path(os.path.realpath(target)), Path(os.path.realpath(data_dir))
    if into == data:
        return
    try:
        named = normalize_paths(paths, data) if paths else ()
    except InvalidArgument:  # a path outside the data dir: that error comes later
        named = ("...",)
    whole = not named
    if capture.inside(into, data):
        rel = into.relative_to(data).as_posix()
        if not whole:  # `checkout ID app.db --to data/sub`: not the tree, nor sub, is meant
            lands = f"what it restores would land in it ({rel}/{named[0]})"
            way = "to restore it in place, check out without --to"
        elif os.path.lexists(into):
            lands = f"the snapshot's whole tree would land in it ({rel}/{rel}/...)"
            way = f"to restore {rel} in place, name it (`casnap checkout SNAPSHOT {rel}`)"
        else:
            lands = f"the snapshot's whole tree would land in it ({rel}/...)"
            way = "to restore the data dir in place, check out without --to"
        raise InvalidArgument(
            f"refusing to check out into {shown}: it lies inside the data dir {data}, so "
            f"{lands}; {way}; to restore a copy, give --to a folder outside the data dir"
        )
    if whole and capture.inside(data, into):
        raise InvalidArgument(
            f"refusing to check out into {shown}: the data dir {data} lies inside it, and a "
            "full checkout would remove the data dir's files; check out into the data dir "
            "(without --to) or into a folder outside it"
        )
