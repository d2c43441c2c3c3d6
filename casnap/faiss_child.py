"""The child process that reads and searches FAISS indexes for the smoke checks.

The child runs casnap/faiss_probe.py as a script; this module starts it, hands it indexes one at a
time as they become ready, watches its time, caps its memory, and collects what it reports. A
child that dies fails the index it was reading; the rest go to a fresh child.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from casnap.constants import FAISS_PROBE_MEMORY, FAISS_PROBE_TIMEOUT
from casnap.errors import SmokeCheckFailed

PROBE_SCRIPT = Path(__file__).resolve().with_name("faiss_probe.py")


def not_read(detail: str) -> dict[str, Any]:
    """The result of an index the child could not read or never got to."""
    return {"ok": False, "check": "faiss-read", "detail": detail}


def settle(
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
            out[at[p]] = not_read(f"cannot be read: {why}")
    rest = [i for i in todo if i not in out]
    if rest and not blamed:  # died before reading anything: do not loop
        for i in rest:
            out[i] = not_read(f"not checked: {why}")
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
        child = ProbeChild()
        for i in todo:
            if not child.send(*paths[i]):
                break
        positions = [k if k < child.sent else None for k in range(len(todo))]
        todo = settle(todo, positions, *child.finish(), out)
    return [out[i] for i in range(len(paths))]


class ProbeChild:
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
                [sys.executable, "-P", str(PROBE_SCRIPT)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=env,
            )
        except OSError as exc:
            self._stderr.close()
            raise SmokeCheckFailed(f"cannot start the FAISS checker: {exc}") from exc
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

    def send(self, path: Path, binary: bool, private: bool = False) -> bool:
        """Hand one index to the child; False when the child is gone (the index is not probed).
        private: nobody else writes the file (a staged copy), so the child may map it."""
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        self._limit = max(self._limit, FAISS_PROBE_MEMORY + 4 * size)
        item = {"path": str(path), "binary": binary, "limit": self._limit, "mmap": private}
        line = json.dumps(item)
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
