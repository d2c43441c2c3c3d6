"""Snapshot and FileEntry values, their canonical encoding, and the chunk-list blobs an entry names.

A snapshot manifest is canonical JSON (sorted keys, no spaces); its id is the BLAKE3 of those bytes
and it is stored zstd-compressed under `snapshots/<id>`. A file's chunk list is stored as TREE
blobs in the chunk store (chunklist.py): a FileEntry names every TREE blob its list needs, so an
unchanged file reuses its blobs and a changed one usually adds a single small delta.

Listing snapshots reads only a manifest's head (every field but `files`, read_manifest); its file
list is decoded and checked when something first uses it (LazyFiles), so a command that lists a
history of big manifests costs in proportion to their metadata.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast, overload

import orjson

from casnap.canonical import canonical_json, plain_chunkers
from casnap.errors import CasnapError, HostileManifest, IntegrityError
from casnap.ids import ID_SIZE, ObjectId, hash_bytes
from casnap.manifestfields import (
    COUNT_LIMIT,
    HEX_RUN,
    TIME_NS_LIMIT,
    check_links,
    check_path,
    check_paths,
    check_scope,
    chunker_field,
    dirs_field,
    flat_chunker,
    integer,
    integers,
    object_id,
    origin_field,
    text,
    time_field,
    totals_field,
)

MANIFEST_VERSION = 1
# Fields written only when set, so a manifest without them encodes to the same bytes as before.
OPTIONAL_FILE_FIELDS = ("uid", "gid", "link")


class FileEntry(NamedTuple):
    """One file of a snapshot."""

    path: str
    kind: str  # "file" or "sqlite" (captured through SQLite's backup API)
    size: int
    mode: int
    mtime_ns: int
    hash: str  # BLAKE3 of the whole file, hex
    chunker: dict[str, Any]
    lists: tuple[str, ...]  # TREE blob ids holding the chunk list, hex
    chunks: int
    source: tuple[int, ...] | None = None  # stat fingerprint of the source, for the stat cache
    uid: int | None = None  # owner, restored when checkout runs as root
    gid: int | None = None
    link: str | None = None  # a hard link of this earlier path of the snapshot (same content)

    def to_json(self) -> dict[str, Any]:
        # field by field (dataclasses.asdict copied every value deeply: most of the time a
        # commit of many small files spent writing its manifest)
        d: dict[str, Any] = {
            "path": self.path,
            "kind": self.kind,
            "size": self.size,
            "mode": self.mode,
            "mtime_ns": self.mtime_ns,
            "hash": self.hash,
            "chunker": dict(self.chunker),
            "lists": list(self.lists),
            "chunks": self.chunks,
            "source": list(self.source) if self.source is not None else None,
        }
        for key in OPTIONAL_FILE_FIELDS:  # absent when unset: older manifests encode as before
            value = getattr(self, key)
            if value is not None:
                d[key] = value
        return d

    @classmethod
    def from_json(cls, d: Any) -> FileEntry:
        # a manifest holds one entry per file (tens of thousands): no generator per field
        try:
            if not isinstance(d, dict):
                raise TypeError(f"expected an object, got {type(d).__name__}")
            source, uid, gid, link = d.get("source"), d.get("uid"), d.get("gid"), d.get("link")
            entry = cls(
                path=text(d["path"]),
                kind=text(d["kind"]),
                size=integer(d["size"]),
                mode=integer(d["mode"]),
                mtime_ns=integer(d["mtime_ns"]),
                hash=object_id(d["hash"]),
                chunker=chunker_field(d["chunker"]),
                lists=tuple([object_id(x) for x in d["lists"]]),
                chunks=integer(d["chunks"]),
                source=None if source is None else integers(source),
                uid=None if uid is None else integer(uid),
                gid=None if gid is None else integer(gid),
                link=None if link is None else text(link),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"malformed file entry in manifest: {exc}") from exc
        entry.check()
        check_path(entry.path)
        if entry.link is not None:
            check_path(entry.link)
        return entry

    def check(self) -> FileEntry:
        """self, when its values are in the ranges every reader of a manifest takes (from_json
        and the quick reading of many entries both check them here; a commit checks its entries
        so before it stores them: Snapshot.check), else IntegrityError. Paths are check_path's."""
        if self.kind not in ("file", "sqlite"):
            raise IntegrityError(f"unknown file kind {self.kind!r} in manifest")
        if not (0 <= self.size < COUNT_LIMIT and 0 <= self.chunks and 0 <= self.mode <= 0o7777):
            raise IntegrityError(f"file entry {self.path!r} has out-of-range size, mode or chunks")
        if not -TIME_NS_LIMIT <= self.mtime_ns < TIME_NS_LIMIT:
            raise IntegrityError(f"file entry {self.path!r} has an out-of-range mtime")
        for owner in (self.uid, self.gid):
            if owner is not None and not 0 <= owner < 1 << 32:
                raise IntegrityError(f"file entry {self.path!r} has an out-of-range owner")
        return self


@dataclass(frozen=True)
class Snapshot:
    """A snapshot manifest: when, what, and every file with its chunk list."""

    time: str  # ISO 8601, UTC
    host: str
    user: str
    source: str  # the data dir committed, absolute
    paths: tuple[str, ...]  # what was committed inside it; () means all of it
    excludes: tuple[str, ...]
    message: str
    tags: tuple[str, ...]
    parent: str | None
    files: Sequence[FileEntry]  # a tuple, or a LazyFiles for a manifest read back
    stats: dict[str, int] = field(default_factory=dict)
    version: int = MANIFEST_VERSION
    # mode, uid and gid of the data dir (".") and of the folders below it, so a checkout that
    # creates them never makes them more open than they were
    dirs: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()  # files left out because they could not be read
    # (repository id, snapshot id) this snapshot was copied from, when the copy has another id
    origin: tuple[str, str] | None = None
    # (number of files, their bytes), so `log` shows them without reading the file list; None in
    # manifests written before it was recorded
    totals: tuple[int, int] | None = None

    def encode(self) -> bytes:
        """Canonical JSON bytes; the snapshot id is their BLAKE3."""
        d = self._head_json()
        d["files"] = [f.to_json() for f in self.files]
        return canonical_json(d)

    def check(self, name: str = "snapshot") -> Snapshot:
        """self, when a reader of its manifest would take it: check_fields, then the file list
        as a whole as the reader checks it (check_file_list: each path once, no file below
        another, links, totals); else IntegrityError (HostileManifest for paths and links)
        naming the first that fails. Every writer of a manifest calls it before it stores one.
        The ids are not checked as hex again: a writer's are digests it wrote out as hex, or
        taken from a manifest its reader checked (the check cost 18 ms per 20k files)."""
        self.check_fields(name)
        try:
            check_file_list(self.files, self.totals, ids=False)
        except IntegrityError as exc:
            raise type(exc)(f"{name}: {exc}") from exc
        return self

    def check_fields(self, name: str = "snapshot") -> Snapshot:
        """self, when a reader takes every field but the file list as a whole: each parsed by
        the reader's own code (_parse), each entry's values checked as the reader checks them
        (FileEntry.check); else IntegrityError naming the first that fails. Each path's
        check_path is left out: a commit's passed it when the data dir was scanned, a copy's
        when its source was read (checking 20k paths again would cost more than all the rest);
        a link names one of them (check_links)."""
        Snapshot._parse(self._head_json(), name, ())
        for f in self.files:
            f.check()
        return self

    def _head_json(self) -> dict[str, Any]:
        """The JSON object of the manifest, its file list left empty."""
        d: dict[str, Any] = {
            "version": self.version,
            "time": self.time,
            "host": self.host,
            "user": self.user,
            "source": self.source,
            "paths": list(self.paths),
            "excludes": list(self.excludes),
            "message": self.message,
            "tags": list(self.tags),
            "parent": self.parent,
            "files": [],
            "stats": self.stats,
        }
        if self.dirs:  # written only when present: older manifests keep their bytes and ids
            d["dirs"] = {k: list(v) for k, v in self.dirs.items()}
        if self.skipped:
            d["skipped"] = list(self.skipped)
        if self.origin is not None:
            d["origin"] = {"repository": self.origin[0], "snapshot": self.origin[1]}
        if self.totals is not None:
            d["totals"] = {"files": self.totals[0], "bytes": self.totals[1]}
        return d

    @property
    def id(self) -> ObjectId:
        return hash_bytes(self.encode())

    @property
    def logical_bytes(self) -> int:
        return self.totals[1] if self.totals is not None else sum(f.size for f in self.files)

    @property
    def file_count(self) -> int:
        """Number of files, from the recorded totals when there are (no file list read)."""
        return self.totals[0] if self.totals is not None else len(self.files)

    @classmethod
    def decode(cls, raw: bytes, name: str = "manifest") -> Snapshot:
        """Parse and validate canonical JSON; IntegrityError/HostileManifest when malformed.

        orjson parses it 3-4x quicker than json.loads, which stays the reference: orjson refuses
        some JSON json.loads takes (NaN, lone surrogates) and reads integers past 64 bits as
        floats, so what it refuses, what then fails a check and a `chunker` holding a float
        (the one field of any type) are read again by json.loads."""
        try:
            d = orjson.loads(raw)
            if type(d) is dict and plain_chunkers(d.get("files")):
                return cls._parse(d, name, None)
        except (orjson.JSONDecodeError, CasnapError):
            pass
        return cls._parse(_document(raw, name), name, None)

    @classmethod
    def decode_head(cls, raw: bytes, name: str, reread: Callable[[], bytes]) -> Snapshot:
        """Every field but the file list, which is decoded (and checked) on first use from the
        bytes reread gives (the same, verified again): the file list of a manifest casnap wrote
        is not parsed here. When the whole manifest reads otherwise than its head, the file list
        raises IntegrityError."""
        head = cls._parse(_head_document(raw, name), name, ())

        def files() -> tuple[FileEntry, ...]:
            snap = cls.decode(reread(), name)
            if dataclasses.replace(snap, files=()) != head:
                raise IntegrityError(f"{name}: its fields read otherwise with its file list")
            return tuple(snap.files)

        return dataclasses.replace(head, files=LazyFiles(files))

    @classmethod
    def _parse(cls, d: dict[str, Any], name: str, files: Sequence[FileEntry] | None) -> Snapshot:
        """The snapshot d holds; its file list decoded and checked unless given (files)."""
        version = d.get("version")
        if version != MANIFEST_VERSION:
            raise IntegrityError(f"{name}: unsupported manifest version {version!r}")
        full = files is None
        try:
            if files is None:
                files = _entries(d["files"])
            elif "files" not in d:
                raise KeyError("files")
            snap = cls(
                time=time_field(d["time"]),
                host=text(d["host"]),
                user=text(d["user"]),
                source=text(d["source"]),
                paths=tuple(check_scope(text(p)) for p in d["paths"]),
                excludes=tuple(text(p) for p in d["excludes"]),
                message=text(d["message"]),
                tags=tuple(text(t) for t in d["tags"]),
                parent=None if d["parent"] is None else object_id(d["parent"]),
                files=files,
                stats={text(k): integer(v) for k, v in dict(d["stats"]).items()},
                dirs=dirs_field(d.get("dirs", {})),
                skipped=tuple(text(p) for p in d.get("skipped", ())),
                origin=origin_field(d.get("origin")),
                totals=totals_field(d.get("totals")),
            )
            check_file_list(files, snap.totals if full else None, ids=False)
        except HostileManifest as exc:
            raise HostileManifest(f"{name}: {exc}") from exc
        except IntegrityError as exc:
            raise IntegrityError(f"{name}: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{name}: malformed manifest ({exc})") from exc
        return snap


MADE_NS = "made_ns"  # stats: when a commit made the snapshot (ns since the epoch), --time or not


def chronological(
    pairs: Iterable[tuple[ObjectId, Snapshot]],
) -> list[tuple[ObjectId, Snapshot]]:
    """Snapshots oldest first: by time; of equal times (commits given one `--time`), each after
    its parent (the snapshot committed before it), else by id, so `latest` is the last made. One
    whose parent is not among pairs (forgotten) was made after it, so after those of its time
    whose parent is there or none: forgetting one of a time leaves the others in order."""
    ordered = sorted(pairs, key=lambda kv: (kv[1].time, kv[0].hex()))
    held = {sid.hex() for sid, _ in ordered}
    out: list[tuple[ObjectId, Snapshot]] = []
    start = 0
    for end in range(1, len(ordered) + 1):
        if end == len(ordered) or ordered[end][1].time != ordered[start][1].time:
            run = ordered[start:end]
            out.extend(_parents_first(run, held) if len(run) > 1 else run)
            start = end
    return out


def _parents_first(
    run: list[tuple[ObjectId, Snapshot]], held: set[str]
) -> list[tuple[ObjectId, Snapshot]]:
    """run (by id) with each snapshot after its parent when both are in it; among those ready,
    the first made (stats' MADE_NS, recorded since it was added), then a chain starting after a
    parent not held (forgotten) after the others, then the lowest id. A loop of parents (which
    no commit writes) falls back to id order."""
    by_hex = {sid.hex(): n for n, (sid, _) in enumerate(run)}
    children: dict[int, list[int]] = {}
    ready: list[tuple[int, bool, int]] = []
    for n, (_, snap) in enumerate(run):
        parent = by_hex.get(snap.parent) if snap.parent is not None else None
        if parent is None or parent == n:
            gap = snap.parent is not None and snap.parent not in held
            ready.append((snap.stats.get(MADE_NS, 0), gap, n))
        else:
            children.setdefault(parent, []).append(n)
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        _, after_gap, n = heapq.heappop(ready)
        order.append(n)
        for child in children.pop(n, ()):
            heapq.heappush(ready, (run[child][1].stats.get(MADE_NS, 0), after_gap, child))
    if len(order) < len(run):  # a loop: what it holds, by id
        placed = set(order)
        order += [n for n in range(len(run)) if n not in placed]
    return [run[n] for n in order]


def check_file_list(
    files: Sequence[FileEntry], totals: tuple[int, int] | None, ids: bool = True
) -> None:
    """What a reader checks of a manifest's file list as a whole, each entry's values checked
    already (FileEntry.check): with ids, every id they name (hash, lists) one as object_id
    reads it (the reader checked them as it made the entries: _entries); no path twice, no file
    below another, each link to a file of the list with its content (HostileManifest); the
    totals, when given, those of the files (IntegrityError)."""
    if ids and not _ids_hex(files):
        for f in files:  # the first that is not, named as from_json names it
            try:
                [object_id(x) for x in (f.hash, *f.lists)]
            except ValueError as exc:
                raise IntegrityError(f"malformed file entry in manifest: {exc}") from exc
    if files:
        check_paths([f.path for f in files], checked=True)
        check_links(files)
    if totals is not None and totals != (len(files), sum(f.size for f in files)):
        raise IntegrityError("its totals do not match its files")


class LazyFiles(Sequence[FileEntry]):
    """A snapshot's file list, decoded and checked on first use (then kept): listing snapshots
    reads only their heads. Reading it raises IntegrityError/HostileManifest when it is damaged,
    as decoding the whole manifest would."""

    __slots__ = ("_load", "_files", "_lock")

    def __init__(self, load: Callable[[], tuple[FileEntry, ...]]) -> None:
        self._load: Callable[[], tuple[FileEntry, ...]] | None = load
        self._files: tuple[FileEntry, ...] | None = None
        self._lock = threading.Lock()  # restore threads may be first to ask

    @property
    def loaded(self) -> bool:
        """Whether the file list has been decoded."""
        return self._files is not None

    def _get(self) -> tuple[FileEntry, ...]:
        files = self._files
        if files is None:
            with self._lock:
                if self._files is None:
                    assert self._load is not None
                    self._files = self._load()
                    self._load = None  # what it holds (the bytes of a small manifest) goes
                files = self._files
        return files

    @overload
    def __getitem__(self, i: int) -> FileEntry: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[FileEntry]: ...
    def __getitem__(self, i: int | slice) -> FileEntry | Sequence[FileEntry]:
        return self._get()[i]

    def __len__(self) -> int:
        return len(self._get())

    def __iter__(self) -> Iterator[FileEntry]:
        return iter(self._get())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (tuple, LazyFiles)):
            return NotImplemented
        return self._get() == tuple(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LazyFiles({self._files!r})" if self._files is not None else "LazyFiles(...)"


def complete(snap: Snapshot) -> Snapshot:
    """snap with its file list read: IntegrityError/HostileManifest when it is damaged."""
    len(snap.files)
    return snap


# a manifest this large is read again from the repository when its file list is wanted; a
# smaller one keeps its bytes (no second request)
KEEP_BYTES = 256 << 10


def read_manifest(
    get: Callable[[], bytes],
    ids: Callable[[bytes], ObjectId],
    sid: ObjectId,
    name: str,
    lazy: bool = False,
) -> Snapshot:
    """Read and verify (against sid) the manifest get gives, and parse it; lazy: its head only,
    the file list decoded on first use, from bytes get gives again (verified again) when big."""

    def verified() -> bytes:
        raw = decompress_manifest(get(), name)
        if ids(raw) != sid:
            raise IntegrityError(f"{name} does not match its id (damaged)")
        return raw

    raw = verified()
    if not lazy:
        return Snapshot.decode(raw, name)
    kept = raw if len(raw) <= KEEP_BYTES else None
    return Snapshot.decode_head(raw, name, (lambda: kept) if kept is not None else verified)


def _document(raw: bytes, name: str) -> dict[str, Any]:
    """The JSON object of a whole manifest."""
    try:
        d = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"{name}: not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise IntegrityError(f"{name}: not a manifest (nested too deeply)") from exc
    if not isinstance(d, dict):
        raise IntegrityError(f"{name}: not a manifest object")
    return d


def _head_document(raw: bytes, name: str) -> dict[str, Any]:
    """A manifest's JSON object with an empty `files`: in canonical JSON `files` follows
    `excludes` and precedes `host`, so its array is cut out and the rest parsed; a manifest laid
    out otherwise is parsed whole (a crafted one that cuts otherwise reads back differently in
    full, which LazyFiles refuses)."""
    start = raw.find(b',"files":[')
    end = raw.find(b'],"host":"', start) if start >= 0 else -1
    if end >= 0:
        try:
            d = json.loads(raw[: start + 9] + b"[]" + raw[end + 1 :])
        except (ValueError, RecursionError):
            d = None
        if type(d) is dict and d.get("files") == []:
            return d
    d = _document(raw, name)
    if "files" in d:
        d["files"] = []
    return d


def _entries(raw: Any) -> tuple[FileEntry, ...]:
    """The entries of a manifest's `files`, as FileEntry.from_json makes them, quicker: a
    manifest holds one per file (tens of thousands), so the ids are checked as hex all at once.
    The quick way accepts nothing from_json refuses (it is stricter: JSON types only); on any
    doubt every entry goes through from_json, which names what is wrong."""
    if type(raw) is list:
        entries = [_quick_entry(d) for d in raw]
        if None not in entries and _ids_hex(cast(list[FileEntry], entries)):
            return tuple(cast(list[FileEntry], entries))
    return tuple(FileEntry.from_json(f) for f in raw)


def _ids_hex(entries: Sequence[FileEntry]) -> bool:
    """Whether every id the entries name (hash, lists) is one as object_id reads it: 64 hex
    digits, all checked at once."""
    ids = [x for e in entries for x in (e.hash, *e.lists)]
    return all(len(x) == 2 * ID_SIZE for x in ids) and bool(HEX_RUN.fullmatch("".join(ids)))


_STR = frozenset([str])
_INT = frozenset([int])


def _quick_entry(d: Any) -> FileEntry | None:
    """from_json without the hex checks (made for all entries at once), for an entry of plain
    JSON types only; None when anything is not as casnap writes it (from_json then decides)."""
    if type(d) is not dict:
        return None
    path, kind, size, mode, mtime = (
        d.get("path"),
        d.get("kind"),
        d.get("size"),
        d.get("mode"),
        d.get("mtime_ns"),
    )
    digest, chunker, lists, chunks = (
        d.get("hash"),
        d.get("chunker"),
        d.get("lists"),
        d.get("chunks"),
    )
    source, uid, gid, link = d.get("source"), d.get("uid"), d.get("gid"), d.get("link")
    if not (
        type(path) is str
        and kind in ("file", "sqlite")
        and type(digest) is str
        and type(size) is int
        and type(mode) is int
        and type(mtime) is int
        and type(chunks) is int
        and type(chunker) is dict
        and flat_chunker(chunker)
        and type(lists) is list
        and _STR.issuperset(map(type, lists))
        and (source is None or (type(source) is list and _INT.issuperset(map(type, source))))
        and (uid is None or type(uid) is int)
        and (gid is None or type(gid) is int)
        and (link is None or type(link) is str)
    ):
        return None
    try:
        check_path(path)
        if link is not None:
            check_path(link)
        return FileEntry(
            path, kind, size, mode, mtime, digest, dict(chunker), tuple(lists), chunks,
            None if source is None else tuple(source), uid, gid, link,
        ).check()  # fmt: skip
    except IntegrityError:  # a path or a value out of range (HostileManifest is one too)
        return None


def compress_manifest(raw: bytes) -> bytes:
    import zstandard  # here: a command that never writes a manifest does without it

    # level 1: ids and hashes do not compress; on a manifest of 20k small files it made both the
    # smallest and the quickest frame (1.86 MB in 0.015 s; level 9: 2.10 MB in 0.2-0.45 s)
    return zstandard.ZstdCompressor(level=1).compress(raw)


def decompress_manifest(blob: bytes, name: str) -> bytes:
    from casnap.compression import decompress_object
    from casnap.crypto import refuse_sealed

    refuse_sealed(blob, name)  # an encrypted manifest never decodes: said as such
    return decompress_object(blob, f"{name}: corrupt manifest", limit=1 << 30)
