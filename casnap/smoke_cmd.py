"""The user's smoke command: run through the shell with the staged dir in CASNAP_STAGED_DIR."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from casnap.smoke_report import Check

STAGED_DIR_ENV = "CASNAP_STAGED_DIR"


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
