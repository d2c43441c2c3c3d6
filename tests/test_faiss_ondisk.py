"""A FAISS IVF index whose inverted lists live in a file of their own (OnDiskInvertedLists, as
faiss.contrib.ondisk.merge_ondisk writes: `x.index` names `lists.ivfdata` by its absolute path).
The smoke checks read the lists restored beside the index, never the file the path names (the
live data dir's, or none after a loss)."""

from __future__ import annotations

import shutil
from pathlib import Path

import faiss
import numpy as np

from casnap.committer import commit
from casnap.repository import Repository
from casnap.restorer import checkout


def ondisk_index(data: Path) -> None:
    """data/populated.index with its lists in data/lists.ivfdata."""
    from faiss.contrib.ondisk import merge_ondisk

    data.mkdir(parents=True)
    d = 8
    vectors = np.random.default_rng(3).standard_normal((400, d)).astype("float32")
    trained = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, 4)
    trained.train(vectors)
    block = data.parent / "block.index"
    filled = faiss.clone_index(trained)
    filled.add(vectors)
    faiss.write_index(filled, str(block))
    merge_ondisk(trained, [str(block)], str(data / "lists.ivfdata"))
    faiss.write_index(trained, str(data / "populated.index"))
    block.unlink()


def test_an_index_with_on_disk_lists_is_restored_after_its_data_dir_is_lost(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    ondisk_index(data)
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data).id
    shutil.rmtree(data)  # the disaster a restore is for
    result = checkout(repo, sid, data, safety_snapshot=False)
    assert result.smoke is not None and result.smoke["ok"]
    index = faiss.read_index(str(data / "populated.index"))
    assert index.ntotal == 400
    _, ids = index.search(index.quantizer.reconstruct(0).reshape(1, -1), 1)
    assert ids[0][0] >= 0


def test_the_smoke_check_reads_the_restored_lists_not_the_live_ones(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ondisk_index(data)
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data).id
    (data / "lists.ivfdata").write_bytes(b"")  # the live lists, emptied since
    result = checkout(repo, sid, tmp_path / "out", safety_snapshot=False)
    assert result.smoke is not None and result.smoke["ok"]
    checks = {c["check"]: c for c in result.smoke["checks"]}
    assert checks["faiss-search"]["detail"].startswith("k=1 search found id")


def test_an_index_restored_without_its_lists_file_passes_with_a_warning(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ondisk_index(data)
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data).id
    shutil.rmtree(data)
    result = checkout(repo, sid, tmp_path / "out", paths=["populated.index"])
    assert result.smoke is not None and result.smoke["ok"]
    checks = {c["check"]: c for c in result.smoke["checks"]}
    assert checks["faiss-read"]["info"]["ntotal"] == 400
    search = checks["faiss-search"]
    assert search["warning"] and "kept in lists.ivfdata, are not beside it" in search["detail"]
