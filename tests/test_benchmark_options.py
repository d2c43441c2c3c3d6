"""The benchmarks refuse a part they do not know, rather than run nothing and report it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_scale_refuses_an_unknown_part(tmp_path: Path) -> None:
    """`scale.py --only log,files` (its docstring's example) ran the files part alone and
    said nothing of `log`, which is no part: (b) is measured within `commit`."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--only", "log,files"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "log" in done.stderr and "commit, files, slope" in done.stderr, done.stderr
    assert not (tmp_path / "benchmarks").exists()


def test_rag_refuses_an_unknown_tool_or_store(tmp_path: Path) -> None:
    """rag.py took any name: an unknown tool or store was a KeyError's traceback, the first
    after its scratch dir was made and left behind."""
    for option in ("--tools", "--stores"):
        done = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "rag.py"), option, "nope"]
            + ["--work", str(tmp_path)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and "nope" in done.stderr, done.stderr
        assert not list(tmp_path.iterdir())
