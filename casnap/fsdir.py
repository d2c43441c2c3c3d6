"""Directories held open by descriptor, so no path component can be swapped between check and use.

A checkout target may belong to another user than the one running casnap (root restoring an app's
data dir). Every directory below the target is opened relative to its parent's descriptor with
O_NOFOLLOW, files are created, renamed and removed relative to those descriptors, so a directory
swapped for a symbolic link after it was checked can never redirect a write or a removal.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from casnap import libc
from casnap.errors import AccessDenied, CasnapError, HostileManifest, SourceError, from_oserror

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Directories kept open at once; others are opened again (still component by component) on use.
MAX_OPEN_FOLDERS = 256
# Descriptors a command holds besides folders: packs, pipes, threads' wake-ups, SQLite's files.
_OTHER_DESCRIPTORS = 48


def open_folder_budget() -> int:
    """Folders one part of a restore may hold open at once: MAX_OPEN_FOLDERS, or, under a low
    `ulimit -n` (a service started so), a third of what the limit leaves past the command's
    other descriptors, at least 4 (a stage holds up to 1.5 times this, a Tree this many more)."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return MAX_OPEN_FOLDERS
    return max(4, min(MAX_OPEN_FOLDERS, (soft - _OTHER_DESCRIPTORS) // 3))


def fsync_fd(fd: int, what: str) -> None:
    """fsync, turning a failure into a CasnapError; EINVAL (a filesystem that cannot sync a
    directory) is not a failure."""
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise from_oserror(exc, f"syncing {what}") from exc


_RENAME_NOREPLACE = 1  # renameat2's flag: fail with EEXIST rather than replace


def rename_noreplace(src_fd: int, name: str, dst_fd: int, new_name: str) -> None:
    """Rename name (in the folder src_fd) to new_name (in dst_fd), FileExistsError when anything
    stands there: atomic with renameat2 (a plain rename replaces an empty folder, and anything
    an app wrote through a descriptor of it would be lost with it); where the kernel or the
    filesystem has none, by a look first."""
    call = libc.function("renameat2", "c_int", "c_char_p", "c_int", "c_char_p", "c_uint")
    if call is not None:
        if call(src_fd, os.fsencode(name), dst_fd, os.fsencode(new_name), _RENAME_NOREPLACE) == 0:
            return
        code = libc.last_errno()
        if code not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(code, os.strerror(code), new_name)
    try:
        os.lstat(new_name, dir_fd=dst_fd)
    except FileNotFoundError:
        os.rename(name, new_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        return
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), new_name)


# what a rename meets when the other kind of entry stands at its destination
_IN_THE_WAY = frozenset({errno.EISDIR, errno.ENOTDIR, errno.ENOTEMPTY, errno.EEXIST})
# the way forward when an entry of the other kind stands where a checkout restores one
IN_THE_WAY_HINT = "move it away, or check out into another folder (--to)"


class Dir:
    """One open directory; names given to its methods are single path components."""

    __slots__ = ("fd", "path")

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path  # for messages only: never used to reach the directory

    @classmethod
    def open(cls, path: Path) -> Dir:
        """Open an existing directory by its absolute path, component by component from `/`,
        none of them followed if it is a symbolic link (resolve_trusted first, to follow the
        links a user may rely on)."""
        try:
            fd = os.open("/", _DIR_FLAGS)
        except OSError as exc:
            raise from_oserror(exc, "opening /") from exc
        for part in Path(os.path.abspath(path)).parts[1:]:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise HostileManifest(
                        f"{path} is not a directory reached without symbolic links (a folder "
                        "on the way was replaced)"
                    ) from exc
                raise from_oserror(exc, f"opening {path}") from exc
            os.close(fd)
            fd = nxt
        return cls(fd, path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Dir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def proc(self, name: str = "") -> Path:
        """A path that reaches name inside this very directory (for libraries that take paths)."""
        base = Path(f"/proc/self/fd/{self.fd}")
        return base / name if name else base

    def lstat(self, name: str) -> os.stat_result | None:
        """lstat of name, None when absent."""
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:  # a side file of a name near NAME_MAX
                return None
            raise from_oserror(exc, f"reading {self.path / name}") from exc

    def sub(self, name: str) -> Dir | None:
        """The subdirectory name, None when absent; HostileManifest when it is anything but a
        real directory (a symbolic link above all)."""
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                st = self.lstat(name)
                if st is None or stat.S_ISLNK(st.st_mode):  # O_DIRECTORY may say ENOTDIR for one
                    raise HostileManifest(
                        f"{self.path / name} is a symbolic link, which casnap never writes "
                        f"through: {IN_THE_WAY_HINT} (what it points to is left alone)"
                    ) from exc
                raise SourceError(
                    f"{self.path / name} exists and is not a folder, where a folder is to be "
                    f"restored: {IN_THE_WAY_HINT}"
                ) from exc
            raise from_oserror(exc, f"opening {self.path / name}") from exc
        return Dir(fd, self.path / name)

    def mkdir(self, name: str, mode: int, owner: tuple[int, int] | None = None) -> None:
        """Create a subdirectory with exactly mode (whatever the umask) and, when given, owner;
        durable in this dir."""
        try:
            os.mkdir(name, 0o700, dir_fd=self.fd)
        except OSError as exc:
            raise from_oserror(exc, f"creating {self.path / name}") from exc
        with Dir(os.open(name, _DIR_FLAGS, dir_fd=self.fd), self.path / name) as d:
            try:
                if owner is not None:
                    os.chown(d.fd, *owner)
                os.chmod(d.fd, mode & 0o7777)
            except OSError as exc:
                raise from_oserror(exc, f"creating {d.path}") from exc
        self.fsync()

    def open_file(self, name: str, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
        """A descriptor of the file name (never through a symbolic link)."""
        try:
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=self.fd)
        except OSError as exc:
            raise from_oserror(exc, f"opening {self.path / name}") from exc

    def unlink(self, name: str, missing_ok: bool = True) -> bool:
        """Remove the file name; True when something was removed."""
        try:
            os.unlink(name, dir_fd=self.fd)
            return True
        except FileNotFoundError:
            if missing_ok:
                return False
            raise
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG and missing_ok:  # cannot exist
                return False
            raise from_oserror(exc, f"removing {self.path / name}") from exc

    def rmdir(self, name: str) -> None:
        os.rmdir(name, dir_fd=self.fd)

    def rename(self, name: str, dest: Dir, new_name: str, temp: Callable[[], str]) -> None:
        """Atomically move name in this dir to new_name in dest (replacing a file there).

        Across mount points (a bind mount, a filesystem mounted on a folder of the target) a
        rename fails with EXDEV: the file is then copied into dest under a name temp() gives
        (one that names this process and host, so a later run removes it once this one was
        killed), made durable, and renamed within dest, which is atomic there too."""
        try:
            os.replace(name, new_name, src_dir_fd=self.fd, dst_dir_fd=dest.fd)
        except OSError as exc:
            if exc.errno in _IN_THE_WAY:  # a folder where a file goes, or the other way round
                raise SourceError(
                    f"cannot restore {dest.path / new_name}: a folder stands where a file goes, "
                    f"or a file where a folder goes; {IN_THE_WAY_HINT}"
                ) from exc
            if exc.errno != errno.EXDEV:
                raise from_oserror(exc, f"renaming into {dest.path / new_name}") from exc
            self._copy_across(name, dest, new_name, temp())

    def move_new(self, name: str, dest: Dir, new_name: str) -> None:
        """Move name (a folder) to new_name in dest, where nothing may stand (SourceError)."""
        try:
            rename_noreplace(self.fd, name, dest.fd, new_name)
        except FileExistsError as exc:
            raise SourceError(
                f"cannot restore {dest.path / new_name}: it appeared during the checkout (an "
                "app making it?); check out again"
            ) from exc
        except OSError as exc:
            raise from_oserror(exc, f"renaming into {dest.path / new_name}") from exc

    def _copy_across(self, name: str, dest: Dir, new_name: str, tmp: str) -> None:
        src = self.open_file(name)
        try:
            st = os.fstat(src)
            out = dest.open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                offset = 0
                while sent := os.sendfile(out, src, offset, 1 << 24):
                    offset += sent
                os.fchmod(out, stat.S_IMODE(st.st_mode))
                os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
                if os.geteuid() == 0:
                    os.fchown(out, st.st_uid, st.st_gid)
                os.fsync(out)
            finally:
                os.close(out)
            os.replace(tmp, new_name, src_dir_fd=dest.fd, dst_dir_fd=dest.fd)
        except OSError as exc:
            dest.unlink(tmp)
            raise from_oserror(exc, f"copying into {dest.path / new_name}") from exc
        finally:
            os.close(src)
        self.unlink(name)

    def link(self, name: str, dest: Dir, new_name: str) -> None:
        """A hard link new_name in dest to the file name in this dir."""
        try:
            os.link(name, new_name, src_dir_fd=self.fd, dst_dir_fd=dest.fd, follow_symlinks=False)
        except OSError as exc:
            raise from_oserror(exc, f"linking {dest.path / new_name}") from exc

    def names(self) -> list[str]:
        try:
            return sorted(os.listdir(self.fd))
        except OSError as exc:
            raise from_oserror(exc, f"listing {self.path}") from exc

    def fsync(self) -> None:
        fsync_fd(self.fd, str(self.path))


def resolve_trusted(path: Path) -> Path:
    """The absolute path path names, its symbolic links followed only when they belong to the
    user running casnap or to root: a link another user placed on the way (in a folder they
    own) could otherwise redirect a checkout run as root into any folder. HostileManifest
    names such a link."""
    me = os.geteuid()
    todo = list(Path(os.path.abspath(path)).parts[1:])
    resolved = Path("/")
    hops = 0
    while todo:
        name = todo.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            resolved = resolved.parent
            continue
        candidate = resolved / name
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            return candidate.joinpath(*todo)
        except NotADirectoryError as exc:  # a file on the way: the same mistake as a file there
            raise SourceError(f"{path} cannot be a folder: {resolved} is not a directory") from exc
        except OSError as exc:
            raise from_oserror(exc, f"reading {candidate}") from exc
        if not stat.S_ISLNK(st.st_mode):
            resolved = candidate
            continue
        if st.st_uid not in (0, me):
            raise HostileManifest(
                f"{candidate} is a symbolic link owned by another user (uid {st.st_uid}); "
                "give the folder it points to instead"
            )
        hops += 1
        if hops > 40:
            raise HostileManifest(f"{path}: too many levels of symbolic links")
        link = Path(os.readlink(candidate))
        if link.is_absolute():
            resolved = Path("/")
            todo = list(link.parts[1:]) + todo
        else:
            todo = list(link.parts) + todo
    return resolved


def split(rel: str) -> tuple[str, str]:
    """("a/b", "c") for "a/b/c"; ("", "c") for "c"."""
    head, _, name = rel.rpartition("/")
    return head, name


class Tree:
    """Directories below one held root, opened on demand component by component.

    Missing directories can be created (mode and owner chosen per relative path by `dir_attrs`);
    the ones created are remembered so a failed operation can remove them again, innermost first.
    """

    def __init__(
        self,
        root: Dir,
        dir_attrs: Callable[[str], tuple[int, tuple[int, int] | None]] | None = None,
    ) -> None:
        self.root = root
        self.dir_attrs = dir_attrs or (lambda _rel: (0o700, None))
        self.created: list[str] = []
        self._open: OrderedDict[str, Dir] = OrderedDict()
        self._max_open = open_folder_budget()
        # files a full checkout removes that stand where its snapshot has a folder: taken for
        # absent folders until the swap moves them aside; and folders standing where it has a
        # file, holding only files it removes: moved aside whole
        self.vacating: set[str] = set()
        self.clearing: set[str] = set()

    def close(self) -> None:
        for d in self._open.values():
            d.close()
        self._open.clear()

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def dir(self, rel: str, create: bool = False) -> Dir | None:
        """The directory rel ("" for the root); None when missing and not created."""
        if not rel:
            return self.root
        cached = self._open.get(rel)
        if cached is not None:
            self._open.move_to_end(rel)
            return cached
        head, name = split(rel)
        parent = self.dir(head, create)
        if parent is None:
            return None
        if rel in self.vacating and not create:
            return None
        found = parent.sub(name)
        if found is None:
            if not create:
                return None
            parent.mkdir(name, *self.dir_attrs(rel))
            self.created.append(rel)
            found = parent.sub(name)
            if found is None:
                raise CasnapError(f"{parent.path / name} vanished as it was created")
        self._open[rel] = found
        while len(self._open) > self._max_open:
            _, old = self._open.popitem(last=False)
            old.close()
        return found

    def drop(self, rel: str) -> None:
        """Close the folders open at or below rel (moved away)."""
        for key in [k for k in self._open if k == rel or k.startswith(rel + "/")]:
            self._open.pop(key).close()

    def parent_of(self, rel: str, create: bool = False) -> tuple[Dir | None, str]:
        """(the directory holding rel, its last component)."""
        head, name = split(rel)
        return self.dir(head, create), name

    def undo_created(self) -> None:
        """Remove the directories this tree created (those still empty), innermost first."""
        for rel in reversed(self.created):
            parent, name = self.parent_of(rel)
            if parent is not None:
                self._open.pop(rel, None)
                with contextlib.suppress(OSError):
                    parent.rmdir(name)
        self.created.clear()

    def walk(
        self,
        rel: str = "",
        skip: Callable[[str, str, os.stat_result], bool] | None = None,
        denied: list[AccessDenied] | None = None,
        leave: Callable[[str], bool] | None = None,
    ) -> Iterator[tuple[str, os.stat_result]]:
        """(relative path, lstat) of every entry below rel, sorted, without following symbolic
        links; a directory comes before what it holds. skip(path, name, lstat) leaves an entry
        out (and, for a directory, all it holds); leave(path) does so before its lstat (which a
        folder that may be listed, not entered, refuses). A folder below rel that may not be
        opened raises AccessDenied, or, given denied, is added to it and passed over."""
        d = self.dir(rel)
        if d is not None:
            yield from _walk(d, rel, _Filters(skip, denied, leave))


class _Filters(NamedTuple):
    skip: Callable[[str, str, os.stat_result], bool] | None
    denied: list[AccessDenied] | None
    leave: Callable[[str], bool] | None


def _walk(d: Dir, rel: str, f: _Filters) -> Iterator[tuple[str, os.stat_result]]:
    for name in d.names():
        path = f"{rel}/{name}" if rel else name
        if f.leave is not None and f.leave(path):
            continue
        st = d.lstat(name)
        if st is None or (f.skip is not None and f.skip(path, name, st)):
            continue
        yield path, st
        if stat.S_ISDIR(st.st_mode):
            try:
                sub = d.sub(name)
            except (HostileManifest, SourceError):
                continue  # swapped for a link or a file meanwhile: not ours to follow
            except AccessDenied as exc:
                if f.denied is None:
                    raise
                f.denied.append(exc)
                continue
            if sub is not None:
                with sub:
                    yield from _walk(sub, path, f)


def remove_tree(parent: Dir, name: str) -> None:
    """Remove the folder name in parent and all it holds, never following a symbolic link;
    folders made read-only inside it (by a smoke command) are made writable first."""
    try:
        d = parent.sub(name)
    except (HostileManifest, SourceError):
        parent.unlink(name)
        return
    if d is None:
        return
    with d:
        with contextlib.suppress(OSError):
            os.chmod(d.fd, 0o700)
        for child in d.names():
            st = d.lstat(child)
            if st is not None and stat.S_ISDIR(st.st_mode):
                remove_tree(d, child)
            else:
                d.unlink(child)
    parent.rmdir(name)
