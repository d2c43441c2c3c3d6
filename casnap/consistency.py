"""Commit-time consistency of FAISS indexes: truncated files and sidecars that disagree.

A commit warns (and with --strict refuses) when an index is shorter than its header promises,
has no `.meta.json` sidecar, or holds another vector count than its sidecar states. Header
fields only: a commit never loads an index.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from casnap.formats.faiss import (
    file_shortfall,
    read_faiss_header,
    read_sidecar,
    sidecar_ntotal,
    sidecar_of,
)


def consistency_warnings(root: Path, files: Iterable[str]) -> list[str]:
    """One line per FAISS index among `files` (relative to root) shorter than its header fields
    promise (a write cut short), without a `.meta.json` sidecar, or whose sidecar's `ntotal`
    disagrees with the count in the index header (header fields only, never the arrays)."""
    problems = []
    for rel in sorted(set(files)):
        header = read_faiss_header(root / rel)
        if header is None and not rel.endswith(".index"):
            continue
        short = file_shortfall(root / rel) if header is not None else None
        if short is not None:
            problems.append(f"{rel}: FAISS index is {short}")
        side = sidecar_of(rel)
        side_path = root / side
        if not side_path.is_file():
            problems.append(f"{rel}: FAISS index has no {PurePosixPath(side).name} sidecar")
            continue
        try:
            expected = sidecar_ntotal(read_sidecar(side_path))
        except ValueError as exc:
            problems.append(f"{rel}: sidecar {side}: {exc}")
            continue
        if expected is None:
            continue
        if header is None or header.ntotal is None:
            problems.append(
                f"{rel}: cannot read the vector count from its header ({side} says ntotal "
                f"{expected})"
            )
        elif header.ntotal != expected:
            problems.append(
                f"{rel}: {side} says ntotal {expected} but the index holds {header.ntotal}"
            )
    return problems
