"""casnap's temporary files: names that tell who made them, and removing those of dead processes.

A temp file is named `.casnap-tmp-<pid>-<host tag>-<random>`: a process killed while it wrote
one (a commit's SQLite image, an object or a lock being put) leaves it behind, and the next casnap
on the same host removes it once that pid no longer runs. A file whose process still runs, or
that another host made, is never touched.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
import zlib
from pathlib import Path

from casnap.constants import TEMP_PREFIX
from casnap.errors import CasnapError
from casnap.fsdir import Dir, remove_tree
from casnap.procs import pid_alive

HOST_TAG = f"{zlib.crc32(socket.gethostname().encode()):08x}"
# A checkout (or `verify --smoke`) stages files in `.casnap-tmp-stage-<pid>-<random>/`: skipped
# by every scan as a casnap temp name, removed by the next run once that pid is gone.
STAGE_PREFIX = f"{TEMP_PREFIX}stage-"


def temp_name(suffix: str = "") -> str:
    """A fresh temp file name owned by this process."""
    return f"{TEMP_PREFIX}{os.getpid()}-{HOST_TAG}-{uuid.uuid4().hex}{suffix}"


def _owner(name: str) -> int | None:
    """The pid that made a temp file on this host; None for other names and other hosts."""
    if not name.startswith(TEMP_PREFIX):
        return None
    parts = name[len(TEMP_PREFIX) :].split("-", 2)
    if len(parts) < 3 or not parts[0].isdigit() or parts[1] != HOST_TAG:
        return None
    return int(parts[0])


def left_by_dead_process(name: str) -> bool:
    """True for a temp file made on this host by a process that no longer runs."""
    pid = _owner(name)
    return pid is not None and pid != os.getpid() and not pid_alive(pid)


def remove_stale(root: Path, recursive: bool = True) -> list[Path]:
    """Remove the temp files dead processes left in root (and below it when recursive)."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for dirpath, dirnames, filenames in os.walk(root):  # symbolic links are not followed
        if not recursive:
            dirnames.clear()
        for name in filenames:
            if left_by_dead_process(name):
                path = Path(dirpath, name)
                try:
                    path.unlink()
                except OSError:
                    continue  # gone already, or not ours to fix here (a read-only target)
                removed.append(path)
    return removed


def remove_stale_stages_in(d: Dir) -> None:
    """Remove the staging dirs in d whose process no longer runs (never following a link)."""
    for name in d.names():
        if not name.startswith(STAGE_PREFIX):
            continue
        try:
            pid = int(name[len(STAGE_PREFIX) :].split("-", 1)[0])
        except ValueError:
            continue
        if pid == os.getpid() or pid_alive(pid):
            continue
        with contextlib.suppress(OSError, CasnapError):
            remove_tree(d, name)


def remove_stale_stages(folder: Path) -> None:
    """remove_stale_stages_in for a folder given by path (one casnap made or was given)."""
    with contextlib.suppress(CasnapError):
        with Dir.open(folder) as d:
            remove_stale_stages_in(d)
