"""The pre-checkout snapshot: what a checkout replaces or removes that no snapshot holds, saved
(tagged pre-checkout) before its first rename, as a snapshot of the whole target.

What the commit cannot read in the target (a path past PATH_MAX, a file or folder it may not
read) is left out of that snapshot, said in a warning, where the checkout leaves it alone: a
checkout of some paths touches nothing else, and a full one leaves alone what its snapshot
excluded or recorded as skipped (removals.py). What the checkout replaces or removes is never
left out (one that cannot be read stops the commit with its own error), so it is saved, or the
checkout is refused before anything is replaced."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from casnap import capture
from casnap.constants import SAFETY_TAG
from casnap.errors import (
    AccessDenied,
    CasnapError,
    LockError,
    PathTooLong,
    SourceError,
    StorageFull,
    shortened,
)
from casnap.ids import ObjectId
from casnap.locks import holding
from casnap.manifest import Snapshot
from casnap.repository import Repository

NOTE = "safety-snapshot"  # added to the error that stops it: the CLI names the step and option


SAVED_PREFIX = "before checkout of "  # then the short ids of the snapshots checked out
_SAVED = re.compile(r"before checkout of ([0-9a-f]{8}(?:, [0-9a-f]{8})*)( \(saved \d+ file\(s\)\))")


def copied_message(
    snap: Snapshot, source_ids: Iterable[str], copy_of: Callable[[str], str | None]
) -> str:
    """The message of a copy of snap that gets another id (copier.py): a pre-checkout
    snapshot's names the snapshots checked out by the ids of their copies in the destination
    (copy_of: a source snapshot's id there, None when it holds none), not by the source's ids,
    which name nothing there; one it holds no copy of keeps the source's id."""
    found = _SAVED.fullmatch(snap.message)
    if found is None or SAFETY_TAG not in snap.tags:
        return snap.message

    def here(short: str) -> str:
        full = [sid for sid in source_ids if sid.startswith(short)]
        copy = copy_of(full[0]) if len(full) == 1 else None
        return copy[:8] if copy else short

    names = ", ".join(here(short) for short in found.group(1).split(", "))
    return f"{SAVED_PREFIX}{names}{found.group(2)}"


def save(
    repo: Repository,
    target: Path,
    sources: Sequence[tuple[ObjectId, Snapshot]],
    unsaved: Sequence[str],
    warnings: list[str],
) -> str:
    """Commit target as a pre-checkout snapshot that holds every path of unsaved (the target's
    files the checkout replaces or removes that no snapshot holds); its id. What cannot be
    read elsewhere is left out, said in warnings. AccessDenied, StorageFull and SourceError
    carry NOTE."""
    # the commit path (chunkers, capture): only when there is something to save
    from casnap.committer import CommitOptions, Committer

    what = ", ".join(sid.short for sid, _ in sources)
    options = CommitOptions(
        message=f"{SAVED_PREFIX}{what} (saved {len(unsaved)} file(s))",
        tags=(SAFETY_TAG,),
        check_pairs=False,
        allow_empty=True,
        skip_unreadable=True,
        must_read=frozenset(unsaved),  # its own error, naming why it cannot be read
    )
    try:
        for rel in unsaved:
            _refuse_too_long(target, rel)  # before anything is stored
        with _commit_lock(repo):
            saved = Committer(repo, options).run(target, ())
        for rel in unsaved:
            if any(rel == s or rel.startswith(s + "/") for s in saved.skipped):
                raise AccessDenied(f"{shortened(str(target / rel))}: it could not be read")
    except (AccessDenied, StorageFull, SourceError) as exc:
        exc.add_note(NOTE)
        raise
    warnings += [
        f"pre-checkout snapshot {saved.id[:8]}: {capture.left_out(target, rel)}"
        for rel in saved.skipped
    ]
    return saved.id


def _refuse_too_long(target: Path, rel: str) -> None:
    """PathTooLong when target/rel is too long to be read by its path, as a commit reads."""
    full = os.path.join(target, rel)
    if capture.path_too_long(full):
        raise PathTooLong(f"{shortened(full)}: {capture.too_long(full)}")


@contextlib.contextmanager
def _commit_lock(repo: Repository) -> Iterator[None]:
    """The lock the pre-checkout commit writes under: the checkout's own, or, when it reads
    without one (--no-lock, or a lock it could not write: a read-only locks/ folder), a
    commit's, taken now (and what a gc changed meanwhile read). That one is written or the
    commit refused (AccessDenied): a snapshot stored under no lock may lose the chunks it
    reused to a gc of another host or user."""
    if holding(repo.backend) is not None:
        yield
        return
    unwritable, repo.on_unwritable = repo.on_unwritable, None
    try:
        lock = repo.lock("commit")
    finally:
        repo.on_unwritable = unwritable
    with lock:
        repo.refresh(only_if_changed=True)
        yield


def confirm_lock(repo: Repository, saved: str | None) -> None:
    """LockError, before a checkout replaces its first file, when its lock was lost meanwhile
    (the checkout stalled past the stale age, and another host found its lock stale): a gc may
    have deleted what its pre-checkout snapshot `saved` reused, then the only copy of the files
    the swap would replace. That snapshot is removed, and the target left as it was."""
    held = holding(repo.backend)
    if held is None:  # --no-lock
        return
    try:
        held.confirm(
            "replacing any file",
            "the target is left as it was"
            + (f", its pre-checkout snapshot {saved[:8]} removed" if saved else "")
            + " (a gc may have deleted data it reused); run the checkout again",
        )
    except LockError:
        if saved:
            with contextlib.suppress(CasnapError):
                repo.backend.delete(f"snapshots/{saved}")
        raise
