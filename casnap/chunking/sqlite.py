"""SQLite databases: one piece per page, so dedup follows the unit SQLite itself rewrites."""

from __future__ import annotations

from typing import Any

from casnap.chunking.base import FixedChunker
from casnap.formats.sqlite import valid_page_size


class SQLitePageChunker(FixedChunker):
    """Pieces of exactly one database page (the size its header declares: sqlite_page_size)."""

    name = "sqlite"

    def __init__(self, page_size: int) -> None:
        if not valid_page_size(page_size):
            raise ValueError(f"not a SQLite page size: {page_size}")
        super().__init__(page_size)

    def params(self) -> dict[str, Any]:
        return {"page_size": self.size}
