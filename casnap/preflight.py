"""The checks a checkout makes before its first rename: every file it is about to replace, move
aside or remove can be, so a failure that can be foreseen (a folder this user may not write, a
file mounted over, an immutable file) refuses the checkout with nothing changed, instead of
stopping the swap part way (swap.py undoes what it did when a rename fails all the same).
"""

from __future__ import annotations

import os
import re
import stat
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from casnap import libc
from casnap.errors import AccessDenied, CasnapError, SourceError
from casnap.formats.sqlite import SQLITE_SIDE_SUFFIXES
from casnap.fsdir import Dir, Tree, split

IMMUTABLE_FL = 0x10  # chattr +i (FS_IMMUTABLE_FL, STATX_ATTR_IMMUTABLE): not even root renames it
APPEND_FL = 0x20  # chattr +a (FS_APPEND_FL, STATX_ATTR_APPEND): no rename or removal either
# statx(2), read without opening the file: flags, and where its struct holds the attributes
_NOFOLLOW, _EMPTY_PATH, _DONT_SYNC = 0x100, 0x1000, 0x4000
_ATTRIBUTES, _ATTRIBUTES_MASK = 8, 56
_MOUNTINFO = "/proc/self/mountinfo"


def check(tree: Tree, placing: Sequence[tuple[str, bool]], removing: Sequence[str]) -> None:
    """Refuse (AccessDenied or SourceError, one line naming the file and why) when a file of
    placing (path, whether its database's side files move aside) or removing cannot be
    replaced or removed by this user; nothing has been changed yet."""
    if not placing and not removing:
        return
    root = tree.root.path
    mounts = mounts_below(root)
    euid = os.geteuid()
    folders: dict[str, _Folder] = {}
    buf = statx_buffer()
    changing = [(rel, sides, "replace") for rel, sides in placing]
    changing += [(rel, True, "remove") for rel in removing]
    for rel, sides, verb in changing:
        head, name = split(rel)
        folder = folders.get(head)
        if folder is None:
            folder = folders[head] = _Folder(tree, head)
        if folder.why is not None:
            _refuse(AccessDenied, f"cannot {verb} {root / rel}: {folder.why}")
        if not folder.exists:  # a new folder, made in the one checked
            continue
        names = [name, *(name + s for s in SQLITE_SIDE_SUFFIXES)] if sides else [name]
        for n in names:
            st = folder.dir.lstat(n)
            if st is None:
                continue
            mounted = bool(mounts) and str(folder.dir.path / n) in mounts
            flags = attributes(folder.dir.fd, n, buf) if stat.S_ISREG(st.st_mode) else None
            whole = n == name and rel in tree.clearing  # a folder moved aside for a file
            why = refusal(st, folder.st, mounted, flags, euid, whole) or folder.attributes()
            if why is not None:
                what = f"{root / rel}" if n == name else f"{root / rel} (its {n})"
                _refuse(why[0], f"cannot {verb} {what}: {why[1]}")


class _Folder:
    """A folder files are placed in or removed from: the folder itself, or the innermost one
    above it that exists (the checkout writes there to make it), and why it refuses, if it does."""

    def __init__(self, tree: Tree, head: str) -> None:
        rel = head
        while (d := tree.dir(rel)) is None:
            rel = split(rel)[0]
        self.dir = d
        self.exists = rel == head
        self.st = os.fstat(d.fd)
        self.why = _folder_refusal(d)
        self._attributes: tuple[type[CasnapError], str] | None = None
        self._asked = False

    def attributes(self) -> tuple[type[CasnapError], str] | None:
        """Why its attributes forbid renaming over or removing a name in it, or None."""
        if not self._asked:
            self._asked = True
            flags = attributes(self.dir.fd)
            if flags is not None and flags & (IMMUTABLE_FL | APPEND_FL):
                what = "immutable" if flags & IMMUTABLE_FL else "append-only"
                self._attributes = (
                    AccessDenied,
                    f"its folder {self.dir.path} has the {what} attribute",
                )
        return self._attributes


def _refuse(kind: type[CasnapError], message: str) -> None:
    raise kind(f"{message}; nothing was changed")


def refusal(
    st: os.stat_result,
    folder: os.stat_result,
    mounted: bool,
    flags: int | None,
    euid: int,
    folder_too: bool = False,
) -> tuple[type[CasnapError], str] | None:
    """Why a rename cannot replace (or move, or remove) the file of lstat st in a folder of
    lstat folder (with the error to raise), or None: mounted says the mount table lists it as a
    mount point, flags are its attributes (None when unknown), euid the user who renames;
    folder_too: a folder may stand there (moved aside whole)."""
    if st.st_dev != folder.st_dev or mounted:
        return SourceError, "it is a mount point (a file mounted over it): no rename can replace it"
    if not stat.S_ISREG(st.st_mode) and not (folder_too and stat.S_ISDIR(st.st_mode)):
        return SourceError, "it is not a file"
    if flags is not None and flags & IMMUTABLE_FL:
        return AccessDenied, "it has the immutable attribute (lsattr shows i)"
    if flags is not None and flags & APPEND_FL:
        return AccessDenied, "it has the append-only attribute (lsattr shows a)"
    if folder.st_mode & stat.S_ISVTX and euid not in (0, st.st_uid, folder.st_uid):
        return AccessDenied, (
            f"it belongs to another user (uid {st.st_uid}) in a folder with the sticky bit"
        )
    return None


def _folder_refusal(folder: Dir) -> str | None:
    """Why this user cannot create, rename or remove names in folder, or None."""
    try:
        if os.access(".", os.W_OK | os.X_OK, dir_fd=folder.fd, effective_ids=_effective()):
            return None
        readonly = os.fstatvfs(folder.fd).f_flag & os.ST_RDONLY
    except OSError:
        return None  # cannot tell: the rename will say
    if readonly:
        return f"its folder {folder.path} lies on a read-only filesystem"
    return f"its folder {folder.path} is not writable by this user"


def _effective() -> bool:
    """Whether access must be asked for the effective ids (a set-id process); else the real
    ones are the same and the kernel answers directly (ACLs, read-only mounts, attributes)."""
    return (os.getuid(), os.getgid()) != (os.geteuid(), os.getegid()) and (
        os.access in os.supports_effective_ids
    )


def attributes(dir_fd: int, name: str = "", buf: Any = None) -> int | None:
    """The attributes (chattr) of name in the folder dir_fd (of the folder itself without a
    name) that its filesystem reports, from statx without opening it; None when unknown. buf:
    a 256-byte ctypes buffer to reuse (statx_buffer)."""
    call = _statx_call()
    if call is None:
        return None
    buf = buf if buf is not None else statx_buffer()
    flags = _NOFOLLOW | _DONT_SYNC | (0 if name else _EMPTY_PATH)
    if call(dir_fd, os.fsencode(name), flags, 0, buf) != 0:
        return None
    known = struct.unpack_from("=Q", buf, _ATTRIBUTES_MASK)[0]
    if not known & (IMMUTABLE_FL | APPEND_FL):
        return None
    return int(struct.unpack_from("=Q", buf, _ATTRIBUTES)[0] & known)


def statx_buffer() -> Any:
    """A buffer statx fills (struct statx is 256 bytes)."""
    import ctypes

    return ctypes.create_string_buffer(256)


def _statx_call() -> Callable[..., int] | None:
    """libc's statx (glibc 2.28, Linux 4.11), else None: the attributes are then not asked."""
    return libc.function("statx", "c_int", "c_char_p", "c_int", "c_uint", "c_void_p")


def mounts_below(root: Path, table: str | None = None) -> set[str]:
    """The mount points strictly below root, from the mount table (this process's, or table):
    a file of the same filesystem bind-mounted over another shows the same device."""
    if table is None:
        try:
            with open(_MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
                table = f.read()
        except OSError:
            return set()
    prefix = str(root).rstrip("/") + "/"
    found = set()
    for line in table.splitlines():
        fields = line.split(" ")
        if len(fields) < 5:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])
        if point.startswith(prefix):
            found.add(point)
    return found
