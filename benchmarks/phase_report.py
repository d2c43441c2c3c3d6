"""Where casnap's time goes in a benchmark run: the `phases` of `commit --json` and
`checkout --json` (docs/JSON.md), as medians per phase over steps and as Markdown tables.

Used by ``storage.py`` and ``s3.py``, so every time they report for casnap can be read phase by
phase from the same run.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

try:
    from casnap.phases import CHECKOUT_PHASES, COMMIT_PHASES
except ImportError:  # run from a checkout without casnap installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from casnap.phases import CHECKOUT_PHASES, COMMIT_PHASES

Phases = dict[str, float]
NAMES = {"commit": ("wall", *COMMIT_PHASES), "checkout": ("wall", *CHECKOUT_PHASES)}
# casnap sums these over the threads doing them: they overlap each other and may exceed `wall`
SUMMED = {"commit": ("chunk", "compress", "write"), "checkout": ("read", "decode", "write")}


def phases_of(stdout: str) -> Phases | None:
    """The `phases` of a casnap --json report printed on stdout; None when there are none."""
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        return None
    found = report.get("phases") if isinstance(report, dict) else None
    return {str(k): float(v) for k, v in found.items()} if isinstance(found, dict) else None


def median_phases(reports: Sequence[Phases | None]) -> Phases | None:
    """The median of each phase over the reports that have phases; None when none has."""
    present = [r for r in reports if r]
    if not present:
        return None
    names = dict.fromkeys(k for r in present for k in r)
    return {k: statistics.median(r.get(k, 0.0) for r in present) for k in names}


def phase_table(kind: str, rows: Sequence[tuple[str, float | None, Phases | None]]) -> str:
    """A Markdown table of seconds per phase, one row per (label, seconds of the whole command
    as the benchmark measured it, phases); kind is `commit` or `checkout`. Phases summed over
    threads are marked with a `*` in the header."""
    names = NAMES[kind]
    header = [kind, "process", *(f"{n}*" if n in SUMMED[kind] else n for n in names)]
    body = [
        [
            label,
            "-" if process is None else f"{process:.3f}",
            *("-" if p is None else f"{p.get(n, 0.0):.3f}" for n in names),
        ]
        for label, process, p in rows
    ]
    table = [header, *body]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs]
        return "| " + " | ".join(padded) + " |"

    rule = "|".join(
        ":" + "-" * (w + 1) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)
    )
    return "\n".join([line(header), f"|{rule}|", *(line(r) for r in body)])


LEGEND = (
    "seconds per phase (docs/JSON.md). `process` is the whole command as measured (process - "
    "wall: starting Python and importing casnap), `wall` the operation's elapsed time; phases "
    "marked * are summed over the threads doing them and overlap the rest"
)
