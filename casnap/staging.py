"""Staging: restore snapshot files into a private dir, every hash verified, checks starting as each
file lands. Checkout stages beside its target and then swaps the files in; `verify --smoke`
stages into the repository's scratch space, checks, and deletes it. Both use `Stage` and
`stage_files`, and run a smoke command on a disposable copy of the stage (`run_smoke_cmd`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, cast

from casnap import capture, fsutil, pipeline, smallstage, smoke
from casnap.checker import SmokeVerifyResult
from casnap.chunklist import REF
from casnap.durable import Durable
from casnap.errors import (
    CasnapError,
    CheckFailed,
    IntegrityError,
    InvalidArgument,
    SmokeCheckFailed,
    from_oserror,
)
from casnap.fsdir import Dir, Tree, remove_tree
from casnap.ids import IdHasher
from casnap.manifest import FileEntry
from casnap.phases import Phases
from casnap.progress import ByteProgress, ProgressFn
from casnap.repository import Repository
from casnap.smoke_cmd import run_command
from casnap.smoke_report import SmokeReport
from casnap.writeout import write_files

Fingerprint = tuple[int, ...] | None


class Stage:
    """A private staging dir (0700) made in `parent`, reached through its descriptor: `path`
    goes through /proc, so moving the folder or swapping its parent cannot redirect a write.
    Staging dirs that killed runs left in parent (and in `also_clean`) are removed first."""

    def __init__(self, parent: Path, also_clean: Path | None = None) -> None:
        self.parent_path = parent
        self.parent = Dir.open(parent)
        try:
            fsutil.remove_stale_stages_in(self.parent)
            if also_clean is not None and also_clean != parent:
                fsutil.remove_stale_stages(also_clean)
            self.name = fsutil.stage_name(uuid.uuid4().hex[:12])
            try:
                os.mkdir(self.name, 0o700, dir_fd=self.parent.fd)
            except OSError as exc:
                raise from_oserror(exc, f"creating {parent / self.name}") from exc
            made = self.parent.sub(self.name)
            if made is None:
                raise CasnapError(f"{parent / self.name} vanished as it was created")
            self.dir = made
        except BaseException:
            self.parent.close()
            raise
        proc = Path(f"/proc/{os.getpid()}/fd/{self.dir.fd}")
        self.path = proc if proc.is_dir() else parent / self.name

    def fingerprints(self, rels: Sequence[str]) -> dict[str, Fingerprint]:
        """fingerprint of each staged file, reached folder by folder from the stage's descriptor
        (a path through /proc can pass PATH_MAX where the file's path in the data dir did not);
        None for one that cannot be reached."""
        out: dict[str, Fingerprint] = {}
        with Tree(self.dir) as tree:
            for rel in rels:
                try:
                    parent, name = tree.parent_of(rel)
                    st = parent.lstat(name) if parent is not None else None
                except CasnapError:  # a folder on the way replaced (by a smoke command)
                    st = None
                out[rel] = (
                    None if st is None else (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
                )
        return out

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        shown = str(self.parent_path / self.name)
        if (
            isinstance(exc, CasnapError)
            and type(exc).__str__ is BaseException.__str__
            and len(exc.args) == 1
            and isinstance(exc.args[0], str)
            and shown != str(self.path)
        ):  # a message names the folder as the user knows it, not its /proc descriptor path
            exc.args = (exc.args[0].replace(str(self.path), shown),)
        self.dir.close()
        try:
            remove_tree(self.parent, self.name)
        except (OSError, CasnapError):
            pass  # removed by the next run as a stale stage
        finally:
            self.parent.close()


def stage_files(
    repo: Repository,
    stage: Stage,
    entries: Sequence[FileEntry],
    checks: smoke.SmokeSession,
    progress: ProgressFn | None = None,
    phases: Phases | None = None,
) -> dict[str, Fingerprint]:
    """Restore entries into the stage, each verified against its BLAKE3, owners restored as
    root, hard links linked to their file staged before them: databases and FAISS indexes first
    (stage_order), then small files a batch at a time (smallstage.py), then the others; each
    file's smoke checks start as soon as it is staged. Every file is durable when this returns
    (durable.py: synced together, or each fsynced). Returns the fingerprint of every staged file
    (a smoke command must not change one). The time of each step goes to phases (see
    writeout.write_files; syncs to `write`)."""
    phases = phases or Phases()
    repo.ensure_index()
    ordered = sorted(entries, key=stage_order)
    bar = ByteProgress(sum(e.size for e in ordered), progress)
    as_root = os.geteuid() == 0
    before: dict[str, Fingerprint] = {}
    names: dict[str, list[str]] = {}  # a staged file -> every name it has in the stage
    full: list[FileEntry] = []
    small: list[FileEntry] = []  # plain files up to SMALL_FILE: restored in batches
    linked: list[FileEntry] = []  # links to a file staged before them: linked to it
    seen: set[str] = set()
    for entry in ordered:
        if entry.link is not None and entry.link in seen:
            linked.append(entry)
        elif smallstage.fits(entry) and stage_order(entry)[0] == 2:
            small.append(entry)
        else:
            full.append(entry)
        seen.add(entry.path)
    with (
        ThreadPoolExecutor(max_workers=workers(repo)) as pool,
        Durable(stage.dir.fd, str(stage.parent_path / stage.name), phases) as durable,
    ):

        def written(entry: FileEntry, dest: Path) -> None:
            if as_root and entry.uid is not None and entry.gid is not None:
                try:
                    os.chown(dest, entry.uid, entry.gid, follow_symlinks=False)
                except OSError as exc:
                    raise from_oserror(exc, f"setting the owner of {dest}") from exc
            durable.add(dest, entry.size)
            before[entry.path] = fingerprint(dest)
            checks.staged(entry.path, dest)

        def staged(entry: FileEntry, dest: str, fp: Fingerprint, head: bytes) -> None:
            bar.add(entry.size)
            durable.add(dest, entry.size)
            before[entry.path] = fp
            checks.staged(entry.path, dest, head)

        window = 2 * workers(repo) + 2
        for entry in full:
            _mkdirs((stage.path / entry.path).parent)
        write_files(
            repo, [(e, stage.path / e.path) for e in full], pool, window, written, bar.add, phases
        )
        again, failed = smallstage.stage_small(
            repo, stage.dir.fd, stage.path, small, pool, window, staged, phases
        )
        for entry in again:  # passed over by the batches: its folder may not be made yet
            _mkdirs((stage.path / entry.path).parent)
        write_files(
            repo, [(e, stage.path / e.path) for e in again], pool, window, written, bar.add, phases
        )
        if failed is not None:  # its files restored when read again: the read had failed
            raise failed
        for entry in linked:
            dest = stage.path / entry.path
            _mkdirs(dest.parent)
            assert entry.link is not None
            try:
                os.link(stage.path / entry.link, dest, follow_symlinks=False)
            except OSError as exc:
                raise from_oserror(exc, f"linking {dest}") from exc
            bar.add(entry.size)
            group = names.setdefault(entry.link, [entry.link])
            group.append(entry.path)
            for name in group:  # a new link changes the ctime every name shows
                before[name] = fingerprint(dest)
            checks.staged(entry.path, dest)
        durable.finish()
    bar.finish()
    return before


def stage_order(entry: FileEntry) -> tuple[int, int, str]:
    """Files whose checks take longest first, so those checks overlap the rest of the restore:
    databases (integrity_check), then FAISS indexes (read in a child), each largest first, then
    the other files by path, and hard links after the files they link to."""
    if entry.link is not None:
        return (3, 0, entry.path)
    if entry.kind == "sqlite":
        return (0, -entry.size, entry.path)
    if smoke.may_be_faiss(entry.path, entry.chunker):
        return (1, -entry.size, entry.path)
    return (2, 0, entry.path)


def write_verified(
    repo: Repository,
    entry: FileEntry,
    dest: Path,
    pool: ThreadPoolExecutor,
    tick: Callable[[int], None] | None = None,
    phases: Phases | None = None,
) -> int:
    """Write a file's chunks to dest (new; not fsynced: callers that keep it do), its BLAKE3
    checked against the manifest's (a mismatch names the damaged chunk), mode and mtime set."""
    write_files(repo, [(entry, dest)], pool, 2 * workers(repo) + 2, None, tick, phases)
    return entry.size


class _VerifiedStream:
    """What pipeline.restore writes into, for a stream (a pipe): each chunk goes on to out only
    once its bytes hash to its id, so a damaged chunk stops the stream before any of its bytes
    are written; runs of zeros restore would seek over are written as zeros. Holds at most one
    chunk that arrived in pieces."""

    def __init__(self, out: BinaryIO, refs: bytes, ids: IdHasher) -> None:
        self.out = out
        self.ids = ids
        self.refs = REF.iter_unpack(refs)
        self.pending = bytearray()
        self.want: tuple[bytes, int] | None = next(self.refs, None)
        self.named = False  # whether it raised naming a damaged chunk

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        pos = 0
        while pos < len(view) or (self.want is not None and self.want[1] == 0):
            if self.want is None:
                raise IntegrityError("the file holds more bytes than its chunk list")
            cid, n = self.want
            take = view[pos : pos + n - len(self.pending)]
            pos += len(take)
            if not self.pending and len(take) == n:
                self._emit(cid, take)
            else:
                self.pending += take
                if len(self.pending) == n:
                    self._emit(cid, memoryview(self.pending))
                    self.pending = bytearray()
        return len(view)

    def _emit(self, cid: bytes, chunk: memoryview) -> None:
        if self.ids(chunk) != cid:
            self.named = True
            raise IntegrityError(f"chunk {cid.hex()} is damaged: its bytes do not match its id")
        self.out.write(chunk)
        self.want = next(self.refs, None)

    def seek(self, n: int, whence: int) -> int:
        """A run of n zeros (pipeline.restore seeks over them in a file)."""
        if whence != os.SEEK_CUR:
            raise ValueError("a stream only moves forward")
        for k in range(0, n, len(_ZEROS)):
            self.write(_ZEROS[: min(len(_ZEROS), n - k)])
        return n

    def truncate(self) -> None:
        """Nothing to do: every zero was written."""

    def finish(self) -> None:
        if self.want is not None or self.pending:
            raise IntegrityError("the file ended before its last chunk")


_ZEROS = bytes(1 << 20)


def write_verified_stream(
    repo: Repository,
    entry: FileEntry,
    out: BinaryIO,
    pool: ThreadPoolExecutor,
    tick: Callable[[int], None] | None = None,
) -> int:
    """write_verified for a stream that cannot seek or be taken back (stdout): the file's bytes
    in order, each chunk checked against its id before it is written (a damaged chunk raises
    IntegrityError with the bytes before it written; a frame that does not decode, the first
    damaged chunk found by reading them again), then the whole-file BLAKE3 and size
    against the manifest's (IntegrityError after every byte was written). Memory stays bounded
    whatever the file's size: the restore pipeline's window of tasks, plus one chunk."""
    refs = repo.file_refs(entry)
    sink = _VerifiedStream(out, refs, repo.ids)
    try:
        size, whole = pipeline.restore(
            repo.store, refs, cast(BinaryIO, sink), pool, 2 * workers(repo) + 2, tick
        )
        sink.finish()
    except IntegrityError as exc:
        if not sink.named:  # a frame that did not decode names no chunk: which one is it?
            try:
                pipeline.find_damaged(repo.store, refs)
            except IntegrityError as found:
                raise IntegrityError(f"{entry.path}: {found}") from exc
        raise IntegrityError(f"{entry.path}: {exc}") from exc
    if size != entry.size or whole.hex() != entry.hash:
        raise IntegrityError(
            f"{entry.path}: the bytes written do not match its recorded hash, yet each of its "
            "chunks verified (a damaged manifest)"
        )
    return size


def stream_entry(repo: Repository, entry: FileEntry, out: BinaryIO) -> int:
    """Write one file of a snapshot to a stream, every chunk and the whole-file hash verified
    (see write_verified_stream); returns its size."""
    repo.ensure_index()
    with ThreadPoolExecutor(max_workers=workers(repo)) as pool:
        return write_verified_stream(repo, entry, out, pool)


def restore_entry(
    repo: Repository, entry: FileEntry, dest: Path | str, progress: ProgressFn | None = None
) -> int:
    """Write one file of a snapshot to dest (which must not exist), every hash verified."""
    repo.ensure_index()
    bar = ByteProgress(entry.size, progress)
    with ThreadPoolExecutor(max_workers=workers(repo)) as pool:
        size = write_verified(repo, entry, Path(dest), pool, bar.add)
    fsutil.fsync_file(Path(dest))
    bar.finish()
    return size


def smoke_verify(
    repo: Repository,
    ref: str,
    *,
    smoke_checks: bool = True,
    smoke_cmd: str | None = None,
    progress: ProgressFn | None = None,
) -> SmokeVerifyResult:
    """Restore a snapshot into a staging dir in the repository's scratch space (every chunk and
    file hash verified), smoke-check it there as a checkout would, and delete it; no data dir is
    touched."""
    with repo.lock("verify"):
        repo.refresh(only_if_changed=True)
        t0 = time.perf_counter()
        sid = repo.resolve(ref)
        snap = repo.snapshot(sid)
        try:
            fsutil.make_dirs(repo.tmp_dir)
        except OSError as exc:
            raise from_oserror(exc, f"creating {repo.tmp_dir}") from exc
        report = None
        with (
            Stage(repo.tmp_dir) as stage,
            smoke.SmokeSession(
                databases=[e.path for e in snap.files if e.kind == "sqlite"],
                builtin=smoke_checks,
                expect_faiss=smoke_checks
                and any(smoke.may_be_faiss(e.path, e.chunker) for e in snap.files),
            ) as checks,
        ):
            try:
                stage_files(repo, stage, snap.files, checks, progress)
            except IntegrityError as exc:  # verify's verdict on a snapshot that does not restore
                raise CheckFailed(f"snapshot {sid.short} does not restore: {exc}") from exc
            if smoke_checks or smoke_cmd:
                view = {e.path: stage.path / e.path for e in snap.files}
                report = checks.finish(view, list(view), staged_dir=stage.path)
                if smoke_cmd:
                    report = run_smoke_cmd(stage, smoke_cmd, {"CASNAP_SNAPSHOT": sid.hex()}, report)
        return SmokeVerifyResult(
            id=sid.hex(),
            files=len(snap.files),
            bytes_verified=snap.logical_bytes,
            smoke=report.to_json() if report is not None else None,
            ok=report is None or report.ok,
            seconds=time.perf_counter() - t0,
        )


def run_smoke_cmd(
    stage: Stage, cmd: str, env: Mapping[str, str], report: SmokeReport
) -> SmokeReport:
    """report with the user's smoke command appended, when every check passed: the command
    runs on a disposable copy of the stage, made beside it, so it may write (Chroma writes to
    a store it opens) and the staged files stay as verified."""
    if not report.ok:
        return report
    with Stage(stage.parent_path) as scratch:
        copy_tree(stage.path, scratch.path)
        check = run_command(cmd, scratch.parent_path / scratch.name, env)
    return SmokeReport((*report.checks, check))


def copy_tree(src: Path, dest: Path) -> None:
    """Copy every folder and file under src into dest (an empty folder), modes and mtimes
    kept, hard links linked; each file is cloned where the filesystem can (a reflink costs no
    space), else copied in the kernel, else read and written."""
    linked: dict[tuple[int, int], Path] = {}
    try:
        for folder, dirs, files in os.walk(src):
            rel = Path(folder).relative_to(src)
            for name in dirs:
                st = os.lstat(Path(folder) / name)
                os.mkdir(dest / rel / name, 0o700)
                os.chmod(dest / rel / name, stat.S_IMODE(st.st_mode) | 0o700)
            for name in files:
                source, target = Path(folder) / name, dest / rel / name
                st = os.lstat(source)
                if not stat.S_ISREG(st.st_mode):
                    continue
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in linked:
                    os.link(linked[key], target)
                    continue
                _clone(source, target)
                os.chmod(target, stat.S_IMODE(st.st_mode))
                os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
                linked[key] = target
    except OSError as exc:
        raise from_oserror(
            exc, f"copying the staged files for the smoke command into {dest}"
        ) from exc


_FICLONE = 0x40049409  # Linux ioctl: make dest share src's extents (btrfs, XFS, bcachefs)


def _clone(src: Path, dest: Path) -> None:
    """dest as a copy of src: a reflink, else copy_file_range, else a plain copy."""
    with open(src, "rb") as fin, open(dest, "xb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
            return
        except OSError:
            pass
        left = os.fstat(fin.fileno()).st_size
        try:
            while left > 0:
                n = os.copy_file_range(fin.fileno(), fout.fileno(), left)
                if n == 0:
                    break
                left -= n
        except OSError:
            pass  # not between these filesystems: copy what is left by hand
        fin.seek(fout.seek(0, os.SEEK_END))
        shutil.copyfileobj(fin, fout)


def raise_if_smoke_failed(results: Sequence[SmokeVerifyResult]) -> None:
    """SmokeCheckFailed naming the first few failed checks of smoke_verify results, if any."""
    bad = [(r.id, ch) for r in results if r.smoke for ch in r.smoke["checks"] if not ch["ok"]]
    if bad:
        listed = "; ".join(
            f"{sid[:8]} {ch['check']}"
            + (f" on {ch['path']}" if ch["path"] else "")
            + f": {ch['detail']}"
            for sid, ch in bad[:3]
        )
        raise SmokeCheckFailed(f"smoke checks failed: {listed}", [ch for _, ch in bad])


def fingerprint(path: str | os.PathLike[str]) -> Fingerprint:
    """size, mtime, ctime and inode: any write to the file changes one of them."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def workers(repo: Repository | None = None) -> int:
    """Worker threads for restoring: one per core, at least two. On a repository that is not a
    local directory (S3) too: its reads are fetched as spans on threads of their own (spans.py),
    so workers only decode and write, and more of them than cores would only contend."""
    return pipeline.cpu_workers()


def _mkdirs(folder: Path) -> None:
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise from_oserror(exc, f"creating {folder}") from exc


def refuse_broad_target(target: Path, shown: Path) -> None:
    """InvalidArgument for a full checkout into the file system's root or the home folder: it
    would save all of it as a pre-checkout snapshot, then remove every file the snapshot lacks;
    no data dir lives there (a value left empty in `--to $HOME/$DIR` names it)."""
    try:
        home: Path | None = Path.home().resolve()
    except (RuntimeError, KeyError, OSError):  # no home folder known
        home = None
    if target == Path(target.anchor) or target == home:
        where = "the file system's root" if target == Path(target.anchor) else "your home folder"
        raise InvalidArgument(
            f"checkout target {shown} is {where}: a full checkout would remove every file there "
            "the snapshot lacks; restore into the data dir or an empty folder, or name the files"
        )


def make_target(
    target: Path, recorded: tuple[int, int, int] | None, shut: dict[str, int] | None = None
) -> list[Path]:
    """Create the target and its missing parents; the target gets the data dir's recorded mode
    (and owner, as root), but one that shuts its owner out (0o555) is put in shut (under "")
    for the checkout to give once it has filled the target, which stays open to its owner
    meanwhile. Returns the folders created, outermost first."""
    missing = []
    cur = target
    while not cur.exists() and cur.parent != cur:
        missing.append(cur)
        cur = cur.parent
    created: list[Path] = []
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            undo_target(created)
            raise from_oserror(exc, f"creating {d}") from exc
        created.append(d)
        with contextlib.suppress(OSError):
            fd = os.open(d.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    if created and created[-1] == target and recorded is not None:
        mode = recorded[0]
        if shut is not None and mode & 0o700 != 0o700:
            shut[""], mode = mode, mode | 0o700
        with contextlib.suppress(OSError):
            os.chmod(target, mode)
            if os.geteuid() == 0:
                os.chown(target, recorded[1], recorded[2])
    return created


def undo_target(created: list[Path]) -> None:
    for d in reversed(created):
        with contextlib.suppress(OSError):
            d.rmdir()


def copy_into(src: capture.SourceFile, dest: Path) -> None:
    """A copy of a data-dir file at dest; a database is copied through the backup API."""
    try:
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise from_oserror(exc, f"creating {dest.parent}") from exc
    try:
        if src.kind == "sqlite":
            try:
                with capture.sqlite_image(src.abspath, dest.parent) as image:
                    os.replace(image, dest)
                return
            except CasnapError:
                pass  # not readable as a database: copy its bytes as they are
        with open(capture.open_source(src.abspath), "rb") as fsrc, open(dest, "xb") as fdst:
            shutil.copyfileobj(fsrc, fdst)
    except OSError as exc:
        raise from_oserror(exc, f"copying {src.abspath} into the staging dir") from exc
