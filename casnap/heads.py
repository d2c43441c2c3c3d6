"""The snapshot list of a repository: each manifest's head read once, damaged ones held apart.

A manifest whose head does not read (a flipped bit, a truncated object) names a snapshot whose
chunks gc must not take for unused. Commands that may delete (gc, prune, forget, and whatever
reads every file list) stop at it; commands that delete nothing (commit, checkout, log, ...:
Repository.skip_damaged) list the others with a warning, so one damaged snapshot does not stop
the backups. Either way the way out is named: `casnap forget ID` removes it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING

from casnap.errors import IntegrityError, ObjectMissing, SealedUnderPlainConfig
from casnap.ids import ObjectId, is_hex_prefix, named_id
from casnap.opening import confirm

if TYPE_CHECKING:
    from casnap.backends.base import Backend
    from casnap.backends.cached import CachingBackend
    from casnap.manifest import Snapshot

#: a manifest that does not read: the error, and where it lies (the location shown)
Damage = tuple[IntegrityError, str]


def read_heads(
    keys: Iterable[str], load: Callable[[ObjectId], Snapshot], strict: bool, location: str
) -> tuple[dict[ObjectId, Snapshot], dict[ObjectId, Damage]]:
    """The heads of the manifests listed as keys, and those that did not read. A manifest gone
    since the listing (prune or forget in another process) is gone, unless strict (listed under
    the exclusive lock, where no other deleting command runs: then it is damage). Encrypted
    manifests under a plain config stop the listing when no manifest reads (the config was
    replaced); beside plain ones that do, they are damaged snapshots (copied in from an
    encrypted repository), which `casnap forget` removes."""
    found: dict[ObjectId, Snapshot] = {}
    damaged: dict[ObjectId, Damage] = {}
    sealed: SealedUnderPlainConfig | None = None
    for key in keys:
        if (sid := named_id(key)) is None:
            continue
        try:
            found[sid] = load(sid)
        except IntegrityError as exc:
            if isinstance(exc, SealedUnderPlainConfig):
                sealed = sealed or exc
            if strict or not isinstance(exc, ObjectMissing):
                damaged[sid] = (exc, f"{location}/{key}")
    if sealed is not None and not found:
        raise sealed  # every snapshot is: not the damage of one
    return found, damaged


def read_heads_checked(
    backend: Backend,
    kept: CachingBackend | None,
    sizes: Mapping[str, int],
    load: Callable[[ObjectId], Snapshot],
    strict: bool,
    where: str,
) -> tuple[dict[ObjectId, Snapshot], dict[ObjectId, Damage]]:
    """read_heads, with a config kept from an earlier open confirmed (opening.confirm) at the
    first sign of a repository made anew: no manifest listed, one that does not read, or
    encrypted ones under a kept plain config."""
    if not sizes and kept is not None:  # none, or another repository?
        confirm(backend, kept)
    try:
        heads, damaged = read_heads(sizes, load, strict, where)
    except SealedUnderPlainConfig:
        if kept is not None:
            confirm(backend, kept)
        raise
    if damaged and kept is not None:  # made anew, with another key?
        confirm(backend, kept)
    return heads, damaged


def stopping(damaged: Mapping[ObjectId, Damage], but: Collection[ObjectId]) -> list[ObjectId]:
    """The damaged snapshots a listing must not pass over: all but those being forgotten."""
    return [sid for sid in damaged if sid not in but]


def way_out(damaged: Iterable[ObjectId]) -> str:
    """The forget that removes the damaged snapshots: all of them at once, since a forget of
    one stops at the others."""
    shorts = sorted(sid.short for sid in damaged)
    what = "that snapshot" if len(shorts) == 1 else "those snapshots"
    return f"`casnap forget {' '.join(shorts)}` removes {what}"


def damaged_warning(sid: ObjectId, exc: IntegrityError, damaged: Iterable[ObjectId] = ()) -> str:
    """The warning of a command that lists the snapshots past a damaged one (damaged: every
    one it passed over, named together in the way out)."""
    return (
        f"snapshot {sid.short} left out: {exc} (gc and prune stop until "
        f"{way_out([sid, *(d for d in damaged if d != sid)])}; `casnap verify` lists the "
        "files it held)"
    )


def named(damaged: Mapping[ObjectId, Damage], ref: str) -> list[ObjectId]:
    """The damaged snapshots whose id starts with ref (a hex prefix of 4 or more digits)."""
    low = ref.lower()
    if len(low) < 4 or not is_hex_prefix(low):  # selection.MIN_PREFIX digits at least
        return []
    return [sid for sid in damaged if sid.hex().startswith(low)]
