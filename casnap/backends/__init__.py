"""Narrow byte stores under the repository: put-if-absent, ranged get, list, delete."""

from __future__ import annotations

from casnap.backends.base import Backend
from casnap.backends.local import LocalBackend
from casnap.backends.memory import MemoryBackend

__all__ = ["Backend", "LocalBackend", "MemoryBackend"]
