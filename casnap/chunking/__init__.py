"""Chunkers: split a byte stream into pieces for deduplication. They know nothing of storage."""

from __future__ import annotations

from casnap.chunking.base import FLOAT32, GENERIC, Block, Chunker, FixedChunker
from casnap.chunking.cdc import FastCDCChunker
from casnap.chunking.faiss import FaissCDCChunker, FaissChunker
from casnap.chunking.select import choose_chunker, make_chunker
from casnap.chunking.sqlite import SQLitePageChunker

__all__ = [
    "FLOAT32",
    "GENERIC",
    "Block",
    "Chunker",
    "FaissCDCChunker",
    "FaissChunker",
    "FastCDCChunker",
    "FixedChunker",
    "SQLitePageChunker",
    "choose_chunker",
    "make_chunker",
]
