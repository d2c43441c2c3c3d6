"""Many snapshots: what each command costs as a repository's history grows.

What: a repository holding N snapshots of a small data dir, each commit adding one small pack,
one index file and one manifest, and no gc in between (hourly snapshots for a few months). At
each size it times the commands a user runs there, each on a fresh copy of the repository:

- `commit` that finds nothing changed, and one of a small change;
- `log`, `show latest`, `checkout latest` (into an empty folder), `verify`;
- `forget` of half the snapshots named by id (12 hex digits each, `--json`, no gc);
- `prune --keep-last 10` (with its gc), and `gc` alone.

How: the history is built once, in this process, with casnap's Python API (`commit` with
`time=`: one snapshot an hour, the data dir's small file changed before each), copied aside at
each size on the way up. Each command then runs as the command line, a process of its own, so
start-up and every read of the repository count. With `--old DIR` every command runs a second
time with `PYTHONPATH=DIR` (a checkout of an earlier casnap, e.g. `git worktree add --detach
/tmp/old main`), on its own fresh copy, so both columns come from the same run and machine.

Run:

    .venv/bin/python benchmarks/many_snapshots.py                        # 150 and 500: ~1 min
    .venv/bin/python benchmarks/many_snapshots.py --sizes 500,1500,3000  # several minutes
    .venv/bin/python benchmarks/many_snapshots.py --old /tmp/old         # before/after

Results: a table on stdout and `benchmarks/results/many_snapshots.json`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COMMANDS = (
    "commit-nochange",
    "commit-change",
    "log",
    "show",
    "forget-ids",
    "prune",
    "gc",
    "checkout",
    "verify",
)
START = dt.datetime(2025, 1, 1)


def build(work: Path, sizes: list[int]) -> dict[int, Path]:
    """The history, grown to each size in turn; a copy of repository and data dir per size."""
    from casnap.committer import commit
    from casnap.repository import Repository

    data, repo_dir = work / "build-data", work / "build-repo"
    data.mkdir()
    (data / "static.txt").write_text("unchanged\n" * 500)
    notes = data / "notes.txt"
    copies: dict[int, Path] = {}
    done = 0
    with Repository.open_or_init(repo_dir, data) as repo:
        for size in sorted(sizes):
            t0 = time.perf_counter()
            for i in range(done, size):
                when = START + dt.timedelta(hours=i)
                notes.write_text(f"note {i}\n" * 20)
                stamp = (when - dt.timedelta(minutes=30)).timestamp()
                os.utime(notes, (stamp, stamp))  # older than the commit: not read again after
                commit(repo, data, time=when)
            done = size
            copies[size] = work / f"at-{size}"
            copies[size].mkdir()
            shutil.copytree(repo_dir, copies[size] / "repo", symlinks=True)
            shutil.copytree(data, copies[size] / "data", symlinks=True)
            print(f"built {size} snapshots ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return copies


def ids_of(repo: Path, env: dict[str, str]) -> list[str]:
    """The snapshot ids, oldest first (`log --json`)."""
    out = run(["log", "--json"], repo, repo, env)[1]
    rows = json.loads(out)
    rows = rows["snapshots"] if isinstance(rows, dict) else rows
    return [r["id"] for r in sorted(rows, key=lambda r: r["time"])]


def run(args: list[str], repo: Path, data: Path, env: dict[str, str]) -> tuple[float, str]:
    """Seconds one casnap command takes, and what it printed; a failure stops the benchmark."""
    cmd = [sys.executable, "-m", "casnap", "-q", "--repo", str(repo), "--data", str(data), *args]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return seconds, done.stdout


def measure(name: str, at: Path, scratch: Path, env: dict[str, str], ids: list[str]) -> float:
    """Seconds of one command on a fresh copy of the repository at `at` (copied, then made
    fresh in the page cache by the copy: a first run does not pay for reads from disk)."""
    if scratch.exists():
        shutil.rmtree(scratch)
    repo, data = scratch / "repo", scratch / "data"
    shutil.copytree(at / "repo", repo, symlinks=True)
    shutil.copytree(at / "data", data, symlinks=True)
    if name == "commit-change":
        (data / "notes.txt").write_text("a small change\n")
    if name == "commit-nochange":  # a first commit records what a copy's times may have moved
        run(["commit"], repo, data, env)
    args = {
        "commit-nochange": ["commit"],
        "commit-change": ["commit"],
        "log": ["log"],
        "show": ["show", "latest"],
        "forget-ids": ["forget", "--json", *(i[:12] for i in ids[: len(ids) // 2])],
        "prune": ["prune", "--keep-last", "10"],
        "gc": ["gc"],
        "checkout": ["checkout", "latest", "--to", str(scratch / "out"), "--no-safety-snapshot"],
        "verify": ["verify"],
    }[name]
    return run(args, repo, data, env)[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="150,500", help="snapshot counts (default 150,500)")
    ap.add_argument("--commands", default=",".join(COMMANDS), help="which commands to time")
    ap.add_argument("--old", type=Path, help="a casnap checkout to time beside this one")
    ap.add_argument("--rounds", type=int, default=3, help="runs per command; the best is kept")
    ap.add_argument("--work", type=Path, help="scratch parent dir (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir")
    ap.add_argument(
        "--built",
        type=Path,
        help="a scratch dir an earlier --keep run left: its histories (at-N/) are used, not built",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    commands = [c for c in args.commands.split(",") if c]
    unknown = set(commands) - set(COMMANDS)
    if unknown:
        ap.error(f"unknown commands: {', '.join(sorted(unknown))}")
    work = Path(tempfile.mkdtemp(prefix="casnap-many-snaps-", dir=args.work))
    base = {k: v for k, v in os.environ.items() if not k.startswith("CASNAP_")}
    base["CASNAP_CACHE_DIR"] = str(work / "cache")
    base.pop("PYTHONDONTWRITEBYTECODE", None)  # start-up as installed: bytecode kept (in work)
    base["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    versions = {"new": {**base, "PYTHONPATH": str(ROOT)}}
    if args.old is not None:
        versions["old"] = {**base, "PYTHONPATH": str(args.old.resolve())}
    results: list[dict[str, Any]] = []
    try:
        if args.built is not None:
            copies = {n: args.built / f"at-{n}" for n in sizes}
            missing = [str(p) for p in copies.values() if not (p / "repo").is_dir()]
            if missing:
                raise SystemExit(f"no history built in {', '.join(missing)}")
        else:
            copies = build(work, sizes)
        for size in sizes:
            ids = ids_of(copies[size] / "repo", versions["new"])
            for name in commands:
                row: dict[str, Any] = {"snapshots": size, "command": name}
                for label, env in versions.items():
                    runs = [
                        measure(name, copies[size], work / "run", env, ids)
                        for _ in range(max(1, args.rounds))
                    ]
                    row[label] = round(min(runs), 3)
                results.append(row)
                print(json.dumps(row), file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    labels = list(versions)
    print(f"{'snapshots':>9}  {'command':<16}" + "".join(f"{lb + ' s':>10}" for lb in labels))
    for row in results:
        cells = "".join(f"{row[lb]:>10.2f}" for lb in labels)
        print(f"{row['snapshots']:>9}  {row['command']:<16}{cells}")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    old = str(args.old) if args.old else None
    doc = {"sizes": sizes, "rounds": args.rounds, "old": old, **meta, "results": results}
    (args.out / "many_snapshots.json").write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
