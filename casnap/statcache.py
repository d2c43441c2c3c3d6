"""The stat cache: which files a commit takes from an earlier snapshot without reading them.

A file whose stat fingerprint (capture.fingerprint: size, mtime, ctime and inode, and those of a
database's -wal) equals the one recorded with its entry in the parent snapshot (the newest of the
same data dir and paths) or in the record of the last checkout into the data dir (restored.py)
still holds what that entry names: the entry is reused, and neither the file nor the index is
read. A SQLite database is no exception (its backup API is not run): a write to it moves the
database file or its -wal, whatever the journal mode. Its -shm is left out, since every reader
writes its marks there (a commit's own read too), and a rollback journal that may hold a
transaction to roll back (formats/sqlite.hot_journal) means the file alone does not say what the
database holds, so such a database is read again.

A fingerprint is recorded with an entry only when it vouches for the content read (`vouched`):
the file had it before and after the read, and its last write is old enough that a later write
within the same timestamp tick could not leave the fingerprint as it was (capture.is_racy).
Anything else is read again by the next commit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from casnap import capture
from casnap import restored as restored_files
from casnap.constants import FAISS_CHUNKERS
from casnap.formats.sqlite import hot_journal
from casnap.ids import ObjectId
from casnap.manifest import FileEntry, Snapshot
from casnap.repository import Repository

Fingerprint = tuple[int, ...]


def with_source(entry: FileEntry, source: Fingerprint | None) -> FileEntry:
    """entry with the fingerprint that vouches for it (None: none does)."""
    return entry._replace(source=source)


def parent(
    repo: Repository, host: str, source: str, paths: tuple[str, ...]
) -> tuple[ObjectId | None, Snapshot | None]:
    """The newest snapshot of the same host, dir and paths: its files feed the stat cache.
    Another host's is none: hosts sharing a repository keep their data dirs at one path, and
    its fingerprints describe files this host never read (restic picks a parent alike)."""
    for sid, snap in reversed(repo.snapshots()):
        if snap.host == host and snap.source == source and snap.paths == paths:
            return sid, snap
    return None, None


def restored_entries(
    repo: Repository, source: str, tainted: Collection[str]
) -> dict[str, FileEntry]:
    """Entries of the files a checkout restored into source, by path, with the fingerprint
    recorded after the swap as their `source` (see restored.py); none from a snapshot forgotten
    since (gc may have removed its chunks) or one a repair-index found incomplete (tainted)."""
    record = restored_files.load(repo.id, source)
    if record is None:
        return {}
    snaps = dict(repo.snapshots())
    out: dict[str, FileEntry] = {}
    paths: dict[str, dict[str, FileEntry]] = {}  # each snapshot's entries by path, made once
    for path, (fp, sid_hex) in record.files.items():
        try:
            snap = snaps.get(ObjectId.from_hex(sid_hex))
        except ValueError:
            continue
        if snap is None or sid_hex in tainted:
            continue
        if sid_hex not in paths:
            paths[sid_hex] = {f.path: f for f in snap.files}
        entry = paths[sid_hex].get(path)
        if entry is not None:
            out[path] = with_source(entry, fp)
    return out


def reusable(src: capture.SourceFile, *known: FileEntry | None) -> FileEntry | None:
    """The first of the known entries of src (the parent's, the last checkout's) that the file
    still holds by its fingerprint, without the `link` it had there; None when it must be read.
    A plain file's is the lstat the scan took, if it did (a regular file's lstat is its stat).

    A link names a path of the snapshot the entry came from, which this commit may leave out
    (an exclude, other paths) or hold as another file now: the commit links the names of one
    file anew, as it does for the files it reads (committer.py)."""
    if not any(known):
        return None
    st = src.stat
    if src.kind == "file" and st is not None:
        fp: Fingerprint | None = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    else:
        fp = capture.fingerprint(src.abspath, src.kind)
    if fp is None or (src.kind == "sqlite" and hot_journal(src.abspath)):
        return None
    for entry in known:
        if entry is not None and entry.kind == src.kind and entry.source == fp:
            return entry if entry.link is None else entry._replace(link=None)
    return None


def vouched(
    before: Fingerprint | None, after: Fingerprint | None, start_ns: int
) -> Fingerprint | None:
    """What to record with an entry just read: its fingerprint before the read (for a database:
    once SQLite had it open, dbimage.Image.opened), when the file still had it after the read
    and it is not racy against the commit's start; None otherwise."""
    if before is None or after != before or capture.is_racy(before, start_ns):
        return None
    return before


def reused(
    sources: Sequence[capture.SourceFile],
    parent_files: Mapping[str, FileEntry],
    restored: Mapping[str, FileEntry],
) -> dict[str, FileEntry]:
    """The entry each file of sources can take without being read (reusable), by path."""
    out = {}
    for src in sources:
        entry = reusable(src, parent_files.get(src.path), restored.get(src.path))
        if entry is not None:
            out[src.path] = entry
    return out


def kind_of(
    *known: Mapping[str, FileEntry],
) -> Callable[[str, os.stat_result], str | None]:
    """For capture.scan: the kind of a file whose own fingerprint (size, mtime, ctime, inode)
    is the one an entry of known recorded: its bytes, and so its header, are those the entry
    was read from. None for any other file (its header is read)."""

    def of(rel: str, st: os.stat_result) -> str | None:
        fp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        for files in known:
            entry = files.get(rel)
            if entry is not None and entry.source is not None and entry.source[:4] == fp:
                return entry.kind
        return None

    return of


def heads(
    sources: Sequence[capture.SourceFile],
    reuse: Mapping[str, FileEntry],
    chunkers: Mapping[str, Any],
) -> dict[str, bytes]:
    """The first bytes of files for the FAISS checks (consistency.py), known without reading
    them: those the scan read, and b"" for a reused file whose entry says it is no FAISS index
    of a layout the FAISS chunker parses (chunked by another chunker in a repository whose
    config has a FAISS one); the checks read the header of such a file when a sidecar vouches
    for an index (one of a layout not parsed, such as IndexPQ)."""
    out = {s.path: s.head for s in sources if s.head is not None}
    if "faiss" in chunkers:
        for path, entry in reuse.items():
            if entry.chunker.get("name") not in FAISS_CHUNKERS:
                out.setdefault(path, b"")
    return out
