"""What changed between two snapshots, or between a snapshot and the live data dir.

Files are compared by hash and by chunk ids (the data-dir side is chunked with the repository's
own chunker and never stored), databases by their tables (row counts, rows added, removed and
updated matched by primary key, schema: table_changes.py), FAISS indexes by type and vector
count (none for an index shorter than its header promises). Nothing is written to the repository.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from casnap import capture
from casnap.chunking import choose_chunker
from casnap.constants import SNIFF_BYTES
from casnap.errors import (
    AccessDenied,
    InvalidArgument,
    NotADatabase,
    from_oserror,
)
from casnap.formats.faiss import FaissHeader, faiss_header, file_shortfall, shortfall
from casnap.formats.sqlite import file_uri, is_sqlite_header
from casnap.fsutil import FILE_MODE, resolved
from casnap.ids import Hasher, ObjectId
from casnap.manifest import FileEntry, Snapshot
from casnap.repository import Repository
from casnap.smoke_sqlite import list_tables, open_immutable
from casnap.staging import restore_entry
from casnap.table_changes import TableDiff, compare_tables

Refs = list[tuple[ObjectId, int]]


@dataclass(frozen=True)
class IndexDiff:
    """A FAISS index before and after: its class and vector count (None when unreadable), and
    why a side cannot be read (a file shorter than its header promises)."""

    type_a: str | None
    type_b: str | None
    ntotal_a: int | None
    ntotal_b: int | None
    problem_a: str | None = None
    problem_b: str | None = None

    @property
    def ntotal_delta(self) -> int | None:
        """Vectors added (negative: removed); None when a side cannot be read."""
        if self.ntotal_a is None or self.ntotal_b is None:
            return None
        return self.ntotal_b - self.ntotal_a

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "ntotal_delta": self.ntotal_delta}


@dataclass(frozen=True)
class FileDiff:
    """One file: its status and what its new side shares with, or adds to, the old side."""

    path: str
    status: str  # "added", "removed", "changed" or "unchanged"
    kind: str  # "sqlite", "faiss" or "file"
    size_a: int | None
    size_b: int | None
    chunks_a: int | None
    chunks_b: int | None
    chunks_shared: int = 0  # distinct chunks of the new side found anywhere in the old side
    chunks_new: int = 0  # distinct chunks of the new side the old side does not hold
    bytes_shared: int = 0
    bytes_new: int = 0
    tables: tuple[TableDiff, ...] = ()
    index: IndexDiff | None = None
    tables_problem: str | None = None  # why a changed database's tables were not compared

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["tables"] = [t.to_json() for t in self.tables]
        d["index"] = self.index.to_json() if self.index is not None else None
        return d


@dataclass(frozen=True)
class DiffResult:
    """The whole comparison of side A (a snapshot) with side B (a snapshot or the data dir)."""

    a: dict[str, Any]
    b: dict[str, Any]
    files: tuple[FileDiff, ...]
    summary: dict[str, int] = field(default_factory=dict)
    # paths of the data dir too long to name (PATH_MAX), left out of both sides, and a warning
    # line for each
    skipped: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "files": [f.to_json() for f in self.files],
            "summary": self.summary,
            "skipped": list(self.skipped),
        }


# -- the two sides ---------------------------------------------------------------------------------


@dataclass
class _File:
    """One file of a side: enough to compare it and, on demand, to read it."""

    path: str
    kind: str  # "sqlite" or "file"
    size: int
    hash: str
    refs: Refs
    entry: FileEntry | None = None  # snapshot side
    local: Path | None = None  # data-dir side: a readable copy (a database: its backup image)
    head: bytes = b""


class _Side:
    """The files of a snapshot, or of the data dir read the way commit reads it."""

    def __init__(self, repo: Repository, scratch: Path) -> None:
        self.repo = repo
        self.scratch = scratch
        self.files: dict[str, _File] = {}

    def db_copy(self, f: _File) -> Path:
        """A file nobody writes holding this side's version of a database."""
        if f.local is not None:
            return f.local
        assert f.entry is not None
        dest = Path(tempfile.mkdtemp(dir=self.scratch)) / "db"
        restore_entry(self.repo, f.entry, dest)
        os.chmod(dest, FILE_MODE)  # scratch space is private, whatever mode the snapshot records
        f.local = dest
        return dest

    def shortfall(self, f: _File) -> str | None:
        """Why this side's version of a FAISS index is shorter than its header promises (None
        when it is not), from its header fields alone: a few chunks, never the whole file."""
        if f.local is not None:
            return file_shortfall(f.local)
        starts = list(itertools.accumulate((n for _, n in f.refs), initial=0))
        cache: dict[int, bytes] = {}

        def read_at(offset: int, n: int) -> bytes:
            out = bytearray()
            i = bisect.bisect_right(starts, offset) - 1
            while len(out) < n and 0 <= i < len(f.refs):
                if i not in cache:
                    if len(cache) >= 4:
                        cache.clear()
                    cache[i] = self.repo.store.get(f.refs[i][0])
                at = offset + len(out) - starts[i]
                out += cache[i][at : at + n - len(out)]
                i += 1
            return bytes(out)

        return shortfall(read_at, f.size)

    def head(self, f: _File) -> bytes:
        """The first bytes of this side's version of a file."""
        if f.head:
            return f.head
        if f.local is not None:
            with open(f.local, "rb") as fh:
                f.head = fh.read(SNIFF_BYTES)
            return f.head
        out = b""
        for cid, _ in f.refs:
            out += self.repo.store.get(cid)
            if len(out) >= SNIFF_BYTES:
                break
        f.head = out[:SNIFF_BYTES]
        return f.head


def _snapshot_side(repo: Repository, snap: Snapshot, scratch: Path) -> _Side:
    side = _Side(repo, scratch)
    for e in snap.files:
        side.files[e.path] = _File(e.path, e.kind, e.size, e.hash, repo.chunk_refs(e), entry=e)
    return side


def _data_side(
    repo: Repository, data_dir: Path, like: Snapshot, scratch: Path, too_long: list[str]
) -> _Side:
    """The data dir within the paths and excludes of `like`; a file whose stat fingerprint
    matches like's record is taken from it unread, the rest is read and chunked (not stored).
    Paths too long to name (past PATH_MAX) and files or folders this user may not read are
    left out, added to too_long."""
    side = _Side(repo, scratch)
    same_source = str(data_dir.resolve()) == like.source
    recorded = {e.path: e for e in like.files} if same_source else {}
    prune = capture.ScanOptions(
        prune=repo.nested_in(data_dir.resolve()), too_long=too_long, unreadable=too_long
    )
    for src in capture.scan(data_dir, like.paths, like.excludes, options=prune):
        old = recorded.get(src.path)
        if (
            old is not None
            and old.source is not None
            and old.kind == src.kind
            and capture.fingerprint(src.abspath, src.kind) == old.source
        ):
            side.files[src.path] = _File(
                src.path, old.kind, old.size, old.hash, repo.chunk_refs(old), entry=old
            )
            continue
        kind, local = src.kind, src.abspath
        try:
            if kind == "sqlite":
                keep = Path(tempfile.mkdtemp(dir=scratch)) / "db"
                try:
                    with capture.sqlite_image(src.abspath, scratch, repo.notify) as image:
                        image.replace(keep)
                    local = keep
                except NotADatabase:  # SQLite's header, but SQLite cannot read it: commit
                    kind = "file"  # keeps its bytes, so these are compared
            refs, whole, size = chunk_file(repo, local)
        except AccessDenied:  # as a commit with skip_unreadable leaves it out
            too_long.append(src.path)
            continue
        side.files[src.path] = _File(src.path, kind, size, whole, refs, local=local)
    return side


# -- comparing -------------------------------------------------------------------------------------


def diff(
    repo: Repository, a_ref: str, b_ref: str | None = None, data_dir: Path | str | None = None
) -> DiffResult:
    """Compare snapshot a_ref with snapshot b_ref, or (b_ref None) with data_dir as it is now:
    a path of it too long to name (past PATH_MAX), or a file or folder this user may not read,
    is left out of both sides, with a warning, as a commit with skip_unreadable leaves it out."""
    if b_ref is None and data_dir is None:
        raise InvalidArgument("diff needs a second snapshot or a data dir")
    skipped: list[str] = []  # paths of the data dir too long to name, or not readable
    warnings: list[str] = []
    with repo.lock("diff"), _scratch(repo) as scratch:
        repo.refresh(only_if_changed=True)
        a_id = repo.resolve(a_ref)
        a_snap = repo.load_snapshot(a_id)
        a = _snapshot_side(repo, a_snap, scratch)
        if b_ref is not None:
            b_id = repo.resolve(b_ref)
            b_snap = repo.load_snapshot(b_id)
            b = _snapshot_side(repo, b_snap, scratch)
            b_info: dict[str, Any] = {"id": b_id.hex(), "time": b_snap.time}
        else:
            assert data_dir is not None
            root = resolved(data_dir, "data dir")
            b = _data_side(repo, root, a_snap, scratch, skipped)
            b_info = {"data_dir": str(root)}
            warnings = [capture.left_out(root, p, "the diff") for p in skipped]
            for path in [p for p in a.files if any(_at_or_under(p, q) for q in skipped)]:
                del a.files[path]  # left out of both sides: not reported as removed
        files, summary = _compare(a, b)
        a_info = {"id": a_id.hex(), "time": a_snap.time}
        return DiffResult(a_info, b_info, tuple(files), summary, tuple(skipped), tuple(warnings))


def _at_or_under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + "/")


@contextlib.contextmanager
def _scratch(repo: Repository) -> Iterator[Path]:
    """A temporary dir for database copies: in the repository's tmp dir when it already exists
    (same disk as the data), else the system's; 0700 (tempfile makes it so), removed afterwards."""
    parent = repo.tmp_dir if repo.tmp_dir.is_dir() else None
    try:
        with tempfile.TemporaryDirectory(prefix=".casnap-tmp-diff-", dir=parent) as d:
            yield Path(d)
    except OSError as exc:
        raise from_oserror(exc, "creating a scratch dir for diff") from exc


def _compare(a: _Side, b: _Side) -> tuple[list[FileDiff], dict[str, int]]:
    a_chunks: dict[ObjectId, int] = {}
    for f in a.files.values():
        a_chunks.update(f.refs)
    b_chunks: dict[ObjectId, int] = {}
    seen_new: set[ObjectId] = set()
    files: list[FileDiff] = []
    counts = {"added": 0, "removed": 0, "changed": 0, "unchanged": 0}
    for path in sorted(set(a.files) | set(b.files)):
        fa, fb = a.files.get(path), b.files.get(path)
        if fb is None:
            assert fa is not None
            status = "removed"
        elif fa is None:
            status = "added"
        else:
            status = "unchanged" if fa.hash == fb.hash else "changed"
        counts[status] += 1
        shared = new = shared_bytes = new_bytes = 0
        if fb is not None:
            for cid, n in dict(fb.refs).items():
                b_chunks[cid] = n
                if cid in a_chunks:
                    shared, shared_bytes = shared + 1, shared_bytes + n
                elif cid not in seen_new:
                    seen_new.add(cid)
                    new, new_bytes = new + 1, new_bytes + n
        kind = "sqlite" if "sqlite" in (fa and fa.kind, fb and fb.kind) else "file"
        tables: tuple[TableDiff, ...] = ()
        index = None
        problem = None
        if status != "unchanged":
            if kind == "sqlite":
                tables, problem = _table_diffs(a, fa, b, fb)
            else:
                ha = faiss_header(a.head(fa)) if fa is not None else None
                hb = faiss_header(b.head(fb)) if fb is not None else None
                if ha is not None or hb is not None:
                    kind = "faiss"
                    pa = a.shortfall(fa) if ha is not None and fa is not None else None
                    pb = b.shortfall(fb) if hb is not None and fb is not None else None
                    if ha is None and fa is not None:  # the other side is an index
                        pa = NO_HEADER
                    if hb is None and fb is not None:
                        pb = NO_HEADER
                    index = _index_diff(ha, hb, fa is None, fb is None, pa, pb)
        elif faiss_header(b.head(fb) if fb is not None else b"") is not None:
            kind = "faiss"
        files.append(
            FileDiff(
                path=path,
                status=status,
                kind=kind,
                size_a=fa.size if fa else None,
                size_b=fb.size if fb else None,
                chunks_a=len(fa.refs) if fa else None,
                chunks_b=len(fb.refs) if fb else None,
                chunks_shared=shared,
                chunks_new=new,
                bytes_shared=shared_bytes,
                bytes_new=new_bytes,
                tables=tables,
                tables_problem=problem,
                index=index,
            )
        )
    dropped = {cid: n for cid, n in a_chunks.items() if cid not in b_chunks}
    shared_all = {cid: n for cid, n in b_chunks.items() if cid in a_chunks}
    summary = {
        "files_added": counts["added"],
        "files_removed": counts["removed"],
        "files_changed": counts["changed"],
        "files_unchanged": counts["unchanged"],
        "chunks_new": len(seen_new),
        "bytes_new": sum(b_chunks[c] for c in seen_new),
        "chunks_shared": len(shared_all),
        "bytes_shared": sum(shared_all.values()),
        "chunks_dropped": len(dropped),
        "bytes_dropped": sum(dropped.values()),
    }
    return files, summary


NO_HEADER = "not a FAISS index: no FAISS header"


def _index_diff(
    ha: FaissHeader | None,
    hb: FaissHeader | None,
    a_absent: bool,
    b_absent: bool,
    problem_a: str | None = None,
    problem_b: str | None = None,
) -> IndexDiff:
    """An absent side holds 0 vectors; a present side that cannot be read (no header, or fewer
    bytes than its header promises), an unknown count."""
    return IndexDiff(
        type_a=ha.type if ha else None,
        type_b=hb.type if hb else None,
        ntotal_a=ha.ntotal if ha and problem_a is None else (0 if a_absent else None),
        ntotal_b=hb.ntotal if hb and problem_b is None else (0 if b_absent else None),
        problem_a=problem_a,
        problem_b=problem_b,
    )


_SIDE = {"a": "old", "b": "new"}


def _table_diffs(
    a: _Side, fa: _File | None, b: _Side, fb: _File | None
) -> tuple[tuple[TableDiff, ...], str | None]:
    """The tables that differ between two versions of a database (either may be absent), or
    none and why they cannot be compared (a side SQLite finds malformed: what was committed,
    or is in the data dir, not damage to the repository)."""
    both = (("a", a, fa), ("b", b, fb))
    garbled = [  # SQLite's header, stored as bytes: its tables are unknown, not removed
        f"{_SIDE[alias]} side: SQLite's header, but no database SQLite can open"
        for alias, side, f in both
        if f is not None and f.kind != "sqlite" and is_sqlite_header(side.head(f))
    ]
    if garbled:
        return (), "; ".join(garbled)
    sides = [(n, side, f) for n, side, f in both if f and f.kind == "sqlite"]
    with contextlib.closing(sqlite3.connect("file::memory:", uri=True)) as conn:
        conn.execute("PRAGMA writable_schema=ON")  # a newer SQLite's view stops no count
        try:
            for alias, side, f in sides:
                uri = file_uri(side.db_copy(f), "immutable=1")
                conn.execute(f"ATTACH DATABASE ? AS {alias}", (uri,))
            attached = {row[1] for row in conn.execute("PRAGMA database_list")}
            return compare_tables(conn, "a" in attached, "b" in attached), None
        except sqlite3.Error as exc:
            failed = [
                f"{_SIDE[alias]} side: {why}"
                for alias, side, f in sides
                if (why := _unreadable(side.db_copy(f))) is not None
            ]
            return (), "; ".join(failed) or str(exc)


def _unreadable(db: Path) -> str | None:
    """Why SQLite cannot list and count the tables of the database at db, or None."""
    try:
        with contextlib.closing(open_immutable(db)) as conn:
            list_tables(conn)
    except sqlite3.Error as exc:
        return str(exc)
    return None


def chunk_file(repo: Repository, path: Path) -> tuple[list[tuple[ObjectId, int]], str, int]:
    """Chunk ids, whole-file hash and size of a file cut as commit would cut it (the same
    chunker choice); nothing is stored. `diff` compares the live data dir with it."""
    hasher = Hasher()
    refs: list[tuple[ObjectId, int]] = []
    size = 0
    try:
        with open(path, "rb") as f:
            header = f.read(SNIFF_BYTES)
            f.seek(0)
            layout = capture.record_layout(path)
            chunker = choose_chunker(header, repo.config["chunker"], layout)
            for piece in chunker.split(f):
                hasher.update(piece)
                refs.append((repo.ids(piece), len(piece)))
                size += len(piece)
    except OSError as exc:
        raise from_oserror(exc, f"reading {path}") from exc
    return refs, hasher.digest().hex(), size
