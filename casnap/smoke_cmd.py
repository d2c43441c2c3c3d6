"""The user's smoke command: run through the shell with the staged dir in CASNAP_STAGED_DIR."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from casnap.procs import end_child, user_environ
from casnap.smoke_report import Check

STAGED_DIR_ENV = "CASNAP_STAGED_DIR"


# Bytes of each of a smoke command's streams held (its last ones): the report keeps the last
# 2000 characters of both together, and a command may print without bound.
TAIL_BYTES = 4096


def run_command(cmd: str, staged_dir: Path, env: Mapping[str, str] | None = None) -> Check:
    """Run a user command through the shell with CASNAP_STAGED_DIR set; pass on exit code 0."""
    full_env = {**user_environ(), **(env or {}), STAGED_DIR_ENV: str(staged_dir.absolute())}
    try:
        proc = subprocess.Popen(
            cmd,
            shell=True,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            process_group=0,  # its own: stopped whole (with what it started) on an interrupt
        )
    except OSError as exc:
        return Check("smoke-cmd", "", False, f"cannot run {cmd!r}: {exc}")
    assert proc.stdout is not None and proc.stderr is not None
    err_tail = bytearray()
    out_tail = bytearray()
    try:
        reader = threading.Thread(target=_tail, args=(proc.stderr, err_tail), daemon=True)
        reader.start()
        _tail(proc.stdout, out_tail)
        reader.join()
        proc.wait()
    except BaseException:  # SIGTERM or Ctrl-C: casnap ends, and the command with it
        end_child(proc, group=True)
        raise
    finally:
        proc.stdout.close()
        proc.stderr.close()
    output = bytes(out_tail + err_tail).decode(errors="replace").strip()
    info = {"command": cmd, "exit_code": proc.returncode, "output": output[-2000:]}
    if proc.returncode == 0:
        return Check("smoke-cmd", "", True, f"{cmd!r} exited 0", info)
    how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
    last = output.splitlines()[-1][:200] if output else ""
    detail = f"{cmd!r} failed with {how}" + (f": {last}" if last else "")
    return Check("smoke-cmd", "", False, detail, info)


def _tail(stream: IO[bytes], tail: bytearray) -> None:
    """Read stream to its end, keeping its last TAIL_BYTES bytes in tail."""
    while block := stream.read(1 << 16):
        tail += block
        del tail[:-TAIL_BYTES]
