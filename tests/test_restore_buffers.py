"""The restore path's memory: frames decoded straight into the task's buffer, task buffers
reused once written and hashed, cached frames dropped at their last read."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zstandard

from casnap import compression, pipeline
from casnap.backends.memory import MemoryBackend
from casnap.committer import commit
from casnap.config import default_config
from casnap.errors import IntegrityError
from casnap.ids import Hasher
from casnap.repository import Repository
from tests import helpers_chunking as h


def frames_of_each_codec() -> list[tuple[bytes, bytes]]:
    """(plain, encoded) of a raw, a zstd and a byte-grouped float frame."""
    rng = np.random.default_rng(3)
    random = rng.bytes(70_000)  # does not compress: stored raw
    text = b"".join(b"row %d of the table\n" % i for i in range(5000))
    floats = rng.standard_normal(20_001).astype("float32").tobytes()[:-3]  # a 1-byte tail
    found = [
        (random, compression.encode(random)),
        (text, compression.encode(text)),
        (floats, compression.encode(floats, grouped=True)),
    ]
    assert [enc[0] for _, enc in found] == [
        compression.RAW,
        compression.ZSTD,
        compression.ZSTD_GROUPED4,
    ]
    return found


def test_decode_into_fills_the_array_as_decode_does() -> None:
    for plain, enc in frames_of_each_codec():
        out = np.full(len(plain) + 8, 7, dtype=np.uint8)
        compression.decode_into(enc, out[4:-4])
        assert out[4:-4].tobytes() == plain
        assert out[:4].tolist() == [7] * 4 and out[-4:].tolist() == [7] * 4  # nothing past it
        frame = compression.decode_frame(enc, len(plain), scratch=True)
        assert frame.read(0, len(plain)) == plain


def test_scratch_frames_of_one_thread_share_one_buffer() -> None:
    _, (text, b), _ = frames_of_each_codec()
    first = compression.decode_frame(b, len(text), scratch=True)
    second = compression.decode_frame(b, len(text), scratch=True)
    assert isinstance(first.data, memoryview) and isinstance(second.data, memoryview)
    assert np.shares_memory(np.asarray(first.data), np.asarray(second.data))
    kept = compression.decode_frame(b, len(text))  # a frame to keep has memory of its own
    assert not isinstance(kept.data, memoryview)


def test_decode_into_refuses_a_frame_of_another_size() -> None:
    for plain, enc in frames_of_each_codec():
        for wrong in (len(plain) - 1, len(plain) + 1):
            with pytest.raises(IntegrityError):
                compression.decode_into(enc, np.empty(wrong, dtype=np.uint8))
        with pytest.raises(IntegrityError):  # cut short
            compression.decode_into(enc[: len(enc) // 2], np.empty(len(plain), dtype=np.uint8))


def test_decode_into_bounds_a_frame_that_declares_no_size() -> None:
    text = b"no size declared " * 4000
    cctx = zstandard.ZstdCompressor(write_content_size=False)
    stream = cctx.compressobj()
    enc = bytes([compression.ZSTD]) + stream.compress(text) + stream.flush()
    assert zstandard.frame_content_size(enc[1:]) == -1
    out = np.empty(len(text), dtype=np.uint8)
    compression.decode_into(enc, out)
    assert out.tobytes() == text
    with pytest.raises(IntegrityError, match="past"):
        compression.decode_into(enc, np.empty(len(text) - 10, dtype=np.uint8))
    with pytest.raises(IntegrityError, match="decodes to"):
        compression.decode_into(enc, np.empty(len(text) + 10, dtype=np.uint8))


def interleaved_repo(tmp_path: Path) -> tuple[Repository, bytes, str]:
    """A repository whose last snapshot holds a database restored from frames used out of
    order (pages VACUUM moved); (repo, the file's refs, its BLAKE3)."""
    db = tmp_path / "d" / "app.db"
    db.parent.mkdir()
    h.make_interleaved_db(db, rows=800)
    cfg = default_config()
    repo = Repository.init_backend(MemoryBackend(), cfg, tmp_path / "tmp")
    commit(repo, db.parent)
    h.drop_and_vacuum(db)
    commit(repo, db.parent)
    entry = next(e for e in repo.load_snapshot(repo.resolve("latest")).files if e.path == "app.db")
    repo.ensure_index()
    shutil.rmtree(db.parent)
    return repo, repo.file_refs(entry), entry.hash


def test_frames_read_again_are_cached_until_their_last_read(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(pipeline, "TASK_BYTES", 16 * 1024)  # many tasks of a small file
    repo, refs, digest = interleaved_repo(tmp_path)
    tasks = list(pipeline.plan_tasks(repo.store, refs))
    again = {(r.pack, frame[0]) for t in tasks for r in t.reads for frame in r.frames if frame[4]}
    assert again  # the case is real: some frame is read by more than one task
    hasher = Hasher()
    for task in tasks:
        pieces = pipeline.fetch_many(repo.store, task)
        for piece in pieces:
            hasher.update(bytes(piece) if isinstance(piece, int) else piece)  # int: zeros
        pipeline.release(pieces)
    assert hasher.digest().hex() == digest
    packs = repo.store.index.packs
    assert all(repo.store.cached_frame(packs[p], o) is None for p, o in again)


def test_task_buffers_are_reused_once_released_and_never_while_lent(tmp_path: Path) -> None:
    repo, refs, _ = interleaved_repo(tmp_path)
    task = next(t for t in pipeline.plan_tasks(repo.store, refs) if t.size > 4096)
    first = pipeline.fetch_many(repo.store, task)
    held = pipeline.fetch_many(repo.store, task)  # first is still lent: another buffer
    assert isinstance(first[0], np.ndarray) and isinstance(held[0], np.ndarray)
    assert not np.shares_memory(first[0], held[0])
    expected = first[0].tobytes()
    pipeline.release(first)
    pipeline.release(first)  # released twice: still handed out once
    again = pipeline.fetch_many(repo.store, task)
    other = pipeline.fetch_many(repo.store, task)
    assert isinstance(again[0], np.ndarray) and isinstance(other[0], np.ndarray)
    assert np.shares_memory(again[0], first[0])  # the released buffer, not fresh pages
    assert not np.shares_memory(other[0], first[0])
    assert again[0].tobytes() == expected == held[0].tobytes()
