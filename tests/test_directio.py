"""Large objects go to a local repository past the page cache (O_DIRECT), byte for byte, and
whole through the page cache where a filesystem refuses direct writes or asks more alignment."""

from __future__ import annotations

import errno
import fcntl
import os
import random
from pathlib import Path

import pytest

from casnap import directio
from casnap.backends.local import LocalBackend
from casnap.errors import CasnapError

O_DIRECT = getattr(os, "O_DIRECT", 0)
pytestmark = pytest.mark.skipif(not O_DIRECT, reason="no O_DIRECT on this system")

SIZES = [
    directio.DIRECT_MIN,
    directio.DIRECT_MIN + 1,
    directio.DIRECT_MIN + 4095,
    2 * directio.BUFFER_SIZE + 4096 * 3 + 17,
]


def _writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, bool]]:
    """Record every pwrite as (offset, length, whether the descriptor was direct)."""
    seen: list[tuple[int, int, bool]] = []
    real = os.pwrite

    def pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
        seen.append((offset, len(data), bool(fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT)))
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    return seen


@pytest.mark.parametrize("size", SIZES)
def test_large_object_written_direct_and_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    data = random.Random(size).randbytes(size)
    seen = _writes(monkeypatch)
    backend = LocalBackend(tmp_path)
    assert backend.put("packs/ab/x", data)
    assert backend.get("packs/ab/x") == data
    assert (tmp_path / "packs/ab/x").stat().st_mode & 0o777 == 0o600
    direct = [(off, n) for off, n, d in seen if d]
    assert sum(n for _, n in direct) == size - size % directio.BLOCK  # all but the tail
    assert all(off % directio.BLOCK == 0 and n % directio.BLOCK == 0 for off, n in direct)
    assert not [n for _, n, d in seen if not d and n >= directio.BLOCK]


def test_small_object_goes_through_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _writes(monkeypatch)
    data = b"x" * (directio.DIRECT_MIN - 1)
    assert LocalBackend(tmp_path).put("snapshots/a", data)
    assert LocalBackend(tmp_path).get("snapshots/a") == data
    assert not [d for _, _, d in seen if d]


def test_filesystem_refusing_direct_writes_gets_a_whole_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = fcntl.fcntl

    def refuse(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETFL and arg & O_DIRECT:
            raise OSError(errno.EINVAL, "direct I/O not supported")
        return real(fd, cmd, arg)

    monkeypatch.setattr(fcntl, "fcntl", refuse)
    data = random.Random(1).randbytes(directio.DIRECT_MIN + 999)
    assert LocalBackend(tmp_path).put("packs/cd/y", data)
    assert (tmp_path / "packs/cd/y").read_bytes() == data


@pytest.mark.parametrize("refusal", [errno.EINVAL, errno.EOPNOTSUPP])
def test_direct_write_refused_midway_goes_on_through_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusal: int
) -> None:
    """A filesystem asking more alignment than 4 KiB answers EINVAL to the write itself; some
    network and user-space filesystems take the flag and refuse the write (EOPNOTSUPP)."""
    real = os.pwrite
    calls = []

    def pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
        direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT)
        calls.append(direct)
        if direct and len(calls) == 2:
            raise OSError(refusal, "refused")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    data = random.Random(2).randbytes(2 * directio.BUFFER_SIZE + 5)
    assert LocalBackend(tmp_path).put("packs/ef/z", data)
    assert (tmp_path / "packs/ef/z").read_bytes() == data
    assert calls[:2] == [True, True] and not any(calls[2:])


def test_full_disk_during_a_direct_write_leaves_no_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.pwrite

    def pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
        if offset > 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    backend = LocalBackend(tmp_path)
    with pytest.raises(CasnapError, match="space"):
        backend.put("packs/01/w", random.Random(3).randbytes(2 * directio.BUFFER_SIZE))
    assert not (tmp_path / "packs/01/w").exists()
    assert os.listdir(tmp_path / "packs/01") == []  # no temp file left either
