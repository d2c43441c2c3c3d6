"""Spans: the ranges of packs a stretch of reads needs, fetched ahead in few large requests.

On a remote backend (S3) a request costs a round trip and the client's own work per call,
while a few hundred KiB more in one answer cost little. A file restored from a later snapshot
reads from many packs in turn (its unchanged pages from the first commit's packs, the changed
ones from each later commit's), so reads of adjacent frames alone make a request per few
frames. Here the ranges wanted by a stretch of reads are grouped per pack, merged across gaps
of up to SPAN_GAP bytes into spans of at most SPAN_MAX bytes, and the spans fetched on their own
threads in the order they are first read; reads then slice the span that holds them. Memory: at
most SPANS_AHEAD bytes of spans are fetched ahead of their reads, a span is dropped once every
range wanted from it was read, and past SPANS_HELD bytes the spans read from least recently are
cut to what their reads to come need, or dropped and fetched again when wanted (a pack a long
stretch reads a little of now and then), so a long stretch saves requests, not memory."""

from __future__ import annotations

import bisect
import contextlib
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from casnap.backends.base import Backend, read_view
from casnap.constants import REMOTE_WORKERS
from casnap.errors import CasnapError, IntegrityError
from casnap.ids import ObjectId
from casnap.manifest import FileEntry, Snapshot

if TYPE_CHECKING:  # the store (numpy) is loaded by whoever reads chunks
    from casnap.chunkindex import IndexEntry
    from casnap.listcache import ListCache
    from casnap.store import Store

# Bytes between two wanted ranges of one pack that are read rather than asked for separately: a
# round trip to an object store (tens of ms) costs more than this much transfer.
SPAN_GAP = 512 * 1024
# Largest span asked for in one request: a whole pack (16 MiB of frames by default, then its last
# frame and its directory) is one request; a few spans per fetching thread stay in memory.
SPAN_MAX = 20 * 1024 * 1024
# Bytes of spans fetched ahead of their reads, at most (a span needed at once is fetched anyway).
SPANS_AHEAD = 48 * 1024 * 1024
# Bytes of spans held at most, read from or not: past it the span read from least recently is
# dropped (a later commit's pack a long stretch reads a little of now and then).
SPANS_HELD = 96 * 1024 * 1024
# Bytes of files whose chunk lists are read ahead at once (lists take ~1% of that).
LISTS_AHEAD = 4 << 30
# Snapshots whose files' lists may be read ahead: the last loaded, and the newest listed.
SNAPSHOTS_AHEAD = 8


class _Span:
    """One range of an object fetched in one request, and the reads of it still to come."""

    __slots__ = ("key", "start", "stop", "uses", "wanted", "fut", "base", "size", "started")

    def __init__(self, key: str, start: int, stop: int) -> None:
        self.key = key
        self.start = start
        self.stop = stop
        self.uses = 0  # ranges wanted from it not read (nor skipped) yet
        self.wanted: Counter[tuple[int, int]] = Counter()  # those ranges
        self.fut: Future[bytes | memoryview] | None = None  # None: not fetched yet, or dropped
        self.base = start  # where the bytes fetched start (a span fetched again: its rest only)
        self.size = 0  # bytes fetched
        self.started = False  # read from since it was fetched


class Spans:
    """The spans covering a list of pack ranges, each fetched in the background in the order of
    its first range, at most `ahead` bytes of them fetched and not read from yet; a span is
    dropped once each of its ranges was read (or skipped), and past `held` bytes of spans the
    one read from least recently is dropped early (fetched again when it is wanted again)."""

    def __init__(
        self,
        backend: Backend,
        pool: ThreadPoolExecutor,
        ranges: Iterable[tuple[str, int, int]],
        gap: int = SPAN_GAP,
        limit: int = SPAN_MAX,
        ahead: int = SPANS_AHEAD,
        held: int = SPANS_HELD,
    ) -> None:
        """ranges: (object key, start, stop), in the order they will be read (each read once
        with get, or passed over with skip). Fetching starts at once, on pool's threads."""
        self._backend = backend
        self._pool = pool
        self._ahead_max = ahead
        self._held_max = held
        self._lock = threading.Lock()
        listed = list(ranges)
        by_key: dict[str, list[tuple[int, int]]] = {}
        for key, start, stop in listed:
            by_key.setdefault(key, []).append((start, stop))
        self._starts: dict[str, list[int]] = {}
        self._spans: dict[str, list[_Span]] = {}
        for key, wanted in by_key.items():
            merged = _merge(sorted(wanted), gap, limit)
            self._starts[key] = [a for a, _ in merged]
            self._spans[key] = [_Span(key, a, b) for a, b in merged]
        self._queue: deque[_Span] = deque()  # spans to fetch, in the order of their first range
        for key, start, stop in listed:
            span = self._find(key, start, stop - start)
            if span.uses == 0:
                self._queue.append(span)
            span.uses += 1
            span.wanted[start, stop] += 1
        self._held = 0  # bytes of spans fetched (or being fetched) and not dropped
        self._ahead = 0  # of which not read from yet
        self._in_use: OrderedDict[int, _Span] = OrderedDict()  # read from, least recent first
        with self._lock:
            self._fetch_more()

    def _find(self, key: str, start: int, length: int) -> _Span:
        spans = self._spans.get(key)
        i = bisect.bisect_right(self._starts.get(key, []), start) - 1
        if spans is None or i < 0 or not spans[i].start <= start <= start + length <= spans[i].stop:
            raise KeyError(f"{key}: range {start}+{length} is in no span")
        return spans[i]

    # every method below but the public ones runs with the lock held

    def _fetch(self, span: _Span) -> Future[bytes | memoryview]:
        """Start fetching span: whole, or when it was dropped early, what is still wanted."""
        if span.fut is None:
            a, b = span.start, span.stop
            if span.started:  # dropped while read from: what its reads to come need
                a = min(lo for lo, _hi in span.wanted)
                b = max(hi for _lo, hi in span.wanted)
            span.base, span.size = a, b - a
            span.fut = self._pool.submit(read_view, self._backend, span.key, a, b - a)
            span.started = False
            self._held += span.size
            self._ahead += span.size
        return span.fut

    def _drop(self, span: _Span) -> None:
        if span.fut is not None:
            span.fut = None
            self._held -= span.size
            if not span.started:
                self._ahead -= span.size
        self._in_use.pop(id(span), None)

    def _make_room(self, size: int, keep: _Span | None = None) -> bool:
        """Make size more bytes fit under `held`, from the spans read from least recently (but
        keep): first each cut to what its reads to come need when that is at most half of it,
        then dropped; whether they fit."""
        for old in list(self._in_use.values()):
            if self._held + size <= self._held_max:
                return True
            if old is not keep:
                self._trim(old)
        # then dropped, largest first: each costs a request when it is wanted again
        for old in sorted(self._in_use.values(), key=lambda span: -span.size):
            if self._held + size <= self._held_max:
                return True
            if old is not keep:
                self._drop(old)
        return self._held + size <= self._held_max

    def _trim(self, span: _Span) -> bool:
        """Keep only the bytes of span its reads to come need, when fetched and at most half of
        it; whether it was cut."""
        fut = span.fut
        if fut is None or not fut.done() or fut.cancelled() or fut.exception() is not None:
            return False
        a = min(lo for lo, _hi in span.wanted)
        b = max(hi for _lo, hi in span.wanted)
        if 2 * (b - a) > span.size:
            return False
        kept: Future[bytes | memoryview] = Future()
        kept.set_result(bytes(memoryview(fut.result())[a - span.base : b - span.base]))
        self._held -= span.size - (b - a)
        span.fut, span.base, span.size = kept, a, b - a
        return True

    def _fetch_more(self, keep: _Span | None = None) -> None:
        """Start the next spans in line while they fit under `ahead` (and `held`: keep, a span
        being read, stays)."""
        while self._queue:
            span = self._queue[0]
            if span.uses == 0 or span.fut is not None:  # all skipped, or fetched when needed
                self._queue.popleft()
                continue
            size = span.stop - span.start
            if self._ahead and self._ahead + size > self._ahead_max:
                return
            if not self._make_room(size, keep) and self._held:
                return
            self._queue.popleft()
            self._fetch(span)

    def _done(self, span: _Span, start: int, stop: int) -> None:
        """One range of span read or skipped: the span is dropped after its last."""
        span.uses -= 1
        left = span.wanted[start, stop] - 1
        if left > 0:
            span.wanted[start, stop] = left
        else:
            del span.wanted[start, stop]
        if span.uses == 0:
            self._drop(span)
            self._fetch_more()

    def get(self, key: str, start: int, length: int) -> memoryview:
        """Bytes [start, start + length) of an object, from the span holding them (waits for
        it, fetching it now when it is not under way; raises what fetching it raised). When
        the span was damaged (an object cut short before its end), the range is read alone:
        the bytes before a cut still come back, and an error is about this range's own bytes."""
        span = self._find(key, start, length)
        with self._lock:
            fut = self._fetch(span)
            if not span.started:
                span.started = True
                self._ahead -= span.size
            self._in_use[id(span)] = span
            self._in_use.move_to_end(id(span))
            self._make_room(0, keep=span)
            self._fetch_more(keep=span)
            base = span.base
        try:
            data = fut.result()
        except IntegrityError:
            data = b""  # read alone below
        finally:
            with self._lock:
                if span.wanted[start, start + length] > 0:
                    self._done(span, start, start + length)
        if not base <= start <= start + length <= base + len(data):  # not listed, or damaged
            return memoryview(read_view(self._backend, key, start, length))
        return memoryview(data)[start - base : start - base + length]

    def skip(self, key: str, start: int, length: int) -> None:
        """A range that will not be read (its bytes were found elsewhere)."""
        span = self._find(key, start, length)
        with self._lock:
            if span.wanted[start, start + length] > 0:
                self._done(span, start, start + length)

    def held(self) -> int:
        """Bytes of spans fetched, or being fetched, and not yet dropped."""
        with self._lock:
            return self._held

    def cancel(self) -> None:
        """Drop fetches not started yet (after a failure)."""
        with self._lock:
            self._queue.clear()
            for spans in self._spans.values():
                for span in spans:
                    if span.fut is not None:
                        span.fut.cancel()


def _merge(wanted: list[tuple[int, int]], gap: int, limit: int) -> list[tuple[int, int]]:
    """Sorted (start, stop) ranges merged across gaps of at most `gap` bytes into spans of at
    most `limit` bytes (a single range longer than limit stays one span)."""
    merged: list[tuple[int, int]] = []
    for start, stop in wanted:
        if merged:
            a, b = merged[-1]
            # overlapping ranges always merge (spans never overlap); near ones up to the limit
            if start < b or (start <= b + gap and max(b, stop) - a <= limit):
                merged[-1] = (a, max(b, stop))
                continue
        merged.append((start, stop))
    return merged


def read_chunks(
    store: Store,
    cids: Sequence[ObjectId],
    pool: ThreadPoolExecutor,
    keep: Callable[[ObjectId, memoryview], None] | None = None,
) -> dict[ObjectId, bytes]:
    """The plain bytes of chunks, each verified against its id, their frames fetched as spans
    on pool's threads; keep, when given, gets each verified chunk's frame as stored. A chunk
    that cannot be read here (not indexed, missing, damaged) is left out: reading it alone with
    Store.get then reports it as it always does."""
    from casnap.packs import pack_key

    entries = {}
    for cid in set(cids):
        with contextlib.suppress(CasnapError):
            entries[cid] = store.entry(cid)
    spans = Spans(
        store.backend,
        pool,
        ((pack_key(e.pack), e.offset, e.offset + e.length) for e in entries.values()),
    )
    found: dict[ObjectId, bytes] = {}
    try:
        for cid, e in entries.items():
            with contextlib.suppress(CasnapError):
                encoded = spans.get(pack_key(e.pack), e.offset, e.length)
                found[cid] = store.decode_verified(cid, e, bytes(encoded))
                if keep is not None:
                    keep(cid, encoded)
    finally:
        spans.cancel()
    return found


class ListsAhead:
    """Chunk lists of a remote repository read a batch at a time: when the list of one file of a
    snapshot is wanted, those of the files after it (up to LISTS_AHEAD bytes of files) are read
    with it, as spans, rather than one request per list blob later on.

    The snapshots considered are the last few loaded and the newest few of the repository's
    list; a file is found among them by its chunk list ids, through an index rebuilt only when
    those snapshots change, so a file of no such snapshot costs one lookup."""

    def __init__(self) -> None:
        self._recent: deque[Snapshot] = deque(maxlen=SNAPSHOTS_AHEAD)  # snapshots loaded last
        self._read: dict[ObjectId, bytes] = {}
        self._where: dict[tuple[str, ...], tuple[Snapshot, int]] | None = None
        self._token: tuple[int, ...] = ()
        self._lock = threading.Lock()

    def noted(self, snap: Snapshot) -> Snapshot:
        """snap, remembered as one whose files' lists may soon be wanted."""
        with self._lock:
            self._recent.append(snap)
            self._where = None
        return snap

    def bodies(
        self,
        store: Store,
        entry: FileEntry,
        newest: Sequence[Snapshot],
        kept: ListCache | None = None,
    ) -> Mapping[ObjectId, bytes]:
        """List blobs read ahead, holding entry's when it belongs to a snapshot loaded lately or
        to the newest (else nothing: its blobs are read one by one). With kept, blobs it holds
        are not read (the caller reads them from it) and those read are kept there."""
        with self._lock:
            if all(
                (i := ObjectId.from_hex(lid)) in self._read or (kept is not None and kept.has(i))
                for lid in entry.lists
            ):
                return self._read
            snaps = [*self._recent, *newest[-SNAPSHOTS_AHEAD:]]
            token = tuple(id(s) for s in snaps)
            if self._where is None or token != self._token:
                self._where = {e.lists: (s, k) for s in snaps for k, e in enumerate(s.files)}
                self._token = token
            found = self._where.get(entry.lists)
            if found is None:
                return {}
            snap, k = found
            j, size = k, 0
            while j < len(snap.files) and (j == k or size < LISTS_AHEAD):
                size += snap.files[j].size
                j += 1
            ids = {ObjectId.from_hex(lid) for e in snap.files[k:j] for lid in e.lists}
            old, self._read = self._read, {}
            for i in ids & old.keys():  # read already (an earlier file's window): not again
                self._read[i] = old[i]
            wanted = [i for i in ids - old.keys() if kept is None or not kept.has(i)]
            if wanted:
                with ThreadPoolExecutor(REMOTE_WORKERS, thread_name_prefix="casnap-fetch") as pool:
                    self._read.update(
                        read_chunks(store, wanted, pool, None if kept is None else kept.keep)
                    )
            return self._read


class FramesAhead:
    """The frames a run of chunk reads from a remote store needs, fetched ahead as spans (a few
    large requests, not one per frame) and each decoded once into the store's frame cache, where
    Store.read_frame finds it. Only a shortcut: a frame that cannot be fetched or decoded here is
    left to read_frame, which reads it alone and names the chunk in its error."""

    def __init__(self, store: Store, pool: ThreadPoolExecutor, entries: Iterable[IndexEntry]):
        from casnap.compression import decode_frame  # numpy: loaded by whoever reads chunks
        from casnap.packs import pack_key

        self._store = store
        self._key = pack_key
        self._decode = decode_frame
        self._waiting: set[tuple[bytes, int]] = set()
        ranges = []
        for e in entries:
            if (e.pack, e.offset) not in self._waiting:
                self._waiting.add((e.pack, e.offset))
                ranges.append((pack_key(e.pack), e.offset, e.offset + e.length))
        self._spans = Spans(store.backend, pool, ranges)

    def ready(self, e: IndexEntry) -> None:
        """The frame of e decoded into the frame cache (on its first chunk; then nothing)."""
        if (e.pack, e.offset) not in self._waiting:
            return
        self._waiting.discard((e.pack, e.offset))
        key = self._key(e.pack)
        if self._store.cached_frame(e.pack, e.offset) is not None:
            self._spans.skip(key, e.offset, e.length)
            return
        with contextlib.suppress(CasnapError):
            frame = self._decode(self._spans.get(key, e.offset, e.length), e.frame_size)
            self._store.cache_frame((bytes(e.pack), e.offset), frame)

    def close(self) -> None:
        """Stop fetching what was not read (spans not started are dropped)."""
        self._spans.cancel()
