"""Repository: init/open, commit, checkout, and the snapshot list. The Python API the CLI calls."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import getpass
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from casnap import (
    capture,
    chunklist,
    compression,
    locks,
    pipeline,
    private,
    rollback,
    selection,
    smoke,
    tempfiles,
)
from casnap import restored as restored_files
from casnap.backends.base import Backend
from casnap.backends.local import LocalBackend
from casnap.chunking import HEADER_BYTES, choose_chunker, make_chunker
from casnap.constants import (
    CDC_AVG,
    CDC_MAX,
    CDC_MIN,
    FAISS_GRAPH_BLOCK,
    FAISS_IDS_BLOCK,
    FAISS_LIST_BLOCK,
    FAISS_VECTOR_BLOCK,
    FLOAT_ZSTD_LEVEL,
    FORMAT_VERSION,
    FRAME_TARGET,
    GROUP_FLOATS,
    LIST_MAX_DELTAS,
    MAX_CHUNK_SIZE,
    MAX_FRAME_SIZE,
    MAX_PACK_TARGET,
    PACK_TARGET_SIZE,
    SOURCE_RETRIES,
    ZSTD_LEVEL,
)
from casnap.errors import (
    AccessDenied,
    CasnapError,
    EmptySnapshot,
    InconsistentData,
    IntegrityError,
    NotADatabase,
    NotARepository,
    RepositoryNotFound,
    SourceError,
    UnsupportedFormat,
    from_oserror,
)
from casnap.ids import Hasher, ObjectId, hash_bytes, is_hex_prefix
from casnap.manifest import FileEntry, Snapshot, compress_manifest, decompress_manifest
from casnap.paths import commit_paths
from casnap.progress import ByteProgress, ProgressFn
from casnap.store import TREE, PackWriter, Store

if TYPE_CHECKING:
    from casnap.checkout import CheckoutResult

# zstd's level range (ZSTD_minCLevel() .. ZSTD_maxCLevel()): a config outside it is damaged.
MIN_ZSTD_LEVEL, MAX_ZSTD_LEVEL = -(1 << 17), 22
PLACEHOLDER_NAMES = frozenset({"README.md", ".gitkeep"})


def default_config() -> dict[str, Any]:
    """The config a new repository gets."""
    return {
        "casnap_format": FORMAT_VERSION,
        "id": uuid.uuid4().hex,
        "created": _now_iso(),
        "chunker": {
            "default": {"name": "fastcdc", "min": CDC_MIN, "avg": CDC_AVG, "max": CDC_MAX},
            "sqlite": {"name": "sqlite"},
            "faiss": {
                "name": "faiss",
                "vectors": FAISS_VECTOR_BLOCK,
                "lists": FAISS_LIST_BLOCK,
                "graph": FAISS_GRAPH_BLOCK,
                "ids": FAISS_IDS_BLOCK,
                "min": CDC_MIN,
                "avg": CDC_AVG,
                "max": CDC_MAX,
            },
        },
        "pack_target": PACK_TARGET_SIZE,
        "zstd_level": ZSTD_LEVEL,
        "float_level": FLOAT_ZSTD_LEVEL,
        "frame_target": FRAME_TARGET,
        "group_floats": GROUP_FLOATS,
    }


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> dt.datetime:
    """The datetime of a snapshot time string."""
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)


def _is_placeholder_dir(path: Path) -> bool:
    """True when path is missing or holds nothing but README.md / .gitkeep."""
    if not path.exists():
        return True
    return path.is_dir() and all(p.name in PLACEHOLDER_NAMES for p in path.iterdir())


@dataclass
class CommitResult:
    """What a commit did, as `commit --json` prints it."""

    id: str
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    files_removed: int = 0
    bytes_read: int = 0
    bytes_added: int = 0
    logical_bytes: int = 0
    chunks_new: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # said on stderr unless -q; not problems
    skipped: list[str] = field(default_factory=list)  # left out: could not be read

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class VerifyResult:
    """What `smoke_verify` found: every hash verified, and the smoke report when checks ran."""

    id: str
    files: int
    bytes_verified: int
    smoke: dict[str, Any] | None
    ok: bool
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Repository:
    """A casnap repository on a backend."""

    def __init__(
        self, backend: Backend, config: dict[str, Any], tmp_dir: Path, root: Path | None = None
    ) -> None:
        self.backend = backend
        self.root = root  # the repository's directory, for a local repository
        # told about waits (a locked database, a lock another process holds); None: silent
        self.notify: Callable[[str], None] | None = None
        self.config = config
        self.tmp_dir = tmp_dir
        self.store = Store(backend, int(config["pack_target"]))
        self.zstd_level = int(config["zstd_level"])
        self.float_level = int(config.get("float_level", self.zstd_level))
        self.frame_target = int(config.get("frame_target", 0))
        self.group_floats = bool(config.get("group_floats", False))
        self._snapshots: dict[ObjectId, Snapshot] | None = None
        self._index_loaded = False
        self._read_tick: Callable[[int], None] | None = None  # progress of the commit under way
        self.created: rollback.NewRepository | None = None  # set by open_or_init when it made it
        self._unindexed: list[ObjectId] = []  # packs of a failed commit, for rollback
        # reading a repository that cannot be written: shared locks are skipped with no_lock, or
        # when on_unwritable is set and a lock cannot be written (it is told why, in one line)
        self.no_lock = False
        self.on_unwritable: Callable[[str], None] | None = None

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def init(cls, location: Path | str, config: dict[str, Any] | None = None) -> Repository:
        """Create a repository in an empty or missing directory."""
        root = Path(location).resolve()  # a symbolic link to the repository is followed once
        if (root / "config").exists():
            raise NotARepository(f"{root} already holds a casnap repository")
        if root.exists() and not root.is_dir():
            raise NotARepository(f"{root} is not a directory")
        if not _is_placeholder_dir(root):
            raise NotARepository(
                f"{root} is not empty and not a casnap repository; not touching it"
            )
        try:
            root.mkdir(mode=private.DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise from_oserror(exc, f"creating {root}") from None
        # _local_backend makes an existing empty root private too
        repo = cls.init_backend(_local_backend(root), config, root / "tmp", root=root)
        try:
            private.make_dirs(repo.tmp_dir)  # here, so whatever uses scratch space finds it 0700
        except OSError as exc:
            raise from_oserror(exc, f"creating {repo.tmp_dir}") from exc
        return repo

    @classmethod
    def init_backend(
        cls,
        backend: Backend,
        config: dict[str, Any] | None = None,
        tmp_dir: Path | None = None,
        root: Path | None = None,
    ) -> Repository:
        """Create a repository on any backend."""
        cfg = config or default_config()
        if not backend.put("config", json.dumps(cfg, indent=2, sort_keys=True).encode() + b"\n"):
            raise NotARepository(f"{backend.location} already holds a casnap repository")
        return cls(backend, cfg, tmp_dir or Path(os.environ.get("TMPDIR", "/tmp")), root)

    @classmethod
    def open(cls, location: Path | str) -> Repository:
        """Open the repository in a local directory."""
        root = Path(location).resolve()  # a symbolic link to the repository is followed once
        if not (root / "config").is_file():
            if _is_placeholder_dir(root):
                raise RepositoryNotFound(f"no casnap repository at {root} (run `casnap init`)")
            raise NotARepository(f"{root} is not a casnap repository")
        return cls.open_backend(_local_backend(root), root / "tmp", root=root)

    @classmethod
    def open_backend(
        cls, backend: Backend, tmp_dir: Path | None = None, root: Path | None = None
    ) -> Repository:
        """Open a repository on any backend."""
        try:
            raw = backend.get("config")
        except IntegrityError:
            raise RepositoryNotFound(f"no casnap repository at {backend.location}") from None
        try:
            cfg = json.loads(raw)
            version = cfg["casnap_format"]
            if not isinstance(version, int):
                raise TypeError("format version is not an integer")
            if version > FORMAT_VERSION:
                raise UnsupportedFormat(
                    f"repository {backend.location} has format {version}; this casnap reads up to "
                    f"{FORMAT_VERSION}: upgrade casnap"
                )
            if version < FORMAT_VERSION:
                raise UnsupportedFormat(
                    f"repository {backend.location} has format {version}, written by a "
                    f"pre-release casnap; this casnap reads format {FORMAT_VERSION}: create a new "
                    "repository and commit again"
                )
            chunker = cfg["chunker"]["default"]
            if not isinstance(chunker, dict):
                raise TypeError("the default chunker is not an object")
            make_chunker(chunker)
            choose_chunker(b"", cfg["chunker"])
            for sample in (b"SQLite format 3\x00\x10\x00", b"IxF2"):
                choose_chunker(sample, cfg["chunker"])
            sizes = {
                "pack_target": (cfg["pack_target"], 1, MAX_PACK_TARGET),
                "frame_target": (cfg.get("frame_target", 0), 0, MAX_FRAME_SIZE),
            }
            for name, (value, low, high) in sizes.items():
                if not low <= int(value) <= high:
                    raise ValueError(f"{name} {value} is outside the limits [{low}, {high}]")
            levels = {"zstd_level": cfg["zstd_level"], "float_level": cfg.get("float_level", 0)}
            for name, level in levels.items():
                if not MIN_ZSTD_LEVEL <= int(level) <= MAX_ZSTD_LEVEL:
                    raise ValueError(f"{name} {level} is out of range")
        except CasnapError:
            raise
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise IntegrityError(f"{backend.location}/config is damaged: {exc}") from None
        return cls(backend, cfg, tmp_dir or Path(os.environ.get("TMPDIR", "/tmp")), root)

    @classmethod
    def open_or_init(cls, location: Path | str, data_dir: Path | str | None = None) -> Repository:
        """Open the repository, creating it when the directory is missing or empty.

        With data_dir, a missing data dir is reported first, so a failing first commit creates
        no repository.
        """
        if data_dir is not None:
            capture.require_data_dir(Path(data_dir))
        root = Path(location).resolve()  # a symbolic link to the repository is followed once
        if not (root / "config").exists() and _is_placeholder_dir(root):
            made_dir = not root.exists()
            found = frozenset(p.name for p in root.iterdir()) if not made_dir else frozenset()
            repo = cls.init(root)
            repo.created = rollback.NewRepository(root, made_dir, found)
            return repo
        return cls.open(root)

    @property
    def id(self) -> str:
        """The repository's random id (from its config)."""
        return str(self.config["id"])

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lock(self, operation: str, exclusive: bool = False) -> contextlib.AbstractContextManager:
        """Take the repository lock (shared unless exclusive) for a block."""
        if self.no_lock and not exclusive:
            return contextlib.nullcontext()
        return locks.locked(
            self.backend,
            operation,
            exclusive,
            unwritable=self.on_unwritable,
            notify=self.notify,
        )

    def _ensure_index(self) -> None:
        if not self._index_loaded:
            self.store.load_index()
            self._index_loaded = True

    def refresh(self, *, only_if_changed: bool = False) -> None:
        """Drop the cached snapshot list and index so they are read again from the backend.

        With only_if_changed, drop each only when another process changed it (an index file or a
        snapshot added or removed, as gc and prune do): a long-lived Repository then never trusts
        an index entry whose pack gc has deleted. Call it while holding a lock.
        """
        if not only_if_changed:
            self._index_loaded = False
            self._snapshots = None
            return
        if self._index_loaded:
            present = {k for k, _ in self.backend.list("index/")}
            if present != set(self.store.index_files):
                self._index_loaded = False
        if self._snapshots is not None:
            names = (k.rsplit("/", 1)[-1] for k, _ in self.backend.list("snapshots/"))
            present = {n for n in names if len(n) == 64 and is_hex_prefix(n)}
            if present != {sid.hex() for sid in self._snapshots}:
                self._snapshots = None

    def remove_snapshot(self, sid: ObjectId) -> None:
        """Delete one snapshot manifest; its data stays until gc. Hold the exclusive lock."""
        self.backend.delete(f"snapshots/{sid.hex()}")
        if self._snapshots is not None:
            self._snapshots.pop(sid, None)

    # -- snapshots -----------------------------------------------------------------------------

    def load_snapshot(self, sid: ObjectId) -> Snapshot:
        """Read, verify and parse one manifest."""
        key = f"snapshots/{sid.hex()}"
        raw = decompress_manifest(self.backend.get(key), key)
        if hash_bytes(raw) != sid:
            raise IntegrityError(f"{key} does not match its id (damaged)")
        return Snapshot.decode(raw, key)

    def snapshots(self) -> list[tuple[ObjectId, Snapshot]]:
        """Every snapshot, oldest first."""
        if self._snapshots is None:
            found: dict[ObjectId, Snapshot] = {}
            for key, _ in self.backend.list("snapshots/"):
                name = key.rsplit("/", 1)[-1]
                try:
                    sid = ObjectId.from_hex(name)
                except ValueError:
                    continue
                found[sid] = self.load_snapshot(sid)
            self._snapshots = found
        return sorted(self._snapshots.items(), key=lambda kv: (kv[1].time, kv[0].hex()))

    def manifest_sizes(self) -> dict[str, int]:
        """Stored size of every manifest, by snapshot id (hex)."""
        return {k.rsplit("/", 1)[-1]: s for k, s in self.backend.list("snapshots/")}

    def resolve(
        self, ref: str, paths: Sequence[str] | None = None, tags: Sequence[str] = ()
    ) -> ObjectId:
        """A full id, a unique prefix of >= 4 hex digits, `latest`, or a tag (its newest); with
        paths (data-dir relative, normalised) or tags (`a,b`: both), only among the snapshots
        committed with those paths and carrying those tags (see selection.py)."""
        flt = selection.SnapshotFilter(
            None if paths is None else tuple(paths), selection.parse_tags(tags)
        )
        return selection.resolve(self.snapshots(), ref, flt).id

    def chunk_refs(self, entry: FileEntry) -> list[tuple[ObjectId, int]]:
        """The (chunk id, length) list of a file entry, read from its TREE blobs."""
        return chunklist.unpack_refs(self.file_refs(entry))

    def file_refs(self, entry: FileEntry) -> bytes:
        """A file entry's chunk list as packed refs (see chunklist.py), verified."""
        return self._resolve_lists(entry)[0]

    def _resolve_lists(self, entry: FileEntry) -> tuple[bytes, int, int]:
        """Packed refs of an entry, the number of deltas in its list chain and their bytes."""
        self._ensure_index()
        bodies = [self.store.get(ObjectId.from_hex(lid)) for lid in entry.lists]
        refs, deltas = chunklist.resolve(bodies, f"chunk list of {entry.path}")
        if chunklist.ref_count(refs) != entry.chunks:
            raise IntegrityError(f"chunk list of {entry.path} does not hold {entry.chunks} chunks")
        delta_bytes = sum(len(b) for b in bodies if chunklist.is_delta(b))
        return refs, deltas, delta_bytes

    # -- commit --------------------------------------------------------------------------------

    def commit(
        self,
        data_dir: Path | str,
        paths: Sequence[str] = (),
        *,
        excludes: Sequence[str] = (),
        message: str = "",
        tags: Sequence[str] = (),
        strict: bool = False,
        progress: ProgressFn | None = None,
        allow_empty: bool = False,
        skip_unreadable: bool = False,
    ) -> CommitResult:
        """Snapshot data_dir (or paths inside it); returns what was stored.

        FAISS indexes shorter than their header promises, without a `.meta.json` sidecar, or
        whose sidecar's ntotal disagrees with the index header, are listed in the result's
        warnings; with strict they are an error (InconsistentData) and nothing is committed.
        progress gets (bytes done, bytes total). A commit that would store no file where the
        last snapshot of the same paths had some is refused unless allow_empty; with
        skip_unreadable, files and folders that cannot be read for lack of permission are left
        out (listed in the result and the snapshot).
        """
        try:
            with self.lock("commit"):
                if not self.backend.exists("config"):  # taken back by a failed first commit
                    raise RepositoryNotFound(f"no casnap repository at {self.backend.location}")
                self.refresh(only_if_changed=True)
                result = self._commit(
                    Path(data_dir),
                    paths,
                    excludes,
                    message,
                    tags,
                    progress,
                    options=_CommitOptions(
                        check_pairs=True,
                        strict=strict,
                        allow_empty=allow_empty,
                        skip_unreadable=skip_unreadable,
                    ),
                )
                self.created = None  # in use now: never taken back
                return result
        except BaseException:
            # without the lock: the packs it wrote and never indexed, the repository it created
            rollback.after_failed_commit(self.backend, self._unindexed, self.created)
            self._unindexed = []
            raise

    def _commit(
        self,
        data_dir: Path,
        paths: Sequence[str],
        excludes: Sequence[str],
        message: str,
        tags: Sequence[str],
        progress: ProgressFn | None = None,
        options: _CommitOptions | None = None,
    ) -> CommitResult:
        opts = options or _CommitOptions(allow_empty=True)
        t0 = time.perf_counter()
        start_ns = time.time_ns()
        capture.require_data_dir(data_dir)
        data_dir = data_dir.resolve()  # a data dir reached through a symbolic link is stored
        prune = self.nested_repository(data_dir)
        self._clean_scratch()
        rel_paths = commit_paths(paths, data_dir)
        skipped: list[str] = []
        dirs: dict[str, tuple[int, int, int]] = {}
        unreadable: list[str] = []
        scan = capture.ScanOptions(
            prune=prune,
            skipped=skipped,
            dirs=dirs,
            unreadable=unreadable if opts.skip_unreadable else None,
        )
        sources = capture.scan(data_dir, rel_paths, excludes, options=scan)
        # FAISS indexes whole and against their sidecars, before anything is read or stored
        pairs = (
            smoke.consistency_warnings(data_dir, [s.path for s in sources])
            if opts.check_pairs
            else []
        )
        if opts.strict and pairs:
            raise InconsistentData(
                f"{len(pairs)} consistency problem(s), nothing committed (--strict): "
                + "; ".join(pairs)
            )
        source_dir = str(data_dir)
        parent_id, parent = self._parent(source_dir, rel_paths)
        parent_files = {f.path: f for f in parent.files} if parent else {}
        if not sources and parent_files and not opts.allow_empty:
            raise EmptySnapshot(
                f"nothing to store in {data_dir}, while the last snapshot of these paths "
                f"({parent_id.short if parent_id else '?'}) holds {len(parent_files)} file(s); "
                "refusing an empty snapshot"
            )
        result = CommitResult(id="", warnings=pairs + skipped)
        result.notes = [
            f"{p} lies inside the data dir: the repository is not stored in itself" for p in prune
        ]
        restored = self._restored(source_dir)
        writer = self.store.writer()
        entries: list[FileEntry] = []
        links: dict[tuple[int, int], FileEntry] = {}
        sizes = [_estimated_size(src) for src in sources]
        bar = ByteProgress(sum(sizes), progress)
        self._read_tick = bar.add if progress is not None else None
        try:
            with contextlib.ExitStack() as stack:
                stack.callback(setattr, self, "_read_tick", None)
                pool = stack.enter_context(ThreadPoolExecutor(max_workers=_workers()))
                for src, estimate in zip(sources, sizes, strict=True):
                    file_start = bar.done
                    try:
                        st = os.lstat(src.abspath)
                    except FileNotFoundError:
                        raise SourceError(f"{src.abspath} vanished while committing") from None
                    except OSError as exc:
                        raise from_oserror(exc, f"reading {src.abspath}") from exc
                    key = (st.st_dev, st.st_ino)
                    if st.st_nlink > 1 and key in links:
                        entry = _linked(links[key], src.path)
                        read = 0
                    else:
                        try:
                            entry, read = self._entry(
                                src, writer, pool, start_ns, parent_files, restored
                            )
                        except AccessDenied:
                            if not opts.skip_unreadable:
                                raise
                            unreadable.append(src.path)
                            continue
                        if st.st_nlink > 1:
                            links[key] = entry
                    old = parent_files.get(src.path)
                    result.bytes_read += read
                    if old is None:
                        result.files_new += 1
                    elif old.hash == entry.hash:
                        result.files_unchanged += 1
                    else:
                        result.files_changed += 1
                    entries.append(entry)
                    bar.advance_to(file_start + estimate)
            bar.finish()
            result.files_removed = len(set(parent_files) - {e.path for e in entries})
            result.chunks_new = writer.chunks_added
            added = writer.finish()
        except BaseException:
            self._unindexed = writer.abort()
            raise
        result.warnings += [f"{p}: not readable, left out of the snapshot" for p in unreadable]
        result.skipped = sorted(unreadable)
        user = _user()
        snap = Snapshot(
            time=_now_iso(),
            host=socket.gethostname(),
            user=user,
            source=source_dir,
            paths=rel_paths,
            excludes=tuple(excludes),
            message=message,
            tags=tuple(dict.fromkeys(tags)),
            parent=parent_id.hex() if parent_id else None,
            files=tuple(entries),
            stats={
                "files_new": result.files_new,
                "files_changed": result.files_changed,
                "files_unchanged": result.files_unchanged,
                "files_removed": result.files_removed,
                "bytes_read": result.bytes_read,
                "bytes_added": added,
                "chunks_new": result.chunks_new,
                "list_bytes": writer.bytes_by_type[TREE],
                "index_bytes": writer.index_bytes,
            },
            dirs=dirs,
            skipped=tuple(result.skipped),
        )
        raw = snap.encode()
        sid = hash_bytes(raw)
        blob = compress_manifest(raw)
        self.store.put_verified(f"snapshots/{sid.hex()}", blob)  # last: the commit point
        if self._snapshots is not None:
            self._snapshots[sid] = snap
        if restored:
            restored_files.drop(self.id, source_dir)  # the new snapshot's fingerprints serve
        result.id = sid.hex()
        result.bytes_added = added + len(blob)
        result.logical_bytes = snap.logical_bytes
        result.seconds = time.perf_counter() - t0
        return result

    def nested_repository(self, data_dir: Path) -> list[Path]:
        """The repository, when it lies inside data_dir (never stored); SourceError when the
        data dir lies inside the repository."""
        if self.root is None:
            return []
        root = self.root.resolve()
        if capture.inside(data_dir, root):
            raise SourceError(f"the data dir {data_dir} lies inside the repository {root}")
        return [root] if capture.inside(root, data_dir) else []

    def _restored(self, source: str) -> dict[str, FileEntry]:
        """Entries of the files a checkout restored into source, by path, with the fingerprint
        recorded after the swap as their `source` (see restored.py)."""
        record = restored_files.load(self.id, source)
        if record is None:
            return {}
        snaps = dict(self.snapshots())
        out: dict[str, FileEntry] = {}
        for path, (fp, sid_hex) in record.files.items():
            try:
                snap = snaps.get(ObjectId.from_hex(sid_hex))
            except ValueError:
                continue
            if snap is None:
                continue  # forgotten since: gc may have removed its chunks
            entry = next((f for f in snap.files if f.path == path), None)
            if entry is not None:
                out[path] = _with_source(entry, fp)
        return out

    def _entry(
        self,
        src: capture.SourceFile,
        writer: PackWriter,
        pool: ThreadPoolExecutor,
        start_ns: int,
        parent_files: dict[str, FileEntry],
        restored: dict[str, FileEntry],
    ) -> tuple[FileEntry, int]:
        """The entry of one source file and the bytes read for it: reused from the parent
        snapshot or from the last checkout when its fingerprint is unchanged, else read."""
        old = parent_files.get(src.path)
        fp = capture.fingerprint(src.abspath, src.kind)
        for known in (old, restored.get(src.path)):
            if known is not None and known.source is not None and known.kind == src.kind:
                if fp == known.source:
                    # neither the file nor the index is read: the chunks are present, because
                    # gc cannot run while a commit holds its lock
                    return known, 0
        return self._capture(src, writer, pool, start_ns, old)

    def _clean_scratch(self) -> None:
        """Remove what a killed casnap left in tmp/: database images, verify --smoke restores."""
        tempfiles.remove_stale(self.tmp_dir, recursive=False)
        tempfiles.remove_stale_stages(self.tmp_dir)

    def _parent(
        self, source: str, paths: tuple[str, ...]
    ) -> tuple[ObjectId | None, Snapshot | None]:
        """The newest snapshot of the same dir and paths: its files feed the stat cache."""
        for sid, snap in reversed(self.snapshots()):
            if snap.source == source and snap.paths == paths:
                return sid, snap
        return None, None

    def _capture(
        self,
        src: capture.SourceFile,
        writer: PackWriter,
        pool: ThreadPoolExecutor,
        start_ns: int,
        old: FileEntry | None,
    ) -> tuple[FileEntry, int]:
        """Read one file consistently into the store; returns its entry and bytes read."""
        read_total = 0
        for _attempt in range(max(1, SOURCE_RETRIES)):
            before, settled = capture.settled_fingerprint(src.abspath, src.kind)
            if before is None:
                raise SourceError(f"{src.abspath} vanished while committing")
            try:
                st = os.lstat(src.abspath)
                if src.kind == "sqlite":
                    try:
                        with capture.sqlite_image(src.abspath, self.tmp_dir, self.notify) as image:
                            entry, n = self._ingest_path(src, image, st, writer, pool, old)
                    except NotADatabase:
                        # SQLite's header but not a database SQLite can read: keep its bytes
                        src = capture.SourceFile(src.path, src.abspath, "file")
                        continue
                else:
                    entry, n = self._ingest_path(src, src.abspath, st, writer, pool, old)
            except FileNotFoundError:
                raise SourceError(f"{src.abspath} vanished while committing") from None
            except OSError as exc:
                raise from_oserror(exc, f"reading {src.abspath}") from exc
            read_total += n
            after = capture.fingerprint(src.abspath, src.kind)
            if src.kind == "sqlite":
                # the image is consistent whatever happened meanwhile; cache only a quiet file
                racy = before != after or capture.is_racy(before, start_ns)
                return _with_source(entry, None if racy else before), read_total
            if after == before and settled:
                racy = capture.is_racy(before, start_ns)
                return _with_source(entry, None if racy else before), read_total
        raise SourceError(f"{src.abspath} kept changing while it was read; commit aborted")

    def _ingest_path(
        self,
        src: capture.SourceFile,
        path: Path,
        st: os.stat_result,
        writer: PackWriter,
        pool: ThreadPoolExecutor,
        old: FileEntry | None,
    ) -> tuple[FileEntry, int]:
        self._ensure_index()
        ingest = pipeline.Ingest(
            self.store,
            writer,
            pool,
            _workers(),
            level=self.zstd_level,
            float_level=self.float_level,
            frame_target=self.frame_target,
            group_floats=self.group_floats,
        )
        # a data-dir file is opened without following a link swapped in since the scan
        fd = capture.open_source(path) if path == src.abspath else os.open(path, os.O_RDONLY)
        with os.fdopen(fd, "rb") as f:
            header = f.read(HEADER_BYTES)
            f.seek(0)
            chunker = choose_chunker(header, self.config["chunker"])
            stream = f if self._read_tick is None else _CountingReader(f, self._read_tick)
            done = ingest.run(stream, chunker)
            capture.wait_for_truncate(f.fileno())  # before the stat that vouches for the read
        entry = FileEntry(
            path=src.path,
            kind=src.kind,
            size=done.size,
            mode=stat.S_IMODE(st.st_mode),
            mtime_ns=st.st_mtime_ns,
            hash=done.hash.hex(),
            chunker=chunker.describe(),
            lists=self._store_list(done.refs, old, writer),
            chunks=chunklist.ref_count(done.refs),
            uid=st.st_uid,
            gid=st.st_gid,
        )
        return entry, done.size

    def _store_list(
        self, refs: bytes, old: FileEntry | None, writer: PackWriter
    ) -> tuple[str, ...]:
        """TREE blobs for a file's chunk list: a delta against the previous version when that
        keeps the chain short and smaller than one full list, else the full list."""
        if old is not None and old.lists:
            try:
                base, deltas, delta_bytes = self._resolve_lists(old)
            except IntegrityError:
                base = None  # a damaged previous list must not block a new snapshot
            if base is not None:
                if base == refs:
                    return old.lists
                if deltas < LIST_MAX_DELTAS:
                    body = chunklist.encode_delta(base, refs)
                    if delta_bytes + len(body) <= len(refs) and len(body) <= MAX_CHUNK_SIZE:
                        return (*old.lists, self._put_tree(body, writer))
        return tuple(self._put_tree(body, writer) for body in chunklist.pieces(refs))

    def _put_tree(self, body: bytes, writer: PackWriter) -> str:
        lid = hash_bytes(body)
        if not writer.known(lid):
            writer.add(lid, TREE, compression.encode(body, self.zstd_level), len(body))
        return lid.hex()

    def chunk_file(self, path: Path) -> tuple[list[tuple[ObjectId, int]], str, int]:
        """Chunk ids, whole-file hash and size of a file cut as commit would cut it (the same
        chunker choice); nothing is stored. `diff` compares the live data dir with it."""
        hasher = Hasher()
        refs: list[tuple[ObjectId, int]] = []
        size = 0
        try:
            with open(path, "rb") as f:
                header = f.read(4096)
                f.seek(0)
                chunker = choose_chunker(header, self.config["chunker"])
                for piece in chunker.split(f):
                    hasher.update(piece)
                    refs.append((hash_bytes(piece), len(piece)))
                    size += len(piece)
        except OSError as exc:
            raise from_oserror(exc, f"reading {path}") from None
        return refs, hasher.digest().hex(), size

    # -- checkout ------------------------------------------------------------------------------

    def checkout(
        self,
        ref: str,
        target: Path | str,
        paths: Sequence[str] = (),
        *,
        safety_snapshot: bool = True,
        force: bool = False,
        smoke: bool = True,
        smoke_cmd: str | None = None,
        progress: ProgressFn | None = None,
        all_paths: bool = False,
    ) -> CheckoutResult:
        """Restore a snapshot into target: staged and verified beside it, smoke-checked, then
        swapped in atomically per file (see checkout.py). A failed check raises SmokeCheckFailed
        and leaves target untouched. smoke=False skips the built-in checks (hashes are still
        verified); smoke_cmd is a shell command run with the staged dir in CASNAP_STAGED_DIR
        (also when smoke=False); progress gets (bytes done, bytes total). With all_paths, the
        newest snapshot of each group of snapshots committed with the same paths (of the data
        dir ref was taken of) is restored at once, a newer one winning where they overlap.
        """
        from casnap import checkout as co

        options = co.CheckoutOptions(
            safety_snapshot=safety_snapshot, force=force, smoke=smoke, smoke_cmd=smoke_cmd
        )
        with self.lock("checkout"):
            self.refresh(only_if_changed=True)
            sid = self.resolve(ref)
            snap = self.load_snapshot(sid)
            sources = co.newest_per_group(self, snap.source) if all_paths else [(sid, snap)]
            return co.checkout(self, sources, Path(target), paths, options, progress)

    # -- restoring without touching a data dir ---------------------------------------------------

    def restore_entry(
        self, entry: FileEntry, dest: Path | str, progress: ProgressFn | None = None
    ) -> int:
        """Write one file of a snapshot to dest (which must not exist), every hash verified."""
        self._ensure_index()
        bar = ByteProgress(entry.size, progress)
        with ThreadPoolExecutor(max_workers=_workers()) as pool:
            size = self._write_verified(entry, Path(dest), pool, bar.add)
        _fsync_file(Path(dest))
        bar.finish()
        return size

    def smoke_verify(
        self,
        ref: str,
        *,
        smoke_checks: bool = True,
        smoke_cmd: str | None = None,
        progress: ProgressFn | None = None,
    ) -> VerifyResult:
        """Restore a snapshot into a temporary staging dir (every chunk and file hash verified),
        smoke-check it there like a checkout would, and delete it; no data dir is touched."""
        with self.lock("verify"):
            self.refresh(only_if_changed=True)
            t0 = time.perf_counter()
            sid = self.resolve(ref)
            snap = self.load_snapshot(sid)
            self._ensure_index()
            _mkdir_in(self.tmp_dir)
            tempfiles.remove_stale_stages(self.tmp_dir)  # left by a verify that was killed
            try:
                stage = Path(
                    tempfile.mkdtemp(
                        prefix=f"{tempfiles.STAGE_PREFIX}{os.getpid()}-", dir=self.tmp_dir
                    )
                )
            except OSError as exc:
                raise from_oserror(exc, f"creating a staging dir in {self.tmp_dir}") from None
            try:
                bar = ByteProgress(snap.logical_bytes, progress)
                # each file's smoke checks start once it is restored, while the next one is
                with (
                    smoke.SmokeSession(
                        databases=[e.path for e in snap.files if e.kind == "sqlite"],
                        builtin=smoke_checks,
                        expect_faiss=smoke_checks
                        and any(smoke.may_be_faiss(e.path, e.chunker) for e in snap.files),
                    ) as checks,
                    ThreadPoolExecutor(max_workers=_workers()) as pool,
                ):
                    for entry in snap.files:
                        dest = stage / entry.path
                        _mkdir_in(dest.parent)
                        self._write_verified(entry, dest, pool, bar.add)
                        checks.staged(entry.path, dest)
                    bar.finish()
                    report = None
                    if smoke_checks or smoke_cmd:
                        view = {e.path: stage / e.path for e in snap.files}
                        report = checks.finish(
                            view,
                            list(view),
                            staged_dir=stage,
                            smoke_cmd=smoke_cmd,
                            env={"CASNAP_SNAPSHOT": sid.hex()},
                        )
            finally:
                _remove_tree(stage)
            return VerifyResult(
                id=sid.hex(),
                files=len(snap.files),
                bytes_verified=snap.logical_bytes,
                smoke=report.to_json() if report is not None else None,
                ok=report is None or report.ok,
                seconds=time.perf_counter() - t0,
            )

    def _write_verified(
        self,
        entry: FileEntry,
        tmp: Path,
        pool: ThreadPoolExecutor,
        tick: Callable[[int], None] | None = None,
    ) -> int:
        """Write a file's chunks to tmp (not fsynced: callers that keep it do), its BLAKE3
        checked against the manifest's; a mismatch names the damaged chunk."""
        refs = self.file_refs(entry)
        try:
            with open(tmp, "xb") as f:
                window = 2 * _workers() + 2
                size, whole = pipeline.restore(self.store, refs, f, pool, window, tick)
            if size != entry.size or whole.hex() != entry.hash:
                pipeline.find_damaged(self.store, refs)
        except OSError as exc:
            raise from_oserror(exc, f"writing {tmp.parent}") from None
        except IntegrityError as exc:
            raise IntegrityError(f"{entry.path}: {exc}") from None
        if size != entry.size or whole.hex() != entry.hash:
            # every chunk verified when read again: a read went wrong, or the manifest did
            raise IntegrityError(
                f"{entry.path}: restored file does not match its recorded hash, yet each of its "
                "chunks verifies when read again (a failing read, or a damaged manifest)"
            )
        _restore_attrs(tmp, entry)
        return size


def _local_backend(root: Path) -> Backend:
    """The backend of a repository directory.

    A root that group or others may enter (a repository made before casnap created everything
    private) is closed here, when we own it. Lock files half-written by a process that was killed
    are removed here: no gc may touch locks/ while other processes take locks, and the next
    casnap to open the repository can.
    """
    private.tighten_root(root)
    tempfiles.remove_stale(root / "locks", recursive=False)
    return LocalBackend(root)


def _estimated_size(src: capture.SourceFile) -> int:
    """Bytes a commit will read for a file: its size, plus its -wal for a database (the backup
    image holds the pages of both, so this bounds it from above)."""
    total = 0
    files = [src.abspath]
    if src.kind == "sqlite":
        files.append(Path(str(src.abspath) + "-wal"))
    for p in files:
        with contextlib.suppress(OSError):
            total += os.stat(p).st_size
    return total


class _CountingReader:
    """A binary stream that reports the bytes read through it (commit progress)."""

    def __init__(self, stream: BinaryIO, tick: Callable[[int], None]) -> None:
        self._stream = stream
        self._tick = tick

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._tick(len(data))
        return data

    def readinto(self, buf: Any) -> int:
        n = self._stream.readinto(buf)
        self._tick(n or 0)
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _mkdir_in(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise from_oserror(exc, f"creating {folder}") from None


def _remove_tree(path: Path) -> None:
    """Remove a directory tree casnap made, including read-only files a smoke command left."""

    def retry(func: Callable[..., Any], p: str, *_: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)

    if not path.exists():
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)


def _fsync_file(path: Path) -> None:
    """Make a written file durable (fsync works through any descriptor of the file)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise from_oserror(exc, f"writing {path}") from None


def _with_source(entry: FileEntry, source: tuple[int, ...] | None) -> FileEntry:
    return dataclasses.replace(entry, source=source)


def _linked(primary: FileEntry, path: str) -> FileEntry:
    """The entry of a hard link to primary's file found at path: the same content and chunks."""
    return dataclasses.replace(primary, path=path, link=primary.path)


@dataclass(frozen=True)
class _CommitOptions:
    """How one commit behaves beyond what it stores (see Repository.commit)."""

    check_pairs: bool = False
    strict: bool = False
    allow_empty: bool = False
    skip_unreadable: bool = False


def _workers() -> int:
    """Worker threads for hashing, compressing and verifying: one per core, at least two."""
    return max(2, os.cpu_count() or 2)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _hash_file(path: Path) -> ObjectId:
    h = Hasher()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    except OSError as exc:
        raise from_oserror(exc, f"reading {path}") from None
    return h.digest()


def _restore_attrs(path: Path, entry: FileEntry) -> None:
    with contextlib.suppress(OSError):
        os.chmod(path, entry.mode & 0o777)  # never set-id bits a damaged manifest asks for
        os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns))
