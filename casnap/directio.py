"""Writing a large new file past the page cache (O_DIRECT) when it is fsynced right after.

A pack goes to disk once and is fsynced at once: the page cache holds nothing a reader wants
soon, yet filling it costs the kernel fresh cache pages. On the virtual machine casnap is
measured on, pages not used lately cost ~2.4 ms of system CPU per MiB (0.57 s for 240 MiB
written, then 0.10 s to fsync; direct: 0.01 s of CPU, 0.13-0.17 s in all), as much as
compressing them (docs/TUNING.md, "Packs past the page cache"). Direct writes need offset,
length and memory aligned: the data goes through one aligned buffer per thread, and the
unaligned tail, a filesystem that refuses direct writes (EINVAL, EOPNOTSUPP) or one that asks
more alignment than 4 KiB goes through the cache. The caller still fsyncs: that makes the
file's size and blocks durable.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading

O_DIRECT: int = getattr(os, "O_DIRECT", 0)
BLOCK = 4096  # the alignment asked of direct writes: every common filesystem accepts 4 KiB
BUFFER_SIZE = 4 * 1024 * 1024  # one aligned buffer per writing thread (mmap: page aligned)
DIRECT_MIN = 1024 * 1024  # smaller files (manifests, lists, locks) go through the cache

# What a filesystem that cannot write a descriptor directly answers: then the cache is used.
_REFUSED = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP})

_local = threading.local()


def _buffer() -> mmap.mmap:
    buf: mmap.mmap | None = getattr(_local, "buffer", None)
    if buf is None:
        buf = _local.buffer = mmap.mmap(-1, BUFFER_SIZE)
    return buf


def _set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off for fd; False when the filesystem refuses."""
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, (flags | O_DIRECT) if on else (flags & ~O_DIRECT))
    except OSError as exc:
        if on and exc.errno in _REFUSED:
            return False
        raise
    return True


def _pwrite(fd: int, view: memoryview, offset: int) -> int:
    n = os.pwrite(fd, view, offset)
    if n <= 0:  # never for a regular file with room; no endless loop if it ever happens
        raise OSError(errno.EIO, "the write wrote nothing")
    return n


def pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    """Write all of view at offset of fd, however many calls it takes."""
    while len(view):
        n = _pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _copy(buf: mmap.mmap, view: memoryview, pos: int, n: int) -> None:
    """buf[:n] = view[pos : pos + n], without the GIL (a slice assignment holds it throughout
    the copy, which the threads compressing the next frames then wait for)."""
    import numpy as np

    np.copyto(np.frombuffer(buf, np.uint8, n), np.frombuffer(view, np.uint8, n, pos))


def _write_direct(fd: int, view: memoryview, end: int) -> int:
    """Write view[:end] (a multiple of BLOCK) directly; returns how far it got before the
    filesystem refused a direct write or a short write left an unaligned offset."""
    buf = _buffer()
    pos = 0
    while pos < end:
        n = min(BUFFER_SIZE, end - pos)
        _copy(buf, view, pos, n)
        with memoryview(buf) as whole, whole[:n] as part:
            try:
                pos += _pwrite(fd, part, pos)
            except OSError as exc:
                if exc.errno not in _REFUSED:
                    raise
                return pos
        if pos % BLOCK:
            return pos
    return pos


def write_new(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write data at the start of the new, empty file fd (opened for writing), directly where it
    pays and the filesystem allows; the caller fsyncs."""
    with memoryview(data) as raw, raw.cast("B") as view:
        size = len(view)
        pos = 0
        aligned = size - size % BLOCK
        if O_DIRECT and size >= DIRECT_MIN and _set_direct(fd, True):
            try:
                pos = _write_direct(fd, view, aligned)
            finally:
                _set_direct(fd, False)
        pwrite_all(fd, view[pos:], pos)
