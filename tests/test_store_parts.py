"""A checkout of some files of a framework store, the others left as they are (`casnap checkout
ID faiss_index/index.faiss`, "restore one file"): the store would hold files of two moments,
which the count checks cannot always tell (the same number of vectors, other ids or vectors).
Such a checkout is refused (store-whole) unless the files it leaves are the snapshot's own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from casnap.cli import cli
from tests.helpers_rag import (
    CHROMA_DIR,
    COLLECTION,
    LANGCHAIN_DIR,
    _chroma,
    _load_langchain,
    make_chroma,
    make_langchain,
    query_chroma,
    query_langchain,
    quiet,
)
from tests.helpers_smoke import CHECK_FAILED
from tests.util import raw_tree


def run(repo: Path, data: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--repo", str(repo), "--data", str(data), *args])
    return result.exit_code, result.stdout, result.stderr


def commit(repo: Path, data: Path) -> str:
    code, out, err = run(repo, data, "commit", "--json")
    assert code == 0, err
    return str(json.loads(out)["id"])


def replace_langchain_documents(data: Path, n: int = 10) -> None:
    """n documents deleted and n others added through LangChain: as many vectors as before."""
    store = _load_langchain(data)
    gone = sorted(store.index_to_docstore_id.values())[:n]
    rng = np.random.default_rng(9)
    with quiet():
        store.delete(gone)
        fresh = [f"new{i}" for i in range(n)]
        vecs = rng.standard_normal((n, 16)).astype("float32")
        store.add_embeddings(list(zip(fresh, vecs.tolist(), strict=True)), ids=fresh)
        store.save_local(str(data / LANGCHAIN_DIR))


def move_chroma_vectors(data: Path, n: int = 150) -> None:
    """n records given new vectors through Chroma: the same ids, its segment persisted."""
    rng = np.random.default_rng(9)
    with quiet():
        client = _chroma(data)
        col = client.get_collection(COLLECTION, embedding_function=None)
        ids = sorted(col.get(include=[])["ids"])[:n]
        col.update(ids=ids, embeddings=rng.standard_normal((n, 16)).astype("float32"))
        client.clear_system_cache()


def test_one_file_of_a_langchain_store_is_not_restored_beside_another_moment(
    tmp_path: Path,
) -> None:
    data, repo = tmp_path / "data", tmp_path / "repo"
    make_langchain(data)
    first = commit(repo, data)
    expected = query_langchain(data)
    replace_langchain_documents(data)
    before = raw_tree(data)
    code, _, err = run(repo, data, "checkout", first, f"{LANGCHAIN_DIR}/index.faiss")
    assert code == CHECK_FAILED, err
    assert "store-whole on faiss_index" in err and "index.pkl" in err and "nothing restored" in err
    assert raw_tree(data) == before
    code, _, err = run(repo, data, "checkout", first, LANGCHAIN_DIR)  # the store whole
    assert code == 0, err
    assert query_langchain(data) == expected


def test_a_damaged_file_is_restored_beside_the_snapshots_own(tmp_path: Path) -> None:
    """The file left in place is the snapshot's: the store is one moment again."""
    data, repo = tmp_path / "data", tmp_path / "repo"
    make_langchain(data)
    first = commit(repo, data)
    expected = query_langchain(data)
    index = data / LANGCHAIN_DIR / "index.faiss"
    index.write_bytes(index.read_bytes()[:1000])
    code, out, err = run(repo, data, "checkout", first, f"{LANGCHAIN_DIR}/index.faiss", "--json")
    assert code == 0, err
    whole = [c for c in json.loads(out)["smoke"]["checks"] if c["check"] == "store-whole"]
    assert [c["ok"] for c in whole] == [True], whole
    assert query_langchain(data) == expected


def test_chromas_database_is_not_restored_beside_a_segment_of_another_moment(
    tmp_path: Path,
) -> None:
    data, repo = tmp_path / "data", tmp_path / "repo"
    make_chroma(data)
    first = commit(repo, data)
    expected = query_chroma(data)
    move_chroma_vectors(data)
    commit(repo, data)  # the moved vectors are saved: only the mix is at stake
    before = raw_tree(data)
    code, _, err = run(repo, data, "checkout", first, f"{CHROMA_DIR}/chroma.sqlite3")
    assert code == CHECK_FAILED, err
    assert "store-whole on chroma" in err and "nothing restored" in err
    assert raw_tree(data) == before
    code, _, err = run(repo, data, "checkout", first, f"{CHROMA_DIR}/chroma.sqlite3", "--no-smoke")
    assert code == 0, err  # asked for all the same
    code, _, err = run(repo, data, "checkout", first, CHROMA_DIR)
    assert code == 0, err
    assert query_chroma(data) == expected


def test_a_snapshot_of_part_of_a_store_is_not_restored_beside_the_rest(tmp_path: Path) -> None:
    """A snapshot committed with faiss_index/index.faiss alone does not hold index.pkl: the
    check found no store in it and passed, and a full checkout of it wrote that index beside a
    docstore of a later moment. The store's files it was not taken of count as of another
    moment: refused, --no-smoke writes it all the same."""
    data, repo = tmp_path / "data", tmp_path / "repo"
    make_langchain(data)
    code, out, err = run(repo, data, "commit", f"{LANGCHAIN_DIR}/index.faiss", "--json")
    assert code == 0, err
    part = str(json.loads(out)["id"])
    replace_langchain_documents(data)
    commit(repo, data)
    before = raw_tree(data)
    for args in ([], [f"{LANGCHAIN_DIR}/index.faiss"]):
        code, _, err = run(repo, data, "checkout", part, *args)
        assert code == CHECK_FAILED, err
        assert "store-whole on faiss_index" in err and "index.pkl" in err, err
        assert "was not taken of" in err and "nothing restored" in err, err
        assert raw_tree(data) == before
    code, _, err = run(repo, data, "checkout", part, "--no-smoke")
    assert code == 0, err
