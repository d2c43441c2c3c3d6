"""A framework store whose files change while a commit reads it is read again, so the snapshot
holds its files from one moment (casnap/instants.py)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import faiss
import numpy as np

from casnap import Repository, commit
from casnap.ids import hash_bytes


def _index_bytes(n: int) -> bytes:
    index = faiss.IndexFlatL2(8)
    index.add(np.random.default_rng(n).standard_normal((n, 8)).astype("float32"))
    return bytes(faiss.serialize_index(index))


def test_a_store_rewritten_during_the_commit_is_read_again(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = data / "store"
    store.mkdir(parents=True)
    (store / "index.faiss").write_bytes(_index_bytes(100))
    (store / "index.pkl").write_bytes(pickle.dumps(({}, {})))
    (data / "zz.bin").write_bytes(os.urandom(4 << 20))  # read after the store (path order)
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
