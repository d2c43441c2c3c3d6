"""The file formats casnap recognises by content: SQLite databases and FAISS indexes.

One module per format owns its magic numbers, header layout and "is this a database / an index"
questions (formats/sqlite.py, formats/faiss.py); every other module asks them. They answer from a
file's first SNIFF_BYTES, which sniff() reads once for all of them.
"""

from __future__ import annotations

import os

from casnap.constants import SNIFF_BYTES


def sniff(path: str | os.PathLike[str]) -> bytes:
    """The first SNIFF_BYTES of a file (all of a shorter one); b"" when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read(SNIFF_BYTES)
    except OSError:
        return b""
