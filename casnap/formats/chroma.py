"""Chroma's persistent dir, as `chromadb.PersistentClient(path)` writes it.

`chroma.sqlite3` holds the collections, their segments, every record's id and metadata (the
metadata segment's `embeddings` table) and a write-ahead queue of operations
(`embeddings_queue`: add 0, update 1, upsert 2, delete 3, by sequence number). Each collection's
vectors live in an HNSW segment: a folder named by the segment's id beside the database, holding
hnswlib's four files (formats/hnsw.py) and `index_metadata.pickle`, a pickled dict (or, in older
versions, a `PersistentData` object) whose `id_to_label` maps each live record id to its HNSW
label. Chroma persists the HNSW segment every few hundred operations and records up to which
sequence number in `max_seq_id`; the operations after it stay queued and are replayed on open.
So the ids of a segment, with the queued operations after its sequence number replayed, must be
the ids of the collection's metadata segment with those after its own number replayed.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from casnap.formats import CHROMA_DATABASE, CHROMA_METADATA, Finding, StoreLayout, hnsw
from casnap.formats.pickles import Global, PickleProblem, state_of, walk
from casnap.formats.sqlite import check_side_files, file_uri

if TYPE_CHECKING:  # numpy is imported where labels are compared: finding a store needs none
    import numpy as np

SEGMENT_FILES = (*hnsw.FILES, CHROMA_METADATA)
_PERSISTENT_DATA = Global("chromadb.segment.impl.vector.local_persistent_hnsw", "PersistentData")
_ADD, _UPDATE, _UPSERT, _DELETE = 0, 1, 2, 3


def segments(store: StoreLayout) -> dict[str, str]:
    """The segment folders of a store: segment id -> relative folder."""
    out = {}
    for rel in store.files:
        if rel == store.rel(CHROMA_DATABASE):
            continue
        folder = PurePosixPath(rel).parent
        out[folder.name] = folder.as_posix()
    return out


# -- index_metadata.pickle -----------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentIds:
    """What index_metadata.pickle says: each live record id's label, and labels handed out."""

    labels: dict[str, int]
    added: int | None


def read_metadata(data: bytes) -> SegmentIds:
    """The id -> label map of an index_metadata.pickle, from its opcodes alone; PickleProblem
    when it is not Chroma's metadata, or names anything but Chroma's PersistentData class."""
    found = walk(data, lambda g: g == _PERSISTENT_DATA, "Chroma's index_metadata.pickle")
    value = state_of(found.value)
    if not isinstance(value, dict) or not isinstance(value.get("id_to_label"), dict):
        raise PickleProblem("not Chroma's HNSW metadata: no id_to_label map")
    labels = value["id_to_label"]
    if not all(isinstance(k, str) and isinstance(v, int) for k, v in labels.items()):
        raise PickleProblem("not Chroma's HNSW metadata: id_to_label is not str -> int")
    back = value.get("label_to_id")
    if isinstance(back, dict) and len(back) != len(labels):
        raise PickleProblem(
            f"id_to_label holds {len(labels)} ids but label_to_id {len(back)} labels"
        )
    added = value.get("total_elements_added")
    return SegmentIds(dict(labels), added if isinstance(added, int) else None)


# -- chroma.sqlite3 ------------------------------------------------------------------------------


@dataclass
class CollectionRecord:
    """One collection as chroma.sqlite3 records it: its segments, their sequence numbers, the
    ids of its metadata segment and the queued operations."""

    id: str
    name: str
    dimension: int | None
    vector: str | None = None
    metadata: str | None = None
    seq: dict[str, int] = field(default_factory=dict)
    ids: set[str] = field(default_factory=set)
    queue: list[tuple[int, int, str]] = field(default_factory=list)


class NotChroma(ValueError):
    """A chroma.sqlite3 that is not Chroma's schema, holds a value Chroma never writes, or
    would take more work to read than its size allows."""


#: The tables read_database reads: each must be a plain table (a view or a virtual table of
#: that name could run any query, an endless one included).
TABLES = ("collections", "segments", "max_seq_id", "embeddings_queue", "embeddings")
#: Steps of SQLite's virtual machine a read may take: a fixed allowance plus some per byte of
#: the database (every query reads each row once, a few steps a row); beyond it the read stops.
STEPS_BASE = 10_000_000
STEPS_PER_BYTE = 64
_STEPS_CHECK = 10_000  # steps between two checks of the allowance


def _seq(value: Any) -> int:
    """A sequence number: an integer, or (older versions) 8 big-endian bytes; NotChroma for
    anything else."""
    if value is None:
        return 0
    if isinstance(value, bytes) and len(value) <= 8:
        return int.from_bytes(value, "big")
    if isinstance(value, int):
        return value
    raise NotChroma(f"not a Chroma database: {str(value)[:40]!r} is no sequence number")


def _database_size(path: Path) -> int:
    """The bytes of a database with its write-ahead log (what a read may need to go through)."""
    size = 0
    for p in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(OSError):
            size += os.stat(p).st_size
    return size


def read_database(path: Path, private: bool) -> list[CollectionRecord]:
    """The collections of a chroma.sqlite3, read only (private: a copy nobody else writes, read
    as immutable), with bounded work: NotChroma when it is not Chroma's schema or takes more
    steps than its size allows; sqlite3.Error when SQLite cannot read it; SourceError when a
    side file of a shared one is no regular file (SQLite would open it)."""
    if not private:
        check_side_files(path)
    mode = "immutable=1" if private else "mode=ro"
    uri = file_uri(path, mode)
    size = _database_size(Path(path))
    budget = (STEPS_BASE + STEPS_PER_BYTE * size) // _STEPS_CHECK
    spent = 0

    def over_budget() -> bool:
        nonlocal spent
        spent += 1
        return spent > budget

    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        # no value longer than the file (a computed column could make one of a gigabyte)
        db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max(size, 1 << 20))
        db.set_progress_handler(over_budget, _STEPS_CHECK)
        try:
            return _read_tables(db)
        except sqlite3.OperationalError as exc:
            if spent > budget:
                raise NotChroma(
                    f"could not be read in time: over {budget * _STEPS_CHECK} steps "
                    f"for its {size} bytes"
                ) from exc
            raise


def _read_tables(db: sqlite3.Connection) -> list[CollectionRecord]:
    """read_database's queries: each table read once, in one pass."""
    kinds = dict(
        db.execute(
            "SELECT name, type = 'table' AND upper(sql) NOT LIKE 'CREATE VIRTUAL%' "
            "FROM sqlite_master WHERE name IN (?, ?, ?, ?, ?)",
            TABLES,
        ).fetchall()
    )
    for name in TABLES:
        if name not in kinds:
            raise NotChroma(f"not a Chroma database: no table {name}")
        if not kinds[name]:
            raise NotChroma(f"not a Chroma database: {name} is not a plain table")
    cols = {
        r[0]: CollectionRecord(r[0], r[1], r[2])
        for r in db.execute("SELECT id, name, dimension FROM collections")
    }
    by_segment: dict[Any, CollectionRecord] = {}
    for sid, scope, coll in db.execute("SELECT id, scope, collection FROM segments"):
        rec = cols.get(coll)
        if rec is not None and scope == "VECTOR":
            rec.vector = sid
        elif rec is not None and scope == "METADATA":
            rec.metadata = sid
    seqs = {sid: _seq(seq) for sid, seq in db.execute("SELECT segment_id, seq_id FROM max_seq_id")}
    for rec in cols.values():
        rec.seq = {s: seqs.get(s, 0) for s in (rec.vector, rec.metadata) if s is not None}
        if rec.metadata is not None:
            by_segment[rec.metadata] = rec
    for eid, sid in db.execute("SELECT embedding_id, segment_id FROM embeddings"):
        owner = by_segment.get(sid)
        if owner is not None:
            owner.ids.add(eid)
    floors = {rec.id: min(rec.seq.values(), default=0) for rec in cols.values()}
    rows = db.execute("SELECT seq_id, operation, id, topic FROM embeddings_queue ORDER BY seq_id")
    for seq, op, rid, topic in rows:
        owner = cols.get(str(topic).rsplit("/", 1)[-1])
        if owner is not None and _seq(seq) > floors[owner.id]:
            owner.queue.append((_seq(seq), op, rid))
    return list(cols.values())


def replay(ids: Iterable[str], queue: Iterable[tuple[int, int, str]], after: int) -> set[str]:
    """The ids after the queued operations numbered above `after` (adds and upserts add an id,
    deletes remove it, updates keep the set as it is)."""
    out = set(ids)
    for seq, op, rid in queue:
        if seq <= after:
            continue
        if op in (_ADD, _UPSERT):
            out.add(rid)
        elif op == _DELETE:
            out.discard(rid)
    return out


# -- checks --------------------------------------------------------------------------------------


@dataclass
class _Segment:
    """What the checks of one segment folder found, for the counts that follow."""

    header: hnsw.HnswHeader | None = None
    ids: SegmentIds | None = None
    level0: hnsw.Level0 | None = None
    ok: bool = True


def check(store: StoreLayout, view: Mapping[str, Path], deep: bool, private: bool) -> list[Finding]:
    """Each HNSW segment's files (hnsw-header, hnsw-data, hnsw-links, hnsw-metadata), then each
    collection's ids against chroma.sqlite3 (chroma-counts). Every element of data_level0.bin
    is read (deleted marks, labels, neighbour ids); deep: also every upper-level list."""
    found: list[Finding] = []
    segs: dict[str, _Segment] = {}
    for sid, folder in segments(store).items():
        seg = _Segment()
        found += _check_segment(folder, view, deep, seg)
        segs[sid] = seg
    db_rel = store.rel(CHROMA_DATABASE)
    if db_rel not in store.files:  # segment folders whose database is gone
        detail = (
            f"{CHROMA_DATABASE} is missing, yet {len(segs)} HNSW segment folder(s) lie beside "
            "its place: Chroma opens an empty store without it"
        )
        return [*found, Finding("chroma-counts", db_rel, False, detail)]
    try:
        records = read_database(Path(view[db_rel]), private)
    except sqlite3.OperationalError as exc:
        if not private and "locked" in str(exc):
            return found  # Chroma is writing: its snapshot is counted when restored
        found.append(Finding("chroma-counts", db_rel, False, f"cannot read Chroma's tables: {exc}"))
        return found
    except sqlite3.Error as exc:
        found.append(Finding("chroma-counts", db_rel, False, f"cannot read Chroma's tables: {exc}"))
        return found
    except NotChroma as exc:
        found.append(Finding("chroma-counts", db_rel, False, str(exc)))
        return found
    for rec in records:
        mine = segs.get(rec.vector or "")
        if mine is not None and not mine.ok:
            continue  # its files already failed: counting them would say the same again
        found.append(_counts(db_rel, rec, mine))
    return found


def _check_segment(
    folder: str, view: Mapping[str, Path], deep: bool, seg: _Segment
) -> list[Finding]:
    """The hnsw-* findings of one segment folder; fills seg for the counts."""
    rel = {name: f"{folder}/{name}" for name in SEGMENT_FILES}
    paths = {name: (Path(view[r]) if r in view else None) for name, r in rel.items()}
    header_path = paths[hnsw.HEADER]
    if header_path is None:
        seg.ok = False
        return [Finding("hnsw-header", rel[hnsw.HEADER], False, "header.bin is missing")]
    try:
        header = hnsw.read_header(header_path)
    except ValueError as exc:
        seg.ok = False
        return [Finding("hnsw-header", rel[hnsw.HEADER], False, str(exc))]
    seg.header = header
    info = {"elements": header.elements, "d": header.dim}
    found = [Finding("hnsw-header", rel[hnsw.HEADER], True, header.describe(), info)]
    problems = hnsw.size_problems(header, hnsw.file_sizes(paths))
    if not problems:  # a numpy scan, cheap enough for a commit: a stale header.bin shows here
        data = paths[hnsw.DATA]
        assert data is not None
        try:
            seg.level0 = hnsw.scan_level0(data, header)
        except (OSError, ValueError) as exc:
            problems.append(str(exc))
    if problems:
        seg.ok = False
        found.append(Finding("hnsw-data", rel[hnsw.DATA], False, "; ".join(problems), info))
    else:
        detail = f"{header.elements} elements of {header.element_size} bytes"
        if seg.level0 is not None:
            detail += f", {seg.level0.deleted} marked deleted, every neighbour id in range"
        found.append(Finding("hnsw-data", rel[hnsw.DATA], True, detail, info))
    found.append(_check_links(rel[hnsw.LINKS], paths[hnsw.LINKS], header, deep, seg))
    meta_path = paths[CHROMA_METADATA]
    if meta_path is not None:
        found.append(_check_metadata(rel[CHROMA_METADATA], meta_path, seg))
    elif header.elements:
        seg.ok = False
        detail = f"index_metadata.pickle is missing, yet the segment holds {header.elements}"
        found.append(Finding("hnsw-metadata", rel[CHROMA_METADATA], False, detail + " elements"))
    return found


def _check_links(
    rel: str, path: Path | None, header: hnsw.HnswHeader, deep: bool, seg: _Segment
) -> Finding:
    """hnsw-links: link_lists.bin walked element by element."""
    if path is None:
        seg.ok = False
        return Finding("hnsw-links", rel, False, "link_lists.bin is missing")
    try:
        used, top = hnsw.walk_links(header, path.read_bytes(), deep)
    except (OSError, ValueError) as exc:
        seg.ok = False
        return Finding("hnsw-links", rel, False, str(exc))
    if header.elements and top != header.max_level:
        seg.ok = False
        detail = f"the highest level found is {top}, header.bin says {header.max_level}"
        return Finding("hnsw-links", rel, False, detail)
    return Finding("hnsw-links", rel, True, f"{header.elements} elements' lists in {used} bytes")


def _check_metadata(rel: str, path: Path, seg: _Segment) -> Finding:
    """hnsw-metadata: the pickle read without running it; with a scan, its labels against the
    live elements of data_level0.bin."""
    try:
        ids = read_metadata(path.read_bytes())
    except OSError as exc:
        seg.ok = False
        return Finding("hnsw-metadata", rel, False, f"cannot be read: {exc}")
    except PickleProblem as exc:
        seg.ok = False
        return Finding("hnsw-metadata", rel, False, str(exc))
    seg.ids = ids
    info = {"ids": len(ids.labels)}
    elements = seg.header.elements if seg.header is not None else None
    if elements is not None and len(ids.labels) > elements:
        seg.ok = False
        detail = f"{len(ids.labels)} ids but header.bin counts {elements} elements"
        return Finding("hnsw-metadata", rel, False, detail, info)
    detail = f"pickle read without running it: {len(ids.labels)} ids"
    if seg.level0 is not None:
        live = seg.level0.live_labels
        distinct, stray = _compare_labels(list(ids.labels.values()), live)
        if stray or distinct != live.size:
            seg.ok = False
            detail = (
                f"{len(ids.labels)} ids but data_level0.bin holds {live.size} "
                f"live elements ({stray} labels not among them)"
            )
            return Finding("hnsw-metadata", rel, False, detail, info)
        detail += ", the labels of the live elements"
    return Finding("hnsw-metadata", rel, True, detail, info)


def _compare_labels(labels: Collection[int], live: np.ndarray) -> tuple[int, int]:
    """(distinct labels, how many of them are not in live) of the pickle's labels against the
    sorted uint64 labels of data_level0.bin's live elements; arrays, not sets of ints."""
    import numpy as np

    fits = [v for v in labels if 0 <= v < 1 << 64] if labels else []
    beyond = len(labels) - len(fits)  # a negative label, or one over 64 bits: in no file
    want = np.unique(np.fromiter(fits, dtype=np.uint64, count=len(fits)))
    if not live.size:
        return int(want.size) + beyond, int(want.size) + beyond
    at = np.minimum(np.searchsorted(live, want), live.size - 1)
    return int(want.size) + beyond, int(np.count_nonzero(live[at] != want)) + beyond


def _counts(db_rel: str, rec: CollectionRecord, seg: _Segment | None) -> Finding:
    """chroma-counts of one collection: its segment's ids against its embeddings, each with the
    queued operations after its own sequence number replayed."""
    labels = seg.ids.labels if seg is not None and seg.ids is not None else {}
    vseq = rec.seq.get(rec.vector or "", 0)
    mseq = rec.seq.get(rec.metadata or "", 0)
    in_segment = replay(labels, rec.queue, vseq)
    in_db = replay(rec.ids, rec.queue, mseq)
    info = {"collection": rec.name, "segment": len(in_segment), "embeddings": len(in_db)}
    queued = sum(1 for s, _, _ in rec.queue if s > min(vseq, mseq))
    what = f"collection {rec.name!r}"
    if seg is not None and seg.header is not None and rec.dimension is not None:
        if seg.header.elements and seg.header.dim != rec.dimension:
            detail = (
                f"{what}: its segment holds d={seg.header.dim}, the collection d={rec.dimension}"
            )
            return Finding("chroma-counts", db_rel, False, detail, info)
    if in_segment != in_db:
        detail = (
            f"{what}: its HNSW segment holds {len(in_segment)} ids, chroma.sqlite3 "
            f"{len(in_db)} ({len(in_db - in_segment)} missing from the segment, "
            f"{len(in_segment - in_db)} only in it; {queued} queued operations replayed)"
        )
        return Finding("chroma-counts", db_rel, False, detail, info)
    detail = f"{what}: {len(in_db)} ids agree in its HNSW segment and chroma.sqlite3"
    if queued:
        detail += f" ({queued} queued operations replayed)"
    return Finding("chroma-counts", db_rel, True, detail, info)
