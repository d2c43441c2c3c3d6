"""Smoke checks of restored files before they replace the live ones.

Each SQLite database gets `PRAGMA integrity_check` (quick_check above SMOKE_QUICK_CHECK_ABOVE) and
its tables listed with row counts (smoke_sqlite); each FAISS index (recognised by its header
bytes) is read, its `ntotal` compared with its `.meta.json` sidecar, and searched once
(smoke_faiss, in a child process: faiss_child); each Chroma, LangChain or LlamaIndex store is
read file by file and its counts compared (smoke_layouts); an optional user command runs with
the staged dir in CASNAP_STAGED_DIR (smoke_cmd). Knows nothing of repositories: the checkout
calls it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from casnap.constants import FAISS_CHUNKERS
from casnap.errors import SmokeCheckFailed
from casnap.faiss_child import ProbeChild, probe_faiss, settle
from casnap.formats import sniff
from casnap.formats.faiss import faiss_header
from casnap.formats.sqlite import is_sqlite_header
from casnap.smoke_cmd import run_command
from casnap.smoke_faiss import FaissTarget, faiss_checks, faiss_targets
from casnap.smoke_report import Check, SmokeReport
from casnap.smoke_sqlite import check_sqlite


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
    return chunker.get("name") in FAISS_CHUNKERS or rel.endswith(".index")


# a FAISS probe child started ahead of the checkout that will need it (probe_ahead)
_ahead: list[ProbeChild] = []


@contextlib.contextmanager
def probe_ahead(wanted: bool) -> Iterator[None]:
    """Start the FAISS probe child at once when wanted, for the block's SmokeSession to take;
    stop it at the end of the block when none did. A checkout opens its repository and reads
    its snapshot on one core first: the child's start (loading FAISS and numpy, ~0.2 s of CPU)
    then runs on the other instead of competing with the restore's own threads."""
    if wanted and not _ahead:
        with contextlib.suppress(SmokeCheckFailed):  # the session will start one, or report
            _ahead.append(ProbeChild())
    try:
        yield
    finally:
        while _ahead:
            _ahead.pop().kill()


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
        self._child: ProbeChild | None = None
        self._sent: dict[tuple[Path, bool], int] = {}  # index handed to the child -> position
        self._heads: dict[str, tuple[str, bytes]] = {}  # staged file -> (path, first bytes)
        ahead = _ahead.pop() if _ahead else None
        if builtin and expect_faiss:
            with contextlib.suppress(SmokeCheckFailed):  # reported by finish, if ever needed
                self._child = ahead or ProbeChild()
        elif ahead is not None:
            ahead.kill()

    def __enter__(self) -> SmokeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _is_database(self, rel: str, head: bytes) -> bool:
        """Whether to check a file as SQLite: the snapshot says so, or else its first bytes."""
        if self.databases is not None:
            return rel in self.databases
        return is_sqlite_header(head)

    def staged(self, rel: str, path: str | Path, head: bytes | None = None) -> None:
        """A file is in place at path, in a staging dir of the caller's own that nobody else
        writes, as it will be checked: start the checks it needs. head: its first SNIFF_BYTES,
        when the caller has them (else they are read)."""
        if not self.builtin:
            return
        if head is None:
            head = sniff(path)
        self._heads[rel] = (os.fspath(path), head)
        if self._is_database(rel, head):
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="casnap-smoke")
            check = self._pool.submit(check_sqlite, Path(path), rel, self._cancel, private=True)
            self._sqlite[rel] = (Path(path), check)
        header = faiss_header(head)
        if header is not None:
            self._send(Path(path), header.binary, private=True)

    def present(self, path: Path) -> None:
        """A file the restore leaves where it is, outside the staging dir, that will be checked
        as it is: a FAISS index goes to the child now, so it is read while the other files are
        restored (read, not mapped: another process may write it)."""
        if not self.builtin:
            return
        header = faiss_header(sniff(path))
        if header is not None:
            self._send(path, header.binary, private=False)

    def _send(self, path: Path, binary: bool, private: bool) -> None:
        if (path, binary) in self._sent:
            return
        if self._child is None:
            self._child = ProbeChild()
        position = self._child.sent
        if self._child.send(path, binary, private):
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
        heads = {rel: self._head(rel, view[rel]) for rel in wanted}
        dbs = {rel for rel in wanted if self._is_database(rel, heads[rel])}
        checks: list[Check] = []
        if wanted:
            targets = faiss_targets(view, heads)
            for t in targets:  # the indexes not handed over yet go to the child now
                private = staged_dir is not None and t.path.is_relative_to(staged_dir)
                self._send(t.path, t.binary, private)
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
            from casnap.smoke_layouts import layout_checks  # framework stores: loaded for them

            checks.extend(layout_checks(view, wanted, staged_dir))
        if smoke_cmd and all(c.ok for c in checks):
            if staged_dir is None:
                raise ValueError("a smoke command needs the staged dir")
            checks.append(run_command(smoke_cmd, staged_dir, env))
        return SmokeReport(tuple(checks))

    def _head(self, rel: str, path: Path) -> bytes:
        """The first bytes of the file at path: those staged() was given for it, when it is the
        same staged file (nobody else writes a stage), else read."""
        seen = self._heads.get(rel)
        return seen[1] if seen is not None and seen[0] == os.fspath(path) else sniff(path)

    def _probed(
        self, child: ProbeChild | None, targets: Sequence[FaissTarget]
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
        positions = [self._sent.get((t.path, t.binary)) for t in targets]
        rest = settle(todo, positions, *child.finish(), out)
        if rest:
            again = probe_faiss([(targets[i].path, targets[i].binary) for i in rest])
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
