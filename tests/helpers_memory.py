"""Running the real CLI in a subprocess and reading its peak memory, for the memory-bound tests."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import blake3

from tests.helpers_reliability import ROOT, casnap_env

MB = 1_000_000


def run_measured(
    args: list[str], timeout: float = 300
) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run `python -m casnap ARGS`; (its result, its peak resident memory in bytes), as the
    process itself saw it (tests/peak_cli.py)."""
    with tempfile.TemporaryDirectory() as tmp:
        peak = Path(tmp) / "peak"
        cmd = [sys.executable, "-m", "tests.peak_cli", str(peak), *args]
        result = subprocess.run(
            cmd, env=casnap_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )
        return result, int(peak.read_text()) if peak.exists() else 0


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
