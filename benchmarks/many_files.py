"""Many small files: casnap against restic and borg where per-file costs dominate.

What: generate a data dir of N small files from a seed (1-30 KiB, log-uniform, text-like or
random bytes, a few of 64-512 KiB, in a two-level folder tree), then with each tool, in one
fresh repository per round: a first commit, a commit with nothing changed, a commit after a few
percent of the files were modified and a few added and removed, and a restore of that last
snapshot into an empty dir (checked byte for byte). Rounds repeat the whole sequence on freshly
generated data; the table gives each step's median seconds and its ratio to restic's.

Why: a data dir of an app holds, beside its database and indexes, thousands of small files
(uploads, caches, exports). A snapshot tool then pays per file: a stat, an open, a manifest
entry, a file created and made durable on restore. This run puts a number on those costs next
to the established tools.

Run through ``storage.py --many-files N`` (see benchmarks/README.md); writes
``<out>/many_files.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from phase_report import LEGEND, median_phases, phase_table, phases_of
from targets import as_json, format_targets, many_files_targets
from tools import (
    MIB,
    TOOLS,
    Measured,
    Tool,
    ToolError,
    compare_trees,
    empty_dir,
    rss_floor,
    start_restore_alike,
)

DEFAULT_TOOLS = ("casnap", "restic", "borg")
STEPS = ("first", "nochange", "changed", "restore")
KIB = 1024
FILES_PER_DIR = 200  # files per leaf folder; ten leaf folders per top folder
LARGE_SHARE = 0.005  # files of 64-512 KiB
TEXT_SHARE = 0.6  # files of text-like bytes (compressible); the rest random bytes
MODIFIED_SHARE = 0.03  # of the files, rewritten in part before the changed commit
ADDED_SHARE = 0.005
REMOVED_SHARE = 0.005
# letters and spaces with an English-like skew: ~2x compressible, every file unique
_ALPHABET = np.frombuffer(b" etaoinshrdlucmfwypvbgkjqxz\n", dtype=np.uint8)
_WEIGHTS = np.array(
    [18, 12, 9, 8, 7.5, 7, 6.7, 6.3, 6, 5.9, 4.2, 4, 2.8, 2.7, 2.4, 2.2, 2.4, 2, 1.9, 1,
     1.5, 2, 0.8, 0.2, 0.1, 0.2, 0.1, 1.5],
    dtype=np.float64,
)  # fmt: skip
_WEIGHTS /= _WEIGHTS.sum()


def _size(rng: random.Random) -> int:
    if rng.random() < LARGE_SHARE:
        return int(64 * KIB * 8 ** rng.random())  # 64-512 KiB
    return int(KIB * 30 ** rng.random())  # 1-30 KiB, log-uniform


def _content(rng: random.Random, gen: np.random.Generator, size: int) -> bytes:
    if rng.random() < TEXT_SHARE:
        return _ALPHABET[gen.choice(len(_ALPHABET), size=size, p=_WEIGHTS)].tobytes()
    return gen.bytes(size)


def _name(i: int) -> str:
    leaf = i // FILES_PER_DIR
    return f"d{leaf // 10:03d}/s{leaf % 10}/f{i:06d}.dat"


def generate(data: Path, count: int, seed: int) -> int:
    """Write `count` files into data (an empty or missing dir); returns the bytes written."""
    rng = random.Random(seed)
    gen = np.random.default_rng(seed)
    total = 0
    for i in range(count):
        path = data / _name(i)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = _content(rng, gen, _size(rng))
        path.write_bytes(body)
        total += len(body)
    return total


def mutate(data: Path, count: int, seed: int) -> dict[str, int]:
    """Modify a few percent of the files (a stretch rewritten, some appended to), add and
    remove a few; the same seed makes the same changes."""
    rng = random.Random(seed + 1_000_003)
    gen = np.random.default_rng(seed + 1_000_003)
    names = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.dat"))
    picked = rng.sample(names, int(len(names) * (MODIFIED_SHARE + REMOVED_SHARE)))
    cut = int(len(names) * MODIFIED_SHARE)
    modified, removed = picked[:cut], picked[cut:]
    for rel in modified:
        path = data / rel
        body = bytearray(path.read_bytes())
        if rng.random() < 0.5:
            body += _content(rng, gen, rng.randint(100, 4 * KIB))  # appended to
        else:
            at = rng.randrange(len(body))
            n = min(len(body) - at, rng.randint(16, 2 * KIB))
            body[at : at + n] = gen.bytes(n)  # a stretch rewritten in place
        path.write_bytes(bytes(body))
    for rel in removed:
        (data / rel).unlink()
    added = int(count * ADDED_SHARE)
    for k in range(added):
        path = data / _name(count + k)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_content(rng, gen, _size(rng)))
    return {"modified": len(modified), "added": added, "removed": len(removed)}


@dataclass
class Round:
    """One tool's seconds (and casnap's phases) for each step of one round."""

    seconds: dict[str, float] = field(default_factory=dict)
    rss: dict[str, int] = field(default_factory=dict)
    phases: dict[str, dict[str, float] | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _measure(rnd: Round, step: str, measured: Measured) -> None:
    rnd.seconds[step] = measured.seconds
    rnd.rss[step] = measured.rss
    rnd.phases[step] = phases_of(measured.stdout)


class _Run:
    """One round: its data dir, the tools still running (a failure drops a tool from the rest of
    the benchmark) and each tool's measurements."""

    def __init__(self, base: Path, tools: list[Tool], errors: dict[str, str], log: Any) -> None:
        self.base = base
        self.data = base / "data"
        self.errors = errors
        self.log = log
        self.live = {t.name: type(t)(base) for t in tools if t.name not in errors}
        self.rows = {name: Round() for name in self.live}

    def step(self, label: str, fn: Any) -> None:
        """Run fn(tool) with every live tool in turn; record its seconds under label."""
        for name, tool in list(self.live.items()):
            try:
                measured = fn(tool)
            except (ToolError, OSError) as exc:
                self.errors[name] = f"{label} failed: {exc}"
                self.log(f"  {name:<8} {self.errors[name][:300]}")
                del self.live[name]
                continue
            os.sync()  # one tool's deferred writes are not charged to the next
            if measured is not None:
                _measure(self.rows[name], label, measured)
                self.log(f"  {name:<8} {label:<9} {measured.seconds:7.2f} s")

    def restore(self, tool: Tool) -> Measured:
        """Restore the last snapshot into an empty dir and compare it with the data dir."""
        target = empty_dir(self.base / "restore" / tool.name)
        start_restore_alike(tool.repo, self.base, self.data)
        measured = tool.restore(self.data, 2, target)
        os.sync()
        self.rows[tool.name].problems = compare_trees(self.data, target).problems[:10]
        return measured  # the tree stays until the run ends (see run_rounds)


def _steps(run: _Run, count: int, seed: int) -> tuple[int, dict[str, int]]:
    """One round's data generated, and its four steps with each tool in turn; returns the data's
    bytes and the changes made before the third step."""
    t0 = time.perf_counter()
    data_bytes = generate(run.data, count, seed)
    os.sync()
    run.log(f"  {count} files, {data_bytes / MIB:.1f} MiB in {time.perf_counter() - t0:.1f} s")
    run.step("init", lambda t: t.init() and None)
    run.step("first", lambda t: t.snapshot(run.data, 0))
    time.sleep(0.2)  # past casnap's racy window: a later commit, not one at the same instant
    run.step("nochange", lambda t: t.snapshot(run.data, 1))
    changes = mutate(run.data, count, seed)
    os.sync()
    time.sleep(0.2)
    run.step("changed", lambda t: t.snapshot(run.data, 2))
    run.step("restore", run.restore)
    return data_bytes, changes


def run_rounds(
    names: list[str], count: int, seed: int, rounds: int, work: Path, log: Any
) -> dict[str, Any]:
    """Every round: fresh data, fresh repositories, the four steps with each tool in turn."""
    tools: list[Tool] = []
    notes: list[str] = []
    for name in names:
        tool = TOOLS[name](work / "unused")
        reason = tool.missing()
        if reason:
            notes.append(f"{name}: skipped ({reason})")
            log(f"note: {notes[-1]}")
        else:
            tools.append(tool)
    versions = {t.name: t.version() for t in tools}
    results: dict[str, list[Round]] = {t.name: [] for t in tools}
    errors: dict[str, str] = {}
    data_bytes = 0
    changes: dict[str, int] = {}
    # Nothing is removed before the run ends: on ext4 without a journal each new inode passes over
    # every inode freed recently (whose inode table block is still cached), so a restore right
    # after 20k files were removed spent most of its time there, and which tool came after a
    # removal decided the ratio (benchmarks/README.md, "Many small files").
    bases: list[Path] = []
    try:
        for r in range(rounds):
            run = _Run(empty_dir(work / f"round{r}"), tools, errors, log)
            bases.append(run.base)
            log(f"round {r + 1}/{rounds}:")
            data_bytes, changes = _steps(run, count, seed)
            for name, row in run.rows.items():
                if name in run.live:
                    results[name].append(row)
                    for problem in row.problems:
                        log(f"  {name}: {problem}")
    finally:
        for base in bases:
            shutil.rmtree(base, ignore_errors=True)
    return {
        "versions": versions,
        "notes": notes,
        "errors": errors,
        "data_bytes": data_bytes,
        "changes": changes,
        "rounds": {name: [vars(r) for r in rs] for name, rs in results.items()},
    }


def summarize(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """Per tool: median seconds of each step, its ratio to restic's, casnap's median phases."""
    rows: list[dict[str, Any]] = []
    for name, rounds in raw["rounds"].items():
        row: dict[str, Any] = {"tool": name, "rounds": len(rounds)}
        for s in STEPS:
            times = [r["seconds"][s] for r in rounds if s in r["seconds"]]
            row[s] = statistics.median(times) if times else None
            row[f"{s}_phases"] = median_phases([r["phases"].get(s) for r in rounds])
        row["restore_ok"] = bool(rounds) and not any(r["problems"] for r in rounds)
        row["peak_rss"] = max((max(r["rss"].values()) for r in rounds if r["rss"]), default=None)
        rows.append(row)
    base = next((r for r in rows if r["tool"] == "restic"), None)
    for row in rows:
        for s in STEPS:
            ref = base[s] if base else None
            row[f"{s}_vs_restic"] = row[s] / ref if ref and row[s] is not None else None
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: median seconds per step and the ratio to restic's."""
    header = ["tool", *(f"{s} s" for s in STEPS), *(f"{s} vs restic" for s in STEPS), "ok"]
    body = [
        [
            r["tool"],
            *("-" if r[s] is None else f"{r[s]:.2f}" for s in STEPS),
            *("-" if r[f"{s}_vs_restic"] is None else f"{r[f'{s}_vs_restic']:.2f}x" for s in STEPS),
            "yes" if r["restore_ok"] else "NO",
        ]
        for r in rows
    ]
    table = [header, *body]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs) + " |"

    rule = "|".join(
        ":" + "-" * (w + 1) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)
    )
    rule = f"|{rule}|"
    return "\n".join([line(header), rule, *(line(b) for b in body)])


def casnap_phases(rows: list[dict[str, Any]]) -> str | None:
    """Where casnap's time goes, per step (medians over rounds, phase by phase)."""
    row = next((r for r in rows if r["tool"] == "casnap"), None)
    if row is None:
        return None
    commits = [(s, row[s], row[f"{s}_phases"]) for s in ("first", "nochange", "changed")]
    restores = [("restore", row["restore"], row["restore_phases"])]
    return "\n\n".join([phase_table("commit", commits), phase_table("checkout", restores)])


def main(args: argparse.Namespace, work: Path, log: Any) -> dict[str, Any]:
    """Run the many-files benchmark as storage.py's arguments ask; print and write its results."""
    started = time.perf_counter()
    names = list(args.tools or DEFAULT_TOOLS)
    log(f"work dir: {work}")
    floor = rss_floor()
    raw = run_rounds(names, args.many_files, args.seed, args.rounds, work, log)
    rows = summarize(raw)
    met = many_files_targets(rows)
    result = {
        "config": {
            "files": args.many_files,
            "seed": args.seed,
            "rounds": args.rounds,
            "tools": names,
        },
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "rss_floor": floor,
        **raw,
        "summary": rows,
        "targets": as_json(met),
        "wall_seconds": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "many_files.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    log()
    size = raw["data_bytes"] / MIB
    log(f"{args.many_files} files, {size:.1f} MiB; the changed commit after {raw['changes']}")
    log(f"median seconds of {args.rounds} round(s), each in fresh repositories")
    log()
    log(format_table(rows))
    log()
    log(format_targets(met))
    phases = casnap_phases(rows)
    if phases:
        log()
        log(f"where casnap's time goes: {LEGEND}")
        log()
        log(phases)
    for name, error in raw["errors"].items():
        log(f"{name}: {error[:2000]}")
    for note in raw["notes"]:
        log(f"note: {note}")
    log(f"\nwall time {result['wall_seconds']:.1f} s; wrote {path}")
    return result
