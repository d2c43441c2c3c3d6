"""The storage benchmark's report: its table, casnap's phases and the plot (storage.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from phase_report import LEGEND, phase_table
from tools import MIB


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / MIB:.1f}"


COLUMNS = (
    "tool",
    "first MiB",
    "total MiB",
    "incr MiB",
    "incr vs casnap",
    "incr vs copy",
    "first s",
    "incr s mean",
    "incr s median",
    "restore s",
    "restore s no smoke",
    "peak RSS MiB",
    "restore_ok",
)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _ratio(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt) + "x"


def rss_cell(rss: int | None, floor: int) -> str:
    """Peak RSS in MiB, or ``<=floor`` when the command used no more than the launcher."""
    if rss is not None and rss <= floor * 1.05:
        return f"<={mib(floor)}"
    return mib(rss)


def table_rows(summaries: list[dict[str, Any]], floor: int) -> list[list[str]]:
    rows = []
    for s in summaries:
        ok = "error" if s["error"] else ("yes" if s["restore_ok"] else "NO")
        rows.append(
            [
                s["tool"],
                mib(s["first_bytes"]),
                mib(s["total_bytes"]),
                mib(s["incr_bytes"]),
                _ratio(s["ratio_vs_casnap"], ".2f"),
                _ratio(s["ratio_vs_copy"], ".3f"),
                _num(s["first_seconds"], ".2f"),
                _num(s["mean_incr_seconds"], ".2f"),
                _num(s["median_incr_seconds"], ".2f"),
                _num(s["restore_seconds"], ".2f"),
                _num(s.get("restore_unchecked_seconds"), ".2f"),
                rss_cell(s["peak_rss"], floor),
                ok,
            ]
        )
    return rows


def format_table(summaries: list[dict[str, Any]], floor: int) -> str:
    """A Markdown table, aligned so it also reads well in a terminal."""
    rows = [list(COLUMNS), *table_rows(summaries, floor)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]

    def line(cells: list[str]) -> str:
        padded = [
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            ":" + "-" * (w + 1) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([line(rows[0]), rule, *(line(r) for r in rows[1:])])


def phase_tables(summaries: list[dict[str, Any]], steps: int, log: Callable[..., None]) -> None:
    """Where casnap's time went: its first commit, the median of its later commits (per phase)
    and its restores, phase by phase, as its --json reports gave them."""
    timed = [s for s in summaries if s.get("commit_phases_first") or s.get("restore_phases")]
    if not timed:
        return
    commits: list[tuple[str, float | None, dict[str, float] | None]] = []
    restores: list[tuple[str, float | None, dict[str, float] | None]] = []
    for s in timed:
        name = s["tool"]
        commits.append((f"{name} first", s["first_seconds"], s["commit_phases_first"]))
        later = f"{name} later (median of {steps})"
        commits.append((later, s["median_incr_seconds"], s["commit_phases_median"]))
        restores.append((name, s["restore_seconds"], s["restore_phases"]))
        unchecked = s["restore_unchecked_seconds"]
        restores.append((f"{name} --no-smoke", unchecked, s["restore_unchecked_phases"]))
    log()
    log(f"where casnap's time goes: {LEGEND}")
    log()
    log(phase_table("commit", commits))
    log()
    log(phase_table("checkout", restores))


PLOT_COLORS = {
    "casnap": "tab:red",
    "copy": "tab:gray",
    "tarzstd": "tab:brown",
    "restic": "tab:blue",
    "borg": "tab:green",
    "borg-fine": "tab:olive",
}


def write_plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    sizes = result["data_sizes"]
    steps = [d["step"] for d in sizes]
    left.plot(steps, [d["data_bytes"] / MIB for d in sizes], "k--", label="data dir (live)")
    for name in dict.fromkeys(r["tool"] for r in result["steps"]):
        rows = [r for r in result["steps"] if r["tool"] == name]
        xs = [r["step"] for r in rows]
        style = {
            "marker": "o",
            "ms": 3,
            "label": name,
            "color": PLOT_COLORS.get(name),
            "lw": 2.5 if name == "casnap" else 1.5,
        }
        left.plot(xs, [r["stored_total"] / MIB for r in rows], **style)
        right.plot(xs, [max(r["stored_added"], 1) / MIB for r in rows], **style)
    cfg = result["config"]
    left.set_title(f"Cumulative stored size ({cfg['size_mb']:g} MiB sample, seed {cfg['seed']})")
    right.set_title("Stored bytes added by each snapshot")
    for ax in (left, right):
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("snapshot (step)")
        ax.set_ylabel("MiB (log scale)")
        ax.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)  # the right panel uses the same colours
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
