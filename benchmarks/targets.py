"""The speed and size targets casnap is held to, checked against one benchmark run.

What: each target is a ratio (or a size, or seconds) of casnap's against a peer's in the same run,
with its limit; a run prints every target it measured as met or missed, with the numbers, and
keeps them as ``targets`` in its JSON. A target the run could not measure (a peer missing, a step
that failed, a data dir of another size) is left out, never counted as met.

Why: the targets are claims about one run on one machine (docs/TUNING.md); printing them with the
run that measured them keeps the claim and its evidence together.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

MIB = 1024 * 1024
# the --scale run's size: the peak RSS target is set at ~1.7 GB of data
SCALE_RSS_FROM_MB = 1500
RSS_LIMIT = 400 * MIB
NO_CHANGE_LIMIT_S = 0.15


@dataclass(frozen=True)
class Target:
    """One target: what, its limit, the value this run measured, and whether that meets it."""

    name: str
    limit: str
    measured: str
    met: bool

    def row(self) -> list[str]:
        return [self.name, self.limit, self.measured, "met" if self.met else "MISSED"]


def ratio_target(
    name: str, ours: float | None, theirs: float | None, limit: float, unit: str = "s"
) -> list[Target]:
    """ours / theirs <= limit, or nothing when either side was not measured (unit: "s" for
    seconds, "MiB" for bytes)."""
    if ours is None or not theirs:
        return []
    ratio = ours / theirs
    a, b = (ours / MIB, theirs / MIB) if unit == "MiB" else (ours, theirs)
    measured = f"{ratio:.2f}x ({a:.2f} / {b:.2f} {unit})"
    return [Target(name, f"<= {limit:g}x", measured, ratio <= limit)]


def storage_targets(
    summaries: list[dict[str, Any]],
    restores: dict[str, dict[str, Any]],
    nochange_seconds: float | None,
    data_mb: float,
) -> list[Target]:
    """The targets of the sample-app run (storage.py), from its summary rows, its restores, the
    seconds of casnap's no-change commit and the data dir's size in MB."""
    by = {s["tool"]: s for s in summaries if not s.get("error")}
    ours = by.get("casnap")
    if ours is None:
        return []
    restic, borg, tar = by.get("restic", {}), by.get("borg-fine", {}), by.get("tarzstd", {})
    out: list[Target] = []
    later = ours["mean_incr_seconds"]
    out += ratio_target("mean later commit vs borg-fine", later, borg.get("mean_incr_seconds"), 0.5)
    out += ratio_target("mean later commit vs restic", later, restic.get("mean_incr_seconds"), 0.4)
    first = ours["first_seconds"]
    out += ratio_target("first commit vs restic", first, restic.get("first_seconds"), 0.6)
    out += ratio_target(
        "restore with smoke checks vs restic",
        ours["restore_seconds"],
        restic.get("restore_seconds"),
        0.5,
    )
    out += ratio_target(
        "restore without smoke checks vs tar+zstd extract",
        ours["restore_unchecked_seconds"],
        tar.get("restore_seconds"),
        1.0,
    )
    incr = ours["incr_bytes"]
    out += ratio_target("incremental bytes vs borg-fine", incr, borg.get("incr_bytes"), 0.2, "MiB")
    out += ratio_target("incremental bytes vs restic", incr, restic.get("incr_bytes"), 0.1, "MiB")
    if nochange_seconds is not None:
        out.append(
            Target(
                f"no-change commit ({data_mb:.0f} MB data dir)",
                f"<= {NO_CHANGE_LIMIT_S:g} s",
                f"{nochange_seconds:.3f} s",
                nochange_seconds <= NO_CHANGE_LIMIT_S,
            )
        )
    if data_mb >= SCALE_RSS_FROM_MB:
        restored = restores.get("casnap", {})
        rss = [ours["peak_rss"], restored.get("rss"), restored.get("no_smoke_rss")]
        peak = max((r for r in rss if r), default=None)
        if peak is not None:
            out.append(
                Target(
                    f"peak RSS of any casnap command ({data_mb:.0f} MB data dir)",
                    f"<= {RSS_LIMIT // MIB} MiB",
                    f"{peak / MIB:.0f} MiB",
                    peak <= RSS_LIMIT,
                )
            )
    return out


def many_files_targets(rows: list[dict[str, Any]]) -> list[Target]:
    """Each step of the many-files run (medians over rounds) <= restic's."""
    by = {r["tool"]: r for r in rows}
    ours, restic = by.get("casnap"), by.get("restic")
    if ours is None or restic is None:
        return []
    out: list[Target] = []
    for step in ("first", "nochange", "changed", "restore"):
        out += ratio_target(f"{step} vs restic", ours.get(step), restic.get(step), 1.0)
    return out


def s3_targets(result: dict[str, Any]) -> list[Target]:
    """The targets of the S3 run (s3.py): the same stored bytes as the local repository, commit
    and checkout within 1.5x of local disk and faster than restic on the same server, and a warm
    log or no-change commit sending one listing and downloading nothing."""
    tools = result.get("tools", {})
    s3, local, restic = (tools.get(n, {}) for n in ("casnap-s3", "casnap-local", "restic-s3"))
    if not s3:
        return []
    out: list[Target] = []
    if local:
        ratio = s3["stored_bytes"] / local["stored_bytes"]
        measured = f"{ratio:.3f}x ({s3['stored_bytes'] / MIB:.1f} / "
        measured += f"{local['stored_bytes'] / MIB:.1f} MiB)"
        out.append(Target("stored bytes on S3 vs local disk", "= 1x", measured, ratio <= 1.001))
    steps = (
        ("first commit", "first_seconds"),
        ("median later commit", "median_later_seconds"),
        ("restore with smoke checks", "restore_seconds"),
        ("restore without smoke checks", "restore_no_smoke_seconds"),
    )
    for what, key in steps:
        out += ratio_target(f"{what}: S3 vs local disk", s3.get(key), local.get(key), 1.5)
    for what, key in steps:
        theirs = restic.get("restore_seconds" if key.startswith("restore") else key)
        out += ratio_target(f"{what}: S3 vs restic on S3", s3.get(key), theirs, 1.0)
    for what, counts in (result.get("requests") or {}).items():
        if not isinstance(counts, dict):
            continue
        # what the target limits is reading: a commit also writes its snapshot and puts and
        # deletes its lock (docs/FORMAT.md, "Locks"), which no cache can spare; shown beside
        reads = {op: n for op, n in counts.items() if op not in WRITES}
        writes = {op: n for op, n in counts.items() if op in WRITES}
        gets = counts.get("GetObject", 0)
        measured = ", ".join(f"{n} {op}" for op, n in reads.items()) or "none"
        if writes:
            measured += " (writes: " + ", ".join(f"{n} {op}" for op, n in writes.items()) + ")"
        ok = sum(reads.values()) == 1 and reads.get("ListObjectsV2", 0) == 1
        out.append(Target(f"warm {what} on S3: requests that read", "1 listing", measured, ok))
        out.append(Target(f"warm {what} on S3: objects downloaded", "0", str(gets), gets == 0))
    return out


# Requests that store or remove an object rather than read one.
WRITES = frozenset({"PutObject", "DeleteObject", "DeleteObjects", "CopyObject"})


def format_targets(targets: Iterable[Target]) -> str:
    """A Markdown table of the targets, aligned for a terminal, with a count of those met."""
    rows = [["target", "limit", "measured", "verdict"], *(t.row() for t in targets)]
    if len(rows) == 1:
        return "targets: none measured in this run"
    widths = [max(len(r[i]) for r in rows) for i in range(4)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    met = sum(r[3] == "met" for r in rows[1:])
    body = [line(r) for r in rows[1:]]
    return "\n".join([line(rows[0]), rule, *body, f"{met} of {len(body)} met"])


def as_json(targets: Iterable[Target]) -> list[dict[str, Any]]:
    return [asdict(t) for t in targets]
