"""Commit -> checkout round trips: arbitrary bytes, real SQLite and real FAISS data."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import faiss
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casnap.backends import MemoryBackend
from casnap.committer import commit
from casnap.repository import Repository
from casnap.restorer import checkout
from tests.conftest import evolve_app
from tests.util import snapshot_tree

# Empty, 1 byte, odd sizes, and several chunks (CDC max is 64 KiB).
file_bodies = st.one_of(
    st.just(b""),
    st.binary(min_size=1, max_size=1),
    st.binary(min_size=2, max_size=5000),
    st.integers(min_value=70_000, max_value=300_000).map(
        lambda n: np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    ),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.dictionaries(st.sampled_from(["a", "b.bin", "sub/c", "sub/deep/d"]), file_bodies))
def test_arbitrary_files_round_trip(files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp, "data"), Path(tmp, "out")
        data.mkdir()
        for name, body in files.items():
            (data / name).parent.mkdir(parents=True, exist_ok=True)
            (data / name).write_bytes(body)
        repo = Repository.init_backend(MemoryBackend(), tmp_dir=Path(tmp, "t"))
        sid = commit(repo, data).id
        # arbitrary bytes may start like a FAISS index or a database and fail its smoke check;
        # this test is about bytes, so the checks are off
        checkout(repo, sid, out, safety_snapshot=False, smoke=False)
        restored = {
            p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()
        }
        assert restored == files


def test_evolving_app_every_snapshot_restores_exactly(app: Path, tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    states: list[tuple[str, dict[str, bytes], Path]] = []
    for step in range(4):
        if step:
            evolve_app(app, step)
        sid = commit(repo, app, message=f"step {step}").id
        copy = tmp_path / f"state{step}"
        shutil.copytree(app, copy)
        states.append((sid, snapshot_tree(app), copy))
    assert len({s for s, _, _ in states}) == 4
    for sid, expected, copy in states:
        out = tmp_path / f"out-{sid[:8]}"
        checkout(repo, sid, out, safety_snapshot=False)
        assert snapshot_tree(out) == expected
        # the same search gives the same answer on the restored index
        q = np.random.default_rng(5).standard_normal((3, 16)).astype("float32")
        for name in ("shard_000.index", "ivf.index", "hnsw.index"):
            a = faiss.read_index(str(copy / "faiss" / name))
            b = faiss.read_index(str(out / "faiss" / name))
            assert a.ntotal == b.ntotal
            da, ia = a.search(q, 5)
            db, ib = b.search(q, 5)
            assert np.array_equal(ia, ib) and np.array_equal(da, db)


def test_checkout_into_existing_data_switches_state(app: Path, tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    first = commit(repo, app).id
    before = snapshot_tree(app)
    evolve_app(app, 1)
    (app / "extra.txt").write_text("new file")
    second = commit(repo, app).id
    after = snapshot_tree(app)
    checkout(repo, first, app)
    assert snapshot_tree(app) == before  # extra.txt removed, db and indexes back
    checkout(repo, second, app)
    assert snapshot_tree(app) == after


def test_identical_files_are_not_rewritten(app: Path, tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, app).id
    ino = os.stat(app / "faiss" / "hnsw.index").st_ino
    r = checkout(repo, sid, app)
    assert r.files_written == 0
    assert r.files_unchanged == len(repo.load_snapshot(repo.resolve(sid)).files)
    assert os.stat(app / "faiss" / "hnsw.index").st_ino == ino


def test_partial_checkout_restores_only_paths(app: Path, tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, app).id
    out = tmp_path / "out"
    r = checkout(repo, sid, out, ["faiss/ivf.index"], safety_snapshot=False)
    assert r.written == ["faiss/ivf.index"]
    assert [p.name for p in out.rglob("*") if p.is_file()] == ["ivf.index"]
