"""Which chunker a file gets, decided from its first bytes; and rebuilding one from a manifest."""

from __future__ import annotations

from typing import Any

from casnap.chunking.base import Chunker, FixedChunker
from casnap.chunking.cdc import FASTCDC_SIZES, FastCDCChunker
from casnap.chunking.faiss import CDC_KINDS, FaissCDCChunker, FaissChunker
from casnap.chunking.records import RecordChunker
from casnap.chunking.sqlite import SQLitePageChunker
from casnap.constants import FAISS_CHUNKERS, MAX_CHUNK_SIZE, MIN_CHUNKER_SIZE
from casnap.formats.faiss import faiss_kind
from casnap.formats.sqlite import sqlite_page_size

# The limits of a chunker's sizes: [MIN_CHUNKER_SIZE, MAX_CHUNK_SIZE] (a 1-byte chunker would
# make a commit hold far more bookkeeping than data; a chunk past the limit is one no reader
# accepts), narrowed for FastCDC's min, avg and max to what it takes, so each size has one range.
SIZE_LIMITS = (MIN_CHUNKER_SIZE, MAX_CHUNK_SIZE)
CDC_LIMITS = {
    label: (max(low, MIN_CHUNKER_SIZE), min(high, MAX_CHUNK_SIZE))
    for label, (low, high) in FASTCDC_SIZES.items()
}


def make_chunker(spec: dict[str, Any]) -> Chunker:
    """Build the chunker a config describes; ValueError for an unknown one, or for a size that
    is no integer (JSON's true is none, nor is 1.5) or lies outside its limits (SIZE_LIMITS;
    CDC_LIMITS for FastCDC's sizes)."""
    name = spec.get("name")
    try:
        if name == "fastcdc":
            sizes = _sizes(spec, "min", "avg", "max")
            if not sizes["min"] <= sizes["avg"] <= sizes["max"]:
                raise ValueError(f"chunker {name!r} needs min <= avg <= max")
            return FastCDCChunker(sizes["min"], sizes["avg"], sizes["max"])
        if name == "fixed":
            return FixedChunker(_sizes(spec, "size")["size"])
        if name == "sqlite":
            return SQLitePageChunker(int(spec["page_size"]))
        if name == "faiss":
            sizes = _sizes(spec, "vectors", "lists", "graph", "ids", "min", "avg", "max")
            if not sizes["min"] <= sizes["avg"] <= sizes["max"]:
                raise ValueError(f"chunker {name!r} needs min <= avg <= max")
            return FaissChunker(
                vectors=sizes["vectors"],
                lists=sizes["lists"],
                graph=sizes["graph"],
                ids=sizes["ids"],
                min_size=sizes["min"],
                avg_size=sizes["avg"],
                max_size=sizes["max"],
            )
        if name == "faiss-cdc":
            sizes = _sizes(spec, "min", "avg", "max")
            if not sizes["min"] <= sizes["avg"] <= sizes["max"]:
                raise ValueError(f"chunker {name!r} needs min <= avg <= max")
            arrays = {kind: _triple(spec, kind) for kind in CDC_KINDS}
            return FaissCDCChunker(arrays, sizes["min"], sizes["avg"], sizes["max"])
        if name == "records":
            high = _size(spec, "max", spec["max"])
            if high % 4:  # pieces of 4-byte words (records.py)
                raise ValueError(f"chunker {name!r}: max {high} is not a multiple of 4")
            return RecordChunker(int(spec["size"]), int(spec["split"]), high)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"chunker {name!r} lacks a parameter: {exc}") from exc
    raise ValueError(f"unknown chunker {name!r}")


def _sizes(spec: dict[str, Any], *names: str) -> dict[str, int]:
    """The named size parameters of a chunker spec, each checked against its limits (min, avg
    and max are FastCDC's)."""
    limits = {name: CDC_LIMITS.get(name, SIZE_LIMITS) for name in names}
    return {name: _size(spec, name, spec[name], limits[name]) for name in names}


def _size(spec: dict[str, Any], label: str, raw: Any, limits: tuple[int, int] = SIZE_LIMITS) -> int:
    """One size parameter: an integer within limits."""
    if type(raw) is not int:
        shown = repr(raw) if len(repr(raw)) <= 40 else repr(raw)[:37] + "..."
        raise ValueError(f"chunker {spec.get('name')!r}: {label} {shown} is not an integer")
    low, high = limits
    if not low <= raw <= high:
        raise ValueError(
            f"chunker {spec.get('name')!r}: {label} {raw} is outside the limits [{low}, {high}]"
        )
    return raw


def _triple(spec: dict[str, Any], name: str) -> tuple[int, int, int]:
    """A [min, avg, max] size parameter: each within the limits, in order, max a multiple of 8."""
    value = spec[name]
    if not isinstance(value, list) or len(value) != 3:
        raise ValueError(f"chunker {spec.get('name')!r}: {name} must be [min, avg, max]")
    low, avg, high = (_size(spec, name, v) for v in value)
    if not low <= avg <= high or high % 8:
        raise ValueError(
            f"chunker {spec.get('name')!r}: {name} needs min <= avg <= max, max a multiple of 8"
        )
    return low, avg, high


#: The smallest record body worth a piece of its own: below it, records are cut by content.
MIN_RECORD_BODY = 512


def choose_chunker(
    header: bytes, config: dict[str, Any], records: tuple[int, int] | None = None
) -> Chunker:
    """A fresh chunker for a file whose first bytes (SNIFF_BYTES of them) are `header`, under the
    repository's config.

    The choice looks at content: a SQLite header gets page-sized pieces, a FAISS index gets
    layout-aware pieces (`faiss-cdc` in new repositories, `faiss` in those made before it),
    anything else the default (FastCDC). A file without a header of its own but whose folder
    describes it as records of (size, split) bytes (hnswlib's data_level0.bin, described by its
    header.bin) gets the `records` chunker when its bodies are big enough. A config without a
    "sqlite", "faiss" or "hnsw" entry keeps the default for those files too.
    """
    page_size = sqlite_page_size(header)
    if page_size is not None and "sqlite" in config:
        return SQLitePageChunker(page_size)
    if faiss_kind(header) is not None and "faiss" in config:
        spec = {"name": "faiss", **config["faiss"]}
        if spec["name"] not in FAISS_CHUNKERS:
            raise ValueError(f"the faiss entry names chunker {spec['name']!r}")
        return make_chunker(spec)
    if records is not None and "hnsw" in config:
        spec = {"name": "records", **config["hnsw"]}
        if spec["name"] != "records":
            raise ValueError(f"the hnsw entry names chunker {spec['name']!r}")
        size, split = records
        if size - split >= MIN_RECORD_BODY:
            return make_chunker({**spec, "size": size, "split": split})
    return make_chunker(config["default"])
