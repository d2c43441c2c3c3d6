"""Digests of groups of a database's pages, kept on this host so that a later commit of the
database hashes one by one only the pages of the groups that changed.

A later version of a database keeps most of its pages in place, yet a commit had to hash every
page to learn which ones changed: BLAKE3 of a 4 KiB page costs ~1.8 us, most of it per call, and
every call hands the GIL to another thread and waits to get it back. A group is the pieces of an
aligned GROUP_BYTES of a file of fixed-size pieces (16 pages of 4 KiB); its digest is the
repository's id hash of its bytes (keyed BLAKE3 in an encrypted repository, so the kept digests
reveal nothing of the data): one call for 16 pages. A commit that reads a file whose previous
version kept its groups looks each group's digest up among them: a group of equal bytes cut into
pieces of equal lengths is made of equal pieces, whose ids are the previous version's refs there
(a group VACUUM moved whole is found too); only the pages of the other groups are hashed one by
one (ingest.py). Files of pieces cut by content (FAISS indexes) are not grouped: digesting every
byte once more cost as much as the per-piece calls it saved (docs/TUNING.md).

Kept under `<repository id>/groups/<ab>/<file hash>` in the user's cache dir: a header, one
record per group (digest, first piece, piece count), and the id hash of the file hash and all of
it (keyed in an encrypted repository: no copy can be made, nor one moved under another version's
name, without the key). A file that does not check out is ignored, so the copies are safe to
delete (the next commit then hashes every page and keeps the groups again). A file keeps the
groups of its latest version only: keeping a version's groups drops those of the version before,
and any group file left untouched for STALE_SECONDS.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from casnap.fsutil import cache_dir, opener, read_cached, temp_name
from casnap.ids import ID_SIZE

if TYPE_CHECKING:  # numpy: only a commit that reads a file groups its pieces
    from collections.abc import Callable

    import numpy as np

    Digest = Callable[[bytes], bytes]  # the repository's id hash (IdHasher.digest)

# Groups untouched this long are removed by the next commit that keeps groups (see keep): a
# database unchanged for a month costs its next commit one page hashing, which is all a kept
# file saves, and leftovers cannot pile up.
STALE_SECONDS = 30 * 24 * 3600
GROUP_BYTES = 64 * 1024  # 16 pages of 4 KiB: one digest call, the GIL handed over once

_MAGIC = b"casnap-groups-3\n"
_HEADER = struct.Struct("<16sI")  # magic, piece size
RECORD = struct.Struct(f"<{ID_SIZE}sII")  # digest, first piece of the group, pieces in it


@dataclass(frozen=True)
class Kept:
    """The groups kept for a file's last stored version, sorted by their digests' first 8 bytes
    for lookups (`find`)."""

    keys: np.ndarray  # uint64, sorted
    digests: np.ndarray  # (n, ID_SIZE) uint8, in keys' order
    first: np.ndarray  # int64: the group's first piece in that version
    count: np.ndarray  # int64: its pieces

    def find(self, digests: np.ndarray) -> np.ndarray:
        """For each row of digests, the index of a kept group with that digest, or -1."""
        import numpy as np

        out = np.full(len(digests), -1, dtype=np.int64)
        if not len(self.keys) or not len(digests):
            return out
        keys = np.ascontiguousarray(digests[:, :8]).view("<u8").ravel()
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        same = (self.digests[at] == digests).all(axis=1)
        out[same] = at[same]
        return out


def bounds(lengths: list[int], first: int, piece: int) -> list[tuple[int, int]]:
    """The groups of a block of `piece`-byte pieces (lengths, the first being piece `first` of
    the file), as (start, stop) piece ranges in the block: each whole GROUP_BYTES of the file the
    block holds (the pieces around them belong to none)."""
    n = len(lengths)
    per = pieces_per_group(piece)
    whole = n if lengths[-1] == piece else n - 1  # a fixed chunker's last piece may be short
    lead = min(-first % per, whole)
    return [(a, a + per) for a in range(lead, whole - per + 1, per)]


def pieces_per_group(piece: int) -> int:
    """Pieces of `piece` bytes in a group (at least one)."""
    return max(1, GROUP_BYTES // piece)


def _path(repo_id: str, file_hash: str) -> Path:
    return cache_dir() / repo_id / "groups" / file_hash[:2] / file_hash


def read(repo_id: str, file_hash: str, piece: int, digest: Digest) -> Kept | None:
    """The groups kept for the file version whose BLAKE3 is file_hash (hex), cut into `piece`-byte
    pieces; None when none are kept or the copy does not check out (digest: the repository's id
    hash, which made its check)."""
    import numpy as np

    try:
        data = read_cached(_path(repo_id, file_hash))
    except OSError:
        return None
    body, check = data[:-ID_SIZE], data[-ID_SIZE:]
    if len(data) < _HEADER.size + ID_SIZE or _check(digest, file_hash, body) != check:
        return None
    magic, size = _HEADER.unpack_from(body)
    records = body[_HEADER.size :]
    if magic != _MAGIC or size != piece or len(records) % RECORD.size:
        return None
    rows = np.frombuffer(
        records, dtype=[("digest", np.uint8, ID_SIZE), ("first", "<u4"), ("count", "<u4")]
    )
    keys = np.ascontiguousarray(rows["digest"][:, :8]).view("<u8").ravel()
    order = np.argsort(keys, kind="stable")
    return Kept(
        keys[order],
        rows["digest"][order],
        rows["first"][order].astype(np.int64),
        rows["count"][order].astype(np.int64),
    )


def keep(
    repo_id: str, file_hash: str, piece: int, records: bytes, replaces: str | None, digest: Digest
) -> None:
    """Keep the groups (RECORD after RECORD) of the file version file_hash (hex), dropping those
    of the version it replaces; a cache that cannot be written only costs the next commit its
    page hashing (digest: the repository's id hash, for the check)."""
    path = _path(repo_id, file_hash)
    body = _HEADER.pack(_MAGIC, piece) + records
    with contextlib.suppress(OSError):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.parent / temp_name()
        try:
            with open(tmp, "xb", opener=opener) as f:  # 0600: plain digests of the data
                f.write(body + _check(digest, file_hash, body))
            os.replace(tmp, path)  # a torn copy fails its check: no fsync for a cache
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    if replaces is not None and replaces != file_hash:
        with contextlib.suppress(OSError):
            _path(repo_id, replaces).unlink()
    _remove_stale(path.parent.parent)


def _remove_stale(folder: Path) -> None:
    """Remove the files of folder's subfolders untouched for STALE_SECONDS: the groups of versions
    no commit took up again (a database deleted from the data dir, a commit that failed after
    keeping them, another host's version) and temp files of killed commits."""
    limit = time.time() - STALE_SECONDS
    with contextlib.suppress(OSError), os.scandir(folder) as subfolders:
        for sub in subfolders:
            if not sub.is_dir(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError), os.scandir(sub.path) as files:
                for f in files:
                    if f.is_file(follow_symlinks=False) and f.stat().st_mtime < limit:
                        with contextlib.suppress(OSError):
                            os.unlink(f.path)


def _check(digest: Digest, file_hash: str, body: bytes) -> bytes:
    """A kept file's check: its body under its own name, hashed with the repository's id hash."""
    return digest(bytes.fromhex(file_hash) + body)
