"""Micro-benchmarks of casnap's building blocks and of its commit/checkout pipeline, in MB/s.

Each case runs on generated data (text-like SQLite pages, float32 embeddings, FAISS files written
by faiss, random bytes) and is repeated; the table and `benchmarks/results/micro.json` give the
median. Run it before and after a change to see a regression:

    .venv/bin/python benchmarks/micro.py                 # about a minute
    .venv/bin/python benchmarks/micro.py --quick         # smaller data, fewer repeats
    .venv/bin/python benchmarks/micro.py --only chunk,codec

Groups: chunk (every chunker), hash (BLAKE3 whole and per piece), codec (every codec and level,
compress and decompress, with the ratio), index (loading and looking up chunk ids), pipeline
(commit of new data, commit of a changed data dir, checkout, on the sample app).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from casnap import compression  # noqa: E402
from casnap.chunkindex import FIELD_DTYPE, ChunkIndex  # noqa: E402
from casnap.chunking import (  # noqa: E402
    Chunker,
    FaissChunker,
    FastCDCChunker,
    SQLitePageChunker,
    make_chunker,
)
from casnap.committer import commit  # noqa: E402
from casnap.config import default_config  # noqa: E402
from casnap.constants import (  # noqa: E402
    CDC_AVG,
    CDC_MAX,
    CDC_MIN,
    FAISS_GRAPH_BLOCK,
    FAISS_IDS_BLOCK,
    FAISS_LIST_BLOCK,
    FAISS_VECTOR_BLOCK,
    FRAME_TARGET,
)
from casnap.ids import ObjectId  # noqa: E402
from casnap.restorer import checkout  # noqa: E402

MB = 1_000_000
GROUPS = ("chunk", "hash", "codec", "index", "pipeline")


def median_rate(fn: Callable[[], Any], nbytes: int, repeats: int) -> tuple[float, float]:
    """(median MB/s, median seconds) of fn over repeats runs (one untimed warm-up first)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return nbytes / MB / sec, sec


# -- generated data ----------------------------------------------------------------------------


def text_db(path: Path, mb: int) -> bytes:
    """A SQLite database of ~mb MB of text rows; its bytes."""
    rng = np.random.default_rng(0)
    words = [f"w{i}x{i % 7}" for i in range(3000)]
    rows = mb * 1_000_000 // 1600
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE docs(id INTEGER PRIMARY KEY, body TEXT)")
        for start in range(0, rows, 2000):
            idx = rng.integers(0, len(words), (min(2000, rows - start), 250))
            db.executemany(
                "INSERT INTO docs(body) VALUES (?)", [(" ".join(words[i] for i in r),) for r in idx]
            )
        db.commit()
    return path.read_bytes()


def embeddings(n: int, dim: int = 128) -> np.ndarray:
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((64, dim)).astype("float32")
    x = centers[rng.integers(0, 64, n)] + 0.05 * rng.standard_normal((n, dim)).astype("float32")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype("float32")


def faiss_files(n: int) -> dict[str, bytes]:
    import faiss

    x = embeddings(n)
    flat = faiss.IndexFlatL2(x.shape[1])
    flat.add(x)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(x.shape[1]), x.shape[1], 64)
    ivf.train(x[: 64 * 40])
    ivf.add(x)
    return {
        "flat": faiss.serialize_index(flat).tobytes(),
        "ivf": faiss.serialize_index(ivf).tobytes(),
    }


def faiss_cdc_chunker() -> Chunker:
    return make_chunker(default_config()["chunker"]["faiss"])


def faiss_chunker() -> FaissChunker:
    return FaissChunker(
        FAISS_VECTOR_BLOCK,
        FAISS_LIST_BLOCK,
        FAISS_GRAPH_BLOCK,
        FAISS_IDS_BLOCK,
        CDC_MIN,
        CDC_AVG,
        CDC_MAX,
    )


# -- groups ------------------------------------------------------------------------------------


def bench_chunk(data: dict[str, bytes], repeats: int) -> list[dict[str, Any]]:
    out = []
    cases = [
        ("fastcdc 2/8/64 KiB", lambda: FastCDCChunker(CDC_MIN, CDC_AVG, CDC_MAX), "random"),
        ("sqlite pages", lambda: SQLitePageChunker(4096), "db"),
        ("faiss flat, fixed blocks", faiss_chunker, "flat"),
        ("faiss ivf, fixed blocks", faiss_chunker, "ivf"),
        ("faiss-cdc flat", faiss_cdc_chunker, "flat"),
        ("faiss-cdc ivf", faiss_cdc_chunker, "ivf"),
    ]
    for name, make, key in cases:
        buf = data[key]

        def run(make: Callable[[], Any] = make, buf: bytes = buf) -> int:
            return sum(len(b.lengths) for b in make().blocks(io.BytesIO(buf)))

        rate, sec = median_rate(run, len(buf), repeats)
        pieces = run()
        out.append(_row("chunk", name, rate, sec, len(buf), pieces=pieces))
    return out


def bench_hash(data: dict[str, bytes], repeats: int) -> list[dict[str, Any]]:
    buf = data["random"]
    view = memoryview(buf)
    out = [
        _row(
            "hash",
            "blake3 whole buffer",
            *median_rate(lambda: blake3.blake3(buf).digest(), len(buf), repeats),
            len(buf),
        )
    ]
    for size in (1024, 4096, 65536):

        def pieces(size: int = size) -> None:
            h = blake3.blake3
            for i in range(0, len(view), size):
                h(view[i : i + size]).digest()

        out.append(
            _row(
                "hash",
                f"blake3 per {size // 1024} KiB piece",
                *median_rate(pieces, len(buf), repeats),
                len(buf),
            )
        )
    return out


def bench_codec(data: dict[str, bytes], repeats: int) -> list[dict[str, Any]]:
    out = []
    floats = data["floats"]
    pages = data["db"]
    cases = [
        ("zstd-1 pages", pages, 1, False),
        ("zstd-3 pages", pages, 3, False),
        ("zstd-5 pages", pages, 5, False),
        ("zstd-1 float32", floats, 1, False),
        ("zstd-3 float32", floats, 3, False),
        ("zstd-grouped4-1 float32", floats, 1, True),
        ("zstd-grouped4-3 float32", floats, 3, True),
    ]
    for name, buf, level, grouped in cases:
        frames = [buf[i : i + FRAME_TARGET] for i in range(0, len(buf), FRAME_TARGET)]

        def enc(
            frames: list[bytes] = frames, level: int = level, grouped: bool = grouped
        ) -> list[bytes]:
            return [compression.encode(f, level, grouped=grouped) for f in frames]

        encoded = enc()
        ratio = len(buf) / sum(len(e) for e in encoded)
        rate, sec = median_rate(enc, len(buf), repeats)
        out.append(_row("codec", f"{name} compress", rate, sec, len(buf), ratio=round(ratio, 3)))

        def dec(encoded: list[bytes] = encoded, frames: list[bytes] = frames) -> None:
            for e, f in zip(encoded, frames, strict=True):
                compression.decode(e, len(f))

        rate, sec = median_rate(dec, len(buf), repeats)
        out.append(_row("codec", f"{name} decompress", rate, sec, len(buf), ratio=round(ratio, 3)))
    raw = data["random"][:FRAME_TARGET]
    rate, sec = median_rate(lambda: compression.encode(raw, 3), len(raw), repeats)
    out.append(_row("codec", "random bytes (stored raw) encode", rate, sec, len(raw)))
    return out


def bench_index(repeats: int, entries: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 256, (entries, 32), dtype=np.uint8)
    fields = np.zeros(entries, dtype=FIELD_DTYPE)
    packs = [ObjectId(bytes([i]) * 32) for i in range(8)]
    fields["pack"] = rng.integers(0, 8, entries)

    def load() -> ChunkIndex:
        idx = ChunkIndex()
        idx.add([(packs, ids, fields)])
        idx.lookup(ids[:1])  # sorts
        return idx

    nbytes = entries * 32
    out = [_row("index", f"load {entries} entries", *median_rate(load, nbytes, repeats), nbytes)]
    idx = load()
    batch = ids[rng.integers(0, entries, 2048)]
    rate, sec = median_rate(lambda: idx.lookup(batch), 2048 * 32, repeats)
    out.append(
        _row(
            "index",
            "lookup batch of 2048 ids",
            rate,
            sec,
            2048 * 32,
            per_id_us=round(sec / 2048 * 1e6, 3),
        )
    )
    return out


def bench_pipeline(size_mb: float, repeats: int, work: Path) -> list[dict[str, Any]]:
    from casnap import sample
    from casnap.repository import Repository

    base = work / "app"
    sample.generate(base, size_mb=size_mb, seed=0)
    total = sum(p.stat().st_size for p in base.rglob("*") if p.is_file())
    firsts, incs, outs, inc_bytes = [], [], [], []
    for r in range(repeats):
        data = work / f"data{r}"
        shutil.copytree(base, data)
        repo = Repository.init(work / f"repo{r}")
        t0 = time.perf_counter()
        commit(repo, data)
        firsts.append(time.perf_counter() - t0)
        time.sleep(0.01)
        sample.evolve(data, 1, seed=0)
        t0 = time.perf_counter()
        res = commit(repo, data)
        incs.append(time.perf_counter() - t0)
        inc_bytes.append(res.bytes_read)
        target = work / f"out{r}"
        t0 = time.perf_counter()
        checkout(repo, "latest", target, safety_snapshot=False, smoke=False)
        outs.append(time.perf_counter() - t0)
        shutil.rmtree(data)
        shutil.rmtree(target)
        shutil.rmtree(work / f"repo{r}")
    first, inc, out = (statistics.median(t) for t in (firsts, incs, outs))
    read = statistics.median(inc_bytes)
    return [
        _row("pipeline", "commit, all new", total / MB / first, first, total),
        _row("pipeline", "commit, changed files re-read", read / MB / inc, inc, int(read)),
        _row("pipeline", "checkout (no smoke checks)", total / MB / out, out, total),
    ]


def _row(
    group: str, case: str, rate: float, sec: float, nbytes: int, **extra: Any
) -> dict[str, Any]:
    return {
        "group": group,
        "case": case,
        "mb_s": round(rate, 1),
        "seconds": round(sec, 5),
        "bytes": nbytes,
        **extra,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller data and 3 repeats")
    ap.add_argument("--repeat", type=int, default=None, help="runs per case (median; default 5)")
    ap.add_argument("--only", default=",".join(GROUPS), help="comma-separated groups to run")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "micro.json")
    args = ap.parse_args(argv)
    repeats = args.repeat or (3 if args.quick else 5)
    groups = [g for g in args.only.split(",") if g]
    unknown = set(groups) - set(GROUPS)
    if unknown:
        ap.error(f"unknown group(s): {', '.join(sorted(unknown))}")
    scale = 8 if args.quick else 32
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="casnap-micro-") as tmp:
        work = Path(tmp)
        data: dict[str, bytes] = {}
        if {"chunk", "hash", "codec"} & set(groups):
            data["db"] = text_db(work / "text.db", scale)
            data["random"] = np.random.default_rng(3).bytes(scale * MB)
            data["floats"] = embeddings(scale * MB // 512).tobytes()
            data.update(faiss_files(scale * MB // 512))
        for group in groups:
            if group == "chunk":
                rows += bench_chunk(data, repeats)
            elif group == "hash":
                rows += bench_hash(data, repeats)
            elif group == "codec":
                rows += bench_codec(data, repeats)
            elif group == "index":
                rows += bench_index(repeats, 50_000 if args.quick else 300_000)
            elif group == "pipeline":
                rows += bench_pipeline(20 if args.quick else 80, max(1, repeats // 2), work)
    width = max(len(r["case"]) for r in rows)
    print(f"{'group':9} {'case':{width}}  {'MB/s':>9}  {'median s':>9}  extra")
    for r in rows:
        extra = ", ".join(
            f"{k}={v}"
            for k, v in r.items()
            if k not in ("group", "case", "mb_s", "seconds", "bytes")
        )
        print(f"{r['group']:9} {r['case']:{width}}  {r['mb_s']:9.1f}  {r['seconds']:9.4f}  {extra}")
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "repeats": repeats,
        "quick": args.quick,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
