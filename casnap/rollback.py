"""Take back what a failed commit stored: the packs it wrote but never indexed, and the repository
it created for itself.

A commit writes its packs, then the index file naming them, then its manifest. Failing before the
index file (a full disk, most often), it leaves packs nothing refers to; left there until a gc,
they hold the very space the next commit needs, so that one fails too. They are not deleted under
the commit's own shared lock: a concurrent commit of the same data may have made the very same
pack (same content, same name), found it stored and be about to index it. So once the failed
commit has released its lock, they are deleted under the exclusive lock, taken without waiting
(busy: they are left to gc, which removes unindexed packs), and only those no index file names
(an index file may have landed before the commit failed). Under the exclusive lock no commit
runs, which is what makes an unindexed pack garbage (docs/FORMAT.md, "Garbage collection").

A first commit that created the repository (commit on a missing or empty directory) and failed
takes the repository back too, when it holds no snapshot and nothing but what casnap put there.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from casnap import locks
from casnap.backends.base import Backend
from casnap.constants import TEMP_PREFIX
from casnap.errors import CasnapError, RepositoryNotFound, StorageFull
from casnap.ids import ObjectId
from casnap.keys import PasswordSource, read_password
from casnap.signals import uninterrupted

if TYPE_CHECKING:
    from casnap.repository import Repository


class NewRepository(NamedTuple):
    """A repository directory a commit created: `made_dir` when the directory itself did not
    exist; `placeholders`, the files it held already (README.md, .gitkeep); `parents`, the
    folders above it that did not exist either, deepest first. root is None for a repository
    in an object store (S3), where only objects are looked at."""

    root: Path | None
    made_dir: bool
    placeholders: frozenset[str] = frozenset()
    parents: tuple[Path, ...] = ()


def made_for_commit(
    init: Callable[[str | None], Repository],
    password: PasswordSource | None,
    created: NewRepository,
) -> Repository:
    """init(the password), the repository it makes marked `created` in the same step: its
    password is read first (a prompt or a command may wait: a signal ends the command there, with
    nothing made), then a signal waits for the init, and once it lands, before any commit has the
    repository in hand, the repository is taken back."""
    given = None if password is None else read_password(password)
    repo: Repository | None = None
    try:
        with uninterrupted():
            repo = init(given)
            repo.created = created
        return repo
    except BaseException:
        if repo is not None:
            take_back(repo)
        raise


def take_back(repo: Repository) -> None:
    """Take back the repository made for a commit (`created`) that never ran: a signal landed
    before it started. Nothing when it was not made so, or a commit has it in hand."""
    if repo.created is not None:
        after_failed_commit(repo.backend, (), repo.created)
        repo.created = None


def after_failed_commit(
    backend: Backend,
    packs: Sequence[ObjectId],
    created: NewRepository | None,
    index_key: str | None = None,
    snapshots_before: frozenset[str] = frozenset(),
) -> None:
    """Delete the unindexed packs of a failed commit, and the repository it created when that
    holds nothing else. Call it without holding a lock. Best effort: an error here is not
    reported (the commit's own is), and whatever stays is gc's.

    A commit that failed after its index file landed (writing its manifest) names that file in
    index_key: it is deleted too, with the packs it names, when the snapshots are still exactly
    snapshots_before. Another commit could have used its chunks only after loading it, and would
    have finished (with a manifest of its own) before this rollback got the exclusive lock.
    """
    if not packs and created is None and index_key is None:
        return
    removed = False
    try:
        with locks.locked(backend, "commit rollback", exclusive=True, wait=0) as held:
            if index_key is not None:
                now = frozenset(k.rsplit("/", 1)[-1] for k, _ in backend.list("snapshots/"))
                if now == snapshots_before:
                    locks.before_delete(held)
                    backend.delete(index_key)
            discard_packs(backend, packs, held)
            if created is not None:
                removed = _empty_new_repository(backend, created, held)
    except StorageFull:  # the disk too full for this lock too: for the first one, most often
        if not _unlocked_take_back(backend, packs, created, index_key):
            return
        removed = True
    except (CasnapError, OSError):
        return
    if removed and created is not None:
        _remove_folders(created)


def _unlocked_take_back(
    backend: Backend,
    packs: Sequence[ObjectId],
    created: NewRepository | None,
    index_key: str | None,
) -> bool:
    """Take back, without a lock, a local repository made for a commit that failed before it
    wrote anything but the config (and keys): on a disk too full for the rollback's exclusive
    lock, as for the commit's first lock. Only when no process holds a lock on it: a lock needs
    the space too, and one written once the config is gone finds no repository
    (require_repository). True when it was taken back."""
    if created is None or created.root is None or packs or index_key is not None:
        return False
    try:
        if next(iter(backend.list("locks/")), None) is not None:
            return False  # another process holds it: it may be committing into it
        return _empty_new_repository(backend, created)
    except (CasnapError, OSError):
        return False


def require_repository(repo: Repository) -> None:
    """RepositoryNotFound when the repository was taken back since it was opened (by another
    process's failed first commit); call it holding the lock. A snapshot listed means the config
    is there (a repository is taken back only while it holds none): only a repository without
    one has its config looked up."""
    if not repo.snapshots() and not repo.backend.exists("config"):
        raise RepositoryNotFound(f"no casnap repository at {repo.backend.location}")


def discard_packs(
    backend: Backend, packs: Sequence[ObjectId], held: locks.Held | None = None
) -> int:
    """Delete the packs no index file names; returns how many. Hold the exclusive lock (held:
    confirmed before each delete, a stalled holder's lost lock stops it).

    An index file that cannot be read raises (CasnapError) before anything is deleted: it might
    name one of them.
    """
    if not packs:
        return 0
    from casnap.chunkindex import decode_index  # numpy: only once there is something to take back
    from casnap.packs import pack_key

    named: set[bytes] = set()
    for key, _size in backend.list("index/"):
        named.update(bytes(p) for p in decode_index(key, backend.get(key))[0])
    count = 0
    for pack in packs:
        if bytes(pack) not in named:
            locks.before_delete(held)
            backend.delete(pack_key(pack))
            count += 1
    return count


def _empty_new_repository(
    backend: Backend, new: NewRepository, held: locks.Held | None = None
) -> bool:
    """Under the exclusive lock: delete the objects of a repository that holds no snapshot, then
    its config when nothing but casnap's own files was left; True when it did."""
    if next(iter(backend.list("snapshots/")), None) is not None:
        return False  # another commit succeeded meanwhile: the repository is in use
    for prefix in ("packs/", "index/"):  # no snapshot: nobody needs any of them
        for key, _size in backend.list(prefix):
            locks.before_delete(held)
            backend.delete(key)
    if new.root is None:
        for key, _size in backend.list(""):
            if key.split("/", 1)[0] not in ("locks", "keys") and key != "config":
                return False  # something casnap did not put there: keep the repository
    elif not _only_casnap_files(new.root, new.placeholders):
        return False
    locks.before_delete(held)
    backend.delete("config")
    for key, _size in backend.list("keys/"):  # after the config: a repository is never keyless
        backend.delete(key)
    return True


def _only_casnap_files(root: Path, placeholders: frozenset[str]) -> bool:
    """True when root holds nothing but casnap's own files (temp files of interrupted writes are
    removed: no writer runs) and the placeholders it held before."""
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_dir() or rel.parts[0] in ("locks", "keys") or rel.as_posix() == "config":
            continue
        if path.name.startswith(TEMP_PREFIX):  # no writer runs: an interrupted write's
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        if len(rel.parts) == 1 and path.name in placeholders:
            continue
        return False  # something casnap did not put there: keep the repository
    return True


def _remove_folders(new: NewRepository) -> None:
    """Remove the emptied folders of a taken-back repository (a folder something was written
    into meanwhile stays), the repository directory when the commit made it, and then the
    folders it made above it, deepest first, while each is empty (as an init stopped before
    its config leaves none: fsutil.new_folder)."""
    if new.root is None:
        return
    for dirpath, _dirs, _files in os.walk(new.root, topdown=False):
        if Path(dirpath) != new.root:
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
    if not new.made_dir:
        return
    for folder in (new.root, *new.parents):
        try:
            os.rmdir(folder)
        except OSError:  # something landed in it: it stays, and so does every folder above
            return
