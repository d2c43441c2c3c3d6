"""A backend that keeps a local copy of the objects read often and never changed.

Object storage charges latency (and money) per request, and commands that only read metadata
(`log`, `show`, `diff`, a commit that finds nothing new) would fetch every index file and
manifest again on each run. `CachingBackend` keeps, in a folder of the user's cache dir, a copy
of each index file (`index/...`) and manifest (`snapshots/...`) read whole or stored, and of the
ranged reads that reach a pack's directory: a read of a pack from an offset to its end (its tail,
which holds the directory and trailer) and a short read at a pack's start (an encrypted pack's
header). Config, locks, key files and pack data pass through untouched.

Every cache file carries the BLAKE3 of its key, kind, offset and bytes, checked on every read: a
file that does not match, or cannot be read, is removed and the object fetched again, never an
error. A missing cache (or part of it) is only a miss, so the folder is safe to delete at any time.
A listing always asks the backend below, and removes the cached copies of keys of that folder it
no longer lists (an object another process deleted). The cache holds what the backend below
returns: below an EncryptedBackend, sealed bytes only.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

from casnap import fsutil
from casnap.backends.base import (
    Backend,
    Wrapper,
    check_key,
    check_prefix,
    check_range,
    checked_prefixes,
)
from casnap.constants import TEMP_PREFIX
from casnap.errors import CasnapError
from casnap.ids import Hasher, hash_bytes

SNAPSHOTS = "snapshots/"
WHOLE_PREFIXES = ("index/", SNAPSHOTS)  # read whole, kept whole
PACKS = "packs/"
HEAD_MAX = 64  # a ranged read at a pack's start of at most this many bytes is kept (its header)
TAIL_MAX = 32 * 1024 * 1024  # a longer read to a pack's end passes through (a directory is less)

_WHOLE, _TAIL, _HEAD = 0, 1, 2
_SUFFIX = {_WHOLE: "", _TAIL: ".tail", _HEAD: ".head"}
_MAGIC = b"CASNCACH"
_VERSION = 1
# magic, version, kind, offset of the bytes in the object, BLAKE3 of (key, kind, offset, bytes)
_FILE_HEADER = struct.Struct("<8sBBQ32s")
_SAFE_ID = re.compile(r"[0-9A-Za-z_-]{1,128}")


def cache_dir_for(repo_id: str) -> Path:
    """The cache folder of the repository with this id (from its config): `repos/<id>` in the
    user's cache dir; an id that is not a plain name is hashed, so it cannot name another path."""
    name = repo_id if _SAFE_ID.fullmatch(repo_id) else hash_bytes(repo_id.encode()).hex()[:32]
    return fsutil.cache_dir() / "repos" / name


def opened_cache(backend: Backend) -> CachingBackend:
    """Where the config and key file an open of backend's location used are kept, so the next
    open there fetches neither (see opening.py)."""
    return CachingBackend(backend, opened_cache_dir(backend.location))


def opened_cache_dir(location: str) -> Path:
    """`locations/<hash of the location>` in the user's cache dir. An s3:// location on another
    store than AWS is hashed with its endpoint: two stores may each hold a bucket of that name."""
    if location.startswith("s3://"):
        from casnap.locations import endpoint  # read from the environment: no S3 client needed

        url = endpoint()
        location = location if url is None else f"{location}\0{url}"
    return fsutil.cache_dir() / "locations" / hash_bytes(location.encode()).hex()[:32]


def _digest(key: str, kind: int, offset: int, data: bytes | memoryview) -> bytes:
    h = Hasher()
    h.update(f"{kind}:{offset}:{key}\0".encode())
    h.update(data)
    return bytes(h.digest())


class CachingBackend(Wrapper):
    """inner, with index files, manifests and pack directories kept in cache_dir (see the module
    docstring). Holds nothing in memory but its two arguments, so calls from several threads need
    no lock: each cache file is written to a temp file and renamed into place whole."""

    def __init__(self, inner: Backend, cache_dir: Path) -> None:
        self.inner = inner
        self.cache_dir = Path(cache_dir)

    # -- the backend calls ---------------------------------------------------------------------

    def put(self, key: str, data: bytes | memoryview) -> bool:
        stored = self.inner.put(key, data)
        if stored:  # the key was absent: a copy kept from before (deleted elsewhere) is stale
            self._drop(key)
            if check_key(key).startswith(WHOLE_PREFIXES):  # the next `log` needs no fetch
                self._store(key, _WHOLE, 0, bytes(data))
        return stored

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        check_key(key)
        check_range(offset, length)
        if key.startswith(WHOLE_PREFIXES):
            if offset == 0 and length is None:
                return self._whole(key)
        elif key.startswith(PACKS):
            if offset == 0 and length is not None and 0 < length <= HEAD_MAX:
                return self._head(key, length)
            if offset > 0:
                return self._tail(key, offset, length)
        return self.inner.get(key, offset, length)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        return self._listing([check_prefix(prefix)], self.inner.list(prefix))

    def list_several(self, prefixes: Sequence[str]) -> Iterator[tuple[str, int]]:
        folders = checked_prefixes(prefixes)
        return self._listing(folders, self.inner.list_several(folders))

    def _listing(
        self, folders: Sequence[str], listing: Iterator[tuple[str, int]]
    ) -> Iterator[tuple[str, int]]:
        """listing of the folders, passed on; once it has ended, the copies kept of keys in
        those folders that it did not name are dropped (another process deleted them). A
        manifest among them is looked up first: found stored, the listing left it out, and a
        command trusting it would take that snapshot for forgotten (gc would delete its data),
        so it stops (CasnapError) instead."""
        stale: set[str] = set()
        for folder in folders:
            stale |= self._cached_keys(folder)
        for key, size in listing:
            stale.discard(key)
            yield key, size
        for key in sorted(stale):  # the whole folder was listed: these objects are gone
            if key.startswith(SNAPSHOTS) and self.inner.exists(key):
                raise CasnapError(
                    f"the listing of {SNAPSHOTS} in {self.location} left out {key}, which is "
                    "stored: the store's listings are incomplete, so nothing that relies on "
                    "them (gc, prune, forget, latest) can be trusted; nothing was changed"
                )
            self._drop(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)
        self._drop(check_key(key))

    def remove(self, key: str) -> bool:
        present = self.inner.remove(key)
        self._drop(check_key(key))
        return present

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def close(self) -> None:
        self.inner.close()

    # -- what is kept --------------------------------------------------------------------------

    def kept(self, key: str) -> bytes | None:
        """The copy of key kept whole (checked), or None."""
        found = self._load(check_key(key), _WHOLE)
        return found[1] if found is not None and found[0] == 0 else None

    def keep(self, key: str, data: bytes) -> None:
        """Keep a copy of key whole (for objects this class does not keep by itself)."""
        self._store(check_key(key), _WHOLE, 0, data)

    def has_kept(self, key: str) -> bool:
        """Whether a copy of key is kept whole (not checked: `kept` checks it)."""
        return fsutil.is_cached(self._path(check_key(key), _WHOLE))

    def drop(self, key: str) -> None:
        """Drop every copy kept of key."""
        self._drop(check_key(key))

    def kept_keys(self, prefix: str) -> set[str]:
        """The keys with a copy kept under the folder prefix."""
        return self._cached_keys(check_prefix(prefix))

    def forget(self) -> None:
        """Drop every copy kept (the cache folder removed)."""
        shutil.rmtree(self.cache_dir, ignore_errors=True)

    def _whole(self, key: str) -> bytes:
        kept = self._load(key, _WHOLE)
        if kept is not None and kept[0] == 0:
            return kept[1]
        data = self.inner.get(key)
        self._store(key, _WHOLE, 0, data)
        return data

    def _head(self, key: str, length: int) -> bytes:
        kept = self._load(key, _HEAD)
        if kept is not None and kept[0] == 0 and len(kept[1]) >= length:
            return kept[1][:length]
        data = self.inner.get(key, 0, length)
        self._store(key, _HEAD, 0, data)
        return data

    def _tail(self, key: str, offset: int, length: int | None) -> bytes:
        """A ranged read of a pack from offset > 0: served from the kept tail when it covers the
        range; a read to the end that it does not cover is fetched and kept in its place."""
        start = self._kept_start(key, _TAIL)  # the header alone: most reads are frames before it
        if start is not None and offset >= start:
            kept = self._load(key, _TAIL)
            if kept is not None:
                start, data = kept
                rel = offset - start
                if 0 <= rel <= len(data) and (length is None or rel + length <= len(data)):
                    return data[rel:] if length is None else data[rel : rel + length]
        data = self.inner.get(key, offset, length)
        if length is None and len(data) <= TAIL_MAX and (start is None or offset < start):
            self._store(key, _TAIL, offset, data)
        return data

    def _kept_start(self, key: str, kind: int) -> int | None:
        """The offset a kept copy starts at, from its file header alone (None: none kept); the
        copy itself is checked when it is used."""
        try:
            head = fsutil.read_cached(self._path(key, kind), _FILE_HEADER.size)
        except OSError:
            return None
        if len(head) != _FILE_HEADER.size:
            return None
        magic, version, k, offset, _digest_ = _FILE_HEADER.unpack(head)
        return int(offset) if (magic, version, k) == (_MAGIC, _VERSION, kind) else None

    # -- cache files ---------------------------------------------------------------------------

    def _path(self, key: str, kind: int) -> Path:
        return self.cache_dir / (key + _SUFFIX[kind])

    def _load(self, key: str, kind: int) -> tuple[int, bytes] | None:
        """(offset, bytes) of a kept copy; None when there is none. One that does not match its
        checksum, or cannot be read, is removed with every other copy kept of key (a head and a
        tail are only used together when kept from the same object)."""
        try:
            blob = fsutil.read_cached(self._path(key, kind))
        except FileNotFoundError:
            return None
        except OSError:
            self._drop(key)
            return None
        if len(blob) >= _FILE_HEADER.size:
            magic, version, k, offset, digest = _FILE_HEADER.unpack_from(blob)
            body = memoryview(blob)[_FILE_HEADER.size :]
            if (magic, version, k) == (_MAGIC, _VERSION, kind):
                if _digest(key, kind, offset, body) == digest:
                    return offset, bytes(body)
        self._drop(key)
        return None

    def _store(self, key: str, kind: int, offset: int, data: bytes) -> None:
        """Keep a copy (temp, rename: 0600 files in 0700 folders); a cache that cannot be
        written only costs later reads. Not fsynced: a copy a crash left torn or empty fails
        its checksum when read, and is a miss (a first commit of the ~350 MB benchmark data
        dir to S3 made 53 fsyncs here, each waiting for the disk)."""
        path = self._path(key, kind)
        header = _FILE_HEADER.pack(_MAGIC, _VERSION, kind, offset, _digest(key, kind, offset, data))
        with contextlib.suppress(OSError):
            fsutil.make_dirs(path.parent, durable=False)
            tmp = path.parent / fsutil.temp_name()
            try:
                with open(tmp, "wb", opener=fsutil.opener) as f:
                    f.write(header)
                    f.write(data)
                os.replace(tmp, path)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

    def _drop(self, key: str) -> None:
        """Remove every copy kept of key."""
        for kind in _SUFFIX:
            with contextlib.suppress(OSError):
                os.unlink(self._path(key, kind))

    def _cached_keys(self, prefix: str) -> set[str]:
        """The keys with a copy kept under the folder prefix (names only, read folder by folder);
        temp files of dead processes are removed on the way."""
        keys: set[str] = set()
        top = self.cache_dir / prefix if prefix else self.cache_dir
        for folder, _dirs, files in os.walk(top):  # a missing folder yields nothing
            rel = Path(folder).relative_to(self.cache_dir).as_posix()
            for name in files:
                if name.startswith(TEMP_PREFIX):
                    if fsutil.left_by_dead_process(name):
                        with contextlib.suppress(OSError):
                            os.unlink(os.path.join(folder, name))
                    continue
                base = name[:-5] if name.endswith((".tail", ".head")) else name
                keys.add(base if rel == "." else f"{rel}/{base}")
        return keys
