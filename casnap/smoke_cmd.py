"""The user's smoke command: run through the shell with the staged dir in CASNAP_STAGED_DIR."""

from __future__ import annotations

import os
import selectors
import subprocess
from collections.abc import Mapping
from pathlib import Path

from casnap.procs import child, user_environ
from casnap.smoke_report import Check

STAGED_DIR_ENV = "CASNAP_STAGED_DIR"


# Bytes of each of a smoke command's streams held (its last ones): the report keeps the last
# 2000 characters of both together, and a command may print without bound.
TAIL_BYTES = 4096


def run_command(cmd: str, staged_dir: Path, env: Mapping[str, str] | None = None) -> Check:
    """Run a user command through the shell with CASNAP_STAGED_DIR set; pass on exit code 0."""
    full_env = {**user_environ(), **(env or {}), STAGED_DIR_ENV: str(staged_dir.absolute())}
    err_tail = bytearray()
    out_tail = bytearray()
    try:
        with child(
            cmd,
            group=True,  # its own: stopped whole (with what it started) on an interrupt
            shell=True,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            _tails({proc.stdout.fileno(): out_tail, proc.stderr.fileno(): err_tail})
            proc.wait()
    except OSError as exc:
        return Check("smoke-cmd", "", False, f"cannot run {cmd!r}: {exc}")
    output = bytes(out_tail + err_tail).decode(errors="replace").strip()
    info = {"command": cmd, "exit_code": proc.returncode, "output": output[-2000:]}
    if proc.returncode == 0:
        return Check("smoke-cmd", "", True, f"{cmd!r} exited 0", info)
    how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
    last = output.splitlines()[-1][:200] if output else ""
    detail = f"{cmd!r} failed with {how}" + (f": {last}" if last else "")
    return Check("smoke-cmd", "", False, detail, info)


def _tails(tails: dict[int, bytearray]) -> None:
    """Read the pipes (by descriptor) to their ends, keeping the last TAIL_BYTES bytes of each in
    its tail: on this thread, so an interrupt stops the reading with the command."""
    with selectors.DefaultSelector() as selector:
        for fd in tails:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            for key, _events in selector.select():
                block = os.read(key.fd, 1 << 16)
                if not block:
                    selector.unregister(key.fd)
                    continue
                tail = tails[key.fd]
                tail += block
                del tail[:-TAIL_BYTES]
