"""The sample's FAISS indexes: Flat shards, one IVF and one HNSW index, each with a sidecar.

generate_faiss writes them to a size budget; evolve_faiss appends ~1% vectors per step to the last
shard (spilling into new shards), the IVF and the HNSW index. Vectors are unit-length embeddings
drawn around seeded topic centres, so they compress and cluster like real ones.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from casnap.sample_text import BASE_EPOCH, DAY, S_CENTERS, iso, rng_for

DIM = 128
HNSW_M = 16

# Within faiss/: HNSW builds slowly (single-threaded for determinism), so it is capped.
_HNSW_SHARE, _HNSW_MIN, _HNSW_MAX = 0.10, 256, 20_000
_IVF_SHARE = 0.25
_IVF_TRAIN_PER_LIST = 40  # k-means wants >= 39 points per centroid; more only slows training.
# Flat vectors are split so generate() leaves 4 full shards and a 3/4-full last one: at ~1% growth
# per evolve step the last shard fills up and a new one starts after about 6 steps.
_SHARDS_AT_GENERATE = 4.75
_N_CLUSTERS = 64
_CLUSTER_SPREAD = 0.6  # noise norm relative to a unit cluster centre: cosine ~0.85 to the centre

# Vectors added per evolve step, relative to each index's current count.
_VECTOR_RATE = 0.01


class Embedder:
    """Unit-length float32 vectors from a seeded mixture of Gaussian clusters (topics)."""

    def __init__(self, seed: int, *keys: int) -> None:
        centers_rng = rng_for(seed, S_CENTERS)
        centers = centers_rng.standard_normal((_N_CLUSTERS, DIM))
        self._centers = (centers / np.linalg.norm(centers, axis=1, keepdims=True)).astype(
            np.float32
        )
        self._weights = centers_rng.dirichlet(np.full(_N_CLUSTERS, 1.5))
        self.rng = rng_for(seed, *keys)

    def __call__(self, n: int) -> np.ndarray:
        """n embeddings, shape (n, DIM), float32, C-contiguous."""
        labels = self.rng.choice(_N_CLUSTERS, size=n, p=self._weights)
        noise = self.rng.standard_normal((n, DIM), dtype=np.float32)
        x = self._centers[labels] + noise * np.float32(_CLUSTER_SPREAD / math.sqrt(DIM))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return np.ascontiguousarray(x, dtype=np.float32)


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Run FAISS on one thread: parallel HNSW insertion builds a scheduling-dependent graph."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _write_index(index: faiss.Index, path: Path) -> None:
    """Write an index via a temporary file and rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, path)


def _meta_path(index_path: Path) -> Path:
    """`faiss/x.index` -> `faiss/x.meta.json`."""
    return index_path.with_name(index_path.stem + ".meta.json")


def _read_meta(index_path: Path) -> dict[str, Any]:
    """The parsed sidecar of an index."""
    return json.loads(_meta_path(index_path).read_text(encoding="utf-8"))


def _write_meta(index_path: Path, meta: dict[str, Any]) -> None:
    """Write the `<name>.meta.json` sidecar, atomically and with stable key order."""
    path = _meta_path(index_path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _save(index: faiss.Index, path: Path, when: str, extra: dict[str, Any]) -> None:
    """Write a new index and its sidecar."""
    _write_index(index, path)
    meta: dict[str, Any] = {
        "name": path.stem,
        "file": path.name,
        "type": type(index).__name__,
        "dim": int(index.d),
        "ntotal": int(index.ntotal),
        "metric": "L2" if index.metric_type == faiss.METRIC_L2 else "IP",
        "created_at": when,
        "updated_at": when,
        **extra,
    }
    _write_meta(path, meta)


def _update(index: faiss.Index, path: Path, when: str) -> None:
    """Rewrite a changed index and refresh ntotal/updated_at in its sidecar."""
    _write_index(index, path)
    meta = _read_meta(path)
    meta["ntotal"] = int(index.ntotal)
    meta["updated_at"] = when
    _write_meta(path, meta)


def _shard_path(faiss_dir: Path, number: int) -> Path:
    """Path of Flat shard number `number` (shard_000.index, shard_001.index, ...)."""
    return faiss_dir / f"shard_{number:03d}.index"


def _nlist_for(n_vectors: int) -> int:
    """Power of two near sqrt(n), clamped to 64..256: the usual IVF rule of thumb."""
    return min(256, max(64, 2 ** round(math.log2(max(math.sqrt(n_vectors), 1.0)))))


def generate_faiss(faiss_dir: Path, target_bytes: int, embed: Embedder) -> None:
    """Write Flat shards, an IVF and an HNSW index with about target_bytes in total."""
    faiss_dir.mkdir(parents=True, exist_ok=True)
    when = iso([BASE_EPOCH])[0]
    vec_bytes = DIM * 4
    hnsw_vec_bytes = vec_bytes + 4 * 2 * HNSW_M + 32  # vectors, level-0 links, upper levels
    n_hnsw = min(_HNSW_MAX, max(_HNSW_MIN, int(target_bytes * _HNSW_SHARE / hnsw_vec_bytes)))
    n_ivf = max(256, int(target_bytes * _IVF_SHARE / (vec_bytes + 8)))
    flat_bytes = target_bytes - n_hnsw * hnsw_vec_bytes - n_ivf * (vec_bytes + 8)
    n_flat = max(64, flat_bytes // vec_bytes)

    capacity = max(16, math.ceil(n_flat / _SHARDS_AT_GENERATE))
    for number, start in enumerate(range(0, n_flat, capacity)):
        shard = faiss.IndexFlatL2(DIM)
        shard.add(embed(min(capacity, n_flat - start)))
        _save(shard, _shard_path(faiss_dir, number), when, {"capacity": capacity})

    nlist = _nlist_for(n_ivf)
    quantizer = faiss.IndexFlatL2(DIM)
    ivf = faiss.IndexIVFFlat(quantizer, DIM, nlist, faiss.METRIC_L2)
    with _single_thread():
        ivf.train(embed(nlist * _IVF_TRAIN_PER_LIST))
    ivf.add(embed(n_ivf))
    _save(ivf, faiss_dir / "ivf.index", when, {"nlist": nlist})

    hnsw = faiss.IndexHNSWFlat(DIM, HNSW_M)
    with _single_thread():
        hnsw.add(embed(n_hnsw))
    extra = {"M": HNSW_M, "ef_construction": int(hnsw.hnsw.efConstruction)}
    _save(hnsw, faiss_dir / "hnsw.index", when, extra)


def evolve_faiss(faiss_dir: Path, step: int, embed: Embedder) -> dict[str, int]:
    """Append ~1% vectors to the last shard (spilling into new shards), the IVF and the HNSW."""
    when = iso([BASE_EPOCH + step * DAY])[0]
    shards = sorted(faiss_dir.glob("shard_*.index"))
    if not shards:
        raise FileNotFoundError(f"no shard_*.index in {faiss_dir}")
    metas = [_read_meta(p) for p in shards]
    n_flat = sum(int(m["ntotal"]) for m in metas)
    last, last_meta = shards[-1], metas[-1]
    capacity = int(last_meta["capacity"])
    vectors = embed(max(1, round(n_flat * _VECTOR_RATE)))
    added = len(vectors)
    changed = 0

    room = max(0, capacity - int(last_meta["ntotal"]))
    if room:
        shard = faiss.read_index(str(last))
        shard.add(vectors[:room])
        _update(shard, last, when)
        changed += 1
    rest = vectors[room:]
    number = int(last.stem.split("_")[1]) + 1
    new_shards = 0
    while len(rest):
        shard = faiss.IndexFlatL2(DIM)
        shard.add(rest[:capacity])
        _save(shard, _shard_path(faiss_dir, number), when, {"capacity": capacity})
        rest = rest[capacity:]
        number += 1
        new_shards += 1

    for name in ("ivf.index", "hnsw.index"):
        path = faiss_dir / name
        if not path.is_file():
            continue
        index = faiss.read_index(str(path))
        more = embed(max(1, round(index.ntotal * _VECTOR_RATE)))
        with _single_thread():
            index.add(more)
        _update(index, path, when)
        added += len(more)
        changed += 1

    return {
        "vectors_added": added,
        "new_shards": new_shards,
        "indexes_changed": changed + new_shards,
    }
