"""Shared pieces of the reliability suites: small real data, and the "nothing lost" checks.

After any fault, kill or race the suites ask the same questions of the healthy repository: does
every object verify, does every snapshot committed so far restore byte-identically, does the next
commit work, and did anything leave temp files or locks behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from casnap import locks
from casnap.backends import Backend, LocalBackend
from casnap.checker import VerifyReport, verify
from casnap.collector import collect
from casnap.committer import commit
from casnap.config import default_config
from casnap.constants import TEMP_PREFIX
from casnap.ids import Hasher
from casnap.repository import Repository
from casnap.restorer import checkout
from tests.conftest import evolve_app, make_app
from tests.util import snapshot_tree

ROOT = Path(__file__).resolve().parent.parent

# Small packs, so a commit of ~200 KB of data makes a dozen backend writes: many distinct
# points at which a fault or a kill can land.
SMALL_PACK = 8 * 1024


def dead_pid() -> int:
    """The pid of a process that ran and exited (not reused yet, as a dead holder's would be)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout)


def small_config(pack_target: int = SMALL_PACK) -> dict:
    """A repository config like the default one, with small packs."""
    cfg = default_config()
    cfg["pack_target"] = pack_target
    return cfg


def small_app(data: Path, seed: int = 0, rows: int = 150, vectors: int = 400) -> Path:
    """A small real data dir: app.db, FAISS Flat/IVF/HNSW indexes and their sidecars."""
    make_app(data, seed=seed, rows=rows, vectors=vectors)
    return data


def file_hash(path: Path) -> str:
    h = Hasher()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.digest().hex()


def file_hashes(root: Path) -> dict[str, str]:
    """BLAKE3 of every regular file under root (SQLite side files and temp files left out)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink() and not p.name.startswith(TEMP_PREFIX):
            if not p.name.endswith(("-wal", "-shm", "-journal")):
                out[p.relative_to(root).as_posix()] = file_hash(p)
    return out


def temp_files(*roots: Path) -> list[Path]:
    """casnap temp files anywhere under the given folders."""
    return sorted(p for r in roots if r.exists() for p in r.rglob(f"{TEMP_PREFIX}*"))


@dataclass
class Ledger:
    """Every snapshot committed so far and the data it must give back."""

    trees: dict[str, dict[str, bytes]] = field(default_factory=dict)

    def commit(self, repo: Repository, data: Path, **kwargs: object) -> str:
        """Commit data through repo and remember what the snapshot holds."""
        before = snapshot_tree(data)
        sid = commit(repo, data, **kwargs).id  # type: ignore[arg-type]
        self.record(sid, before)
        return sid

    def record(self, sid: str, tree: dict[str, bytes]) -> None:
        self.trees[sid] = tree

    def check(self, repo: Repository, scratch: Path, only: Iterable[str] | None = None) -> int:
        """Every recorded snapshot is listed and restores byte-identically; returns how many."""
        listed = {sid.hex() for sid, _ in repo.snapshots()}
        wanted = list(self.trees) if only is None else list(only)
        scratch.mkdir(parents=True, exist_ok=True)
        missing = [s for s in wanted if s not in listed]
        assert not missing, f"snapshots lost: {missing}"
        for sid in wanted:
            out = scratch / f"check-{sid[:12]}"
            shutil.rmtree(out, ignore_errors=True)
            checkout(repo, sid, out, safety_snapshot=False, smoke=False)
            assert snapshot_tree(out) == self.trees[sid], f"snapshot {sid[:8]} restores wrong"
            shutil.rmtree(out)
        return len(wanted)


def verify_repository(repo: Repository) -> VerifyReport:
    """casnap verify --read-data finds nothing wrong (its problems are the failure message)."""
    report = verify(repo, read_data=True)
    assert report.ok, "\n".join([report.summary(), *(p.line() for p in report.problems)])
    return report


def check_healthy(
    backend: Backend, ledger: Ledger, scratch: Path, data: Path | None = None, step: int = 90
) -> Repository:
    """A fresh open of the healthy backend verifies and restores every snapshot of the ledger;
    with data, the next commit and a gc succeed and leave it all verifying."""
    scratch.mkdir(parents=True, exist_ok=True)
    repo = Repository.open_backend(backend, scratch / "tmp")
    verify_repository(repo)
    ledger.check(repo, scratch)
    if data is not None:
        evolve_app(data, step)
        sid = ledger.commit(repo, data, message="after the fault")
        collect(Repository.open_backend(backend, scratch / "tmp"), max_unused=0.0)
        repo = Repository.open_backend(backend, scratch / "tmp")
        verify_repository(repo)
        ledger.check(repo, scratch, [sid])
    assert not [h for h in locks.holders(backend) if h.pid == os.getpid()], "lock left behind"
    if isinstance(backend, LocalBackend):
        assert not temp_files(backend.root), "temp files left in the repository"
    return repo


# -- subprocesses ----------------------------------------------------------------------------------


def casnap_env(**extra: str) -> dict[str, str]:
    """Environment for a `python -m casnap` subprocess running this checkout of casnap."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CASNAP_") or k == "CASNAP_CACHE_DIR"  # the test's private cache
    }
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def casnap_command(args: list[str], faults: str = "") -> list[str]:
    """The command line running the casnap CLI on args: `python -m casnap`, or with faults (a
    tests.faults spec such as "put:kill:3") `python -m tests.faulty_cli`, which injects them."""
    if faults:
        return [sys.executable, "-m", "tests.faulty_cli", faults, *args]
    return [sys.executable, "-m", "casnap", *args]


def run_casnap(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 120, faults: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run the casnap CLI in a subprocess (under faults, when given); output captured as text."""
    return subprocess.run(
        casnap_command(args, faults),
        env=env or casnap_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def kill_after(args: list[str], delay: float, env: dict[str, str] | None = None) -> int:
    """Start the casnap CLI, SIGKILL it after delay seconds (unless done); its return code."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "casnap", *args],
        env=env or casnap_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return proc.returncode


def wait_for(predicate: object, timeout: float = 30.0, interval: float = 0.01) -> None:
    """Poll until predicate() is true (a condition, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)
