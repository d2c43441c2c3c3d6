"""Copy: snapshots from one repository into another, sending only what the destination lacks.

Each snapshot is copied as a commit would store it: its new chunks (read verified from the
source, compressed with the destination's codecs) into packs, then one index file, then its
manifest, the commit point; a failure takes back the packs of the snapshot under way
(rollback.py). Between two repositories that name chunks alike (both plain: the same ids) every
chunk is looked up before it is read, and the copied manifest is byte-identical, so the snapshot
keeps its id. Otherwise each chunk is read, named with the destination's ids, chunk lists and
manifest are rebuilt, and the manifest records `origin` (the repository and id the snapshot was
first taken with), by which a later copy, in either direction, recognises it as copied already.

A snapshot whose data cannot be read whole from the source (a chunk or chunk list missing or
damaged there: errors.DamagedSource) is passed over: its packs are taken back, its manifest is
never written, and the copy goes on with the next one; the result lists it in `damaged`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from casnap import chunklist, compression, presave, rollback, selection
from casnap.chunkindex import DATA, TREE, IndexEntry, id_matrix
from casnap.constants import SPAN_FETCHERS
from casnap.errors import (
    DamagedSource,
    IntegrityError,
    InternalError,
    InvalidArgument,
    RepositoryGone,
    RepositoryNotFound,
    SnapshotNotFound,
)
from casnap.filelists import store_list
from casnap.ids import ObjectId
from casnap.manifest import FileEntry, Snapshot, compress_manifest, decompress_manifest
from casnap.packwriter import PackWriter
from casnap.pipeline import cpu_workers
from casnap.progress import ByteProgress, ProgressFn
from casnap.repository import Repository
from casnap.spans import FramesAhead

# Chunks of a file whose source index entries are looked up at once (one numpy lookup per
# chunk cost most of a copy's time; a batch's entries take ~200 B each).
LOOKUP_BATCH = 1 << 16
# Plain bytes of chunks read and held at once to name them with the destination's ids in one
# lookup (copy between repositories that name chunks differently).
MAP_BYTES = 8 << 20
# Frames being compressed at once while a copy reads on (each up to frame_target plain bytes).
FRAMES_IN_FLIGHT = 8


@dataclass
class SnapshotCopy:
    """What copying one snapshot did: `copied` False when the destination held it already."""

    source: str  # the snapshot's id in the source
    destination: str  # its id in the destination
    copied: bool
    chunks_sent: int = 0  # data chunks written to the destination
    bytes_sent: int = 0  # their plain bytes
    chunks_present: int = 0  # distinct data chunks the destination held already
    lists_sent: int = 0  # chunk-list (TREE) blobs written
    bytes_written: int = 0  # stored bytes: packs, index file and manifest

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class DamagedCopy:
    """A snapshot not copied: its data cannot be read whole from the source."""

    source: str  # the snapshot's id in the source
    error: str  # what cannot be read: the file and the chunk

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class CopyResult:
    """What a copy did, snapshot by snapshot (oldest first), as `copy --json` prints it;
    `damaged`: the snapshots not copied because the source cannot give them whole."""

    source: str  # repository locations
    destination: str
    snapshots: list[SnapshotCopy] = field(default_factory=list)
    damaged: list[DamagedCopy] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        done = [s for s in self.snapshots if s.copied]
        return {
            "source": self.source,
            "destination": self.destination,
            "snapshots": [s.to_json() for s in self.snapshots],
            "damaged": [d.to_json() for d in self.damaged],
            "copied": len(done),
            "present": len(self.snapshots) - len(done),
            "chunks_sent": sum(s.chunks_sent for s in done),
            "bytes_sent": sum(s.bytes_sent for s in done),
            "chunks_present": sum(s.chunks_present for s in done),
            "bytes_written": sum(s.bytes_written for s in done),
            "seconds": self.seconds,
        }


def copy_snapshots(
    src: Repository,
    dst: Repository,
    refs: Sequence[str] = (),
    *,
    select: selection.SnapshotFilter | None = None,
    progress: ProgressFn | None = None,
    result: CopyResult | None = None,
) -> CopyResult:
    """Copy the snapshots of src that refs name (ids, prefixes, `latest`, tags; none: every
    snapshot), among those select matches, into dst; oldest first, each one committed on its
    own. Both repositories are held under the shared lock. progress gets (plain bytes done,
    total) over the files of the snapshots not yet in dst. A selection of no snapshot is
    SnapshotNotFound (chosen), as for forget and prune.

    A snapshot the source cannot give whole (a chunk or chunk list missing or damaged) is not
    copied and leaves nothing in dst; the others are, and the result lists it in `damaged`
    (the caller reports it: the command line exits 5). When no snapshot was copied, a
    destination made for this copy is taken back, as after a failure. A result given is the
    one filled, snapshot by snapshot: after a failure it holds those copied before it."""
    if src.id == dst.id:
        raise InvalidArgument(
            f"{src.backend.location} and {dst.backend.location} share the repository id "
            f"{src.id[:8]}: they are one repository, or one was copied from the other outside "
            "casnap (cp, rsync); copy takes two repositories of their own"
        )
    t0 = time.perf_counter()
    result = result or CopyResult(str(src.backend.location), str(dst.backend.location))
    run = _CopyRun(src, dst, progress, result)
    try:
        with src.lock("copy"), dst.lock("copy"):
            for repo in (src, dst):
                if not repo.backend.exists("config"):  # taken back by a failed first commit
                    where = f"no casnap repository at {repo.backend.location}"
                    if repo.kept_config is not None:  # deleted since this host kept its config
                        repo.kept_config.forget()
                        raise RepositoryGone(where)
                    raise RepositoryNotFound(where)
                repo.refresh(only_if_changed=True)
            run.run(chosen(src, refs, select))
            result.damaged += [  # passed over by chosen: not copied, named (exit 5)
                DamagedCopy(sid.hex(), str(exc))
                for sid, (exc, _where) in (src.damaged.items() if not refs else ())
            ]
            if not result.damaged or any(s.copied for s in result.snapshots):
                dst.created = None  # in use now: never taken back
    except BaseException:
        # without the locks: the packs the snapshot under way wrote, a destination made for it
        rollback.after_failed_commit(
            dst.backend,
            run.unindexed + run.abandoned,
            dst.created,
            run.written_index,
            run.snapshots_before,
        )
        dst.created = None  # taken back, or in use by another process: never again
        raise
    # without the locks: the packs of the snapshots passed over, a destination that holds none
    rollback.after_failed_commit(dst.backend, run.abandoned, dst.created)
    dst.created = None
    result.seconds = time.perf_counter() - t0
    return result


def chosen(
    src: Repository, refs: Sequence[str] = (), select: selection.SnapshotFilter | None = None
) -> list[tuple[ObjectId, Snapshot]]:
    """The snapshots of src refs name (all select matches when none is given), oldest first,
    once; SnapshotNotFound when a ref names none, or select matches none. copy_snapshots takes
    them under its lock; the command line asks first: a copy of nothing makes no destination."""
    # one whose manifest does not read is passed over (copy_snapshots names it), or its error
    snaps, flt = src.snapshots(skip_damaged=True), select or selection.SnapshotFilter()
    if not refs:
        picked = flt.select(snaps)
        if flt.active and not picked and not src.damaged:
            raise SnapshotNotFound(f"no snapshot {flt.describe()}: nothing copied")
        return picked
    resolver = selection.Resolver(snaps, flt, src.damaged)
    wanted = {resolver.resolve(ref).id for ref in refs}
    return [(sid, snap) for sid, snap in snaps if sid in wanted]


def _readable(snap: Snapshot, sid: ObjectId) -> None:
    """Refuse a copy of snapshot sid its readers would refuse (made of a manifest they took,
    only a fault of casnap's own can make one): stored, it would stop every command that
    lists the destination's snapshots."""
    try:
        snap.check()
    except IntegrityError as exc:
        raise InternalError(
            f"internal error, snapshot {sid.short} not copied: casnap made a manifest it would "
            f"refuse ({exc}); please report it"
        ) from exc


class _Framer:
    """Groups a file's new chunks into frames as a commit does (up to the destination's
    frame_target plain bytes, float32 pieces apart), compressed with its levels on the pool's
    threads (zstd releases the GIL) while the next frames are read; frames reach the pack
    writer in the order they were made."""

    def __init__(self, writer: PackWriter, config: dict[str, Any], pool: ThreadPoolExecutor):
        self.writer = writer
        self.pool = pool
        self.level = int(config["zstd_level"])
        self.float_level = int(config.get("float_level", self.level))
        self.target = int(config.get("frame_target", 0))
        self.group_floats = bool(config.get("group_floats", False))
        self._parts: list[bytes] = []
        self._members: list[tuple[bytes, int, int]] = []
        self._size = 0
        self._floats = False
        self._pending: deque[tuple[Future[bytes], int, list[tuple[bytes, int, int]]]] = deque()

    def add(self, cid: bytes, data: bytes, floats: bool) -> None:
        if self._members and (self._size + len(data) > self.target or floats != self._floats):
            self._seal()
        self._floats = floats
        self._members.append((cid, self._size, len(data)))
        self._parts.append(data)
        self._size += len(data)

    def _seal(self) -> None:
        """The open frame sent to be compressed; the oldest frames compressed go to the writer
        (at most FRAMES_IN_FLIGHT wait: memory stays a few frames)."""
        if self._members:
            payload = b"".join(self._parts)
            grouped = self._floats and self.group_floats
            level = self.float_level if self._floats else self.level
            fut = self.pool.submit(compression.encode, payload, level, grouped)
            frame_plain = self._size if len(self._members) > 1 else 0
            self._pending.append((fut, frame_plain, self._members))
            self._parts, self._members, self._size = [], [], 0
        while self._pending and (
            len(self._pending) > FRAMES_IN_FLIGHT or self._pending[0][0].done()
        ):
            self._write_oldest()

    def _write_oldest(self) -> None:
        fut, frame_plain, members = self._pending.popleft()
        self.writer.add_frame(DATA, fut.result(), frame_plain, members)

    def flush(self) -> None:
        """Every chunk added so far handed to the writer (a file's chunks precede its list)."""
        self._seal()
        while self._pending:
            self._write_oldest()


class _CopyRun:
    """One copy between two repositories: the state its snapshots share, and what a rollback
    needs to know about the snapshot under way."""

    def __init__(
        self, src: Repository, dst: Repository, progress: ProgressFn | None, result: CopyResult
    ) -> None:
        self.src = src
        self.dst = dst
        self.progress = progress
        self.result = result
        # both sides name chunks, lists and manifests alike: ids carry over unchanged
        self.same_ids = src.ids.key == dst.ids.key
        self.mapped: dict[bytes, ObjectId] = {}  # source chunk id -> destination chunk id
        self.unindexed: list[ObjectId] = []
        self.abandoned: list[ObjectId] = []  # packs of snapshots passed over (DamagedSource)
        self.written_index: str | None = None
        self.snapshots_before: frozenset[str] = frozenset()
        self._present: dict[str, Snapshot] = {}  # destination snapshots, by id
        self._origins: dict[str, str] = {}  # snapshot id a copy came from -> its dst id
        self._source: dict[str, Snapshot] = {}  # source snapshots, by id (parents looked up)
        self.packs_checked = False  # the destination holds every pack its index names
        self.pool: ThreadPoolExecutor  # compresses frames (run)
        self.fetcher: ThreadPoolExecutor | None = None  # fetches spans of a remote source (run)
        self._ahead: FramesAhead | None = None

    # -- snapshots -----------------------------------------------------------------------------

    def run(self, chosen: list[tuple[ObjectId, Snapshot]]) -> None:
        result = self.result
        # a destination manifest that does not read is passed over, as a commit passes over it
        # (the caller warns of it): one damaged snapshot must not stop the copies
        for sid, snap in self.dst.snapshots(skip_damaged=True):
            self._learn(sid.hex(), snap)
        self._source = {sid.hex(): snap for sid, snap in self.src.snapshots(skip_damaged=True)}
        todo = [(sid, snap) for sid, snap in chosen if self._found(sid.hex(), snap) is None]
        bar = ByteProgress(sum(s.logical_bytes for _, s in todo), self.progress)
        fetchers = SPAN_FETCHERS if self.src.backend.remote else 0
        with (
            ThreadPoolExecutor(cpu_workers(), thread_name_prefix="casnap-copy") as pool,
            contextlib.ExitStack() as stack,
        ):
            self.pool = pool
            if fetchers:
                self.fetcher = stack.enter_context(
                    ThreadPoolExecutor(fetchers, thread_name_prefix="casnap-fetch")
                )
            for sid, snap in chosen:
                found = self._found(sid.hex(), snap)
                if found is not None:
                    result.snapshots.append(SnapshotCopy(sid.hex(), found, copied=False))
                    continue
                start = bar.done
                try:
                    result.snapshots.append(self._copy(sid, snap, bar))
                except DamagedSource as exc:  # nothing of it stays: on with the next one
                    result.damaged.append(DamagedCopy(sid.hex(), str(exc)))
                    bar.advance_to(start + snap.logical_bytes)
        bar.finish()

    def _learn(self, dsid: str, snap: Snapshot) -> None:
        self._present[dsid] = snap
        if snap.origin is not None:
            self._origins[snap.origin[1]] = dsid

    def _found(self, sid: str, snap: Snapshot | None) -> str | None:
        """The destination's id of source snapshot sid when the destination holds it: the same
        snapshot, or a copy of it or of the snapshot it was copied from (by snapshot id alone:
        a 256-bit id names one manifest, whichever repository it was seen in)."""
        first = snap.origin[1] if snap is not None and snap.origin is not None else sid
        for key in dict.fromkeys((sid, first)):
            if key in self._present:
                return key
            if key in self._origins:
                return self._origins[key]
        return None

    def _parent(self, sid: str | None) -> str | None:
        """The destination's copy of source snapshot sid, or the snapshot it was copied from."""
        return self._found(sid, self._source.get(sid)) if sid else None

    def _copy(self, sid: ObjectId, snap: Snapshot, bar: ByteProgress) -> SnapshotCopy:
        """Store one snapshot in the destination: packs, index file, manifest (the commit
        point), each read back before it counts as copied."""
        src, dst = self.src, self.dst
        src.ensure_index(skip_damaged=True)  # what a damaged index file names: not copied
        try:  # which of the two: said
            dst.ensure_index()
            if not self.packs_checked:  # once: a chunk of a pack lost would be taken for stored
                dst.store.require_packs("copied", "copy")
        except IntegrityError as exc:
            way = "`casnap verify` it; `casnap repair-index` rebuilds its index"
            why = str(exc) if "repair-index" in str(exc) else f"{exc} ({way})"
            raise IntegrityError(f"in the destination {dst.backend.location}: {why}") from exc
        self.packs_checked = True
        raw = self._manifest(sid) if self.same_ids else b""  # before anything is written
        self.snapshots_before = frozenset([*self._present, *(s.hex() for s in dst.damaged)])
        out = SnapshotCopy(sid.hex(), "", copied=True)
        writer = PackWriter(dst.store)
        framer = _Framer(writer, dst.config, self.pool)
        base = self._base(snap)
        lists: dict[tuple[str, ...], tuple[tuple[str, ...], bytes]] = {}
        seen: set[bytes] = set()
        files: list[FileEntry] = []
        mapped_before = len(self.mapped)
        try:
            for entry in snap.files:
                if entry.lists not in lists:
                    lists[entry.lists] = self._file(entry, writer, framer, base, seen, out)
                    bar.add(entry.size)
                else:  # the same chunk list: checked against this entry's size too
                    try:
                        chunklist.check_size(lists[entry.lists][1], entry.size, entry.path)
                    except IntegrityError as exc:
                        raise DamagedSource(str(exc)) from exc
                files.append(entry._replace(lists=lists[entry.lists][0]))
            framer.flush()
            added = writer.finish()
            self._check_lists(files, lists)
        except DamagedSource:  # a source read, before any index file: only packs to take back
            self.abandoned += writer.abort()
            for cid in list(self.mapped)[mapped_before:]:  # named, but never stored
                del self.mapped[cid]
            raise
        except BaseException:
            self.unindexed = writer.abort()
            self.written_index = writer.index_key  # when the failure came after it was written
            raise
        try:  # a failure from here on takes back the index file and packs too
            if not self.same_ids:
                parent = self._parent(snap.parent)
                origin = snap.origin or (src.id, sid.hex())  # a copy of a copy: the first one
                message = presave.copied_message(snap, self._source, self._parent)
                new = dataclasses.replace(
                    snap, files=tuple(files), parent=parent, origin=origin, message=message
                )
                _readable(new, sid)
                raw = new.encode()
            dsid = dst.ids(raw)
            blob = compress_manifest(raw)
            dst.store.put_verified(f"snapshots/{dsid.hex()}", blob)  # last: the commit point
            copied = dst.load_snapshot(dsid)  # read back through the destination
            if copied.encode() != raw:
                raise IntegrityError(f"snapshot {dsid.hex()} reads back other than written")
        except BaseException:
            self.written_index = writer.index_key
            self.unindexed = [pack for pack, _size in writer.created]
            raise
        self.unindexed, self.written_index = [], None
        dst.remember_snapshot(dsid, copied)
        self._learn(dsid.hex(), copied)
        out.destination = dsid.hex()
        out.chunks_sent = writer.chunks_added - out.lists_sent
        out.bytes_written = added + len(blob)
        return out

    def _manifest(self, sid: ObjectId) -> bytes:
        """The source's manifest of sid as stored, checked against its id (copied unchanged)."""
        key = f"snapshots/{sid.hex()}"
        try:
            raw = decompress_manifest(self.src.backend.get(key), key)
        except IntegrityError as exc:
            raise DamagedSource(str(exc)) from exc
        if self.src.ids(raw) != sid:
            raise DamagedSource(f"{key} does not match its id (damaged)")
        return raw

    def _base(self, snap: Snapshot) -> dict[str, FileEntry]:
        """Entries of the destination's newest snapshot of the same data dir and paths: chunk
        lists rebuilt with destination ids are stored as deltas against them."""
        if self.same_ids:
            return {}
        for _sid, other in reversed(self.dst.snapshots(skip_damaged=True)):
            if other.source == snap.source and other.paths == snap.paths:
                return {f.path: f for f in other.files if f.link is None}
        return {}

    # -- files ---------------------------------------------------------------------------------

    def _file(
        self,
        entry: FileEntry,
        writer: PackWriter,
        framer: _Framer,
        base: dict[str, FileEntry],
        seen: set[bytes],
        out: SnapshotCopy,
    ) -> tuple[tuple[str, ...], bytes]:
        """Send a file's missing chunks and chunk list; returns the list's blob ids in the
        destination and the refs they must resolve to. A damaged chunk names the file; one of
        the source is DamagedSource."""
        try:
            refs = self.src.file_refs(entry)  # its TREE blobs read and verified (errors name it)
        except IntegrityError as exc:
            raise DamagedSource(str(exc)) from exc
        try:
            return self._send(entry, refs, writer, framer, base, seen, out)
        except IntegrityError as exc:
            damaged = isinstance(exc, DamagedSource)
            raise (DamagedSource if damaged else IntegrityError)(f"{entry.path}: {exc}") from exc

    def _send(
        self,
        entry: FileEntry,
        refs: bytes,
        writer: PackWriter,
        framer: _Framer,
        base: dict[str, FileEntry],
        seen: set[bytes],
        out: SnapshotCopy,
    ) -> tuple[tuple[str, ...], bytes]:
        pairs = list(chunklist.REF.iter_unpack(refs))
        batches = [pairs[i : i + LOOKUP_BATCH] for i in range(0, len(pairs), LOOKUP_BATCH)]
        if self.same_ids:
            for batch in batches:
                stored = writer.known_many([cid for cid, _n in batch])  # before it is read
                todo = []
                for (cid, n), there in zip(batch, stored.tolist(), strict=True):
                    if cid in seen:  # sent or counted already (seen holds what this copy added)
                        continue
                    seen.add(cid)
                    if there:
                        out.chunks_present += 1
                    else:
                        todo.append((cid, n))
                found = self.src.store.index.entries(cid for cid, _n in todo)
                with self._frames_ahead(found):
                    for cid, n in todo:
                        data, floats = self._read(ObjectId(cid), found)
                        framer.add(cid, data, floats)
                        out.bytes_sent += n
            framer.flush()  # a file's chunks precede its list, as in a commit
            for lid in entry.lists:
                oid = ObjectId.from_hex(lid)
                if not writer.known(oid):
                    try:
                        body = self.src.store.get(oid)
                    except IntegrityError as exc:
                        raise DamagedSource(str(exc)) from exc
                    writer.add(oid, TREE, compression.encode(body, framer.level), len(body))
                    out.lists_sent += 1
            return entry.lists, refs
        mapped = bytearray()
        for batch in batches:
            found = self.src.store.index.entries(c for c, _n in batch if c not in self.mapped)
            with self._frames_ahead(found):
                for part in chunklist.by_bytes(batch, MAP_BYTES):
                    self._map(part, found, writer, framer, seen, out)
                    for cid, n in part:
                        if cid not in seen:
                            seen.add(cid)
                            out.chunks_present += 1
                        mapped += chunklist.REF.pack(self.mapped[cid], n)
        framer.flush()
        new_refs = bytes(mapped)
        before = writer.chunks_added
        ids = store_list(self.dst, new_refs, base.get(entry.path), writer, framer.level)
        out.lists_sent += writer.chunks_added - before
        return ids, new_refs

    def _map(
        self,
        part: list[tuple[bytes, int]],
        found: dict[ObjectId, IndexEntry],
        writer: PackWriter,
        framer: _Framer,
        seen: set[bytes],
        out: SnapshotCopy,
    ) -> None:
        """Read the chunks of part not mapped yet, name them with the destination's ids (one
        lookup of all of them there) and send those it lacks; self.mapped then holds them all."""
        read: dict[bytes, tuple[ObjectId, bytes, bool]] = {}
        for cid, _n in part:
            if cid not in self.mapped and cid not in read:
                data, floats = self._read(ObjectId(cid), found)
                read[cid] = (self.dst.ids(data), data, floats)
        if not read:
            return
        # a chunk read here was never sent by this copy (its id would be mapped): only the
        # destination's own index and this writer can hold it already
        there = writer.known_many([dcid for dcid, _d, _f in read.values()]).tolist()
        for (cid, (dcid, data, floats)), known in zip(read.items(), there, strict=True):
            self.mapped[cid] = dcid
            if not known:
                framer.add(dcid, data, floats)
                out.bytes_sent += len(data)
                seen.add(cid)

    def _read(self, cid: ObjectId, found: dict[ObjectId, IndexEntry]) -> tuple[bytes, bool]:
        """A chunk's plain bytes from the source, verified, and whether the source stored it as
        float32 words (a byte-grouped frame), so the destination compresses it alike. found
        holds the entries of a batch looked up at once (an absent chunk: the usual error)."""
        store = self.src.store
        try:
            e = found.get(cid) or store.entry(cid)
            if self._ahead is not None:
                self._ahead.ready(e)
            return store.chunk_at(cid, e)
        except IntegrityError as exc:
            raise DamagedSource(str(exc)) from exc

    @contextlib.contextmanager
    def _frames_ahead(self, found: dict[ObjectId, IndexEntry]) -> Iterator[None]:
        """From a remote source, the frames of the chunks found (in the order they are read)
        fetched ahead as spans while they are read: a few large requests, not one per frame."""
        if self.fetcher is None or not found:
            yield
            return
        self._ahead = FramesAhead(self.src.store, self.fetcher, found.values())
        try:
            yield
        finally:
            self._ahead.close()
            self._ahead = None

    def _check_lists(
        self,
        files: list[FileEntry],
        lists: dict[tuple[str, ...], tuple[tuple[str, ...], bytes]],
    ) -> None:
        """Read every copied chunk list back through the destination's index (each blob
        verified) and check it resolves to the refs intended, every chunk of it indexed."""
        by_lists = {f.lists: f for f in files}
        for ids, refs in lists.values():
            entry = by_lists[ids]
            try:
                got = self.dst.file_refs(entry)
            except IntegrityError as exc:  # the index names what is gone (a pack lost)
                raise IntegrityError(
                    f"in the destination {self.dst.backend.location}: {exc} (`casnap verify` "
                    "it; `casnap repair-index` drops the index entries of a pack lost)"
                ) from exc
            if got != refs:
                raise IntegrityError(f"chunk list of {entry.path} reads back other than written")
            known = self.dst.store.index.contains_many(id_matrix(chunklist.ids_packed(got)))
            if not known.all():
                raise IntegrityError(f"a chunk of {entry.path} is missing from the destination")
