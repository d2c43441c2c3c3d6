"""libc functions the os module lacks (statx, syncfs, sync_file_range, renameat2, mallopt),
loaded with ctypes on first use: a library user that needs none of them imports no ctypes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import cast


@functools.cache
def function(name: str, *argtypes: str) -> Callable[..., int] | None:
    """libc's `name`, its arguments of the ctypes types named (`c_int`, `c_char_p`, ...) and an
    int result, errno kept for `last_errno`; None where libc has no such function."""
    import ctypes

    try:
        call = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    call.argtypes = [getattr(ctypes, t) for t in argtypes]
    call.restype = ctypes.c_int
    return cast(Callable[..., int], call)


def last_errno() -> int:
    """The errno the last call of such a function on this thread left."""
    import ctypes

    return ctypes.get_errno()


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# Blocks under this size come from the heap, not from a mapping of their own (glibc: 128 KiB,
# raised as blocks are freed up to 32 MiB, the most older glibc accepts here); freed memory at
# the heap's top is kept up to KEEP. A restore's largest blocks, its spans, are at most 20 MiB.
MMAP_ABOVE = 32 << 20
KEEP = 1 << 30


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory freed for the next blocks (docs/TUNING.md, "Memory
    kept for the next block"): blocks under MMAP_ABOVE from the heap, one arena, and freed
    memory kept up to KEEP. A restore fills a new block of some MiB per span or frame; handed
    back to the kernel at each free, every one of them cost a page fault and a zeroed page per
    4 KiB. Call it before any thread starts. False where the C library has no such settings or
    refuses the threshold; the other two are then left as they are (alone, they made more
    faults, not fewer)."""
    mallopt = function("mallopt", "c_int", "c_int")
    if mallopt is None or mallopt(_M_MMAP_THRESHOLD, MMAP_ABOVE) != 1:
        return False
    return all(
        [
            mallopt(param, value) == 1
            for param, value in ((_M_ARENA_MAX, 1), (_M_TRIM_THRESHOLD, KEEP))
        ]
    )
