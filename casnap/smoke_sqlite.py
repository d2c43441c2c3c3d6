"""Smoke checks of a SQLite database: integrity_check and its tables with row counts.

Also the helpers that read a database nobody writes (a staged copy, an image), which diff uses too.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Any, NamedTuple

from casnap.constants import SMOKE_MMAP_MAX, SMOKE_QUICK_CHECK_ABOVE, SMOKE_ROWCOUNT_MAX
from casnap.formats import sniff
from casnap.formats.sqlite import cut_short, file_uri
from casnap.smoke_report import Check

_CANCEL_EVERY = 100_000  # SQLite VM steps between looks at a check's cancel flag
_MISSING_COLLSEQ = 257  # SQLITE_ERROR_MISSING_COLLSEQ
_UNPARSED = "malformed database schema"
_APP_SQL_ERRORS = (
    "no such collation sequence:",
    "unknown function:",
    "no such function:",
    "no such module:",
)


class TableInfo(NamedTuple):
    """A table of a database: its schema and row count (None when not counted)."""

    name: str
    sql: str
    rows: int | None
    virtual: bool


def needs_app_sql(exc: sqlite3.Error) -> bool:
    """True when SQLite could not run a statement for lack of a collation, a function or a
    virtual-table module the app defines when it opens the database (or a newer SQLite has
    built in): no sign of damage."""
    if getattr(exc, "sqlite_errorcode", None) == _MISSING_COLLSEQ:
        return True
    return str(exc).startswith(_APP_SQL_ERRORS)


def quote_ident(name: str) -> str:
    """An SQL identifier quoted for any name (embedded quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def open_immutable(path: Path) -> sqlite3.Connection:
    """A read-only connection to a file nobody writes (a staged copy, an image): no side files."""
    return sqlite3.connect(file_uri(path, "immutable=1"), uri=True)


def list_tables(
    conn: sqlite3.Connection, count_rows: bool = True, schema: str = "main"
) -> dict[str, TableInfo]:
    """The tables of a database (internal sqlite_ tables left out), by name."""
    rows = conn.execute(
        f"SELECT name, sql FROM {quote_ident(schema)}.sqlite_master "
        "WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
    ).fetchall()
    out: dict[str, TableInfo] = {}
    for name, sql in rows:
        text = sql or ""
        virtual = text.lstrip().upper().startswith("CREATE VIRTUAL")
        count: int | None = None
        if count_rows:
            count = _count(conn, f"{quote_ident(schema)}.{quote_ident(name)}", virtual)
        out[name] = TableInfo(name, text, count, virtual)
    return out


def _count(conn: sqlite3.Connection, table: str, virtual: bool) -> int | None:
    """The rows of table; None for a virtual table whose module is missing (no failure), or
    a table only SQL the app defines could count."""
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except sqlite3.Error as exc:
        if virtual:
            return None
        if not needs_app_sql(exc):
            raise
    try:  # the index count(*) picked sorts by the app's collation: the table itself
        return int(conn.execute(f"SELECT count(*) FROM {table} NOT INDEXED").fetchone()[0])
    except sqlite3.Error as exc:
        if not needs_app_sql(exc):
            raise
        return None


def _integrity(
    conn: sqlite3.Connection, query: str
) -> tuple[list[Any], sqlite3.Error | None, sqlite3.Error | None]:
    """What the integrity pragma query returns, with the error of a schema it had to leave
    unparsed (SQL a newer SQLite wrote, in a view: a syntax error to this one), and, instead
    of rows, the error of SQL this SQLite lacks (needs_app_sql)."""
    try:
        return conn.execute(query).fetchall(), None, None
    except sqlite3.Error as exc:
        if needs_app_sql(exc):
            return [], None, exc
        if not (str(exc).startswith(_UNPARSED) and "syntax error" in str(exc)):
            raise
        unparsed = exc
    conn.execute("PRAGMA writable_schema=ON")
    try:
        return conn.execute(query).fetchall(), unparsed, None
    except sqlite3.Error as exc:
        if needs_app_sql(exc):
            return [], unparsed, exc
        raise


def check_sqlite(
    path: Path, rel: str, cancel: threading.Event | None = None, *, private: bool = False
) -> list[Check]:
    """integrity_check (quick_check for a large file) and the table list of one database.

    Setting `cancel` interrupts a check under way (it then fails; for a checkout given up).
    private: nobody else can truncate the file (a staged copy), so SQLite may read it through
    a memory map (a quarter less CPU than read calls; on a shared file a truncation would kill
    the process), of at most SMOKE_MMAP_MAX bytes (mapped pages count as resident memory)."""
    size = path.stat().st_size
    pragma = "quick_check" if size > SMOKE_QUICK_CHECK_ABOVE else "integrity_check"
    short = cut_short(sniff(path), size)  # SQLite reads a last page cut short as zeros
    if short is not None:
        return [Check("sqlite-integrity", rel, False, short, {"pragma": pragma})]
    try:
        with contextlib.closing(open_immutable(path)) as conn:
            if cancel is not None:
                conn.set_progress_handler(cancel.is_set, _CANCEL_EVERY)
            if private:
                conn.execute(f"PRAGMA mmap_size={min(size, SMOKE_MMAP_MAX)}")
            rows, unparsed, missing = _integrity(conn, f"PRAGMA {pragma}(20)")
            if missing is not None:
                detail = (
                    f"PRAGMA {pragma} not run: the schema needs SQL this SQLite "
                    f"({sqlite3.sqlite_version}) lacks, its app's own or a newer SQLite's "
                    f"({missing}); --smoke-cmd can check the database with the app's own code"
                )
                integrity = Check("sqlite-integrity", rel, True, detail, {"pragma": pragma}, True)
            else:
                messages = [str(r[0]) for r in rows]
                if messages != ["ok"]:
                    detail = f"PRAGMA {pragma}: " + "; ".join(messages[:3])
                    return [Check("sqlite-integrity", rel, False, detail, {"pragma": pragma})]
                detail = f"PRAGMA {pragma}: ok"
                if unparsed is not None:
                    detail += (
                        f", its schema left unparsed: it holds SQL this SQLite "
                        f"({sqlite3.sqlite_version}) cannot read, a newer SQLite's? ({unparsed})"
                    )
                info = {"pragma": pragma}
                integrity = Check("sqlite-integrity", rel, True, detail, info, unparsed is not None)
            try:
                tables = list_tables(conn, count_rows=size <= SMOKE_ROWCOUNT_MAX)
            except sqlite3.Error as exc:
                return [integrity, Check("sqlite-tables", rel, False, f"listing tables: {exc}")]
    except sqlite3.Error as exc:
        detail = f"cannot be opened as SQLite: {exc}"
        return [Check("sqlite-integrity", rel, False, detail, {"pragma": pragma})]
    listed = {t.name: t.rows for t in tables.values()}
    shown = ", ".join(
        f"{n} ({r} rows)" if r is not None else n for n, r in list(listed.items())[:6]
    )
    more = f", +{len(listed) - 6} more" if len(listed) > 6 else ""
    detail = f"{len(listed)} tables: {shown}{more}" if listed else "no tables"
    return [integrity, Check("sqlite-tables", rel, True, detail, {"tables": listed})]
