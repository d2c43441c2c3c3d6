"""Framework stores captured at one instant.

A framework rewrites a store's files other than its database now and then, in step with the
database: Chroma persists an HNSW segment every 1,000 adds, then moves the segment's sequence
number in chroma.sqlite3 and purges its queue; LangChain's `save_local` rewrites `index.faiss`
and `index.pkl`. A commit that reads such a store while that happens can hold files from before
and a database from after (or the reverse), a pair the smoke checks refuse at checkout. Each
database is captured at one instant by SQLite's backup API; the other files are watched from
before the commit reads the store until after: when any of them changed, no such rewrite can be
ruled out, so the store's files are all read again (a few times), and a store that keeps moving
is named in a warning. The checks of a store that moved are made again once it is read, and it
is read again if it moved while they ran: what they found before the read may not be what was
stored. A store still moving after STORE_TRIES reads is not judged at all (its files then are
not those stored): the commit names it as damage a checkout may refuse. A FAISS index and its
`.meta.json` sidecar, which an app saves one after the other, are watched alike.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from casnap.capture import SourceFile, fingerprint
from casnap.formats import layouts
from casnap.formats.faiss import faiss_header, read_faiss_header, sidecar_of
from casnap.manifest import FileEntry

# reads of a store whose files moved meanwhile, after the first: a framework rewrites them every
# few seconds at most, so a second read almost always lands between two rewrites
STORE_TRIES = 3

Fingerprint = tuple[int, ...] | None
P = TypeVar("P")  # what the checks of a store find


@dataclass
class Watched:
    """One framework store of a commit: its files, and the fingerprints of those that move."""

    root: str
    sources: list[SourceFile]
    moving: list[SourceFile]
    before: list[Fingerprint] = field(default_factory=list)
    changed: bool = False  # moved since watched: what its checks saw before may not be stored

    def mark(self) -> None:
        self.before = [fingerprint(s.abspath, s.kind) for s in self.moving]

    def moved(self) -> bool:
        return [fingerprint(s.abspath, s.kind) for s in self.moving] != self.before


def watch(sources: Sequence[SourceFile]) -> list[Watched]:
    """The framework stores among sources with files other than databases, and the FAISS
    indexes with a `.meta.json` sidecar (an app saves one, then the other), fingerprinted now
    (call it before the commit checks and reads them)."""
    by_path = {s.path: s for s in sources}
    found = []
    for store in layouts.find_stores(list(by_path)):
        members = [by_path[f] for f in store.files if f in by_path]
        moving = [s for s in members if s.kind != "sqlite"]
        if moving:
            found.append(Watched(store.root, members, moving))
    for src in sources:
        side = by_path.get(sidecar_of(src.path))
        if side is not None and side is not src and src.kind != "sqlite" and _index(src):
            found.append(Watched(src.path, [src, side], [src, side]))
    for w in found:
        w.mark()
    return found


def _index(src: SourceFile) -> bool:
    """Whether src is judged as a FAISS index beside its sidecar (consistency.py): named
    `.index`, or starting with a FAISS header."""
    if src.path.endswith(".index"):
        return True
    return (
        faiss_header(src.head) if src.head is not None else read_faiss_header(src.abspath)
    ) is not None


def forget(watched: Sequence[Watched], gone: Collection[str]) -> None:
    """Leave the files of gone (deleted before the commit read them: not in the snapshot) out
    of the stores watched: a store that lost one is judged again as it is stored."""
    for w in watched:
        if any(s.path in gone for s in w.sources):
            w.sources = [s for s in w.sources if s.path not in gone]
            kept = [i for i, s in enumerate(w.moving) if s.path not in gone]
            w.moving, w.before = [w.moving[i] for i in kept], [w.before[i] for i in kept]
            w.changed = True


def settle(
    watched: Sequence[Watched],
    entries: list[FileEntry],
    read_again: Callable[[SourceFile], tuple[FileEntry, int]],
    judge: Callable[[list[str]], list[P]] | None = None,
) -> tuple[int, list[str], list[tuple[list[str], list[P]]]]:
    """Read again, in entries, the files of every store whose moving files changed since they
    were fingerprinted. With judge (the checks of some files, as they are now), the checks of
    each store that changed are made again once it is read, and the store read again if it
    moved while they ran. (bytes read, warnings for stores still moving after STORE_TRIES
    reads, the files and findings of each store judged again: none for a store still moving,
    whose files as they are now were not stored)."""
    read = 0
    warnings = []
    judged: list[tuple[list[str], list[P]]] = []
    for w in watched:
        files = [s.path for s in w.sources]
        tries = 0
        while True:
            if not w.moved():
                if judge is None or not w.changed:
                    break
                found = judge(files)
                if not w.moved():  # checked as read
                    judged.append((files, found))
                    break
            if tries == STORE_TRIES:
                warnings.append(
                    f"{w.root or '.'}: its files kept changing while they were read; the "
                    "snapshot may hold them from different moments, which its checks could not "
                    "rule out (they would judge files saved since): a checkout's smoke checks "
                    "tell"
                )
                if judge is not None:  # what the checks find now is not what was stored
                    judged.append((files, []))
                break
            tries += 1
            w.changed = True
            w.mark()
            at = {e.path: i for i, e in enumerate(entries)}
            for src in w.sources:
                if src.path in at:
                    entry, n = read_again(src)
                    entries[at[src.path]] = entry
                    read += n
    return read, warnings, judged
