"""Storage-savings benchmark: casnap against full copies, tar+zstd, restic and borg.

What: generate a sample data dir (SQLite ``app.db`` plus FAISS indexes under ``faiss/``) with
``casnap.sample``, evolve it for a number of steps, and snapshot every step with each tool.
For every snapshot the script records wall-clock seconds, the peak resident memory of the
snapshot process(es) and the bytes the tool's repository occupies on disk. After the last step it
restores each tool's last snapshot into an empty directory, times that, and checks the result byte
for byte against the live data dir.

Why: the point of a content-addressed, deduplicating store is that a series of snapshots of a
slowly changing data dir costs little more than one copy. This script puts a number on that claim
next to the obvious alternatives (full copies, one compressed archive per snapshot) and the
established deduplicating backup tools, all fed the same data on the same machine in the same
run.

Usage::

    python benchmarks/storage.py [--size-mb 350] [--steps 10] [--seed 0] [--scale]
        [--out benchmarks/results] [--tools casnap,copy,tarzstd,restic,borg,borg-fine]
    python benchmarks/storage.py --many-files 20000 [--rounds 3] [--tools casnap,restic,borg]

``--scale`` is the large run: a ~1.7 GB data dir and 3 later steps (unless --size-mb or
--steps say otherwise), where what grows with the data's size shows.

A tool whose binary is missing is skipped with a note. Results go to ``<out>/storage.json`` and
``<out>/storage.png``; see ``benchmarks/README.md`` for what the columns mean. With
``--many-files N`` the data is N small files instead (many_files.py: first, no-change and
changed commits and a restore, medians over rounds) and the result goes to
``<out>/many_files.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import many_files  # noqa: E402 - the benchmarks' own module, beside this script
from phase_report import (  # noqa: E402 - the benchmarks' own module, beside this script
    median_phases,
    phases_of,
)
from storage_report import format_table, mib, phase_tables, write_plot  # noqa: E402
from targets import as_json, format_targets, storage_targets  # noqa: E402
from tools import (  # noqa: E402 - the benchmarks' own module, beside this script
    HELPER_FLAG,
    ROOT,
    SAMPLE_MARKER,
    TAIL_CHARS,
    TOOLS,
    CasnapTool,
    Comparison,
    Measured,
    Tool,
    ToolError,
    compare_trees,
    compile_casnap,
    empty_dir,
    rss_floor,
    start_restore_alike,
    tarzstd_helper,
    tree_size,
)

DEFAULT_TOOLS = ("casnap", "casnap-enc", "copy", "tarzstd", "restic", "borg", "borg-fine")
# --scale: a data dir five times the default, where costs that grow with its size show
SCALE_SIZE_MB = 1700.0
SCALE_STEPS = 3
# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------


@dataclass
class StepRow:
    tool: str
    step: int
    seconds: float
    stored_total: int
    stored_added: int
    rss: int
    details: dict[str, Any] | None = None


@dataclass
class ToolState:
    tool: Tool
    rows: list[StepRow] = field(default_factory=list)
    init_seconds: float = 0.0
    error: str | None = None
    restore: Measured | None = None
    comparison: Comparison | None = None
    # casnap only: the same restore without its smoke checks
    restore_unchecked: Measured | None = None
    comparison_unchecked: Comparison | None = None


@dataclass
class Summary:
    tool: str
    first_bytes: int | None
    total_bytes: int | None
    incr_bytes: int | None
    first_seconds: float | None
    mean_incr_seconds: float | None
    median_incr_seconds: float | None
    restore_seconds: float | None
    restore_unchecked_seconds: float | None
    peak_rss: int | None
    restore_ok: bool
    restore_exact: bool
    cache_bytes: int
    error: str | None
    ratio_vs_casnap: float | None = None
    ratio_vs_copy: float | None = None
    # casnap only: seconds per phase of the first commit, median of the later commits, restores
    commit_phases_first: dict[str, float] | None = None
    commit_phases_median: dict[str, float] | None = None
    restore_phases: dict[str, float] | None = None
    restore_unchecked_phases: dict[str, float] | None = None


class Log:
    """Progress output: stdout normally, stderr when stdout carries the JSON result."""

    def __init__(self, to_stderr: bool) -> None:
        self.stream = sys.stderr if to_stderr else sys.stdout

    def __call__(self, message: str = "") -> None:
        print(message, file=self.stream, flush=True)


def load_sample() -> ModuleType:
    try:
        from casnap import sample
    except ImportError:
        sys.path.insert(0, str(ROOT))
        from casnap import sample
    if sample.SAMPLE_MARKER != SAMPLE_MARKER:
        raise SystemExit(f"casnap.sample marks its data with {sample.SAMPLE_MARKER!r}")
    return sample


def settle() -> None:
    """Flush dirty pages so one tool's deferred writes are not charged to the next."""
    os.sync()


def select_tools(names: list[str], work: Path, log: Log) -> tuple[list[ToolState], list[str]]:
    states: list[ToolState] = []
    notes: list[str] = []
    for name in names:
        tool = TOOLS[name](work)
        reason = tool.missing()
        if reason:
            note = f"{name}: skipped ({reason})"
            log(f"note: {note}")
            notes.append(note)
        else:
            states.append(ToolState(tool))
    return states, notes


def init_tools(states: list[ToolState], log: Log) -> None:
    for state in states:
        try:
            state.init_seconds = state.tool.init().seconds
        except (ToolError, OSError) as exc:
            state.error = f"init failed: {exc}"
            log(f"  {state.tool.name}: {state.error}")


def snapshot_all(states: list[ToolState], data: Path, step: int, log: Log) -> None:
    for state in states:
        if state.error:
            continue
        tool = state.tool
        try:
            measured = tool.snapshot(data, step)
        except (ToolError, OSError) as exc:
            state.error = f"snapshot {step} failed: {exc}"
            log(f"  {tool.name:<10} {state.error}")
            continue
        settle()
        total = tool.stored_bytes()
        previous = state.rows[-1].stored_total if state.rows else 0
        row = StepRow(
            tool.name,
            step,
            measured.seconds,
            total,
            total - previous,
            measured.rss,
            tool.details(measured),
        )
        state.rows.append(row)
        log(
            f"  {tool.name:<10} {row.seconds:8.2f} s   +{mib(row.stored_added):>9} MiB   "
            f"total {mib(total):>9} MiB   rss {mib(row.rss):>7} MiB"
        )


def nochange_commit(
    states: list[ToolState], data: Path, step: int, log: Log, rounds: int = 3
) -> float | None:
    """casnap's commit of the data dir just committed, unchanged, `rounds` times: the median
    seconds (the no-change target; one such command is ~0.1 s, so one measurement is at the
    mercy of a busy moment). The snapshots they add hold the same files, so the restore that
    follows is not changed."""
    state = next((s for s in states if s.tool.name == "casnap" and not s.error), None)
    if state is None:
        return None
    seconds = []
    for _ in range(rounds):
        try:
            seconds.append(state.tool.snapshot(data, step).seconds)
        except (ToolError, OSError) as exc:
            log(f"  casnap no-change commit failed: {exc}")
            return None
        settle()
    shown = ", ".join(f"{s:.3f}" for s in seconds)
    log(f"  casnap no-change commit {statistics.median(seconds):8.3f} s (median of {shown})")
    return statistics.median(seconds)


def restore_all(states: list[ToolState], data: Path, work: Path, log: Log) -> None:
    for state in states:
        if state.error or not state.rows:
            continue
        tool = state.tool
        target = empty_dir(work / "restore" / tool.name)
        start_restore_alike(tool.repo, work, data)
        try:
            state.restore = tool.restore(data, state.rows[-1].step, target)
        except (ToolError, OSError) as exc:
            state.error = f"restore failed: {exc}"
            log(f"  {tool.name:<10} {state.error}")
            continue
        settle()
        state.comparison = compare_trees(data, target)
        verdict = "ok" if state.comparison.ok else "MISMATCH"
        if state.comparison.ok and not state.comparison.exact:
            verdict += " (SQLite header bytes differ, as allowed)"
        log(f"  {tool.name:<10} {state.restore.seconds:8.2f} s   {verdict}")
        for problem in state.comparison.problems[:10]:
            log(f"      {problem}")
        shutil.rmtree(target, ignore_errors=True)
        if isinstance(tool, CasnapTool):
            restore_unchecked(state, data, work, log)


def restore_unchecked(state: ToolState, data: Path, work: Path, log: Log) -> None:
    """casnap's restore again without its smoke checks, like for like with restic and borg."""
    tool = state.tool
    assert isinstance(tool, CasnapTool)
    target = empty_dir(work / "restore" / f"{tool.name}-no-smoke")
    start_restore_alike(tool.repo, work, data)
    try:
        state.restore_unchecked = tool.restore_unchecked(data, state.rows[-1].step, target)
    except (ToolError, OSError) as exc:
        state.error = f"restore --no-smoke failed: {exc}"
        log(f"  {tool.name:<10} {state.error}")
        return
    settle()
    state.comparison_unchecked = compare_trees(data, target)
    verdict = "ok" if state.comparison_unchecked.ok else "MISMATCH"
    log(f"  {tool.name + ' --no-smoke':<10} {state.restore_unchecked.seconds:8.2f} s   {verdict}")
    for problem in state.comparison_unchecked.problems[:10]:
        log(f"      {problem}")
    shutil.rmtree(target, ignore_errors=True)


def summarize(state: ToolState) -> Summary:
    rows = state.rows
    first = rows[0] if rows else None
    last = rows[-1] if rows else None
    incr = [r.seconds for r in rows[1:]]
    comparison = state.comparison
    phases = [(r.details or {}).get("phases") for r in rows]
    return Summary(
        tool=state.tool.name,
        first_bytes=first.stored_total if first else None,
        total_bytes=last.stored_total if last else None,
        incr_bytes=(last.stored_total - first.stored_total) if first and last else None,
        first_seconds=first.seconds if first else None,
        mean_incr_seconds=statistics.fmean(incr) if incr else None,
        median_incr_seconds=statistics.median(incr) if incr else None,
        restore_seconds=state.restore.seconds if state.restore else None,
        restore_unchecked_seconds=(
            state.restore_unchecked.seconds if state.restore_unchecked else None
        ),
        peak_rss=max(r.rss for r in rows) if rows else None,
        restore_ok=bool(comparison and comparison.ok)
        and (state.comparison_unchecked is None or state.comparison_unchecked.ok),
        restore_exact=bool(comparison and comparison.exact),
        cache_bytes=state.tool.cache_bytes(),
        error=state.error,
        commit_phases_first=phases[0] if phases else None,
        commit_phases_median=median_phases(phases[1:]),
        restore_phases=phases_of(state.restore.stdout) if state.restore else None,
        restore_unchecked_phases=(
            phases_of(state.restore_unchecked.stdout) if state.restore_unchecked else None
        ),
    )


def add_ratios(summaries: list[Summary]) -> None:
    by_name = {s.tool: s for s in summaries}
    for ref, attr in (("casnap", "ratio_vs_casnap"), ("copy", "ratio_vs_copy")):
        base = by_name.get(ref)
        if base is None or not base.incr_bytes or base.error:
            continue
        for s in summaries:
            if s.incr_bytes is not None:
                setattr(s, attr, s.incr_bytes / base.incr_bytes)


def run_benchmark(args: argparse.Namespace, work: Path, log: Log) -> dict[str, Any]:
    sample = load_sample()
    compile_casnap()
    data = work / "data"
    started = time.perf_counter()
    log(f"work dir: {work}")
    states, notes = select_tools(args.tools, work, log)
    versions = {s.tool.name: s.tool.version() for s in states}
    for name, version in versions.items():
        log(f"  {name:<10} {version}")
    floor = rss_floor()
    log(f"peak RSS measurement floor (launcher of a no-op command): {mib(floor)} MiB")

    t0 = time.perf_counter()
    sample.generate(data, size_mb=args.size_mb, seed=args.seed)
    settle()
    log(f"generated {mib(tree_size(data))} MiB in {time.perf_counter() - t0:.1f} s")
    init_tools(states, log)

    data_sizes: list[dict[str, Any]] = []
    for step in range(args.steps + 1):
        changes = sample.evolve(data, step, seed=args.seed) if step else {}
        settle()
        size = tree_size(data)
        data_sizes.append({"step": step, "data_bytes": size, "changes": changes})
        shown = ", ".join(f"{k}={v}" for k, v in changes.items())
        log(f"step {step}: data {mib(size)} MiB{'  (' + shown + ')' if shown else ''}")
        snapshot_all(states, data, step, log)

    nochange = nochange_commit(states, data, args.steps, log)
    log("restore of the last snapshot:")
    restore_all(states, data, work, log)

    summaries = [summarize(s) for s in states]
    add_ratios(summaries)
    return {
        "config": {
            "size_mb": args.size_mb,
            "steps": args.steps,
            "seed": args.seed,
            "tools": args.tools,
        },
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "versions": versions,
        "rss_floor": floor,
        "notes": notes,
        "data_sizes": data_sizes,
        "init_seconds": {s.tool.name: s.init_seconds for s in states},
        "steps": [asdict(r) for s in states for r in s.rows],
        "restore": {
            s.tool.name: {
                "seconds": s.restore.seconds if s.restore else None,
                "rss": s.restore.rss if s.restore else None,
                "problems": s.comparison.problems if s.comparison else None,
                **(
                    {
                        "no_smoke_seconds": s.restore_unchecked.seconds,
                        "no_smoke_rss": s.restore_unchecked.rss,
                        "no_smoke_problems": (
                            s.comparison_unchecked.problems if s.comparison_unchecked else None
                        ),
                    }
                    if s.restore_unchecked
                    else {}
                ),
            }
            for s in states
        },
        "summary": [asdict(s) for s in summaries],
        "nochange_seconds": nochange,
        "wall_seconds": time.perf_counter() - started,
    }


def report(result: dict[str, Any], args: argparse.Namespace, log: Log) -> None:
    met = storage_targets(
        result["summary"], result["restore"], result["nochange_seconds"], args.size_mb
    )
    result["targets"] = as_json(met)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "storage.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    log()
    sizes = ", ".join(mib(d["data_bytes"]) for d in result["data_sizes"])
    log(f"data size per step (MiB): {sizes}")
    log()
    log(format_table(result["summary"], result["rss_floor"]))
    phase_tables(result["summary"], result["config"]["steps"], log)
    log()
    log(format_targets(met))
    for s in result["summary"]:
        if s["error"]:
            log(f"{s['tool']}: {s['error'][:TAIL_CHARS]}")
    for note in result["notes"]:
        log(f"note: {note}")
    log(f"\nwall time {result['wall_seconds']:.1f} s; wrote {json_path}")
    if not (args.no_plot or args.json_only):
        png = args.out / "storage.png"
        write_plot(result, png)
        log(f"wrote {png}")
    if args.json_only:
        print(json.dumps(result, indent=2))


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def tool_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in TOOLS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown tool(s) {unknown}; choose from {list(TOOLS)}")
    return list(dict.fromkeys(names))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Stored bytes, snapshot time, memory and restore of casnap vs other tools.",
    )
    p.add_argument(
        "--size-mb", type=float, default=None, help="sample data size (default 350; --scale 1700)"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="evolution steps after the first (default 10)"
    )
    p.add_argument(
        "--scale",
        action="store_true",
        help=f"the large run: {SCALE_SIZE_MB:g} MiB and {SCALE_STEPS} steps unless set",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for the sample data")
    p.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results",
        help="directory for storage.json and storage.png",
    )
    p.add_argument(
        "--tools",
        type=tool_list,
        default=None,
        help=f"comma-separated subset of {','.join(DEFAULT_TOOLS)} (--many-files: "
        f"{','.join(many_files.DEFAULT_TOOLS)})",
    )
    p.add_argument(
        "--many-files",
        type=int,
        default=0,
        metavar="N",
        help="instead of the sample app: N small files from --seed, first, no-change and changed "
        "commits and a restore, per tool (many_files.py)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="--many-files: rounds of the whole sequence, each on fresh data and repositories "
        "(the table gives medians)",
    )
    p.add_argument(
        "--work",
        type=Path,
        default=None,
        help="parent of the scratch dir (default: the system temp dir)",
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch dir afterwards")
    p.add_argument("--no-plot", action="store_true", help="do not write storage.png")
    p.add_argument(
        "--json-only",
        action="store_true",
        help="print the JSON result on stdout (progress on stderr), no plot",
    )
    args = p.parse_args(argv)
    if args.size_mb is None:
        args.size_mb = SCALE_SIZE_MB if args.scale else 350.0
    if args.steps is None:
        args.steps = SCALE_STEPS if args.scale else 10
    if args.steps < 0 or args.size_mb <= 0:
        p.error("--steps must be >= 0 and --size-mb > 0")
    if args.many_files < 0 or args.rounds < 1:
        p.error("--many-files must be >= 0 and --rounds >= 1")
    if args.tools is None and not args.many_files:
        args.tools = list(DEFAULT_TOOLS)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [HELPER_FLAG]:
        tarzstd_helper(argv[1], Path(argv[2]), Path(argv[3]))
        return 0
    args = parse_args(argv)
    log = Log(to_stderr=args.json_only)
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="casnap-storage-bench-", dir=args.work))
    if args.many_files:
        try:
            result = many_files.main(args, work, log)
        finally:
            if args.keep:
                log(f"kept work dir {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
        if args.json_only:
            print(json.dumps(result, indent=2))
        return 0
    try:
        result = run_benchmark(args, work, log)
    finally:
        if args.keep:
            log(f"kept work dir {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(result, args, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
