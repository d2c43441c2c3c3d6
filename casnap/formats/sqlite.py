"""SQLite's file format: the database header, the side files beside a database, its lock bytes.

Only what casnap needs to recognise a database by content and to leave it consistent: the header
fields come from SQLite's file format description (fileformat2), the lock bytes from os_unix.c,
the super-journal record of a rollback journal from pager.c. Side files that are no regular file
are refused here, in one place, before SQLite may open the database beside them.
"""

from __future__ import annotations

import os
import stat
import urllib.parse
from collections.abc import Callable

from casnap.errors import AccessDenied, SourceError
from casnap.formats import sniff

#: The 16 bytes every SQLite database file starts with.
SQLITE_MAGIC = b"SQLite format 3\x00"

#: Size of the database header at the start of the file (magic, page size, versions, counters).
SQLITE_HEADER_SIZE = 100

#: Files SQLite keeps beside a database: the write-ahead log, its shared-memory index and the
#: rollback journal. Never stored as files: the backup API captures their content.
SQLITE_SIDE_SUFFIXES = ("-wal", "-shm", "-journal")

#: A header good enough to make choose_chunker pick the page chunker (4096-byte pages): lets a
#: repository's config be tried on a database before any is committed.
SQLITE_SAMPLE_HEADER = SQLITE_MAGIC + (4096).to_bytes(2, "big")

# SQLite's lock bytes (os_unix.c): PENDING_BYTE, then RESERVED, then 510 SHARED bytes; a WAL
# database's -shm holds its 8 lock slots at 120 and the "dead man switch" byte at 128.
PENDING_BYTE = 0x40000000  # the page holding it is never used (nor copied by the backup API)
_DB_LOCKS = (PENDING_BYTE, 512)
_SHM_LOCKS = (120, 9)

_PAGE_SIZE_AT = 16  # big-endian u16; 1 stands for 65536
_WRITE_VERSION_AT, _READ_VERSION_AT = 18, 19  # 2 in both: WAL mode
_WAL = 2
_RESERVED_AT, _FRACTIONS_AT = 20, 21  # reserved bytes per page; 3 payload fractions
_FRACTIONS = bytes((64, 32, 32))  # the only ones SQLite accepts
_MIN_USABLE = 480  # the smallest usable page size (page size less reserved bytes) it accepts
_FREELIST_TRUNK_AT, _FREELIST_COUNT_AT = 32, 36  # big-endian u32 each
# file change counter, database size in pages, schema cookie, version-valid-for number,
# SQLITE_VERSION_NUMBER (big-endian u32 each)
_COUNTER_AT, _SIZE_AT, _SCHEMA_AT, _VALID_FOR_AT, _VERSION_AT = 24, 28, 40, 92, 96


def file_uri(path: str | os.PathLike[str], query: str) -> str:
    """A SQLite URI naming the file at path (made absolute) with query (`mode=ro`,
    `immutable=1`): its name's bytes quoted, so any name is safe, one that is no UTF-8 too."""
    return f"file:{urllib.parse.quote(os.fsencode(os.path.abspath(path)))}?{query}"


def is_sqlite_header(head: bytes) -> bool:
    """True when a file's first bytes are SQLite's 16-byte magic."""
    return head.startswith(SQLITE_MAGIC)


def is_sqlite(path: str | os.PathLike[str]) -> bool:
    """True when the file starts with SQLite's 16-byte magic (False when it cannot be read)."""
    return is_sqlite_header(sniff(path))


def valid_page_size(size: int) -> bool:
    """A page size SQLite can use: a power of two from 512 to 65536."""
    return 512 <= size <= 65536 and not size & (size - 1)


def sqlite_page_size(head: bytes) -> int | None:
    """The page size a SQLite header declares (offset 16, big-endian, 1 = 65536); None if none.

    A changed row rewrites whole pages in place and VACUUM moves pages without changing most of
    them, so page-sized pieces dedup 93-96% where 16 KiB blocks fall to 20% (docs/TUNING.md).
    """
    if len(head) < _PAGE_SIZE_AT + 2 or not is_sqlite_header(head):
        return None
    size = int.from_bytes(head[_PAGE_SIZE_AT : _PAGE_SIZE_AT + 2], "big")
    if size == 1:
        size = 65536
    return size if valid_page_size(size) else None


def wal_mode(head: bytes) -> bool:
    """True when a database header says WAL mode (file format write and read versions 2)."""
    return (
        len(head) > _READ_VERSION_AT
        and head[_WRITE_VERSION_AT] == _WAL
        and head[_READ_VERSION_AT] == _WAL
    )


def hot_journal(path: str | os.PathLike[str]) -> bool:
    """True when the rollback journal beside a database may hold a transaction to roll back: it
    exists, is not empty and its header is not zeroed (SQLite zeroes it when a transaction ends
    in PERSIST mode, truncates it in TRUNCATE mode, deletes it otherwise). The database file
    alone then does not say what the database holds; only SQLite reading it does. A journal
    that is not a regular file, or cannot be read, counts as hot."""
    journal = os.fspath(path) + "-journal"
    try:
        st = os.lstat(journal)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    if not stat.S_ISREG(st.st_mode):
        return True
    return st.st_size > 0 and sniff(journal)[:1] != b"\x00"


#: The 8 bytes that start a rollback journal's header and end a super-journal record (pager.c)
JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")
#: The longest super-journal name SQLite reads from a journal (the unix VFS's mxPathname)
SUPER_JOURNAL_MAX = 512
#: The bytes at a journal's end that can hold its super-journal record: length, checksum, magic
#: and the longest name SQLite reads
SUPER_JOURNAL_TAIL = SUPER_JOURNAL_MAX + 16
# C's char is signed on x86 and unsigned on the other architectures Linux runs on: SQLite sums
# a super-journal name's bytes as chars
_SIGNED_CHAR = os.uname().machine in ("x86_64", "i386", "i486", "i586", "i686")


def ends_in_super_journal(tail: bytes) -> bool:
    """Whether a journal whose last bytes are tail ends with a super-journal record (the journal
    magic after a 4-byte name length and checksum), whether or not SQLite would read its name:
    zeroing the length (the 4 bytes 16 from its end) leaves SQLite no name to read."""
    return len(tail) >= 16 and tail.endswith(JOURNAL_MAGIC)


def super_journal(tail: bytes, journal_size: int) -> bytes | None:
    """The super-journal a rollback journal of journal_size bytes names, as SQLite's
    readSuperJournal (pager.c) reads it from the journal's last bytes, tail (at least
    SUPER_JOURNAL_TAIL of them, or the whole journal): the name before its length, checksum
    and the journal magic, up to its first NUL. None when SQLite reads none: no magic, a
    length of 0 or over SUPER_JOURNAL_MAX or past the journal's start, a checksum that is not
    the sum of the name's bytes, an empty name. A transaction across several databases
    committed once its super-journal is gone; until then its journals are hot."""
    if journal_size < 16 or not ends_in_super_journal(tail):
        return None
    length = int.from_bytes(tail[-16:-12], "big")
    if not 0 < length <= min(SUPER_JOURNAL_MAX, journal_size - 16) or length > len(tail) - 16:
        return None
    name = tail[-16 - length : -16]
    total = sum(b - 256 if _SIGNED_CHAR and b > 127 else b for b in name)
    if total & 0xFFFFFFFF != int.from_bytes(tail[-12:-8], "big"):
        return None
    return name.split(b"\0", 1)[0] or None


_ROLES = {"-journal": "rollback journal", "-wal": "write-ahead log", "-shm": "WAL index"}
_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def check_side_files(path: str | os.PathLike[str], shown: str | os.PathLike[str] = "") -> None:
    """SourceError (exit 7) naming the first side file of the database at path (-journal,
    -wal, -shm) that exists as anything but a regular file, and what it is: called before
    SQLite opens a database of the data dir, which would open that file (a FIFO blocks the
    open for ever, inside C, where no signal reaches casnap) or create files beside it. Asked
    with lstat alone. shown: the database's path in the message (path may be a /proc one)."""
    for suffix in SQLITE_SIDE_SUFFIXES:
        try:
            st = os.lstat(os.fspath(path) + suffix)
        except OSError:
            continue  # absent (or out of reach: SQLite finds no file there either)
        if stat.S_ISREG(st.st_mode):
            continue
        what = next((kind for test, kind in _KINDS if test(st.st_mode)), "of an unknown type")
        db = os.fspath(shown or path)
        raise SourceError(
            f"refusing the database {db}: its {_ROLES[suffix]} {db}{suffix} is {what}, not a "
            "regular file (SQLite would wait on it for ever or write beside it); move it away, "
            "then run casnap again"
        )


def check_side_files_readable(path: str | os.PathLike[str]) -> None:
    """AccessDenied naming the -wal or -shm of the database at path when this user may not
    read it: SQLite, which must read it to show the database, says only that it cannot open
    the database (a -journal is hotjournal.py's: it says what to do with a crashed writer's).
    Called before a commit or a diff opens a database of the data dir."""
    for suffix in ("-wal", "-shm"):
        side = os.fspath(path) + suffix
        if os.path.isfile(side) and not os.access(side, os.R_OK):
            raise AccessDenied(
                f"reading {side}: Permission denied (the {_ROLES[suffix]} of the database "
                f"{os.fspath(path)}, which SQLite must read to show it)"
            )


def sqlite_lock_ranges(name: str) -> tuple[tuple[str, int, int], ...]:
    """The byte ranges SQLite locks for database `name`: (file name, start, length) for the
    database itself and for its -shm (in WAL mode)."""
    return ((name, *_DB_LOCKS), (name + "-shm", *_SHM_LOCKS))


def unused_page_ranges(
    head: bytes, page_count: int, read_page: Callable[[int], bytes]
) -> list[tuple[int, int]] | None:
    """Where a database's freelist holds bytes SQLite never reads: (page number, first unused
    byte) for every leaf page (from 0: a leaf holds no information) and every trunk page (past its
    list of leaves). What deleted rows left there survives in the file until the page is reused.

    Walks the trunk chain from the header; None when it does not add up (a page out of range or
    seen twice, a count past what a trunk can hold, a total other than the header's), so a
    caller clears nothing it is not sure of. read_page(n) returns page n (1-based).
    """
    page_size = sqlite_page_size(head)
    if page_size is None or len(head) < SQLITE_HEADER_SIZE:
        return None
    trunk = int.from_bytes(head[_FREELIST_TRUNK_AT : _FREELIST_TRUNK_AT + 4], "big")
    total = int.from_bytes(head[_FREELIST_COUNT_AT : _FREELIST_COUNT_AT + 4], "big")
    seen: set[int] = set()
    out: list[tuple[int, int]] = []
    per_trunk = page_size // 4 - 2
    while trunk:
        if not 2 <= trunk <= page_count or trunk in seen or len(seen) >= total:
            return None
        seen.add(trunk)
        page = read_page(trunk)
        if len(page) != page_size:
            return None
        nxt = int.from_bytes(page[0:4], "big")
        count = int.from_bytes(page[4:8], "big")
        if count > per_trunk:
            return None
        out.append((trunk, 8 + 4 * count))
        for i in range(count):
            leaf = int.from_bytes(page[8 + 4 * i : 12 + 4 * i], "big")
            if not 2 <= leaf <= page_count or leaf in seen:
                return None
            seen.add(leaf)
            out.append((leaf, 0))
        trunk = nxt
    return out if len(seen) == total else None


def declared_pages(head: bytes) -> int | None:
    """The database size in pages the header states, when SQLite would use it (non-zero, and
    the version-valid-for number equal to the change counter); None otherwise (SQLite then
    takes the file's size)."""
    if len(head) < SQLITE_HEADER_SIZE:
        return None
    pages = int.from_bytes(head[_SIZE_AT : _SIZE_AT + 4], "big")
    valid = head[_COUNTER_AT : _COUNTER_AT + 4] == head[_VALID_FOR_AT : _VALID_FOR_AT + 4]
    return pages if pages and valid else None


def cut_short(head: bytes, size: int) -> str | None:
    """Why a file of `size` bytes whose first bytes are `head` is a database cut short (a copy
    or a write that stopped part-way): it ends inside its 100-byte header (SQLite's magic and
    less), or inside one of its pages, or holds fewer pages
    than its header declares where SQLite uses that count (bytes past the declared pages are
    not the database's: SQLite never reads them). None for any other file, and for a header
    SQLite would not read as a database's (a page size, file format versions, payload
    fractions or reserved bytes it refuses)."""
    if is_sqlite_header(head) and size < SQLITE_HEADER_SIZE:
        return f"SQLite database is cut short: its {size} bytes end inside its 100-byte header"
    page_size = sqlite_page_size(head)
    if (
        page_size is None
        or len(head) < SQLITE_HEADER_SIZE
        or head[_WRITE_VERSION_AT] not in (1, _WAL)
        or head[_READ_VERSION_AT] not in (1, _WAL)
        or head[_FRACTIONS_AT : _FRACTIONS_AT + 3] != _FRACTIONS
        or page_size - head[_RESERVED_AT] < _MIN_USABLE
    ):
        return None
    pages, rest = divmod(size, page_size)
    declared = declared_pages(head)
    if declared is not None and pages >= declared or declared is None and not rest:
        return None
    of = f" of the {declared} its header declares" if declared is not None else ""
    if rest:
        return (
            f"SQLite database is cut short: its {size} bytes end inside page {pages + 1}{of} "
            f"({page_size}-byte pages)"
        )
    return f"SQLite database is cut short: it holds {pages} pages{of} ({page_size}-byte pages)"


def backup_header(head: bytes, pages: int, version: int) -> bytes:
    """The first 100 bytes SQLite's backup API writes into a fresh file from a database whose
    header is head and that has `pages` pages: a change counter, a schema cookie and a
    version-valid-for number of 1, the page count, and `version` (the copying library's
    SQLITE_VERSION_NUMBER)."""
    out = bytearray(head[:SQLITE_HEADER_SIZE])
    for at, value in (
        (_COUNTER_AT, 1),
        (_SIZE_AT, pages),
        (_SCHEMA_AT, 1),
        (_VALID_FOR_AT, 1),
        (_VERSION_AT, version),
    ):
        out[at : at + 4] = value.to_bytes(4, "big")
    return bytes(out)
