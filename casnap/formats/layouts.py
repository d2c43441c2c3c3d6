"""Which framework stores a data dir holds, and the checks of each, by layout.

A layout is recognised here by its file names alone (a `chroma.sqlite3` with segment folders
beside it, or Chroma's segment folders without it; a `<name>.faiss` with its `<name>.pkl`; a
folder with `docstore.json` or `index_store.json`); what its files must hold, and how their
counts must agree, lives in its own module (formats/chroma.py, formats/langchain.py,
formats/llamaindex.py), loaded only to check a store found. FAISS indexes are checked as FAISS
indexes wherever they are (formats/faiss.py); these checks come on top.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Mapping
from pathlib import Path, PurePosixPath

from casnap.formats import (
    CHROMA_DATABASE,
    CHROMA_METADATA,
    LANGCHAIN_DOCSTORE,
    LANGCHAIN_INDEX,
    LLAMAINDEX_DOCSTORE,
    LLAMAINDEX_INDEX_STORE,
    Finding,
    StoreLayout,
    hnsw,
)

_CHROMA_SEGMENT_FILES = (*hnsw.FILES, CHROMA_METADATA)


def find_stores(files: Collection[str]) -> list[StoreLayout]:
    """Every store of a known layout among files (relative paths)."""
    return [*_chroma_stores(files), *_langchain_stores(files), *_llamaindex_stores(files)]


def _chroma_stores(files: Collection[str]) -> list[StoreLayout]:
    """Every `chroma.sqlite3` among files, with the segment files in the folders beside it."""
    stores = []
    for rel in sorted(files):
        if not rel.endswith(CHROMA_DATABASE):  # cheap first: a data dir may hold many thousand
            continue
        p = PurePosixPath(rel)
        if p.name != CHROMA_DATABASE:
            continue
        root = "" if p.parent.as_posix() == "." else p.parent.as_posix()
        prefix = f"{root}/" if root else ""
        segs = []
        for other in files:
            if not other.startswith(prefix):
                continue
            parts = other[len(prefix) :].split("/")
            if len(parts) == 2 and parts[1] in _CHROMA_SEGMENT_FILES:
                segs.append(other)
        stores.append(StoreLayout("chroma", root, (rel, *sorted(segs))))
    return stores + _chroma_without_database(files, {s.root for s in stores})


def _chroma_without_database(files: Collection[str], found: Collection[str]) -> list[StoreLayout]:
    """Every folder holding Chroma's segment folders (an `index_metadata.pickle` among
    hnswlib's files) without the `chroma.sqlite3` beside them, with those segment files: a
    store that lost its database, which its check names."""
    if not any(rel.endswith(CHROMA_METADATA) for rel in files):  # cheap first, as above
        return []
    roots: dict[str, list[str]] = {}
    for rel in files:
        p = PurePosixPath(rel)
        if p.name in _CHROMA_SEGMENT_FILES and len(p.parts) >= 2:
            root = p.parent.parent.as_posix()
            roots.setdefault("" if root == "." else root, []).append(rel)
    return [
        StoreLayout("chroma", root, tuple(sorted(segs)))
        for root, segs in sorted(roots.items())
        if root not in found and any(PurePosixPath(r).name == CHROMA_METADATA for r in segs)
    ]


def _langchain_stores(files: Collection[str]) -> list[StoreLayout]:
    """Every `<name>.faiss` with a `<name>.pkl` beside it among files; and every `<name>.pkl`
    without its `<name>.faiss`, alone: a LangChain store that lost its index, if its pickle is
    one (its check tells, and says nothing of any other pickle)."""
    present = set(files)
    stores = []
    for rel in sorted(present):
        if rel.endswith(LANGCHAIN_INDEX):
            pkl = rel[: -len(LANGCHAIN_INDEX)] + LANGCHAIN_DOCSTORE
            if pkl in present:
                stores.append(StoreLayout("langchain", _parent(rel), (rel, pkl)))
        elif rel.endswith(LANGCHAIN_DOCSTORE):
            if rel[: -len(LANGCHAIN_DOCSTORE)] + LANGCHAIN_INDEX not in present:
                stores.append(StoreLayout("langchain", _parent(rel), (rel,)))
    return stores


def _parent(rel: str) -> str:
    parent = PurePosixPath(rel).parent.as_posix()
    return "" if parent == "." else parent


def _llamaindex_stores(files: Collection[str]) -> list[StoreLayout]:
    """Every folder holding a `docstore.json` or `index_store.json`, with the JSON files (and
    FAISS vector stores named `.json`) directly in it."""
    folders: dict[str, list[str]] = {}
    for rel in files:
        if not rel.endswith(".json"):  # cheap first: a data dir may hold many thousand files
            continue
        p = PurePosixPath(rel)
        parent = "" if p.parent.as_posix() == "." else p.parent.as_posix()
        if p.suffix == ".json":
            folders.setdefault(parent, []).append(rel)
    stores = []
    for root, rels in sorted(folders.items()):
        names = {PurePosixPath(r).name for r in rels}
        if LLAMAINDEX_DOCSTORE in names or LLAMAINDEX_INDEX_STORE in names:
            stores.append(StoreLayout("llamaindex", root, tuple(sorted(rels))))
    return stores


def check_store(
    store: StoreLayout, view: Mapping[str, Path], *, deep: bool, private: bool
) -> list[Finding]:
    """The checks of one store, its files found at view[rel]. deep: read every record (a
    restored store); else headers, metadata, counts and cheap scans only (a commit). private:
    nobody else writes the files (a staged copy). A value the checks of a layout did not
    foresee in a damaged or hostile file is a failed check too, never an error of the program."""
    from casnap.formats import chroma, langchain, llamaindex  # only for a store found

    try:
        if store.kind == "chroma":
            return chroma.check(store, view, deep, private)
        if store.kind == "langchain":
            return langchain.check(store, view)
        return llamaindex.check(store, view)
    except _UNFORESEEN as exc:
        detail = f"cannot be checked: {type(exc).__name__}: {str(exc)[:200]}"
        return [Finding(f"{store.kind}-counts", store.files[0], False, detail)]


# what reading a damaged file may raise where a check expects a sound value (a wrong type, an
# out-of-range number, nesting too deep, a size too large to allocate)
_UNFORESEEN = (
    ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError,
    MemoryError, struct.error,
)  # fmt: skip
