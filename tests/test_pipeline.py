"""The commit and checkout data paths through a real Repository: round trips, dedup, damage."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from casnap import compression
from casnap.backends.memory import MemoryBackend
from casnap.committer import commit
from casnap.config import default_config
from casnap.errors import IntegrityError, UnsupportedFormat
from casnap.ids import hash_bytes
from casnap.repository import Repository
from casnap.restorer import checkout
from tests import helpers_chunking as h

SQLITE_HEADER_MASK = [(24, 28), (40, 44), (92, 100)]


def masked(data: bytes) -> bytes:
    """A SQLite file with the header fields the backup API rewrites zeroed."""
    if not data.startswith(b"SQLite format 3\x00"):
        return data
    b = bytearray(data)
    for a, z in SQLITE_HEADER_MASK:
        b[a:z] = bytes(z - a)
    return bytes(b)


def make_app(root: Path) -> Path:
    data = root / "data"
    (data / "faiss").mkdir(parents=True)
    h.make_db(data / "app.db", rows=400)
    h.write(h.flat(800), data / "faiss" / "shard_000.index")
    h.write(h.ivf_flat(800), data / "faiss" / "ivf.index")
    h.write(h.hnsw(300), data / "faiss" / "hnsw.index")
    (data / "faiss" / "ivf.meta.json").write_text(json.dumps({"ntotal": 800}))
    (data / "notes.bin").write_bytes(np.random.default_rng(3).bytes(70_000))
    return data


def memory_repo(tmp_path: Path) -> Repository:
    return Repository.init_backend(MemoryBackend(), tmp_dir=tmp_path / "tmp")


def same_tree(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert masked((a / rel).read_bytes()) == masked((b / rel).read_bytes()), rel


def test_round_trip_is_byte_identical(tmp_path: Path) -> None:
    data = make_app(tmp_path)
    repo = memory_repo(tmp_path)
    res = commit(repo, data)
    assert res.files_new == 6
    out = tmp_path / "out"
    checkout(repo, "latest", out, safety_snapshot=False)
    same_tree(data, out)
    snap = repo.load_snapshot(repo.resolve("latest"))
    chunkers = {f.path: f.chunker["name"] for f in snap.files}
    assert chunkers == {
        "app.db": "sqlite",
        "faiss/shard_000.index": "faiss-cdc",
        "faiss/ivf.index": "faiss-cdc",
        "faiss/hnsw.index": "faiss-cdc",
        "faiss/ivf.meta.json": "fastcdc",
        "notes.bin": "fastcdc",
    }


def test_round_trip_through_a_local_repository_and_reopen(tmp_path: Path) -> None:
    data = make_app(tmp_path)
    repo = Repository.init(tmp_path / "repo")
    commit(repo, data)
    h.update_rows(data / "app.db", 5)
    commit(repo, data)
    again = Repository.open(tmp_path / "repo")
    out = tmp_path / "out"
    checkout(again, "latest", out, safety_snapshot=False)
    same_tree(data, out)


def test_few_updated_rows_add_few_pages(tmp_path: Path) -> None:
    data = make_app(tmp_path)
    repo = memory_repo(tmp_path)
    commit(repo, data)
    pages = (data / "app.db").stat().st_size // 4096
    h.update_rows(data / "app.db", 3)
    res = commit(repo, data)
    assert res.files_changed == 1
    assert res.chunks_new <= 3 * 3 + 4  # each row: its leaf page (+ maybe a split), page 1
    assert res.chunks_new < pages // 4
    out = tmp_path / "out"
    checkout(repo, "latest", out, safety_snapshot=False)
    same_tree(data, out)


def test_vacuum_still_dedups_most_pages(tmp_path: Path) -> None:
    db = tmp_path / "d" / "app.db"
    db.parent.mkdir()
    h.make_interleaved_db(db, rows=600)
    repo = memory_repo(tmp_path)
    commit(repo, db.parent)
    docs_pages = db.stat().st_size // 4096 // 2
    h.drop_and_vacuum(db)
    moved = db.read_bytes()
    res = commit(repo, db.parent)
    assert len(moved) // 4096 < 0.6 * 2 * docs_pages  # VACUUM did move and drop pages
    assert res.chunks_new < 0.2 * docs_pages
    out = tmp_path / "out"
    checkout(repo, "latest", out, safety_snapshot=False)
    same_tree(db.parent, out)


def test_flat_index_with_one_percent_more_vectors_adds_about_one_percent(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    index = h.flat(20_000)
    h.write(index, data / "shard.index")
    repo = memory_repo(tmp_path)
    commit(repo, data)
    index.add(h.vectors(200, seed=5))
    h.write(index, data / "shard.index")
    size = (data / "shard.index").stat().st_size
    res = commit(repo, data)
    block = max(default_config()["chunker"]["faiss"]["vectors"])
    # the appended vectors, the tail block they complete, and the header piece
    assert res.bytes_added < 0.01 * size + 2 * block + 8192
    out = tmp_path / "out"
    checkout(repo, "latest", out, safety_snapshot=False)
    same_tree(data, out)


def test_chunk_lists_are_deltas_and_chains_are_cut(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("casnap.filelists.LIST_MAX_DELTAS", 2)
    db = tmp_path / "d" / "app.db"
    db.parent.mkdir()
    h.make_db(db, rows=300)
    repo = memory_repo(tmp_path)
    lists = []
    for step in range(4):
        if step:
            h.update_rows(db, 2, seed=step)
        commit(repo, db.parent)
        lists.append(repo.load_snapshot(repo.resolve("latest")).files[0].lists)
    assert len(lists[0]) == 1  # one full piece
    assert lists[1][:1] == lists[0] and len(lists[1]) == 2  # + one delta
    assert lists[2][:2] == lists[1] and len(lists[2]) == 3
    assert len(lists[3]) == 1 and lists[3] != lists[0]  # chain cut: full list again
    for step_lists in lists:
        assert all(len(x) == 64 for x in step_lists)
    out = tmp_path / "out"
    checkout(repo, "latest", out, safety_snapshot=False)
    same_tree(db.parent, out)
    # every snapshot still restores its own version through its chain
    first = repo.snapshots()[1][0]
    out1 = tmp_path / "out1"
    checkout(repo, first.hex(), out1, safety_snapshot=False)
    assert (out1 / "app.db").stat().st_size > 0


def test_unchanged_commit_needs_neither_index_nor_file_reads(tmp_path: Path) -> None:
    data = make_app(tmp_path)
    for p in data.rglob("*"):  # older than the racy window: the stat cache may trust them
        os.utime(p, (time.time() - 3600, time.time() - 3600))
    repo = Repository.init(tmp_path / "repo")
    commit(repo, data)
    fresh = Repository.open(tmp_path / "repo")
    res = commit(fresh, data)
    assert res.files_unchanged == 6 and res.bytes_read == 0
    assert len(fresh.store.index) == 0  # the index was never loaded
    assert not fresh.store.index_files


def test_frames_hold_several_chunks_and_each_reads_back(tmp_path: Path) -> None:
    db = tmp_path / "d" / "app.db"
    db.parent.mkdir()
    h.make_db(db, rows=300)
    repo = memory_repo(tmp_path)
    commit(repo, db.parent)
    entry = repo.load_snapshot(repo.resolve("latest")).files[0]
    refs = repo.chunk_refs(entry)
    shared = [cid for cid, _ in refs if repo.store.entry(cid).frame_plain]
    assert len(shared) > len(refs) // 2  # pages were compressed in runs
    fresh = Repository.open_backend(repo.backend, tmp_path / "tmp")  # empty frame cache
    fresh.store.load_index()
    pieces = [fresh.store.get(cid) for cid, _ in refs]
    assert [len(p) for p in pieces] == [n for _, n in refs]
    out = tmp_path / "out"
    checkout(repo, "latest", out, safety_snapshot=False)
    assert b"".join(pieces) == (out / "app.db").read_bytes()


def test_damaged_frame_is_detected_on_checkout(tmp_path: Path) -> None:
    data = make_app(tmp_path)
    backend = MemoryBackend()
    repo = Repository.init_backend(backend, tmp_dir=tmp_path / "tmp")
    commit(repo, data)
    pack_keys = [k for k in backend.objects if k.startswith("packs/")]
    for key in pack_keys:
        blob = bytearray(backend.objects[key])
        blob[100] ^= 0x40  # inside the first frame
        backend.objects[key] = bytes(blob)
    fresh = Repository.open_backend(backend, tmp_path / "tmp")
    with pytest.raises(IntegrityError):
        checkout(fresh, "latest", tmp_path / "out", safety_snapshot=False)
    assert not (tmp_path / "out" / "app.db").exists()


def test_damaged_raw_chunk_is_named(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    raw = np.random.default_rng(1).bytes(200_000)  # incompressible: stored raw
    (data / "blob.bin").write_bytes(raw)
    backend = MemoryBackend()
    repo = Repository.init_backend(backend, tmp_dir=tmp_path / "tmp")
    commit(repo, data)
    (key,) = [k for k in backend.objects if k.startswith("packs/")]
    blob = bytearray(backend.objects[key])
    blob[5000] ^= 1  # a byte of a raw frame: decodes fine, content differs
    backend.objects[key] = bytes(blob)
    fresh = Repository.open_backend(backend, tmp_path / "tmp")
    with pytest.raises(IntegrityError, match="does not match its hash"):
        checkout(fresh, "latest", tmp_path / "out", safety_snapshot=False)


def test_grouped_codec_round_trips() -> None:
    rng = np.random.default_rng(0)
    vec = rng.standard_normal(4096).astype("float32").tobytes()
    for data in (vec, vec[:-3], vec[:70], b"\x00" * 64 + b"xyz"):
        enc = compression.encode(data, 3, grouped=True)
        assert compression.decode(enc, len(data)) == data
    enc = compression.encode(vec, 3, grouped=True)
    assert enc[0] == compression.ZSTD_GROUPED4
    assert len(enc) < len(compression.encode(vec, 3))  # grouping pays on float32


def test_grouped_frames_compress_each_byte_plane_apart() -> None:
    # zstd codes its input in blocks of up to 128 KiB, each with its own entropy tables: the
    # four byte planes of a float frame must not share a block (sign/exponent bytes and mantissa
    # bytes have nothing in common), whatever the frame size
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((8, 64))
    vec = centres[rng.integers(0, 8, 400)] + 0.3 * rng.standard_normal((400, 64))
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    data = vec.astype("float32").tobytes()  # 100 KiB: four planes of 25 KiB
    enc = compression.encode(data, 1, grouped=True)
    planes = np.frombuffer(data, dtype=np.uint8).reshape(-1, 4).T
    apart = sum(len(compression.encode(p.tobytes(), 1)) - 1 for p in planes)
    assert enc[0] == compression.ZSTD_GROUPED4
    assert len(enc) <= apart + 64
    assert compression.decode(enc, len(data)) == data


def test_old_format_repository_is_refused(tmp_path: Path) -> None:
    backend = MemoryBackend()
    cfg = default_config()
    cfg["casnap_format"] = 1
    backend.put("config", json.dumps(cfg).encode())
    with pytest.raises(UnsupportedFormat, match="pre-release"):
        Repository.open_backend(backend)


def test_checkout_of_a_file_whose_frames_are_used_out_of_order(tmp_path: Path) -> None:
    # pages moved by VACUUM are restored from old frames in another order
    db = tmp_path / "d" / "app.db"
    db.parent.mkdir()
    h.make_interleaved_db(db, rows=800)
    repo = memory_repo(tmp_path)
    commit(repo, db.parent)
    h.drop_and_vacuum(db)
    commit(repo, db.parent)
    out = tmp_path / "out"
    checkout(repo, "latest", out, safety_snapshot=False)
    same_tree(db.parent, out)
    shutil.rmtree(out)


def test_repeated_content_is_stored_once_across_blocks_and_packs(tmp_path: Path) -> None:
    cfg = default_config()
    cfg["pack_target"] = 256 * 1024  # many packs: repeats meet chunks already written
    repo = Repository.init_backend(MemoryBackend(), cfg, tmp_path / "tmp")
    data = tmp_path / "d"
    data.mkdir()
    pattern = np.random.default_rng(7).bytes(1 << 20)
    (data / "repeats.bin").write_bytes(pattern * 12)  # 12 MiB: three read blocks and more
    res = commit(repo, data)
    assert res.bytes_added < 1.2 * (1 << 20)  # one copy of the pattern (raw: it is random)
    entry = repo.load_snapshot(repo.resolve("latest")).files[0]
    ids = [cid for cid, _ in repo.chunk_refs(entry)]
    assert res.chunks_new == len(set(ids)) + len(entry.lists)  # + the chunk list
    assert len(set(ids)) < len(ids) // 6
    out = tmp_path / "out"
    checkout(repo, "latest", out, safety_snapshot=False)
    assert (out / "repeats.bin").read_bytes() == pattern * 12


def test_read_buffers_serve_every_file_of_a_commit(tmp_path: Path, monkeypatch) -> None:
    """A fresh read buffer costs a page fault per 4 KiB on its first fill: the buffers of one
    file serve the next, so a commit of many large files allocates a few, not a few per file.
    Each file's hash, fed on its own thread as the blocks are read, is that of its bytes."""
    from casnap import pipeline
    from casnap.chunking import base

    made: list[bytearray] = []  # held, so no two count as one
    take = base.Buffers.take

    def counting_take(self: base.Buffers, size: int) -> bytearray:
        buf = take(self, size)
        if not any(b is buf for b in made):
            made.append(buf)
        return buf

    monkeypatch.setattr(base.Buffers, "take", counting_take)
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(5)
    for i in range(6):  # two read blocks each (READ_BLOCK is 4 MiB)
        (data / f"f{i}.bin").write_bytes(rng.bytes(4 * 1024 * 1024 + 1000 * (i + 1)))
    repo = Repository.init(tmp_path / "repo")
    result = commit(repo, data)
    assert result.files_new == 6
    assert len(made) <= pipeline.cpu_workers() + 3, len(made)
    for e in repo.snapshot(repo.resolve(result.id)).files:  # fed block by block, beside reading
        assert e.hash == hash_bytes((data / e.path).read_bytes()).hex(), e.path
