"""What deleted rows leave in a database's free pages is not stored: the image a commit reads has
them zeroed, and SQLite finds the same database there."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from casnap import Repository, checkout, commit
from casnap.dbimage import clear_unused_pages, sqlite_image
from casnap.formats.sqlite import SQLITE_HEADER_SIZE, unused_page_ranges

SECRET = b"deleted-secret-"


def database_with_deleted_rows(path: Path) -> None:
    """Rows of large blobs, half of them deleted with secure_delete off: their pages go to the
    freelist still holding the blobs (whatever SQLite's compiled-in default)."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA secure_delete = OFF")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
        conn.executemany(
            "INSERT INTO t (body) VALUES (?)",
            [((SECRET if i % 2 else b"kept-") * 700,) for i in range(200)],
        )
        conn.commit()
        conn.execute("DELETE FROM t WHERE id % 2 = 0")
        conn.commit()
    conn.close()


def facts(path: Path) -> tuple[object, ...]:
    with sqlite3.connect(path) as conn:
        out = (
            conn.execute("PRAGMA integrity_check").fetchone()[0],
            conn.execute("PRAGMA freelist_count").fetchone()[0],
            conn.execute("SELECT group_concat(id), sum(length(body)) FROM t").fetchone(),
        )
    conn.close()
    return out


def test_free_pages_of_the_image_are_zeroed_and_the_database_unchanged(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    database_with_deleted_rows(db)
    assert db.read_bytes().count(SECRET) > 1000  # the deleted blobs are still in the file
    with sqlite_image(db, tmp_path / "scratch") as image:
        raw = image.read_bytes()
        assert raw.count(SECRET) == 0
        assert facts(image) == facts(db)
        assert facts(image)[1] > 100


def test_a_restored_database_holds_no_deleted_rows(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    database_with_deleted_rows(data / "app.db")
    repo = Repository.init(tmp_path / "repo")
    commit(repo, data)
    checkout(repo, "latest", tmp_path / "out", safety_snapshot=False)
    restored = tmp_path / "out" / "app.db"
    assert SECRET not in restored.read_bytes()
    assert facts(restored) == facts(data / "app.db")
    packs = b"".join(p.read_bytes() for p in (tmp_path / "repo").rglob("*") if p.is_file())
    assert SECRET not in packs


def test_a_freelist_that_does_not_add_up_is_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    database_with_deleted_rows(db)
    raw = bytearray(db.read_bytes())
    page = int.from_bytes(raw[16:18], "big")
    trunk = int.from_bytes(raw[32:36], "big")
    assert trunk
    at = (trunk - 1) * page
    raw[at + 8 : at + 12] = (10**6).to_bytes(4, "big")  # a leaf past the end of the file
    db.write_bytes(raw)
    assert clear_unused_pages(db) == 0
    assert db.read_bytes() == raw


def test_the_freelist_walk_refuses_loops_counts_and_totals() -> None:
    page = 512
    head = bytearray(SQLITE_HEADER_SIZE)
    head[:16] = b"SQLite format 3\x00"
    head[16:18] = page.to_bytes(2, "big")

    def trunk(nxt: int, leaves: list[int]) -> bytes:
        body = nxt.to_bytes(4, "big") + len(leaves).to_bytes(4, "big")
        body += b"".join(n.to_bytes(4, "big") for n in leaves)
        return body.ljust(page, b"\xee")

    def walk(first: int, total: int, pages: dict[int, bytes]) -> object:
        head[32:36] = first.to_bytes(4, "big")
        head[36:40] = total.to_bytes(4, "big")
        return unused_page_ranges(bytes(head), 10, lambda n: pages[n])

    good = {2: trunk(5, [3, 4]), 5: trunk(0, [6])}
    assert walk(2, 5, good) == [(2, 16), (3, 0), (4, 0), (5, 12), (6, 0)]
    assert walk(2, 4, good) is None  # the header counts otherwise
    assert walk(2, 5, {2: trunk(2, [3, 4])}) is None  # the chain loops
    assert walk(2, 3, {2: trunk(0, [3, 11])}) is None  # a leaf past the last page
    assert walk(2, 3, {2: trunk(0, [3, 3])}) is None  # a leaf named twice
    too_many = (page // 4).to_bytes(4, "big")
    assert walk(2, 1, {2: bytes(4) + too_many + bytes(page - 8)}) is None
    assert walk(0, 0, {}) == []
