"""The backend interface: everything casnap stores goes through these few calls.

The contract every backend keeps (tests/test_backend_contract.py holds each backend to it):

- Keys are relative POSIX paths of non-empty components, none "." or ".." ("packs/ab/ab12…");
  any other key is a caller's bug and raises ValueError before anything is touched. A key never
  names a folder of another key (casnap never stores both "a" and "a/b").
- Objects are immutable: put never overwrites, and an object is whole once put returns. A put
  that fails or is interrupted leaves no object under its key (a local put may leave a temp file,
  which no call ever lists or reads).
- Failures are CasnapErrors: an OSError escaping put, get, list or delete is turned into one (a
  full disk into StorageFull, a lack of permission into AccessDenied) by this base class, naming
  the key and the backend, with the OSError as its cause; no layer above sees a raw OSError.
- Calls may come from several threads at once.

Behaviour such as fault injection is added by wrapping a backend, never by changing the layers
above.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

from casnap.errors import IntegrityError, from_oserror


def check_key(key: str) -> str:
    """Reject keys that could escape the repository root (ValueError); the key otherwise."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid backend key {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    """Reject list prefixes other than "" and a valid folder ending in "/" (ValueError)."""
    if prefix and (not prefix.endswith("/") or prefix == "/"):
        raise ValueError(f"invalid backend list prefix {prefix!r} (want '' or a folder/)")
    if prefix:
        try:
            check_key(prefix[:-1])
        except ValueError as exc:
            raise ValueError(f"invalid backend list prefix {prefix!r}") from exc
    return prefix


def checked_prefixes(prefixes: Sequence[str]) -> list[str]:
    """The folders of a list_several call, sorted and each once: ValueError for "" or a prefix
    that is not a folder, or one folder inside another (its keys would be listed twice)."""
    folders = sorted({check_prefix(p) for p in prefixes})
    for outer, inner in itertools.pairwise(folders):
        if not outer or inner.startswith(outer):
            raise ValueError(f"list_several of {outer!r} with {inner!r} inside it")
    if folders and not folders[0]:
        raise ValueError("list_several needs folders, not the whole repository ('')")
    return folders


def check_range(offset: int, length: int | None) -> None:
    """Reject a negative offset or length (ValueError): a caller's bug, not damage."""
    if offset < 0 or (length is not None and length < 0):
        raise ValueError(f"invalid range: offset {offset}, length {length}")


_VERBS = {"put": "writing", "get": "reading", "delete": "deleting", "list": "listing"}


def convert_oserrors(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """fn with OSError turned into the CasnapError from_oserror gives, naming key and backend."""
    verb = _VERBS[name]

    def what(self: Backend, key: str) -> str:
        return f"{verb} {key} in {self.location}"

    if name == "list":

        @functools.wraps(fn)
        def listing(self: Backend, prefix: str) -> Iterator[tuple[str, int]]:
            try:
                yield from fn(self, prefix)
            except OSError as exc:
                raise from_oserror(exc, what(self, prefix)) from exc

        return listing

    @functools.wraps(fn)
    def call(self: Backend, key: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, key, *args, **kwargs)
        except OSError as exc:
            raise from_oserror(exc, what(self, key)) from exc

    return call


class Backend(ABC):
    """A flat namespace of immutable objects under keys (see the module docstring)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in _VERBS:
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "__isabstractmethod__", False):
                setattr(cls, name, convert_oserrors(name, fn))

    # True where each request costs a round trip (an object store): readers then ask for a few
    # large ranges rather than many small ones (spans.py).
    remote = False
    # True where a put that returns True stored exactly the bytes given (the store checked their
    # checksum and writes atomically): the write need not be read back.
    checked_puts = False

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the objects live, for messages (a folder, a bucket URL)."""

    @abstractmethod
    def put(self, key: str, data: bytes | memoryview) -> bool:
        """Store data under key unless key exists: True when this call stored it, False (and the
        stored object unchanged) when key was already there.

        Atomic: of writers racing for one key exactly one gets True, and the object is all of its
        bytes. Durable when it returns. The backend keeps its own copy (the caller may reuse its
        buffer). A failed put leaves no object under key. Raises ValueError for an invalid key,
        StorageFull when the storage is full, AccessDenied without permission, CasnapError for
        any other failure.
        """

    @abstractmethod
    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes of key from offset: exactly length of them, or all to the end when length is None.

        Raises ObjectMissing when key is not stored, IntegrityError when the object does not hold
        the range (it ends before offset + length, or before offset: a truncated object is damage,
        never a short read), ValueError for an invalid key or a negative offset or length,
        AccessDenied without permission, CasnapError for any other failure.
        """

    @abstractmethod
    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size in bytes) of every object in the folder prefix and below it, each once, in no
        promised order; prefix is "" (every object) or a folder ending in "/" ("packs/").

        Only whole objects are listed: never a temp file or an object still being put. A folder
        that does not exist lists nothing; one that cannot be read is an error, never passed over
        as empty. The iterator raises ValueError for an invalid prefix, AccessDenied without
        permission, CasnapError for any other failure.
        """

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove key, durably when it returns; removing an absent key is not an error.

        Raises ValueError for an invalid key, AccessDenied without permission, CasnapError for any
        other failure.
        """

    def list_several(self, prefixes: Sequence[str]) -> Iterator[tuple[str, int]]:
        """(key, size) of every object in each of the folders prefixes, as list gives them, each
        key once, in no promised order. A store that lists a range of keys in one request (S3)
        answers with one listing where the default makes one per folder, so a lock's check and
        the snapshots it guards are one request (locks.py). ValueError for a prefix that is not
        a folder ("" included)."""
        for prefix in checked_prefixes(prefixes):
            yield from self.list(prefix)

    def remove(self, key: str) -> bool:
        """Delete key and say whether it was there: False when it was gone already (another
        process deleted it), so a lock's holder learns with its release whether the lock was
        taken from it (locks.py). The default looks first, one request more than delete where
        each costs one; errors as delete's."""
        present = self.exists(key)
        self.delete(key)
        return present

    def exists(self, key: str) -> bool:
        """True when key is stored (a folder of other keys is not). Raises ValueError for an
        invalid key; the default lists key's folder, backends answer it more cheaply."""
        check_key(key)
        folder = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
        return any(k == key for k, _ in self.list(folder))

    @contextlib.contextmanager
    def holding(self, prefix: str) -> Iterator[None]:
        """Within it, ranged reads of objects under the folder prefix may keep what they opened
        for the next read (a local backend's descriptors); the caller promises none of them is
        replaced or removed meanwhile, and no read is under way when it ends. The default holds
        nothing."""
        check_prefix(prefix)
        yield

    @contextlib.contextmanager
    def deleting(self) -> Iterator[None]:
        """Within it, a delete is done when it returns but may become durable only when the
        block ends (however it ends): deletes whose order among themselves does not matter
        (gc's index files, then its packs; forget's manifests) pay for durability once per
        block, not once each. The default makes each durable as it returns."""
        yield

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release what the backend holds (connections, handles); calling it again is harmless,
        and no other call is made after it. What was stored stays stored. The default holds
        nothing."""


class Salvaged(NamedTuple):
    """What a damaged object still holds: its bytes with the unreadable ranges zeroed, and those
    ranges as [start, end) offsets."""

    data: bytes
    failed: list[tuple[int, int]]


@runtime_checkable
class Salvaging(Protocol):
    """A backend that can read what is left of an object a whole read rejects as damaged (one
    that stores objects in independently checked pieces, as EncryptedBackend does)."""

    def salvage(self, key: str) -> Salvaged: ...


def salvage(backend: Backend, key: str) -> Salvaged | None:
    """What is left of the damaged object key, from backend or the first backend it wraps
    (`.inner`, through caching or retrying layers) that can salvage; None when none can: a
    whole read that fails is then all there is. IntegrityError when nothing can be salvaged."""
    layer: object = backend
    while isinstance(layer, Backend):
        if isinstance(layer, Salvaging):
            return layer.salvage(key)
        layer = getattr(layer, "inner", None)
    return None


@runtime_checkable
class Keeping(Protocol):
    """A backend that keeps copies of objects it read (CachingBackend) and can drop them."""

    def drop(self, key: str) -> None: ...


def drop_kept(backend: Backend, key: str) -> bool:
    """Drop the copies of key kept by backend or any backend it wraps, so the next read of key
    asks the storage; whether some layer keeps copies at all."""
    layer: object = backend
    keeping = False
    while isinstance(layer, Backend):
        if isinstance(layer, Keeping):
            layer.drop(key)
            keeping = True
        layer = getattr(layer, "inner", None)
    return keeping


@runtime_checkable
class Viewing(Protocol):
    """A backend that builds the bytes of a read itself (EncryptedBackend decrypts them) and can
    hand them out as a view of its own buffer rather than as a copy."""

    def view(self, key: str, offset: int, length: int) -> memoryview: ...


def read_view(backend: Backend, key: str, offset: int, length: int) -> bytes | memoryview:
    """The bytes get(key, offset, length) returns, as a read-only view where backend can give
    one without a copy: for large reads that are only sliced (spans.py)."""
    if isinstance(backend, Viewing):
        return backend.view(key, offset, length)
    return backend.get(key, offset, length)


# Bytes read back from the end of every object just written: a write that landed short fails it.
_VERIFY_TAIL = 64


class Wrapper(Backend):
    """A backend over another, `inner`: where it lives and how requests cost are inner's."""

    inner: Backend

    @property
    def location(self) -> str:
        return self.inner.location

    @property
    def remote(self) -> bool:  # type: ignore[override]
        return self.inner.remote

    @property
    def checked_puts(self) -> bool:  # type: ignore[override]
        return self.inner.checked_puts

    @contextlib.contextmanager
    def holding(self, prefix: str) -> Iterator[None]:
        with self.inner.holding(prefix):
            yield

    @contextlib.contextmanager
    def deleting(self) -> Iterator[None]:
        with self.inner.deleting():
            yield


def put_verified(backend: Backend, key: str, data: bytes | memoryview) -> bool:
    """Put an object whose key names its content, and make sure the stored copy is whole.

    A fresh write is read back at its tail (a write that landed short fails that read) unless
    the backend checked the bytes it stored (S3: a checksum with every upload); an object
    already stored under the key is read back whole and must equal data, or it is a damaged
    leftover (a torn earlier write) that would poison every later reference to it. A bad copy
    is deleted and written again; IntegrityError naming it after the second try.
    """
    for _attempt in range(2):
        written = backend.put(key, data)
        if written and backend.checked_puts:
            return True
        try:
            if written:
                tail = max(0, len(data) - _VERIFY_TAIL)
                intact = backend.get(key, tail, len(data) - tail) == data[tail:]
            else:
                intact = backend.get(key) == data
        except IntegrityError:
            intact = False
        if intact:
            return written
        backend.delete(key)
    raise IntegrityError(f"{key} did not land intact in {backend.location} after two writes")
