"""Where a Chroma store's bytes go per round: new bytes per file under casnap's chunker choice,
with and without the `records` chunker for hnswlib's data_level0.bin, and which SQLite tables own
the database pages a round makes new.

What: build a Chroma store of N documents (seeded embeddings, benchmarks/rag_stores.py), then R
rounds of +3% / 1% updated / 0.5% deleted through Chroma's API. After each round, cut every file
as a commit would (the database as the image a commit reads) and count the bytes of pieces never
seen before, uncompressed, per file and per chunker config. Nothing is stored: this isolates the
chunking from compression and bookkeeping, which benchmarks/rag.py measures with the rest.

Why: Chroma rewrites most neighbour lists of its HNSW graph in every round, and the rest of its
bytes are SQLite pages; this shows which part each change of chunking can win.

Usage::

    python benchmarks/chroma_files.py [--docs 30000] [--rounds 3] [--dim 384] [--seed 0]

Needs the rag extra. Results go to `<out>/chroma_files.json`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import blake3

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rag_stores import make_store, quiet_frameworks  # noqa: E402
from tools import MIB, ROOT  # noqa: E402

from casnap import capture  # noqa: E402
from casnap.chunking import choose_chunker  # noqa: E402
from casnap.config import default_config  # noqa: E402

CONFIGS = {
    "records": default_config()["chunker"],
    "fastcdc": {k: v for k, v in default_config()["chunker"].items() if k != "hnsw"},
}


def page_owners(image: Path) -> dict[int, str]:
    """Page number -> table or index owning it (SQLite's dbstat)."""
    with contextlib.closing(sqlite3.connect(f"file:{image}?mode=ro", uri=True)) as conn:
        return dict(
            (pageno, name) for name, pageno in conn.execute("SELECT name, pageno FROM dbstat")
        )


def cut(path: Path, raw: bytes, config: dict[str, Any]) -> list[tuple[bytes, int]]:
    """(id, length) of each piece a commit would cut the file's bytes into under config."""
    chunker = choose_chunker(raw[:100], config, capture.record_layout(path))
    return [(blake3.blake3(p).digest(), len(p)) for p in chunker.split(io.BytesIO(raw))]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=30000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    quiet_frameworks()
    work = Path(tempfile.mkdtemp(prefix="casnap-chroma-files-"))
    seen: dict[str, set[bytes]] = {name: set() for name in CONFIGS}
    rounds: list[dict[str, Any]] = []
    try:
        data = work / "data"
        store = make_store("chroma", data, args.dim, args.seed)
        store.build(args.docs)
        for step in range(args.rounds + 1):
            change = store.change(step) if step else {}
            files: dict[str, dict[str, int]] = {}
            owners: collections.Counter[str] = collections.Counter()
            for path in sorted(p for p in data.rglob("*") if p.is_file()):
                rel = path.relative_to(data).as_posix()
                if path.name == "chroma.sqlite3":
                    with capture.sqlite_image(path, work / "scratch") as image:
                        raw = image.read_bytes()
                        own = page_owners(image) if step else {}
                else:
                    raw = path.read_bytes()
                    own = {}
                files[rel] = {"size": len(raw)}
                for name, config in CONFIGS.items():
                    pieces = cut(path, raw, config)
                    new = [(i, n) for i, (h, n) in enumerate(pieces) if h not in seen[name]]
                    seen[name].update(h for h, _ in pieces)
                    files[rel][name] = sum(n for _, n in new)
                    if own and name == "records":
                        owners.update(own.get(i + 1, "(free)") for i, _ in new)
            rounds.append({"step": step, "change": change, "files": files, "pages": owners})
            print(f"step {step} {change}", file=sys.stderr)
        store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    later = rounds[1:]
    print("| file (Chroma, later rounds summed) | size MiB | new MiB, records | new MiB, fastcdc |")
    print("|---|---:|---:|---:|")
    for rel in later[-1]["files"]:
        kind = rel.split("/")[-1]
        size = later[-1]["files"][rel]["size"]
        rec = sum(r["files"].get(rel, {}).get("records", 0) for r in later)
        cdc = sum(r["files"].get(rel, {}).get("fastcdc", 0) for r in later)
        print(f"| {kind} | {size / MIB:.1f} | {rec / MIB:.1f} | {cdc / MIB:.1f} |")
    pages: collections.Counter[str] = collections.Counter()
    for r in later:
        pages.update(r["pages"])
    print("\n| SQLite table or index | new pages, later rounds summed |\n|---|---:|")
    for name, count in pages.most_common():
        print(f"| {name} | {count} |")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"config": {k: str(v) for k, v in vars(args).items()}, "rounds": rounds}
    (args.out / "chroma_files.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
