"""The chunk lists a snapshot names for a file: a delta against the file's previous version when
that keeps the chain short and small, else the full list in pieces (TREE blobs, chunklist.py).
Commit and copy store them the same way. The lists of many small files new to a snapshot are
stored together (`store_full_lists`): one batch check of which are stored already, each still a
frame of its own, queued one after the other so a restore reads them with one read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from casnap import chunklist, compression
from casnap.constants import LIST_MAX_DELTAS, MAX_CHUNK_SIZE
from casnap.errors import IntegrityError
from casnap.ids import ObjectId
from casnap.manifest import FileEntry
from casnap.repository import Repository

if TYPE_CHECKING:  # storing a list needs a writer: a commit that reads no file makes none
    from casnap.packwriter import PackWriter

#: A resolved chunk list: packed refs, the number of deltas in its chain and their bytes.
Resolved = tuple[bytes, int, int]


def previous_lists(repo: Repository, old: FileEntry | None) -> Resolved | None:
    """The resolved chunk list of old, an entry of repo; None when it has none or it is damaged
    (a damaged previous list must not block a new snapshot)."""
    if old is None or not old.lists:
        return None
    try:
        return repo.resolve_lists(old)
    except IntegrityError:
        return None


#: A chunk list ready to store (plan_list): the ids of the previous version's blobs it keeps, and
#: its new blobs as (id, encoded frame, plain size).
Planned = tuple[tuple[str, ...], list[tuple[ObjectId, bytes, int]]]


def store_list(
    repo: Repository,
    refs: bytes,
    old: FileEntry | None,
    writer: PackWriter,
    level: int,
    previous: Resolved | None = None,
) -> tuple[str, ...]:
    """TREE blobs for a file's chunk list: a delta against the previous version (old, an entry
    of repo; previous, its list when already resolved) when that keeps the chain short and
    smaller than one full list, else the full list. New blobs go to writer, compressed at level;
    returns the ids the file entry names."""
    return put_planned(repo, writer, plan_list(repo, refs, old, level, previous))


def plan_list(
    repo: Repository,
    refs: bytes,
    old: FileEntry | None,
    level: int,
    previous: Resolved | None = None,
) -> Planned:
    """The blobs store_list stores for refs, made without the writer: any thread may make them
    (a commit makes them while it reads the next file) for put_planned to queue."""
    if old is not None and (previous := previous or previous_lists(repo, old)) is not None:
        base, deltas, delta_bytes = previous
        if base == refs:
            return old.lists, []
        if deltas < LIST_MAX_DELTAS:
            body = chunklist.encode_delta(base, refs)
            if delta_bytes + len(body) <= len(refs) and len(body) <= MAX_CHUNK_SIZE:
                return old.lists, [_blob(repo, body, level)]
    return (), [_blob(repo, body, level) for body in chunklist.pieces(refs)]


def _blob(repo: Repository, body: bytes, level: int) -> tuple[ObjectId, bytes, int]:
    return repo.ids(body), compression.encode(body, level), len(body)


def put_planned(repo: Repository, writer: PackWriter, planned: Planned) -> tuple[str, ...]:
    """Queue a planned list's blobs the writer does not know yet; returns the ids the file
    entry names. Called by the thread that adds to the writer, in file order."""
    from casnap.chunkindex import TREE  # numpy: only once a list is stored

    kept, blobs = planned
    for lid, encoded, plain in blobs:
        if writer.add(lid, TREE, encoded, plain) and repo.lists is not None:
            repo.lists.keep(lid, encoded)  # a checkout here then plans without a request
    return (*kept, *(lid.hex() for lid, _encoded, _plain in blobs))


def store_full_lists(
    repo: Repository, refs: Sequence[bytes], writer: PackWriter, level: int
) -> list[tuple[str, ...]]:
    """store_list for files without a previous version, many at once: each file's full list,
    the blobs not stored yet queued together."""
    from casnap.chunkindex import TREE

    bodies = [list(chunklist.pieces(r)) for r in refs]
    flat = [body for file_bodies in bodies for body in file_bodies]
    lids = [repo.ids(body) for body in flat]
    known = writer.known_many(lids).tolist() if lids else []
    new = [
        (lid, _encoded(body, level), len(body))
        for lid, body, stored in zip(lids, flat, known, strict=True)
        if not stored
    ]
    writer.add_many(TREE, new)
    if repo.lists is not None:  # a checkout here then plans without a request
        for lid, encoded, _plain in new:
            repo.lists.keep(lid, encoded)
    out = []
    at = 0
    for file_bodies in bodies:
        out.append(tuple(lid.hex() for lid in lids[at : at + len(file_bodies)]))
        at += len(file_bodies)
    return out


# A list of this many bytes or fewer (three refs) is stored raw without trying zstd: its ids do
# not compress, and a frame's header would outweigh any gain.
_RAW_LIST = 1 + 3 * chunklist.REF_SIZE


def _encoded(body: bytes, level: int) -> bytes:
    if len(body) <= _RAW_LIST:
        return bytes([compression.RAW]) + body
    return compression.encode(body, level)
