"""FAISS chunking benchmark: what each round of changes to a FAISS index adds to a repository.

What: build FAISS indexes of a realistic size (default 30k unit-length float32 embeddings of
d=384 around topic centres), change them for a few rounds the way RAG applications do, write
each round with `faiss.write_index`, and commit every round into one casnap repository per
chunker through the real commit path (packs, index files, chunk lists and manifests, compressed
as casnap stores them). Reports the bytes each round adds to each repository.

Chunkers compared:
  faiss      fixed blocks inside each array (repositories made before faiss-cdc)
  fastcdc    no FAISS entry in the config: the whole file by FastCDC 2/8/64 KiB
  faiss-cdc  cuts between elements by content (the config of a new repository)
  borg-fine  with --borg: borg 1.x, buzhash,14,20,16,4095, zstd,3 (the finest borg chunker)

Workloads: an index type and what each round does to it
  *-append    +3% vectors
  *-delete    0.5% of the vectors removed (remove_ids)
  *-update    1% removed and added again with new embeddings (delete + re-add)
  *-rebuild   the index built anew from the application's document order: 0.5% deleted,
              1% re-embedded in place, +3% at the end (IVF keeps its trained quantizer; HNSW
              builds a new graph)
  *-mixed     +3%, 1% updated, 0.5% deleted with remove_ids (what LangChain's FAISS.delete and
              add_texts and LlamaIndex's delete_nodes and add do): `langchain` is an IndexFlatL2
              saved as index.faiss (FAISS.save_local), `llamaindex` an IndexIDMap2(IndexFlatL2)
              (FaissMapVectorStore) with ids handed out in order
Index types: flat (IndexFlatL2), idmap2 (IndexIDMap2 over IndexFlatL2), ivf (IndexIVFFlat,
nlist 128), hnsw (IndexHNSWFlat, M 16; it has no remove_ids, so only append and rebuild).

Usage::

    python benchmarks/faiss_chunking.py [--vectors 30000] [--dim 384] [--rounds 5] [--seed 0]
        [--workloads langchain,llamaindex,...] [--borg] [--spec NAME=JSON ...] [--out DIR]

Prints a table (MiB added over rounds 1..N) and writes ``<out>/faiss_chunking.json`` with the
bytes every round added.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from casnap import commit
from casnap.config import default_config, fixed_faiss_chunker
from casnap.repository import Repository

MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent
ADD, UPDATE, DELETE = 0.03, 0.01, 0.005


class Embeddings:
    """Unit-length float32 vectors around seeded topic centres, like a sentence embedder's."""

    def __init__(self, dim: int, seed: int, topics: int = 64, spread: float = 0.6) -> None:
        self.rng = np.random.default_rng(seed)
        centres = self.rng.standard_normal((topics, dim))
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        self.spread = spread / np.sqrt(dim)

    def __call__(self, n: int) -> np.ndarray:
        x = self.centres[self.rng.integers(0, len(self.centres), n)]
        x = x + self.spread * self.rng.standard_normal(x.shape)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32")


class Store:
    """An application's documents (id -> embedding, in document order) and its FAISS index."""

    def __init__(self, kind: str, embed: Embeddings, n: int) -> None:
        self.kind, self.embed = kind, embed
        self.docs: dict[int, np.ndarray] = {}
        self.next_id = 0
        vectors = embed(n)
        self.template: Any = None
        if kind == "ivf":
            self.template = faiss.IndexIVFFlat(
                faiss.IndexFlatL2(embed.centres.shape[1]), vectors.shape[1], 128
            )
            self.template.train(vectors)
        self.index = self.empty()
        self.add(vectors)

    def empty(self) -> Any:
        d = self.embed.centres.shape[1]
        if self.kind == "flat":
            return faiss.IndexFlatL2(d)
        if self.kind == "idmap2":
            return faiss.IndexIDMap2(faiss.IndexFlatL2(d))
        if self.kind == "ivf":
            return faiss.clone_index(self.template)
        return faiss.IndexHNSWFlat(d, 16)

    def add(self, vectors: np.ndarray) -> None:
        ids = np.arange(self.next_id, self.next_id + len(vectors), dtype="int64")
        self.next_id += len(vectors)
        if self.kind in ("idmap2", "ivf"):
            self.index.add_with_ids(vectors, ids)
        else:
            self.index.add(vectors)
        self.docs.update(zip(ids.tolist(), vectors, strict=True))

    def remove(self, doc_ids: list[int]) -> None:
        """remove_ids as the frameworks call it: by position for a bare Flat, else by id."""
        if self.kind == "flat":
            where = {d: i for i, d in enumerate(self.docs)}
            self.index.remove_ids(np.array(sorted(where[d] for d in doc_ids), dtype="int64"))
        else:
            self.index.remove_ids(np.array(doc_ids, dtype="int64"))
        for d in doc_ids:
            del self.docs[d]

    def pick(self, share: float) -> list[int]:
        n = max(1, round(len(self.docs) * share))
        ids = np.fromiter(self.docs, dtype="int64")
        return self.embed.rng.choice(ids, size=n, replace=False).tolist()

    def rebuild(self, deleted: list[int], updated: list[int], added: int) -> None:
        """A new index from the documents in their order: deletions gone, updates in place."""
        for d in deleted:
            del self.docs[d]
        for d, v in zip(updated, self.embed(len(updated)), strict=True):
            self.docs[d] = v
        self.index = self.empty()
        docs = dict(self.docs)
        self.docs = {}
        saved_next, self.next_id = self.next_id, 0
        ids = np.fromiter(docs, dtype="int64")
        vectors = np.stack(list(docs.values()))
        if self.kind in ("idmap2", "ivf"):
            self.index.add_with_ids(vectors, ids)
        else:
            self.index.add(vectors)
        self.docs = docs
        self.next_id = saved_next
        self.add(self.embed(added))


def round_of(op: str) -> Callable[[Store], None]:
    """What one round of workload `op` does to a store."""

    def append(s: Store) -> None:
        s.add(s.embed(round(len(s.docs) * ADD)))

    def delete(s: Store) -> None:
        s.remove(s.pick(DELETE))

    def update(s: Store) -> None:
        ids = s.pick(UPDATE)
        s.remove(ids)
        s.add(s.embed(len(ids)))

    def mixed(s: Store) -> None:
        n = len(s.docs)
        ids = s.pick(UPDATE + DELETE)
        s.remove(ids)
        s.add(s.embed(round(n * ADD) + round(n * UPDATE)))

    def rebuild(s: Store) -> None:
        n = len(s.docs)
        ids = s.pick(UPDATE + DELETE)
        cut = round(n * DELETE)
        s.rebuild(ids[:cut], ids[cut:], round(n * ADD))

    return {
        "append": append,
        "delete": delete,
        "update": update,
        "mixed": mixed,
        "rebuild": rebuild,
    }[op]


WORKLOADS: dict[str, tuple[str, str, str]] = {  # name -> index kind, round, file name
    "langchain": ("flat", "mixed", "index.faiss"),
    "llamaindex": ("idmap2", "mixed", "default__vector_store.json"),
    "flat-append": ("flat", "append", "flat.index"),
    "flat-delete": ("flat", "delete", "flat.index"),
    "flat-update": ("flat", "update", "flat.index"),
    "flat-rebuild": ("flat", "rebuild", "flat.index"),
    "idmap2-append": ("idmap2", "append", "idmap2.index"),
    "idmap2-delete": ("idmap2", "delete", "idmap2.index"),
    "idmap2-update": ("idmap2", "update", "idmap2.index"),
    "idmap2-rebuild": ("idmap2", "rebuild", "idmap2.index"),
    "ivf-append": ("ivf", "append", "ivf.index"),
    "ivf-delete": ("ivf", "delete", "ivf.index"),
    "ivf-update": ("ivf", "update", "ivf.index"),
    "ivf-mixed": ("ivf", "mixed", "ivf.index"),
    "ivf-rebuild": ("ivf", "rebuild", "ivf.index"),
    "hnsw-append": ("hnsw", "append", "hnsw.index"),
    "hnsw-rebuild": ("hnsw", "rebuild", "hnsw.index"),
}


def tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


class CasnapRepo:
    """One casnap repository whose config cuts FAISS files with `spec` (None: no FAISS entry)."""

    def __init__(self, name: str, spec: dict[str, Any] | None, root: Path) -> None:
        self.name, self.root = name, root / name
        cfg = default_config()
        if spec is None:
            del cfg["chunker"]["faiss"]
        else:
            cfg["chunker"]["faiss"] = spec
        Repository.init(self.root, cfg).close()

    def snapshot(self, data: Path) -> int:
        """Commit data; the bytes the repository grew by."""
        before = tree_size(self.root)
        with Repository.open(self.root) as repo:
            commit(repo, data)
        return tree_size(self.root) - before


class BorgRepo:
    """borg 1.x with its finest chunker, as benchmarks/storage.py runs it."""

    def __init__(self, root: Path) -> None:
        self.name, self.root, self.step = "borg-fine", root / "borg-fine", 0
        self.env = {
            **os.environ,
            "BORG_BASE_DIR": str(root / "borg-home"),
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
        }
        subprocess.run(
            ["borg", "init", "--encryption=none", str(self.root)],
            env=self.env,
            check=True,
            capture_output=True,
        )

    def snapshot(self, data: Path) -> int:
        before = tree_size(self.root)
        argv = [
            "borg",
            "create",
            "--compression",
            "zstd,3",
            "--chunker-params",
            "buzhash,14,20,16,4095",
            f"{self.root}::r{self.step}",
            ".",
        ]
        subprocess.run(argv, cwd=data, env=self.env, check=True, capture_output=True)
        self.step += 1
        return tree_size(self.root) - before


def run_workload(name: str, args: argparse.Namespace, specs: dict[str, Any], work: Path) -> dict:
    kind, op, filename = WORKLOADS[name]
    start = time.perf_counter()
    scratch = work / name
    data = scratch / "data"
    data.mkdir(parents=True)
    repos: list[Any] = [CasnapRepo(n, s, scratch) for n, s in specs.items()]
    if args.borg:
        repos.append(BorgRepo(scratch))
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # HNSW builds the same graph every run
    try:
        store = Store(kind, Embeddings(args.dim, args.seed), args.vectors)
        step = round_of(op)
        added: dict[str, list[int]] = {r.name: [] for r in repos}
        for rnd in range(args.rounds + 1):
            if rnd:
                step(store)
            faiss.write_index(store.index, str(data / filename))
            for r in repos:
                added[r.name].append(r.snapshot(data))
    finally:
        faiss.omp_set_num_threads(previous)
    size = (data / filename).stat().st_size
    shutil.rmtree(scratch)
    return {
        "workload": name,
        "index": kind,
        "round": op,
        "file_bytes": size,
        "added": added,
        "seconds": round(time.perf_counter() - start, 1),
    }


def table(results: list[dict], names: list[str], rounds: slice, subject: str) -> str:
    """Markdown table of the MiB each chunker added over `rounds`, and `subject` against the
    others."""
    others = [n for n in names if n != subject] if subject in names else []
    cols = ["workload", "file MiB", *(f"{n} MiB" for n in names)]
    cols += [f"{subject} / {n}" for n in others]
    rows = [cols, ["---"] + ["---:"] * (len(cols) - 1)]
    for r in results:
        mib = {n: sum(r["added"][n][rounds]) for n in names}
        row = [r["workload"], f"{r['file_bytes'] / MIB:.1f}"]
        row += [f"{mib[n] / MIB:.2f}" for n in names]
        row += [f"{mib[subject] / mib[n]:.2f}x" if mib[n] else "-" for n in others]
        rows.append(row)
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vectors", type=int, default=30_000, help="vectors at the start")
    p.add_argument("--dim", type=int, default=384, help="dimension of the embeddings")
    p.add_argument("--rounds", type=int, default=5, help="rounds of changes after the first commit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help="comma-separated, from: " + ", ".join(WORKLOADS),
    )
    p.add_argument(
        "--spec",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="another FAISS chunker config entry to compare (repeatable)",
    )
    p.add_argument("--only-specs", action="store_true", help="compare only the --spec entries")
    p.add_argument("--borg", action="store_true", help="also run borg with its finest chunker")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--work", type=Path, default=None, help="scratch dir parent")
    args = p.parse_args(argv)
    specs: dict[str, Any] = {}
    if not args.only_specs:
        specs = {
            "faiss": fixed_faiss_chunker(),
            "fastcdc": None,
            "faiss-cdc": default_config()["chunker"]["faiss"],
        }
    for item in args.spec:
        name, _, raw = item.partition("=")
        specs[name] = json.loads(raw)
    names = [*specs, *(["borg-fine"] if args.borg else [])]
    if args.borg and shutil.which("borg") is None:
        p.error("--borg: borg not found")
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r}")
    results = []
    with tempfile.TemporaryDirectory(prefix="casnap-faiss-bench-", dir=args.work) as tmp:
        for w in workloads:
            results.append(run_workload(w, args, specs, Path(tmp)))
            r = results[-1]
            print(
                f"{w}: "
                + ", ".join(f"{n} {sum(r['added'][n][1:]) / MIB:.2f} MiB" for n in names)
                + f" ({r['seconds']} s)",
                file=sys.stderr,
                flush=True,
            )
    subject = "faiss-cdc" if "faiss-cdc" in names else names[0]
    print(f"Added over rounds 1-{args.rounds} (MiB stored):\n")
    print(table(results, names, slice(1, None), subject))
    print("\nFirst commit (MiB stored):\n")
    print(table(results, names, slice(0, 1), subject))
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "faiss_chunking.json"
    config = {k: v for k, v in vars(args).items() if k not in ("out", "work")}
    out.write_text(
        json.dumps({"config": config, "chunkers": specs, "results": results}, indent=1) + "\n"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
