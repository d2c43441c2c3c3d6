"""Large objects go to a local repository past the page cache (O_DIRECT), byte for byte, and
whole through the page cache where a filesystem refuses direct writes or asks more alignment."""

from __future__ import annotations

import errno
import fcntl
import os
import random
from pathlib import Path
from typing import Any

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


def _data_dir(root: Path) -> Path:
    """Random bytes of no round size, a file with 64 KiB runs of zeros (holes), a tiny one."""
    data = root / "data"
    data.mkdir()
    rng = random.Random(7)
    (data / "a.bin").write_bytes(rng.randbytes(5 * 1024 * 1024 + 123))
    sparse = bytearray(rng.randbytes(3 * 1024 * 1024))
    sparse[1 << 20 : 2 << 20] = bytes(1 << 20)
    (data / "b.bin").write_bytes(bytes(sparse))
    (data / "c.txt").write_bytes(b"small")
    return data


def _restore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smoke: bool
) -> tuple[Path, Path, list[tuple[int, int, bool]]]:
    from casnap.committer import commit
    from casnap.repository import Repository
    from casnap.restorer import checkout

    data = _data_dir(tmp_path)
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data).id
    seen = _writes(monkeypatch)
    out = tmp_path / "out"
    checkout(repo, sid, out, safety_snapshot=False, smoke=smoke)
    for name in ("a.bin", "b.bin", "c.txt"):
        assert (out / name).read_bytes() == (data / name).read_bytes()
    return data, out, seen


def test_checkout_without_smoke_checks_writes_whole_blocks_direct(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing reads the restored files soon: their whole blocks go past the page cache."""
    _, _, seen = _restore(tmp_path, monkeypatch, smoke=False)
    direct = [(off, n) for off, n, d in seen if d]
    assert sum(n for _, n in direct) >= 6.5 * 1024 * 1024  # nearly all of a.bin and b.bin
    assert all(off % directio.BLOCK == 0 and n % directio.BLOCK == 0 for off, n in direct)


def test_checkout_with_smoke_checks_writes_through_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks read every staged database and index right away: they stay cached."""
    _, _, seen = _restore(tmp_path, monkeypatch, smoke=True)
    assert seen and not [d for _, _, d in seen if d]


def test_checkout_on_a_filesystem_refusing_direct_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some refuse at open, some at the first write (more alignment than 4 KiB): each file
    is still whole."""
    real_open = os.open
    opened = []

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & O_DIRECT and len(opened) % 2 == 0:
            opened.append(path)
            raise OSError(errno.EINVAL, "no direct I/O here")
        opened.append(path)
        return real_open(path, flags, *args, **kwargs)

    real_pwrite = os.pwrite

    def pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT:
            raise OSError(errno.EINVAL, "misaligned")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "pwrite", pwrite)
    _restore(tmp_path, monkeypatch, smoke=False)
    assert opened
