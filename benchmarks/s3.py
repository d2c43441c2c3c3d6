"""S3 benchmark: commit, checkout and copy against a local S3 server, casnap against restic.

What: start moto's S3 server on 127.0.0.1 (nothing leaves the machine), generate the storage
benchmark's sample data dir (``casnap.sample``), then for each tool snapshot it, evolve it K times
snapshotting after each step, and restore the last snapshot into an empty dir, checked byte for
byte (``--restores`` rounds of every tool in turn, each tool's median kept; casnap also without
its smoke checks, as restic checks no restored file). Tools: casnap on local disk (the
baseline), casnap on S3, restic on S3; all encrypted (restic always is; casnap's S3 default is
``repokey``). Then ``casnap copy`` of the local repository to a fresh S3 prefix, twice: the
second copy must send about nothing. Every timed command starts after an ``os.sync()``, and the
server's CPU seconds during it are kept beside the tool's own.

It also counts the requests a warm commit that finds nothing changed and a warm ``log`` send
to S3 (``s3_requests.py``; printed and kept as ``requests`` in ``s3.json``).

Why: casnap on S3 should cost little more than on local disk (the targets: commit and checkout
within 1.5x, faster than restic on the same server) and store the same bytes.

Usage::

    python benchmarks/s3.py [--size-mb 100] [--steps 3] [--seed 0] [--out benchmarks/results]

Needs the s3 and dev extras (boto3 for listing, moto[server]); restic is skipped when missing.
Results go to ``<out>/s3.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from phase_report import LEGEND, median_phases, phase_table, phases_of
from s3_requests import describe, environment, warm_requests
from targets import as_json, format_targets, s3_targets
from tools import Measured, ToolError, compare_trees, compile_casnap, empty_dir, run

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "casnap-bench"
PASSWORD = "bench-password"
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# moto spools every object past 5 MiB to a temporary file on the machine's own disk and cores,
# which a real store does on its own hardware: objects up to this size stay in its memory
# (every tool's alike; benchmarks/README.md, "s3.py").
SERVER_BUFFER = 128 * MIB


def start_server(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, MOTO_S3_DEFAULT_KEY_BUFFER_SIZE=str(SERVER_BUFFER)),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto server did not start")


def casnap_exe() -> str:
    for candidate in (Path(sys.executable).parent / "casnap", ROOT / ".venv" / "bin" / "casnap"):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("casnap")
    if found is None:
        raise SystemExit("casnap not found")
    return found


class Bench:
    """The server, the environment every tool runs in, and the bucket's byte counts."""

    def __init__(self, port: int, work: Path, server: int) -> None:
        self.endpoint = f"http://127.0.0.1:{port}"
        self.work = work
        self.server = server
        self.server_cpu = 0.0  # of the last measured command
        self.env = dict(
            os.environ,
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench-secret",
            AWS_DEFAULT_REGION="us-east-1",
            CASNAP_S3_ENDPOINT=self.endpoint,
            CASNAP_PASSWORD=PASSWORD,
            CASNAP_TO_PASSWORD=PASSWORD,
            RESTIC_PASSWORD=PASSWORD,
            RESTIC_CACHE_DIR=str(work / "restic-cache"),
            # each tool's cache in the run's own folder: no other run on this host (same
            # location, another server) shares or drops it
            CASNAP_CACHE_DIR=str(work / "casnap-cache"),
        )
        import boto3

        self.s3 = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="bench",
            aws_secret_access_key="bench-secret",
            region_name="us-east-1",
        )
        self.s3.create_bucket(Bucket=BUCKET)

    def cpu(self) -> float:
        """CPU seconds (user + system) the server has used so far."""
        fields = Path(f"/proc/{self.server}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stored(self, prefix: str) -> int:
        total = 0
        for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=prefix + "/"
        ):
            total += sum(o["Size"] for o in page.get("Contents", []))
        return total


def local_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tools(bench: Bench, exe: str) -> dict[str, dict[str, Any]]:
    """Per tool: how to snapshot, restore and measure it."""
    local = bench.work / "local-repo"

    def casnap(repo: str) -> dict[str, Any]:
        return {
            "init": [exe, "--repo", repo, "init", "--encryption", "repokey"],
            "snapshot": lambda data: [
                *(exe, "--repo", repo, "--data", data, "commit", "-q", "--json")
            ],
            "restore": lambda data, target: [
                *(exe, "--repo", repo, "--data", data, "checkout", "latest"),
                *("--to", target, "--no-safety-snapshot", "-q", "--json"),
            ],
            # like restic's restore, which checks no file once it is written
            "restore_bare": lambda data, target: [
                *(exe, "--repo", repo, "--data", data, "checkout", "latest", "--no-smoke"),
                *("--to", target, "--no-safety-snapshot", "-q"),
            ],
            "cwd": None,
        }

    found: dict[str, dict[str, Any]] = {
        "casnap-local": {**casnap(str(local)), "stored": lambda: local_size(local)},
        "casnap-s3": {**casnap(f"s3://{BUCKET}/casnap"), "stored": lambda: bench.stored("casnap")},
    }
    if shutil.which("restic"):
        repo = f"s3:{bench.endpoint}/{BUCKET}/restic"
        found["restic-s3"] = {
            "init": ["restic", "-r", repo, "init", "-q"],
            "snapshot": lambda data: ["restic", "-r", repo, "backup", "-q", "--host", "b", "."],
            "restore": lambda data, target: [
                *("restic", "-r", repo, "restore", "latest", "-q", "--target", target)
            ],
            "cwd": "data",
            "stored": lambda: bench.stored("restic"),
        }
    return found


def measure(argv: list[Any], bench: Bench, cwd: Path | None = None) -> Measured:
    """One timed command, after flushing dirty pages: one tool's deferred writes (restic
        writes restored files without fsync; moto spools uploads to temporary files) are not
        charged to the next tool's fsync, as in storage.py. The CPU seconds the server spent
    serving it are left in bench.server_cpu: on two cores they are taken from the tool."""
    os.sync()
    before = bench.cpu()
    m = run(argv, cwd=cwd, env=bench.env)
    bench.server_cpu = bench.cpu() - before
    return m


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mb", type=float, default=100)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--restores", type=int, default=3, help="restores per tool (median kept)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--work", type=Path, default=None)
    args = p.parse_args()
    from casnap import sample

    compile_casnap()
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="casnap-s3-bench-", dir=args.work))
    port = free_port()
    server = start_server(port)
    config = vars(args) | {"out": str(args.out), "work": args.work and str(args.work)}
    result: dict[str, Any] = {"config": config, "tools": {}}
    try:
        bench = Bench(port, work, server.pid)
        data = work / "data"
        exe = casnap_exe()
        table = tools(bench, exe)
        sample.generate(data, size_mb=args.size_mb, seed=args.seed)
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in table}
        for t in table.values():
            measure(t["init"], bench)
        for step in range(args.steps + 1):
            if step:
                sample.evolve(data, step=step, seed=args.seed)
            for name, t in table.items():
                cwd = data if t["cwd"] == "data" else None
                m = measure(t["snapshot"](data), bench, cwd)
                rows[name].append(
                    {
                        "step": step,
                        "seconds": m.seconds,
                        "cpu": m.cpu,
                        "server_cpu": bench.server_cpu,
                        "stored": t["stored"](),
                        "phases": phases_of(m.stdout),  # casnap's, from commit --json
                    }
                )
                stored = rows[name][-1]["stored"] / MIB
                cpus = f"cpu {m.cpu:5.2f} s, server {bench.server_cpu:5.2f} s"
                print(f"step {step}: {name:<13} {m.seconds:6.2f} s  {stored:8.1f} MiB  {cpus}")
        restores: dict[str, list[Measured]] = {name: [] for name in table}
        restored_ok = dict.fromkeys(table, True)
        restore_server: dict[str, list[float]] = {name: [] for name in table}
        bare: dict[str, list[float]] = {name: [] for name in table}
        for _ in range(max(1, args.restores)):  # in turns: a slow spell of the machine hits all
            for name, t in table.items():
                target = empty_dir(work / "restore" / name)
                restores[name].append(measure(t["restore"](data, target), bench))
                restore_server[name].append(bench.server_cpu)
                restored_ok[name] &= compare_trees(data, target).ok
                shutil.rmtree(target)
                if "restore_bare" in t:
                    target = empty_dir(work / "restore" / name)
                    bare[name].append(measure(t["restore_bare"](data, target), bench).seconds)
                    restored_ok[name] &= compare_trees(data, target).ok
                    shutil.rmtree(target)
        for name in table:
            runs = restores[name]
            median = sorted(range(len(runs)), key=lambda i: runs[i].seconds)[len(runs) // 2]
            m = runs[median]
            ok = restored_ok[name]
            first, later = rows[name][0], rows[name][1:]
            result["tools"][name] = {
                "rows": rows[name],
                "first_seconds": first["seconds"],
                "median_later_seconds": statistics.median(r["seconds"] for r in later)
                if later
                else None,
                "stored_bytes": rows[name][-1]["stored"],
                "restore_seconds": m.seconds,
                "restore_runs": [r.seconds for r in runs],
                "restore_no_smoke_seconds": statistics.median(bare[name]) if bare[name] else None,
                "restore_cpu": m.cpu,
                "restore_server_cpu": restore_server[name][median],
                "restore_ok": ok,
                "commit_phases_first": first["phases"],
                "commit_phases_median_later": median_phases([r["phases"] for r in later]),
                "restore_phases": phases_of(m.stdout),
            }
            print(
                f"restore: {name:<13} {m.seconds:6.2f} s  {'ok' if ok else 'MISMATCH'}", flush=True
            )
        with environment(bench.env):  # the data dir is as the last commits left it
            result["requests"] = warm_requests(f"s3://{BUCKET}/casnap", data, PASSWORD)
        for what in ("commit", "log"):
            print(f"warm {what}: {describe(result['requests'][what])}", flush=True)
        copies = []
        for n in range(2):
            before = bench.stored("copy")
            argv = [exe, "--repo", str(work / "local-repo"), "copy", "--to", f"s3://{BUCKET}/copy"]
            m = measure([*argv, "-q"], bench)
            copies.append({"seconds": m.seconds, "sent_bytes": bench.stored("copy") - before})
            print(
                f"copy {n + 1}: {m.seconds:6.2f} s  +{copies[-1]['sent_bytes'] / MIB:.1f} MiB",
                flush=True,
            )
        result["copy"] = copies
    except ToolError as exc:
        result["error"] = str(exc)
        print(f"error: {exc}", file=sys.stderr)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    result["wall_seconds"] = time.perf_counter() - t_start
    met = s3_targets(result)
    result["targets"] = as_json(met)
    print_table(result, print)
    print(f"\n{format_targets(met)}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "s3.json").write_text(json.dumps(result, indent=2))


def print_table(result: dict[str, Any], out: Callable[[str], None]) -> None:
    out(
        "| tool | stored MiB | first commit s | median later commit s | restore s "
        "| restore, no smoke checks s | restore ok |"
    )
    out("|---|---:|---:|---:|---:|---:|---|")
    for name, r in result.get("tools", {}).items():
        later, bare = r["median_later_seconds"], r.get("restore_no_smoke_seconds")
        out(
            f"| {name} | {r['stored_bytes'] / MIB:.1f} | {r['first_seconds']:.2f} | "
            f"{'-' if later is None else f'{later:.2f}'} | {r['restore_seconds']:.2f} | "
            f"{'-' if bare is None else f'{bare:.2f}'} | {'yes' if r['restore_ok'] else 'NO'} |"
        )
    out("\nCPU seconds, the tool's / the server's (two cores: what the server uses, no tool has)\n")
    out("| tool | first commit | median later commit | restore |")
    out("|---|---:|---:|---:|")
    for name, r in result.get("tools", {}).items():
        rows = r["rows"]

        def pair(tool: float | None, server: float | None) -> str:
            return "-" if tool is None or server is None else f"{tool:.2f} / {server:.2f}"

        later = rows[1:]
        mid = (
            [statistics.median(x.get(k, 0.0) for x in later) for k in ("cpu", "server_cpu")]
            if later
            else [None, None]
        )
        first = pair(rows[0].get("cpu"), rows[0].get("server_cpu"))
        restore = pair(r.get("restore_cpu"), r.get("restore_server_cpu"))
        out(f"| {name} | {first} | {pair(*mid)} | {restore} |")
    requests = result.get("requests")
    if requests:
        out(f"warm no-change commit on S3: {describe(requests['commit'])}")
        out(f"warm log on S3: {describe(requests['log'])}")
    for n, c in enumerate(result.get("copy", []), 1):
        out(f"copy {n}: {c['seconds']:.2f} s, {c['sent_bytes'] / MIB:.1f} MiB sent")
    timed = {n: r for n, r in result.get("tools", {}).items() if r.get("commit_phases_first")}
    if timed:
        commits: list[tuple[str, float | None, dict[str, float] | None]] = []
        for name, r in timed.items():
            commits.append((f"{name} first", r["first_seconds"], r["commit_phases_first"]))
            later = (r["median_later_seconds"], r["commit_phases_median_later"])
            commits.append((f"{name} later (median)", *later))
        restores = [(n, r["restore_seconds"], r["restore_phases"]) for n, r in timed.items()]
        out(f"\nwhere casnap's time goes: {LEGEND}\n")
        out(phase_table("commit", commits))
        out("")
        out(phase_table("checkout", restores))


if __name__ == "__main__":
    main()
