"""A backend on a local directory: every object written temp + fsync + link, so none is torn.

Every folder is created 0700 and every object 0600 (fsutil.py): the repository is
private to its owner.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from casnap.backends.base import Backend, check_key, check_prefix, check_range
from casnap.constants import TEMP_PREFIX
from casnap.directio import write_new
from casnap.errors import CasnapError, IntegrityError, ObjectMissing, from_oserror
from casnap.fsutil import FILE_MODE, fsync_dir, make_dirs, temp_name
from casnap.ids import ID_SIZE, is_hex_prefix
from casnap.signals import uninterrupted


def _pread(fd: int, length: int, offset: int, whole: bool = True) -> bytes:
    """Up to length bytes at offset (fewer only at the end of the file); with whole=False, one
    read call."""
    data = os.pread(fd, length, offset)
    if not whole or len(data) == length or not data:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _unreadable(exc: OSError) -> None:
    """os.walk's error hook: a folder that cannot be read fails the listing (passing over it
    would list its objects as gone); one removed while the walk ran has nothing to list."""
    if not isinstance(exc, FileNotFoundError):
        raise exc


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)

# Descriptors a backend keeps open at most while holding (see LocalBackend.holding); objects
# past them are opened and closed for each read, as outside it.
HELD_MAX = 64
# the repository's folders of objects: a file standing where one belongs is damage, not an empty
# folder (gc would take every pack for unused); another object listed as a folder holds nothing
OBJECT_FOLDERS = frozenset({"snapshots", "index", "packs", "locks", "keys"})


def _is_object_name(name: str) -> bool:
    """Whether name is one an object gets: its id, 64 lowercase hex digits."""
    return len(name) == 2 * ID_SIZE and is_hex_prefix(name)


class LocalBackend(Backend):
    """Objects as files under root; keys map to relative paths."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._root = str(self.root)
        self._held: dict[str, int] | None = None  # path -> descriptor, while holding
        self._held_prefix = ""
        self._unsynced: set[Path] | None = None  # folders deletes emptied, while deleting
        self._unsynced_lock = threading.Lock()

    @contextlib.contextmanager
    def deleting(self) -> Iterator[None]:
        """Within it, the folders deletes removed files from are synced once, when it ends (a
        gc of thousands of index files and packs paid a folder sync for each)."""
        with self._unsynced_lock:
            if self._unsynced is not None:  # nested: the outer one syncs
                outer = True
            else:
                outer, self._unsynced = False, set()
        if outer:
            yield
            return
        try:
            yield
        except BaseException:
            with contextlib.suppress(CasnapError):  # the failure that ended it comes first
                self._sync_unsynced()
            raise
        self._sync_unsynced()

    def _sync_unsynced(self) -> None:
        """Sync the folders deletes removed files from since deleting began; stop keeping them."""
        with self._unsynced_lock:
            folders, self._unsynced = self._unsynced or set(), None
        for folder in sorted(folders):
            try:
                fsync_dir(folder)
            except FileNotFoundError:  # removed meanwhile: nothing left to make durable
                continue
            except OSError as exc:
                raise from_oserror(exc, f"syncing {folder}") from exc

    @contextlib.contextmanager
    def holding(self, prefix: str) -> Iterator[None]:
        """Within it, an object under prefix opened for a ranged read stays open for the next
        (a restore reads thousands of ranges of a few dozen packs: an open, fstat and close for
        each cost twice the read); all are closed when it ends. The caller promises no object
        under prefix is replaced or removed meanwhile and that no read is under way when it ends
        (packs, under the repository's lock); each read still checks its range as outside."""
        if self._held is not None:  # nested: the outer one holds and closes
            yield
            return
        self._held, self._held_prefix = {}, check_prefix(prefix)
        try:
            yield
        finally:
            held, self._held = self._held, None
            for fd in held.values():
                os.close(fd)

    @property
    def location(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes | memoryview) -> bool:
        final = self._path(key)
        if final.exists():
            return False
        tmp = final.parent / temp_name()
        made = False
        try:
            try:
                make_dirs(final.parent)
            except (FileExistsError, NotADirectoryError) as exc:  # a file where a folder belongs
                where = Path(exc.filename) if exc.filename else final.parent
                msg = f"{where} is not a folder (damaged): cannot store {key}"
                raise IntegrityError(msg) from exc
            with uninterrupted():  # made and known, so the `finally` below removes it
                fd = os.open(tmp, _NEW_FILE, FILE_MODE)
                made = True
            try:
                write_new(fd, data)  # a pack past the page cache: see directio.py
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, final)  # atomic and never overwrites: put-if-absent
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                os.replace(tmp, final)  # filesystem without hard links: same content, same name
            fsync_dir(final.parent)
            return True
        except OSError as exc:
            raise from_oserror(exc, f"writing {final}") from exc
        finally:
            if made:  # never unlink a name this call did not create (nor fail on a read-only fs)
                try:
                    tmp.unlink()
                except FileNotFoundError:
                    pass

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        # os.open and pread on a str path: a restore makes thousands of small ranged reads, and
        # pathlib plus a buffered file object cost more than the read itself
        path = os.path.join(self._root, check_key(key))
        check_range(offset, length)
        held = self._held if length and key.startswith(self._held_prefix) else None
        fd = held.get(path, -1) if held is not None else -1
        if fd >= 0:
            data = _pread(fd, length or 0, offset)
        else:
            data = self._read(key, path, offset, length, held)
        if length is not None and len(data) != length:
            raise IntegrityError(
                f"{key} is truncated: wanted {length} bytes at offset {offset}, got {len(data)}"
            )
        return data

    def _read(
        self, key: str, path: str, offset: int, length: int | None, held: dict[str, int] | None
    ) -> bytes:
        """get's read of an object not held open: opened, checked to be a file, read, then
        closed, or kept in held (while holding) when the read succeeded."""
        try:  # without waiting: a FIFO in an object's place would wait for a writer forever
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | os.O_NONBLOCK)
            keep = False
            try:
                mode = os.fstat(fd).st_mode
                if stat.S_ISDIR(mode):
                    raise IsADirectoryError(errno.EISDIR, "is a directory", path)
                if not stat.S_ISREG(mode):
                    raise IntegrityError(f"{key} is not a regular file (damaged)")
                if not length:  # to the end, or nothing: a short read cannot show damage
                    size = os.fstat(fd).st_size
                    if offset > size:
                        raise IntegrityError(
                            f"{key} is truncated: wanted bytes from offset {offset}, "
                            f"it holds {size}"
                        )
                if length is None:
                    data = _pread(fd, size - offset, offset)
                    data += _pread(fd, 1 << 20, offset + len(data), whole=False)  # grown since
                else:
                    data = _pread(fd, length, offset)
                    if held is not None and len(held) < HELD_MAX:
                        # one descriptor per path: of two threads opening it, the second closes
                        # its own
                        keep = held.setdefault(path, fd) == fd
            finally:
                if not keep:
                    os.close(fd)
        except (FileNotFoundError, NotADirectoryError) as exc:  # not there, or below an object
            if os.path.islink(path):  # a link to nothing: listed, so damaged, never gone
                raise IntegrityError(f"{key} is a symbolic link to nothing (damaged)") from exc
            raise ObjectMissing(f"{key} is missing from the repository") from exc
        except IsADirectoryError as exc:
            raise IntegrityError(f"{key} is a directory, expected a file") from exc
        except OSError as exc:
            raise from_oserror(exc, f"reading {path}") from exc
        return data

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        folder = self.root / check_prefix(prefix).rstrip("/") if prefix else self.root
        try:
            mode = os.stat(folder).st_mode
        except (FileNotFoundError, NotADirectoryError):
            if not os.path.islink(folder):
                return  # no such folder: nothing stored there yet
            mode = 0  # a link to nothing (a disk not mounted)
        if not stat.S_ISDIR(mode):
            if stat.S_ISREG(mode) and prefix.rstrip("/") not in OBJECT_FOLDERS:
                return  # an object: not a folder
            # a folder that cannot be read (a link to nothing, a FIFO), never an empty one
            raise IntegrityError(
                f"{folder} is not a folder (damaged, or a link to a disk not mounted): "
                "its objects cannot be listed"
            )
        manifests = prefix.rstrip("/") == "snapshots"
        for dirpath, dirnames, filenames in os.walk(folder, onerror=_unreadable):
            dirnames.sort()
            rel = Path(dirpath).relative_to(self.root).as_posix()
            if manifests:  # a folder (or a link to one) in a manifest's place: listed, so damage
                named = [n for n in dirnames if _is_object_name(n)]
                dirnames[:] = [n for n in dirnames if n not in named]
                filenames = sorted([*filenames, *named])
            for name in sorted(filenames):
                if name.startswith(TEMP_PREFIX):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                path = os.path.join(dirpath, name)
                try:
                    size = os.stat(path).st_size
                except FileNotFoundError:
                    if not os.path.islink(path):
                        continue  # removed while the walk ran
                    size = 0  # a link to nothing: listed, so its read says it is damaged
                yield key, size

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):  # absent, or below an object: not there
            return
        except IsADirectoryError as exc:  # a folder in a manifest's place: removed when empty
            try:
                path.rmdir()
            except OSError:
                raise IntegrityError(
                    f"{path} is a folder holding files where an object belongs (damaged): "
                    "move it away"
                ) from exc
        except OSError as exc:
            raise from_oserror(exc, f"deleting {path}") from exc
        with self._unsynced_lock:
            if self._unsynced is not None:
                self._unsynced.add(path.parent)
                return
        fsync_dir(path.parent)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def temp_files(self, skip: str = "") -> builtins.list[Path]:
        """Leftover temp files of interrupted writes (safe to remove when no writer runs), in
        name order; skip: a folder (a prefix such as "locks/") whose temp files are left out."""
        below = self.root / skip if skip else None
        found = (p for p in self.root.rglob(f"{TEMP_PREFIX}*") if p.is_file())
        return sorted(p for p in found if below is None or below not in p.parents)
