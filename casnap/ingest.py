"""The data path of commit: every core busy, memory bounded whatever the file size.

The calling thread reads a file in blocks, lets its chunker cut them and feeds the whole-file
hash (on a thread of its own when given one); worker threads hash every piece, tell which pieces
the repository holds (those of the file's last version without an index lookup, the rest with one
lookup per block), group the new pieces into frames and compress them (numpy and zstd release the
GIL); the calling thread adds the frames to the pack writer in file order, which writes packs from
its own thread. At most a few blocks are in flight.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, NamedTuple

import numpy as np

from casnap import compression, groups
from casnap.chunkindex import DATA, find_rows, id_keys, id_matrix
from casnap.chunking import FLOAT32, Block, Chunker
from casnap.chunking.base import Buffers
from casnap.constants import READ_BLOCK
from casnap.ids import ID_SIZE, Hasher, ObjectId
from casnap.packwriter import PackWriter
from casnap.phases import Phases
from casnap.pipeline import REF_DTYPE
from casnap.store import Store


class Ingested(NamedTuple):
    """What ingesting one stream produced."""

    refs: bytes  # packed (id, length) refs, see chunklist.py
    hash: ObjectId  # BLAKE3 of the whole stream
    size: int
    groups: bytes | None = None  # the digests of its page groups (groups.py), when grouped


class _Frame(NamedTuple):
    encoded: tuple[bytes, bytes]  # codec byte, payload (compression.encode_parts)
    frame_plain: int  # 0 for a frame of one chunk
    members: list[tuple[bytes, int, int]]  # id, offset in the frame, plain size


class Encoded(NamedTuple):
    refs: bytes
    frames: list[_Frame]
    checked: int | None = None  # the writer's generation when its pieces were looked up
    groups: bytes = b""  # the digests of the page groups starting in the block (groups.py)


class Grouping(NamedTuple):
    """A stream of fixed-size pieces hashed a group at a time (groups.py): `piece`, their size,
    and the groups its last stored version kept."""

    piece: int
    kept: groups.Kept | None


class Ingest:
    """Stores streams into a pack writer: chunk, hash, dedup, frame and compress in parallel."""

    def __init__(
        self,
        store: Store,
        writer: PackWriter,
        pool: ThreadPoolExecutor,
        workers: int,
        *,
        level: int,
        float_level: int,
        frame_target: int,
        group_floats: bool,
        read_block: int = READ_BLOCK,
        phases: Phases | None = None,
        hashing: ThreadPoolExecutor | None = None,
    ) -> None:
        self.phases = phases or Phases()  # chunk (reading, cutting, hashing), compress
        self.store = store
        self.writer = writer
        self.pool = pool
        self.workers = max(1, workers)
        self.level = level
        self.float_level = float_level
        self.frame_target = frame_target
        self.group_floats = group_floats
        self.read_block = read_block
        # one thread feeding the whole-file hash, in order, beside the thread that reads and cuts
        # (BLAKE3 of a whole block does not hold the GIL); None: the reading thread feeds it
        self.hashing = hashing
        # read buffers, used again by the next block and the next file once a block is taken
        self._buffers = Buffers(self.workers + 2)
        # the ids of the stream's last stored version, sorted by key (see _unknown), and its refs
        self._held = (np.zeros(0, np.uint64), np.zeros((0, ID_SIZE), np.uint8))
        self._before = np.zeros(0, dtype=REF_DTYPE)

    def run(
        self,
        stream: BinaryIO,
        chunker: Chunker,
        previous: bytes | None = None,
        grouping: Grouping | None = None,
    ) -> Ingested:
        """Ingest a stream cut by chunker; new frames go to the writer in stream order.

        previous, the refs of the stream's last stored version when known, lets a piece equal
        to the one at the same place there count as stored without an index lookup; grouping
        (fixed-size pieces only) lets a group of them equal to one that version kept take its
        refs without hashing each piece.
        """
        hasher = Hasher()
        refs: list[bytes] = []
        kept: list[bytes] = []  # the records of the page groups of the blocks taken so far
        inflight: deque[tuple[Future[Encoded], Block, Future[None] | None]] = deque()
        buffers = self._buffers
        size = 0
        pieces = 0
        before = np.frombuffer(previous or b"", dtype=REF_DTYPE)
        order = np.argsort(id_keys(before["id"]), kind="stable")
        self._held = (id_keys(before["id"])[order], before["id"][order])
        self._before = before
        try:
            blocks = chunker.blocks(stream, self.read_block, buffers)
            for block in self.phases.iterate("chunk", blocks):
                hashed = self._feed(hasher, block.data)
                size += len(block.data)
                at = before[pieces : pieces + len(block.lengths)]
                pieces += len(block.lengths)
                job = (grouping, pieces - len(block.lengths)) if grouping else None
                inflight.append((self.pool.submit(self._encode, block, at, job), block, hashed))
                # more than one in flight (workers >= 1): the block the generator still reads
                # its carried tail from is never the one taken
                while len(inflight) > self.workers:
                    self._take(*inflight.popleft(), refs, kept, buffers)
            while inflight:
                self._take(*inflight.popleft(), refs, kept, buffers)
        finally:
            for fut, _block, hashed in inflight:
                fut.cancel()
                if hashed is not None:
                    hashed.cancel()
            for fut, _block, hashed in inflight:
                for f in (fut, hashed):
                    if f is not None and not f.cancelled():
                        f.exception()
        records = b"".join(kept) if grouping is not None else None
        return Ingested(b"".join(refs), hasher.digest(), size, records)

    def _feed(self, hasher: Hasher, data: memoryview) -> Future[None] | None:
        """Add a block to the whole-file hash: on the hashing thread when there is one (the
        future says when it is done with data), else here."""
        if self.hashing is not None:
            return self.hashing.submit(self._hash, hasher, data)
        self._hash(hasher, data)
        return None

    def _hash(self, hasher: Hasher, data: memoryview) -> None:
        start = time.perf_counter()
        hasher.update(data)
        self.phases.since("chunk", start)

    def _take(
        self,
        fut: Future[Encoded],
        block: Block,
        hashed: Future[None] | None,
        refs: list[bytes],
        kept: list[bytes],
        buffers: Buffers,
    ) -> None:
        """Take a block's result in stream order: its refs and group records, then its buffer."""
        done = fut.result()
        refs.append(self.add(done))
        kept.append(done.groups)
        if hashed is not None:
            hashed.result()
        if isinstance(buf := block.data.obj, bytearray):  # no one reads it now: frames are copies
            buffers.give(buf)

    def encode_block(self, block: Block) -> Encoded:
        """Worker: hash, look up, frame and compress a block of whole pieces that has no last
        stored version (the pieces of several small files back to back: the new ones are
        framed together); then `add` it."""
        return self._encode(block, np.zeros(0, dtype=REF_DTYPE))

    def add(self, done: Encoded) -> bytes:
        """The packed refs of an encoded block, once its new frames are queued in the writer
        (call it in the order the blocks were read)."""
        add = self.writer.add_frame
        for f in done.frames:
            add(DATA, f.encoded, f.frame_plain, f.members, done.checked)
        return done.refs

    def _encode(
        self, block: Block, before: np.ndarray, job: tuple[Grouping, int] | None = None
    ) -> Encoded:
        """Worker: hash every piece of a block, frame and compress the new ones. before holds the
        refs at the same places in the stream's last stored version (maybe fewer, or none); job,
        when pieces are grouped: the grouping and the block's first piece in the stream."""
        start = time.perf_counter()
        checked = self.writer.generation  # before the lookup (PackWriter.add_frame)
        data = block.data
        lengths = block.lengths
        kept = b""
        rec = np.empty(len(lengths), dtype=REF_DTYPE)
        rec["length"] = lengths
        if job is None:
            ids = self.store.ids.digests(data, lengths)
            rec["id"] = id_matrix(b"".join(ids))
        else:
            ids, kept = self._grouped_ids(block, rec, *job)
        new = self._unknown(rec, ids, before)
        hashed = self.phases.since("chunk", start)
        frames: list[_Frame] = []
        if len(new):
            ends = np.cumsum(rec["length"], dtype=np.int64)
            frames = self._frames(
                data, ids, new.tolist(), (ends - rec["length"])[new].tolist(), block
            )
        self.phases.since("compress" if frames else "chunk", hashed)  # nothing new: no compress
        return Encoded(rec.tobytes(), frames, checked, kept)

    def _grouped_ids(
        self, block: Block, rec: np.ndarray, grouping: Grouping, first: int
    ) -> tuple[list[bytes], bytes]:
        """The ids of a block's pieces, into rec, a group at a time (groups.py; first: the block's
        first piece in the stream). A group whose digest the last stored version kept, cut into
        pieces of the same lengths, holds the same pieces: their ids are taken from that version's
        refs; the pieces of other groups, and of none, are hashed one by one. Returns the ids of
        those hashed (b"" at the places of the others, which the last version holds, so they are
        never looked up nor framed) and the records of the block's groups."""
        data, lengths = block.data, block.lengths
        n = len(lengths)
        ends = np.cumsum(rec["length"], dtype=np.int64)
        offsets = [0, *ends.tolist()]
        ranges = groups.bounds(lengths, first, grouping.piece)
        digest = self.store.ids.digest
        digests = [digest(data[offsets[a] : offsets[b]]) for a, b in ranges]
        records = b"".join(
            groups.RECORD.pack(d, first + a, b - a)
            for (a, b), d in zip(ranges, digests, strict=True)
        )
        taken = self._take_kept(grouping.kept, digests, ranges, rec)
        hashed: list[tuple[int, int]] = []
        done = 0  # pieces before this one are either taken or queued for hashing
        for (a, b), took in zip(ranges, taken, strict=True):
            if a > done:
                hashed.append((done, a))
            done = b
            if not took:
                hashed.append((a, b))
        if done < n:
            hashed.append((done, n))
        ids: list[bytes] = [b""] * n
        for a, b in _joined(hashed):
            ids[a:b] = self.store.ids.digests(data[offsets[a] : offsets[b]], lengths[a:b])
            rec["id"][a:b] = id_matrix(b"".join(ids[a:b]))
        return ids, records

    def _take_kept(
        self,
        kept: groups.Kept | None,
        digests: list[bytes],
        ranges: list[tuple[int, int]],
        rec: np.ndarray,
    ) -> list[bool]:
        """Which groups (their digests and piece ranges) the last stored version kept, cut into
        pieces of the same lengths; their ids go into rec from that version's refs (all groups
        at once: a few numpy calls per block, not per group)."""
        if kept is None or not ranges or not len(kept.keys):
            return [False] * len(ranges)
        j = kept.find(id_matrix(b"".join(digests)))
        span = np.array(ranges, dtype=np.int64)
        size = span[:, 1] - span[:, 0]
        hit = np.flatnonzero((j >= 0) & (kept.count[j] == size))
        if not len(hit):
            return [False] * len(ranges)
        first = kept.first[j[hit]]
        old_end = first + size[hit]
        hit = hit[old_end <= len(self._before)]  # a version's own groups: always inside it
        first, n = kept.first[j[hit]], size[hit]
        step = np.repeat(np.cumsum(n) - n, n)
        new_at = np.repeat(span[hit, 0], n) + np.arange(int(n.sum())) - step
        old_at = np.repeat(first, n) + np.arange(int(n.sum())) - step
        same = self._before["length"][old_at] == rec["length"][new_at]
        whole = np.minimum.reduceat(same, np.cumsum(n) - n) if len(n) else same
        good = np.repeat(whole, n)
        rec["id"][new_at[good]] = self._before["id"][old_at[good]]
        out = np.zeros(len(ranges), dtype=bool)
        out[hit[whole]] = True
        return out.tolist()

    def _unknown(self, rec: np.ndarray, ids: list[bytes], before: np.ndarray) -> np.ndarray:
        """Positions of the pieces of rec the repository does not hold. A piece of the last
        stored version is held: equal to the one at its place there (a database's unchanged
        pages: one pass over both arrays), or found among its ids (moved: a lookup in that
        file's few ids, which stay in the cache), before the index's lookup (whose random reads
        over every chunk of the repository miss it)."""
        held = np.zeros(len(rec), dtype=bool)
        k = min(len(rec), len(before))
        if k:
            held[:k] = (before["id"][:k] == rec["id"][:k]).all(axis=1)
        rest = np.flatnonzero(~held)
        if len(rest) and len(self._held[0]):
            rest = rest[find_rows(*self._held, rec["id"][rest]) < 0]
        if len(rest):
            rest = rest[~self.writer.known_many([ids[i] for i in rest.tolist()])]
        return rest

    def _frames(
        self, data: memoryview, ids: list[bytes], new: list[int], starts: list[int], block: Block
    ) -> list[_Frame]:
        """The new pieces (their positions in the block and offsets in data) in frames of about
        frame_target bytes, compressed; a piece repeated in the block is framed once."""
        lengths = block.lengths
        kinds = block.kinds
        local: set[bytes] = set()
        frames: list[_Frame] = []
        members: list[tuple[bytes, int, int]] = []
        spans: list[tuple[int, int]] = []
        fbytes = 0
        fkind = 0
        target = self.frame_target
        for i, start in zip(new, starts, strict=True):
            cid = ids[i]
            if cid in local:
                continue
            local.add(cid)
            n = lengths[i]
            kind = kinds[i] if kinds is not None else 0
            if members and (fbytes + n > target or kind != fkind):
                frames.append(self._frame(data, members, spans, fbytes, fkind))
                members, spans, fbytes = [], [], 0
            fkind = kind
            members.append((cid, fbytes, n))
            spans.append((start, n))
            fbytes += n
        if members:
            frames.append(self._frame(data, members, spans, fbytes, fkind))
        return frames

    def _frame(
        self,
        data: memoryview,
        members: list[tuple[bytes, int, int]],
        spans: list[tuple[int, int]],
        fbytes: int,
        kind: int,
    ) -> _Frame:
        first = spans[0][0]
        if spans[-1][0] + spans[-1][1] - first == fbytes:  # adjacent pieces: no copy
            payload: bytes | memoryview = data[first : first + fbytes]
        else:
            payload = b"".join(data[s : s + n] for s, n in spans)
        if kind == FLOAT32:
            encoded = compression.encode_parts(payload, self.float_level, self.group_floats)
        else:
            encoded = compression.encode_parts(payload, self.level)
        return _Frame(encoded, fbytes if len(members) > 1 else 0, members)


def _joined(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent (start, stop) ranges joined: one hashing call for a run of changed groups."""
    out: list[tuple[int, int]] = []
    for a, b in ranges:
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out
