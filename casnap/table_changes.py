"""The tables of two versions of a SQLite database, compared row by row (diff's database part).

Both versions are attached to one connection as schemas `a` and `b`. Rows are matched by the
table's declared primary key (so an `INSERT OR REPLACE`, which gives a row a new rowid, is an
update), by rowid only in a rowid table without one. The shadow tables in which FTS3/4/5 and
R*Tree virtual tables keep their data (`docs_data`, `docs_idx`, ...) are folded into their virtual
table: one entry per virtual table, its rows compared through the table itself.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from typing import Any

from casnap.smoke_sqlite import TableInfo, list_tables, needs_app_sql, quote_ident

# Shadow-table suffixes of SQLite's own virtual-table modules, for a SQLite too old to type them
# in PRAGMA table_list (before 3.37).
SHADOW_SUFFIXES = {
    "fts5": ("data", "idx", "content", "docsize", "config"),
    "fts4": ("content", "segments", "segdir", "docsize", "stat"),
    "fts3": ("content", "segments", "segdir", "docsize", "stat"),
    "rtree": ("node", "parent", "rowid"),
    "rtree_i32": ("node", "parent", "rowid"),
    "geopoly": ("node", "parent", "rowid"),
}
_MODULE = re.compile(r"\bUSING\s+[\"'`\[]?(\w+)", re.IGNORECASE)
ROWID = "rowid"

RowChanges = tuple[int | None, int | None, int | None]


@dataclass(frozen=True)
class TableDiff:
    """How one table differs: rows before and after, rows added/removed/updated, schema."""

    name: str
    status: str  # "added", "removed" or "changed"
    rows_a: int | None
    rows_b: int | None
    added: int | None  # rows whose key is new (None when rows cannot be matched by key)
    removed: int | None
    updated: int | None  # rows with the same key and different values
    schema_changed: bool
    key: tuple[str, ...] | None = None  # the columns rows were matched by (`rowid`), if any
    shadow_tables: tuple[str, ...] = ()  # a virtual table's shadow tables, folded into it

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["key"] = list(self.key) if self.key is not None else None
        d["shadow_tables"] = list(self.shadow_tables)
        return d


def compare_tables(conn: sqlite3.Connection, has_a: bool, has_b: bool) -> tuple[TableDiff, ...]:
    """The tables that differ between schemas a and b of conn (either may be absent), sorted by
    name, shadow tables folded into their virtual table."""
    ta = list_tables(conn, schema="a") if has_a else {}
    tb = list_tables(conn, schema="b") if has_b else {}
    fold = {**shadow_parents(conn, "a", ta), **shadow_parents(conn, "b", tb)}
    out = []
    for name in sorted(set(ta) | set(tb)):
        if name in fold:
            continue
        shadows = tuple(sorted(s for s, parent in fold.items() if parent == name))
        d = _table_diff(conn, ta.get(name), tb.get(name), shadows)
        if d is not None:
            out.append(d)
    return tuple(out)


def shadow_parents(
    conn: sqlite3.Connection, schema: str, tables: dict[str, TableInfo]
) -> dict[str, str]:
    """Shadow table name -> the virtual table it belongs to, for the tables of one schema.

    A shadow table is named `<virtual table>_<suffix>`; SQLite types it `shadow` in PRAGMA
    table_list when the module is loaded, else the suffixes of SQLite's own modules tell. A
    table that merely starts with a virtual table's name (`notes_archive`) is not one."""
    virtual = [t.name for t in tables.values() if t.virtual]
    if not virtual:
        return {}
    try:
        rows = conn.execute(f"PRAGMA {quote_ident(schema)}.table_list").fetchall()
        typed = {str(r[1]) for r in rows if r[2] == "shadow"}
    except sqlite3.Error:
        typed = set()
    out: dict[str, str] = {}
    for name, t in tables.items():
        if t.virtual:
            continue
        parents = [v for v in virtual if name.startswith(v + "_")]
        if not parents:
            continue
        parent = max(parents, key=len)
        match = _MODULE.search(tables[parent].sql)
        module = match.group(1).lower() if match else ""
        if name in typed or name[len(parent) + 1 :] in SHADOW_SUFFIXES.get(module, ()):
            out[name] = parent
    return out


def _table_diff(
    conn: sqlite3.Connection,
    ta: TableInfo | None,
    tb: TableInfo | None,
    shadows: tuple[str, ...],
) -> TableDiff | None:
    if ta is None or tb is None:
        t = ta or tb
        assert t is not None
        return TableDiff(
            name=t.name,
            status="added" if ta is None else "removed",
            rows_a=ta.rows if ta else None,
            rows_b=tb.rows if tb else None,
            added=tb.rows if tb else None,
            removed=ta.rows if ta else None,
            updated=0,
            schema_changed=True,
            shadow_tables=shadows,
        )
    schema_changed = " ".join(ta.sql.split()) != " ".join(tb.sql.split())
    key: tuple[str, ...] | None
    unmatched_change = False  # rows not comparable, but the data under them differs
    if ta.virtual or tb.virtual:
        # compared through the module (rowid lookups), when this SQLite has it
        key = (ROWID,) if ta.virtual and tb.virtual else None
        try:
            added, removed, updated = _row_changes(conn, ta.name, key)
        except sqlite3.Error:
            key, (added, removed, updated) = None, (None, None, None)
        if key is None:
            unmatched_change = any(_shadow_changed(conn, s) for s in shadows)
    else:
        try:
            key = _match_key(conn, ta.name)
            added, removed, updated = _row_changes(conn, ta.name, key)
        except sqlite3.Error as exc:
            if not needs_app_sql(exc):  # its key sorts by the app's collation: not matched
                raise
            key, (added, removed, updated) = None, (None, None, None)
    changed = (
        schema_changed
        or unmatched_change
        or ta.rows != tb.rows
        or bool(added)
        or bool(removed)
        or bool(updated)
    )
    if not changed:
        return None
    return TableDiff(
        ta.name, "changed", ta.rows, tb.rows, added, removed, updated, schema_changed, key, shadows
    )


def _shadow_changed(conn: sqlite3.Connection, name: str) -> bool:
    """True when a shadow table differs between a and b (or is missing from one)."""
    try:
        key = _match_key(conn, name)
        return any(n != 0 for n in _row_changes(conn, name, key))
    except sqlite3.Error:
        return True


def _columns(conn: sqlite3.Connection, schema: str, table: str) -> list[tuple[str, int]]:
    """(name, primary-key position) of each column."""
    rows = conn.execute(f"PRAGMA {schema}.table_info({quote_ident(table)})").fetchall()
    return [(str(r[1]), int(r[5])) for r in rows]


def _primary_key(cols: list[tuple[str, int]]) -> list[str]:
    """The declared primary key's columns, in key order."""
    return [n for n, pos in sorted((c for c in cols if c[1]), key=lambda c: c[1])]


def _has_rowid(conn: sqlite3.Connection, schema: str, table: str) -> bool:
    try:
        conn.execute(f"SELECT rowid FROM {schema}.{quote_ident(table)} LIMIT 1").fetchall()
    except sqlite3.OperationalError:  # WITHOUT ROWID
        return False
    return True


def _match_key(conn: sqlite3.Connection, table: str) -> tuple[str, ...] | None:
    """What rows of a.table and b.table are matched by: the primary key both declare, else
    rowid when both are rowid tables; None when neither works (a WITHOUT ROWID table whose key
    changed)."""
    pk_a = _primary_key(_columns(conn, "a", table))
    if pk_a and pk_a == _primary_key(_columns(conn, "b", table)):
        return tuple(pk_a)
    if _has_rowid(conn, "a", table) and _has_rowid(conn, "b", table):
        return (ROWID,)
    return None


def _row_changes(conn: sqlite3.Connection, table: str, key: tuple[str, ...] | None) -> RowChanges:
    """Rows added, removed and updated between a.table and b.table, matched by key (None: not
    matched); updated is None when the columns differ."""
    if key is None:
        return None, None, None
    t = quote_ident(table)
    if key == (ROWID,):
        join = "x.rowid = y.rowid"
    else:  # IS: a rowid table's key may hold NULLs, which then still match themselves
        join = " AND ".join(f"x.{quote_ident(k)} IS y.{quote_ident(k)}" for k in key)
    added = conn.execute(
        f"SELECT count(*) FROM b.{t} AS y WHERE NOT EXISTS (SELECT 1 FROM a.{t} AS x WHERE {join})"
    ).fetchone()[0]
    removed = conn.execute(
        f"SELECT count(*) FROM a.{t} AS x WHERE NOT EXISTS (SELECT 1 FROM b.{t} AS y WHERE {join})"
    ).fetchone()[0]
    updated = None
    names = [n for n, _ in _columns(conn, "a", table)]
    if names and names == [n for n, _ in _columns(conn, "b", table)]:
        # byte for byte: a column's own collation (NOCASE) would take 'A' -> 'a' for no change
        differ = " OR ".join(
            f"x.{quote_ident(n)} COLLATE BINARY IS NOT y.{quote_ident(n)}" for n in names
        )
        updated = conn.execute(
            f"SELECT count(*) FROM a.{t} AS x JOIN b.{t} AS y ON {join} WHERE {differ}"
        ).fetchone()[0]
    return int(added), int(removed), None if updated is None else int(updated)
