"""Putting staged files in place: renamed one by one, or a whole new folder at once, then the
folders that changed made durable.

Every staged file is durable before it is renamed (staging.py, durable.py). A folder the target
lacks whose staged copy holds exactly files being placed (a checkout into an empty or new dir,
a new folder of a snapshot) is moved in with one rename, its folders given their recorded modes
and owners first and made durable: its files appear together, each whole. Any other file is
renamed into its folder, created as needed (fsdir.Tree). A rename failing part way undoes the
others (swapundo.py: the files replaced were hard-linked first), so the target is left as it
was. Last the folders renamed into are synced: one syncfs per filesystem where it reports
failures (fsutil.can_syncfs), else one fsync per folder.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from casnap import fsutil, inuse
from casnap.constants import SNIFF_BYTES
from casnap.errors import CasnapError, SourceError, from_oserror
from casnap.formats.sqlite import SQLITE_SIDE_SUFFIXES, is_sqlite_header, wal_mode
from casnap.fsdir import Dir, Tree, split
from casnap.manifest import FileEntry
from casnap.swapundo import Journal, Moving, explain

DirAttrs = Callable[[str], tuple[int, tuple[int, int] | None]]


def _ancestors(rel: str) -> list[str]:
    """The folders above rel, outermost first ("a", "a/b" for "a/b/c")."""
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _inside(rel: str, folder: str) -> bool:
    return rel.startswith(folder + "/")


def swap_in(
    tree: Tree,
    stage: Dir,
    placing: Sequence[tuple[str, bool]],
    dir_attrs: DirAttrs,
    entries: Sequence[FileEntry],
    let_be: Mapping[str, frozenset[int]] | None = None,
) -> tuple[list[str], set[str]]:
    """Put every staged file of placing (path, whether it replaces a database) in place: new
    folders moved whole, the other files renamed one by one (the stale -wal, -shm and -journal
    beside a database it replaces moved aside first, removed once every file is in: SQLite would
    replay a stale WAL). Each file replaced is hard-linked first (swapundo.py), so a rename that
    fails part way is undone, the error saying so; files whose old version cannot be linked go
    last. entries, those of the files placed, tell the undo which files in a folder moved in
    are still as restored. A database replaced that a process has open once it is renamed over
    undoes the swap too (inuse.refuse_opened), but the processes let_be names for it (a forced
    checkout's: see let_be). Returns the files placed, in order, and the folders renamed into
    (for sync_folders)."""
    written: list[str] = []
    touched: set[str] = set()
    journal = Journal(tree, stage, entries)
    replaced: list[inuse.Replaced] = []  # databases renamed over, as they were
    # restored databases locked as SQLite locks until the swap is done: an app that opened one
    # and committed before a failing rename's undo put the old one back lost its commit
    with Tree(stage) as staged, contextlib.ExitStack() as held:
        try:
            whole = new_folders(tree, staged, [rel for rel, _ in placing])
            moving = set(whole)
            for rel in sorted(tree.vacating | tree.clearing):  # in the way, removed: aside
                head, name = split(rel)
                parent = tree.dir(head)
                if parent is not None:
                    # a database's side files go with it (as remove_files removes them); beside
                    # any other file, a name like theirs is a file of its own (one excluded)
                    st = parent.lstat(name)
                    db = st is not None and stat.S_ISREG(st.st_mode) and is_sqlite(parent, name)
                    for suffix in ("", *SQLITE_SIDE_SUFFIXES) if db else ("",):
                        journal.aside(parent, head, name + suffix)
                tree.drop(rel)
            tree.vacating.clear()
            tree.clearing.clear()
            inside = {rel for rel, _ in placing if moved(rel, moving)}
            last = {rel for rel, _ in placing if rel not in inside and not journal.keep_old(rel)}
            touched |= move_folders(tree, staged, whole, dir_attrs, journal)
            for rel, replaces_db in sorted(placing, key=lambda p: p[0] in last):
                if rel in inside:
                    written.append(rel)
                    continue
                head, name = split(rel)
                parent = tree.dir(head, create=True)
                source = staged.dir(head)
                if parent is None or source is None:
                    raise SourceError(f"{tree.root.path / head} vanished during the checkout")
                if replaces_db:
                    held.enter_context(inuse.held_sqlite_locks(source, name, parent.path / name))
                    old = parent.lstat(name)
                    if old is not None:
                        allowed = (let_be or {}).get(rel, frozenset())
                        replaced.append(inuse.Replaced(parent.path / name, old, allowed))
                    for suffix in SQLITE_SIDE_SUFFIXES:
                        journal.aside(parent, head, name + suffix)
                source.rename(name, parent, name, fsutil.temp_name)
                journal.placed(parent, rel)
                touched.add(head)
                written.append(rel)
            inuse.refuse_opened(replaced)  # while both files are still locked
        except BaseException as exc:
            changed = journal.changed()
            explain(exc, tree.root.path, journal.undo(), changed, journal.written)
            raise
    journal.done()
    return written, touched


def clear_the_way(tree: Tree, removing: Collection[str], rels: Collection[str]) -> set[str]:
    """What stands where the snapshot's files rels go and is removed by this full checkout
    anyway (removing), for swap_in to move aside before it places them: a file of removing
    where a folder above one of rels goes (tree.vacating), a folder where one of rels goes
    holding nothing but files of removing and folders (tree.clearing; one holding anything
    else, a link or a file the snapshot excluded, is refused as in the way). Returns the files
    of removing moved aside so."""
    gone = set(removing)
    if not gone:  # nothing removed (a checkout into an empty dir): no path to climb
        tree.vacating, tree.clearing = set(), set()
        return set()
    tree.vacating = {folder for rel in rels for folder in _ancestors(rel) if folder in gone}
    found = {folder for rel in gone for folder in _ancestors(rel) if folder in rels}
    tree.clearing = {
        f for f in found if all(stat.S_ISDIR(st.st_mode) or p in gone for p, st in tree.walk(f))
    }
    return set(tree.vacating) | {r for r in gone for f in tree.clearing if _inside(r, f)}


def remove_files(tree: Tree, rels: Sequence[str]) -> tuple[list[str], set[str]]:
    """Remove the files rels (a database's -wal, -shm and -journal with it): those removed, and
    the folders removed from (for sync_folders)."""
    removed: list[str] = []
    touched: set[str] = set()
    for rel in rels:
        parent, name = tree.parent_of(rel)
        if parent is None:
            continue
        was_db = is_sqlite(parent, name)
        parent.unlink(name)
        if was_db:
            for suffix in SQLITE_SIDE_SUFFIXES:
                parent.unlink(name + suffix)
        touched.add(split(rel)[0])
        removed.append(rel)
    return removed, touched


def let_be(tree: Tree, rel: str) -> frozenset[int]:
    """The processes a forced checkout lets keep the database rel open across its swap: those
    that have it open now, unless it is in WAL mode (its -wal would be taken by the restored
    one). Call it before the database is locked: a descriptor of it opened and closed by this
    process afterwards would drop every lock the process holds on it (POSIX record locks)."""
    parent, name = tree.parent_of(rel)
    st = parent.lstat(name) if parent is not None else None
    if parent is None or st is None or wal_mode(_head(parent, name)):
        return frozenset()
    return inuse.openers(st)


def is_sqlite(parent: Dir, name: str) -> bool:
    """Whether the file name in parent starts like a SQLite database."""
    return is_sqlite_header(_head(parent, name))


def _head(parent: Dir, name: str) -> bytes:
    """The first bytes of the file name in parent (none when it does not open or read)."""
    try:
        fd = parent.open_file(name)
    except CasnapError:
        return b""
    try:
        return os.pread(fd, SNIFF_BYTES, 0)
    except OSError:
        return b""
    finally:
        os.close(fd)


def new_folders(tree: Tree, staged: Tree, rels: Sequence[str]) -> dict[str, Moving]:
    """The outermost folders the target lacks whose staged copy holds exactly files of rels
    (nothing else: no other file, link or special file), on the staging dir's filesystem:
    each can be moved in whole. Each comes with the folders it holds, itself first (outermost
    first), and the inode of each file in it."""
    stage_dev = os.fstat(staged.root.fd).st_dev
    missing: dict[str, bool] = {}
    found: dict[str, list[str]] = {}
    for rel in rels:
        for folder in _ancestors(rel):
            absent = missing.get(folder)
            if absent is None:
                absent = missing[folder] = tree.dir(folder) is None
            if absent:
                found.setdefault(folder, []).append(rel)
                break
    out = {}
    for folder, files in found.items():
        head = split(folder)[0]
        parent = tree.dir(head)
        if parent is None or os.fstat(parent.fd).st_dev != stage_dev:
            continue
        listed = _listing(staged, folder)
        if listed is not None and listed.files.keys() == set(files):
            out[folder] = listed
    return out


def _listing(staged: Tree, folder: str) -> Moving | None:
    """The folders (outermost first) and the regular files (with their inodes) below a staged
    folder; None when it holds anything else. Read by the file types and inodes the
    directories list (no stat per file)."""
    folders: list[str] = [folder]
    files: dict[str, int] = {}
    for rel in folders:  # grows as subfolders are found
        d = staged.dir(rel)
        if d is None:
            return None
        try:
            with os.scandir(d.fd) as listing:
                for item in listing:
                    path = f"{rel}/{item.name}"
                    if item.is_dir(follow_symlinks=False):
                        folders.append(path)
                    elif item.is_file(follow_symlinks=False):
                        files[path] = item.inode()
                    else:
                        return None
        except OSError as exc:
            raise from_oserror(exc, f"listing {d.path}") from exc
    return Moving(folders, files)


def move_folders(
    tree: Tree,
    staged: Tree,
    folders: Mapping[str, Moving],
    dir_attrs: DirAttrs,
    journal: Journal,
) -> set[str]:
    """Move each staged folder into the target whole (given with the folders it holds, see
    new_folders), every folder in it given its mode and owner (dir_attrs, outermost first) and
    made durable first, each move recorded in journal; returns the folders renamed into."""
    if not folders:
        return set()
    inside = [rel for below in folders.values() for rel in below.folders]
    for rel in inside:
        d = staged.dir(rel)
        if d is None:
            raise SourceError(f"staged folder {rel} vanished")
        mode, owner = dir_attrs(rel)
        try:
            if owner is not None:
                os.chown(d.fd, *owner)
            os.chmod(d.fd, mode & 0o7777)
        except OSError as exc:
            raise from_oserror(exc, f"setting the mode of {d.path}") from exc
    _sync(staged, inside)
    touched = set()
    for folder, moving in folders.items():
        head, name = split(folder)
        parent, source = tree.dir(head), staged.dir(head)
        if parent is None or source is None:
            raise SourceError(f"{tree.root.path / head} vanished during the checkout")
        source.move_new(name, parent, name)  # never over a folder an app just made
        journal.folder_moved(folder, moving)
        touched.add(head)
    return touched


def moved(rel: str, folders: Collection[str]) -> bool:
    """Whether rel lies in one of the folders moved whole."""
    if not folders:
        return False
    cut = rel.find("/")
    while cut != -1:  # each folder above rel, outermost first, without building the list
        if rel[:cut] in folders:
            return True
        cut = rel.find("/", cut + 1)
    return False


def restore_attrs(tree: Tree, entry: FileEntry) -> None:
    """Mode, mtime (and owner, as root) of a file left in place, through its descriptor;
    none is set again when all are right (its ctime, and so its fingerprint, stays)."""
    parent, name = tree.parent_of(entry.path)
    if parent is None:
        return
    owner = os.geteuid() == 0 and entry.uid is not None and entry.gid is not None
    with contextlib.suppress(OSError, CasnapError):
        st = parent.lstat(name)
        if (
            st is not None
            and stat.S_IMODE(st.st_mode) == entry.mode & 0o777
            and st.st_mtime_ns == entry.mtime_ns
            and (not owner or (st.st_uid, st.st_gid) == (entry.uid, entry.gid))
        ):
            return
        fd = parent.open_file(name)
        try:
            os.chmod(fd, entry.mode & 0o777)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
            if owner:
                assert entry.uid is not None and entry.gid is not None
                os.chown(fd, entry.uid, entry.gid)
        finally:
            os.close(fd)


def make_folders(tree: Tree, rels: Sequence[str], warnings: list[str]) -> list[str]:
    """Create the folders rels (outermost first) the target lacks, with the modes the tree
    gives, each durable; returns those created. Where something else stands (a file, a link) or
    one cannot be made, a warning names it and nothing is replaced: the files are in place."""
    made: list[str] = []
    for rel in rels:
        before = len(tree.created)
        try:
            tree.dir(rel, create=True)
        except CasnapError as exc:
            warnings.append(f"{rel}: folder of the snapshot not restored: {exc}")
        made += tree.created[before:]
    return made


class OwnerFirst:
    """The modes a checkout gives the folders it makes (given: mode and owner by path), but a
    mode that shuts the owner out (0o500: a user who is not root could neither fill such a
    folder nor move it in whole) is given only by finish, once the checkout has filled them,
    innermost first; meanwhile the folder is open to its owner."""

    def __init__(self, given: DirAttrs) -> None:
        self.given = given
        self.shut: dict[str, int] = {}  # the modes finish gives, by path

    def __call__(self, rel: str) -> tuple[int, tuple[int, int] | None]:
        mode, owner = self.given(rel)
        if mode & 0o700 != 0o700:
            self.shut[rel] = mode
            return mode | 0o700, owner
        return mode, owner

    def finish(self, tree: Tree, warnings: list[str]) -> None:
        """Give each folder made open its mode, innermost first, durable (one the checkout
        took back is gone: nothing to give); a folder that cannot take it is named."""
        for rel in sorted(self.shut, key=lambda r: r.count("/"), reverse=True):
            mode = self.shut.pop(rel)
            try:
                d = tree.dir(rel)
                if d is not None:
                    os.fchmod(d.fd, mode)
                    os.fsync(d.fd)
            except (OSError, CasnapError) as exc:
                warnings.append(f"{rel}: folder restored, its mode not given: {exc}")


def sync_folders(tree: Tree, folders: Iterable[str]) -> None:
    """Make what was renamed into folders (relative to the tree) durable."""
    _sync(tree, sorted(folders))


def _sync(tree: Tree, folders: Sequence[str]) -> None:
    """fsync the folders of a tree: those on its root's filesystem with one syncfs when that
    reports failures and there is more than one, the others one by one."""
    batched = len(folders) > 1 and fsutil.can_syncfs()
    dev = os.fstat(tree.root.fd).st_dev
    whole = False
    for rel in folders:
        d = tree.dir(rel)
        if d is None:
            continue
        if batched and os.fstat(d.fd).st_dev == dev:
            whole = True
        else:
            d.fsync()
    if whole:
        fsutil.syncfs(tree.root.fd, str(tree.root.path))
