"""An in-memory backend: fast tests, and the base that fault-injecting wrappers are tried on."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from casnap.backends.base import Backend, check_key, check_prefix, check_range
from casnap.errors import IntegrityError, ObjectMissing


class MemoryBackend(Backend):
    """Objects in a dict; thread-safe."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    @property
    def location(self) -> str:
        return f"memory:{id(self):x}"

    def put(self, key: str, data: bytes | memoryview) -> bool:
        check_key(key)
        with self._lock:
            if key in self.objects:
                return False
            self.objects[key] = bytes(data)
            return True

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        check_key(key)
        check_range(offset, length)
        with self._lock:
            data = self.objects.get(key)
        if data is None:
            raise ObjectMissing(f"{key} is missing from the repository")
        if offset > len(data):
            raise IntegrityError(
                f"{key} is truncated: wanted bytes from offset {offset}, it holds {len(data)}"
            )
        out = data[offset:] if length is None else data[offset : offset + length]
        if length is not None and len(out) != length:
            raise IntegrityError(f"{key} is truncated: wanted {length} bytes at offset {offset}")
        return out

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        check_prefix(prefix)
        with self._lock:
            items = sorted((k, len(v)) for k, v in self.objects.items() if k.startswith(prefix))
        yield from items

    def delete(self, key: str) -> None:
        self.remove(key)

    def remove(self, key: str) -> bool:
        with self._lock:
            return self.objects.pop(check_key(key), None) is not None

    def exists(self, key: str) -> bool:
        with self._lock:
            return check_key(key) in self.objects
