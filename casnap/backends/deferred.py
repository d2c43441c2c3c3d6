"""A backend made on a thread while the opening of its repository goes on.

Making an S3 backend costs ~0.2 s of CPU (importing botocore, building its client) before the
first request; opening an encrypted repository costs a key derivation (argon2id, which runs
without Python's lock). When this host already keeps the repository's config and key file
(opening.py), the derivation needs no request, so the two can run at once: the backend is made
on a thread and waited for at its first use. Whatever the maker raises is raised there, as it
would have been raised at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, TypeVar

from casnap.backends.base import Backend, Wrapper

if TYPE_CHECKING:
    from casnap.locations import S3Url

T = TypeVar("T")


class DeferredBackend(Wrapper):
    """The backend `make` returns, made on a thread; where it lives is known at once."""

    def __init__(self, location: str, make: Callable[[], Backend]) -> None:
        self._location = location
        self._made: Future[Backend] = Future()
        threading.Thread(target=self._make, args=(make,), name="casnap-open", daemon=True).start()

    def _make(self, make: Callable[[], Backend]) -> None:
        try:
            self._made.set_result(make())
        except BaseException as exc:  # raised again to whoever uses the backend
            self._made.set_exception(exc)

    @property
    def inner(self) -> Backend:  # type: ignore[override]
        """The backend, once made (waits for the thread; raises what making it raised)."""
        return self._made.result()

    def failure(self) -> BaseException | None:
        """What making the backend raised, once it is done; None when it succeeded."""
        return self._made.exception()

    @property
    def location(self) -> str:
        return self._location

    def put(self, key: str, data: bytes | memoryview) -> bool:
        return self.inner.put(key, data)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.get(key, offset, length)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        return self.inner.list(prefix)

    def list_several(self, prefixes: Sequence[str]) -> Iterator[tuple[str, int]]:
        return self.inner.list_several(prefixes)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def remove(self, key: str) -> bool:
        return self.inner.remove(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def close(self) -> None:
        """Close the backend once made; nothing to close when making it failed."""
        if self.failure() is None:
            self.inner.close()


def unmade(backend: Backend) -> BaseException | None:
    """What making a DeferredBackend below backend (through its wrappers) raised, once it is
    done; None when there is none or it was made."""
    while isinstance(backend, Wrapper):
        if isinstance(backend, DeferredBackend):
            return backend.failure()
        backend = backend.inner
    return None


def s3_backend(
    url: S3Url, create: bool, check: bool, first: Callable[[], object] | None = None
) -> Backend:
    """The S3 backend of url (backends/s3.py, imported here: on a DeferredBackend's thread the
    import runs there too); first: s3prefix.repository_backend's."""
    from casnap.backends.s3prefix import repository_backend

    return repository_backend(url, create, check=check, first=first)


def taken_over(backend: Backend, made: T) -> T:
    """made, a repository just made on backend, once the key files of a killed init the S3
    backend below took over (s3prefix.repository_backend) are removed: its config is in, and
    they seal a key that encrypts nothing."""
    layer = backend
    while isinstance(layer, Wrapper):
        layer = layer.inner
    for key in getattr(layer, "leftover", None) or ():
        backend.delete(key)
    return made


def made_for(backend: Backend, opened: T) -> T:
    """opened, once a DeferredBackend below backend is made (raising what making it raised):
    a repository is not opened on a client that cannot be made."""
    failed = unmade(backend)
    if failed is not None:
        raise failed
    return opened
