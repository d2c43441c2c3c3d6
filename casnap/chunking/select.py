"""Which chunker a file gets, decided from its first bytes; and rebuilding one from a manifest."""

from __future__ import annotations

from typing import Any

from casnap.chunking.base import Chunker, FixedChunker
from casnap.chunking.cdc import FastCDCChunker
from casnap.chunking.faiss import FaissChunker, faiss_kind
from casnap.chunking.sqlite import SQLitePageChunker, sqlite_page_size

#: Bytes of a file's start that choose_chunker needs to see.
HEADER_BYTES = 100


def make_chunker(spec: dict[str, Any]) -> Chunker:
    """Build the chunker a config or manifest describes; ValueError for an unknown one."""
    name = spec.get("name")
    try:
        if name == "fastcdc":
            return FastCDCChunker(int(spec["min"]), int(spec["avg"]), int(spec["max"]))
        if name == "fixed":
            return FixedChunker(int(spec["size"]))
        if name == "sqlite":
            return SQLitePageChunker(int(spec["page_size"]))
        if name == "faiss":
            return FaissChunker(
                vectors=int(spec["vectors"]),
                lists=int(spec["lists"]),
                graph=int(spec["graph"]),
                ids=int(spec["ids"]),
                min_size=int(spec["min"]),
                avg_size=int(spec["avg"]),
                max_size=int(spec["max"]),
            )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"chunker {name!r} lacks a parameter: {exc}") from None
    raise ValueError(f"unknown chunker {name!r}")


def choose_chunker(header: bytes, config: dict[str, Any]) -> Chunker:
    """A fresh chunker for a file whose first bytes are `header`, under the repository's config.

    The choice looks at content only, never at file names: a SQLite header gets page-sized
    pieces, a FAISS index gets layout-aware pieces, anything else the default (FastCDC). A config
    without a "sqlite" or "faiss" entry keeps the default for those files too.
    """
    page_size = sqlite_page_size(header)
    if page_size is not None and "sqlite" in config:
        return SQLitePageChunker(page_size)
    if faiss_kind(header) is not None and "faiss" in config:
        return make_chunker({**config["faiss"], "name": "faiss"})
    return make_chunker(config["default"])
