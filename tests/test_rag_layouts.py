"""The stores real RAG apps write (Chroma, LangChain FAISS, LlamaIndex FAISS), built and reopened
with the frameworks themselves: committed without a warning, restored so that each reopens with
the same query results, smoke-checked file by file, refused when damaged, never unpickled."""

from __future__ import annotations

import json
import pickle
import sqlite3
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap.cli import cli
from tests.helpers_rag import (
    CHROMA_DIR,
    COLLECTION,
    LANGCHAIN_DIR,
    LAYOUTS,
    LLAMAINDEX_DIR,
    Runs,
)
from tests.helpers_smoke import CHECK_FAILED
from tests.util import raw_tree


def run(repo: Path, data: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--repo", str(repo), "--data", str(data), *args])
    return result.exit_code, result.stdout, result.stderr


def build(name: str, data: Path, rounds: int = 1) -> None:
    make, evolve, _ = LAYOUTS[name]
    make(data)
    for r in range(1, rounds + 1):
        evolve(data, r)


def checks_of(out: str) -> dict[str, list[dict[str, object]]]:
    """The smoke checks of a checkout --json, by check name."""
    by: dict[str, list[dict[str, object]]] = {}
    for ch in json.loads(out)["smoke"]["checks"]:
        by.setdefault(ch["check"], []).append(ch)
    return by


def committed_and_restored(
    repo: Path, data: Path, target: Path
) -> dict[str, list[dict[str, object]]]:
    """Commit data with --strict (no warning, no damage), check it out into target; every smoke
    check passed. The checks, by name."""
    code, out, err = run(repo, data, "commit", "--strict", "--json")
    assert code == 0 and "warning" not in err, err
    assert json.loads(out)["warnings"] == [] and json.loads(out)["damage"] == []
    code, out, err = run(repo, data, "checkout", "latest", "--to", str(target), "--json")
    assert code == 0, err
    found = checks_of(out)
    assert all(c["ok"] for group in found.values() for c in group), found
    return found


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_a_clean_commit_of_each_layout_warns_of_nothing(name: str, tmp_path: Path) -> None:
    data, repo = tmp_path / "data", tmp_path / "repo"
    build(name, data)
    code, _, err = run(repo, data, "commit")
    assert code == 0 and "warning" not in err, err
    LAYOUTS[name][1](data, 2)
    code, out, err = run(repo, data, "commit", "--strict", "--json")
    assert code == 0 and "warning" not in err, err
    assert json.loads(out)["warnings"] == [] and json.loads(out)["damage"] == []


EXPECTED_CHECKS = {
    "chroma": {"hnsw-header", "hnsw-data", "hnsw-links", "hnsw-metadata", "hnsw-load"},
    "langchain": {"faiss-read", "langchain-docstore", "langchain-counts"},
    "llamaindex": {"faiss-read", "llamaindex-json", "llamaindex-counts"},
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_each_layout_restores_and_reopens_with_the_same_results(name: str, tmp_path: Path) -> None:
    _, evolve, query = LAYOUTS[name]
    data, repo = tmp_path / "data", tmp_path / "repo"
    build(name, data)
    results, ids = [], []
    for r in range(2, 4):
        results.append(query(data))
        ids.append(json.loads(run(repo, data, "commit", "--json")[1])["id"])
        evolve(data, r)
    for i, (sid, expected) in enumerate(zip(ids, results, strict=True)):
        target = tmp_path / f"restored{i}"
        code, out, err = run(repo, data, "checkout", sid, "--to", str(target), "--json")
        assert code == 0, err
        assert "warning" not in err
        found = checks_of(out)
        assert EXPECTED_CHECKS[name] <= set(found), sorted(found)
        assert all(ch["ok"] for group in found.values() for ch in group)
        assert query(target) == expected
    code, _, err = run(repo, data, "checkout", ids[0])  # into the data dir itself
    assert code == 0, err
    assert query(data) == results[0]
    smoke = [line for line in err.splitlines() if line.startswith("smoke checks passed")]
    files = int(smoke[0].split(" on ")[1].split()[0])
    assert files >= {"chroma": 5, "langchain": 3, "llamaindex": 6}[name], smoke


def test_chroma_counts_replay_the_queued_operations(tmp_path: Path) -> None:
    data, repo = tmp_path / "data", tmp_path / "repo"
    build("chroma", data, rounds=2)  # the last operations are queued, not yet in the segment
    code, out, err = run(repo, data, "commit", "--json")
    assert code == 0
    code, out, err = run(repo, data, "checkout", "latest", "--to", str(tmp_path / "o"), "--json")
    counts = checks_of(out)["chroma-counts"]
    assert len(counts) == 1 and counts[0]["ok"]
    assert "queued operations replayed" in str(counts[0]["detail"])
    assert counts[0]["info"]["segment"] == counts[0]["info"]["embeddings"] > 600


def segment_file(data: Path, name: str) -> Path:
    (path,) = (data / CHROMA_DIR).glob(f"*/{name}")
    return path


def truncate_level0(data: Path) -> None:
    path = segment_file(data, "data_level0.bin")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])


def lose_an_embedding(data: Path) -> None:
    """chroma.sqlite3 loses a record its HNSW segment still holds."""
    db = sqlite3.connect(data / CHROMA_DIR / "chroma.sqlite3")
    with db:
        db.execute("DELETE FROM embedding_metadata WHERE id = (SELECT min(id) FROM embeddings)")
        db.execute("DELETE FROM embeddings WHERE id = (SELECT min(id) FROM embeddings)")
    db.close()


def garble_pickle(data: Path) -> None:
    path = data / LANGCHAIN_DIR / "index.pkl"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def swap_faiss_index(data: Path) -> None:
    """index.faiss from a store of other size: the pickle maps other positions."""
    import faiss
    import numpy as np

    index = faiss.IndexFlatL2(16)
    index.add(np.random.default_rng(3).standard_normal((500, 16)).astype("float32"))
    faiss.write_index(index, str(data / LANGCHAIN_DIR / "index.faiss"))


def empty_faiss_index(data: Path) -> None:
    """index.faiss emptied (a save cut short before its first byte): no FAISS header, so no
    FAISS check reads it, and LangChain's load_local cannot open the store."""
    (data / LANGCHAIN_DIR / "index.faiss").write_bytes(b"")


def lose_faiss_index(data: Path) -> None:
    """index.faiss deleted: index.pkl alone is no `<name>.faiss` beside a `<name>.pkl`, yet
    LangChain cannot open it."""
    (data / LANGCHAIN_DIR / "index.faiss").unlink()


def not_a_faiss_index(data: Path) -> None:
    (data / LANGCHAIN_DIR / "index.faiss").write_bytes(b"not an index\n" * 40)


def break_docstore_json(data: Path) -> None:
    path = data / LLAMAINDEX_DIR / "docstore.json"
    path.write_bytes(path.read_bytes()[:-40])


def lose_id_map(data: Path) -> None:
    """id_map.json gone beside its IndexIDMap2: FaissMapVectorStore then maps no FAISS id to a
    node, and LlamaIndex's queries find nothing."""
    (data / LLAMAINDEX_DIR / "id_map.json").unlink()


def drop_from_id_map(data: Path) -> None:
    path = data / LLAMAINDEX_DIR / "id_map.json"
    maps = json.loads(path.read_text())
    key = sorted(maps["faiss_id_to_node_id_map"])[0]
    del maps["faiss_id_to_node_id_map"][key]
    path.write_text(json.dumps(maps))


DAMAGE = {
    "chroma-truncated-level0": ("chroma", truncate_level0, "hnsw-data"),
    "chroma-counts": ("chroma", lose_an_embedding, "chroma-counts"),
    "langchain-corrupt-pickle": ("langchain", garble_pickle, "langchain-docstore"),
    "langchain-counts": ("langchain", swap_faiss_index, "langchain-counts"),
    "langchain-empty-index": ("langchain", empty_faiss_index, "langchain-counts"),
    "langchain-index-gone": ("langchain", lose_faiss_index, "langchain-counts"),
    "langchain-not-an-index": ("langchain", not_a_faiss_index, "langchain-counts"),
    "llamaindex-not-json": ("llamaindex", break_docstore_json, "llamaindex-json"),
    "llamaindex-counts": ("llamaindex", drop_from_id_map, "llamaindex-counts"),
    "llamaindex-id-map-gone": ("llamaindex", lose_id_map, "llamaindex-counts"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damage_is_warned_at_commit_and_refused_at_checkout(case: str, tmp_path: Path) -> None:
    name, damage, check = DAMAGE[case]
    data, repo = tmp_path / "data", tmp_path / "repo"
    build(name, data)
    code, out, _ = run(repo, data, "commit", "--json")
    good = json.loads(out)["id"]
    damage(data)
    code, _, err = run(repo, data, "commit", "--strict")
    assert code == CHECK_FAILED and "nothing committed" in err
    code, out, err = run(repo, data, "-q", "commit", "--tag", "bad")  # -q keeps these warnings
    assert code == 0 and err.startswith("casnap: warning: "), err
    assert run(repo, data, "checkout", good)[0] == 0
    before = raw_tree(data)
    code, _, err = run(repo, data, "checkout", "bad")
    assert code == CHECK_FAILED, err
    assert f"{check} on " in err and "nothing restored" in err
    assert raw_tree(data) == before
    code, out, _ = run(repo, data, "verify", "--smoke", "bad", "--json")
    assert code == CHECK_FAILED
    failed = [c["check"] for c in json.loads(out)["smoke"][0]["smoke"]["checks"] if not c["ok"]]
    assert check in failed


def test_a_smoke_command_may_open_the_staged_chroma_store(tmp_path: Path) -> None:
    data, repo = tmp_path / "data", tmp_path / "repo"
    build("chroma", data)
    assert run(repo, data, "commit")[0] == 0
    script = tmp_path / "open_chroma.py"
    script.write_text(
        "import os, sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "import chromadb\n"
        "path = os.path.join(os.environ['CASNAP_STAGED_DIR'], 'chroma')\n"
        "client = chromadb.PersistentClient(path=path, settings=chromadb.Settings("
        "anonymized_telemetry=False))\n"
        f"col = client.get_collection({COLLECTION!r}, embedding_function=None)\n"
        "n = col.count()\n"
        "col.add(ids=['written-by-the-check'], embeddings=[[0.0] * 16])\n"
        "print(n)\n"
        "sys.exit(0 if n > 600 else 1)\n"
    )
    cmd = f"{sys.executable} {script}"
    before = raw_tree(data / CHROMA_DIR)
    code, out, err = run(repo, data, "checkout", "latest", "--smoke-cmd", cmd, "--json")
    assert code == 0, err
    assert checks_of(out)["smoke-cmd"][0]["ok"]
    assert raw_tree(data / CHROMA_DIR) == before  # the command wrote to a copy, not the stage
    code, _, err = run(repo, data, "verify", "--smoke-cmd", cmd)
    assert code == 0, err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".casnap")] == []


def test_a_pickle_that_would_run_code_is_reported_and_never_run(tmp_path: Path) -> None:
    data, repo = tmp_path / "data", tmp_path / "repo"
    build("langchain", data)
    assert run(repo, data, "commit")[0] == 0
    marker = tmp_path / "ran"
    (data / LANGCHAIN_DIR / "index.pkl").write_bytes(pickle.dumps((Runs(marker), {0: "d0"})))
    code, _, err = run(repo, data, "-q", "commit", "--tag", "hostile")
    assert code == 0 and "posix.system" in err and "nothing was run" in err
    code, _, err = run(repo, data, "checkout", "hostile", "--to", str(tmp_path / "o"))
    assert code == CHECK_FAILED and "langchain-docstore" in err
    code, _, _ = run(repo, data, "verify", "--smoke", "hostile")
    assert code == CHECK_FAILED
    assert not marker.exists()


@pytest.mark.parametrize(
    ("name", "part", "left_out"),
    [
        ("llamaindex", f"{LLAMAINDEX_DIR}/index_store.json", "docstore.json"),
        ("llamaindex", f"{LLAMAINDEX_DIR}/id_map.json", "id_map.json"),
        ("llamaindex", f"{LLAMAINDEX_DIR}/default__vector_store.json", "id_map.json"),
        ("chroma", "segment", "chroma.sqlite3"),
        ("langchain", f"{LANGCHAIN_DIR}/index.pkl", "index.faiss"),
    ],
    ids=[
        "llamaindex-index-store",
        "llamaindex-no-faiss",
        "llamaindex-no-id-map",
        "chroma-segment",
        "langchain-no-index",
    ],
)
def test_a_commit_of_part_of_a_store_is_not_told_the_rest_is_missing(
    tmp_path: Path, name: str, part: str, left_out: str
) -> None:
    """`commit storage/index_store.json` (or a Chroma segment folder) warned that the files of
    the store it does not take were missing, though they lie in the data dir, and --strict
    refused it: a checkout of those paths into the data dir finds them there and passes. A
    store whose file an --exclude leaves out is still told (what the check is for)."""
    data, repo = tmp_path / "data", tmp_path / "repo"
    build(name, data)
    if part == "segment":
        (seg,) = [p for p in (data / CHROMA_DIR).iterdir() if p.is_dir()]
        part = seg.relative_to(data).as_posix()
    paths = [part, f"{LLAMAINDEX_DIR}/docstore.json"] if part.endswith("id_map.json") else [part]
    code, out, err = run(repo, data, "commit", "--strict", "--json", *paths)
    assert code == 0 and "missing" not in err, err
    assert json.loads(out)["warnings"] == []
    code, _, err = run(repo, data, "checkout", "latest", *paths)
    assert code == 0, err
    store = {"llamaindex": LLAMAINDEX_DIR, "chroma": CHROMA_DIR, "langchain": LANGCHAIN_DIR}[name]
    glob = "*.sqlite3" if name == "chroma" else left_out
    if part.endswith("id_map.json"):  # the FAISS index id_map.json maps into
        glob = "default__vector_store.json"
    code, _, err = run(repo, data, "commit", "--strict", store, "--exclude", glob)
    assert code != 0 and ("FAISS" if part.endswith("id_map.json") else "missing") in err, err


def test_a_langchain_pickle_left_without_its_index_by_an_exclude_is_told(tmp_path: Path) -> None:
    data, repo = tmp_path / "data", tmp_path / "repo"
    build("langchain", data)
    code, _, err = run(repo, data, "-q", "commit", "--exclude", f"{LANGCHAIN_DIR}/index.faiss")
    assert code == 0 and "index.faiss is missing beside the LangChain docstore pickle" in err, err


def test_another_pickle_alone_is_no_langchain_store(tmp_path: Path) -> None:
    """A `.pkl` without a `.faiss` beside it that is no LangChain docstore is nobody's store."""
    data, repo = tmp_path / "data", tmp_path / "repo"
    data.mkdir()
    (data / "model.pkl").write_bytes(pickle.dumps({"weights": list(range(50)), "docstore": 1}))
    (data / "index.pkl").write_bytes(pickle.dumps(("langchain docstore", {0: "a"})))
    code, out, err = run(repo, data, "commit", "--strict", "--json")
    assert code == 0 and "warning" not in err, err
    code, out, err = run(repo, data, "checkout", "latest", "--to", str(tmp_path / "to"))
    assert code == 0, err
