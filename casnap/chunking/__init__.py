"""Chunkers: split a byte stream into pieces for deduplication. They know nothing of storage."""

from __future__ import annotations

from casnap.chunking.base import Chunker, FixedChunker
from casnap.chunking.cdc import FastCDCChunker
from casnap.chunking.select import choose_chunker, make_chunker

__all__ = ["Chunker", "FastCDCChunker", "FixedChunker", "choose_chunker", "make_chunker"]
