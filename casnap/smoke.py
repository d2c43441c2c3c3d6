"""Smoke checks of restored files before they replace the live ones, and FAISS/sidecar consistency.

Each SQLite database gets `PRAGMA integrity_check` (quick_check above SMOKE_QUICK_CHECK_ABOVE) and
its tables listed with row counts; each FAISS index (recognised by its header bytes) is read, its
`ntotal` compared with its `.meta.json` sidecar, and searched once; an optional user command runs
with the staged dir in CASNAP_STAGED_DIR. Knows nothing of repositories: the checkout calls it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from casnap.constants import (
    FAISS_PROBE_MEMORY,
    FAISS_PROBE_TIMEOUT,
    SMOKE_QUICK_CHECK_ABOVE,
    SMOKE_ROWCOUNT_MAX,
)
from casnap.errors import SmokeCheckFailed
from casnap.formats import sniff
from casnap.formats.faiss import (
    FaissHeader,
    faiss_header,
    file_shortfall,
    read_faiss_header,
    read_sidecar,
    sidecar_ntotal,
    sidecar_of,
)
from casnap.formats.sqlite import is_sqlite_header

STAGED_DIR_ENV = "CASNAP_STAGED_DIR"
_PROBE_SCRIPT = Path(__file__).resolve().with_name("faiss_probe.py")
_CANCEL_EVERY = 100_000  # SQLite VM steps between looks at a check's cancel flag


# -- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One smoke check of one file (path "" for the user command)."""

    check: str  # sqlite-integrity, sqlite-tables, faiss-read, faiss-ntotal, faiss-search, ...
    path: str
    ok: bool
    detail: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """`check on path: detail`, as error messages name a failed check."""
        where = f" on {self.path}" if self.path else ""
        return f"{self.check}{where}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "path": self.path,
            "ok": self.ok,
            "detail": self.detail,
            "info": self.info,
        }


@dataclass(frozen=True)
class SmokeReport:
    """Every check run over a set of restored files."""

    checks: tuple[Check, ...] = ()

    @property
    def ok(self) -> bool:
        """Every check passed."""
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        """The checks that failed, in the order run."""
        return [c for c in self.checks if not c.ok]

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.to_json() for c in self.checks]}

    def raise_if_failed(self, what: str) -> None:
        """SmokeCheckFailed naming each failed check and file, when any failed."""
        bad = self.failures
        if not bad:
            return
        listed = "; ".join(c.describe() for c in bad[:3])
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise SmokeCheckFailed(
            f"smoke check failed, {what}: {listed}{more}", [c.to_json() for c in bad]
        )


# -- SQLite ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableInfo:
    """A table of a database: its schema and row count (None when not counted)."""

    name: str
    sql: str
    rows: int | None
    virtual: bool


def quote_ident(name: str) -> str:
    """An SQL identifier quoted for any name (embedded quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def open_immutable(path: Path) -> sqlite3.Connection:
    """A read-only connection to a file nobody writes (a staged copy, an image): no side files."""
    uri = f"file:{urllib.parse.quote(str(path.absolute()))}?immutable=1"
    return sqlite3.connect(uri, uri=True)


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
            try:
                q = f"SELECT count(*) FROM {quote_ident(schema)}.{quote_ident(name)}"
                count = int(conn.execute(q).fetchone()[0])
            except sqlite3.Error:
                if not virtual:  # a virtual table whose module is missing is not a failure
                    raise
        out[name] = TableInfo(name, text, count, virtual)
    return out


def check_sqlite(
    path: Path, rel: str, cancel: threading.Event | None = None, *, private: bool = False
) -> list[Check]:
    """integrity_check (quick_check for a large file) and the table list of one database.

    Setting `cancel` interrupts a check under way (it then fails; for a checkout given up).
    private: nobody else can truncate the file (a staged copy), so SQLite may read it through
    a memory map (a quarter less CPU than read calls; on a shared file a truncation would kill
    the process)."""
    size = path.stat().st_size
    pragma = "quick_check" if size > SMOKE_QUICK_CHECK_ABOVE else "integrity_check"
    try:
        with contextlib.closing(open_immutable(path)) as conn:
            if cancel is not None:
                conn.set_progress_handler(cancel.is_set, _CANCEL_EVERY)
            if private:
                conn.execute(f"PRAGMA mmap_size={size}")
            messages = [str(r[0]) for r in conn.execute(f"PRAGMA {pragma}(20)").fetchall()]
            if messages != ["ok"]:
                detail = f"PRAGMA {pragma}: " + "; ".join(messages[:3])
                return [Check("sqlite-integrity", rel, False, detail, {"pragma": pragma})]
            integrity = Check(
                "sqlite-integrity", rel, True, f"PRAGMA {pragma}: ok", {"pragma": pragma}
            )
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


# -- FAISS -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaissTarget:
    """An index to check: where it is, its header, and the vector count its sidecar states."""

    rel: str
    path: Path
    header: FaissHeader | None
    sidecar: str | None  # relative path of its sidecar when one exists
    expected: int | None  # the sidecar's ntotal
    sidecar_error: str | None = None


def _not_read(detail: str) -> dict[str, Any]:
    return {"ok": False, "check": "faiss-read", "detail": detail}


def _settle(
    todo: Sequence[int],
    positions: Sequence[int | None],
    results: Mapping[int, dict[str, Any]],
    started: Sequence[int],
    why: str,
    out: dict[int, dict[str, Any]],
) -> list[int]:
    """Record into out what one child reported on the indexes todo[k], handed to it at position
    positions[k] (None: never handed over); return those to probe again in a fresh child.

    The index the child was reading when it died fails; when it died before reading any, the
    rest are not checked (no endless retries of a child that cannot start).
    """
    at = {p: i for i, p in zip(todo, positions, strict=True) if p is not None}
    for p, i in at.items():
        if p in results:
            out[i] = results[p]
    blamed = [p for p in started if p not in results]
    for p in blamed:
        if p in at:
            out[at[p]] = _not_read(f"cannot be read: {why}")
    rest = [i for i in todo if i not in out]
    if rest and not blamed:  # died before reading anything: do not loop
        for i in rest:
            out[i] = _not_read(f"not checked: {why}")
        rest = []
    return rest


def probe_faiss(paths: Sequence[tuple[Path, bool]]) -> list[dict[str, Any]]:
    """Read and search each (path, binary) index in a child process; one result dict each.

    A child that dies (crash, memory limit, timeout) fails the index it was reading; the indexes
    after it are probed again in a fresh child.
    """
    out: dict[int, dict[str, Any]] = {}
    todo = list(range(len(paths)))
    while todo:
        child = _ProbeChild()
        for i in todo:
            if not child.send(*paths[i]):
                break
        positions = [k if k < child.sent else None for k in range(len(todo))]
        todo = _settle(todo, positions, *child.finish(), out)
    return [out[i] for i in range(len(paths))]


class _ProbeChild:
    """A `casnap.faiss_probe` child that takes indexes one at a time, as they become ready.

    A watchdog kills it when it falls behind: it must load FAISS, finish each index, and exit
    once its input is closed, each within FAISS_PROBE_TIMEOUT (while it waits for the next index
    no clock runs). Its address space is capped at FAISS_PROBE_MEMORY plus four times the largest
    index handed to it so far.
    """

    def __init__(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self._stderr = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(
                # run as a script, not `-m casnap.faiss_probe`: importing the casnap package
                # would load all of casnap (~0.15 s) in a child that needs none of it
                [sys.executable, "-P", str(_PROBE_SCRIPT)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=env,
            )
        except OSError as exc:
            self._stderr.close()
            raise SmokeCheckFailed(f"cannot start the FAISS checker: {exc}") from None
        self.sent = 0
        self.results: dict[int, dict[str, Any]] = {}
        self.started: list[int] = []
        self.why = ""
        self._limit = 0
        self._refused = False  # an index could not be handed over (the child was gone)
        self._cond = threading.Condition()
        self._ready = False
        self._closed = False
        self._eof = False
        self._clock = time.monotonic()  # since when the child owes an answer
        self._threads = [
            threading.Thread(target=self._read, name="casnap-faiss-read", daemon=True),
            threading.Thread(target=self._watch, name="casnap-faiss-watch", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _busy(self) -> bool:
        return not self._ready or len(self.results) < self.sent or self._closed

    def send(self, path: Path, binary: bool) -> bool:
        """Hand one index to the child; False when the child is gone (the index is not probed)."""
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        self._limit = max(self._limit, FAISS_PROBE_MEMORY + 4 * size)
        line = json.dumps({"path": str(path), "binary": binary, "limit": self._limit})
        with self._cond:
            if self._eof or self._closed:
                self._refused = True
                return False
            idle = not self._busy()
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            self._refused = True
            return False
        with self._cond:
            if idle:
                self._clock = time.monotonic()
            self.sent += 1
            self._cond.notify_all()
        return True

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if not isinstance(msg, dict):
                continue
            with self._cond:
                if "ready" in msg:
                    self._ready = True
                    self._clock = time.monotonic()
                elif "start" in msg:
                    self.started.append(int(msg["start"]))
                elif "done" in msg:
                    self.results[int(msg["done"])] = msg
                    self._clock = time.monotonic()
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _watch(self) -> None:
        with self._cond:
            while not self._eof:
                if not self._busy():
                    self._cond.wait()
                    continue
                left = self._clock + FAISS_PROBE_TIMEOUT - time.monotonic()
                if left <= 0:
                    self.why = f"the FAISS reader did not finish within {FAISS_PROBE_TIMEOUT:.0f} s"
                    self.proc.kill()
                    return
                self._cond.wait(left)

    def finish(self) -> tuple[dict[int, dict[str, Any]], list[int], str]:
        """Close the child's input and wait for it: its results by position, the positions it
        started, and why it stopped early ("" when it did not)."""
        with self._cond:
            if not self._busy():
                self._clock = time.monotonic()
            self._closed = True
            self._cond.notify_all()
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        for t in self._threads:
            t.join()
        code = self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        why = self.why
        if not why and (len(self.results) < self.sent or self._refused):
            if code < 0:
                why = f"the FAISS reader crashed (signal {-code})"
            elif code:
                self._stderr.seek(0)
                lines = self._stderr.read().decode(errors="replace").strip().splitlines()
                tail = lines[-1:] or [""]
                why = f"the FAISS reader failed (exit {code}) {tail[0][:200]}".rstrip()
            else:
                why = "the FAISS reader stopped early"
        self._stderr.close()
        return dict(self.results), list(self.started), why

    def kill(self) -> None:
        """Stop the child at once (a checkout that fails before its checks finish)."""
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.finish()


def check_faiss(targets: Sequence[FaissTarget]) -> list[Check]:
    """faiss-read, faiss-ntotal (against the sidecar) and faiss-search for each index."""
    return faiss_checks(targets, probe_faiss([(t.path, _binary(t)) for t in targets]))


def _binary(t: FaissTarget) -> bool:
    return bool(t.header and t.header.binary)


def faiss_checks(targets: Sequence[FaissTarget], probed: Sequence[dict[str, Any]]) -> list[Check]:
    """The checks of each index from what the probe child reported on it."""
    checks: list[Check] = []
    for t, r in zip(targets, probed, strict=True):
        r = {**r, "detail": str(r.get("detail", "")).replace(str(t.path), t.rel)}
        info = {k: r[k] for k in ("ntotal", "d", "type") if k in r}
        if "ntotal" not in r:  # not readable
            checks.append(Check("faiss-read", t.rel, False, str(r.get("detail", "")), info))
            continue
        desc = f"{r['type']}, d={r['d']}, ntotal={r['ntotal']}"
        checks.append(Check("faiss-read", t.rel, True, desc, info))
        if t.sidecar_error is not None:
            checks.append(Check("faiss-ntotal", t.rel, False, t.sidecar_error, info))
        elif t.expected is not None:
            ok = t.expected == r["ntotal"]
            detail = (
                f"ntotal {r['ntotal']} matches {t.sidecar}"
                if ok
                else f"index holds ntotal {r['ntotal']} but {t.sidecar} says {t.expected}"
            )
            checks.append(Check("faiss-ntotal", t.rel, ok, detail, info))
        checks.append(Check("faiss-search", t.rel, bool(r["ok"]), str(r.get("detail", "")), info))
    return checks


def faiss_targets(view: Mapping[str, Path], heads: Mapping[str, bytes]) -> list[FaissTarget]:
    """The files to check as FAISS indexes among `heads` (each file's first bytes, by relative
    path): a FAISS header, or a `.index` file with a sidecar stating `ntotal` (an index damaged
    beyond recognition is then still checked, and fails)."""
    targets = []
    for rel, head in heads.items():
        path = view[rel]
        header = faiss_header(head)
        side = sidecar_of(rel)
        side_path = view.get(side)
        meta: dict[str, Any] | None = None
        error = None
        if side_path is not None:
            try:
                meta = read_sidecar(side_path)
            except ValueError as exc:
                error = str(exc)
        expected = sidecar_ntotal(meta) if meta is not None else None
        if header is None and not (rel.endswith(".index") and expected is not None):
            continue
        targets.append(
            FaissTarget(rel, path, header, side if side_path is not None else None, expected, error)
        )
    return targets


# -- user command ----------------------------------------------------------------------------------


def run_command(cmd: str, staged_dir: Path, env: Mapping[str, str] | None = None) -> Check:
    """Run a user command through the shell with CASNAP_STAGED_DIR set; pass on exit code 0."""
    full_env = {**os.environ, **(env or {}), STAGED_DIR_ENV: str(staged_dir.absolute())}
    try:
        proc = subprocess.run(
            cmd,
            shell=True,
            env=full_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
    except OSError as exc:
        return Check("smoke-cmd", "", False, f"cannot run {cmd!r}: {exc}")
    output = (proc.stdout + proc.stderr).decode(errors="replace").strip()
    info = {"command": cmd, "exit_code": proc.returncode, "output": output[-2000:]}
    if proc.returncode == 0:
        return Check("smoke-cmd", "", True, f"{cmd!r} exited 0", info)
    how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
    last = output.splitlines()[-1][:200] if output else ""
    detail = f"{cmd!r} failed with {how}" + (f": {last}" if last else "")
    return Check("smoke-cmd", "", False, detail, info)


# -- everything ------------------------------------------------------------------------------------


def smoke_check(
    view: Mapping[str, Path],
    files: Iterable[str],
    *,
    staged_dir: Path | None = None,
    smoke_cmd: str | None = None,
    env: Mapping[str, str] | None = None,
    databases: Iterable[str] | None = None,
    builtin: bool = True,
) -> SmokeReport:
    """Check `files` (relative paths, each found at view[path]); then run smoke_cmd, if any.

    `view` maps every file of the data dir as it will be after the restore to where it is now
    (sidecars are looked up there). `databases` names the files to check as SQLite (a snapshot
    knows which files it captured as databases); None tells them by their header. The command
    runs only when every file check passed; builtin=False runs the command alone.
    """
    with SmokeSession(databases=databases, builtin=builtin) as session:
        return session.finish(view, files, staged_dir=staged_dir, smoke_cmd=smoke_cmd, env=env)


def may_be_faiss(rel: str, chunker: Mapping[str, Any]) -> bool:
    """Whether a file about to be restored will likely be checked as a FAISS index (it was cut
    as one, or is named like one): worth loading FAISS in a child before it arrives."""
    return chunker.get("name") == "faiss" or rel.endswith(".index")


class SmokeSession:
    """Smoke checks that start file by file while a restore is still under way.

    The restore calls `staged(rel, path)` once a file is written and verified: a database gets
    its integrity check on a thread, a FAISS index goes to the probe child (a separate process),
    so the checks of one file overlap the restore of the next. `finish` checks what was not
    checked yet and gives the report smoke_check would give for the same files; `close` stops
    what still runs (also when the restore fails).
    """

    def __init__(
        self,
        *,
        databases: Iterable[str] | None = None,
        builtin: bool = True,
        expect_faiss: bool = False,
    ) -> None:
        self.builtin = builtin
        self.databases = None if databases is None else set(databases)
        self._cancel = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._sqlite: dict[str, tuple[Path, Future[list[Check]]]] = {}
        self._child: _ProbeChild | None = None
        self._sent: dict[tuple[Path, bool], int] = {}  # index handed to the child -> position
        if builtin and expect_faiss:
            with contextlib.suppress(SmokeCheckFailed):  # reported by finish, if ever needed
                self._child = _ProbeChild()

    def __enter__(self) -> SmokeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _is_database(self, rel: str, head: bytes) -> bool:
        """Whether to check a file as SQLite: the snapshot says so, or else its first bytes."""
        if self.databases is not None:
            return rel in self.databases
        return is_sqlite_header(head)

    def staged(self, rel: str, path: Path) -> None:
        """A file is in place at path, in a staging dir of the caller's own that nobody else
        writes, as it will be checked: start the checks it needs."""
        if not self.builtin:
            return
        head = sniff(path)
        if self._is_database(rel, head):
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="casnap-smoke")
            check = self._pool.submit(check_sqlite, path, rel, self._cancel, private=True)
            self._sqlite[rel] = (path, check)
        header = faiss_header(head)
        if header is not None:
            self._send(path, header.binary)

    def _send(self, path: Path, binary: bool) -> None:
        if (path, binary) in self._sent:
            return
        if self._child is None:
            self._child = _ProbeChild()
        position = self._child.sent
        if self._child.send(path, binary):
            self._sent[(path, binary)] = position

    def finish(
        self,
        view: Mapping[str, Path],
        files: Iterable[str],
        *,
        staged_dir: Path | None = None,
        smoke_cmd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> SmokeReport:
        """Check `files` as smoke_check does (view, databases and the command alike), using the
        checks already started on staged files that are still at the same path."""
        wanted = sorted(set(files)) if self.builtin else []
        heads = {rel: sniff(view[rel]) for rel in wanted}
        dbs = {rel for rel in wanted if self._is_database(rel, heads[rel])}
        checks: list[Check] = []
        if wanted:
            targets = faiss_targets(view, heads)
            for t in targets:  # the indexes not handed over yet go to the child now
                self._send(t.path, _binary(t))
            child, self._child = self._child, None
            for rel in wanted:  # meanwhile the child reads the indexes
                if rel not in dbs:
                    continue
                early = self._sqlite.get(rel)
                if early is not None and early[0] == view[rel]:
                    checks.extend(early[1].result())
                else:
                    checks.extend(check_sqlite(view[rel], rel))
            checks.extend(faiss_checks(targets, self._probed(child, targets)))
        if smoke_cmd and all(c.ok for c in checks):
            if staged_dir is None:
                raise ValueError("a smoke command needs the staged dir")
            checks.append(run_command(smoke_cmd, staged_dir, env))
        return SmokeReport(tuple(checks))

    def _probed(
        self, child: _ProbeChild | None, targets: Sequence[FaissTarget]
    ) -> list[dict[str, Any]]:
        """What the child reported on each target; those it could not read are retried in fresh
        children as probe_faiss does."""
        if not targets:
            if child is not None:
                child.kill()
            return []
        assert child is not None  # _send started one for the targets
        out: dict[int, dict[str, Any]] = {}
        todo = list(range(len(targets)))
        positions = [self._sent.get((t.path, _binary(t))) for t in targets]
        rest = _settle(todo, positions, *child.finish(), out)
        if rest:
            again = probe_faiss([(targets[i].path, _binary(targets[i])) for i in rest])
            out.update(zip(rest, again, strict=True))
        return [out[i] for i in range(len(targets))]

    def close(self) -> None:
        """Stop the checks still running (interrupting a database check) and the child."""
        self._cancel.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._child is not None:
            self._child.kill()
            self._child = None


def consistency_warnings(root: Path, files: Iterable[str]) -> list[str]:
    """One line per FAISS index among `files` (relative to root) shorter than its header fields
    promise (a write cut short), without a `.meta.json` sidecar, or whose sidecar's `ntotal`
    disagrees with the count in the index header (header fields only, never the arrays)."""
    problems = []
    for rel in sorted(set(files)):
        header = read_faiss_header(root / rel)
        if header is None and not rel.endswith(".index"):
            continue
        short = file_shortfall(root / rel) if header is not None else None
        if short is not None:
            problems.append(f"{rel}: FAISS index is {short}")
        side = sidecar_of(rel)
        side_path = root / side
        if not side_path.is_file():
            problems.append(f"{rel}: FAISS index has no {PurePosixPath(side).name} sidecar")
            continue
        try:
            expected = sidecar_ntotal(read_sidecar(side_path))
        except ValueError as exc:
            problems.append(f"{rel}: sidecar {side}: {exc}")
            continue
        if expected is None:
            continue
        if header is None or header.ntotal is None:
            problems.append(
                f"{rel}: cannot read the vector count from its header ({side} says ntotal "
                f"{expected})"
            )
        elif header.ntotal != expected:
            problems.append(
                f"{rel}: {side} says ntotal {expected} but the index holds {header.ntotal}"
            )
    return problems
