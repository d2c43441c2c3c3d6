"""RAG-store benchmark: what a history of snapshots of Chroma, LangChain and LlamaIndex costs.

What: for each framework, build a store of N documents (seeded embeddings, no model), snapshot it
with every tool, then apply R rounds of +3% / 1% updated / 0.5% deleted through the framework's
own API and snapshot after each round. Record the bytes each round adds to each tool's repository
and the seconds each snapshot takes, and the store's query results when each was taken (from a
fresh process, on a copy of the files). After the last round, restore every tool's last
snapshot, reopen it in its framework and compare its results with those recorded; restore every
casnap snapshot by id the same way, and check that `ls` lists exactly the restored files and
`cat` streams each with the hash the restored file has. casnap's commit warnings are counted.
With `--live`, also snapshot a Chroma store while another process keeps adding to it, restore
each snapshot and check that its `chroma.sqlite3` passes `PRAGMA integrity_check` and reopens.

Why: these are the stores RAG apps actually write. Deletions compact FAISS arrays and Chroma
rewrites its HNSW segment; the bytes a tool adds per round show whether its chunking survives
that, and the live test whether its snapshots of a database being written are usable at all.

Usage::

    python benchmarks/rag.py [--docs 30000] [--rounds 6] [--dim 384] [--seed 0]
        [--stores chroma,langchain,llamaindex] [--tools casnap,borg-fine,restic] [--live]

Needs the frameworks: `pip install -e '.[rag]'`. Results go to `<out>/rag.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rag_stores import (  # noqa: E402
    STORES,
    chroma_writer,
    make_store,
    query_in_child,
    quiet_frameworks,
)
from tools import (  # noqa: E402
    MIB,
    ROOT,
    TOOLS,
    CasnapTool,
    Tool,
    ToolError,
    capture,
    compile_casnap,
    empty_dir,
    tree_size,
)

DEFAULT_TOOLS = ("casnap", "borg-fine", "restic")


def snapshot(tool: Tool, data: Path, step: int) -> dict[str, Any]:
    before = tool.stored_bytes()
    measured = tool.snapshot(data, step)
    after = tool.stored_bytes()
    row = {"step": step, "seconds": measured.seconds, "added": after - before, "total": after}
    if isinstance(tool, CasnapTool):
        row["id"] = json.loads(measured.stdout)["id"]
        row["warnings"] = [ln for ln in measured.stderr.splitlines() if "warning" in ln]
    return row


def recorded_results(name: str, data: Path, scratch: Path, args: argparse.Namespace) -> Any:
    """The store's query results as a fresh process finds them in a copy of its files taken now
    (a framework may write when it opens a store: the live one is left alone)."""
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(data, scratch, symlinks=True)
    try:
        return query_in_child(name, scratch, args.dim, args.seed)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def check_every_snapshot(
    name: str,
    tool: CasnapTool,
    data: Path,
    rows: list[dict[str, Any]],
    expected: list[Any],
    base: Path,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Restore each of casnap's snapshots by id, reopen it in its framework and compare the
    results with those recorded when it was taken; `ls` lists exactly the restored files and
    `cat` streams each of them with the hash `ls` gives and the restored file has."""
    import blake3

    out = []
    for row in rows:
        target = empty_dir(base / "restore" / f"casnap-{row['step']}")
        entry: dict[str, Any] = {"step": row["step"], "id": row["id"]}
        try:
            entry["seconds"] = tool.restore(data, row["step"], target, ref=row["id"]).seconds
            on_disk = {  # before the framework opens the store (Chroma writes when it does)
                p.relative_to(target).as_posix(): blake3.blake3(p.read_bytes()).hexdigest()
                for p in target.rglob("*")
                if p.is_file()
            }
            listed = {f["path"]: f["hash"] for f in tool.listing(data, row["id"])}
            entry["ls_matches"] = listed == on_disk
            entry["cat_matches"] = all(
                tool.cat_hash(data, row["id"], path) == digest for path, digest in listed.items()
            )
            entry["same_results"] = (
                query_in_child(name, target, args.dim, args.seed) == expected[row["step"]]
            )
        except (ToolError, RuntimeError) as exc:
            entry["error"] = str(exc)[-500:]
        entry["ok"] = all(entry.get(k) for k in ("same_results", "ls_matches", "cat_matches"))
        shutil.rmtree(target, ignore_errors=True)
        out.append(entry)
    return out


def run_store(name: str, args: argparse.Namespace, work: Path, log: Any) -> dict[str, Any]:
    """Build, evolve and snapshot one framework's store with every tool; restore and requery."""
    base = work / name
    data = base / "data"
    store = make_store(name, data, args.dim, args.seed)
    t0 = time.perf_counter()
    store.build(args.docs)
    log(f"{name}: built {args.docs} documents in {time.perf_counter() - t0:.1f} s")
    tools = [TOOLS[t](base) for t in args.tools]
    rows: dict[str, list[dict[str, Any]]] = {t.name: [] for t in tools}
    errors: dict[str, str] = {}
    for tool in tools:
        tool.init()
    changes = []
    expected = []
    for step in range(args.rounds + 1):
        if step:
            changes.append(store.change(step))
        expected.append(recorded_results(name, data, base / "recorded", args))
        for tool in tools:
            if tool.name in errors:
                continue
            try:
                row = snapshot(tool, data, step)
            except ToolError as exc:
                errors[tool.name] = str(exc)
                continue
            rows[tool.name].append(row)
            warned = f"  {len(row['warnings'])} warnings" if row.get("warnings") else ""
            log(
                f"{name} step {step}: {tool.name:<10} {row['seconds']:6.2f} s  "
                f"+{row['added'] / MIB:8.1f} MiB{warned}"
            )
    store.close()
    restored: dict[str, Any] = {}
    every: list[dict[str, Any]] = []
    for tool in tools:
        if tool.name in errors:
            continue
        target = empty_dir(base / "restore" / tool.name)
        try:
            measured = tool.restore(data, args.rounds, target)
            same = query_in_child(name, target, args.dim, args.seed) == expected[-1]
            restored[tool.name] = {"seconds": measured.seconds, "same_results": same}
        except Exception as exc:  # noqa: BLE001 - a tool's failure is a result, not a crash
            restored[tool.name] = {"seconds": None, "same_results": False, "error": str(exc)}
        log(f"{name} restore: {tool.name:<10} {restored[tool.name]}")
        if isinstance(tool, CasnapTool):
            every = check_every_snapshot(name, tool, data, rows[tool.name], expected, base, args)
            good = sum(1 for e in every if e["ok"])
            log(f"{name}: {good} of {len(every)} casnap snapshots restore, reopen and list right")
    return {
        "store": name,
        "docs": args.docs,
        "data_bytes": tree_size(data),
        "changes": changes,
        "rows": rows,
        "restore": restored,
        "every_casnap_snapshot": every,
        "errors": errors,
    }


def live_chroma(args: argparse.Namespace, work: Path, log: Any) -> dict[str, Any]:
    """Snapshots of a Chroma store another process keeps writing: do they restore usable?"""
    base = work / "live"
    data = base / "data"
    store = make_store("chroma", data, args.dim, args.seed + 1)
    store.build(min(args.docs, 5000))
    tools = [TOOLS[t](base) for t in args.tools]
    for tool in tools:
        tool.init()
    results: dict[str, list[dict[str, Any]]] = {t.name: [] for t in tools}
    with chroma_writer(data, args.dim, args.seed):
        time.sleep(2)
        for step in range(args.live_snapshots):
            for tool in tools:
                entry: dict[str, Any] = {"step": step}
                try:
                    try:
                        tool.snapshot(data, step)
                    except ToolError as exc:
                        if not tool.name.startswith("borg") or "exited with [1]" not in str(exc):
                            raise
                        entry["warning"] = str(exc)[-200:]  # borg's exit 1: a warning, stored
                    target = empty_dir(base / "restore" / f"{tool.name}-{step}")
                    tool.restore(data, step, target)
                    entry.update(check_chroma(target))
                except ToolError as exc:
                    entry.update({"ok": False, "error": str(exc)[-300:]})
                results[tool.name].append(entry)
                log(f"live chroma step {step}: {tool.name:<10} {entry}")
            time.sleep(0.5)
    return {"snapshots": args.live_snapshots, "results": results}


def check_chroma(root: Path) -> dict[str, Any]:
    """integrity_check of a restored chroma.sqlite3, and whether Chroma reopens it."""
    db = root / "chroma.sqlite3"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.Error as exc:
        integrity = f"error: {exc}"
    try:
        import chromadb

        count = chromadb.PersistentClient(path=str(root)).get_collection("docs").count()
        reopened = True
    except Exception:  # noqa: BLE001 - a store that does not reopen is the finding
        count, reopened = None, False
    return {"ok": integrity == "ok" and reopened, "integrity": integrity, "count": count}


def summarize(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per tool: first snapshot bytes, bytes the later rounds added, their ratio to casnap's."""
    out = []
    for tool, rows in result["rows"].items():
        if not rows:
            continue
        later = rows[1:]
        out.append(
            {
                "store": result["store"],
                "tool": tool,
                "first_bytes": rows[0]["total"],
                "incr_bytes": sum(r["added"] for r in later),
                "first_seconds": rows[0]["seconds"],
                "median_incr_seconds": statistics.median(r["seconds"] for r in later)
                if later
                else None,
                "restore": result["restore"].get(tool),
            }
        )
    casnap = next((s["incr_bytes"] for s in out if s["tool"] == "casnap"), None)
    for s in out:
        s["casnap_vs_this"] = casnap / s["incr_bytes"] if casnap and s["incr_bytes"] else None
    return out


def table(summaries: Sequence[dict[str, Any]]) -> str:
    head = (
        "| store | tool | first MiB | added by later rounds MiB | casnap / this | first s "
        "| median later s | restore s | same query results |"
    )
    lines = [head, "|" + "---|" * 9]
    for s in summaries:
        r = s["restore"] or {}
        ratio = f"{s['casnap_vs_this']:.2f}x" if s["casnap_vs_this"] else "-"
        median = f"{s['median_incr_seconds']:.2f}" if s["median_incr_seconds"] else "-"
        restore = f"{r['seconds']:.2f}" if r.get("seconds") is not None else "-"
        lines.append(
            f"| {s['store']} | {s['tool']} | {s['first_bytes'] / MIB:.1f} | "
            f"{s['incr_bytes'] / MIB:.1f} | {ratio} | {s['first_seconds']:.2f} | {median} | "
            f"{restore} | {'yes' if r.get('same_results') else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=30000, help="documents in each store")
    p.add_argument("--rounds", type=int, default=6, help="rounds of change after the first")
    p.add_argument("--dim", type=int, default=384, help="embedding dimension")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stores", default=",".join(STORES))
    p.add_argument("--tools", default=",".join(DEFAULT_TOOLS))
    p.add_argument("--live", action="store_true", help="also the live-write Chroma test")
    p.add_argument("--live-snapshots", type=int, default=4)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    args.tools = [t for t in args.tools.split(",") if t]
    stores = [s for s in args.stores.split(",") if s]
    for option, names, known in (("--tools", args.tools, TOOLS), ("--stores", stores, STORES)):
        unknown = [n for n in names if n not in known]
        if unknown:
            p.error(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    quiet_frameworks()
    compile_casnap()
    work = Path(tempfile.mkdtemp(prefix="casnap-rag-bench-", dir=args.work))
    missing = {t: TOOLS[t](work).missing() for t in args.tools}
    args.tools = [t for t in args.tools if missing[t] is None]
    notes = [f"{t}: {why}" for t, why in missing.items() if why]

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    try:
        results = [run_store(s, args, work, log) for s in stores]
        live = live_chroma(args, work, log) if args.live else None
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    summaries = [s for r in results for s in summarize(r)]
    report = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "versions": {
            t: capture([t, "version" if t == "restic" else "--version"])
            for t in args.tools
            if t != "borg-fine"
        },
        "notes": notes,
        "stores": results,
        "summary": summaries,
        "live": live,
        "wall_seconds": time.perf_counter() - t0,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rag.json").write_text(json.dumps(report, indent=2))
    print(table(summaries))
    for r in results:
        every = r["every_casnap_snapshot"]
        warned = sum(len(row.get("warnings", [])) for row in r["rows"].get("casnap", []))
        if every:
            good = sum(1 for e in every if e["ok"])
            print(
                f"{r['store']}: {good} of {len(every)} casnap snapshots restore by id, reopen "
                f"with the results recorded when taken, and ls/cat match; "
                f"{warned} warnings at commit"
            )
    if live:
        for tool, entries in live["results"].items():
            ok = sum(1 for e in entries if e.get("ok"))
            print(f"live Chroma writes, {tool}: {ok} of {len(entries)} snapshots restore usable")
    print(f"wall time {report['wall_seconds']:.0f} s; wrote {args.out / 'rag.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
