"""Smoke checks of FAISS indexes: each is read and searched once (in the probe child), and its
vector count compared with its `.meta.json` sidecar.

A sidecar is the application's convention: when the snapshot being restored holds both files,
a disagreement is what its commit warned of, and the check warns too (it passes); when the
restore would pair an index with a sidecar from elsewhere (a partial checkout), it fails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from casnap.faiss_child import probe_faiss
from casnap.formats.faiss import (
    FaissHeader,
    faiss_header,
    read_sidecar,
    sidecar_ntotal,
    sidecar_of,
)
from casnap.smoke_report import Check


class FaissTarget(NamedTuple):
    """An index to check: where it is, its header, and the vector count its sidecar states."""

    rel: str
    path: Path
    header: FaissHeader | None
    sidecar: str | None  # relative path of its sidecar when one exists
    expected: int | None  # the sidecar's ntotal
    sidecar_error: str | None = None
    sidecar_restored: bool = False  # the sidecar is restored with the index (same snapshot)

    @property
    def binary(self) -> bool:
        """Whether the index is read as a binary index (its header says so)."""
        return bool(self.header and self.header.binary)


def check_faiss(targets: Sequence[FaissTarget]) -> list[Check]:
    """faiss-read, faiss-ntotal (against the sidecar) and faiss-search for each index."""
    return faiss_checks(targets, probe_faiss([(t.path, t.binary) for t in targets]))


def faiss_checks(targets: Sequence[FaissTarget], probed: Sequence[dict[str, Any]]) -> list[Check]:
    """The checks of each index from what the probe child reported on it."""
    checks: list[Check] = []
    for t, r in zip(targets, probed, strict=True):
        r = {**r, "detail": str(r.get("detail", "")).replace(str(t.path), t.rel)}
        info: dict[str, Any] = {k: r[k] for k in ("ntotal", "d", "type") if k in r}
        if "ntotal" not in r:  # not readable
            checks.append(Check("faiss-read", t.rel, False, str(r.get("detail", "")), info))
            continue
        desc = f"{r['type']}, d={r['d']}, ntotal={r['ntotal']}"
        checks.append(Check("faiss-read", t.rel, True, desc, info))
        warn = t.sidecar_restored  # the snapshot's own pair: its commit warned of it
        if t.sidecar_error is not None:
            checks.append(Check("faiss-ntotal", t.rel, warn, t.sidecar_error, info, warn))
        elif t.expected is not None:
            if t.expected == r["ntotal"]:
                detail = f"ntotal {r['ntotal']} matches {t.sidecar}"
                checks.append(Check("faiss-ntotal", t.rel, True, detail, info))
            else:
                detail = f"index holds ntotal {r['ntotal']} but {t.sidecar} says {t.expected}"
                if not warn:  # the target's sidecar, not the snapshot's
                    detail += f" (the target's: restore {t.sidecar} with it)"
                checks.append(Check("faiss-ntotal", t.rel, warn, detail, info, warn))
        detail, warned = str(r.get("detail", "")), bool(r.get("warning"))
        checks.append(Check("faiss-search", t.rel, bool(r["ok"]), detail, info, warned))
    return checks


def faiss_targets(view: Mapping[str, Path], heads: Mapping[str, bytes]) -> list[FaissTarget]:
    """The files to check as FAISS indexes among `heads` (each file's first bytes, by relative
    path; the files restored): a FAISS header, or a `.index` file with a sidecar stating
    `ntotal` (an index damaged beyond recognition is then still checked, and fails)."""
    targets = []
    for rel, head in heads.items():
        header = faiss_header(head)
        if header is None and not rel.endswith(".index"):
            continue  # no index, whatever a sidecar says (most files: no sidecar looked for)
        path = view[rel]
        side = sidecar_of(rel)
        side_path = view.get(side)
        meta: dict[str, Any] | None = None
        error = None
        if side_path is not None:
            try:
                meta = read_sidecar(side_path)
            except ValueError as exc:
                error = str(exc)
        expected = sidecar_ntotal(meta) if meta is not None else None
        if header is None and not (rel.endswith(".index") and expected is not None):
            continue
        where = side if side_path is not None else None
        targets.append(FaissTarget(rel, path, header, where, expected, error, side in heads))
    return targets
