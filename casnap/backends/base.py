"""The backend interface: everything casnap stores goes through these few calls.

Keys are relative POSIX paths ("packs/ab/ab12…"). Behaviour such as fault injection is added by
wrapping a backend, never by changing the layers above.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator


def check_key(key: str) -> str:
    """Reject keys that could escape the repository root."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid backend key {key!r}")
    return key


class Backend(ABC):
    """A flat namespace of immutable objects."""

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
