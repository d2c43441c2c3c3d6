"""Canonical JSON: what json.dumps(sort_keys=True, separators=(",", ":")) writes, quicker.

A snapshot's id is the BLAKE3 of its manifest's canonical JSON, and `casnap copy` compares the ids
of snapshots it encodes again: the bytes must never change. orjson writes a manifest of many files
4-5x quicker than the json module, and the same bytes for printable ASCII without floats; for
anything else (a non-ASCII path, which json.dumps escapes, a float, an integer past 64 bits) the
json module writes it.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def canonical_json(d: dict[str, Any]) -> bytes:
    """json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True), byte for byte:
    by orjson when its output is the same (printable ASCII, no floats; 4-5x quicker on a manifest
    of many files), else by json.dumps itself."""
    try:
        out = orjson.dumps(d, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # integers past 64 bits, lone surrogates, other types
        out = b"\x80"
    if out.isascii() and b"\x7f" not in out and _plain(d):
        return out
    return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()


def _plain(d: dict[str, Any]) -> bool:
    """Whether d holds no float (json and orjson spell some alike, not all): only `chunker`
    holds values of any JSON type; the rest is typed."""
    return plain_chunkers(d.get("files")) and _plain_value(d.get("stats"))


def plain_chunkers(files: Any) -> bool:
    """Whether the `chunker` of every entry of files (a list, else True) holds no float."""
    if type(files) is not list:
        return True
    return all(type(f) is not dict or _plain_chunker(f.get("chunker")) for f in files)


_PLAIN_SCALARS = frozenset([str, int, bool, type(None)])
_STR = frozenset([str])


def _plain_chunker(c: Any) -> bool:
    """_plain_value of one entry's chunker; one of scalars alone (nearly every one) told at
    once."""
    if type(c) is dict and _STR.issuperset(map(type, c)):
        if _PLAIN_SCALARS.issuperset(map(type, c.values())):
            return True
    return _plain_value(c)


# deeper values are never taken as plain (the json module writes them): what casnap writes is
# flat, and a crafted manifest nested hundreds deep must not exhaust the stack here
_PLAIN_DEPTH = 4


def _plain_value(v: Any, depth: int = 0) -> bool:
    t = type(v)
    if t is str or t is int or t is bool or v is None:
        return True
    if depth >= _PLAIN_DEPTH:
        return False
    if t is dict:
        return all(type(k) is str and _plain_value(x, depth + 1) for k, x in v.items())
    if t is list or t is tuple:
        return all(_plain_value(x, depth + 1) for x in v)
    return False
