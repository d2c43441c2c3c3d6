"""Commit-time consistency of FAISS indexes and of the framework stores a data dir holds.

A commit reports, before it reads anything else, what a checkout's smoke checks would find wrong
with the files it is about to store, so both judge a snapshot alike (a framework store whose
files changed while the commit read them is checked again once read, `rejudged`: what was
found before is not what was stored):

- refused: a FAISS index shorter than its header promises (a write cut short); a store of a
  known layout (formats/layouts.py) whose files are damaged or whose counts disagree (Chroma's
  HNSW segments against chroma.sqlite3, LangChain's index against its pickled docstore,
  LlamaIndex's index against its id map). A checkout refuses such a snapshot (exit 9), so the
  commit says so even with -q.
- warned: a `.meta.json` sidecar (an application's convention, not a format casnap owns) that
  is not JSON or states another `ntotal` than its index holds. A checkout of the pair warns too.

An index without a sidecar is nothing to report. With --strict either kind refuses the commit.
Headers, metadata and counts (and a numpy scan of Chroma's data_level0.bin, which shows a
stale header.bin): a commit never loads an index nor unpickles anything.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from casnap import capture
from casnap.formats import layouts
from casnap.formats.faiss import (
    SIDECAR_SUFFIX,
    faiss_header,
    file_count_problem,
    file_shortfall,
    read_faiss_header,
    read_sidecar,
    sidecar_ntotal,
    sidecar_of,
)


class Problem(NamedTuple):
    """One consistency problem: its line (`<path>: ...`), whether a checkout's smoke checks
    refuse a snapshot holding it (else they warn of it), and the file (or store folder) it is
    about."""

    text: str
    refused: bool
    path: str = ""


def consistency_problems(
    root: Path,
    files: Iterable[str],
    heads: Mapping[str, bytes] | None = None,
    scope: Sequence[str] = (),
) -> list[Problem]:
    """The problems of the FAISS indexes and framework stores among `files` (relative to root),
    from header fields, metadata and counts. heads: the first bytes of files the caller read
    already (b"" for one it knows is no FAISS index: statcache.not_faiss), so they are not read
    again. scope: the paths a commit of some paths takes (all when empty); a file of a store
    found missing that lies outside them, in root, is not missing: that commit leaves it where
    it is, and a checkout of those paths into the data dir finds it there (storeparts.py)."""
    rels = sorted(set(files))
    known = heads or {}
    files_in = _Listings(root)
    problems = [p for rel in rels for p in _faiss_problems(root, rel, known.get(rel), files_in)]
    view = _Under(root, frozenset(rels))
    for store in layouts.find_stores(rels):
        try:
            found = layouts.check_store(store, view, deep=False, private=False)
        except (OSError, sqlite3.Error) as exc:  # a file that changed under the check
            where = store.root or "."
            problems.append(Problem(f"{where}: cannot be checked: {exc}", True, store.files[0]))
            continue
        problems += [
            Problem(f"{f.path}: {f.detail}", True, f.path)
            for f in found
            if not f.ok and not _left_where_it_is(root, f.path, rels, scope)
        ]
    return problems


def _left_where_it_is(root: Path, rel: str, rels: Collection[str], scope: Sequence[str]) -> bool:
    """Whether rel, which a store's check found missing among rels, is a file in root a commit
    of the paths scope does not take (as opposed to one excluded, or gone)."""
    if not scope or rel in rels or capture.in_scope(rel, scope):
        return False
    return os.path.lexists(root / rel)


def without(root: Path, problems: list[Problem], gone: Collection[str]) -> list[Problem]:
    """problems as if the files of gone (deleted before the commit read them: not in the
    snapshot) had never been there: those about them dropped, and the checks of an index whose
    sidecar is among them made again without it (the stores that lost one are judged again as
    they are read: instants.forget)."""
    alone = {p.path for p in problems if p.path not in gone and sidecar_of(p.path) in gone}
    listing = _Listings(root, absent=gone)
    return [p for p in problems if p.path not in gone and p.path not in alone] + [
        p for rel in sorted(alone) for p in _faiss_problems(root, rel, None, listing)
    ]


def rejudged(
    problems: list[Problem], judged: Iterable[tuple[Collection[str], list[Problem]]]
) -> list[Problem]:
    """problems, with those about the files of each store judged again (its files and what its
    checks found then: a store that changed while a commit read it, checked as stored) in place
    of what was found before."""
    for files, found in judged:
        problems = [p for p in problems if p.path not in files] + found
    return problems


class _Under(Mapping[str, Path]):
    """root / rel for each of rels, made when a store's check asks for it: a data dir of many
    files holds few stores, and a Path per file cost more than the checks."""

    def __init__(self, root: Path, rels: frozenset[str]) -> None:
        self.root = root
        self.rels = rels

    def __getitem__(self, rel: str) -> Path:
        if rel not in self.rels:
            raise KeyError(rel)
        return self.root / rel

    def __contains__(self, rel: object) -> bool:
        return rel in self.rels

    def __iter__(self) -> Iterator[str]:
        return iter(self.rels)

    def __len__(self) -> int:
        return len(self.rels)


class _Listings:
    """Whether a sidecar is a file (Path.is_file: a symbolic link to one counts), from one
    listing of each folder asked about: a stat per file, for a sidecar most files never have,
    cost more than every other check of a commit of many small files."""

    def __init__(self, root: Path, absent: Collection[str] = ()) -> None:
        self.root = root
        self.absent = absent  # taken for missing (deleted before the commit read them)
        self._sidecars: dict[str, frozenset[str]] = {}

    def is_file(self, rel: str) -> bool:
        folder, _, name = rel.rpartition("/")
        names = self._sidecars.get(folder)
        if names is None:
            names = self._sidecars[folder] = self._list(folder)
        return name in names and rel not in self.absent

    def _list(self, folder: str) -> frozenset[str]:
        """The names of the sidecar-named files in folder (none when it cannot be listed)."""
        try:
            with os.scandir(self.root / folder) as found:
                return frozenset(
                    e.name for e in found if e.name.endswith(SIDECAR_SUFFIX) and _is_file(e)
                )
        except OSError:
            return frozenset()


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _faiss_problems(root: Path, rel: str, head: bytes | None, files_in: _Listings) -> list[Problem]:
    """A FAISS index shorter than its header promises; a sidecar beside it that disagrees."""
    header = read_faiss_header(root / rel) if head is None else faiss_header(head)
    side = sidecar_of(rel)
    if header is None and head == b"" and side != rel and files_in.is_file(side):
        # taken for no index by its entry (an index whose layout the FAISS chunker does not
        # parse is chunked by content too), yet a sidecar vouches for one: its header is read
        header = read_faiss_header(root / rel)
    if header is None and not rel.endswith(".index"):
        return []
    problems = []
    short = file_shortfall(root / rel) if header is not None else None
    if short is not None:
        problems.append(Problem(f"{rel}: FAISS index is {short}", True, rel))
    elif header is not None and (miscount := file_count_problem(root / rel)) is not None:
        problems.append(Problem(f"{rel}: FAISS index cannot be read: {miscount}", True, rel))
    if side == rel or not files_in.is_file(side):
        return problems
    try:
        expected = sidecar_ntotal(read_sidecar(root / side))
    except ValueError as exc:
        return [*problems, Problem(f"{rel}: sidecar {side}: {exc}", False, rel)]
    if expected is None:
        return problems
    if header is None or header.ntotal is None:
        text = (
            f"{rel}: cannot read the vector count from its header ({side} says ntotal {expected})"
        )
        problems.append(Problem(text, True, rel))
    elif header.ntotal != expected:
        text = f"{rel}: {side} says ntotal {expected} but the index holds {header.ntotal}"
        problems.append(Problem(text, False, rel))
    return problems
