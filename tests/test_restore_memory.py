"""Restore memory is bounded whatever a file's size and however often its chunks repeat, and runs
of zero bytes are restored as holes: the real CLI in a subprocess, its peak RSS measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from casnap import pipeline
from casnap.backends.memory import MemoryBackend
from casnap.committer import commit
from casnap.config import default_config
from casnap.repository import Repository
from casnap.restorer import checkout
from tests.helpers_memory import MB, run_measured, streaming_hash, supports_holes

GiB = 1 << 30
MiB = 1 << 20


def cli(repo: Path, data: Path, *args: str):
    return run_measured(["--repo", str(repo), "--data", str(data), *args])


def ok(proc) -> None:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


@pytest.fixture
def holes(tmp_path: Path) -> Path:
    if not supports_holes(tmp_path):
        pytest.skip(f"the filesystem of {tmp_path} cannot hold sparse files")
    return tmp_path


def test_sparse_2gib_file_restores_sparse_and_identical_in_bounded_memory(holes: Path) -> None:
    data = holes / "data"
    data.mkdir()
    big = data / "sparse.bin"
    rng = np.random.default_rng(11)
    with open(big, "wb") as f:
        f.truncate(2 * GiB)  # ends in a hole: restore must give back the full size
        for offset, n in (
            (0, 4096),
            (5 * MiB + 123, 10_000),
            (GiB + 17, 70_000),
            (2 * GiB - 9000, 4096),
        ):
            f.seek(offset)
            f.write(rng.bytes(n))
    assert big.stat().st_blocks * 512 < 4 * MiB
    repo = holes / "repo"
    proc, peak = cli(repo, data, "commit", "-m", "sparse")
    ok(proc)
    assert peak < 300 * MB, f"commit peaked at {peak / MB:.0f} MB"
    out = holes / "out"
    proc, peak = cli(repo, data, "checkout", "latest", "--to", str(out), "--no-smoke")
    ok(proc)
    restored = out / "sparse.bin"
    assert restored.stat().st_size == 2 * GiB
    assert streaming_hash(restored) == streaming_hash(big)
    assert peak < 300 * MB, f"checkout peaked at {peak / MB:.0f} MB"
    # zero runs became holes: a few MiB allocated for 2 GiB
    assert restored.stat().st_blocks * 512 < 32 * MiB, restored.stat().st_blocks * 512


def test_one_block_repeated_restores_in_bounded_memory(tmp_path: Path) -> None:
    """256 MiB of one 4 KiB block: a few chunks, each repeated tens of thousands of times."""
    data = tmp_path / "data"
    data.mkdir()
    block = np.random.default_rng(5).bytes(4096)
    piece = block * 1024  # 4 MiB
    with open(data / "repeated.bin", "wb") as f:
        for _ in range(64):
            f.write(piece)
    repo = tmp_path / "repo"
    proc, _ = cli(repo, data, "commit")
    ok(proc)
    out = tmp_path / "out"
    proc, peak = cli(repo, data, "checkout", "latest", "--to", str(out), "--no-smoke")
    ok(proc)
    assert streaming_hash(out / "repeated.bin") == streaming_hash(data / "repeated.bin")
    assert peak < 300 * MB, f"checkout peaked at {peak / MB:.0f} MB"
    # verify --smoke restores through the same path into a temporary dir
    proc, peak = cli(repo, data, "verify", "--smoke")
    ok(proc)
    assert peak < 300 * MB, f"verify --smoke peaked at {peak / MB:.0f} MB"


# -- the planner and the writer, in process ----------------------------------------------------


def memory_repo(tmp_path: Path, **config: object) -> Repository:
    cfg = default_config()
    cfg.update(config)
    return Repository.init_backend(MemoryBackend(), cfg, tmp_path / "tmp")


def planned(repo: Repository, sid: str, path: str) -> tuple[bytes, list]:
    entry = next(e for e in repo.load_snapshot(repo.resolve(sid)).files if e.path == path)
    refs = repo.file_refs(entry)
    return refs, list(pipeline.plan_tasks(repo.store, refs))


@pytest.mark.parametrize("first", [10, 3])
def test_tasks_of_repeated_chunks_stay_small(tmp_path: Path, monkeypatch, first: int) -> None:
    """However often a chunk repeats, no task outputs more than twice TASK_BYTES, and the tasks
    cover the file in order; planning goes slice by slice, the first one smaller (so the
    workers start early) or not."""
    monkeypatch.setattr(pipeline, "PLAN_REFS", 10)  # several slices even for a small file
    monkeypatch.setattr(pipeline, "FIRST_PLAN_REFS", first)
    data = tmp_path / "data"
    data.mkdir()
    block = np.random.default_rng(1).bytes(4096)
    (data / "rep.bin").write_bytes(block * (8 << 8))  # 8 MiB
    repo = memory_repo(tmp_path)
    sid = commit(repo, data).id
    refs, tasks = planned(repo, sid, "rep.bin")
    assert len(refs) // 36 > 50  # several planning slices
    assert max(t.size for t in tasks) < 2 * pipeline.TASK_BYTES
    assert [t.offset for t in tasks] == list(np.cumsum([0] + [t.size for t in tasks[:-1]]))
    assert sum(t.size for t in tasks) == 8 * MiB
    out = tmp_path / "out"
    checkout(repo, sid, out, safety_snapshot=False, smoke=False)
    assert (out / "rep.bin").read_bytes() == (data / "rep.bin").read_bytes()


def test_frames_larger_than_a_task_are_read_in_pieces(tmp_path: Path) -> None:
    """Chunks of 3 MiB in frames of 6 MiB: each range is cut to TASK_BYTES, bytes intact."""
    chunker = {"name": "fixed", "size": 3 * MiB}
    repo = memory_repo(
        tmp_path,
        chunker={"default": chunker},
        frame_target=6 * MiB,
    )
    data = tmp_path / "data"
    data.mkdir()
    body = np.random.default_rng(2).bytes(20 * MiB + 12345)
    (data / "big.bin").write_bytes(body)
    sid = commit(repo, data).id
    _, tasks = planned(repo, sid, "big.bin")
    frames = [f for t in tasks for r in t.reads for f in r.frames]
    assert max(f[2] for f in frames) == 6 * MiB  # frames of two chunks
    assert max(n for f in frames for _, n in f[3]) == pipeline.TASK_BYTES  # ranges cut
    assert max(t.size for t in tasks) <= 2 * pipeline.TASK_BYTES
    out = tmp_path / "out"
    checkout(repo, sid, out, safety_snapshot=False, smoke=False)
    assert (out / "big.bin").read_bytes() == body


def test_zero_runs_become_holes_and_the_hash_covers_them(holes: Path) -> None:
    """Zero blocks inside data, at the start and at the end: restored as holes, identical."""
    data = holes / "data"
    data.mkdir()
    rng = np.random.default_rng(3)
    body = bytearray(40 * MiB)
    for at in (3 * MiB + 5, 3 * MiB + 70_000, 17 * MiB, 17 * MiB + 200_000):
        body[at : at + 5000] = rng.bytes(5000)
    (data / "holes.bin").write_bytes(body)
    repo = memory_repo(holes)
    sid = commit(repo, data).id
    out = holes / "out"
    checkout(repo, sid, out, safety_snapshot=False, smoke=False)
    restored = out / "holes.bin"
    assert restored.read_bytes() == body
    assert restored.stat().st_blocks * 512 < 2 * MiB


def test_zero_runs_split_a_buffer_at_aligned_blocks() -> None:
    block = pipeline.HOLE_BLOCK
    buf = np.zeros(5 * block, dtype=np.uint8)
    buf[block + 7] = 1  # the second aligned block (offset 100 in the file: head of block - 100)
    pieces = pipeline._zero_runs(buf, 100)
    kinds = ["hole" if isinstance(p, int) else "data" for p in pieces]
    assert kinds == ["hole", "data", "hole"]
    lengths = [p if isinstance(p, int) else len(p) for p in pieces]
    assert sum(lengths) == len(buf)
    assert lengths[1] == block  # the block holding the byte, aligned in the file
    assert (
        b"".join(bytes(p) if isinstance(p, int) else p.tobytes() for p in pieces) == buf.tobytes()
    )
    data = np.frombuffer(np.random.default_rng(4).bytes(3 * block), np.uint8)
    assert [len(p) for p in pipeline._zero_runs(data, 0)] == [3 * block]
