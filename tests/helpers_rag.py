"""Small real stores of three RAG frameworks, built, changed and reopened through their own APIs.

Vectors are seeded random float32 passed explicitly (no embedding model is loaded or fetched):

- Chroma: a `PersistentClient` dir `chroma/` with one collection (the HNSW segment persisted
  every 100 operations, so its files exist and a few operations stay queued);
- LangChain: `FAISS.save_local` into `faiss_index/` (index.faiss + index.pkl) beside a WAL-mode
  `app.db` holding the documents;
- LlamaIndex: `StorageContext.persist` into `storage/` with a FaissMapVectorStore (IndexIDMap2
  over IndexFlatL2): default__vector_store.json, id_map.json, docstore.json, index_store.json...

A round of change adds 3% documents, updates 1% (new vectors and text) and deletes 0.5%, as an
app would. query_* reopens a store the way its framework does and returns the top-K ids of
fixed query vectors: two copies of a store are the same to their framework when these agree.
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

DIM = 16
K = 5
QUERIES = 4

CHROMA_DIR = "chroma"
COLLECTION = "docs"
LANGCHAIN_DIR = "faiss_index"
LLAMAINDEX_DIR = "storage"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The frameworks' own deprecation and runtime warnings, which the test run turns into
    errors, ignored while they run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class Runs:
    """An object whose unpickling would run a shell command that creates marker: a hostile
    pickle, and proof of whether anything ran it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _vectors(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    return rng.standard_normal((n, dim)).astype("float32")


def query_vectors(dim: int = DIM) -> np.ndarray:
    """The fixed query vectors every query_* uses."""
    return _vectors(np.random.default_rng(4242), QUERIES, dim)


def _round_sizes(live: int) -> tuple[int, int, int]:
    """(added, updated, deleted) for one round over `live` documents: +3%, 1%, 0.5%."""
    return math.ceil(live * 0.03), math.ceil(live * 0.01), math.ceil(live * 0.005)


def _pick(rng: np.random.Generator, ids: list[str], n: int) -> list[str]:
    return [ids[i] for i in sorted(rng.choice(len(ids), size=n, replace=False))]


# -- Chroma --------------------------------------------------------------------------------------


def _chroma(data: Path) -> Any:
    """A PersistentClient on data/chroma, as a fresh process would open it (the client cache
    Chroma keeps per process is cleared first)."""
    with quiet():
        import chromadb
        from chromadb.api.client import SharedSystemClient

        SharedSystemClient.clear_system_cache()
        settings = chromadb.Settings(anonymized_telemetry=False, allow_reset=True)
        return chromadb.PersistentClient(path=str(data / CHROMA_DIR), settings=settings)


def make_chroma(data: Path, n: int = 600, seed: int = 0, dim: int = DIM) -> None:
    """A Chroma store of n documents of `dim`-dimension vectors in data/chroma."""
    rng = np.random.default_rng(seed)
    with quiet():
        client = _chroma(data)
        col = client.get_or_create_collection(
            COLLECTION,
            embedding_function=None,
            metadata={"hnsw:space": "l2", "hnsw:sync_threshold": 100, "hnsw:batch_size": 50},
        )
        ids = [f"d{i}" for i in range(n)]
        vecs = _vectors(rng, n, dim)
        for s in range(0, n, 250):
            col.add(
                ids=ids[s : s + 250],
                embeddings=vecs[s : s + 250],
                documents=[f"document {i}" for i in range(s, min(n, s + 250))],
            )
        client.clear_system_cache()


def evolve_chroma(data: Path, round_no: int, seed: int = 0, dim: int = DIM) -> None:
    """One round of change through Chroma's API."""
    rng = np.random.default_rng([seed, round_no])
    with quiet():
        client = _chroma(data)
        col = client.get_collection(COLLECTION, embedding_function=None)
        live = sorted(col.get(include=[])["ids"])
        add, upd, dele = _round_sizes(len(live))
        new = [f"r{round_no}-{i}" for i in range(add)]
        col.add(ids=new, embeddings=_vectors(rng, add, dim), documents=[f"new {i}" for i in new])
        changed = _pick(rng, live, upd)
        col.update(ids=changed, embeddings=_vectors(rng, upd, dim), documents=["updated"] * upd)
        col.delete(ids=_pick(rng, sorted(set(live) - set(changed)), dele))
        client.clear_system_cache()


def query_chroma(data: Path, dim: int = DIM) -> list[list[str]]:
    """Top-K ids of the fixed queries, from the store reopened by Chroma."""
    with quiet():
        client = _chroma(data)
        col = client.get_collection(COLLECTION, embedding_function=None)
        found = col.query(query_embeddings=query_vectors(dim), n_results=K, include=[])["ids"]
        client.clear_system_cache()
    return [list(row) for row in found]


# -- LangChain -----------------------------------------------------------------------------------


def _embeddings() -> Any:
    with quiet():
        from langchain_core.embeddings import DeterministicFakeEmbedding

        return DeterministicFakeEmbedding(size=DIM)  # never asked to embed: vectors are given


def _load_langchain(data: Path) -> Any:
    with quiet():
        from langchain_community.vectorstores import FAISS

        return FAISS.load_local(
            str(data / LANGCHAIN_DIR), _embeddings(), allow_dangerous_deserialization=True
        )


def _app_db(data: Path) -> sqlite3.Connection:
    db = sqlite3.connect(data / "app.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS documents(id TEXT PRIMARY KEY, body TEXT)")
    return db


def make_langchain(data: Path, n: int = 400, seed: int = 0) -> None:
    """A LangChain FAISS store of n documents in data/faiss_index, and data/app.db (WAL)."""
    rng = np.random.default_rng(seed)
    data.mkdir(parents=True, exist_ok=True)
    ids = [f"d{i}" for i in range(n)]
    texts = [f"document {i}" for i in range(n)]
    with quiet():
        from langchain_community.vectorstores import FAISS

        store = FAISS.from_embeddings(
            list(zip(texts, _vectors(rng, n).tolist(), strict=True)),
            _embeddings(),
            metadatas=[{"n": i} for i in range(n)],
            ids=ids,
        )
        store.save_local(str(data / LANGCHAIN_DIR))
    with contextlib.closing(_app_db(data)) as db:
        db.executemany("INSERT INTO documents VALUES (?, ?)", zip(ids, texts, strict=True))
        db.commit()


def evolve_langchain(data: Path, round_no: int, seed: int = 0) -> None:
    """One round through LangChain's API (an update is a delete and an add of the same id)."""
    rng = np.random.default_rng([seed, round_no])
    store = _load_langchain(data)
    live = sorted(store.index_to_docstore_id.values())
    add, upd, dele = _round_sizes(len(live))
    changed = _pick(rng, live, upd)
    gone = _pick(rng, sorted(set(live) - set(changed)), dele)
    new = [f"r{round_no}-{i}" for i in range(add)]
    with quiet():
        store.delete(changed + gone)
        fresh = changed + new
        texts = [f"text of {i} in round {round_no}" for i in fresh]
        store.add_embeddings(
            list(zip(texts, _vectors(rng, len(fresh)).tolist(), strict=True)), ids=fresh
        )
        store.save_local(str(data / LANGCHAIN_DIR))
    with contextlib.closing(_app_db(data)) as db:
        db.executemany("DELETE FROM documents WHERE id = ?", [(i,) for i in gone])
        db.executemany(
            "INSERT OR REPLACE INTO documents VALUES (?, ?)", zip(fresh, texts, strict=True)
        )
        db.commit()


def query_langchain(data: Path) -> list[list[str]]:
    """Top-K document ids of the fixed queries, from the store reopened by LangChain."""
    store = _load_langchain(data)
    with quiet():
        return [
            [d.id for d in store.similarity_search_by_vector(q.tolist(), k=K)]
            for q in query_vectors()
        ]


# -- LlamaIndex ----------------------------------------------------------------------------------


def _llama_settings() -> None:
    with quiet():
        from llama_index.core import Settings
        from llama_index.core.embeddings import MockEmbedding

        Settings.embed_model = MockEmbedding(embed_dim=DIM)  # never asked: vectors are given


def _load_llamaindex(data: Path) -> Any:
    _llama_settings()
    with quiet():
        from llama_index.core import StorageContext, load_index_from_storage
        from llama_index.vector_stores.faiss import FaissMapVectorStore

        folder = str(data / LLAMAINDEX_DIR)
        store = FaissMapVectorStore.from_persist_dir(folder)
        context = StorageContext.from_defaults(vector_store=store, persist_dir=folder)
        return load_index_from_storage(context)


def _nodes(ids: list[str], vecs: np.ndarray, text: str) -> list[Any]:
    with quiet():
        from llama_index.core.schema import TextNode

        return [
            TextNode(id_=i, text=f"{text} {i}", embedding=v.tolist())
            for i, v in zip(ids, vecs, strict=True)
        ]


def make_llamaindex(data: Path, n: int = 400, seed: int = 0) -> None:
    """A LlamaIndex persist dir data/storage of n nodes in a FaissMapVectorStore."""
    rng = np.random.default_rng(seed)
    _llama_settings()
    with quiet():
        import faiss
        from llama_index.core import StorageContext, VectorStoreIndex
        from llama_index.vector_stores.faiss import FaissMapVectorStore

        store = FaissMapVectorStore(faiss_index=faiss.IndexIDMap2(faiss.IndexFlatL2(DIM)))
        context = StorageContext.from_defaults(vector_store=store)
        nodes = _nodes([f"n{i}" for i in range(n)], _vectors(rng, n), "document")
        index = VectorStoreIndex(nodes, storage_context=context)
        index.storage_context.persist(persist_dir=str(data / LLAMAINDEX_DIR))


def evolve_llamaindex(data: Path, round_no: int, seed: int = 0) -> None:
    """One round through LlamaIndex's API (an update is a delete and an insert of the node)."""
    rng = np.random.default_rng([seed, round_no])
    index = _load_llamaindex(data)
    live = sorted(index.index_struct.nodes_dict.values())
    add, upd, dele = _round_sizes(len(live))
    changed = _pick(rng, live, upd)
    gone = _pick(rng, sorted(set(live) - set(changed)), dele)
    new = [f"r{round_no}-{i}" for i in range(add)]
    with quiet():
        index.delete_nodes(gone + changed, delete_from_docstore=True)
        fresh = changed + new
        index.insert_nodes(_nodes(fresh, _vectors(rng, len(fresh)), f"round {round_no}"))
        index.storage_context.persist(persist_dir=str(data / LLAMAINDEX_DIR))


def query_llamaindex(data: Path) -> list[list[str]]:
    """Top-K node ids of the fixed queries, from the store reopened by LlamaIndex."""
    index = _load_llamaindex(data)
    with quiet():
        from llama_index.core.schema import QueryBundle

        retriever = index.as_retriever(similarity_top_k=K)
        return [
            [r.node.node_id for r in retriever.retrieve(QueryBundle("q", embedding=q.tolist()))]
            for q in query_vectors()
        ]


Layout = tuple[Callable[..., None], Callable[..., None], Callable[[Path], list[list[str]]]]

#: make, evolve and query of each layout, by name.
LAYOUTS: dict[str, Layout] = {
    "chroma": (make_chroma, evolve_chroma, query_chroma),
    "langchain": (make_langchain, evolve_langchain, query_langchain),
    "llamaindex": (make_llamaindex, evolve_llamaindex, query_llamaindex),
}
