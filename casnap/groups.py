"""Digests of a file's page groups, kept on this host so that a later commit of a database hashes
one by one only the pages of the groups that changed.

A database's later version keeps most of its pages in place, yet a commit had to hash every page
to learn which ones changed (BLAKE3 of 4 KiB pieces: ~1.8 us a page, most of it per call, each
call handing the GIL over). A group is GROUP_BYTES of consecutive pieces of a fixed-size chunker
(SQLite pages), aligned in the file; its digest is the repository's id hash of its bytes (keyed
BLAKE3 in an encrypted repository, so the kept digests reveal nothing of the data). A commit that
reads a file whose previous version has its group digests kept compares each group's digest with
the one at the same place: equal bytes are equal pages, whose ids are the previous version's refs
there; only the pages of the other groups are hashed, and every group's digest is kept for the
next commit (ingest.py).

Kept under `<repository id>/groups/<ab>/<file hash>` in the user's cache dir: a header naming the
piece and group sizes, the digests, and a BLAKE3 of all of it. A file that does not check out is
ignored, so the copies are safe to delete (the next commit then hashes every page and keeps the
digests again). Only the latest version of a file is kept: storing a version's digests drops
those of the version before.
"""

from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path

from casnap.fsutil import cache_dir, read_cached, temp_name
from casnap.ids import ID_SIZE, hash_bytes

GROUP_BYTES = 64 * 1024  # 16 pages of 4 KiB: one digest call, the GIL handed over once

_MAGIC = b"casnap-groups-1\n"
_HEADER = struct.Struct("<16sII")  # magic, piece size, pieces per group


def pieces_per_group(piece: int) -> int:
    """Pieces of `piece` bytes in a group (at least one)."""
    return max(1, GROUP_BYTES // piece)


def _path(repo_id: str, file_hash: str) -> Path:
    return cache_dir() / repo_id / "groups" / file_hash[:2] / file_hash


def read(repo_id: str, file_hash: str, piece: int) -> bytes | None:
    """The group digests kept for the file version whose BLAKE3 is file_hash (hex), cut into
    `piece`-byte pieces: ID_SIZE bytes per group, in file order; None when none are kept or the
    copy does not check out."""
    try:
        data = read_cached(_path(repo_id, file_hash))
    except OSError:
        return None
    body, check = data[:-ID_SIZE], data[-ID_SIZE:]
    if len(data) < _HEADER.size + ID_SIZE or hash_bytes(body) != check:
        return None
    magic, size, per = _HEADER.unpack_from(body)
    digests = body[_HEADER.size :]
    if magic != _MAGIC or size != piece or per != pieces_per_group(piece):
        return None
    if len(digests) % ID_SIZE:
        return None
    return digests


def keep(repo_id: str, file_hash: str, piece: int, digests: bytes, replaces: str | None) -> None:
    """Keep the group digests of the file version file_hash (hex), dropping those of the version
    it replaces; a cache that cannot be written only costs the next commit its page hashing."""
    path = _path(repo_id, file_hash)
    body = _HEADER.pack(_MAGIC, piece, pieces_per_group(piece)) + digests
    with contextlib.suppress(OSError):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.parent / temp_name()
        try:
            with open(tmp, "xb") as f:
                f.write(body + hash_bytes(body))
            os.replace(tmp, path)  # a torn copy fails its check: no fsync for a cache
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    if replaces is not None and replaces != file_hash:
        with contextlib.suppress(OSError):
            _path(repo_id, replaces).unlink()
