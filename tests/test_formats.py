"""File formats: each magic number is spelled in one module, and every sniff reads enough of a file.

casnap tells SQLite databases and FAISS indexes by content; when the magic bytes, fourcc codes or
lock ranges are spelled in several modules they drift apart (one place learns a new index type,
another does not). These tests walk casnap's sources and hold them to one module per format.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import faiss
import numpy as np
import pytest

import casnap
from casnap.chunking import choose_chunker
from casnap.chunking.faiss import _Layout
from casnap.config import default_config
from casnap.constants import SNIFF_BYTES
from casnap.formats import sniff
from casnap.formats.faiss import (
    FOURCC_TYPES,
    faiss_header,
    faiss_kind,
    layout_sections,
    read_faiss_header,
)
from casnap.formats.sqlite import (
    SQLITE_HEADER_SIZE,
    SQLITE_MAGIC,
    is_sqlite,
    is_sqlite_header,
    sqlite_lock_ranges,
    sqlite_page_size,
    wal_mode,
)
from tests import helpers_chunking as h

PACKAGE = Path(casnap.__file__).parent


def _modules_spelling(text: str) -> list[str]:
    """The casnap source files (relative to the package) whose text holds `text`."""
    return sorted(
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.py")
        if text in p.read_text(encoding="utf-8")
    )


def test_the_sqlite_magic_is_spelled_in_one_module() -> None:
    assert _modules_spelling("SQLite format 3") == ["formats/sqlite.py"]


def test_sqlite_lock_bytes_are_spelled_in_one_module() -> None:
    assert _modules_spelling("0x40000000") == ["formats/sqlite.py"]


@pytest.mark.parametrize("fourcc", sorted(FOURCC_TYPES))
def test_each_faiss_fourcc_is_spelled_in_one_module(fourcc: str) -> None:
    assert _modules_spelling(fourcc) == ["formats/faiss.py"]


def test_the_header_questions_need_no_more_than_one_sniff() -> None:
    # SQLite's whole header (page size, WAL mode) and a FAISS header both fit in one sniff
    assert SNIFF_BYTES >= SQLITE_HEADER_SIZE
    index = faiss.IndexFlatL2(8)
    index.add(np.ones((3, 8), dtype="float32"))
    data = faiss.serialize_index(index).tobytes()
    header = faiss_header(data[:SNIFF_BYTES])
    assert header is not None and header.ntotal == 3 and header.d == 8
    assert faiss_kind(data[:SNIFF_BYTES]) == "flat"
    assert choose_chunker(data[:SNIFF_BYTES], default_config()["chunker"]).name == "faiss-cdc"


def _database(path: Path, journal_mode: str) -> Path:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA page_size = 8192")
        conn.execute(f"PRAGMA journal_mode = {journal_mode}")
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
    return path


def test_sqlite_header_questions_on_real_databases(tmp_path: Path) -> None:
    wal = _database(tmp_path / "wal.db", "WAL")
    plain = _database(tmp_path / "plain.db", "DELETE")
    for db in (wal, plain):
        head = sniff(db)
        assert len(head) == SNIFF_BYTES and head.startswith(SQLITE_MAGIC)
        assert is_sqlite(db) and is_sqlite_header(head)
        assert sqlite_page_size(head) == 8192
    assert wal_mode(sniff(wal)) and not wal_mode(sniff(plain))
    assert choose_chunker(sniff(plain), default_config()["chunker"]).name == "sqlite"


def test_sniffing_short_missing_and_foreign_files(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_bytes(SQLITE_MAGIC[:10])
    text = tmp_path / "notes.txt"
    text.write_bytes(b"Introduction\n" * 20)
    assert sniff(short) == SQLITE_MAGIC[:10] and not is_sqlite(short)
    assert sniff(tmp_path / "missing") == b"" and not is_sqlite(tmp_path / "missing")
    assert sniff(tmp_path) == b""  # a directory cannot be read as a file
    assert len(sniff(text)) == SNIFF_BYTES and not is_sqlite(text)
    assert read_faiss_header(text) is None and read_faiss_header(tmp_path / "missing") is None
    assert not wal_mode(sniff(short)) and sqlite_page_size(sniff(short)) is None


def test_sqlite_lock_ranges_name_the_database_and_its_shm() -> None:
    assert sqlite_lock_ranges("app.db") == (
        ("app.db", 0x40000000, 512),
        ("app.db-shm", 120, 9),
    )


@pytest.mark.parametrize("name", sorted(h.BUILDERS))
def test_the_chunker_streams_the_layout_the_format_describes(name: str) -> None:
    # the chunker's streaming driver and layout_sections walk the same parser: same arrays,
    # whatever the buffer sizes and wherever the file was cut short
    data = h.index_bytes(h.BUILDERS[name][1](200))
    for end in (len(data), len(data) - 1, len(data) // 2, 60, 3):
        cut = data[:end]
        expected, _ = layout_sections(cut)
        for block in (7, 1000, len(cut) + 1):
            layout = _Layout()
            for at in range(0, len(cut), block):
                layout.feed(memoryview(cut)[at : at + block], at)
            assert [s[:3] for s in layout.sections] == expected, (end, block)


def test_every_known_fourcc_is_taken_for_an_index_whatever_follows() -> None:
    """A known fourcc alone makes a FAISS header (a damaged index is still checked, and fails),
    whatever its first byte: the quick refusal of other files passes none of them over."""
    from casnap.formats.faiss import FOURCC_TYPES

    for fourcc in FOURCC_TYPES:
        header = faiss_header(fourcc.encode() + bytes(60))
        assert header is not None and header.fourcc == fourcc
