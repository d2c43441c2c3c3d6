"""LlamaIndex FaissMapVectorStore stores in every state LlamaIndex's own operations leave them
(delete_nodes with and without delete_from_docstore, delete_ref_doc, insert after a delete,
refresh_ref_docs): each commits without a warning and restores with its smoke checks passing,
and LlamaIndex reopens the copy as it was. What LlamaIndex could not read is still refused."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from casnap.formats import layouts, llamaindex
from tests.helpers_rag import DIM, LLAMAINDEX_DIR, K, query_vectors, quiet
from tests.test_rag_layouts import committed_and_restored, run

NODES = 30
DOCUMENTS = 4


def _embed_model() -> Any:
    """A seeded embedding of each text (no model): LlamaIndex embeds the chunks of documents."""
    with quiet():
        from llama_index.core.embeddings import BaseEmbedding

    class Seeded(BaseEmbedding):
        def _vector(self, text: str) -> list[float]:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            return np.random.default_rng(seed).standard_normal(DIM).tolist()

        def _get_text_embedding(self, text: str) -> list[float]:
            return self._vector(text)

        def _get_query_embedding(self, query: str) -> list[float]:
            return self._vector(query)

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._vector(query)

    return Seeded(model_name="seeded")


def _options() -> dict[str, Any]:
    with quiet():
        from llama_index.core.node_parser import SentenceSplitter

    splitter = SentenceSplitter(chunk_size=64, chunk_overlap=0)
    return {"embed_model": _embed_model(), "transformations": [splitter]}


def nodes(ids: list[str], seed: int = 0) -> list[Any]:
    with quiet():
        from llama_index.core.schema import TextNode

    vectors = np.random.default_rng([seed, len(ids)]).standard_normal((len(ids), DIM))
    return [
        TextNode(id_=i, text=f"text of {i}", embedding=v.astype("float32").tolist())
        for i, v in zip(ids, vectors, strict=True)
    ]


def documents(version: str = "", count: int = DOCUMENTS) -> list[Any]:
    """Documents of a few chunks each (their nodes' ids are new at each insert)."""
    with quiet():
        from llama_index.core import Document

    return [
        Document(
            id_=f"doc{j}",
            text=" ".join(f"Sentence {s} of document {j}{version} says little." for s in range(24)),
        )
        for j in range(count)
    ]


def make_store(folder: Path) -> None:
    """NODES nodes given with their vectors, then DOCUMENTS documents inserted."""
    with quiet():
        import faiss
        from llama_index.core import StorageContext, VectorStoreIndex
        from llama_index.vector_stores.faiss import FaissMapVectorStore

        store = FaissMapVectorStore(faiss_index=faiss.IndexIDMap2(faiss.IndexFlatL2(DIM)))
        context = StorageContext.from_defaults(vector_store=store)
        index = VectorStoreIndex(
            nodes([f"n{i}" for i in range(NODES)]), storage_context=context, **_options()
        )
        for doc in documents():
            index.insert(doc)
        index.storage_context.persist(persist_dir=str(folder))


def load(folder: Path) -> Any:
    """The index as an app reopens it."""
    with quiet():
        from llama_index.core import StorageContext, load_index_from_storage
        from llama_index.vector_stores.faiss import FaissMapVectorStore

        store = FaissMapVectorStore.from_persist_dir(str(folder))
        context = StorageContext.from_defaults(vector_store=store, persist_dir=str(folder))
        return load_index_from_storage(context, **_options())


def seen(folder: Path) -> tuple[list[list[str]], list[str], list[str]]:
    """What LlamaIndex reopens: the vector store's answers to the fixed queries, the index
    struct's nodes and the docstore's."""
    index = load(folder)
    with quiet():
        from llama_index.core.vector_stores import VectorStoreQuery

        answers = [
            list(
                index.vector_store.query(
                    VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=K)
                ).ids
                or []
            )
            for q in query_vectors()
        ]
    return answers, sorted(index.index_struct.nodes_dict), sorted(index.docstore.docs)


def _doc_nodes(index: Any, doc: str) -> list[str]:
    return sorted(index.ref_doc_info[doc].node_ids)


def insert_after_delete(ix: Any) -> None:
    """The new nodes get FAISS ids still in use (the index's ntotal): an id held twice."""
    ix.delete_nodes(["n3"])
    ix.insert_nodes(nodes(["x0", "x1"], seed=1))


def delete_a_reused_id(ix: Any) -> None:
    """Then the older node of that id deleted: the id map names an id the index lacks."""
    ix.delete_nodes(["n3"], delete_from_docstore=True)
    ix.insert_nodes(nodes(["x0"], seed=1))
    ids = ix.vector_store._node_id_to_faiss_id_map
    (older,) = [n for n, i in ids.items() if i == ids["x0"] and n != "x0"]
    ix.delete_nodes([older], delete_from_docstore=True)


def reinsert_then_delete(ix: Any) -> None:
    """A node inserted again, then deleted: its first FAISS id still names it."""
    ix.insert_nodes(nodes(["n5"], seed=2))
    ix.delete_nodes(["n5"], delete_from_docstore=True)


def refresh(ix: Any) -> None:
    """A changed document deleted and inserted again, a new one inserted."""
    ix.refresh_ref_docs(documents("b", 1) + documents(count=DOCUMENTS + 1)[1:])


# what each of LlamaIndex's operations leaves (how the files then disagree)
STATES: dict[str, Callable[[Any], object]] = {
    # the nodes stay in index_store.json and docstore.json, not in the id map
    "delete_nodes": lambda ix: ix.delete_nodes(["n3", "n7", "n9"]),
    "delete_nodes-of-a-document": lambda ix: ix.delete_nodes(_doc_nodes(ix, "doc2")[:1]),
    # every node gone from the vector store: an empty index, a full index struct
    "delete_nodes-all": lambda ix: ix.delete_nodes(sorted(ix.index_struct.nodes_dict)),
    "delete_nodes-from-docstore": lambda ix: ix.delete_nodes(["n3"], delete_from_docstore=True),
    "insert-after-delete": insert_after_delete,
    "delete-a-reused-id": delete_a_reused_id,
    "reinsert-then-delete": reinsert_then_delete,
    # the vector store deletes by node id only: a document's vectors stay, its nodes go
    "delete_ref_doc": lambda ix: ix.delete_ref_doc("doc1"),
    "delete_ref_doc-from-docstore": lambda ix: ix.delete_ref_doc("doc1", delete_from_docstore=True),
    "delete_ref_doc-of-a-node": lambda ix: ix.delete_ref_doc("n4"),
    "refresh_ref_docs": refresh,
}


# how the id map's nodes and the index struct's then part, as the check's detail tells it
KEPT = "not answered by the vector store"  # in the index struct, not in the vector store
STALE = "not in index_store.json"  # in the vector store, not in the index struct
APART: dict[str, tuple[str, ...]] = {
    "delete_nodes": (KEPT,),
    "delete_nodes-of-a-document": (KEPT,),
    "delete_nodes-all": (KEPT,),
    "delete_nodes-from-docstore": (),
    "insert-after-delete": (KEPT,),
    "delete-a-reused-id": (KEPT,),
    "reinsert-then-delete": (STALE,),
    "delete_ref_doc": (STALE,),
    "delete_ref_doc-from-docstore": (STALE,),
    "delete_ref_doc-of-a-node": (KEPT,),
    "refresh_ref_docs": (STALE,),
}


@pytest.mark.parametrize("state", sorted(STATES))
def test_each_state_llamaindex_leaves_commits_and_restores(state: str, tmp_path: Path) -> None:
    data, repo = tmp_path / "data", tmp_path / "repo"
    folder = data / LLAMAINDEX_DIR
    make_store(folder)
    index = load(folder)
    with quiet():
        STATES[state](index)
        index.storage_context.persist(persist_dir=str(folder))
    expected = seen(folder)
    target = tmp_path / "restored"
    found = committed_and_restored(repo, data, target)
    (counts,) = found["llamaindex-counts"]
    told = tuple(note for note in (KEPT, STALE) if note in str(counts["detail"]))
    assert told == APART[state], counts["detail"]
    assert seen(target / LLAMAINDEX_DIR) == expected
    code, _, err = run(repo, data, "verify", "--smoke", "latest")
    assert code == 0, err


def counts(folder: Path) -> Any:
    view = {p.relative_to(folder).as_posix(): p for p in folder.iterdir()}
    (store,) = layouts.find_stores(list(view))
    (found,) = [f for f in llamaindex.check(store, view) if f.check == "llamaindex-counts"]
    return found


def edit_json(path: Path, change: Callable[[Any], None]) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def _id_map(change: Callable[[dict[str, Any], dict[str, Any]], None]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        edit_json(
            folder / llamaindex.ID_MAP,
            lambda m: change(m["faiss_id_to_node_id_map"], m["node_id_to_faiss_id_map"]),
        )

    return edit


def _lose_a_document(folder: Path) -> None:
    edit_json(folder / "docstore.json", lambda d: d["docstore/data"].pop("n0"))


BROKEN: dict[str, tuple[Callable[[Path], None], str]] = {
    "index-id-unmapped": (_id_map(lambda f2n, _: f2n.pop("0")), r"1 unmapped"),
    "mapped-id-not-held": (
        _id_map(lambda f2n, _: f2n.update({"999": "n0"})),
        r"1 not in the index",
    ),
    "mapped-id-not-a-number": (_id_map(lambda f2n, _: f2n.update({"x": "n0"})), r"not a FAISS id"),
    "node-id-not-a-number": (_id_map(lambda _, n2f: n2f.update({"n0": "zero"})), r"not a FAISS id"),
    "node-missing-from-docstore": (_lose_a_document, r"1 node\(s\) of index_store.json missing"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_what_llamaindex_cannot_read_is_still_refused(case: str, tmp_path: Path) -> None:
    break_it, why = BROKEN[case]
    make_store(tmp_path)
    assert counts(tmp_path).ok
    break_it(tmp_path)
    found = counts(tmp_path)
    assert not found.ok
    assert re.search(why, found.detail), found.detail


# A file of the persist dir gone (excluded at commit, deleted by hand, a persist cut short):
# LlamaIndex cannot open the store, so its check must not pass either.
MISSING = {
    "docstore.json": r"docstore.json is missing, yet index_store.json names \d+ node",
    "index_store.json": r"index_store.json is missing",
    "default__vector_store.json": r"id_map.json maps \d+ FAISS id\(s\), yet .* no FAISS",
}


@pytest.mark.parametrize("name", sorted(MISSING))
def test_a_file_llamaindex_needs_missing_is_refused(name: str, tmp_path: Path) -> None:
    make_store(tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises((OSError, ValueError)):
        load(tmp_path)  # LlamaIndex itself cannot open what is left
    found = counts(tmp_path)
    assert not found.ok
    assert re.search(MISSING[name], found.detail), found.detail


def test_a_docstore_persisted_alone_passes(tmp_path: Path) -> None:
    """An ingestion pipeline's persist dir holds docstore.json alone: nothing is missing."""
    with quiet():
        from llama_index.core.ingestion import IngestionPipeline
        from llama_index.core.storage.docstore import SimpleDocumentStore

        pipeline = IngestionPipeline(transformations=[], docstore=SimpleDocumentStore())
        pipeline.run(documents=documents())
        pipeline.persist(str(tmp_path))
    view = {p.relative_to(tmp_path).as_posix(): p for p in tmp_path.rglob("*") if p.is_file()}
    (store,) = layouts.find_stores(list(view))
    assert all(f.ok for f in llamaindex.check(store, view))
