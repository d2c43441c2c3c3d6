"""Which chunker a file gets, decided from its first bytes; and rebuilding one from a manifest."""

from __future__ import annotations

from typing import Any

from casnap.chunking.base import Chunker, FixedChunker
from casnap.chunking.cdc import FastCDCChunker


def make_chunker(spec: dict[str, Any]) -> Chunker:
    """Build the chunker a config or manifest describes; ValueError for an unknown one."""
    name = spec.get("name")
    if name == "fastcdc":
        return FastCDCChunker(int(spec["min"]), int(spec["avg"]), int(spec["max"]))
    if name == "fixed":
        return FixedChunker(int(spec["size"]))
    raise ValueError(f"unknown chunker {name!r}")


def choose_chunker(header: bytes, config: dict[str, Any]) -> Chunker:
    """The chunker for a file whose first bytes are `header`, under the repository's config."""
    return make_chunker(config["default"])
