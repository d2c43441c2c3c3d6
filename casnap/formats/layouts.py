"""Which framework stores a data dir holds, and the checks of each, by layout.

A layout is recognised by its file names alone (a `chroma.sqlite3` with segment folders beside
it, a `<name>.faiss` with its `<name>.pkl`, a folder with `docstore.json` or `index_store.json`);
what its files must hold, and how their counts must agree, lives in its own module
(formats/chroma.py, formats/langchain.py, formats/llamaindex.py). FAISS indexes are checked as
FAISS indexes wherever they are (formats/faiss.py); these checks come on top.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

from casnap.formats import Finding, StoreLayout, chroma, langchain, llamaindex


def find_stores(files: Collection[str]) -> list[StoreLayout]:
    """Every store of a known layout among files (relative paths)."""
    return [*chroma.find(files), *langchain.find(files), *llamaindex.find(files)]


def check_store(
    store: StoreLayout, view: Mapping[str, Path], *, deep: bool, private: bool
) -> list[Finding]:
    """The checks of one store, its files found at view[rel]. deep: read every record (a
    restored store); else headers, metadata and counts only (a commit). private: nobody else
    writes the files (a staged copy)."""
    if store.kind == "chroma":
        return chroma.check(store, view, deep, private)
    if store.kind == "langchain":
        return langchain.check(store, view)
    return llamaindex.check(store, view)
