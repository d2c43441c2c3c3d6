"""The repository config: what a new repository gets, and the checks every opened one passes.

The config fixes how a repository stores data (chunker parameters, pack and frame sizes, zstd
levels), so an existing repository keeps deduplicating whatever the defaults of a later casnap.
Every value is checked against the limits in constants.py when a repository is opened: a damaged
or hostile config is an IntegrityError before anything is read or written with it.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from casnap.constants import (
    CDC_AVG,
    CDC_MAX,
    CDC_MIN,
    FAISS_CDC_GRAPH,
    FAISS_CDC_IDS,
    FAISS_CDC_LISTS,
    FAISS_CDC_VECTORS,
    FAISS_GRAPH_BLOCK,
    FAISS_IDS_BLOCK,
    FAISS_LIST_BLOCK,
    FAISS_VECTOR_BLOCK,
    FLOAT_ZSTD_LEVEL,
    FORMAT_VERSION,
    FRAME_TARGET,
    GROUP_FLOATS,
    MAX_FRAME_SIZE,
    MAX_PACK_TARGET,
    PACK_TARGET_SIZE,
    ZSTD_LEVEL,
)
from casnap.errors import CasnapError, IntegrityError, InvalidArgument, UnsupportedFormat

# zstd's level range (ZSTD_minCLevel() .. ZSTD_maxCLevel()): a config outside it is damaged.
MIN_ZSTD_LEVEL, MAX_ZSTD_LEVEL = -(1 << 17), 22


def now_iso() -> str:
    """The current time as snapshots and configs record it (UTC, microseconds)."""
    return iso_time(dt.datetime.now(dt.UTC))


def iso_time(t: dt.datetime) -> str:
    """A time as snapshots record it (UTC, microseconds); a naive time is local time."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> dt.datetime:
    """The datetime of a snapshot time string (fromisoformat: strptime costs ~10 us a call and
    an import of its own)."""
    if not text.endswith("Z"):
        raise ValueError(f"time {text[:80]!r} is not in UTC")
    return dt.datetime.fromisoformat(text[:-1]).replace(tzinfo=dt.UTC)


# A snapshot's time is never before the Unix epoch: a data dir has no copy older, a time before it
# is a typo, and older ones do not always survive (strftime writes years below 1000 without their
# leading zeros, local time cannot reach before year 1, some systems refuse negative timestamps).
EARLIEST_TIME = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def snapshot_time(t: dt.datetime) -> str:
    """t (naive: local time) as a snapshot records it; InvalidArgument before EARLIEST_TIME or
    in the future (compared as times)."""
    try:
        aware = t.astimezone(dt.UTC)
    except (ValueError, OverflowError) as exc:  # local year 1 lies before year 1 in UTC
        raise InvalidArgument(f"snapshot time {t} lies before 1970") from exc
    if aware < EARLIEST_TIME:
        raise InvalidArgument(f"snapshot time {iso_time(aware)} lies before 1970")
    if aware > dt.datetime.now(dt.UTC):
        raise InvalidArgument(f"snapshot time {iso_time(aware)} lies in the future")
    return iso_time(aware)


def fixed_faiss_chunker() -> dict[str, Any]:
    """The `faiss` chunker of repositories made before `faiss-cdc`: fixed blocks in arrays."""
    return {
        "name": "faiss",
        "vectors": FAISS_VECTOR_BLOCK,
        "lists": FAISS_LIST_BLOCK,
        "graph": FAISS_GRAPH_BLOCK,
        "ids": FAISS_IDS_BLOCK,
        "min": CDC_MIN,
        "avg": CDC_AVG,
        "max": CDC_MAX,
    }


def default_config() -> dict[str, Any]:
    """The config a new repository gets."""
    return {
        "casnap_format": FORMAT_VERSION,
        "id": uuid.uuid4().hex,
        "created": now_iso(),
        "chunker": {
            "default": {"name": "fastcdc", "min": CDC_MIN, "avg": CDC_AVG, "max": CDC_MAX},
            "sqlite": {"name": "sqlite"},
            "faiss": {
                "name": "faiss-cdc",
                "vectors": list(FAISS_CDC_VECTORS),
                "lists": list(FAISS_CDC_LISTS),
                "ids": list(FAISS_CDC_IDS),
                "graph": list(FAISS_CDC_GRAPH),
                "min": CDC_MIN,
                "avg": CDC_AVG,
                "max": CDC_MAX,
            },
            "hnsw": {"name": "records", "max": CDC_MAX},
        },
        "pack_target": PACK_TARGET_SIZE,
        "zstd_level": ZSTD_LEVEL,
        "float_level": FLOAT_ZSTD_LEVEL,
        "frame_target": FRAME_TARGET,
        "group_floats": GROUP_FLOATS,
    }


def encode_config(cfg: dict[str, Any]) -> bytes:
    """The stored form of a config (indented JSON, keys sorted)."""
    return json.dumps(cfg, indent=2, sort_keys=True).encode() + b"\n"


def parse_config(raw: bytes, location: str) -> dict[str, Any]:
    """The config stored at location, checked: UnsupportedFormat for another format version,
    IntegrityError for a damaged one or a value past the limits."""
    # here, not at the top: the chunkers are only built to check them (a command that opens no
    # repository, such as --help, never needs them)
    from casnap.chunking import choose_chunker, make_chunker
    from casnap.formats.faiss import FAISS_SAMPLE_HEADER
    from casnap.formats.hnsw import HNSW_SAMPLE_RECORDS
    from casnap.formats.sqlite import SQLITE_SAMPLE_HEADER

    try:
        cfg = json.loads(raw)
        version = _field(cfg, "casnap_format")
        if not isinstance(version, int):
            raise TypeError("format version is not an integer")
        if version > FORMAT_VERSION:
            raise UnsupportedFormat(
                f"repository {location} has format {version}; this casnap reads up to "
                f"{FORMAT_VERSION}: upgrade casnap"
            )
        if version < FORMAT_VERSION:
            raise UnsupportedFormat(
                f"repository {location} has format {version}, written by a pre-release casnap; "
                f"this casnap reads format {FORMAT_VERSION}: create a new repository and commit "
                "again"
            )
        chunkers = _field(cfg, "chunker")
        chunker = _field(cfg, "chunker", "default")
        if not isinstance(chunker, dict):
            raise TypeError("the default chunker is not an object")
        make_chunker(chunker)
        choose_chunker(b"", chunkers)
        for sample in (SQLITE_SAMPLE_HEADER, FAISS_SAMPLE_HEADER):
            choose_chunker(sample, chunkers)
        choose_chunker(b"", chunkers, HNSW_SAMPLE_RECORDS)
        sizes = {
            "pack_target": (_field(cfg, "pack_target"), 1, MAX_PACK_TARGET),
            "frame_target": (cfg.get("frame_target", 0), 0, MAX_FRAME_SIZE),
        }
        for name, (value, low, high) in sizes.items():
            if not low <= int(value) <= high:
                raise ValueError(f"{name} {value} is outside the limits [{low}, {high}]")
        levels = {"zstd_level": _field(cfg, "zstd_level"), "float_level": cfg.get("float_level", 0)}
        for name, level in levels.items():
            if not MIN_ZSTD_LEVEL <= int(level) <= MAX_ZSTD_LEVEL:
                raise ValueError(f"{name} {level} is out of range")
    except CasnapError:
        raise
    except json.JSONDecodeError as exc:
        raise IntegrityError(f"{location}/config is damaged: it is not JSON ({exc})") from exc
    except (ValueError, KeyError, TypeError, RecursionError, OverflowError) as exc:
        # OverflowError: a size or level of infinity (JSON's Infinity) cannot be an integer
        raise IntegrityError(f"{location}/config is damaged: {_in_words(exc)}") from exc
    return cfg


# What the fields a config must hold are, for a line saying one is missing.
FIELDS = {
    "casnap_format": "the format version",
    "chunker": "the chunker section",
    "chunker.default": "the chunker of plain files",
    "pack_target": "the pack size",
    "zstd_level": "the compression level",
}


def _field(cfg: Any, *path: str) -> Any:
    """cfg[path[0]][path[1]]...; a ValueError saying in words which field is missing, or which
    one is not a JSON object, where a KeyError would say only the key."""
    value = cfg
    for n, key in enumerate(path):
        if not isinstance(value, dict):
            raise ValueError(f"{_named(path[:n])} is not a JSON object")
        if key not in value:
            raise ValueError(f"{_named(path[: n + 1])} is missing")
        value = value[key]
    return value


def _named(path: tuple[str, ...]) -> str:
    """A field in words, with its name: `the pack size (pack_target)`; `it`: the config."""
    if not path:
        return "it"
    name = ".".join(path)
    return f"{FIELDS.get(name, 'the field')} ({name})"


def _in_words(exc: BaseException) -> str:
    """What a parse failure says: a KeyError's text is the bare key, said here as the field
    that is missing."""
    if isinstance(exc, KeyError) and exc.args:
        return f"the field {exc.args[0]!r} is missing"
    return str(exc)
