"""A backend on a local directory: every object written temp + fsync + link, so none is torn.

Every folder is created 0700 and every object 0600 (casnap/private.py): the repository is
private to its owner.
"""

from __future__ import annotations

import builtins
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from casnap.backends.base import Backend, check_key, check_prefix, check_range
from casnap.constants import TEMP_PREFIX
from casnap.errors import IntegrityError, ObjectMissing, from_oserror
from casnap.fsutil import fsync_dir, make_dirs, opener, temp_name


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


class LocalBackend(Backend):
    """Objects as files under root; keys map to relative paths."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._root = str(self.root)

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
            make_dirs(final.parent)
            with open(tmp, "xb", opener=opener) as f:
                made = True
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
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
        try:  # without waiting: a FIFO in an object's place would wait for a writer forever
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | os.O_NONBLOCK)
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
            finally:
                os.close(fd)
        except (FileNotFoundError, NotADirectoryError) as exc:  # not there, or below an object
            raise ObjectMissing(f"{key} is missing from the repository") from exc
        except IsADirectoryError as exc:
            raise IntegrityError(f"{key} is a directory, expected a file") from exc
        except OSError as exc:
            raise from_oserror(exc, f"reading {path}") from exc
        if length is not None and len(data) != length:
            raise IntegrityError(
                f"{key} is truncated: wanted {length} bytes at offset {offset}, got {len(data)}"
            )
        return data

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        folder = self.root / check_prefix(prefix).rstrip("/") if prefix else self.root
        if not folder.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(folder, onerror=_unreadable):
            dirnames.sort()
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in sorted(filenames):
                if name.startswith(TEMP_PREFIX):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                try:
                    size = os.stat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:
                    continue
                yield key, size

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):  # absent, or below an object: not there
            return
        except OSError as exc:
            raise from_oserror(exc, f"deleting {path}") from exc
        fsync_dir(path.parent)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def temp_files(self) -> builtins.list[Path]:
        """Leftover temp files of interrupted writes (safe to remove when no writer runs)."""
        return [p for p in self.root.rglob(f"{TEMP_PREFIX}*") if p.is_file()]
