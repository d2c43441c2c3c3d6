"""Private files and folders: what casnap writes into a repository is readable by its owner only.

A repository holds copies of everything in the data dir, including files the data dir hides from
other users. So every folder casnap creates there is 0700 and every file 0600: the mode is given
when the file or folder is created (never chmod afterwards), and a umask can only narrow it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

FILE_MODE = 0o600  # every file casnap writes into a repository (objects, locks, scratch files)
DIR_MODE = 0o700  # every folder, the repository root included


def opener(path: str, flags: int) -> int:
    """An `opener` for open(): a file it creates is 0600."""
    return os.open(path, flags | getattr(os, "O_CLOEXEC", 0), FILE_MODE)


def create_file(path: Path) -> None:
    """Create an empty 0600 file at a fresh path (FileExistsError when it exists), for a writer
    that opens the path itself (SQLite, shutil.copyfile) and then keeps that mode."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))


def make_dirs(path: Path) -> None:
    """mkdir -p path, every folder it creates 0700 and durable in its parent (fsynced);
    existing folders are left as they are."""
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
        fd = os.open(folder.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # a filesystem that cannot sync a folder
                raise
        finally:
            os.close(fd)


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
