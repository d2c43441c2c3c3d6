"""The mark of a checkout swapping files in: a kill part way is said, not silent.

A checkout renames its staged files into the target one by one (swap.py); killed part way, the
target holds some files of the snapshot and the rest as they were, and its staging dir stays
behind. Before the first rename the checkout writes a mark into that staging dir naming the
snapshot and the target; the staging dir, and the mark with it, is removed once the swap is
done and the files the snapshot lacks are removed (a kill among those removals leaves files of
two snapshots too). A staging dir of a process that no longer runs and holds a mark for a data
dir means its files may come from two snapshots: a commit of that data dir says so
(interrupted). Removing the staging dirs killed runs left keeps their marks
(fsutil.remove_stale_stages_in); a full checkout into the data dir of that snapshot, or of a
whole-dir one, removes them (finished).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from casnap import fsutil
from casnap.errors import NO_INODES, NO_SPACE, CasnapError, StorageFull, from_oserror, out_of_inodes
from casnap.fsdir import Dir, remove_tree

if TYPE_CHECKING:
    from casnap.ids import ObjectId
    from casnap.manifest import Snapshot

MARK = fsutil.SWAP_MARK  # its name in the staging dir's root
_MAX_MARK = 4096  # bytes of a mark read at most (one made by hand is not parsed whole)


def stage_parent(target: Path) -> Path:
    """Where a checkout stages: beside target, so a refused checkout changes nothing inside it,
    when that is the same filesystem and writable; else inside target."""
    parent = target.parent
    try:
        same_fs = parent != target and os.stat(parent).st_dev == os.stat(target).st_dev
    except OSError:
        return target
    if same_fs and os.access(parent, os.W_OK | os.X_OK):
        return parent
    return target


@contextlib.contextmanager
def untouched(target: Path, shown: Path | str) -> Iterator[None]:
    """A disk full while a checkout stages, before its first rename: the line names the target's
    fate, not only the stage, and inodes when the file system ran out of those (a full inode
    table fails a new file with the errno of a full disk: free space, yet nothing fits)."""
    try:
        yield
    except StorageFull as exc:
        said = str(exc)
        if out_of_inodes(os.path.abspath(target)):  # the stage's file system (stage_parent)
            said = said.replace(NO_SPACE, NO_INODES)
        raise StorageFull(f"{said}: nothing restored, {shown} untouched") from exc


def mark(stage: Dir, snapshot: str, target: Path) -> None:
    """Write the mark of a swap of snapshot (hex id) into target, durable, into stage."""
    body = json.dumps({"snapshot": snapshot, "target": str(target), "time": time.time()})
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(MARK, flags, 0o600, dir_fd=stage.fd)
        try:
            os.write(fd, body.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.fsync(stage.fd)
    except OSError as exc:
        raise from_oserror(exc, f"writing {stage.path}") from exc


def interrupted(target: Path) -> list[str]:
    """A line for each swap into target (absolute, links resolved) that a killed checkout left
    part way (its staging dir and mark still there), naming its snapshot; [] for none."""
    return [_line(snapshot, when, target) for _d, _name, snapshot, when in _marks(target)]


def finished(target: Path, sources: Sequence[tuple[ObjectId, Snapshot]]) -> None:
    """A full checkout of sources into target is done: the marks of killed swaps into it that
    it finishes go (all, when a source is of the whole data dir; else those of its sources),
    and the staging dirs that held them."""
    whole = any(not snap.paths for _, snap in sources)
    done = {sid.hex() for sid, _ in sources}
    for d, name, snapshot, _when in _marks(target):
        if whole or snapshot in done:
            with contextlib.suppress(OSError, CasnapError):
                remove_tree(d, name)


def _marks(target: Path) -> Iterator[tuple[Dir, str, str, object]]:
    """(folder, staging dir name, snapshot, time) of each mark a killed swap into target left,
    in the folders a checkout into it stages in."""
    for folder in dict.fromkeys((stage_parent(target), target)):
        with contextlib.suppress(OSError, CasnapError), Dir.open(folder) as d:
            for name in d.names():
                if fsutil.left_stage(name) and (marked := _read(d, name, target)) is not None:
                    yield d, name, *marked


def _read(parent: Dir, name: str, target: Path) -> tuple[str, object] | None:
    """The snapshot and time of the mark in parent/name when it names target; None without."""
    try:
        stage = parent.sub(name)
    except (OSError, CasnapError):
        return None
    if stage is None:
        return None
    with stage:
        try:
            fd = os.open(MARK, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=stage.fd)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            raw = os.read(fd, _MAX_MARK)
        except OSError:
            return None
        finally:
            os.close(fd)
    try:
        body = json.loads(raw)
        snapshot, where, when = body["snapshot"], body["target"], body["time"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(snapshot, str) or not isinstance(where, str) or where != str(target):
        return None
    return snapshot, when


def _line(snapshot: str, when: object, target: Path) -> str:
    """The warning of a commit of target that a checkout of snapshot killed part way left."""
    short = snapshot[:8] if snapshot.isalnum() and snapshot.isascii() else "?"
    stamp = (
        time.strftime(" on %Y-%m-%d at %H:%M", time.localtime(when))
        if isinstance(when, (int, float)) and 0 < when < 1e11
        else ""
    )
    return (
        f"a checkout of snapshot {short} into {target} was interrupted while it put files in "
        f"place{stamp}: {target} may hold files of two snapshots; `casnap checkout {short}` "
        "finishes it"
    )
