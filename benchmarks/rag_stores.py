"""The stores three RAG frameworks write, built and changed through the frameworks' own APIs.

Chroma (`PersistentClient`: `chroma.sqlite3` plus an HNSW segment dir), LangChain
(`FAISS.save_local`: `index.faiss` + `index.pkl`, beside a WAL-mode `app.db` of the app's own) and
LlamaIndex (`FaissMapVectorStore`, an `IndexIDMap2` over `IndexFlatL2`, plus its JSON stores).
Vectors are seeded random embeddings passed in explicitly: no model is downloaded or run. A round
of change adds 3% new documents, updates 1% (new text and embedding) and deletes 0.5%, as an app
ingesting and curating documents would. `query` returns the top-k ids of fixed query vectors, so
a restored store can be checked to answer exactly as the live one did.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

WORDS = [f"w{i:04d}" for i in range(4000)]
ADD, UPDATE, DELETE = 0.03, 0.01, 0.005
STORES = ("chroma", "langchain", "llamaindex")


def quiet_frameworks() -> None:
    """The frameworks warn about deprecations and telemetry; a benchmark prints its own lines."""
    warnings.filterwarnings("ignore")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    logging.getLogger("chromadb").setLevel(logging.ERROR)


@dataclass
class Corpus:
    """The documents of a store: ids, texts and embeddings, evolving round by round."""

    dim: int
    seed: int
    ids: list[str] = field(default_factory=list)
    next_id: int = 0

    def rng(self, round_: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, round_])

    def text(self, rng: np.random.Generator) -> str:
        return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), 40))

    def vectors(self, rng: np.random.Generator, n: int) -> np.ndarray:
        v = rng.standard_normal((n, self.dim)).astype("float32")
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def new_docs(self, rng: np.random.Generator, n: int) -> tuple[list[str], list[str], np.ndarray]:
        ids = [f"doc{self.next_id + i:07d}" for i in range(n)]
        self.next_id += n
        self.ids.extend(ids)
        return ids, [self.text(rng) for _ in ids], self.vectors(rng, n)

    def pick(self, rng: np.random.Generator, share: float) -> list[str]:
        n = max(1, round(len(self.ids) * share))
        return [self.ids[i] for i in sorted(rng.choice(len(self.ids), n, replace=False))]

    def queries(self, n: int = 8) -> np.ndarray:
        return self.vectors(np.random.default_rng([self.seed, 99999]), n)


class Store:
    """One framework's store in a data dir: build, change, reopen, query."""

    name = ""

    def __init__(self, data: Path, corpus: Corpus) -> None:
        self.data = data
        self.corpus = corpus

    def build(self, n: int) -> None:
        raise NotImplementedError

    def change(self, round_: int) -> dict[str, int]:
        raise NotImplementedError

    def query(self, root: Path, k: int = 5) -> list[list[str]]:
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - most stores hold nothing open
        pass


class ChromaStore(Store):
    """A Chroma PersistentClient dir with one collection."""

    name = "chroma"

    def _collection(self, root: Path) -> Any:
        import chromadb

        client = chromadb.PersistentClient(path=str(root))
        return client.get_or_create_collection("docs", embedding_function=None)

    def build(self, n: int) -> None:
        col = self._collection(self.data)
        rng = self.corpus.rng(0)
        for start in range(0, n, 2000):
            ids, texts, vecs = self.corpus.new_docs(rng, min(2000, n - start))
            col.add(ids=ids, documents=texts, embeddings=vecs)

    def change(self, round_: int) -> dict[str, int]:
        col = self._collection(self.data)
        rng = self.corpus.rng(round_)
        deleted = self.corpus.pick(rng, DELETE)
        col.delete(ids=deleted)
        self.corpus.ids = [i for i in self.corpus.ids if i not in set(deleted)]
        updated = self.corpus.pick(rng, UPDATE)
        col.upsert(
            ids=updated,
            documents=[self.corpus.text(rng) for _ in updated],
            embeddings=self.corpus.vectors(rng, len(updated)),
        )
        n_add = max(1, round(len(self.corpus.ids) * ADD))
        ids, texts, vecs = self.corpus.new_docs(rng, n_add)
        col.add(ids=ids, documents=texts, embeddings=vecs)
        return {"added": n_add, "updated": len(updated), "deleted": len(deleted)}

    def query(self, root: Path, k: int = 5) -> list[list[str]]:
        """Every id the collection holds, and for 8 of its own embeddings the nearest id (itself).
        Top-k of arbitrary queries is no check here: Chroma rebuilds its HNSW graph from the
        queue on open, on several threads, so approximate neighbours vary from one open to the
        next of the very same files."""
        col = self._collection(root)
        ids = sorted(col.get(include=[])["ids"])
        probe = [ids[i] for i in np.linspace(0, len(ids) - 1, 8).astype(int)] if ids else []
        got = col.get(ids=probe, include=["embeddings"]) if probe else {"ids": [], "embeddings": []}
        nearest = []
        if probe:
            found = col.query(query_embeddings=got["embeddings"], n_results=1)
            nearest = [f[0] for f in found["ids"]]
        return [ids, sorted(got["ids"]), sorted(nearest)]


class _FakeEmbeddings:
    """LangChain's Embeddings interface over vectors the benchmark chose (never called for
    documents: they are added with their embeddings)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        raise RuntimeError("documents are added with their embeddings")

    def embed_query(self, text: str) -> list[float]:
        raise RuntimeError("queries are made by vector")


class LangChainStore(Store):
    """`FAISS.save_local` in `faiss_index/`, beside the app's own WAL-mode `app.db`."""

    name = "langchain"

    def _load(self, root: Path) -> Any:
        from langchain_community.vectorstores import FAISS

        return FAISS.load_local(
            str(root / "faiss_index"),
            _FakeEmbeddings(self.corpus.dim),  # type: ignore[arg-type]
            allow_dangerous_deserialization=True,  # our own file, written just now
        )

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.data / "app.db")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS docs(id TEXT PRIMARY KEY, body TEXT, version INT)")
        return db

    def build(self, n: int) -> None:
        from langchain_community.vectorstores import FAISS

        rng = self.corpus.rng(0)
        ids, texts, vecs = self.corpus.new_docs(rng, n)
        store = FAISS.from_embeddings(
            list(zip(texts, vecs.tolist(), strict=True)),
            _FakeEmbeddings(self.corpus.dim),  # type: ignore[arg-type]
            ids=ids,
        )
        store.save_local(str(self.data / "faiss_index"))
        with contextlib.closing(self._db()) as db, db:
            db.executemany("INSERT INTO docs VALUES (?, ?, 0)", zip(ids, texts, strict=True))

    def change(self, round_: int) -> dict[str, int]:
        rng = self.corpus.rng(round_)
        store = self._load(self.data)
        deleted = self.corpus.pick(rng, DELETE)
        store.delete(deleted)
        gone = set(deleted)
        self.corpus.ids = [i for i in self.corpus.ids if i not in gone]
        updated = self.corpus.pick(rng, UPDATE)
        store.delete(updated)
        texts = [self.corpus.text(rng) for _ in updated]
        store.add_embeddings(
            list(zip(texts, self.corpus.vectors(rng, len(updated)).tolist(), strict=True)),
            ids=updated,
        )
        n_add = max(1, round(len(self.corpus.ids) * ADD))
        ids, new_texts, vecs = self.corpus.new_docs(rng, n_add)
        store.add_embeddings(list(zip(new_texts, vecs.tolist(), strict=True)), ids=ids)
        store.save_local(str(self.data / "faiss_index"))
        with contextlib.closing(self._db()) as db, db:
            db.executemany("DELETE FROM docs WHERE id = ?", [(i,) for i in deleted])
            db.executemany(
                "INSERT OR REPLACE INTO docs VALUES (?, ?, ?)",
                [(i, t, round_) for i, t in zip(updated, texts, strict=True)],
            )
            db.executemany(
                "INSERT INTO docs VALUES (?, ?, ?)",
                [(i, t, round_) for i, t in zip(ids, new_texts, strict=True)],
            )
        return {"added": n_add, "updated": len(updated), "deleted": len(deleted)}

    def query(self, root: Path, k: int = 5) -> list[list[str]]:
        store = self._load(root)
        out = []
        for q in self.corpus.queries():
            docs = store.similarity_search_by_vector(q.tolist(), k=k)
            out.append([d.id for d in docs])
        return out


class LlamaIndexStore(Store):
    """A LlamaIndex persist dir: `FaissMapVectorStore` over `IndexIDMap2(IndexFlatL2)`."""

    name = "llamaindex"

    def _embed(self) -> Any:
        from llama_index.core.embeddings import MockEmbedding

        return MockEmbedding(embed_dim=self.corpus.dim)

    def _load(self, root: Path) -> Any:
        from llama_index.core import StorageContext, load_index_from_storage
        from llama_index.vector_stores.faiss import FaissMapVectorStore

        vector_store = FaissMapVectorStore.from_persist_dir(str(root))
        ctx = StorageContext.from_defaults(vector_store=vector_store, persist_dir=str(root))
        return load_index_from_storage(ctx, embed_model=self._embed())

    def _nodes(self, ids: list[str], texts: list[str], vecs: np.ndarray) -> list[Any]:
        from llama_index.core.schema import TextNode

        return [
            TextNode(id_=i, text=t, embedding=v.tolist())
            for i, t, v in zip(ids, texts, vecs, strict=True)
        ]

    def build(self, n: int) -> None:
        import faiss
        from llama_index.core import StorageContext, VectorStoreIndex
        from llama_index.vector_stores.faiss import FaissMapVectorStore

        rng = self.corpus.rng(0)
        ids, texts, vecs = self.corpus.new_docs(rng, n)
        store = FaissMapVectorStore(
            faiss_index=faiss.IndexIDMap2(faiss.IndexFlatL2(self.corpus.dim))
        )
        ctx = StorageContext.from_defaults(vector_store=store)
        VectorStoreIndex(
            self._nodes(ids, texts, vecs), storage_context=ctx, embed_model=self._embed()
        )
        ctx.persist(persist_dir=str(self.data))

    def change(self, round_: int) -> dict[str, int]:
        rng = self.corpus.rng(round_)
        index = self._load(self.data)
        deleted = self.corpus.pick(rng, DELETE)
        index.delete_nodes(deleted, delete_from_docstore=True)
        gone = set(deleted)
        self.corpus.ids = [i for i in self.corpus.ids if i not in gone]
        updated = self.corpus.pick(rng, UPDATE)
        index.delete_nodes(updated, delete_from_docstore=True)
        texts = [self.corpus.text(rng) for _ in updated]
        index.insert_nodes(self._nodes(updated, texts, self.corpus.vectors(rng, len(updated))))
        n_add = max(1, round(len(self.corpus.ids) * ADD))
        ids, new_texts, vecs = self.corpus.new_docs(rng, n_add)
        index.insert_nodes(self._nodes(ids, new_texts, vecs))
        index.storage_context.persist(persist_dir=str(self.data))
        return {"added": n_add, "updated": len(updated), "deleted": len(deleted)}

    def query(self, root: Path, k: int = 5) -> list[list[str]]:
        from llama_index.core.vector_stores.types import VectorStoreQuery

        index = self._load(root)
        out = []
        for q in self.corpus.queries():
            found = index.vector_store.query(
                VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=k)
            )
            out.append(list(found.ids or []))
        return out


STORE_TYPES: dict[str, type[Store]] = {
    cls.name: cls for cls in (ChromaStore, LangChainStore, LlamaIndexStore)
}


def make_store(name: str, data: Path, dim: int, seed: int) -> Store:
    """A store of the named framework in data (created)."""
    data.mkdir(parents=True, exist_ok=True)
    return STORE_TYPES[name](data, Corpus(dim, seed))


@contextlib.contextmanager
def chroma_writer(data: Path, dim: int, seed: int, batch: int = 50) -> Iterator[Any]:
    """A process adding documents to the Chroma store in data without pause until the block
    ends (the live-write test: snapshots taken while it writes must restore consistent)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    proc = ctx.Process(target=_write_forever, args=(str(data), dim, seed, batch, stop), daemon=True)
    proc.start()
    try:
        yield proc
    finally:
        stop.set()
        proc.join(60)
        if proc.is_alive():
            proc.kill()


def _write_forever(data: str, dim: int, seed: int, batch: int, stop: Any) -> None:
    quiet_frameworks()
    import chromadb

    col = chromadb.PersistentClient(path=data).get_or_create_collection(
        "docs", embedding_function=None
    )
    rng = np.random.default_rng([seed, 7777])
    n = 0
    while not stop.is_set():
        ids = [f"live{n + i:07d}" for i in range(batch)]
        n += batch
        vecs = rng.standard_normal((batch, dim)).astype("float32")
        col.add(ids=ids, documents=[f"live document {i}" for i in ids], embeddings=vecs)


def query_in_child(name: str, root: Path, dim: int, seed: int) -> list[list[str]]:
    """A store's query results from a fresh process: what an app that opens the files finds
    (in this process a framework may answer from what it holds in memory)."""
    import json
    import subprocess
    import sys

    argv = [sys.executable, __file__, "--query", name, str(root), str(dim), str(seed)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"reopening {name} at {root} failed: {done.stderr.strip()[-500:]}")
    result: list[list[str]] = json.loads(done.stdout)
    return result


if __name__ == "__main__":
    import json
    import sys

    if sys.argv[1:2] == ["--query"]:
        quiet_frameworks()
        kind, where, dim_, seed_ = sys.argv[2:6]
        store = STORE_TYPES[kind](Path(where), Corpus(int(dim_), int(seed_)))
        print(json.dumps(store.query(Path(where))))
