"""SIGTERM (a service manager stopping casnap, `timeout`, `kill`) ends a command the way Ctrl-C
does: it unwinds, releasing the repository's lock (on object storage another host would
otherwise wait for it to go stale), and prints one line; exit 143."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CASNAP = [sys.executable, "-m", "casnap"]


def _casnap(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CASNAP, *map(str, args)], capture_output=True, text=True, timeout=120)


def _locks(repo: Path) -> list[str]:
    folder = repo / "locks"
    return os.listdir(folder) if folder.is_dir() else []


def _terminated_mid_way(repo: Path, *args: str | Path) -> tuple[int, str]:
    """Start casnap with args, and send it SIGTERM once it holds the repository's lock; its
    exit code and stderr."""
    proc = subprocess.Popen(
        [*CASNAP, "--repo", str(repo), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not _locks(repo) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_a_terminated_commit_releases_its_lock_and_keeps_earlier_snapshots(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("first\n")
    repo = tmp_path / "repo"
    assert _casnap("--repo", repo, "init").returncode == 0
    first = _casnap("--repo", repo, "--data", data, "commit", "-q")
    assert first.returncode == 0, first.stderr
    # enough data that the commit is still reading it when the signal comes
    (data / "big.bin").write_bytes(np.random.default_rng(7).bytes(48 << 20))

    assert _terminated_mid_way(repo, "--data", data, "commit") == (143, "casnap: terminated\n")
    assert _locks(repo) == []
    log = _casnap("--repo", repo, "log", "--json")
    assert log.returncode == 0 and log.stdout.count('"id"') == 1, log.stdout
    assert _casnap("--repo", repo, "verify").returncode == 0
    out = tmp_path / "out"
    assert _casnap("--repo", repo, "checkout", "latest", "--to", out).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_terminated_checkout_releases_its_lock_and_leaves_the_target_untouched(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "big.bin").write_bytes(np.random.default_rng(8).bytes(48 << 20))
    repo = tmp_path / "repo"
    assert _casnap("--repo", repo, "init").returncode == 0
    assert _casnap("--repo", repo, "--data", data, "commit", "-q").returncode == 0
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("mine\n")

    done = _terminated_mid_way(repo, "checkout", "latest", "--to", target, "--no-smoke")
    assert done == (143, "casnap: terminated\n")
    assert _locks(repo) == []
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
