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
import struct
import subprocess
import sys
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from casnap.constants import (
    FAISS_HEADER_BYTES,
    FAISS_PROBE_MEMORY,
    FAISS_PROBE_TIMEOUT,
    SMOKE_QUICK_CHECK_ABOVE,
    SMOKE_ROWCOUNT_MAX,
)
from casnap.errors import SmokeCheckFailed

SQLITE_MAGIC = b"SQLite format 3\x00"
SIDECAR_SUFFIX = ".meta.json"
STAGED_DIR_ENV = "CASNAP_STAGED_DIR"

# FAISS fourcc codes (faiss/impl/index_write.cpp) and the classes they stand for. Every one but
# the lattice and SVS codes is followed by the common index header that holds ntotal.
FOURCC_TYPES: dict[str, str] = {
    "IxFI": "IndexFlatIP",
    "IxF2": "IndexFlatL2",
    "IxFl": "IndexFlat",
    "IxHe": "IndexLSH",
    "IxPq": "IndexPQ",
    "IxRq": "IndexResidualQuantizer",
    "IxLS": "IndexLocalSearchQuantizer",
    "IxPR": "IndexProductResidualQuantizer",
    "IxPL": "IndexProductLocalSearchQuantizer",
    "ILfs": "IndexLocalSearchQuantizerFastScan",
    "IRfs": "IndexResidualQuantizerFastScan",
    "IPLf": "IndexProductLocalSearchQuantizerFastScan",
    "IPRf": "IndexProductResidualQuantizerFastScan",
    "IVLf": "IndexIVFLocalSearchQuantizerFastScan",
    "IVRf": "IndexIVFResidualQuantizerFastScan",
    "NPLf": "IndexIVFProductLocalSearchQuantizerFastScan",
    "NPRf": "IndexIVFProductResidualQuantizerFastScan",
    "ImRQ": "ResidualCoarseQuantizer",
    "Ix2L": "Index2Layer",
    "IxSQ": "IndexScalarQuantizer",
    "IxLa": "IndexLattice",
    "IwFd": "IndexIVFFlatDedup",
    "IwFl": "IndexIVFFlat",
    "IwSq": "IndexIVFScalarQuantizer",
    "IwLS": "IndexIVFLocalSearchQuantizer",
    "IwRQ": "IndexIVFResidualQuantizer",
    "IwPL": "IndexIVFProductLocalSearchQuantizer",
    "IwPR": "IndexIVFProductResidualQuantizer",
    "IwSh": "IndexIVFSpectralHash",
    "IwQR": "IndexIVFPQR",
    "IwPQ": "IndexIVFPQ",
    "IwIQ": "IndexIVFIndependentQuantizer",
    "IxPT": "IndexPreTransform",
    "Imiq": "MultiIndexQuantizer",
    "IxRF": "IndexRefine",
    "IxM2": "IndexIDMap2",
    "IxMp": "IndexIDMap",
    "IHNf": "IndexHNSWFlat",
    "IHNp": "IndexHNSWPQ",
    "IHNs": "IndexHNSWSQ",
    "IHN2": "IndexHNSW2Level",
    "IHc2": "IndexHNSWCagra",
    "INSf": "IndexNSGFlat",
    "INSp": "IndexNSGPQ",
    "INSs": "IndexNSGSQ",
    "INNf": "IndexNNDescentFlat",
    "IPfs": "IndexPQFastScan",
    "IwPf": "IndexIVFPQFastScan",
    "IRMf": "IndexRowwiseMinMax",
    "IRMh": "IndexRowwiseMinMaxFP16",
    "Ixrq": "IndexRaBitQ",
    "Iwrq": "IndexIVFRaBitQ",
    "IS48": "IndexSVSLVQ4x8",
    "IS44": "IndexSVSLVQ4x4",
    "ISVD": "IndexSVS",
    # binary indexes: a header of their own (d, code_size, ntotal)
    "IBxF": "IndexBinaryFlat",
    "IBwF": "IndexBinaryIVF",
    "IBFf": "IndexBinaryFromFloat",
    "IBHf": "IndexBinaryHNSW",
    "IBM2": "IndexBinaryIDMap2",
    "IBMp": "IndexBinaryIDMap",
    "IBHh": "IndexBinaryHash",
    "IBHm": "IndexBinaryMultiHash",
}
_NO_COMMON_HEADER = frozenset({"IxLa", "IS48", "IS44", "ISVD"})
_HEADER = struct.Struct("<4siqqq")  # fourcc, d, ntotal, dummy, dummy (dummy == 1 << 20)
_BINARY_HEADER = struct.Struct("<4siiq")  # fourcc, d, code_size, ntotal
_DUMMY = 1 << 20
_MAX_DIM = 1 << 20  # the largest d FAISS accepts when it reads a header


@dataclass(frozen=True)
class FaissHeader:
    """What the first bytes of a FAISS index say: its class, dimension and vector count."""

    fourcc: str
    type: str
    binary: bool
    d: int | None  # None when the header is damaged or not the common one
    ntotal: int | None


def faiss_header(head: bytes) -> FaissHeader | None:
    """Parse the start of a file as a FAISS index header; None when it is not one.

    A known fourcc is enough to recognise an index (so a damaged one is still checked, and fails);
    an unknown fourcc counts only when the common header follows it with its two marker fields.
    """
    if len(head) < 4:
        return None
    try:
        fourcc = head[:4].decode("ascii")
    except UnicodeDecodeError:
        return None
    known = fourcc in FOURCC_TYPES
    binary = fourcc.startswith("IB")
    d = ntotal = None
    if binary and len(head) >= _BINARY_HEADER.size:
        _, dd, code_size, nt = _BINARY_HEADER.unpack_from(head)
        if 0 < dd <= _MAX_DIM and 0 < code_size <= dd and nt >= 0:
            d, ntotal = dd, nt
    elif not binary and fourcc not in _NO_COMMON_HEADER and len(head) >= _HEADER.size:
        _, dd, nt, dummy1, dummy2 = _HEADER.unpack_from(head)
        if 0 <= dd <= _MAX_DIM and nt >= 0 and dummy1 == _DUMMY and dummy2 == _DUMMY:
            d, ntotal = dd, nt
    if not known and (ntotal is None or not fourcc.isalnum() or not fourcc.startswith("I")):
        return None
    return FaissHeader(fourcc, FOURCC_TYPES.get(fourcc, fourcc), binary, d, ntotal)


def read_faiss_header(path: Path) -> FaissHeader | None:
    """The FAISS header of a file, or None when it is not a FAISS index (or unreadable)."""
    try:
        with open(path, "rb") as f:
            return faiss_header(f.read(FAISS_HEADER_BYTES))
    except OSError:
        return None


def sidecar_of(rel: str) -> str:
    """The relative path of an index's sidecar: `faiss/a.index` -> `faiss/a.meta.json`."""
    return PurePosixPath(rel).with_suffix(SIDECAR_SUFFIX).as_posix()


def read_sidecar(path: Path) -> dict[str, Any]:
    """The JSON object of a sidecar; ValueError when it is not one."""
    try:
        meta = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path.name} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path.name} is not a JSON object")
    return meta


def sidecar_ntotal(meta: Mapping[str, Any]) -> int | None:
    """The vector count a sidecar states (its `ntotal` key), None when it states none."""
    value = meta.get("ntotal")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


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


def check_sqlite(path: Path, rel: str) -> list[Check]:
    """integrity_check (quick_check for a large file) and the table list of one database."""
    size = path.stat().st_size
    pragma = "quick_check" if size > SMOKE_QUICK_CHECK_ABOVE else "integrity_check"
    try:
        with contextlib.closing(open_immutable(path)) as conn:
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


def probe_faiss(paths: Sequence[tuple[Path, bool]]) -> list[dict[str, Any]]:
    """Read and search each (path, binary) index in a child process; one result dict each.

    A child that dies (crash, memory limit, timeout) fails the index it was reading; the indexes
    after it are probed again in a fresh child.
    """
    out: dict[int, dict[str, Any]] = {}
    todo = list(range(len(paths)))
    while todo:
        results, started, why = _run_probe([paths[i] for i in todo])
        for j, i in enumerate(todo):
            if j in results:
                out[i] = results[j]
        blamed = [todo[j] for j in started if j not in results]
        for i in blamed:
            out[i] = {"ok": False, "check": "faiss-read", "detail": f"cannot be read: {why}"}
        rest = [i for i in todo if i not in out]
        if rest and not blamed:  # died before reading anything: do not loop
            for i in rest:
                out[i] = {"ok": False, "check": "faiss-read", "detail": f"not checked: {why}"}
            rest = []
        todo = rest
    return [out[i] for i in range(len(paths))]


def _run_probe(
    paths: Sequence[tuple[Path, bool]],
) -> tuple[dict[int, dict[str, Any]], list[int], str]:
    """One child over paths: its results by position, the positions it started, and why it
    stopped early ("" when it did not)."""
    largest = max((p.stat().st_size for p, _ in paths), default=0)
    limit = FAISS_PROBE_MEMORY + 4 * largest
    payload = json.dumps([{"path": str(p), "binary": b} for p, b in paths])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (root, env.get("PYTHONPATH", "")) if x)
    cmd = [sys.executable, "-m", "casnap.faiss_probe", str(limit)]
    why = ""
    try:
        proc = subprocess.run(
            cmd,
            input=payload.encode(),
            capture_output=True,
            timeout=FAISS_PROBE_TIMEOUT,
            env=env,
            check=False,
        )
        stdout, code, stderr = proc.stdout, proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        stdout, code, stderr = exc.stdout or b"", None, b""
        why = f"the FAISS reader did not finish within {FAISS_PROBE_TIMEOUT:.0f} s"
    except OSError as exc:
        raise SmokeCheckFailed(f"cannot start the FAISS checker: {exc}") from None
    results: dict[int, dict[str, Any]] = {}
    started: list[int] = []
    for line in stdout.decode(errors="replace").splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "start" in msg:
            started.append(int(msg["start"]))
        elif "done" in msg:
            results[int(msg["done"])] = msg
    if not why and len(results) < len(paths):
        if code is not None and code < 0:
            why = f"the FAISS reader crashed (signal {-code})"
        elif code:
            tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            why = f"the FAISS reader failed (exit {code}) {tail[0][:200]}".rstrip()
        else:
            why = "the FAISS reader stopped early"
    return results, started, why


def check_faiss(targets: Sequence[FaissTarget]) -> list[Check]:
    """faiss-read, faiss-ntotal (against the sidecar) and faiss-search for each index."""
    probed = probe_faiss([(t.path, bool(t.header and t.header.binary)) for t in targets])
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


def faiss_targets(view: Mapping[str, Path], files: Iterable[str]) -> list[FaissTarget]:
    """The files to check as FAISS indexes: a FAISS header, or a `.index` file with a sidecar
    stating `ntotal` (an index damaged beyond recognition is then still checked, and fails)."""
    targets = []
    for rel in files:
        path = view[rel]
        header = read_faiss_header(path)
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


def is_sqlite_file(path: Path) -> bool:
    """True when the file starts with SQLite's 16-byte header."""
    try:
        with open(path, "rb") as f:
            return f.read(16) == SQLITE_MAGIC
    except OSError:
        return False


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
    wanted = sorted(set(files)) if builtin else []
    if databases is None:
        dbs = {rel for rel in wanted if is_sqlite_file(view[rel])}
    else:
        dbs = set(databases) & set(wanted)
    checks: list[Check] = []
    # the FAISS probe runs in a child process: let it work while the databases are checked here
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="casnap-faiss-probe") as pool:
        faiss_checks = pool.submit(check_faiss, faiss_targets(view, wanted))
        for rel in wanted:
            if rel in dbs:
                checks.extend(check_sqlite(view[rel], rel))
        checks.extend(faiss_checks.result())
    if smoke_cmd and all(c.ok for c in checks):
        if staged_dir is None:
            raise ValueError("a smoke command needs the staged dir")
        checks.append(run_command(smoke_cmd, staged_dir, env))
    return SmokeReport(tuple(checks))


def consistency_warnings(root: Path, files: Iterable[str]) -> list[str]:
    """One line per FAISS index among `files` (relative to root) without a `.meta.json` sidecar,
    or whose sidecar's `ntotal` disagrees with the count in the index header (first bytes only)."""
    problems = []
    for rel in sorted(set(files)):
        header = read_faiss_header(root / rel)
        if header is None and not rel.endswith(".index"):
            continue
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
