"""libc functions the os module lacks (statx, syncfs, sync_file_range, renameat2), loaded with
ctypes on first use: no command that needs none of them imports ctypes."""

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
