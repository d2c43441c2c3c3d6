"""Restore speed, repeated: casnap (with and without its smoke checks) against restic and tar+zstd.

What: take a work dir that ``storage.py --keep`` left (the data dir and every tool's repository),
restore the last snapshot of each tool in it N times into an empty dir, the tools interleaved in
every round, and report the median and lowest seconds of each, casnap's default checkout against
restic and its ``--no-smoke`` checkout against ``zstd -d | tar -x``, the CPU seconds each used
(user + system, its child processes included: a busy machine stretches wall time far more than
CPU time), and casnap's phases (median per phase). Every restore is measured as storage.py
measures it (a launcher that spawns and reaps the command), after an ``os.sync()``.

Why: storage.py restores once per tool; on a shared machine one run is noise. Interleaving the
tools puts a busy spell on all of them, and the median of several rounds is what to quote.

Usage::

    python benchmarks/storage.py --tools casnap,restic,tarzstd --keep --work /tmp/bench
    python benchmarks/restore.py /tmp/bench/casnap-storage-bench-XXXX [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from phase_report import LEGEND, median_phases, phase_table, phases_of  # noqa: E402
from tools import (  # noqa: E402
    ROOT,
    TOOLS,
    CasnapTool,
    Measured,
    Tool,
    compile_casnap,
    empty_dir,
    start_restore_alike,
)

RUNS = ("casnap", "casnap --no-smoke", "restic", "tarzstd")


def last_step(work: Path) -> int:
    """The step of the last snapshot: the newest tar+zstd archive's number (0 without one)."""
    steps = [int(p.name[4:7]) for p in (work / "repos" / "tarzstd").glob("step*.tar.zst")]
    return max(steps, default=0)


def restore(name: str, tools: dict[str, Tool], work: Path, step: int) -> Measured:
    target = empty_dir(work / "restore" / "repeat")
    start_restore_alike(tools[name.split()[0]].repo, work, work / "data")
    if name == "casnap --no-smoke":
        casnap = tools["casnap"]
        assert isinstance(casnap, CasnapTool)
        return casnap.restore_unchecked(work / "data", step, target)
    return tools[name].restore(work / "data", step, target)


def summary(seconds: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds)}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", type=Path, help="a work dir storage.py --keep left")
    ap.add_argument("--repeat", type=int, default=7, help="rounds of restores (default 7)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    work = args.work.resolve()
    compile_casnap()
    step = last_step(work)
    tools = {n: TOOLS[n](work) for n in ("casnap", "restic", "tarzstd")}
    runs = [r for r in RUNS if tools[r.split()[0]].repo.exists()]
    seconds: dict[str, list[float]] = {r: [] for r in runs}
    cpu: dict[str, list[float]] = {r: [] for r in runs}
    phases: dict[str, list[dict[str, float] | None]] = {r: [] for r in runs}
    for k in range(args.repeat):
        for name in runs:
            measured = restore(name, tools, work, step)
            seconds[name].append(measured.seconds)
            cpu[name].append(measured.cpu)
            phases[name].append(phases_of(measured.stdout) if name.startswith("casnap") else None)
        print(f"round {k + 1}: " + ", ".join(f"{n} {seconds[n][-1]:.2f} s" for n in runs))
    result: dict[str, Any] = {"work": str(work), "step": step, "repeat": args.repeat, "runs": {}}
    for name in runs:
        result["runs"][name] = {"seconds": seconds[name], **summary(seconds[name])}
        result["runs"][name]["cpu"] = cpu[name]
        result["runs"][name]["cpu_median"] = statistics.median(cpu[name])
        result["runs"][name]["phases"] = median_phases(phases[name])
    med = {n: result["runs"][n]["median"] for n in runs}
    ratios = {}
    if "restic" in med:
        ratios["casnap / restic"] = med["casnap"] / med["restic"]
    if "tarzstd" in med:
        ratios["casnap --no-smoke / tarzstd"] = med["casnap --no-smoke"] / med["tarzstd"]
    result["ratios"] = ratios
    print()
    print("| restore | median s | min s | max s | CPU s (median) |")
    print("|:--|--:|--:|--:|--:|")
    for name in runs:
        r = result["runs"][name]
        row = f"{r['median']:.2f} | {r['min']:.2f} | {r['max']:.2f} | {r['cpu_median']:.2f}"
        print(f"| {name} | {row} |")
    print()
    for label, ratio in ratios.items():
        print(f"{label}: {ratio:.2f}x (medians)")
    print()
    print(f"casnap's restores, median per phase over {args.repeat} rounds: {LEGEND}")
    rows = [(n, med[n], result["runs"][n]["phases"]) for n in runs if n.startswith("casnap")]
    print(phase_table("checkout", rows))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "restore.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out / 'restore.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
