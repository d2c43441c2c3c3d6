"""Runs casnap/hnsw_probe.py in a child process for each Chroma HNSW segment to load.

The child has the same time limit as the FAISS reader and an address space capped at
FAISS_PROBE_MEMORY plus four times the segment's size; a child that crashes, runs out of memory
or time fails the segment's hnsw-load check, and nothing else.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from casnap.constants import FAISS_PROBE_MEMORY, FAISS_PROBE_TIMEOUT

PROBE_SCRIPT = Path(__file__).resolve().with_name("hnsw_probe.py")


def hnswlib_present() -> bool:
    """Whether an hnswlib module is installed (it is not imported here)."""
    return importlib.util.find_spec("hnswlib") is not None


def probe_segment(folder: Path, dim: int, elements: int, size: int) -> dict[str, Any]:
    """Load one segment folder in a child: {"ok": True/False, or None when no hnswlib reads
    Chroma's format, "detail": str}."""
    item = {"path": str(folder), "dim": dim, "elements": elements}
    item["limit"] = FAISS_PROBE_MEMORY + 4 * size
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(
            [sys.executable, "-P", str(PROBE_SCRIPT)],
            input=json.dumps(item).encode(),
            capture_output=True,
            timeout=FAISS_PROBE_TIMEOUT,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {
            "ok": False,
            "detail": f"hnswlib did not load it within {FAISS_PROBE_TIMEOUT:.0f} s",
        }
    except OSError as exc:
        return {"ok": False, "detail": f"cannot start the HNSW reader: {exc}"}
    try:
        result = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    except (IndexError, UnicodeDecodeError, json.JSONDecodeError):
        result = None
    if isinstance(result, dict) and "ok" in result:
        return result
    if proc.returncode < 0:
        return {"ok": False, "detail": f"hnswlib crashed loading it (signal {-proc.returncode})"}
    tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
    detail = f"the HNSW reader failed (exit {proc.returncode}) {tail[0][:200]}".rstrip()
    return {"ok": False, "detail": detail}
