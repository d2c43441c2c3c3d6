"""Smoke checks of the framework stores among restored files (formats/layouts.py).

Each store of a known layout with a restored file is read record by record: Chroma's HNSW
segment files against their header and their pickled metadata (walked, never unpickled), each
collection's ids against chroma.sqlite3; LangChain's pickled docstore (walked, never unpickled)
against its index; LlamaIndex's JSON files parsed and its id map against its index. Chroma's
segments whose files pass are then loaded by hnswlib in a child process (hnsw_child), when an
hnswlib that reads Chroma's format is installed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Mapping
from pathlib import Path

from casnap.formats import Finding, StoreLayout, chroma, hnsw, layouts
from casnap.hnsw_child import hnswlib_present, probe_segment
from casnap.smoke_report import Check


def layout_checks(
    view: Mapping[str, Path], wanted: Collection[str], staged_dir: Path | None = None
) -> list[Check]:
    """The checks of every store with a file among wanted; view maps every file of the data
    dir, as it will be, to where it is now (files under staged_dir are private copies)."""
    chosen = set(wanted)
    checks: list[Check] = []
    for store in layouts.find_stores(list(view)):
        if not chosen.intersection(store.files):
            continue
        private = staged_dir is not None and _inside(view[store.files[0]], staged_dir)
        try:
            found = layouts.check_store(store, view, deep=True, private=private)
        except (OSError, sqlite3.Error) as exc:
            where = store.files[0]
            checks.append(Check(f"{store.kind}-counts", where, False, f"cannot be read: {exc}"))
            continue
        checks += [Check(f.check, f.path, f.ok, f.detail, f.info) for f in found]
        if store.kind == "chroma":
            checks += _load_segments(store, view, found)
    return checks


def _inside(path: Path, folder: Path) -> bool:
    return Path(path).is_relative_to(folder)


def _load_segments(
    store: StoreLayout, view: Mapping[str, Path], found: list[Finding]
) -> list[Check]:
    """hnsw-load of each segment whose files passed their checks, all four in one folder."""
    if not hnswlib_present():
        return []
    ok = {f.path for f in found if f.ok}
    info = {f.path: f.info for f in found}
    checks = []
    for folder in chroma.segments(store).values():
        rels = [f"{folder}/{name}" for name in hnsw.FILES]
        checked = [f"{folder}/{n}" for n in (hnsw.HEADER, hnsw.DATA, hnsw.LINKS)]
        if not all(r in ok for r in checked) or not all(r in view for r in rels):
            continue
        parents = {Path(view[r]).parent for r in rels}
        if len(parents) != 1:
            continue  # files from several places (a partial checkout): nothing to load as one
        header = info[checked[0]]
        try:
            size = sum(Path(view[r]).stat().st_size for r in rels)
        except OSError:
            continue  # gone meanwhile: its file checks said what there was
        r = probe_segment(parents.pop(), int(header["d"]), int(header["elements"]), size)
        if r.get("ok") is None:
            continue  # no hnswlib that reads Chroma's format: the file checks stand alone
        checks.append(Check("hnsw-load", folder, bool(r["ok"]), str(r.get("detail", ""))))
    return checks
