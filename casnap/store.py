"""Store: get a chunk back verified, through the index of every index file.

Index files map chunk id -> (pack, frame offset, frame length, chunk plain size, chunk offset in
the frame, frame plain size); lookups use the index (chunkindex.py) and never scan packs. A frame
is one encoded blob (codec byte + payload, see compression.py) holding one chunk or several
consecutive new chunks compressed together. The pack layout is packs.py; new packs and index
files are written by packwriter.py.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from casnap import compression
from casnap.backends.base import Backend, put_verified, salvage
from casnap.chunkindex import (
    FIELD_DTYPE,
    ChunkIndex,
    IndexEntry,
    check_entries,
    decode_index,
    encode_index,
    entry_of,
    join_fields,
    take_fields,
    void_ids,
)
from casnap.constants import FRAME_CACHE_BYTES, INDEX_STREAM_BYTES
from casnap.crypto import refuse_sealed
from casnap.errors import DamagedIndex, IntegrityError, ObjectMissing, SealedUnderPlainConfig
from casnap.ids import ID_SIZE, PLAIN_IDS, IdHasher, ObjectId
from casnap.packs import (
    MIN_PACK_SIZE,
    PACK_HEADER,
    PACKS,
    check_pack_size,
    directory_fields,
    index_key,
    pack_id_of,
    pack_key,
    parse_pack_directory,
)

HASH_MISMATCH = "does not match its hash (damaged)"
_END_STEP = 1 << 18  # index entries looked at a time by frame_ends
# an index file stored in at most this many bytes (a commit of a few new chunks) is checked and
# added to the index together with the others listed beside it: one step per file cost more
# than its entries did (1,500 such files: 0.23 s of the 0.33 s their load took)
_SMALL_INDEX_BYTES = 64 * 1024
_SMALL_BATCH_ENTRIES = 1 << 16  # entries of small files held before they are checked and added


class _SmallFiles:
    """Small index files read one by one, checked and added to the index as one part: their
    pack tables laid end to end, each file's pack numbers moved past the tables before it. A
    batch whose check fails is checked file by file, so the first bad file listed is named
    (or, with skip_damaged, left out) as when each file was checked alone; each read failure
    flushes first, so what was listed before it is judged before it."""

    def __init__(self, index: ChunkIndex, skip_damaged: bool, damaged: dict[str, str]) -> None:
        self.index = index
        self.skip_damaged = skip_damaged
        self.damaged = damaged
        self.parts: list[tuple[str, list[ObjectId], np.ndarray, np.ndarray]] = []
        self.entries = 0

    def add(self, key: str, part: tuple[list[ObjectId], np.ndarray, np.ndarray]) -> None:
        self.parts.append((key, *part))
        self.entries += len(part[1])
        if self.entries >= _SMALL_BATCH_ENTRIES:
            self.flush()

    def flush(self) -> None:
        parts, self.parts, self.entries = self.parts, [], 0
        if not parts:
            return
        counts = np.array([len(f) for _, _, _, f in parts], dtype=np.int64)
        tables = np.array([len(p) for _, p, _, _ in parts], dtype=np.int64)
        fields = np.concatenate([f for _, _, _, f in parts])
        within = np.repeat(tables, counts)  # each entry's pack table size
        if (fields["pack"] >= within).any() or not _entries_pass(fields, tables):
            self._one_by_one(parts)
            return
        fields["pack"] += np.repeat(np.cumsum(tables) - tables, counts).astype(np.uint32)
        packs = [pack for _, table, _, _ in parts for pack in table]
        ids = np.concatenate([i for _, _, i, _ in parts])
        self.index.add([(packs, ids, fields)], owned=True)

    def _one_by_one(self, parts: list[tuple[str, list[ObjectId], np.ndarray, np.ndarray]]) -> None:
        for key, packs, ids, fields in parts:
            try:
                check_entries(key, len(packs), fields)
            except IntegrityError as exc:
                if not self.skip_damaged:
                    raise
                self.damaged[key] = str(exc)
                continue
            self.index.add([(packs, ids, fields)], owned=True)


def _entries_pass(fields: np.ndarray, tables: np.ndarray) -> bool:
    """True when check_entries would pass every entry (its pack numbers checked apart)."""
    try:
        check_entries("", int(tables.max()) if len(tables) else 0, fields)
    except IntegrityError:
        return False
    return True


class ChunkDamaged(IntegrityError):
    """A chunk read from a pack does not decode, or does not match its id: names the chunk, the
    pack and the reason apart, so a report can say each once."""

    def __init__(self, chunk: ObjectId, pack: ObjectId, reason: str) -> None:
        where = f"chunk {chunk.hex()} in pack {pack.hex()}"
        super().__init__(f"{where} {reason}" if reason == HASH_MISMATCH else f"{where}: {reason}")
        self.chunk = chunk
        self.pack = pack
        self.reason = reason


class PackRead(NamedTuple):
    """A pack read whole: its bytes, or when the whole read failed as damaged and the backend
    could salvage it (an encrypted repository), what is left, with why and where it failed."""

    data: bytes
    damage: str | None = None  # why the whole read failed; None when it did not
    failed: tuple[tuple[int, int], ...] = ()  # [start, end) byte ranges read as zeros

    def describe(self) -> str:
        """The damage as one phrase, without the pack's key: what failed, and which bytes."""
        if self.damage is None:
            return ""
        spans = ", ".join(f"{start}-{end}" for start, end in self.failed[:4])
        more = f" and {len(self.failed) - 4} more" if len(self.failed) > 4 else ""
        where = f"; bytes {spans}{more} unreadable" if self.failed else ""
        return f"{self.damage}{where}"

    def usable(self) -> bytes:
        """The bytes, with the pack's header put back where it lay in bytes that could not be
        read: it is a constant, and every chunk is still checked against its id, so one damaged
        segment does not cost the chunks its directory names elsewhere."""
        if any(start < len(PACK_HEADER) for start, _ in self.failed):
            return PACK_HEADER + self.data[len(PACK_HEADER) :]
        return self.data


class Store:
    """Content-addressed chunk store over a backend."""

    def __init__(self, backend: Backend, pack_target: int, ids: IdHasher = PLAIN_IDS) -> None:
        self.backend = backend
        self.ids = ids  # names chunks, lists, packs and index files (keyed when encrypted)
        self.pack_target = pack_target
        self.index = ChunkIndex()
        self.index_files: list[str] = []
        self.index_damaged: dict[str, str] = {}  # index files left out (load_index), their error
        self._frames: OrderedDict[tuple[bytes, int], compression.Frame] = OrderedDict()
        self._frames_bytes = 0
        self._frames_lock = threading.Lock()

    # -- the index -----------------------------------------------------------------------------

    def load_index(self, skip_damaged: bool = False) -> None:
        """Read every index file into memory. With skip_damaged (a copy's source, only read),
        one that does not read is left out, its error kept in index_damaged: the chunks it
        names are then not in the index, so what needs them reads as damaged. Without, it is
        DamagedIndex (one missing since the listing stays ObjectMissing)."""
        try:
            self._load_index(skip_damaged)
        except (ObjectMissing, SealedUnderPlainConfig, DamagedIndex):
            raise
        except IntegrityError as exc:
            raise DamagedIndex(str(exc)) from exc

    def _load_index(self, skip_damaged: bool) -> None:
        self.index = ChunkIndex()  # the old one goes first: both at once could double memory
        index = ChunkIndex()
        files = []
        self.index_damaged = {}
        small = _SmallFiles(index, skip_damaged, self.index_damaged)
        for key, size in self.backend.list("index/"):
            alone = size is None or size > _SMALL_INDEX_BYTES
            if alone:
                small.flush()  # the small files listed before it are judged first
            try:
                part = self.load_index_file(key, size, check=alone)
            except IntegrityError as exc:
                small.flush()
                if not skip_damaged or isinstance(exc, SealedUnderPlainConfig):
                    raise
                self.index_damaged[key] = str(exc)
            else:
                if alone:
                    index.add([part], owned=True)
                else:
                    small.add(key, part)
            files.append(key)
        small.flush()
        self.index = index
        self.index_files = files

    def require_packs(self, done: str = "committed", then: str = "commit") -> None:
        """Stop when a pack the index names is gone from the repository (deleted by hand or by
        another tool, or lost) or cut short of the frames it names: a commit (or a copy into
        it: done, then) would reuse its chunks and save a snapshot that cannot be restored. One
        listing of packs/ (on object storage a request per 1000 packs)."""
        sizes = dict(self.backend.list(PACKS))
        ends = frame_ends(self.index)
        for pack, end in zip(self.index.packs, ends.tolist(), strict=True):
            size = sizes.get(pack_key(pack))
            if size is None or size < max(MIN_PACK_SIZE, end):
                if size is None:
                    what, why = "is missing", "deleted outside casnap, or lost"
                elif size < MIN_PACK_SIZE:
                    what, why = f"holds {size} bytes, no pack", "emptied outside casnap, or lost"
                else:
                    what = f"holds {size} bytes, short of the {end} its frames need"
                    why = "cut short outside casnap, or damaged"
                raise IntegrityError(
                    f"pack {pack.hex()} {what}, yet the index names chunks in it ({why}): "
                    f"nothing {done}, a snapshot reusing them would "
                    "not restore; `casnap verify` names what it breaks, `casnap repair-index` "
                    f"drops it, and the next {then} stores those chunks again"
                )

    def load_index_file(
        self, key: str, size: int | None = None, check: bool = True
    ) -> tuple[list[ObjectId], np.ndarray, np.ndarray]:
        """One index file as (pack table, ids, fields), checked against its name (its entries
        too, unless not check: a small one of load_index, checked with others).

        A large one (size, as listed, past INDEX_STREAM_BYTES) on a local backend is read and
        decoded piece by piece (indexstream.py): never whole in memory. One on a remote backend
        is read whole, so the cache below keeps it for the next open."""
        if size is not None and size > INDEX_STREAM_BYTES and not self.backend.remote:
            from casnap.indexstream import read_index

            return read_index(key, lambda o, n: self.backend.get(key, o, n), size, self.ids)
        blob = self.backend.get(key)
        if self.ids(blob).hex() != key.rsplit("/", 1)[-1]:
            if self.ids is PLAIN_IDS:
                refuse_sealed(blob, key)
            raise IntegrityError(f"{key}: index file does not match its name (damaged)")
        return decode_index(key, blob, check)

    def write_index(
        self, packs: Sequence[ObjectId], ids: np.ndarray, fields: np.ndarray
    ) -> tuple[str, int]:
        """Store an index file for (pack table, ids, fields); returns its key and size."""
        blob = encode_index(packs, ids, fields)
        key = index_key(self.ids(blob))
        self.put_verified(key, blob)
        return key, len(blob)

    def __contains__(self, cid: object) -> bool:
        return cid in self.index

    def entry(self, cid: ObjectId) -> IndexEntry:
        e = self.index.get(cid)
        if e is None:
            raise IntegrityError(f"chunk {cid.hex()} is not in the index")
        return e

    # -- reading -------------------------------------------------------------------------------

    def read_frame(self, e: IndexEntry) -> compression.Frame:
        """The decoded frame an entry points into (not verified: callers check chunk hashes).

        Recently decoded frames are cached, so reading the chunks of a frame one by one decodes
        it once.
        """
        frame = self.cached_frame(e.pack, e.offset)
        if frame is not None:
            return frame
        encoded = self.backend.get(pack_key(e.pack), e.offset, e.length)
        try:
            frame = compression.decode_frame(encoded, e.frame_size)
        except IntegrityError as exc:
            raise IntegrityError(f"frame at {e.offset} in pack {e.pack.hex()}: {exc}") from exc
        self.cache_frame((bytes(e.pack), e.offset), frame)
        return frame

    def cached_frame(self, pack: bytes, offset: int) -> compression.Frame | None:
        """A decoded frame from the cache, or None."""
        key = (bytes(pack), offset)
        with self._frames_lock:
            frame = self._frames.get(key)
            if frame is not None:
                self._frames.move_to_end(key)
            return frame

    def forget_frame(self, pack: bytes, offset: int) -> None:
        """Drop a frame from the cache (its last use is under way)."""
        with self._frames_lock:
            frame = self._frames.pop((bytes(pack), offset), None)
            if frame is not None:
                self._frames_bytes -= len(frame)

    def cache_frame(self, key: tuple[bytes, int], frame: compression.Frame) -> None:
        """Remember a decoded frame (least recently used ones leave past FRAME_CACHE_BYTES)."""
        if len(frame) > FRAME_CACHE_BYTES // 4:
            return
        with self._frames_lock:
            if key in self._frames:
                return
            self._frames[key] = frame
            self._frames_bytes += len(frame)
            while self._frames_bytes > FRAME_CACHE_BYTES:
                _, old = self._frames.popitem(last=False)
                self._frames_bytes -= len(old)

    def get(self, cid: ObjectId) -> bytes:
        """The plain bytes of a chunk, verified against its id."""
        return self.chunk_at(cid, self.entry(cid))[0]

    def chunk_at(self, cid: ObjectId, e: IndexEntry) -> tuple[bytes, bool]:
        """get, for a chunk whose index entry e the caller looked up (many at once:
        index.entries), and whether its frame holds byte-grouped float32 words."""
        try:
            frame = self.read_frame(e)
        except IntegrityError as exc:  # a missing, truncated or garbled pack: name the chunk
            raise type(exc)(f"chunk {cid.hex()}: {exc}") from exc
        fits = e.inner + e.plain <= len(frame)  # else it fails verification as damaged
        plain = _verified(self.ids, cid, e, frame.read(e.inner, e.plain) if fits else b"")
        return plain, frame.grouped

    def get_encoded(self, cid: ObjectId) -> tuple[bytes, bytes]:
        """The plain bytes of a chunk stored in a frame of its own (a chunk list), verified
        against its id, and that frame as stored."""
        e = self.entry(cid)
        try:
            encoded = self.backend.get(pack_key(e.pack), e.offset, e.length)
        except IntegrityError as exc:  # a missing, truncated or garbled pack: name the chunk
            raise type(exc)(f"chunk {cid.hex()}: {exc}") from exc
        return self.decode_verified(cid, e, encoded), encoded

    def decode_verified(self, cid: ObjectId, e: IndexEntry, encoded: bytes) -> bytes:
        """Decode the frame stored at e and return the chunk, checking its BLAKE3."""
        try:
            frame = compression.decode(encoded, e.frame_size)
        except IntegrityError as exc:
            raise ChunkDamaged(cid, e.pack, str(exc)) from exc
        return _verified(self.ids, cid, e, frame[e.inner : e.inner + e.plain])

    def frame_damage(
        self, encoded: bytes, members: Sequence[tuple[ObjectId, IndexEntry]]
    ) -> list[ChunkDamaged | None]:
        """Decode one stored frame once and check each listed chunk of it: per chunk None when
        it matches its id, else what is wrong with it."""
        e0 = members[0][1]
        if any(e.offset != e0.offset or e.frame_size != e0.frame_size for _, e in members):
            raise ValueError("frame_damage needs chunks of one frame")
        try:
            frame = compression.decode(encoded, e0.frame_size)
        except IntegrityError as exc:
            return [ChunkDamaged(cid, e.pack, str(exc)) for cid, e in members]
        out: list[ChunkDamaged | None] = []
        for cid, e in members:
            try:
                _verified(self.ids, cid, e, frame[e.inner : e.inner + e.plain])
                out.append(None)
            except ChunkDamaged as exc:
                out.append(exc)
        return out

    def rewrite_frame(
        self,
        encoded: bytes,
        members: Sequence[tuple[ObjectId, IndexEntry]],
        level: int,
        float_level: int,
    ) -> tuple[bytes, int, list[tuple[bytes, int, int]]]:
        """A stored frame reduced to the listed chunks, every one verified first: (encoded frame,
        frame plain size or 0 for one chunk, [(id, offset in frame, plain size)]).

        A frame the chunks fill is returned as it is; otherwise their bytes are compressed again
        with the frame's own codec, so gc reclaims the space of the chunks no snapshot needs.
        """
        cid0, e0 = members[0]
        try:
            frame = compression.decode(encoded, e0.frame_size)
        except IntegrityError as exc:
            raise ChunkDamaged(cid0, e0.pack, str(exc)) from exc
        ordered = sorted(members, key=lambda m: m[1].inner)
        for cid, e in ordered:
            _verified(self.ids, cid, e, frame[e.inner : e.inner + e.plain])
        if sum(e.plain for _, e in ordered) == e0.frame_size:
            return encoded, e0.frame_plain, [(cid, e.inner, e.plain) for cid, e in ordered]
        out: list[tuple[bytes, int, int]] = []
        parts = []
        pos = 0
        for cid, e in ordered:
            parts.append(frame[e.inner : e.inner + e.plain])
            out.append((cid, pos, e.plain))
            pos += e.plain
        payload = b"".join(parts)
        grouped = encoded[0] == compression.ZSTD_GROUPED4
        fresh = compression.encode(payload, float_level if grouped else level, grouped=grouped)
        return fresh, (pos if len(out) > 1 else 0), out

    def read_pack(self, key: str) -> PackRead:
        """A whole pack. When the whole read fails as damaged and the backend can read it piece
        by piece (backends.base.salvage), what is left of it, the unreadable bytes zeroed: each
        chunk is checked against its id anyway, so the intact ones can still be used.
        IntegrityError (the whole read's) when nothing can be salvaged."""
        try:
            return PackRead(self.backend.get(key))
        except ObjectMissing:
            raise
        except IntegrityError as exc:
            whole = exc
        try:
            left = salvage(self.backend, key)
        except IntegrityError:
            left = None
        if left is None:
            raise whole
        why = str(whole)
        for lead in (key + ": ", key + " "):  # the key is named once, by the caller
            why = why.removeprefix(lead)
        return PackRead(left.data, why, tuple(left.failed))

    # -- rebuilding the index from the packs -----------------------------------------------------

    def rebuild_index(
        self, skipped: list[tuple[str, str]] | None = None
    ) -> tuple[list[ObjectId], np.ndarray, np.ndarray]:
        """Read every pack's own directory: the index as the packs alone describe it, as (pack
        table, ids, fields), one entry per chunk (the first pack listed that holds it).

        Without `skipped`, the first damaged pack raises IntegrityError. With it, damage is
        recorded there as (pack key, what happened) and the rebuild goes on: a pack whose hash
        does not match its name, or that is salvaged (read_pack), keeps the chunks that still
        decode to their own hash, a pack whose directory is unreadable is left out.
        """
        packs: list[ObjectId] = []
        ids_parts: list[np.ndarray] = []
        field_parts: list[np.ndarray] = []
        sealed: SealedUnderPlainConfig | None = None
        for key, size in self.backend.list("packs/"):
            pack = pack_id_of(key)
            if pack is None:
                if skipped is None:
                    raise IntegrityError(f"{key}: not a pack name")
                skipped.append((key, "not a pack name; left out"))
                continue
            try:
                check_pack_size(key, size)
                read = self.read_pack(key)
                data = read.usable()
                if self.ids is PLAIN_IDS:
                    refuse_sealed(data, key)
                rec = parse_pack_directory(key, data)
            except IntegrityError as exc:
                if skipped is None:
                    raise
                if isinstance(exc, SealedUnderPlainConfig):
                    sealed = sealed or exc  # a config replaced, or one pack copied in
                skipped.append((key, f"{str(exc).removeprefix(key + ': ')}; left out"))
                continue
            intact = read.damage is None and self.ids(data) == pack
            if not intact and skipped is None:
                raise IntegrityError(
                    f"{key}: {read.describe() or 'pack does not match its name (damaged)'}"
                )
            if not intact:
                good = np.ones(len(rec), dtype=bool)
                fields = directory_fields(rec, 0)
                for i in range(len(rec)):
                    entry = entry_of([pack], fields[i])
                    try:
                        self.decode_verified(
                            ObjectId(rec["id"][i].tobytes()),
                            entry,
                            data[entry.offset : entry.offset + entry.length],
                        )
                    except IntegrityError:
                        good[i] = False
                if skipped is not None:
                    skipped.append(
                        (
                            key,
                            f"{read.describe() or 'pack does not match its name (damaged)'}; "
                            f"{int(good.sum())} of {len(rec)} chunks verified and kept",
                        )
                    )
                rec = rec[good]
            ids_parts.append(rec["id"])
            field_parts.append(directory_fields(rec, len(packs)))
            packs.append(pack)
        if sealed is not None and not packs:
            raise sealed  # every pack is: no index file is replaced by an empty one
        if not ids_parts:
            return [], np.zeros((0, ID_SIZE), np.uint8), np.zeros(0, FIELD_DTYPE)
        ids = np.concatenate(ids_parts)
        fields = join_fields(field_parts)
        _, first = np.unique(void_ids(ids), return_index=True)
        keep = np.sort(first)  # a chunk several packs hold: the first pack listed
        return packs, ids[keep], take_fields(fields, keep)

    # -- writing -------------------------------------------------------------------------------

    def put_verified(self, key: str, data: bytes | memoryview) -> bool:
        """backends.base.put_verified on this store's backend."""
        return put_verified(self.backend, key, data)


def _verified(ids: IdHasher, cid: ObjectId, e: IndexEntry, plain: bytes | bytearray) -> bytes:
    if len(plain) != e.plain or ids(plain) != cid:
        raise ChunkDamaged(cid, e.pack, HASH_MISMATCH)
    return plain if isinstance(plain, bytes) else bytes(plain)


def frame_ends(index: ChunkIndex) -> np.ndarray:
    """Per pack of the index (by number), the end of the last frame it names in it: a pack
    shorter than that lost frames. Computed a step of entries at a time (bounded memory)."""
    ends = np.zeros(len(index.packs), dtype=np.int64)
    for fields in index.field_parts():
        for lo in range(0, len(fields), _END_STEP):
            part = fields[lo : lo + _END_STEP]
            pack = part["pack"]
            end = part["offset"].astype(np.int64) + part["length"]
            starts = np.concatenate([[0], np.flatnonzero(pack[1:] != pack[:-1]) + 1])
            np.maximum.at(ends, pack[starts], np.maximum.reduceat(end, starts))
    return ends
