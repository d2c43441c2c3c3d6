"""Commit: one consistent snapshot of a data dir into a repository.

scan -> capture (SQLite through its backup API) -> chunk, hash, dedup and compress (pipeline.py)
-> packs, index file -> chunk lists (deltas against the previous version) -> manifest, written
last: the commit point. A file whose stat fingerprint matches the parent snapshot's (or what the
last checkout put in place) is not read (statcache.py); the index, the pack writer and the data
path (numpy) are loaded only for the first file that is. A commit that fails takes back the packs
it wrote and, when it created the repository, the repository (rollback.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import getpass
import os
import socket
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from casnap import (
    capture,
    chunklist,
    consistency,
    dbimage,
    filelists,
    instants,
    repair,
    rollback,
    statcache,
)
from casnap import restored as restored_files
from casnap.backends.base import put_verified
from casnap.chunking import choose_chunker
from casnap.config import iso_time, now_iso
from casnap.constants import SNIFF_BYTES, SOURCE_RETRIES
from casnap.errors import (
    AccessDenied,
    EmptySnapshot,
    InconsistentData,
    InvalidArgument,
    NotADatabase,
    SourceError,
    UnreadableSource,
    from_oserror,
)
from casnap.filelists import store_list
from casnap.ids import Hasher, ObjectId
from casnap.manifest import FileEntry, Snapshot, compress_manifest
from casnap.paths import commit_paths
from casnap.phases import COMMIT_PHASES, Phases
from casnap.progress import ByteProgress, CountingReader, ProgressFn
from casnap.repository import Repository

if TYPE_CHECKING:  # made for the first file read (_storing)
    from concurrent.futures import ThreadPoolExecutor

    from casnap.packwriter import PackWriter


@dataclass(frozen=True)
class CommitOptions:
    """What a commit records and how it behaves (see `commit`)."""

    message: str = ""
    tags: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    check_pairs: bool = True  # FAISS indexes against their sidecars and their own headers
    strict: bool = False
    allow_empty: bool = False
    skip_unreadable: bool = False
    time: str | None = None  # recorded instead of now (an import of an old copy)
    source: str | None = None  # recorded as the data dir instead of the dir read (an import)


@dataclass(frozen=True)
class _Levels:
    """How new chunks are compressed, from the repository config."""

    zstd: int
    floats: int
    frame_target: int
    group_floats: bool

    @classmethod
    def of(cls, config: dict[str, Any]) -> _Levels:
        zstd = int(config["zstd_level"])
        return cls(
            zstd,
            int(config.get("float_level", zstd)),
            int(config.get("frame_target", 0)),
            bool(config.get("group_floats", False)),
        )


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
    # the warnings about files a checkout's smoke checks refuse (said even with -q)
    damage: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # said on stderr unless -q; not problems
    skipped: list[str] = field(default_factory=list)  # left out: could not be read
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase, and "wall"

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _linked(primary: FileEntry, path: str) -> FileEntry:
    """The entry of a hard link to primary's file found at path: the same content and chunks."""
    return dataclasses.replace(primary, path=path, link=primary.path)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def commit(
    repo: Repository,
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
    time: dt.datetime | None = None,
    source: Path | str | None = None,
) -> CommitResult:
    """Snapshot data_dir (or paths inside it) into repo; returns what was stored.

    What a checkout's smoke checks would find wrong with the files (consistency.py: FAISS
    indexes shorter than their header promises, framework stores whose files disagree, sidecars
    stating another ntotal) is listed in the result's warnings (those a checkout refuses in
    `damage` too); with strict they are an error (InconsistentData) and nothing is committed.
    progress gets (bytes done, bytes total). A commit that would store no file where the last
    snapshot of the same paths had some is refused unless allow_empty; with skip_unreadable,
    files and folders that cannot be read for lack of permission are left out (listed in the
    result and the snapshot). time (naive: local time; never in the future) is recorded instead
    of now, and source as the data dir instead of data_dir: a copy kept elsewhere is imported as
    the snapshot it was.
    """
    when = iso_time(time) if time is not None else None
    if when is not None and when > now_iso():
        raise InvalidArgument(f"snapshot time {when} lies in the future")
    for tag in tags:
        if not tag or "," in tag or not tag.isprintable():
            raise InvalidArgument(
                f"tag {tag!r}: a tag is a non-empty name without commas (they join the tags a "
                "filter requires together) or control characters"
            )
    options = CommitOptions(
        message=message,
        tags=tuple(tags),
        excludes=tuple(excludes),
        strict=strict,
        allow_empty=allow_empty,
        skip_unreadable=skip_unreadable,
        time=when,
        source=str(Path(source).resolve()) if source is not None else None,
    )
    committer = Committer(repo, options, progress)
    phases = committer.phases = Phases.begin(repo)  # counts the opening of a fresh repo
    try:
        with repo.lock("commit"):  # its check lists the snapshots and repair notes too
            repo.refresh(only_if_changed=True)
            rollback.require_repository(repo)  # not taken back by a failed first commit
            phases.since("open", phases.start)
            result = committer.run(Path(data_dir), paths)
            repo.created = None  # in use now: never taken back
        result.phases = phases.report(COMMIT_PHASES)
        return result
    except BaseException:
        # without the lock: the packs it wrote and never indexed, the repository it created
        rollback.after_failed_commit(
            repo.backend,
            committer.unindexed,
            repo.created,
            committer.written_index,
            committer.snapshots_before,
        )
        raise


class Committer:
    """One commit run over a repository: the state its steps share. The caller holds the lock
    (`commit` does; checkout's safety snapshot runs under checkout's)."""

    def __init__(
        self, repo: Repository, options: CommitOptions, progress: ProgressFn | None = None
    ) -> None:
        self.repo = repo
        self.phases = Phases()  # where the time goes (phases.py)
        self.opts = options
        self.progress = progress
        self.levels = _Levels.of(repo.config)
        self.unindexed: list[ObjectId] = []  # packs of a failed run, for rollback
        self.written_index: str | None = None  # its index file, when only the manifest failed
        self.snapshots_before: frozenset[str] = frozenset()
        self._read_tick: Callable[[int], None] | None = None  # progress of the file being read
        self.tainted: frozenset[str] = frozenset()  # snapshots repair-index found incomplete
        # made for the first file that must be read (_storing); shut down when the run ends
        self.writer: PackWriter | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._stack = contextlib.ExitStack()

    def run(self, data_dir: Path, paths: Sequence[str]) -> CommitResult:
        """Store data_dir (or paths inside it) and its manifest; the caller holds the lock."""
        opts = self.opts
        excludes = opts.excludes
        t0 = time.perf_counter()
        start_ns = time.time_ns()
        capture.require_data_dir(data_dir)
        data_dir = data_dir.resolve()  # a data dir reached through a symbolic link is stored
        prune = self.repo.nested_in(data_dir)
        self.repo.clean_scratch()
        rel_paths = commit_paths(paths, data_dir)
        for rel in rel_paths:
            if self.repo.holds_path(data_dir / rel):
                raise InvalidArgument(
                    f"{rel} lies inside the repository {self.repo.root}: a repository is never "
                    "stored in itself"
                )
        skipped: list[str] = []
        dirs: dict[str, tuple[int, int, int]] = {}
        unreadable: list[str] = []
        scan = capture.ScanOptions(
            prune=prune,
            prune_ids=self.repo.folder_ids(),
            skipped=skipped,
            dirs=dirs,
            unreadable=unreadable if opts.skip_unreadable else None,
        )
        try:
            sources = capture.scan(data_dir, rel_paths, excludes, options=scan)
        except AccessDenied as exc:
            raise UnreadableSource(str(exc)) from exc
        # FAISS indexes and framework stores, before anything is read or stored
        problems = (
            consistency.consistency_problems(data_dir, [s.path for s in sources])
            if opts.check_pairs
            else []
        )
        pairs = [p.text for p in problems]
        if opts.strict and pairs:
            raise InconsistentData(
                f"{len(pairs)} consistency problem(s), nothing committed: " + "; ".join(pairs)
            )
        source_dir = opts.source or str(data_dir)
        self.snapshots_before = frozenset(sid.hex() for sid, _ in self.repo.snapshots())
        parent_id, parent = statcache.parent(self.repo, source_dir, rel_paths)
        parent_files = {f.path: f for f in parent.files} if parent else {}
        if not sources and parent_files and not opts.allow_empty:
            raise EmptySnapshot(
                f"nothing to store in {data_dir}, while the last snapshot of these paths "
                f"({parent_id.short if parent_id else '?'}) holds {len(parent_files)} file(s); "
                "refusing an empty snapshot"
            )
        result = CommitResult(id="", warnings=pairs + skipped)
        result.damage = [p.text for p in problems if p.refused]
        result.notes = [
            f"{p} lies inside the data dir: the repository is not stored in itself" for p in prune
        ]
        self.tainted = repair.repaired_snapshots(self.repo)  # may name chunks repair dropped
        restored: dict[str, FileEntry] = {}
        if opts.source is None:  # an import's source is no data dir a checkout restored into
            restored = statcache.restored_entries(self.repo, source_dir, self.tainted)
        if parent_id is not None and parent_id.hex() in self.tainted:
            parent_files = {}  # read every file again: what it named may be gone
        entries: list[FileEntry] = []
        links: dict[tuple[int, int], FileEntry] = {}
        sizes = [capture.estimated_size(src) for src in sources]
        bar = ByteProgress(sum(sizes), self.progress)
        self._read_tick = bar.add if self.progress is not None else None
        self.phases.since("scan", t0)
        try:
            with contextlib.ExitStack() as stack:
                stack.callback(setattr, self, "_read_tick", None)
                self._stack = stack.enter_context(contextlib.ExitStack())  # the worker threads
                watched = instants.watch(sources)  # framework stores: read at one instant
                for src, estimate in zip(sources, sizes, strict=True):
                    file_start = bar.done
                    try:
                        st = os.lstat(src.abspath)
                    except FileNotFoundError as exc:
                        raise SourceError(f"{src.abspath} vanished while committing") from exc
                    except OSError as exc:
                        raise from_oserror(exc, f"reading {src.abspath}") from exc
                    key = (st.st_dev, st.st_ino)
                    if st.st_nlink > 1 and key in links:
                        entry = _linked(links[key], src.path)
                        read = 0
                    else:
                        try:
                            entry, read = self._entry(src, start_ns, parent_files, restored)
                        except AccessDenied as exc:
                            if not opts.skip_unreadable:
                                raise UnreadableSource(str(exc)) from exc
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
                again, moving = instants.settle(
                    watched, entries, lambda s: self._entry(s, start_ns, {}, {})
                )
                result.bytes_read += again
                result.warnings += moving
            bar.finish()
            result.files_removed = len(set(parent_files) - {e.path for e in entries})
            added, result.chunks_new, list_bytes, index_bytes = self._finish()
        except BaseException:
            if self.writer is not None:
                self.unindexed = self.writer.abort()
                self.written_index = self.writer.index_key  # when the failure came after it
            raise
        manifest_start = time.perf_counter()
        result.warnings += [f"{p}: not readable, left out of the snapshot" for p in unreadable]
        result.skipped = sorted(unreadable)
        user = _user()
        snap = Snapshot(
            time=opts.time or now_iso(),
            host=socket.gethostname(),
            user=user,
            source=source_dir,
            paths=rel_paths,
            excludes=tuple(excludes),
            message=opts.message,
            tags=tuple(dict.fromkeys(opts.tags)),
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
                "list_bytes": list_bytes,
                "index_bytes": index_bytes,
            },
            dirs=dirs,
            skipped=tuple(result.skipped),
        )
        raw = snap.encode()
        sid = self.repo.ids(raw)
        blob = compress_manifest(raw)
        try:
            put_verified(self.repo.backend, f"snapshots/{sid.hex()}", blob)  # the commit point
        except BaseException:
            if self.writer is not None:
                self.written_index = self.writer.index_key
                self.unindexed = [pack for pack, _size in self.writer.created]
            raise
        self.repo.remember_snapshot(sid, snap)
        if restored:
            restored_files.drop(self.repo.id, source_dir)  # the new snapshot's fingerprints serve
        result.id = sid.hex()
        result.bytes_added = added + len(blob)
        result.logical_bytes = snap.logical_bytes
        self.phases.since("manifest", manifest_start)
        result.seconds = time.perf_counter() - t0
        return result

    def _storing(self) -> tuple[PackWriter, ThreadPoolExecutor]:
        """The pack writer and the worker threads, made when the first file must be read: a
        commit that reuses every entry loads neither the index nor the data path (numpy)."""
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            from casnap import pipeline

            workers = ThreadPoolExecutor(max_workers=pipeline.cpu_workers())
            self._stack.callback(setattr, self, "_pool", None)
            self._pool = self._stack.enter_context(workers)
        if self.writer is None:
            from casnap.packwriter import PackWriter

            self.writer = PackWriter(self.repo.store, phases=self.phases)
        return self.writer, self._pool

    def _finish(self) -> tuple[int, int, int, int]:
        """Write the last pack and the index file: (bytes added, chunks added, bytes of chunk
        lists, bytes of the index file); all 0 when no file was read."""
        if self.writer is None:
            return 0, 0, 0, 0
        from casnap.chunkindex import TREE

        w = self.writer
        added = w.finish()
        return added, w.chunks_added, w.bytes_by_type[TREE], w.index_bytes

    def _entry(
        self,
        src: capture.SourceFile,
        start_ns: int,
        parent_files: dict[str, FileEntry],
        restored: dict[str, FileEntry],
    ) -> tuple[FileEntry, int]:
        """The entry of one source file and the bytes read for it: reused from the parent
        snapshot or from the last checkout when its fingerprint is unchanged, else read.

        A reused entry costs neither a read of the file nor of the index: its chunks are
        present, because gc cannot run while a commit holds its lock (repair-index:
        self.tainted)."""
        old = parent_files.get(src.path)
        known = statcache.reusable(src, old, restored.get(src.path))
        if known is not None:
            return known, 0
        return self._capture(src, start_ns, old)

    def _capture(
        self, src: capture.SourceFile, start_ns: int, old: FileEntry | None
    ) -> tuple[FileEntry, int]:
        """Read one file consistently into the store; returns its entry and bytes read."""
        read_total = 0
        for _attempt in range(max(1, SOURCE_RETRIES)):
            with self.phases.timed("capture"):  # a file written just now is waited for
                before, settled = capture.settled_fingerprint(src.abspath, src.kind)
            if before is None:
                raise SourceError(f"{src.abspath} vanished while committing")
            try:
                st = os.lstat(src.abspath)
                if src.kind == "sqlite":
                    try:
                        image_of = dbimage.open_image(
                            src.abspath,
                            self.repo.tmp_dir,
                            self.repo.notify,
                            unlocked=_attempt < SOURCE_RETRIES - 1,  # at last, through SQLite
                        )
                        with self.phases.entered("capture", image_of) as image:
                            entry, n = self._ingest(src, image, st, old)
                            intact = image.intact()
                        if not intact:  # an idle database read without a lock changed
                            read_total += n
                            continue
                        before = image.opened  # as SQLite's open of it left it: what stays
                    except NotADatabase:
                        # SQLite's header but not a database SQLite can read: keep its bytes
                        src = capture.SourceFile(src.path, src.abspath, "file")
                        continue
                else:
                    entry, n = self._ingest_path(src, src.abspath, st, old)
            except FileNotFoundError as exc:
                raise SourceError(f"{src.abspath} vanished while committing") from exc
            except OSError as exc:
                raise from_oserror(exc, f"reading {src.abspath}") from exc
            read_total += n
            after = capture.fingerprint(src.abspath, src.kind)
            if src.kind == "sqlite" or (after == before and settled):
                # a database image is consistent whatever happened meanwhile (before: once
                # SQLite had it open); the fingerprint is recorded only for a quiet file
                source = statcache.vouched(before, after, start_ns)
                return statcache.with_source(entry, source), read_total
        raise SourceError(f"{src.abspath} kept changing while it was read; commit aborted")

    def _ingest_path(
        self,
        src: capture.SourceFile,
        path: Path,
        st: os.stat_result,
        old: FileEntry | None,
    ) -> tuple[FileEntry, int]:
        # a data-dir file is opened without following a link swapped in since the scan
        with os.fdopen(capture.open_source(path), "rb") as f:
            done = self._ingest(src, f, st, old)
            capture.wait_for_truncate(f.fileno())  # before the stat that vouches for the read
        return done

    def _ingest(
        self,
        src: capture.SourceFile,
        f: BinaryIO | dbimage.Image,
        st: os.stat_result,
        old: FileEntry | None,
    ) -> tuple[FileEntry, int]:
        """Chunk and store the stream f of src (the file, or its database image)."""
        from casnap import ingest as ingesting
        from casnap import pipeline

        writer, pool = self._storing()
        with self.phases.timed("index"):
            self.repo.ensure_index()
        ingest = ingesting.Ingest(
            self.repo.store,
            writer,
            pool,
            pipeline.cpu_workers(),
            level=self.levels.zstd,
            float_level=self.levels.floats,
            frame_target=self.levels.frame_target,
            group_floats=self.levels.group_floats,
            phases=self.phases,
        )
        header = f.read(SNIFF_BYTES)
        f.seek(0)
        layout = capture.record_layout(src.abspath)
        chunker = choose_chunker(header, self.repo.config["chunker"], layout)
        stream = cast(BinaryIO, f)
        if self._read_tick is not None:
            stream = cast(BinaryIO, CountingReader(f, self._read_tick))  # type: ignore[arg-type]
        with self.phases.timed("manifest"):  # the chunk list of the last version, read once
            previous = filelists.previous_lists(self.repo, old)
        done = ingest.run(stream, chunker, previous[0] if previous else None)
        entry = FileEntry(
            path=src.path,
            kind=src.kind,
            size=done.size,
            mode=stat.S_IMODE(st.st_mode),
            mtime_ns=st.st_mtime_ns,
            hash=done.hash.hex(),
            chunker=chunker.describe(),
            lists=self._store_list(done.refs, old, writer, previous),
            chunks=chunklist.ref_count(done.refs),
            uid=st.st_uid,
            gid=st.st_gid,
        )
        return entry, done.size

    def _store_list(
        self,
        refs: bytes,
        old: FileEntry | None,
        writer: PackWriter,
        previous: filelists.Resolved | None,
    ) -> tuple[str, ...]:
        with self.phases.timed("manifest"):  # chunk lists are written with the manifest
            return store_list(self.repo, refs, old, writer, self.levels.zstd, previous)


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
