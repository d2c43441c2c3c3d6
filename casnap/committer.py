"""Commit: one consistent snapshot of a data dir into a repository.

scan -> read (a database's image: dbimage.py) -> chunk, hash, dedup and compress (ingest.py)
-> packs, index file -> chunk lists (deltas against the previous version) -> manifest, written
last: the commit point. A file whose stat fingerprint matches the parent snapshot's (or what the
last checkout put in place) is not read (statcache.py); the index, the pack writer and the data
path (numpy) are loaded only for the first file that is. A commit that fails takes back the packs
it wrote and, when it created the repository, the repository (rollback.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from casnap import (
    capture,
    consistency,
    folderlocks,
    fsutil,
    instants,
    repair,
    rollback,
    selection,
    statcache,
    swapmark,
)
from casnap import restored as restored_files
from casnap.backends.base import put_verified
from casnap.config import now_iso, snapshot_time
from casnap.constants import SAFETY_TAG
from casnap.errors import (
    AccessDenied,
    CasnapError,
    EmptySnapshot,
    InconsistentData,
    IntegrityError,
    InternalError,
    InvalidArgument,
    LockError,
    SourceError,
    Terminated,
    UnreadableSource,
    from_oserror,
    landed,
)
from casnap.ids import ObjectId
from casnap.manifest import MADE_NS, FileEntry, Snapshot, check_file_list, compress_manifest
from casnap.opening import with_way_out
from casnap.paths import commit_paths, exclude_patterns, refuse_excluded_paths
from casnap.phases import COMMIT_PHASES, Phases
from casnap.progress import ByteProgress, ProgressFn
from casnap.reading import Reader, load_data_path
from casnap.repository import Repository

if TYPE_CHECKING:  # made for the first file read (_storing)
    from casnap import smallingest


class CommitOptions(NamedTuple):
    """What a commit records and how it behaves (see `commit`)."""

    message: str = ""
    tags: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    check_pairs: bool = True  # FAISS indexes against their sidecars and their own headers
    strict: bool = False
    allow_empty: bool = False
    skip_unreadable: bool = False
    # read even so: one that cannot be read stops the commit (what a checkout replaces)
    must_read: frozenset[str] = frozenset()
    time: str | None = None  # recorded instead of now (an import of an old copy)
    source: str | None = None  # recorded as the data dir instead of the dir read (an import)
    host: str | None = None  # recorded instead of this machine's name (a container's changes)


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
    # the warnings about checkouts into the data dir killed part way (said even with -q)
    interrupted: list[str] = field(default_factory=list)
    # the warnings about what the scan left out, names no manifest can hold and folders nested
    # too deeply (said even with -q: a nightly `commit -q` lost them in silence)
    left_out: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # said on stderr unless -q; not problems
    skipped: list[str] = field(default_factory=list)  # left out: could not be read
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase, and "wall"

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _lstat(src: capture.SourceFile) -> os.stat_result:
    """A data-dir file's lstat (a scan normally carries it)."""
    try:
        return os.lstat(src.abspath)
    except FileNotFoundError as exc:
        raise SourceError(f"{src.abspath} vanished while committing") from exc
    except OSError as exc:
        raise from_oserror(exc, f"reading {src.abspath}") from exc


def _linked(primary: FileEntry, path: str) -> FileEntry:
    """The entry of a hard link to primary's file found at path: the same content and chunks."""
    return primary._replace(path=path, link=primary.path)


def _same_state(
    links: dict[tuple[int, int], FileEntry],
    key: tuple[int, int],
    src: capture.SourceFile,
    entry: FileEntry,
    inodes: dict[str, tuple[int, int]],
) -> FileEntry:
    """The entry of a name of a file with several (key: its device and inode): the first
    name read is the file, the others links to it. A database is read through each of its
    names, SQLite showing through each what that name's own `-wal` holds: a link only when
    it shows the same state."""
    first = links.get(key)
    if first is None:
        links[key] = entry
    elif src.kind == "sqlite":
        if first.hash != entry.hash:
            return entry  # a state of its own: stored as a file
        entry = _linked(first, src.path)
    inodes[src.path] = key
    return entry


def _relinked(
    entries: list[FileEntry], before: list[FileEntry], inodes: dict[str, tuple[int, int]]
) -> None:
    """entries after some were read again (framework stores that moved, instants.settle),
    before holding them as they were: the names of one file (inodes: device and inode of the
    paths with more than one) all take what was read last of it, the first name as the file,
    the others as links to it."""
    names: dict[tuple[int, int], list[int]] = {}
    for i, e in enumerate(entries):
        if (key := inodes.get(e.path)) is not None:
            names.setdefault(key, []).append(i)
    for at in names.values():
        again = [i for i in at if entries[i] is not before[i]]
        if len(at) < 2 or not again:
            continue
        first = entries[again[-1]]._replace(path=entries[at[0]].path, link=None)
        entries[at[0]] = first
        for i in at[1:]:
            entries[i] = _linked(first, entries[i].path)


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
    host: str | None = None,
) -> CommitResult:
    """Snapshot data_dir (or paths inside it) into repo; returns what was stored.

    What a checkout's smoke checks would find wrong with the files (consistency.py: FAISS
    indexes shorter than their header promises, framework stores whose files disagree, sidecars
    stating another ntotal; and, found as they are read, databases cut short) is listed in the
    result's warnings (those a checkout refuses in `damage` too); with strict they are an error
    (InconsistentData) and nothing is committed.
    progress gets (bytes done, bytes total). A commit that would store no file where the last
    snapshot of the same paths had some is refused unless allow_empty; with skip_unreadable,
    files and folders that cannot be read for lack of permission, or whose path is longer than
    the system's limit (else PathTooLong), are left out (listed in the result and the
    snapshot). time (naive: local time; never before 1970 or in the future) is recorded
    instead of now, and source as the data dir instead of data_dir: a copy kept
    elsewhere is imported as the snapshot it was; host instead of this machine's name (its
    snapshots then group, and find their parent, under host).
    """
    try:  # before anything is stored: a repository made for this commit is taken back
        when = snapshot_time(time) if time is not None else None
        for tag in tags:
            selection.check_tag(tag)
        if host is not None and (not host or not host.isprintable() or host != host.strip()):
            raise InvalidArgument(
                f"--host {host!r} is not a host name: give a non-empty name without control "
                "characters or surrounding spaces"
            )
    except BaseException:
        rollback.take_back(repo)
        raise
    options = CommitOptions(
        message=message,
        tags=tuple(tags),
        excludes=tuple(excludes),
        strict=strict,
        allow_empty=allow_empty,
        skip_unreadable=skip_unreadable,
        time=when,
        source=str(fsutil.resolved(source, "source")) if source is not None else None,
        host=host,
    )
    committer = Committer(repo, options, progress)
    phases = committer.phases = Phases.begin(repo)  # counts the opening of a fresh repo
    result: CommitResult | None = None
    try:
        # its check lists the snapshots and repair notes too; waits for a checkout of data_dir
        # made through this repository, and the folder's flock for one from any other
        with repo.lock("commit", folder=Path(data_dir)):
            repo.refresh(only_if_changed=True)
            rollback.require_repository(repo)  # not taken back by a failed first commit
            phases.since("open", phases.start)
            with folderlocks.data_dir_lock(Path(data_dir), data_dir, repo.notify):
                result = committer.run(Path(data_dir), paths)
            repo.created = None  # in use now: never taken back
        result.phases = phases.report(COMMIT_PHASES)
        return result
    except BaseException as exc:
        if isinstance(exc, Terminated | KeyboardInterrupt) and committer.landed is not None:
            landed(exc, committer.landed)  # its snapshot stands: the command line names it
            raise
        lost: LockError | None = None
        if isinstance(exc, LockError) and result is not None:
            # its lock was taken away while it ran: a gc may have deleted data the snapshot
            # names, which the next commit would take by fingerprint (and its chunks by the
            # index file it wrote, which the rollback below takes back): it keeps no snapshot
            with contextlib.suppress(CasnapError):
                repo.backend.delete(f"snapshots/{result.id}")
            lost = LockError(f"{exc}; its snapshot {result.id[:8]} was removed: commit again")
            committer.written_index, committer.unindexed = committer.stored
        # without the lock: the packs it wrote and never indexed, the repository it created
        rollback.after_failed_commit(
            repo.backend,
            committer.unindexed,
            repo.created,
            committer.written_index,
            committer.snapshots_before,
        )
        if lost is not None:
            raise lost from exc
        raise


def _readable(snap: Snapshot) -> None:
    """Refuse a snapshot whose manifest casnap could not read back: stored, it would stop
    every command that reads it, the next commit of its data dir first. A value no reader
    takes comes from the data dir (a folder's name, a file's time); a file list no reader
    takes (a path twice, a link to a file it lacks) is a fault of casnap's own."""
    try:
        snap.check_fields()
    except IntegrityError as exc:
        raise SourceError(
            f"nothing committed: casnap could not read this snapshot back ({exc})"
        ) from exc
    try:
        check_file_list(snap.files, snap.totals, ids=False)  # the rest of Snapshot.check
    except IntegrityError as exc:
        raise InternalError(
            f"internal error, nothing committed: casnap made a manifest it would refuse ({exc}); "
            "please report it"
        ) from exc


def _inconsistent(problems: list[str], shown: int = 5) -> InconsistentData:
    """The error of a --strict commit that found problems: nothing is committed. One line: the
    first `shown` problems, and how many more."""
    more = f"; and {len(problems) - shown} more" if len(problems) > shown else ""
    return InconsistentData(
        f"{len(problems)} consistency problem(s), nothing committed: "
        + "; ".join(problems[:shown])
        + more
    )


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
        self.unindexed: list[ObjectId] = []  # packs of a failed run, for rollback
        self.written_index: str | None = None  # its index file, when only the manifest failed
        self.stored: tuple[str | None, list[ObjectId]] = (None, [])  # index file, packs made
        self.landed: CommitResult | None = None  # once its manifest is stored
        self.snapshots_before: frozenset[str] = frozenset()
        self.tainted: frozenset[str] = frozenset()  # snapshots repair-index found incomplete
        # what reading the files needs, made for the first one read (reading.py)
        self.reader = Reader(repo, self.phases, 0, options.skip_unreadable, options.must_read)

    def run(self, data_dir: Path, paths: Sequence[str]) -> CommitResult:
        """Store data_dir (or paths inside it) and its manifest; the caller holds the lock."""
        opts = self.opts
        excludes = opts.excludes
        t0 = time.perf_counter()
        self.reader.start_ns = time.time_ns()
        self.reader.phases = self.phases  # the caller may have given the commit its own
        capture.require_data_dir(data_dir)
        data_dir = data_dir.resolve()  # a data dir reached through a symbolic link is stored
        mixed = swapmark.interrupted(data_dir)  # a checkout killed as it put files in place
        prune = self.repo.nested_in(data_dir)
        self.repo.clean_scratch()
        rel_paths = commit_paths(paths, data_dir)
        excludes = exclude_patterns(opts.excludes, data_dir)
        refuse_excluded_paths(opts.excludes, excludes, rel_paths, data_dir)
        for rel in rel_paths:
            if self.repo.holds_path(data_dir / rel):
                raise InvalidArgument(
                    f"{rel} lies inside the repository {self.repo.root}: a repository is never "
                    "stored in itself"
                )
        source_dir = opts.source or str(data_dir)
        listed = [sid for sid, _ in self.repo.snapshots()] + list(self.repo.damaged)
        self.snapshots_before = frozenset(sid.hex() for sid in listed)
        host = opts.host or fsutil.hostname()
        parent_id, parent = statcache.parent(self.repo, host, source_dir, rel_paths)
        try:
            parent_files = {f.path: f for f in parent.files} if parent else {}
        except IntegrityError as exc:
            short = parent_id.short if parent_id else "?"
            raise with_way_out(exc, short, "the parent of this commit") from exc
        self.tainted = repair.repaired_snapshots(self.repo)  # may name chunks repair dropped
        restored: dict[str, FileEntry] = {}
        if opts.source is None:  # an import's source is no data dir a checkout restored into
            restored = statcache.restored_entries(self.repo, source_dir, self.tainted)
        known = {} if parent_id is not None and parent_id.hex() in self.tainted else parent_files
        if not known and not restored:
            # nothing to reuse: every file will be read, so the data path loads during the scan
            threading.Thread(target=load_data_path, name="casnap-load", daemon=True).start()
        skipped: list[str] = []
        left_out: list[str] = []
        dirs: dict[str, tuple[int, int, int]] = {}
        unreadable: list[str] = []
        others: list[str] = []  # folders holding another casnap repository
        scan = capture.ScanOptions(
            prune=prune,
            prune_ids=self.repo.folder_ids(),
            skipped=skipped,
            left_out=left_out,
            dirs=dirs,
            unreadable=unreadable if opts.skip_unreadable else None,
            repositories=others,
            kind_of=statcache.kind_of(known, restored),  # unchanged files are not opened
        )
        try:
            sources = capture.scan(data_dir, rel_paths, excludes, options=scan)
        except AccessDenied as exc:
            raise UnreadableSource(str(exc)) from exc
        self.reader.scanned = frozenset(s.path for s in sources)
        reuse = statcache.reused(sources, known, restored)
        watched = instants.watch(sources)  # framework stores: checked and read at one instant
        # FAISS indexes and framework stores, before anything is read or stored
        problems = (
            consistency.consistency_problems(
                data_dir,
                [s.path for s in sources],
                statcache.heads(sources, reuse, self.repo.config["chunker"]),
                rel_paths,
            )
            if opts.check_pairs
            else []
        )
        pairs = [p.text for p in problems]
        if opts.strict and pairs:
            raise _inconsistent(pairs)
        empty = EmptySnapshot(
            f"nothing to store in {data_dir}, while the last snapshot of these paths "
            f"({parent_id.short if parent_id else '?'}) holds {len(parent_files)} file(s); "
            "refusing an empty snapshot"
        )
        if not sources and parent_files and not opts.allow_empty:
            raise empty
        result = CommitResult(id="", warnings=pairs + skipped, left_out=left_out)
        result.damage = [p.text for p in problems if p.refused]
        result.notes = [
            f"{p} lies inside the data dir: the repository is not stored in itself" for p in prune
        ] + [
            f"{data_dir / rel} holds another casnap repository: not stored (a checkout leaves it "
            "alone)"
            for rel in others
        ]
        slots: list[FileEntry | None] = []
        links: dict[tuple[int, int], FileEntry] = {}
        inodes: dict[str, tuple[int, int]] = {}  # of the paths with other names
        sizes = [capture.estimated_size(src) for src in sources]
        bar = ByteProgress(sum(sizes), self.progress)
        reader = self.reader
        reader.read_tick = bar.add if self.progress is not None else None
        self.phases.since("scan", t0)

        def place(i: int, src: capture.SourceFile, entry: FileEntry | None, read: int) -> None:
            """The entry of sources[i] (None: left out, unreadable); counted."""
            slots[i] = entry
            if entry is None:
                return
            old = known.get(src.path)
            result.bytes_read += read
            if old is None:
                result.files_new += 1
            elif old.hash == entry.hash:
                result.files_unchanged += 1
            else:
                result.files_changed += 1

        def stored(done: list[smallingest.Stored]) -> None:
            """Entries of small files a batch stored; those it could not read are read now."""
            for waiting, entry, read in done:
                if entry is None:
                    entry, read = reader.read_one(waiting.src, waiting.old, unreadable)
                place(waiting.slot, waiting.src, entry, read)
                bar.add(sizes[waiting.slot])

        try:
            with contextlib.ExitStack() as stack:
                stack.callback(setattr, reader, "read_tick", None)
                reader.stack = stack.enter_context(contextlib.ExitStack())  # the worker threads
                for i, (src, estimate) in enumerate(zip(sources, sizes, strict=True)):
                    slots.append(None)
                    st = src.stat or _lstat(src)
                    key = (st.st_dev, st.st_ino)
                    entry = reuse.get(src.path)
                    read = 0
                    if st.st_nlink > 1 and key in links and src.kind != "sqlite":
                        entry = _linked(links[key], src.path)
                    elif entry is None and reader.batch(i, src, known.get(src.path), stored):
                        continue
                    elif entry is None:
                        file_start = bar.done
                        entry, read = reader.read_one(src, known.get(src.path), unreadable)
                        bar.advance_to(file_start + estimate)
                    if entry is not None and st.st_nlink > 1:
                        entry = _same_state(links, key, src, entry, inodes)
                    place(i, src, entry, read)
                    if not read:
                        bar.add(estimate)
                if reader.small is not None:
                    stored(reader.small.finish())
                sides = reader.sides_of_unopened()  # the -wal of a database stored as bytes
                for src in sides:
                    slots.append(None)
                    entry, read = reader.read_one(src, known.get(src.path), unreadable)
                    place(len(slots) - 1, src, entry, read)
                entries = [e for e in slots if e is not None]
                if sides:
                    entries.sort(key=lambda e: e.path)
                gone = frozenset(reader.vanished)  # as if the scan had not seen them
                if gone:
                    if not entries and parent_files and not opts.allow_empty:
                        raise empty
                    instants.forget(watched, gone)
                    problems = consistency.without(data_dir, problems, gone)
                    result.warnings = [p.text for p in problems] + skipped
                    result.damage = [p.text for p in problems if p.refused]
                before = list(entries) if watched else entries
                again, moving, judged = instants.settle(
                    watched,
                    entries,
                    lambda s: reader.entry(s, {}, {}),
                    partial(consistency.consistency_problems, data_dir, scope=rel_paths)
                    if opts.check_pairs
                    else None,
                )
                result.bytes_read += again
                if watched:  # a file read again: its other names are the same file
                    _relinked(entries, before, inodes)
                if judged:  # stores that moved: checked before the read is not what was stored
                    problems = consistency.rejudged(problems, judged)
                    result.warnings = [p.text for p in problems] + skipped
                    result.damage = [p.text for p in problems if p.refused]
                    if opts.strict and problems:  # any found before the read was refused then
                        raise _inconsistent([p.text for p in problems])
                if opts.strict and moving:  # unchecked: what it holds could not be judged
                    raise _inconsistent(moving)
                result.warnings += moving
                result.damage += moving
                cut = [reader.damaged[p] for p in sorted(reader.damaged)]  # found as read
                lost = [
                    capture.vanished(p, opts.strict, reader.renamed.get(p)) for p in sorted(gone)
                ]
                if opts.strict and (cut or lost):
                    raise _inconsistent(cut + lost)
                result.warnings += cut + lost
                result.warnings += [reader.unopened[p] for p in sorted(reader.unopened)]
                result.damage += cut
                reader.complete(entries)
            bar.finish()
            result.files_removed = len(set(known) - {e.path for e in entries})
            added, result.chunks_new, list_bytes, index_bytes = reader.finish()
        except BaseException:
            if reader.small is not None:
                reader.small.cancel()
            if reader.writer is not None:
                self.unindexed = reader.writer.abort()
                self.written_index = reader.writer.index_key  # when the failure came after it
            raise
        manifest_start = time.perf_counter()
        result.warnings += [capture.left_out(data_dir, p) for p in unreadable] + mixed
        result.interrupted = mixed
        result.skipped = sorted(unreadable)
        user = _user()
        snap = Snapshot(
            time=opts.time or now_iso(),
            host=host,
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
                # when it was made, whatever time it records (--time): orders snapshots of one
                # time (manifest.chronological)
                MADE_NS: time.time_ns(),
            },
            dirs=dirs,
            skipped=tuple(result.skipped),
            totals=(len(entries), sum(e.size for e in entries)),
        )
        try:
            _readable(snap)
            raw = snap.encode()
            sid = self.repo.ids(raw)
            blob = compress_manifest(raw)
            put_verified(self.repo.backend, f"snapshots/{sid.hex()}", blob)  # the commit point
            result.id = sid.hex()
            self.landed = result
        except BaseException:
            if reader.writer is not None:
                self.written_index = reader.writer.index_key
                self.unindexed = [pack for pack, _size in reader.writer.created]
            raise
        self.repo.remember_snapshot(sid, snap)
        if reader.writer is not None:  # taken back if the lock turns out lost (commit)
            self.stored = (reader.writer.index_key, [p for p, _size in reader.writer.created])
        if opts.source is None and SAFETY_TAG not in opts.tags:  # a data dir committed from
            with contextlib.suppress(OSError):
                here = os.stat(data_dir)
                ident = (here.st_dev, here.st_ino)
                restored_files.committed(self.repo.id, source_dir, ident, bool(restored))
        elif restored:
            restored_files.drop(self.repo.id, source_dir)  # the new snapshot's fingerprints serve
        result.bytes_added = added + len(blob)
        result.logical_bytes = snap.logical_bytes
        self.phases.since("manifest", manifest_start)
        result.seconds = time.perf_counter() - t0
        return result
