"""Import the copies an older backup procedure left (`cp app.db backups/app_<stamp>.db`, `rsync
data/faiss/ backups/faiss/`, dated folders) as snapshots with their original times, so `log`,
`latest` and retention are right from the first day.

A copy's time is read from its name (`20250101_120000`, `2025-01-01T12-00-00`, `20250101`: local
time), else taken from its mtime (a folder: its newest file's), and said so. Its place in the data
dir drops the stamp (`app_20250101_120000.db` -> `app.db`, `faiss_20250101/` -> `faiss`); a folder
named like the data dir (or by a date alone) is a copy of the whole data dir. Each copy becomes
one snapshot, committed in time order (so each one's chunk lists are deltas against the one
before) through a stage of hard links that gives it its data-dir name; it is recorded as a
snapshot of the data dir, tagged `imported`, its message naming the copy. A copy already imported
(same data dir, message and time) is skipped, so importing a folder twice adds nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from casnap import capture, fsutil
from casnap.committer import commit
from casnap.config import EARLIEST_TIME, iso_time
from casnap.errors import HostileManifest, InvalidArgument, SourceError, from_oserror
from casnap.formats.sqlite import is_sqlite
from casnap.fsutil import stage_name
from casnap.locations import holds_repository
from casnap.manifest import check_path
from casnap.progress import ProgressFn
from casnap.repository import Repository

IMPORTED_TAG = "imported"
MESSAGE = "imported from {name}"
# A date (YYYYMMDD or YYYY-MM-DD) and optionally a time (HHMM[SS], separators - : or .), its
# seconds' fraction (3 to 9 digits: `date +%N`, isoformat) and its zone (Z, +HH:MM, -HHMM: an
# offset of whole, half or three-quarter hours, so a counter such as -0001 is none), not part
# of a longer run of digits.
_STAMP = re.compile(
    r"(?<![0-9])(?P<y>(?:19|20)[0-9]{2})(?P<ds>-?)(?P<mo>[0-9]{2})(?P=ds)(?P<d>[0-9]{2})"
    r"(?:[T_ -]?(?P<h>[0-9]{2})(?P<ts>[-:.]?)(?P<mi>[0-9]{2})"
    r"(?:(?P=ts)(?P<s>[0-9]{2})(?:[.,](?P<f>[0-9]{3,9})(?![0-9]))?)?"
    r"(?P<z>Z(?![A-Za-z])|(?P<zs>[+-])(?P<zh>0[0-9]|1[0-4]):?(?P<zm>00|30|45)(?![0-9]))?)?"
    r"(?![0-9])"
)
_LATEST = re.compile(r"^(?P<base>.+?)[_-]latest(?P<ext>(?:\.[A-Za-z0-9]+)*)$", re.IGNORECASE)
# A database copy's side files staged with it: what SQLite reads from the copy includes them.
_STAGED_SIDES = ("-wal", "-journal")
_ARCHIVES = (".tar", ".tgz", ".gz", ".bz2", ".xz", ".zst", ".zip", ".7z")


@dataclass
class ImportItem:
    """One copy and the snapshot it becomes."""

    name: str  # its name in the folder imported
    kind: str  # "file", "folder" or "data dir"
    path: str | None  # its place in the data dir; None: the whole data dir
    time: str  # the snapshot time (UTC, as manifests record it)
    time_from: str  # "name", or "mtime" when the name holds no date
    status: str = "planned"  # "planned" (dry run), "imported" or "already imported"
    snapshot: str | None = None  # the snapshot it became (or had become)
    files: int = 0
    bytes_added: int = 0
    seen: tuple[tuple[str, int, int, int], ...] = field(default=(), repr=False)  # by the plan

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "seen"}


@dataclass
class ImportResult:
    """What an import planned and did, as `import --json` prints it."""

    source: str
    data_dir: str
    dry_run: bool
    items: list[ImportItem] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # name, reason
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def imported(self) -> int:
        return sum(1 for i in self.items if i.status == "imported")

    @property
    def already(self) -> int:
        return sum(1 for i in self.items if i.status == "already imported")

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "data_dir": self.data_dir,
            "dry_run": self.dry_run,
            "items": [i.to_json() for i in self.items],
            "skipped": self.skipped,
            "warnings": self.warnings,
            "imported": self.imported,
            "already_imported": self.already,
            "seconds": self.seconds,
        }


def stamp_of(name: str) -> tuple[dt.datetime, str] | None:
    """The local time a name carries and the name without it (`app_20250101_120000.db` ->
    `app.db`); None when it holds no valid date."""
    for m in _STAMP.finditer(name):
        try:
            t = dt.datetime(
                int(m["y"]),
                int(m["mo"]),
                int(m["d"]),
                int(m["h"] or 0),
                int(m["mi"] or 0),
                int(m["s"] or 0),
                int((m["f"] or "0")[:6].ljust(6, "0")),
            )
        except ValueError:
            continue  # 2025-13-45: not a date
        if m["z"]:
            offset = dt.timedelta(hours=int(m["zh"] or 0), minutes=int(m["zm"] or 0))
            zone = dt.timezone(-offset if m["zs"] == "-" else offset)
            t = t.replace(tzinfo=zone)
        head = name[: m.start()].rstrip("_-. ")
        tail = name[m.end() :]
        if not tail.startswith("."):
            tail = tail.lstrip("_- ")
            if head and tail:
                tail = "_" + tail
        return t.astimezone(), head + tail
    return None


def _readable(path: str) -> OSError | None:
    """None when path (a regular file) can be opened for reading, else why not."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)))
    except OSError as exc:
        return exc
    return None


def _scan_folder(folder: Path) -> tuple[int | None, str]:
    """The newest mtime (ns) of the regular files under folder (None when it holds none), and
    what in it cannot be read ("" when all can): a folder copy is imported whole or not at all."""
    newest = None
    problems: list[str] = []

    def unreadable(path: str, exc: OSError) -> None:
        rel = Path(path).relative_to(folder.parent).as_posix()
        problems.append(f"{rel} ({exc.strerror})")

    for dirpath, _dirs, files in os.walk(folder, onerror=lambda e: unreadable(e.filename, e)):
        for name in files:  # links are not followed
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except OSError as exc:
                unreadable(full, exc)
                continue
            if stat.S_ISREG(st.st_mode):
                if (denied := _readable(full)) is not None:
                    unreadable(full, denied)
                mtime = st.st_mtime_ns  # before 1970 too (then the copy is skipped)
                newest = mtime if newest is None else max(newest, mtime)
    return newest, problems[0] if problems else ""


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _from_ns(ns: int) -> dt.datetime:
    """The time of a file's mtime (ns), to the microsecond; past what a date holds (tmpfs and
    btrfs keep any 64-bit second) the last or first one, in the future or before 1970 alike."""
    try:
        return _EPOCH + dt.timedelta(microseconds=ns // 1000)
    except OverflowError:
        return (dt.datetime.max if ns > 0 else dt.datetime.min).replace(tzinfo=dt.UTC)


def plan(
    repo: Repository | None, folder: Path, data_dir: Path, data_names: Sequence[str] = ()
) -> ImportResult:
    """What importing folder would do: one item per copy, oldest first, each marked `already
    imported` when a snapshot of data_dir holds it; names that are no copy are listed skipped.
    repo None: a repository not created yet (nothing imported)."""
    folder = fsutil.resolved(folder, "folder of copies")
    if not folder.is_dir():
        raise SourceError(f"{folder} does not exist or is not a directory")
    if repo is not None and repo.holds_path(folder):
        raise InvalidArgument(f"{folder} lies inside the repository: nothing there is a copy")
    for outer in (folder, *folder.parents):  # its packs/, index/ ... are no copies of data
        if holds_repository(outer):
            where = "is" if outer == folder else f"lies inside {outer},"
            raise InvalidArgument(
                f"{folder} {where} a casnap repository, not a folder of copies: "
                f"`casnap copy --from {outer}` copies its snapshots into --repo"
            )
    data_dir = fsutil.resolved(data_dir, "data dir")
    names = set(data_names) or {data_dir.name}
    result = ImportResult(str(folder), str(data_dir), dry_run=True)
    now = dt.datetime.now(dt.UTC)
    for entry in sorted(os.listdir(folder)):
        full = folder / entry
        if os.path.realpath(full) == str(data_dir):  # a loop of links is none (and skipped)
            result.skipped.append({"name": entry, "reason": "the data dir itself (commit it)"})
            continue
        item, reason = _classify(full, names, repo)
        if item is None:
            if reason:
                result.skipped.append({"name": entry, "reason": reason})
            continue
        if item.path is not None:
            try:
                check_path(item.path)
            except HostileManifest:
                result.skipped.append({"name": entry, "reason": "its data-dir name is refused"})
                continue
        if item.time > iso_time(now):
            result.skipped.append({"name": entry, "reason": "its time lies in the future"})
            continue
        if item.time < iso_time(EARLIEST_TIME):  # four-digit years: compared as times
            result.skipped.append({"name": entry, "reason": "its time lies before 1970"})
            continue
        item.seen = _state(full)
        result.items.append(item)
    result.items.sort(key=lambda i: (i.time, i.name))
    done = {
        (s.message, s.time, s.paths): sid.hex()
        for sid, s in (repo.snapshots() if repo is not None else [])
        if IMPORTED_TAG in s.tags and s.source == str(data_dir)
    }
    for item in result.items:
        key = (MESSAGE.format(name=item.name), item.time, _paths(item))
        if key in done:
            item.status, item.snapshot = "already imported", done[key]
    return result


def _state(copy: Path) -> tuple[tuple[str, int, int, int], ...]:
    """What a copy is made of as stat sees it (name, size, mtime, inode of each file, a database
    copy's side files included): a copy the old procedure is still writing changes it."""
    if copy.is_dir() and not copy.is_symlink():
        names = [
            os.path.join(dirpath, name)
            for dirpath, dirs, files in os.walk(copy)
            for name in sorted(dirs + files)
        ]
    else:
        names = [str(copy), *(f"{copy}{suffix}" for suffix in _STAGED_SIDES)]
    state = []
    for name in names:
        with contextlib.suppress(OSError):
            st = os.lstat(name)
            state.append((name, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(state)


CHANGED = (
    "changed while the import ran (a copy still being written?): import again once it is complete"
)


def _paths(item: ImportItem) -> tuple[str, ...]:
    return () if item.path is None else (item.path,)


def _classify(
    full: Path, data_names: set[str], repo: Repository | None
) -> tuple[ImportItem | None, str]:
    """The copy a folder entry is, or (None, why not; "" to pass over it silently)."""
    name = full.name
    if capture.is_ignored_name(name) or name.startswith("."):
        return None, ""
    if capture.side_file_base(name) is not None:
        return None, ""  # a database's side file: its -wal is imported with it
    try:
        st = os.lstat(full)
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror})"
    if stat.S_ISDIR(st.st_mode):
        if (repo is not None and repo.holds_path(full)) or holds_repository(full):
            return None, "a casnap repository"
        newest, problem = _scan_folder(full)
        if problem:
            return None, f"cannot be read: {problem}"
        if newest is None:
            return None, "holds no file"
        stamped = stamp_of(name)
        latest = None if stamped else _LATEST.match(name)  # faiss_latest/ as app_latest.db
        base = stamped[1] if stamped else latest["base"] + latest["ext"] if latest else name
        whole = not base or base in data_names
        t, source = (stamped[0], "name") if stamped else (_from_ns(newest), "mtime")
        return ImportItem(
            name=name,
            kind="data dir" if whole else "folder",
            path=None if whole else base,
            time=iso_time(t),
            time_from=source,
        ), ""
    if not stat.S_ISREG(st.st_mode):
        return None, "not a regular file or folder"
    if name.lower().endswith(_ARCHIVES):
        return None, "an archive: unpack it and import the folder"
    if (denied := _readable(str(full))) is not None:
        return None, f"cannot be read ({denied.strerror})"
    stamped = stamp_of(name)
    mtime = iso_time(_from_ns(st.st_mtime_ns))
    if stamped is not None:
        base = stamped[1]
        if not base or base.startswith("."):
            return None, "its name holds a date but no file name (name it like app_<date>.db)"
        item = ImportItem(name, "file", base, iso_time(stamped[0]), "name")
    elif (latest := _LATEST.match(name)) is not None:
        item = ImportItem(name, "file", latest["base"] + latest["ext"], mtime, "mtime")
    elif is_sqlite(full):
        item = ImportItem(name, "file", name, mtime, "mtime")
    else:
        return None, "no date in its name, and not a database"
    for suffix in _STAGED_SIDES:  # staged with the copy: each must be a file SQLite can read
        side = f"{name}{suffix}"
        with contextlib.suppress(OSError):
            mode = os.lstat(full.parent / side).st_mode
            if not stat.S_ISREG(mode):
                what = "a symbolic link" if stat.S_ISLNK(mode) else "a folder"
                what = what if stat.S_ISLNK(mode) or stat.S_ISDIR(mode) else "a special file"
                return None, f"{side} is {what}, not a regular file: move it away"
            if (denied := _readable(str(full.parent / side))) is not None:
                return None, f"{side} cannot be read ({denied.strerror})"
    return item, ""


def import_copies(
    repo: Repository,
    folder: Path | str,
    data_dir: Path | str,
    *,
    data_names: Sequence[str] = (),
    dry_run: bool = False,
    progress: ProgressFn | None = None,
) -> ImportResult:
    """Commit each copy in folder not yet imported as a snapshot of data_dir at the copy's time,
    oldest first (see the module docstring); with dry_run, only the plan."""
    t0 = time.perf_counter()
    result = plan(repo, Path(folder), Path(data_dir), data_names)
    result.dry_run = dry_run
    if dry_run:
        result.seconds = time.perf_counter() - t0
        return result
    source = Path(result.source)
    parent = source if os.access(source, os.W_OK | os.X_OK) else Path(tempfile.gettempdir())
    fsutil.remove_stale_stages(parent)  # left by an import that was killed
    for item in result.items:
        if item.status != "planned":
            continue
        copy = source / item.name
        if _state(copy) != item.seen:  # the old procedure's cp or rsync still at work
            result.skipped.append({"name": item.name, "reason": CHANGED})
            continue
        with _staged(copy, item, parent, Path(result.data_dir), result.warnings) as root:
            r = commit(
                repo,
                root,
                _paths(item),
                message=MESSAGE.format(name=item.name),
                tags=[IMPORTED_TAG],
                time=dt.datetime.fromisoformat(item.time),
                source=result.data_dir,
                progress=progress,
            )
        item.status, item.snapshot = "imported", r.id
        if _state(copy) != item.seen:
            result.warnings.append(
                f"{item.name}: changed while it was imported (a copy still being written?): "
                f"snapshot {r.id[:8]} may hold it incomplete (`casnap forget {r.id[:8]}`, then "
                "import again once it is complete)"
            )
        item.files = r.files_new + r.files_changed + r.files_unchanged
        item.bytes_added = r.bytes_added
        result.warnings += [f"{item.name}: {w}" for w in r.warnings]
    result.items = [i for i in result.items if i.status != "planned"]
    result.seconds = time.perf_counter() - t0
    return result


@contextlib.contextmanager
def _staged(
    copy: Path, item: ImportItem, parent: Path, data_dir: Path, warnings: list[str]
) -> Iterator[Path]:
    """The dir to commit a copy from: a stage in parent holding the copy under its data-dir
    name (hard links; copies across filesystems), a whole data dir's copy as a folder in it."""
    try:
        stage = Path(tempfile.mkdtemp(prefix=stage_name(), dir=parent))
    except OSError as exc:
        raise from_oserror(exc, f"creating a staging dir in {parent}") from exc
    try:
        like = data_dir if data_dir.is_dir() else copy.parent
        with contextlib.suppress(OSError):  # the mode a checkout gives a data dir it creates
            os.chmod(stage, stat.S_IMODE(os.stat(like).st_mode))
        root = stage if item.path is not None else stage / "data"  # a name of no temp file
        dest = root if item.path is None else root / item.path
        if item.kind != "file":
            _link_tree(copy, dest, item.name, warnings)
        else:
            _link(copy, dest)
            # committed transactions a WAL copy may still hold, and the pages a hot journal
            # restores: a copy taken mid-transaction is rolled back, as SQLite reads the pair
            for suffix in _STAGED_SIDES:
                side = Path(f"{copy}{suffix}")
                if side.is_file() and not side.is_symlink():  # plan refused any other kind
                    _link(side, Path(f"{dest}{suffix}"))
        yield root
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # names only: the copies stay as they were


def _link(src: Path, dest: Path) -> None:
    """dest as a second name of src (same inode, mode, mtime), or a copy keeping its mode and
    mtime where a link cannot be made (another filesystem)."""
    try:
        os.link(src, dest, follow_symlinks=False)
        return
    except OSError:
        pass
    try:
        shutil.copy2(src, dest, follow_symlinks=False)
    except OSError as exc:
        raise from_oserror(exc, f"staging {src}") from exc


def _link_tree(src: Path, dest: Path, name: str, warnings: list[str]) -> None:
    """A folder copy's tree at dest: folders with their modes, regular files linked, but for a
    database's -shm: SQLite writes its index there when it reads the database, and it rebuilds
    it from the -wal, so the stage gets one of its own and the copy's is left as it was."""
    temps: list[str] = []
    for dirpath, dirs, files in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        target = dest / rel
        for entry in sorted(f for f in files if _rsync_temp(f, files)):
            files.remove(entry)
            temps.append((rel / entry).as_posix())
        for entry in [d for d in dirs if d == _RSYNC_DELAYED]:
            dirs.remove(entry)
            for sub, _, held in os.walk(Path(dirpath, entry)):
                temps += [Path(sub, f).relative_to(src).as_posix() for f in sorted(held)]
        try:
            target.mkdir(mode=0o700, exist_ok=True)
            os.chmod(target, stat.S_IMODE(os.stat(dirpath).st_mode))
        except OSError as exc:
            raise from_oserror(exc, f"staging {dirpath}") from exc
        for entry in sorted(dirs + files):
            if entry.endswith("-shm") and capture.side_file_base(entry) in files:
                continue
            full = Path(dirpath, entry)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                _link(full, target / entry)
            elif not stat.S_ISDIR(st.st_mode):
                what = "symbolic link" if stat.S_ISLNK(st.st_mode) else "special file"
                warnings.append(f"{name}/{(rel / entry).as_posix()}: {what} not imported")
    if temps:
        shown = ", ".join(temps[:5]) + (f" and {len(temps) - 5} more" if len(temps) > 5 else "")
        warnings.append(
            f"{name}: left out {len(temps)} temp file{'s' if len(temps) > 1 else ''} of an "
            f"rsync that did not finish ({shown})"
        )


_RSYNC_DELAYED = ".~tmp~"  # rsync --delay-updates: the new files wait here until the end
# rsync writes a file as `.<name>.XXXXXX` (mkstemp's 6 letters and digits), then renames it
_RSYNC_TEMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9]{6}$")


def _rsync_temp(entry: str, files: list[str]) -> bool:
    """Whether entry is a temp file an rsync that did not finish left: its name, and either the
    file it was to replace beside it or a digit or capital in its suffix (an app's own hidden
    `.notes.backup` has neither)."""
    m = _RSYNC_TEMP.match(entry)
    if m is None:
        return False
    suffix = entry[-6:]
    return m["name"] in files or not (suffix.isalpha() and suffix.islower())
