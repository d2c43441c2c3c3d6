"""Which framework stores a data dir holds, and the checks of each, by layout.

A layout is recognised by its file names alone (a `chroma.sqlite3` with segment folders beside
it, a `<name>.faiss` with its `<name>.pkl`, a folder with `docstore.json` or `index_store.json`);
what its files must hold, and how their counts must agree, lives in its own module
(formats/chroma.py, formats/langchain.py, formats/llamaindex.py). FAISS indexes are checked as
FAISS indexes wherever they are (formats/faiss.py); these checks come on top.
"""

from __future__ import annotations

import struct
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
    restored store); else headers, metadata, counts and cheap scans only (a commit). private:
    nobody else writes the files (a staged copy). A value the checks of a layout did not
    foresee in a damaged or hostile file is a failed check too, never an error of the program."""
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
