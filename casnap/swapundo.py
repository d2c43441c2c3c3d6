"""What a checkout's swap changes, kept so that a rename failing part way can be undone.

Before the first rename each file about to be replaced is hard-linked into the staging dir (or,
where that is another mount, beside itself under a temp name), and a database's stale `-wal`,
`-shm` and `-journal` are moved aside there instead of removed. Every step is recorded; `undo`
takes them back in reverse order (an old database back in place before its side files), `done`
removes what was kept once every file is in. A kill leaves every path its old or its new file.
A folder moved in whole is taken back file by file: only the files still as restored (the same
inode, size and mtime, and no SQLite side file beside them that no snapshot file is) are
removed, and its folders once empty, so whatever an app wrote there meanwhile stays. So is a
file the target lacked, renamed in alone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Collection, Sequence
from typing import NamedTuple

from casnap import fsutil
from casnap.errors import CasnapError, from_oserror
from casnap.formats.sqlite import SQLITE_SIDE_SUFFIXES
from casnap.fsdir import Dir, Tree, remove_tree, split
from casnap.manifest import FileEntry

# names in the staging dir's root no staged file can take: a manifest path holds no backslash
_OLD, _SIDE = "\\old-", "\\side-"


class _Kept(NamedTuple):
    """A file kept for the undo: its folder (relative to the target) and name there, and the
    name it is kept under, in the staging dir's root or (in_stage False) beside it."""

    head: str
    name: str
    kept: str
    in_stage: bool


class Moving(NamedTuple):
    """A staged folder moved in whole: the folders in it, itself first (outermost first), and
    the inode of every file in it (all paths relative to the target)."""

    folders: list[str]
    files: dict[str, int]


class Journal:
    """The steps of one swap, and what it keeps to take them back. entries: those of the files
    placed (what a file in a folder moved in looks like while still as restored)."""

    def __init__(self, tree: Tree, stage: Dir, entries: Sequence[FileEntry]) -> None:
        self.tree = tree
        self.stage = stage
        self.entries = entries
        self._shapes: dict[str, tuple[int, int]] | None = None  # path -> size, mtime (undo)
        self.written: list[str] = []  # files the undo left as an app wrote them since
        self.steps: list[tuple[str, str, _Kept | Moving | int | None]] = []
        self.old: dict[str, _Kept] = {}  # path -> its old version, kept
        self.unkept: set[str] = set()  # paths whose old version could not be kept (no link)
        self.side: list[_Kept] = []  # side files moved aside
        self._count = 0
        self._cleaned: set[str] = set()  # folders whose leftovers of killed runs were removed

    # -- before the first rename -----------------------------------------------------------------

    def keep_old(self, rel: str) -> bool:
        """Hard-link the file at rel, if there is one, so it can be put back; False when it
        exists and no link could be made (a filesystem without hard links, a file this user
        may not link under fs.protected_hardlinks): its replacement cannot be undone."""
        head, name = split(rel)
        parent = self.tree.dir(head)
        if parent is None:
            return True
        try:
            self.old[rel] = self._keep(parent, head, name, _OLD, _link)
        except FileNotFoundError:
            return True  # nothing there to replace
        except OSError:
            self.unkept.add(rel)
            return False
        return True

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

    def placed(self, parent: Dir, rel: str) -> None:
        """rel was renamed into place: its inode, so the undo touches only that very file."""
        st = parent.lstat(split(rel)[1])
        self.steps.append(("file", rel, st.st_ino if st is not None else None))

    def folder_moved(self, rel: str, moving: Moving) -> None:
        self.steps.append(("folder", rel, moving))

    def changed(self) -> bool:
        """Whether a file or folder was put in place (not only side files moved aside)."""
        return any(kind != "aside" for kind, _, _ in self.steps)

    def done(self) -> None:
        """Every file is in: remove the side files moved aside and the old versions kept
        beside their files (those in the staging dir go with it)."""
        for kept in [*self.side, *(k for k in self.old.values() if not k.in_stage)]:
            where = self.stage if kept.in_stage else self.tree.dir(kept.head)
            if where is not None:
                with contextlib.suppress(CasnapError, OSError):
                    st = where.lstat(kept.kept)
                    if st is not None and stat.S_ISDIR(st.st_mode):
                        remove_tree(where, kept.kept)  # a folder moved aside for a file
                    else:
                        where.unlink(kept.kept)

    # -- a failure part way ----------------------------------------------------------------------

    def undo(self) -> list[str]:
        """Take every step back, newest first; the paths that could not be put back."""
        failed: list[str] = []
        for kind, rel, what in reversed(self.steps):
            try:
                if kind == "folder":
                    assert isinstance(what, Moving)
                    failed += self._take_out(what)
                elif not self._back(kind, rel, what):
                    failed.append(rel)
            except (OSError, CasnapError):
                failed.append(rel)
        self._drop_unused_old()
        with contextlib.suppress(OSError, CasnapError):
            for head in sorted({split(rel)[0] for _, rel, _ in self.steps}):
                d = self.tree.dir(head)
                if d is not None:
                    d.fsync()
        self.steps.clear()
        return failed

    def _drop_unused_old(self) -> None:
        """Remove the old versions kept beside files the swap never reached: each is a second
        link to the file still in place (the same inode), so nothing is lost. One that is the
        only copy left of a file (its put-back failed) stays."""
        for kept in self.old.values():
            if kept.in_stage:
                continue  # goes with the staging dir
            parent = self.tree.dir(kept.head)
            if parent is None:
                continue
            with contextlib.suppress(OSError, CasnapError):
                was, now = parent.lstat(kept.kept), parent.lstat(kept.name)
                if was is not None and now is not None and was.st_ino == now.st_ino:
                    parent.unlink(kept.kept)

    def _take_out(self, moving: Moving) -> list[str]:
        """A folder moved in, taken back: each of its files still as restored removed, then
        each of its folders left empty; returns the files that were changed meanwhile (left,
        with what an app made of them). A file an app put in their place, or beside them,
        stays."""
        changed = []
        for rel, ino in moving.files.items():
            head, name = split(rel)
            parent = self.tree.dir(head)
            st = parent.lstat(name) if parent is not None else None
            if parent is None or st is None or st.st_ino != ino:
                continue  # gone, or another file now: not this swap's
            if not self._as_restored(parent, rel, st):
                changed.append(rel)  # written since it was restored: left as written
                self.written.append(rel)
                continue
            parent.unlink(name)
        for folder in reversed(moving.folders):  # innermost first
            head, name = split(folder)
            parent = self.tree.dir(head)
            if parent is not None:
                with contextlib.suppress(OSError):
                    parent.rmdir(name)  # only when empty: what else is there stays
        return changed

    def _back(self, kind: str, rel: str, what: _Kept | Moving | int | None) -> bool:
        head, name = split(rel)
        parent = self.tree.dir(head)
        if parent is None:
            return False
        if kind == "aside":
            assert isinstance(what, _Kept)
            source = self.stage if what.in_stage else parent
            os.rename(what.kept, name, src_dir_fd=source.fd, dst_dir_fd=parent.fd)
            return True
        now = parent.lstat(name)
        if now is not None and now.st_ino != what:
            return False  # not the file this swap put there: left alone
        old = self.old.get(rel)
        if old is not None:
            source = self.stage if old.in_stage else parent
            os.rename(old.kept, name, src_dir_fd=source.fd, dst_dir_fd=parent.fd)
            return True
        if rel in self.unkept:
            return False
        if now is not None:
            if not self._as_restored(parent, rel, now):
                self.written.append(rel)  # written since it was restored: left as written
                return False
            parent.unlink(name)  # the target had no file there
        return True

    def _as_restored(self, parent: Dir, rel: str, st: os.stat_result) -> bool:
        """Whether the file at rel (st, in parent) is still as this swap restored it: the size
        and mtime of its entry, and no SQLite side file beside it that is no entry's (an app
        opened it as a database: what it committed since is in its -wal or -journal)."""
        if self._shapes is None:
            self._shapes = {e.path: (e.size, e.mtime_ns) for e in self.entries}
        if (st.st_size, st.st_mtime_ns) != self._shapes.get(rel):
            return False
        name = split(rel)[1]
        return not any(
            rel + suffix not in self._shapes and parent.lstat(name + suffix) is not None
            for suffix in SQLITE_SIDE_SUFFIXES
        )

    # -- keeping -------------------------------------------------------------------------------

    def _keep(
        self, parent: Dir, head: str, name: str, prefix: str, how: Callable[..., None]
    ) -> _Kept:
        """Link or move name into the staging dir, else (another mount) beside itself under a
        temp name; OSError when neither can be done."""
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


def _link(name: str, dest: str, *, src_dir_fd: int, dst_dir_fd: int) -> None:
    os.link(name, dest, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=False)


def _move(name: str, dest: str, *, src_dir_fd: int, dst_dir_fd: int) -> None:
    os.rename(name, dest, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)


def explain(
    exc: BaseException,
    root: object,
    failed: Collection[str],
    changed: bool,
    written: Collection[str] = (),
) -> None:
    """Add to a swap's error what became of the target: left as it was (the files already
    swapped in put back), or which files could not be put back (of failed), and which were left
    as an app wrote them after they were restored (written, also in failed)."""
    if not (isinstance(exc, CasnapError) and len(exc.args) == 1 and isinstance(exc.args[0], str)):
        return
    if not failed:
        what = "the files already swapped in were put back" if changed else "nothing was changed"
        exc.args = (f"{exc.args[0]}; {what}, {root} left as it was",)
        return
    stuck = sorted(set(failed) - set(written))
    said = []
    if stuck:
        said.append(
            f"{len(stuck)} file(s) of {root} could not be put back as they were ({_names(stuck)}) "
            "and hold what the checkout restored"
        )
    if written:
        said.append(
            f"{len(written)} file(s) of {root} written since restored (an app at work there?) "
            f"were left as written ({_names(sorted(written))})"
        )
    exc.args = (
        f"{exc.args[0]}; {'; '.join(said)}, the others put back; rerun the checkout to complete it",
    )


def _names(paths: list[str]) -> str:
    return ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
