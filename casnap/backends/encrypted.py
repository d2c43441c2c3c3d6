"""A backend that seals every object it stores (crypto.py) in another backend.

Names, listing and deletes pass through; what an object holds and its exact size do not. Key
files (`keys/...`) pass through unsealed: they are sealed by a password, not by the master key
they carry. Sizes listed are plaintext sizes, so the layers above see the same numbers as on a
plain repository. Ranged reads open only the segments they cover; the header of each object
read in part is kept (objects are immutable), and read again once when a segment fails to open
(the object may have been deleted and stored again meanwhile, with a new salt), past any copy of
it a CachingBackend below kept (its header and tail are the old object's then). A read that
reaches an object's end asks the backend below for its sealed bytes to the end, as a pack
directory's reads do (a CachingBackend below keeps those). A damaged object can be salvaged:
read segment by segment, the ones that fail authentication zeroed and named, so a pack with one
bad segment still gives up its other chunks (each checked against its id above).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence

from casnap.backends.base import (
    Backend,
    Salvaged,
    Wrapper,
    check_key,
    check_range,
    drop_kept,
)
from casnap.crypto import (
    HEADER_SIZE,
    SEGMENT,
    Header,
    Sealer,
    object_header,
    plain_size,
    segment_span,
)
from casnap.errors import IntegrityError

KEYS_PREFIX = "keys/"
_HEADERS_KEPT = 1 << 16  # ~6 MB at most: every pack of a large repository


class EncryptedBackend(Wrapper):
    """Objects of inner, sealed with sealer (see the module docstring)."""

    def __init__(self, inner: Backend, sealer: Sealer) -> None:
        self.inner = inner
        self.sealer = sealer
        self._headers: OrderedDict[str, Header] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes | memoryview) -> bool:
        if check_key(key).startswith(KEYS_PREFIX):
            return self.inner.put(key, data)
        sealed = self.sealer.seal(key, data)
        stored = self.inner.put(key, sealed)
        if stored:  # a read back (put_verified's tail) then needs no header read
            self._remember(key, object_header(key, sealed[:HEADER_SIZE]))
        return stored

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        check_range(offset, length)
        if check_key(key).startswith(KEYS_PREFIX):
            return self.inner.get(key, offset, length)
        if offset == 0 and length is None:
            return self._whole(key)
        return bytes(self._view(key, offset, length))

    def view(self, key: str, offset: int, length: int) -> memoryview:
        """get's bytes as a read-only view of the buffer they were decrypted into (no copy)."""
        check_range(offset, length)
        if check_key(key).startswith(KEYS_PREFIX):
            return memoryview(self.inner.get(key, offset, length))
        return self._view(key, offset, length)

    def _view(self, key: str, offset: int, length: int | None) -> memoryview:
        try:
            return self._range(key, offset, length, self._header(key))
        except IntegrityError:
            # stored again meanwhile under its name (a new salt)? Read its header again from the
            # storage, past any copy of the old object kept below and past the remembered one
            # (another thread reading the object may have remembered the old header again
            # meanwhile); a header just fetched was no stale one
            with self._lock:
                remembered = self._headers.pop(key, None) is not None
            if not drop_kept(self.inner, key) and not remembered:
                raise
            header = object_header(key, self.inner.get(key, 0, HEADER_SIZE))
            self._remember(key, header)
            return self._range(key, offset, length, header)

    def _whole(self, key: str) -> bytes:
        data = self.inner.get(key)
        plain = self.sealer.open(key, data)
        self._remember(key, object_header(key, data))
        return plain

    def _range(self, key: str, offset: int, length: int | None, header: Header) -> memoryview:
        end = header.length if length is None else offset + length
        if end > header.length or offset > header.length:
            raise IntegrityError(
                f"{key} is truncated: wanted bytes up to {end}, it holds {header.length}"
            )
        if end == offset:
            return memoryview(b"")
        first, start, size = segment_span(header, offset, end - offset)
        if end == header.length:  # a read to the end (a CachingBackend keeps those of packs)
            sealed = self.inner.get(key, start)
            if len(sealed) != size:
                raise IntegrityError(
                    f"{key} is truncated or replaced: it holds {start + len(sealed)} stored "
                    f"bytes, not {start + size}"
                )
        else:
            sealed = self.inner.get(key, start, size)
        plain = self.sealer.open_segments(key, header, first, sealed)
        skip = offset - first * SEGMENT
        return memoryview(plain).toreadonly()[skip : skip + end - offset]

    def salvage(self, key: str) -> Salvaged:
        """The object under key read segment by segment: the segments that fail authentication
        are zeros, and named (see Sealer.salvage); IntegrityError when its header is unusable."""
        if check_key(key).startswith(KEYS_PREFIX):
            raise IntegrityError(f"{key} is a key file: it is not sealed in segments")
        data, failed = self.sealer.salvage(key, self.inner.get(key))
        return Salvaged(data, failed)

    def _header(self, key: str) -> Header:
        with self._lock:
            header = self._headers.get(key)
            if header is not None:
                self._headers.move_to_end(key)
                return header
        header = object_header(key, self.inner.get(key, 0, HEADER_SIZE))
        self._remember(key, header)
        return header

    def _remember(self, key: str, header: Header) -> None:
        with self._lock:
            self._headers[key] = header
            if len(self._headers) > _HEADERS_KEPT:
                self._headers.popitem(last=False)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        return _plain_sizes(self.inner.list(prefix))

    def list_several(self, prefixes: Sequence[str]) -> Iterator[tuple[str, int]]:
        return _plain_sizes(self.inner.list_several(prefixes))

    def delete(self, key: str) -> None:
        with self._lock:
            self._headers.pop(key, None)
        self.inner.delete(key)

    def remove(self, key: str) -> bool:
        with self._lock:
            self._headers.pop(key, None)
        return self.inner.remove(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def close(self) -> None:
        self.inner.close()


def _plain_sizes(listing: Iterator[tuple[str, int]]) -> Iterator[tuple[str, int]]:
    """A listing of sealed objects with the sizes of what they hold (key files: as stored)."""
    for key, size in listing:
        yield key, size if key.startswith(KEYS_PREFIX) else plain_size(size)
