"""The layout modules on their own: what they find in a list of files and what they make of
stores in states the frameworks' own round trips do not reach (a missing file, a header out of
range, a pickle naming a class of its own, a small store Chroma has not persisted yet)."""

from __future__ import annotations

import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from casnap.formats import chroma, hnsw, langchain, layouts, llamaindex
from casnap.formats.pickles import PickleProblem
from casnap.smoke import smoke_check
from tests.helpers_rag import CHROMA_DIR, DIM, LANGCHAIN_DIR, make_chroma, quiet


def files_of(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}


def test_layouts_are_found_by_their_file_names() -> None:
    files = [
        "chroma/chroma.sqlite3",
        "chroma/1b2c/header.bin",
        "chroma/1b2c/data_level0.bin",
        "chroma/1b2c/deeper/header.bin",
        "kb/index.faiss",
        "kb/index.pkl",
        "kb/other.faiss",
        "storage/docstore.json",
        "storage/id_map.json",
        "storage/default__vector_store.json",
        "faiss/flat.index",
        "faiss/flat.meta.json",
    ]
    found = {(s.kind, s.root): s.files for s in layouts.find_stores(files)}
    assert found == {
        ("chroma", "chroma"): (
            "chroma/chroma.sqlite3",
            "chroma/1b2c/data_level0.bin",
            "chroma/1b2c/header.bin",
        ),
        ("langchain", "kb"): ("kb/index.faiss", "kb/index.pkl"),
        ("llamaindex", "storage"): (
            "storage/default__vector_store.json",
            "storage/docstore.json",
            "storage/id_map.json",
        ),
    }


def test_an_hnsw_header_with_impossible_fields_is_refused(tmp_path: Path) -> None:
    make_chroma(tmp_path, n=500)
    raw = next((tmp_path / CHROMA_DIR).glob("*/header.bin")).read_bytes()
    header = hnsw.parse_header(raw)
    assert (header.elements, header.dim) == (500, DIM)
    with pytest.raises(ValueError, match="holds 99 bytes"):
        hnsw.parse_header(raw[:99])
    with pytest.raises(ValueError, match="persistence version 2"):
        hnsw.parse_header(struct.pack("<i", 2) + raw[4:])
    too_many = raw[:20] + struct.pack("<Q", header.capacity + 1) + raw[28:]
    with pytest.raises(ValueError, match="elements in room for"):
        hnsw.parse_header(too_many)


def test_a_missing_segment_file_fails_its_checks(tmp_path: Path) -> None:
    make_chroma(tmp_path)
    view = files_of(tmp_path)
    links = next(r for r in view if r.endswith("/link_lists.bin"))
    del view[links]
    report = smoke_check(view, view)
    failed = {(c.check, c.path) for c in report.failures}
    assert failed == {("hnsw-links", links)}
    assert "hnsw-load" not in {c.check for c in report.checks}  # nothing loaded from half a dir


def test_a_chroma_store_not_yet_persisted_counts_from_its_queue(tmp_path: Path) -> None:
    make_chroma(tmp_path, n=40)  # below the sync threshold: every record is still queued
    view = files_of(tmp_path)
    (store,) = layouts.find_stores(list(view))
    found = layouts.check_store(store, view, deep=True, private=True)
    counts = [f for f in found if f.check == "chroma-counts"]
    assert len(counts) == 1 and counts[0].ok, counts
    assert counts[0].info["segment"] == counts[0].info["embeddings"] == 40
    assert chroma.replay(["a", "b"], [(5, 0, "c"), (6, 3, "a"), (7, 1, "b"), (4, 3, "b")], 4) == {
        "b",
        "c",
    }


class OwnDocstore:
    """A docstore class of the application's own: not one LangChain writes."""

    def __init__(self) -> None:
        self._dict = {"d0": "text"}


def test_a_docstore_pickle_naming_another_class_is_refused() -> None:
    with pytest.raises(PickleProblem, match=r"names tests\.test_layouts\.OwnDocstore"):
        langchain.read_docstore(pickle.dumps((OwnDocstore(), {0: "d0"})))
    with pytest.raises(PickleProblem, match="not a .*pair"):
        langchain.read_docstore(pickle.dumps([1, 2, 3]))


def test_a_llamaindex_store_without_an_id_map_counts_its_index_struct(tmp_path: Path) -> None:
    """A plain FaissVectorStore (IndexFlatL2, no id map): the index struct's nodes against the
    index's ntotal."""
    with quiet():
        import faiss
        from llama_index.core import Settings, StorageContext, VectorStoreIndex
        from llama_index.core.embeddings import MockEmbedding
        from llama_index.core.schema import TextNode
        from llama_index.vector_stores.faiss import FaissVectorStore

        Settings.embed_model = MockEmbedding(embed_dim=DIM)
        vectors = np.random.default_rng(5).standard_normal((30, DIM)).astype("float32")
        store = FaissVectorStore(faiss_index=faiss.IndexFlatL2(DIM))
        context = StorageContext.from_defaults(vector_store=store)
        nodes = [
            TextNode(id_=f"n{i}", text="t", embedding=v.tolist()) for i, v in enumerate(vectors)
        ]
        VectorStoreIndex(nodes, storage_context=context).storage_context.persist(str(tmp_path))
    view = files_of(tmp_path)
    (store_layout,) = layouts.find_stores(list(view))
    found = llamaindex.check(store_layout, view)
    (counts,) = [f for f in found if f.check == "llamaindex-counts"]
    assert counts.ok and counts.info["index_nodes"] == 30, counts
    extra = faiss.read_index(str(tmp_path / "default__vector_store.json"))
    extra.add(vectors[:2])
    faiss.write_index(extra, str(tmp_path / "default__vector_store.json"))
    (counts,) = [f for f in llamaindex.check(store_layout, view) if f.check == "llamaindex-counts"]
    assert not counts.ok and "holds 32 vectors, index_store.json 30" in counts.detail


def test_the_langchain_check_reads_the_pickle_only(tmp_path: Path) -> None:
    from tests.helpers_rag import make_langchain

    make_langchain(tmp_path, n=50)
    view = files_of(tmp_path)
    (store,) = layouts.find_stores(list(view))
    assert store.root == LANGCHAIN_DIR
    found = {f.check: f for f in langchain.check(store, view)}
    assert found["langchain-docstore"].info == {"documents": 50, "positions": 50}
    assert found["langchain-counts"].ok


def test_chroma_segments_without_their_database_fail_their_checks(tmp_path: Path) -> None:
    """Segment folders whose chroma.sqlite3 is gone (excluded, deleted): Chroma opens an empty
    store there and the collections are lost to the app, so the store's check fails."""
    data = tmp_path / "data"
    make_chroma(data)
    (data / CHROMA_DIR / "chroma.sqlite3").unlink()
    shutil.copytree(data / CHROMA_DIR, tmp_path / "copy")
    with quiet():
        import chromadb
        from chromadb.api.client import SharedSystemClient

        SharedSystemClient.clear_system_cache()
        settings = chromadb.Settings(anonymized_telemetry=False)
        client = chromadb.PersistentClient(path=str(tmp_path / "copy"), settings=settings)
        assert client.list_collections() == []  # what Chroma makes of the folder
        SharedSystemClient.clear_system_cache()
    view = files_of(data)
    (store,) = layouts.find_stores(list(view))
    assert store.kind == "chroma" and store.root == CHROMA_DIR
    found = layouts.check_store(store, view, deep=True, private=True)
    failed = [(f.check, f.path) for f in found if not f.ok]
    assert failed == [("chroma-counts", f"{CHROMA_DIR}/chroma.sqlite3")], found
    assert "chroma.sqlite3 is missing" in next(f.detail for f in found if not f.ok)
    report = smoke_check(view, view)
    assert {c.check for c in report.failures} == {"chroma-counts"}
