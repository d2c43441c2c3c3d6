"""A framework store whose files change while a commit reads it is read again, so the snapshot
holds its files from one moment (casnap/instants.py)."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from functools import partial
from pathlib import Path

import faiss
import numpy as np
import pytest

from casnap import Repository, capture, checkout, commit, instants
from casnap.consistency import consistency_problems
from casnap.errors import InconsistentData
from casnap.ids import hash_bytes
from casnap.manifest import FileEntry
from tests.helpers_rag import LANGCHAIN_DIR, make_langchain, query_langchain


def _index_bytes(n: int) -> bytes:
    index = faiss.IndexFlatL2(8)
    index.add(np.random.default_rng(n).standard_normal((n, 8)).astype("float32"))
    return bytes(faiss.serialize_index(index))


def store_before_a_big_file(data: Path) -> Path:
    """A LangChain-layout store (index.faiss, index.pkl) in data/store, read before data/zz.bin
    (4 MiB: a commit is still reading it when a test rewrites the store); the store's folder."""
    store = data / "store"
    store.mkdir(parents=True)
    (store / "index.faiss").write_bytes(_index_bytes(100))
    (store / "index.pkl").write_bytes(pickle.dumps(({}, {})))
    (data / "zz.bin").write_bytes(os.urandom(4 << 20))  # read after the store (path order)
    return store


def test_a_store_rewritten_during_the_commit_is_read_again(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = store_before_a_big_file(data)
    newer = _index_bytes(120)
    fired = []

    def rewrite_once(done: int, total: int) -> None:
        if done > total // 2 and not fired:  # while zz.bin is read: the store was read already
            fired.append(done)
            (store / "index.faiss").write_bytes(newer)

    repo = Repository.init(tmp_path / "repo")
    result = commit(repo, data, progress=rewrite_once)
    assert fired
    snap = dict(repo.snapshots())[next(iter(dict(repo.snapshots())))]
    (entry,) = [f for f in snap.files if f.path == "store/index.faiss"]
    assert entry.hash == hash_bytes(newer).hex()  # not the bytes from before the rewrite
    assert not any("kept changing" in w for w in result.warnings)


def _langchain_beside_a_big_file(data: Path) -> bytes:
    """A LangChain store in data, read after data/a.bin (4 MiB: the commit is still reading it
    when the test changes the store); the store's index.pkl as saved."""
    make_langchain(data)
    (data / "a.bin").write_bytes(os.urandom(4 << 20))
    return (data / LANGCHAIN_DIR / "index.pkl").read_bytes()


def _while_a_bin_is_read(change: Callable[[], None]) -> Callable[[int, int], None]:
    fired: list[int] = []

    def once(done: int, total: int) -> None:
        if done > (1 << 20) and not fired:
            fired.append(done)
            change()

    return once


def test_a_store_torn_when_checked_and_whole_when_stored_is_not_reported(tmp_path: Path) -> None:
    """A writer mid-save when the commit checked the store, done before it read it: the
    snapshot holds the whole store, and its checks, made again on what was stored, find nothing
    (they reported the torn pickle they saw first, as damage a checkout would refuse)."""
    data = tmp_path / "data"
    saved = _langchain_beside_a_big_file(data)
    pickle_path = data / LANGCHAIN_DIR / "index.pkl"
    pickle_path.write_bytes(saved[: len(saved) // 2])  # the save under way

    def finish_the_save() -> None:
        pickle_path.write_bytes(saved)

    repo = Repository.init(tmp_path / "repo")
    result = commit(repo, data, progress=_while_a_bin_is_read(finish_the_save))
    assert result.damage == [] and result.warnings == [], result.warnings
    checkout(repo, result.id, tmp_path / "out")  # its smoke checks pass
    assert query_langchain(tmp_path / "out") == query_langchain(data)


def test_a_store_whole_when_checked_and_torn_when_stored_is_reported(tmp_path: Path) -> None:
    """The reverse: whole when checked, torn by the time it was read (a writer that stopped
    mid-save): the commit said nothing, and only the checkout refused the snapshot."""
    data = tmp_path / "data"
    saved = _langchain_beside_a_big_file(data)
    pickle_path = data / LANGCHAIN_DIR / "index.pkl"

    def tear() -> None:
        pickle_path.write_bytes(saved[: len(saved) // 2])

    repo = Repository.init(tmp_path / "repo")
    result = commit(repo, data, progress=_while_a_bin_is_read(tear))
    assert [d.split(":")[0] for d in result.damage] == [f"{LANGCHAIN_DIR}/index.pkl"]
    pickle_path.write_bytes(saved)
    with pytest.raises(InconsistentData, match="index.pkl"):
        commit(repo, data, strict=True, progress=_while_a_bin_is_read(tear))
    assert len(repo.snapshots()) == 1


def test_a_store_still_moving_is_not_judged_by_files_it_did_not_store(tmp_path: Path) -> None:
    """A writer that saves the store again after every read of it: the files the checks find
    at the end are not those stored, so what they say is not reported as the snapshot's (here a
    torn pickle the snapshot does not hold; as well nothing where it holds one); the store is
    named as still moving, which the commit reports as damage (even with -q; --strict refuses)."""
    data = tmp_path / "data"
    make_langchain(data)
    pickle_path = data / LANGCHAIN_DIR / "index.pkl"
    whole = pickle_path.read_bytes()
    torn = whole[: len(whole) // 2]
    repo = Repository.init(tmp_path / "repo")
    snap = repo.load_snapshot(repo.resolve(commit(repo, data).id))
    entries = list(snap.files)
    watched = instants.watch(capture.scan(data))
    stored: dict[str, bytes] = {}

    def read_then_saved_again(src: capture.SourceFile) -> tuple[FileEntry, int]:
        """The file read (what is stored), then the app saves the pickle again."""
        (entry,) = [e for e in entries if e.path == src.path]
        stored[src.path] = src.abspath.read_bytes()
        if src.path == f"{LANGCHAIN_DIR}/index.pkl":
            pickle_path.write_bytes(torn if stored[src.path] == whole else whole)
        return entry, len(stored[src.path])

    os.utime(pickle_path, ns=(1, 1))  # a save since the store was watched
    _, moving, judged = instants.settle(
        watched, entries, read_then_saved_again, partial(consistency_problems, data)
    )
    assert stored[f"{LANGCHAIN_DIR}/index.pkl"] == whole and pickle_path.read_bytes() == torn
    assert [m.split(":")[0] for m in moving] == [LANGCHAIN_DIR]
    assert judged == [([f"{LANGCHAIN_DIR}/index.faiss", f"{LANGCHAIN_DIR}/index.pkl"], [])]


def _index_and_sidecar_after_a_big_file(data: Path, n: int, said: int) -> Path:
    """data/vec.index holding n vectors and data/vec.meta.json saying `said`, read after
    data/a.bin (4 MiB: the commit is still reading it when the test saves the pair)."""
    data.mkdir()
    (data / "a.bin").write_bytes(os.urandom(4 << 20))
    (data / "vec.index").write_bytes(_index_bytes(n))
    (data / "vec.meta.json").write_text(f'{{"ntotal": {said}}}')
    return data / "vec.index"


def _save_pair(index: Path, n: int, which: str) -> None:
    """What an app saving an index and then its sidecar does, each by a rename."""
    if which in ("index", "both"):
        (index.parent / "vec.index.tmp").write_bytes(_index_bytes(n))
        os.replace(index.parent / "vec.index.tmp", index)
    if which in ("sidecar", "both"):
        (index.parent / "vec.meta.json.tmp").write_text(f'{{"ntotal": {n}}}')
        os.replace(index.parent / "vec.meta.json.tmp", index.parent / "vec.meta.json")


def test_an_index_saved_before_its_sidecar_during_the_commit_is_judged_as_stored(
    tmp_path: Path,
) -> None:
    """The app saved the index, not yet its sidecar, while the commit read other files: the
    commit had checked the pair as it was before (in step) and stored the new index beside the
    old sidecar without a word, even with --strict; a checkout then warned of it."""
    index = _index_and_sidecar_after_a_big_file(tmp_path / "data", 100, 100)
    repo = Repository.init(tmp_path / "repo")
    progress = _while_a_bin_is_read(partial(_save_pair, index, 120, "index"))
    result = commit(repo, tmp_path / "data", progress=progress)
    assert result.warnings == ["vec.index: vec.meta.json says ntotal 100 but the index holds 120"]
    _save_pair(index, 100, "index")
    progress = _while_a_bin_is_read(partial(_save_pair, index, 120, "index"))
    with pytest.raises(InconsistentData, match="says ntotal 100 but the index holds 120"):
        commit(repo, tmp_path / "data", strict=True, progress=progress)
    assert len(repo.snapshots()) == 1


def test_a_sidecar_saved_during_the_commit_is_judged_as_stored(tmp_path: Path) -> None:
    """The reverse: the commit found the app between its two saves (the index new, the sidecar
    not yet) and warned of a disagreement the pair it stored no longer had."""
    index = _index_and_sidecar_after_a_big_file(tmp_path / "data", 120, 100)
    repo = Repository.init(tmp_path / "repo")
    progress = _while_a_bin_is_read(partial(_save_pair, index, 120, "sidecar"))
    result = commit(repo, tmp_path / "data", progress=progress)
    assert result.warnings == [] and result.damage == []
    out = tmp_path / "out"
    checkout(repo, result.id, out)
    assert (out / "vec.meta.json").read_text() == '{"ntotal": 120}'
