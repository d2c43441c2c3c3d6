"""The file formats casnap recognises by content, and the stores frameworks lay out in a data dir.

One module per format owns its magic numbers, header layout and "is this a database / an index"
questions (formats/sqlite.py, formats/faiss.py); one module per framework layout knows which
files make up one of its stores and how their counts must agree (formats/chroma.py,
formats/langchain.py, formats/llamaindex.py, found by formats/layouts.py); every other module
asks them. They answer from a file's first SNIFF_BYTES, which sniff() reads once for all of them,
or from what a layout module reads of a store; a Finding is one answer about one file.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from casnap.constants import SNIFF_BYTES

# The names that make a framework's store: formats/layouts.py finds stores by them alone, so a
# data dir without one never loads the modules that read what such files hold.
CHROMA_DATABASE = "chroma.sqlite3"  # with segment folders beside it
CHROMA_METADATA = "index_metadata.pickle"  # in a segment folder, with hnswlib's files
LANGCHAIN_INDEX = ".faiss"  # <name>.faiss with its <name>.pkl beside it
LANGCHAIN_DOCSTORE = ".pkl"
LLAMAINDEX_DOCSTORE = "docstore.json"  # either marks a folder as a persist dir
LLAMAINDEX_INDEX_STORE = "index_store.json"


def sniff(path: str | os.PathLike[str]) -> bytes:
    """The first SNIFF_BYTES of a file (all of a shorter one); b"" when it cannot be read or
    is no regular file (opened without waiting: a FIFO would wait for a writer forever).
    Through the descriptor calls alone: a scan of many files reads each one's head, and a
    buffered file object cost three times the reading."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return b""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        head = b""
        while len(head) < SNIFF_BYTES and (more := os.read(fd, SNIFF_BYTES - len(head))):
            head += more
        return head
    except OSError:
        return b""
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Finding:
    """One check of one file (or folder) of a store: its name, the relative path, whether it
    passed, and what was found (one line, and the figures behind it)."""

    check: str
    path: str
    ok: bool
    detail: str
    info: dict[str, Any] = field(default_factory=dict)


class StoreLayout(NamedTuple):
    """The files of one store a framework keeps in the data dir: its kind (`chroma`,
    `langchain`, `llamaindex`), its folder (relative, "" for the data dir itself) and the files
    the layout knows, relative to the data dir."""

    kind: str
    root: str
    files: tuple[str, ...]

    def rel(self, name: str) -> str:
        """The relative path of a file of the store's folder."""
        return f"{self.root}/{name}" if self.root else name
