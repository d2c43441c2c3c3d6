"""How a commit reads the data dir's files into the store.

Nothing is made before the first file that must be read: a commit that reuses every entry
(statcache.py) loads neither the index nor the data path (numpy). Then come the pack writer and
the worker threads (pipeline.py), shared by every file of the commit. Small plain files are read
in batches (smallingest.py); any other file on its own, consistently: a plain file waited for
when it was written just now and read again when it changed meanwhile, a database through an
image SQLite's backup API makes (capture.py).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
from collections.abc import Callable
from glob import escape as glob_escape
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple, cast

from casnap import capture, chunklist, dbimage, filelists, groups, statcache
from casnap.chunking import Chunker, choose_chunker
from casnap.chunking.base import FixedChunker
from casnap.constants import SNIFF_BYTES, SOURCE_RETRIES
from casnap.errors import (
    AccessDenied,
    FileVanished,
    NotADatabase,
    SourceError,
    UnreadableSource,
    from_oserror,
)
from casnap.fingerprints import NotRegularFile
from casnap.formats.sqlite import check_side_files, check_side_files_readable
from casnap.manifest import FileEntry
from casnap.phases import Phases
from casnap.progress import CountingReader
from casnap.repository import Repository

if TYPE_CHECKING:  # made for the first file read (storing)
    from concurrent.futures import Future, ThreadPoolExecutor

    from casnap import smallingest
    from casnap.ingest import Grouping, Ingest
    from casnap.packwriter import PackWriter


# What an entry's lists hold while its chunk list is being made (Reader.complete): never an id.
_PENDING = "pending:"


class Levels(NamedTuple):
    """How new chunks are compressed, from the repository config."""

    zstd: int
    floats: int
    frame_target: int
    group_floats: bool

    @classmethod
    def of(cls, config: dict[str, Any]) -> Levels:
        zstd = int(config["zstd_level"])
        return cls(
            zstd,
            int(config.get("float_level", zstd)),
            int(config.get("frame_target", 0)),
            bool(config.get("group_floats", False)),
        )


def load_data_path() -> None:
    """Import what reading files needs (numpy, the chunkers, the pack writer): a commit that
    will read every file (it has no parent) runs this beside its scan. A failure is left to
    the import that needs the module, where it is reported."""
    with contextlib.suppress(Exception):
        from casnap import pipeline, smallingest  # noqa: F401


class Reader:
    """The files one commit reads into its repository (the caller holds the lock), and what
    reading them needs, made on first use and shut down with `stack`."""

    def __init__(
        self,
        repo: Repository,
        phases: Phases,
        start_ns: int,
        skip_unreadable: bool,
        must_read: frozenset[str] = frozenset(),
    ) -> None:
        self.repo = repo
        self.phases = phases
        self.levels = Levels.of(repo.config)
        self.start_ns = start_ns  # when the commit began (racy fingerprints are not recorded)
        self.skip_unreadable = skip_unreadable
        self.must_read = must_read  # paths never left out, whatever skip_unreadable says
        self.read_tick: Callable[[int], None] | None = None  # progress of the file being read
        self.writer: PackWriter | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.stack = contextlib.ExitStack()  # the worker threads, once made
        self.small: smallingest.SmallFiles | None = None  # small files read in batches
        self._single: Ingest | None = None  # the data path of files read on their own
        self._indexed = False  # the index loaded and its packs found present
        self._hashing: ThreadPoolExecutor | None = None  # their whole-file hashes
        # the page groups of the file being read: (its hash, piece size, records, parent's hash)
        self._groups: tuple[str, int, bytes, str | None] | None = None
        # chunk lists being made on their own thread, by the mark an entry names until `complete`
        self._lists: dict[str, Future[filelists.Planned]] = {}
        self._listing: ThreadPoolExecutor | None = None
        # databases read cut short, by path: "<path>: why" (a checkout's smoke checks refuse them)
        self.damaged: dict[str, str] = {}
        # files with SQLite's header SQLite cannot open, stored as bytes, by path: "<path>: why"
        self.unopened: dict[str, str] = {}
        self._unopened_full: dict[str, str] = {}  # their absolute paths
        self.vanished: list[str] = []  # plain files deleted before they were read: left out
        self.renamed: dict[str, str] = {}  # of those, databases renamed over another: new name
        self.scanned: frozenset[str] = frozenset()  # every path the scan found

    def storing(self) -> tuple[PackWriter, ThreadPoolExecutor]:
        """The pack writer and the worker threads, made when the first file must be read: a
        commit that reuses every entry loads neither the index nor the data path (numpy)."""
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            from casnap import pipeline

            workers = ThreadPoolExecutor(max_workers=pipeline.cpu_workers())
            self.stack.callback(setattr, self, "_pool", None)
            self._pool = self.stack.enter_context(workers)
            self._hashing = self.stack.enter_context(ThreadPoolExecutor(max_workers=1))
        if self.writer is None:
            from casnap.packwriter import PackWriter

            self.writer = PackWriter(self.repo.store, phases=self.phases)
        return self.writer, self._pool

    def finish(self) -> tuple[int, int, int, int]:
        """Write the last pack and the index file: (bytes added, chunks added, bytes of chunk
        lists, bytes of the index file); all 0 when no file was read."""
        if self.writer is None:
            return 0, 0, 0, 0
        from casnap.chunkindex import TREE

        w = self.writer
        added = w.finish()
        return added, w.chunks_added, w.bytes_by_type[TREE], w.index_bytes

    def batch(
        self,
        i: int,
        src: capture.SourceFile,
        old: FileEntry | None,
        stored: Callable[[list[smallingest.Stored]], None],
    ) -> bool:
        """Queue sources[i] for a batch of small files when it is one (smallingest.py); stored
        hears of the files of batches done meanwhile. False: read it on its own."""
        from casnap import smallingest  # here: a file must be read, numpy is needed anyway

        if not smallingest.batchable(src):
            return False
        stored(self._small_files().add(smallingest.Waiting(i, src, old)))
        return True

    def _index(self) -> None:
        """Load the index for the first file read, and check the packs it names are there."""
        if not self._indexed:
            with self.phases.timed("index"):
                self.repo.ensure_index()
                self.repo.store.require_packs()
            self._indexed = True

    def _small_files(self) -> smallingest.SmallFiles:
        """The batches of small files, made for the first one (with the pack writer)."""
        from casnap import smallingest

        if self.small is None:
            writer, pool = self.storing()
            self._index()
            self.small = smallingest.SmallFiles(
                self.repo, self._ingester(writer, pool), writer, pool, self.levels.zstd,
                self.start_ns, self.phases,
            )  # fmt: skip
        return self.small

    def read_one(
        self, src: capture.SourceFile, old: FileEntry | None, unreadable: list[str]
    ) -> tuple[FileEntry | None, int]:
        """One file read on its own (read_file); None for one that may not be read when the
        commit leaves such files out (it goes to unreadable) and it need not be read, and for a
        plain file deleted before it was read (to `vanished`: as if the scan had not seen it)."""
        try:
            return self.read_file(src, old)
        except FileVanished:
            self.vanished.append(src.path)
            return None, 0
        except AccessDenied as exc:
            if not self.skip_unreadable or src.path in self.must_read:
                raise UnreadableSource(str(exc)) from exc
            unreadable.append(src.path)
            return None, 0

    def entry(
        self,
        src: capture.SourceFile,
        parent_files: dict[str, FileEntry],
        restored: dict[str, FileEntry],
    ) -> tuple[FileEntry, int]:
        """The entry of one source file and the bytes read for it: reused from the parent
        snapshot or from the last checkout when its fingerprint is unchanged, else read.

        A reused entry costs neither a read of the file nor of the index: its chunks are
        present, because gc cannot run while a commit holds its lock (repair-index: the caller
        leaves out the entries of snapshots it left incomplete)."""
        old = parent_files.get(src.path)
        known = statcache.reusable(src, old, restored.get(src.path))
        if known is not None:
            return known, 0
        return self.read_file(src, old)

    def read_file(self, src: capture.SourceFile, old: FileEntry | None) -> tuple[FileEntry, int]:
        """Read one file consistently into the store; returns its entry and bytes read.
        FileVanished when a plain file is gone (deleted before its read, or while it was read:
        the read through its descriptor is then not checked and does not count); a database
        gone is a SourceError."""
        read_total = 0
        for _attempt in range(max(1, SOURCE_RETRIES)):
            self._groups = None  # an attempt that does not count keeps none and drops none
            with self.phases.timed("capture"):  # a file written just now is waited for
                before, settled = capture.settled_fingerprint(src.abspath, src.kind)
            if before is None:
                gone = FileVanished if src.kind == "file" else self._gone_database(src)
                raise gone(f"{src.abspath} vanished while committing")
            try:
                st = os.lstat(src.abspath)
                if src.kind == "sqlite":
                    check_side_files(src.abspath)  # before SQLite opens it
                    check_side_files_readable(src.abspath)
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
                        if image.damage is not None:  # stored as it is, never vouched for
                            self.damaged[src.path] = f"{src.path}: {image.damage}"
                        else:
                            self.damaged.pop(src.path, None)
                    except NotADatabase as exc:
                        # SQLite's header but not a database SQLite can read: keep its bytes
                        why = str(exc.__cause__ or exc)  # SQLite's own words
                        self.unopened[src.path] = (
                            f"{src.path}: SQLite's header, but SQLite cannot open it ({why}): "
                            "stored as plain bytes, unchecked"
                        )
                        src = capture.SourceFile(src.path, src.full, "file")
                        self._unopened_full[src.path] = src.full
                        continue
                else:
                    entry, n = self._ingest_path(src, src.abspath, st, old)
            except FileNotFoundError as exc:
                if src.kind == "file":  # gone, or made again: the next attempt tells
                    continue
                gone = self._gone_database(src)
                raise gone(f"{src.abspath} vanished while committing") from exc
            except NotRegularFile as exc:
                why = f"{src.abspath} was replaced while committing ({exc.strerror})"
                raise SourceError(why) from exc
            except OSError as exc:
                raise from_oserror(exc, f"reading {src.abspath}") from exc
            read_total += n
            after = capture.fingerprint(src.abspath, src.kind)
            if src.kind == "sqlite" or (after == before and settled):
                # a database image is consistent whatever happened meanwhile (before: once
                # SQLite had it open); the fingerprint is recorded only for a quiet file
                source = statcache.vouched(before, after, self.start_ns)
                self._keep_groups()
                return statcache.with_source(entry, source), read_total
        if src.kind == "file" and capture.fingerprint(src.abspath, "file") is None:
            raise FileVanished(f"{src.abspath} vanished while committing")  # at the last try
        glob = shlex.quote(glob_escape(src.path))  # a name's * ? [ matched as themselves
        raise SourceError(
            f"{src.abspath} kept changing while it was read ({SOURCE_RETRIES} tries): nothing "
            f"committed; stop what writes it, or leave it out with --exclude {glob}"
        )

    def sides_of_unopened(self) -> list[capture.SourceFile]:
        """The -wal and -journal of the files stored as bytes though their header says SQLite
        (unopened): a scan leaves them out beside a database, yet they may hold its last
        transactions. Read as plain files too, the files are kept as they lie."""
        found = []
        for rel in sorted(self._unopened_full):
            full = self._unopened_full[rel]
            for suffix in ("-wal", "-journal"):
                try:
                    st = os.lstat(full + suffix)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and rel + suffix not in self.scanned:
                    found.append(capture.SourceFile(rel + suffix, full + suffix, "file", st))
                    self.unopened[rel] += f", with its {suffix}"
        return found

    def _gone_database(self, src: capture.SourceFile) -> type[SourceError]:
        """What a database gone since the scan is: renamed over another file the commit reads
        (an app saving by rename: its bytes are stored under that name), FileVanished, noted in
        renamed; else SourceError (a snapshot of an app without its database)."""
        if src.stat is None:
            return SourceError
        inode = (src.stat.st_dev, src.stat.st_ino)
        folder, _, _name = src.path.rpartition("/")
        with contextlib.suppress(OSError):
            with os.scandir(src.abspath.parent) as entries:
                for e in entries:
                    rel = f"{folder}/{e.name}" if folder else e.name
                    st = e.stat(follow_symlinks=False)
                    if (st.st_dev, st.st_ino) == inode and rel in self.scanned:
                        self.renamed[src.path] = rel
                        return FileVanished
        # renamed into another folder (an app staging its save in a folder of its own): each
        # path the scan found is asked, once, as a database is seldom gone
        root = src.full[: len(src.full) - len(src.path)]
        for rel in sorted(self.scanned):
            with contextlib.suppress(OSError):
                st = os.lstat(root + rel)
                if rel != src.path and (st.st_dev, st.st_ino) == inode:
                    self.renamed[src.path] = rel
                    return FileVanished
        return SourceError

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
        writer, pool = self.storing()
        self._index()
        if self._single is None:  # one for every file: its read buffers serve them all
            self._single = self._ingester(writer, pool, self._hashing)
        ingest = self._single
        header = f.read(SNIFF_BYTES)
        f.seek(0)
        layout = capture.record_layout(src.abspath)
        chunker = choose_chunker(header, self.repo.config["chunker"], layout)
        stream = cast(BinaryIO, f)
        if self.read_tick is not None:
            stream = cast(BinaryIO, CountingReader(f, self.read_tick))  # type: ignore[arg-type]
        with self.phases.timed("manifest"):  # the chunk list of the last version, read once
            previous = filelists.previous_lists(self.repo, old)
        grouping = self._grouping(chunker, old if previous else None)
        done = ingest.run(stream, chunker, previous[0] if previous else None, grouping)
        if grouping is not None and done.groups is not None:  # kept once the read counts
            replaced = old.hash if old is not None else None
            self._groups = (done.hash.hex(), grouping.piece, done.groups, replaced)
        # its chunk list is made while the next file is read, and queued by `complete`
        lists = self._plan_list(done.refs, old, previous)
        entry = FileEntry(
            path=src.path,
            kind=src.kind,
            size=done.size,
            mode=stat.S_IMODE(st.st_mode),
            mtime_ns=st.st_mtime_ns,
            hash=done.hash.hex(),
            chunker=chunker.describe(),
            lists=lists,
            chunks=chunklist.ref_count(done.refs),
            uid=st.st_uid,
            gid=st.st_gid,
        )
        return entry, done.size

    def _plan_list(
        self, refs: bytes, old: FileEntry | None, previous: filelists.Resolved | None
    ) -> tuple[str, ...]:
        """The mark an entry names until `complete` replaces it with the ids of its chunk list,
        made on a thread of its own (a delta of a large database's list costs ~10 ms that the
        reading thread spends on the next file instead)."""
        if self._listing is None:
            from concurrent.futures import ThreadPoolExecutor

            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="casnap-lists")
            self._listing = self.stack.enter_context(executor)
            self.stack.callback(setattr, self, "_listing", None)
        mark = f"{_PENDING}{len(self._lists)}"
        level = self.levels.zstd
        self._lists[mark] = self._listing.submit(
            filelists.plan_list, self.repo, refs, old, level, previous
        )
        return (mark,)

    def complete(self, entries: list[FileEntry]) -> None:
        """Queue the chunk lists of entries read on their own, in the order they were read, and
        put their ids in the entries (in place). A list made for a read that did not count (read
        again) is never stored."""
        if not self._lists:
            return
        named = {e.lists[0] for e in entries if len(e.lists) == 1}
        ids: dict[str, tuple[str, ...]] = {}
        with self.phases.timed("manifest"):
            for mark, job in self._lists.items():
                planned = job.result()  # waits for every job: none outlives the commit
                if mark in named and self.writer is not None:
                    ids[mark] = filelists.put_planned(self.repo, self.writer, planned)
        self._lists.clear()
        for i, e in enumerate(entries):
            if len(e.lists) == 1 and e.lists[0].startswith(_PENDING):
                entries[i] = e._replace(lists=ids[e.lists[0]])

    def _keep_groups(self) -> None:
        """Keep the page groups of the read that counted (groups.py), dropping its parent's."""
        if self._groups is not None:
            file_hash, piece, records, replaced = self._groups
            digest = self.repo.store.ids.digest
            groups.keep(self.repo.id, file_hash, piece, records, replaced, digest)
            self._groups = None

    def _grouping(self, chunker: Chunker, old: FileEntry | None) -> Grouping | None:
        """How a file of fixed-size pieces (a database's pages) is hashed a group at a time, with
        the groups kept for its last stored version (old) when there are; None for other
        chunkers (groups.py)."""
        from casnap.ingest import Grouping

        if not isinstance(chunker, FixedChunker):
            return None
        if old is None:
            return Grouping(chunker.size, None)
        kept = groups.read(self.repo.id, old.hash, chunker.size, self.repo.store.ids.digest)
        return Grouping(chunker.size, kept)

    def _ingester(
        self,
        writer: PackWriter,
        pool: ThreadPoolExecutor,
        hashing: ThreadPoolExecutor | None = None,
    ) -> Ingest:
        """The data path (ingest.py) over the commit's writer and worker threads (and hashing,
        the thread feeding whole-file hashes, for the files read on their own)."""
        from casnap import pipeline  # here: numpy, which a commit reading no file never loads
        from casnap.ingest import Ingest

        return Ingest(
            self.repo.store,
            writer,
            pool,
            pipeline.cpu_workers(),
            level=self.levels.zstd,
            float_level=self.levels.floats,
            frame_target=self.levels.frame_target,
            group_floats=self.levels.group_floats,
            phases=self.phases,
            hashing=hashing,
        )
