"""Running the real CLI in a subprocess and reading its peak memory, for the memory-bound tests."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import blake3

from tests.helpers_reliability import ROOT, casnap_env

MB = 1_000_000


def run_measured(
    args: list[str], timeout: float = 300
) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run `python -m casnap ARGS`; (its result, the child's peak RSS in bytes).

    The peak comes from wait4 on the child itself (ru_maxrss, KiB on Linux), so other processes
    of the test run do not count.
    """
    cmd = [sys.executable, "-m", "casnap", *args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=casnap_env(), stdout=out, stderr=err, cwd=ROOT)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        code = os.waitstatus_to_exitcode(status)
        proc.returncode = code  # reaped here: Popen must not wait for it again
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(
            cmd, code, out.read().decode(errors="replace"), err.read().decode(errors="replace")
        )
    return result, usage.ru_maxrss * 1024


def streaming_hash(path: Path) -> str:
    """BLAKE3 of a file read through one 8 MiB buffer (never the whole file in memory)."""
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def supports_holes(folder: Path) -> bool:
    """True when files in folder can be sparse (a seek past the end leaves unallocated blocks)."""
    probe = folder / "hole-probe"
    try:
        with open(probe, "wb") as f:
            f.truncate(64 << 20)
            f.seek(32 << 20)
            f.write(b"x" * 4096)
        return probe.stat().st_blocks * 512 < 8 << 20
    finally:
        probe.unlink(missing_ok=True)
