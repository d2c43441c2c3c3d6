"""PackWriter: collect new frames into packs, write them, then the index file naming them.

Write order is packs, then the index file that names them, and only then the snapshot that
references them: a crash leaves unreferenced data, never a reference to missing data.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from casnap.chunkindex import (
    BLOB_TYPES,
    FIELD_DTYPE,
    IdSet,
    encode_index,
    id_matrix,
    join_fields,
)
from casnap.constants import MAX_PACK_DIRECTORY
from casnap.ids import ID_SIZE, ObjectId
from casnap.packs import (
    DIR_DTYPE,
    DIR_RECORD,
    PACK_HEADER,
    directory_fields,
    index_key,
    pack_key,
    pack_tail,
)
from casnap.phases import Phases
from casnap.signals import uninterrupted
from casnap.store import Store

# Packs queued for writing at once: bounds memory to about (1 + this) x pack_target. A remote
# backend writes several at once, each upload waiting mostly on the network and the store.
_PACKS_IN_FLIGHT = 1
_REMOTE_PACKS_IN_FLIGHT = 3
# Packs made durable whose ids stay in `recent` as well as in `written`: a frame checked that
# few packs ago is told apart by set lookups, not by the written set's searches.
_RECENT_GENERATIONS = 8

# Frames of at least this many pieces get their directory records from numpy, not one by one.
_RECORDS_AS_ARRAY = 16

# A frame as stored: whole, or its codec byte and payload (compression.encode_parts), which the
# pack's writer joins with the rest of the pack instead of the adding thread joining them.
Frame = bytes | tuple[bytes, bytes]
# A pack made durable: its id, directory records, size, whether this writer made it, and the
# ids of its chunks as `pending` holds them.
_Written = tuple[ObjectId, bytes, int, bool, list[bytes]]


class _OpenPack:
    """A pack being filled: its frames as they came (joined once, by the writing thread, without
    the GIL: growing one buffer frame by frame cost the adding thread a copy and fresh pages)."""

    __slots__ = ("parts", "size", "records", "ids")

    def __init__(self) -> None:
        self.parts: list[bytes] = [PACK_HEADER]
        self.size = len(PACK_HEADER)
        self.records = bytearray()
        self.ids: list[bytes] = []  # as in `pending` (their hashes computed once, kept)


class PackWriter:
    """Collects new frames into packs; `finish` writes the last pack and the index file.

    Packs are written by background threads (at most _PACKS_IN_FLIGHT queued, more on a remote
    backend), so hashing and fsyncing a pack overlaps with reading and compressing the next.
    Not thread-safe: workers encode frames, one thread adds them here.

    `put` stores a finished pack under its key and says whether it made the object (False: the
    same pack was stored already); by default Store.put_verified. gc's dry run passes one that
    stores nothing, to learn the exact packs a repack would write. The writing thread's time
    goes to the `write` phase of phases, the index file's to `index`.
    """

    def __init__(
        self,
        store: Store,
        put: Callable[[str, memoryview], bool] | None = None,
        phases: Phases | None = None,
    ) -> None:
        self.store = store
        self.phases = phases or Phases()
        self._put = put if put is not None else store.put_verified
        self.pending: set[bytes] = set()  # ids in the open pack and in packs being written
        self.written = IdSet()  # ids in this writer's durable packs (compact: 40 bytes each)
        self._pack: _OpenPack | None = None
        self._inflight: deque[Future[_Written]] = deque()
        self._done: list[tuple[ObjectId, bytes]] = []  # (pack, directory records)
        # packs this writer made (not those it found stored already) and their sizes
        self.created: list[tuple[ObjectId, int]] = []
        self._unindexed: list[ObjectId] = []  # of those, the ones its index file does not name
        self._io: ThreadPoolExecutor | None = None
        self.bytes_added = 0  # bytes of packs written
        self.packs_written = 0
        self.chunks_added = 0
        self.bytes_by_type = [0] * len(BLOB_TYPES)  # encoded bytes of frames added, per type
        self.index_bytes = 0
        self.index_key: str | None = None  # the index file finish wrote
        # packs made durable so far: a check of the written set taken at this count is still
        # current while it is unchanged (see add_frame's checked)
        self.generation = 0
        # the ids of the last _RECENT_GENERATIONS durable packs, oldest first, and all of them
        self._retired: deque[list[bytes]] = deque()
        self.recent: set[bytes] = set()

    def known(self, cid: bytes) -> bool:
        """True when the chunk is stored already or queued in this writer."""
        return cid in self.pending or cid in self.written or cid in self.store.index

    def known_many(self, ids: Sequence[bytes]) -> np.ndarray:
        """Boolean array: which of ids are stored or queued; callable from any thread.

        `pending` is read before `written`: an id moving from one to the other (its pack became
        durable) is then found in one of them.
        """
        pending = self.pending
        if pending.isdisjoint(ids):  # one pass in C: the usual case, new chunks queued nowhere
            found = np.zeros(len(ids), dtype=bool)
        else:
            found = np.fromiter((cid in pending for cid in ids), dtype=bool, count=len(ids))
        matrix = id_matrix(b"".join(ids))
        return found | self.written.contains_many(matrix) | self.store.index.contains_many(matrix)

    def add(self, cid: ObjectId, btype: int, encoded: bytes, plain: int) -> bool:
        """Queue one encoded chunk as its own frame unless known; True when it was new."""
        if self.known(cid):
            return False
        return self.add_frame(btype, encoded, 0, [(cid, 0, plain)]) == 1

    def add_frame(
        self,
        btype: int,
        encoded: Frame,
        frame_plain: int,
        members: Sequence[tuple[bytes, int, int]],
        checked: int | None = None,
    ) -> int:
        """Queue a frame holding members (id, offset in frame, plain size); returns how many of
        them were new. frame_plain is the frame's plain size, 0 for a frame of one chunk.

        Callers check the store's index beforehand (in batches, see known_many); members this
        writer has already queued keep their first copy, and a frame with no new member is
        dropped. checked: `generation` as read before the members were found unknown to
        known_many; while no pack has become durable since, none of them can be in the written
        set, and the set (a few sorted arrays: a costly lookup per frame) is not asked again;
        while at most _RECENT_GENERATIONS have, only the ids those packs moved there (`recent`).
        """
        pending = self.pending
        ids = [m[0] for m in members]
        fresh = members
        if not pending.isdisjoint(ids):  # one pass in C: the usual case, no member queued
            fresh = [m for m in members if m[0] not in pending]
        if fresh and len(self.written) and checked != self.generation:
            if checked is not None and self.generation - checked <= len(self._retired):
                recent = self.recent
                if not recent.isdisjoint(ids):
                    fresh = [m for m in fresh if m[0] not in recent]
            else:
                done = self.written.contains_many(id_matrix([bytes(m[0]) for m in fresh]))
                fresh = [m for m, d in zip(fresh, done, strict=True) if not d]
        return self._append(btype, encoded, frame_plain, fresh)

    def add_many(self, btype: int, chunks: Sequence[tuple[bytes, bytes, int]]) -> int:
        """Queue chunks (id, encoded, plain size), each as a frame of its own, but those stored
        or queued already: one batch check for all (the chunk lists of many small files).
        Returns how many were new."""
        known = self.known_many([c for c, _, _ in chunks]).tolist() if chunks else []
        seen: set[bytes] = set()
        added = 0
        for (cid, encoded, plain), stored in zip(chunks, known, strict=True):
            if not stored and cid not in seen:
                seen.add(cid)
                added += self._append(btype, encoded, 0, [(cid, 0, plain)])
        return added

    def _append(
        self,
        btype: int,
        encoded: Frame,
        frame_plain: int,
        fresh: Sequence[tuple[bytes, int, int]],
    ) -> int:
        """Queue a frame whose members (fresh) are known to be new."""
        if not fresh:
            return 0
        pending = self.pending
        if self._pack is None:
            self._pack = _OpenPack()
        p = self._pack
        offset = p.size
        if isinstance(encoded, tuple):
            p.parts += encoded
            length = len(encoded[0]) + len(encoded[1])
        else:
            p.parts.append(encoded)
            length = len(encoded)
        if len(fresh) < _RECORDS_AS_ARRAY:
            pack_rec = DIR_RECORD.pack
            for cid, inner, plain in fresh:
                p.records += pack_rec(cid, btype, offset, length, plain, inner, frame_plain)
                key = bytes(cid)
                pending.add(key)
                p.ids.append(key)
        else:  # a frame of many pieces (pages): its records in a few numpy calls
            ids, inners, plains = zip(*fresh, strict=True)
            rec = np.empty(len(fresh), dtype=DIR_DTYPE)
            rec["id"] = id_matrix(b"".join(ids))
            rec["type"] = btype
            rec["offset"] = offset
            rec["length"] = length
            rec["plain"] = plains
            rec["inner"] = inners
            rec["frame_plain"] = frame_plain
            p.records += rec.tobytes()
            keys = list(map(bytes, ids))
            pending.update(keys)
            p.ids += keys
        p.size += length
        self.chunks_added += len(fresh)
        self.bytes_by_type[btype] += length
        if p.size >= self.store.pack_target or len(p.records) >= MAX_PACK_DIRECTORY:
            self.flush()
        return len(fresh)

    def flush(self) -> None:
        """Hand the open pack to the writing thread (its chunks are indexed once it is durable)."""
        p = self._pack
        self._pack = None
        if p is None or not p.records:
            return
        inflight = _REMOTE_PACKS_IN_FLIGHT if self.store.backend.remote else _PACKS_IN_FLIGHT
        if self._io is None:
            self._io = ThreadPoolExecutor(max_workers=inflight, thread_name_prefix="casnap-pack")
        while len(self._inflight) >= inflight:
            self._collect(self._inflight.popleft())
        # a signal raised inside submit (it may start the thread, and wait for it) would leave
        # the pack on its way unnoted: abort, and a rollback after it, would not wait for it
        with uninterrupted():
            self._inflight.append(self._io.submit(self._write_pack, p))

    def _write_pack(self, p: _OpenPack) -> _Written:
        start = time.perf_counter()
        records = bytes(p.records)
        p.parts.append(pack_tail(records))  # sealed as it is joined: growing it would copy it
        data = bytearray().join(p.parts)  # one copy, the GIL released (CPython joins >1 MiB so)
        p.parts = []
        pack = self.store.ids(data)
        made = self._put(pack_key(pack), memoryview(data))
        self.phases.since("write", start)
        return pack, records, len(data), made, p.ids

    def _collect(self, fut: Future[_Written]) -> None:
        """A pack is durable: its ids move from `pending` to the compact `written` set."""
        pack, records, size, made, ids = fut.result()
        self.bytes_added += size
        self.packs_written += 1
        self._done.append((pack, records))
        if made:
            self.created.append((pack, size))
            self._unindexed.append(pack)
        # into the written set first, so a concurrent check always finds them in one place
        self.written.add(np.frombuffer(records, dtype=DIR_DTYPE)["id"])
        self.pending.difference_update(ids)
        self.recent.update(ids)
        self._retired.append(ids)
        if len(self._retired) > _RECENT_GENERATIONS:
            self.recent.difference_update(self._retired.popleft())
        self.generation += 1  # last: a check that read the old count is asked again

    def new_entries(self) -> tuple[list[ObjectId], np.ndarray, np.ndarray]:
        """(pack table, ids, fields) of the chunks in packs handed to the writing thread (waits
        for them), as an index file holds them."""
        while self._inflight:
            self._collect(self._inflight.popleft())
        packs = [pack for pack, _ in self._done]
        ids_parts, field_parts = [], []
        for n, (_pack, records) in enumerate(self._done):
            rec = np.frombuffer(records, dtype=DIR_DTYPE)
            ids_parts.append(rec["id"])
            field_parts.append(directory_fields(rec, n))
        if not ids_parts:
            return [], np.zeros((0, ID_SIZE), np.uint8), np.zeros(0, FIELD_DTYPE)
        return packs, np.concatenate(ids_parts), join_fields(field_parts)

    def _drain(self) -> None:
        try:
            while self._inflight:
                self._collect(self._inflight.popleft())
        finally:
            if self._io is not None:
                self._io.shutdown(wait=True)
                self._io = None

    def close(self) -> None:
        """Write the open pack and wait for every pack to be durable, without an index file (for
        callers that write their own index from `new_entries`, such as gc)."""
        self.flush()
        self._drain()

    def abort(self) -> list[ObjectId]:
        """Stop after a failure: wait for packs being written, drop the rest (no index file).

        Returns the packs this writer made and `finish` did not index: nothing refers to them
        (unless another writer made the very same pack meanwhile; see rollback.py before deleting
        any). A pack that was stored already when this writer put it is not listed.
        """
        self._pack = None
        while self._inflight:
            fut = self._inflight.popleft()
            try:
                self._collect(fut)
            except BaseException:  # noqa: BLE001 - the first failure is being reported already
                pass
        if self._io is not None:
            self._io.shutdown(wait=True)
            self._io = None
        return list(self._unindexed)

    def finish(self) -> int:
        """Flush, write one index file for everything added, and merge it; returns bytes written."""
        self.flush()
        self._drain()
        if self._done:
            start = time.perf_counter()
            packs, ids, fields = self.new_entries()
            blob = encode_index(packs, ids, fields)
            key = self.index_key = index_key(self.store.ids(blob))  # known to a rollback at once
            self.store.put_verified(key, blob)
            self.index_bytes = len(blob)
            self._unindexed = []
            self.store.index.add([(packs, ids, fields)])
            self.phases.since("index", start)
            self.store.index_files.append(key)
            self._done = []
        return self.bytes_added + self.index_bytes
