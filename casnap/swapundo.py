"""What a checkout's swap changes, kept so that a rename failing part way can be undone.

A database's stale `-wal`, `-shm` and `-journal` are moved aside into the staging dir (or,
where that is another mount, beside themselves under a temp name) instead of removed, before the
restored database is renamed in: `undo` puts them back when a rename fails, `done` removes them
once every file is in. A kill leaves every path its old or its new file.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass

from casnap import fsutil
from casnap.errors import CasnapError, from_oserror
from casnap.fsdir import Dir, Tree, split

# names in the staging dir's root no staged file can take: a manifest path holds no backslash
_SIDE = "\\side-"


@dataclass(frozen=True)
class _Kept:
    """A file kept for the undo: its folder (relative to the target) and name there, and the
    name it is kept under, in the staging dir's root or (in_stage False) beside it."""

    head: str
    name: str
    kept: str
    in_stage: bool


class Journal:
    """The steps of one swap, and what it keeps to take them back."""

    def __init__(self, tree: Tree, stage: Dir) -> None:
        self.tree = tree
        self.stage = stage
        self.steps: list[tuple[str, str, _Kept | int | None]] = []
        self.side: list[_Kept] = []  # side files moved aside
        self._count = 0
        self._cleaned: set[str] = set()  # folders whose leftovers of killed runs were removed

    # -- the swap ------------------------------------------------------------------------------

    def aside(self, parent: Dir, head: str, name: str) -> None:
        """Move a stale side file (name in parent) aside, not remove it: put back if the swap
        fails, removed by done()."""
        try:
            kept = self._keep(parent, head, name, _SIDE, _move)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise from_oserror(exc, f"moving {parent.path / name} aside") from exc
        self.side.append(kept)
        self.steps.append(("aside", f"{head}/{name}" if head else name, kept))

    def side_done(self) -> None:
        """The database is in place: the side files moved aside for it stay aside (a stale WAL
        must never lie beside it), removed by done()."""
        self.steps.clear()

    def done(self) -> None:
        """Every file is in: remove the side files moved aside."""
        for kept in self.side:
            where = self.stage if kept.in_stage else self.tree.dir(kept.head)
            if where is not None:
                with contextlib.suppress(CasnapError):
                    where.unlink(kept.kept)

    # -- a failure part way ----------------------------------------------------------------------

    def undo(self) -> list[str]:
        """Take every step back, newest first; the paths that could not be put back."""
        failed = []
        for kind, rel, what in reversed(self.steps):
            try:
                ok = self._back(kind, rel, what)
            except (OSError, CasnapError):
                ok = False
            if not ok:
                failed.append(rel)
        with contextlib.suppress(OSError, CasnapError):
            for head in sorted({split(rel)[0] for _, rel, _ in self.steps}):
                d = self.tree.dir(head)
                if d is not None:
                    d.fsync()
        self.steps.clear()
        return failed

    def _back(self, kind: str, rel: str, what: _Kept | int | None) -> bool:
        head, name = split(rel)
        parent = self.tree.dir(head)
        if parent is None:
            return False
        assert kind == "aside" and isinstance(what, _Kept)
        source = self.stage if what.in_stage else parent
        os.rename(what.kept, name, src_dir_fd=source.fd, dst_dir_fd=parent.fd)
        return True

    # -- keeping -------------------------------------------------------------------------------

    def _keep(
        self, parent: Dir, head: str, name: str, prefix: str, how: Callable[..., None]
    ) -> _Kept:
        """Move name into the staging dir, else (another mount) beside itself under a temp
        name; OSError when neither can be done."""
        kept = self._name(prefix)
        try:
            how(name, kept, src_dir_fd=parent.fd, dst_dir_fd=self.stage.fd)
            return _Kept(head, name, kept, True)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        self._clean(parent, head)
        kept = fsutil.temp_name()
        how(name, kept, src_dir_fd=parent.fd, dst_dir_fd=parent.fd)
        return _Kept(head, name, kept, False)

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def _clean(self, parent: Dir, head: str) -> None:
        """Remove what a killed swap kept beside the files of this folder (temp files of dead
        processes), once per folder: files are kept beside themselves only on another mount."""
        if head in self._cleaned:
            return
        self._cleaned.add(head)
        with contextlib.suppress(CasnapError):
            for name in parent.names():
                if fsutil.left_by_dead_process(name):
                    parent.unlink(name)


def _move(name: str, dest: str, *, src_dir_fd: int, dst_dir_fd: int) -> None:
    os.rename(name, dest, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
