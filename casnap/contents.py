"""What a snapshot holds: its files at or under a path (`ls`), and one file streamed out of the
repository (`cat`), every chunk and the whole-file hash verified, in bounded memory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import BinaryIO

from casnap.errors import InvalidArgument, SnapshotNotFound
from casnap.ids import ObjectId
from casnap.manifest import FileEntry, Snapshot
from casnap.paths import ALL
from casnap.repository import Repository
from casnap.selection import outside
from casnap.staging import stream_entry


def files_under(
    snap: Snapshot, rel: str = ALL, name: str = "the snapshot", others: Sequence[Snapshot] = ()
) -> list[FileEntry]:
    """The files of snap that are rel or lie below it (rel: a data-dir relative path, `.` for
    all), sorted by path; SnapshotNotFound when rel names none of them (its message says which
    --path names one of others, the repository's snapshots, that may hold it)."""
    if rel in (ALL, ""):
        return sorted(snap.files, key=lambda e: e.path)
    found = [e for e in snap.files if e.path == rel or e.path.startswith(rel + "/")]
    if not found:
        raise SnapshotNotFound(f"{rel} is not in {name}{outside(rel, [snap], others)}")
    return sorted(found, key=lambda e: e.path)


def file_at(
    snap: Snapshot, rel: str, name: str = "the snapshot", others: Sequence[Snapshot] = ()
) -> FileEntry:
    """The file of snap at rel; InvalidArgument for a folder, SnapshotNotFound for nothing."""
    under = files_under(snap, rel, name, others)
    for entry in under:
        if entry.path == rel:
            return entry
    what = "the whole snapshot" if rel in (ALL, "") else f"{rel} is a folder of {name}"
    raise InvalidArgument(f"{what}, not a file: `casnap ls` lists its files")


def dump(repo: Repository, sid: ObjectId, rel: str, out: BinaryIO) -> FileEntry:
    """Write the file at rel of snapshot sid to out, in order, holding a shared lock (so no gc
    removes its chunks meanwhile). Each chunk is verified before it is written: a damaged one
    raises IntegrityError with only the bytes before it written; the whole-file hash is checked
    at the end (IntegrityError after the last byte). Returns the file's entry."""
    with repo.lock("cat"):
        repo.refresh(only_if_changed=True)
        snap = repo.load_snapshot(sid)
        entry = file_at(snap, rel, f"snapshot {sid.short}")
        stream_entry(repo, entry, out)
        return entry
