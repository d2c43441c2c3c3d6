"""The repository config: what a new repository gets, and the checks every opened one passes.

The config fixes how a repository stores data (chunker parameters, pack and frame sizes, zstd
levels), so an existing repository keeps deduplicating whatever the defaults of a later casnap.
Every value is checked against the limits in constants.py when a repository is opened: a damaged
or hostile config is an IntegrityError before anything is read or written with it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from typing import Any, cast

from casnap.constants import (
    CDC_AVG,
    CDC_MAX,
    CDC_MIN,
    FAISS_CDC_GRAPH,
    FAISS_CDC_IDS,
    FAISS_CDC_LISTS,
    FAISS_CDC_VECTORS,
    FAISS_CHUNKERS,
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
from casnap.manifestfields import time_field

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


def new_config(given: dict[str, Any] | None) -> dict[str, Any]:
    """The config init stores: the one given (checked as every open checks it: InvalidArgument
    when no casnap could open a repository with it), else default_config()."""
    if given is None:
        return default_config()
    try:
        check_config(given)
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidArgument(f"a repository cannot be made with this config: {exc}") from exc
    return given


def encode_config(cfg: dict[str, Any]) -> bytes:
    """The stored form of a config (indented JSON, keys sorted)."""
    return json.dumps(cfg, indent=2, sort_keys=True).encode() + b"\n"


def parse_config(raw: bytes, location: str) -> dict[str, Any]:
    """The config stored at location, checked: UnsupportedFormat for another format version,
    IntegrityError for a damaged one (a field missing, of another JSON type, unknown to this
    format, or a value past the limits)."""
    try:
        cfg = json.loads(raw)
        version = _field(cfg, "casnap_format")
        if type(version) is not int:  # JSON's true is no version, nor is 2.0
            raise TypeError(f"{_named(('casnap_format',))} is {_shown(version)}, not an integer")
        if version > FORMAT_VERSION:  # a later format's fields are refused by its number
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
        check_config(cfg)
    except CasnapError:
        raise
    except json.JSONDecodeError as exc:
        raise IntegrityError(f"{location}/config is damaged: it is not JSON ({exc})") from exc
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise IntegrityError(f"{location}/config is damaged: {exc}") from exc
    return cast(dict[str, Any], cfg)


# A repository's id as init writes it (uuid4().hex). It names the repository's folders in the
# user's cache dir (backends/cached.py, restored.py, groups.py), so nothing else may pass.
REPOSITORY_ID = re.compile(r"[0-9a-f]{32}")

# The integer fields of a config, with their limits (constants.py gives the reasons). zstd's
# level range is ZSTD_minCLevel() .. ZSTD_maxCLevel().
INTEGERS = {
    "pack_target": (1, MAX_PACK_TARGET),
    "frame_target": (0, MAX_FRAME_SIZE),
    "zstd_level": (MIN_ZSTD_LEVEL, MAX_ZSTD_LEVEL),
    "float_level": (MIN_ZSTD_LEVEL, MAX_ZSTD_LEVEL),
}

# Every field of a format-2 config, and whether it must be there (float_level, frame_target and
# group_floats have defaults for the first repositories of the format; the chunker section's
# entries but the default one fall back on it). A field not listed is none casnap writes: a new
# one comes with a new format version, which is refused by its number.
FIELDS_OF_FORMAT = {
    "casnap_format": True,
    "id": True,
    "created": True,
    "chunker": True,
    "pack_target": True,
    "zstd_level": True,
    "float_level": False,
    "frame_target": False,
    "group_floats": False,
}

# The parameters of each chunker a config may name (chunking/select.py builds it from them): the
# sqlite chunker's page size and the records chunker's record sizes come from each file.
PARAMETERS = {
    "fastcdc": ("min", "avg", "max"),
    "fixed": ("size",),
    "sqlite": (),
    "faiss": ("vectors", "lists", "graph", "ids", "min", "avg", "max"),
    "faiss-cdc": ("vectors", "lists", "ids", "graph", "min", "avg", "max"),
    "records": ("max",),
}

# The entries of the chunker section: the chunkers each may name, and the one an entry without
# a name means (None: it must name one). FORMAT.md, "Chunkers".
ENTRIES: dict[str, tuple[tuple[str, ...], str | None]] = {
    "default": (("fastcdc", "fixed"), None),
    "sqlite": (("sqlite",), None),
    "faiss": (FAISS_CHUNKERS, "faiss"),
    "hnsw": (("records",), None),
}


def check_config(cfg: Any) -> None:
    """Check a config of this format version field by field: a ValueError or TypeError saying
    in words which field is missing, of another JSON type (a bool is no integer, 1.5 no size),
    not one of this format's, or past its limits."""
    if type(cfg) is not dict:
        raise ValueError("it is not a JSON object")
    unknown = sorted(set(cfg) - set(FIELDS_OF_FORMAT))
    if unknown:
        raise ValueError(
            f"it holds the field {_shown(unknown[0])}, which format {FORMAT_VERSION} does not have"
        )
    for name, required in FIELDS_OF_FORMAT.items():
        if required:
            _field(cfg, name)
    if type(cfg["casnap_format"]) is not int or cfg["casnap_format"] != FORMAT_VERSION:
        raise ValueError(f"{_named(('casnap_format',))} is not {FORMAT_VERSION}")
    rid = cfg["id"]
    if type(rid) is not str or not REPOSITORY_ID.fullmatch(rid):
        raise ValueError(f"{_named(('id',))} {_shown(rid)} is not 32 lowercase hex digits")
    try:
        time_field(cfg["created"])
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{_named(('created',))} {_shown(cfg['created'])} is no UTC time as casnap writes it"
        ) from exc
    for name, (low, high) in INTEGERS.items():
        if name in cfg:
            value = cfg[name]
            if type(value) is not int:
                raise TypeError(f"{_named((name,))} is {_shown(value)}, not an integer")
            if not low <= value <= high:
                raise ValueError(f"{name} {value} is outside the limits [{low}, {high}]")
    if "group_floats" in cfg and type(cfg["group_floats"]) is not bool:
        raise TypeError(
            f"{_named(('group_floats',))} is {_shown(cfg['group_floats'])}, not true or false"
        )
    _check_chunkers(cfg)


def _check_chunkers(cfg: dict[str, Any]) -> None:
    """The chunker section: its entries, each naming a chunker it may name with exactly that
    chunker's parameters, and the chunkers they make (their sizes within the limits)."""
    # here, not at the top: the chunkers are only built to check them (a command that opens no
    # repository, such as --help, never needs them)
    from casnap.chunking import choose_chunker
    from casnap.formats.faiss import FAISS_SAMPLE_HEADER
    from casnap.formats.hnsw import HNSW_SAMPLE_RECORDS
    from casnap.formats.sqlite import SQLITE_SAMPLE_HEADER

    _field(cfg, "chunker", "default")
    section = cfg["chunker"]
    unknown = sorted(set(section) - set(ENTRIES))
    if unknown:
        raise ValueError(f"{_named(('chunker',))} holds the entry {_shown(unknown[0])}")
    for entry, spec in section.items():
        path = ("chunker", entry)
        if type(spec) is not dict:
            raise TypeError(f"{_named(path)} is {_shown(spec)}, not a JSON object")
        names, implied = ENTRIES[entry]
        name = spec.get("name", implied)
        if name is None:
            raise ValueError(f"{_named(path)} names no chunker")
        if name not in names:
            raise ValueError(f"{_named(path)} names the chunker {_shown(name)}")
        given, wanted = set(spec) - {"name"}, set(PARAMETERS[name])
        if given - wanted:
            raise ValueError(
                f"{_named(path)} has the parameter {_shown(sorted(given - wanted)[0])}, which "
                f"chunker {name!r} does not take"
            )
        if wanted - given:
            raise ValueError(
                f"{_named(path)} lacks the parameter {_shown(sorted(wanted - given)[0])} of "
                f"chunker {name!r}"
            )
    choose_chunker(b"", section)  # the chunkers each entry makes: sizes, types, limits
    for sample in (SQLITE_SAMPLE_HEADER, FAISS_SAMPLE_HEADER):
        choose_chunker(sample, section)
    choose_chunker(b"", section, HNSW_SAMPLE_RECORDS)


def _shown(value: Any) -> str:
    """A value as a message shows it: JSON's spelling, cut short (a hostile config's text,
    escaped: no control character reaches a terminal)."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


# What the fields a config must hold are, for a line saying one is missing.
FIELDS = {
    "casnap_format": "the format version",
    "id": "the repository id",
    "created": "the time of creation",
    "chunker": "the chunker section",
    "chunker.default": "the chunker of plain files",
    "chunker.sqlite": "the chunker of SQLite databases",
    "chunker.faiss": "the chunker of FAISS indexes",
    "chunker.hnsw": "the chunker of hnswlib's element records",
    "pack_target": "the pack size",
    "frame_target": "the frame size",
    "zstd_level": "the compression level",
    "float_level": "the compression level of float arrays",
    "group_floats": "the byte grouping of float arrays",
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
