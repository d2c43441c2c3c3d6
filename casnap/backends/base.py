"""The backend interface: everything casnap stores goes through these few calls.

Keys are relative POSIX paths ("packs/ab/ab12…"). Behaviour such as fault injection is added by
wrapping a backend, never by changing the layers above. Backends report failures as CasnapError:
an OSError escaping a backend operation is turned into one (a full disk into StorageFull) by the
base class, so no layer above ever sees a raw OSError or mislabels it.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

from casnap.errors import from_oserror


def check_key(key: str) -> str:
    """Reject keys that could escape the repository root."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid backend key {key!r}")
    return key


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
                raise from_oserror(exc, what(self, prefix)) from None

        return listing

    @functools.wraps(fn)
    def call(self: Backend, key: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, key, *args, **kwargs)
        except OSError as exc:
            raise from_oserror(exc, what(self, key)) from None

    return call


class Backend(ABC):
    """A flat namespace of immutable objects."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in _VERBS:
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "__isabstractmethod__", False):
                setattr(cls, name, convert_oserrors(name, fn))

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the objects live, for messages."""

    @abstractmethod
    def put(self, key: str, data: bytes | memoryview) -> bool:
        """Store data under key unless key exists; True when written. Durable when it returns."""

    @abstractmethod
    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes of key from offset (all when length is None); ObjectMissing when absent,
        IntegrityError when the object is shorter than the range asked for."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object whose key starts with prefix (a folder such as "packs/")."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove key; removing an absent key is not an error."""

    def exists(self, key: str) -> bool:
        """True when key is stored."""
        folder = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
        return any(k == key for k, _ in self.list(folder))

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release resources; the default holds none."""
