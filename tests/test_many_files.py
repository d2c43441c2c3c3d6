"""A data dir of many small files: what a commit and a checkout do per file.

Per-file work (an fsync per restored file, a chunk list read on its own, a frame per file, a
file opened by a commit that finds it unchanged) is what made thousands of small files slow.
These tests pin the behaviour that removed it, never the time it takes.
"""

from __future__ import annotations

import builtins
import io
import os
import random
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from casnap import fsutil
from casnap.chunkindex import DATA, TREE
from casnap.committer import commit
from casnap.repository import Repository
from casnap.restorer import checkout


def make_files(root: Path, count: int, seed: int = 0, folders: int = 20) -> dict[str, bytes]:
    """count small files (100 B - 12 KiB, text-like or random) in `folders` folders."""
    rng = random.Random(seed)
    files = {}
    for i in range(count):
        size = int(100 * 120 ** rng.random())
        if rng.random() < 0.5:
            body = bytes(rng.choice(b"abcdefgh \n") for _ in range(size))
        else:
            body = rng.randbytes(size)
        rel = f"d{i % folders:02d}/f{i:05d}.dat"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        os.utime(path, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i))
        files[rel] = body
    return files


def tree(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Bytes, mode and mtime of every file below root."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[p.relative_to(root).as_posix()] = (
                p.read_bytes(),
                stat.S_IMODE(st.st_mode),
                st.st_mtime_ns,
            )
    return out


def counting(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[tuple[Any, ...]]:
    """Calls of owner.name recorded (and passed on)."""
    calls: list[tuple[Any, ...]] = []
    real: Callable[..., Any] = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.fixture
def many(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    data = tmp_path / "data"
    files = make_files(data, 2000)
    os.chmod(data / "d03" / "f00003.dat", 0o640)
    return data, files


@pytest.mark.skipif(not fsutil.can_syncfs(), reason="syncfs cannot report failed writes here")
def test_restore_of_many_files_syncs_in_batches(
    many: tuple[Path, dict[str, bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, _files = many
    repo = Repository.init(tmp_path / "repo")
    commit(repo, data)
    fsyncs = counting(monkeypatch, os, "fsync")
    syncfs = counting(monkeypatch, fsutil, "syncfs")
    out = tmp_path / "out"
    result = checkout(repo, "latest", out, safety_snapshot=False)
    assert result.files_written == 2000
    assert tree(out) == tree(data)  # bytes, modes and mtimes
    # every file durable before the swap, and the folders after it, in a few syncs: O(batches)
    # of files, not one fsync per file (2000) nor per folder (20)
    assert len(syncfs) >= 1
    assert len(fsyncs) + len(syncfs) <= 10, (len(fsyncs), len(syncfs))


def test_restore_reads_chunk_lists_and_frames_of_many_files_together(
    many: tuple[Path, dict[str, bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, _files = many
    repo = Repository.init(tmp_path / "repo")
    commit(repo, data)
    reads = counting(monkeypatch, repo.backend, "get")
    out = tmp_path / "out"
    checkout(repo, "latest", out, safety_snapshot=False, smoke=False)
    assert tree(out) == tree(data)
    # the 2000 files' chunk lists and data come from a few reads of adjacent frames, not one
    # read per list and one per file (4000)
    pack_reads = [r for r in reads if str(r[0]).startswith("packs/")]
    assert len(pack_reads) <= 60, len(pack_reads)


def test_small_files_share_frames(many: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    data, files = many
    repo = Repository.init(tmp_path / "repo")
    result = commit(repo, data)
    assert result.files_new == 2000
    repo = Repository.open(tmp_path / "repo")
    repo.ensure_index()
    fields = repo.store.index.fields(np.arange(len(repo.store.index)))
    data_rows = fields[fields["type"] == DATA]
    frames = {(int(f["pack"]), int(f["offset"])) for f in data_rows}
    # new chunks of consecutive small files are compressed together, up to the frame target
    assert len(data_rows) >= 2000
    assert len(frames) <= 2000 // 20, len(frames)
    # every file restores from its shared frames
    out = tmp_path / "out"
    checkout(repo, "latest", out, safety_snapshot=False)
    assert {p: b for p, (b, _m, _t) in tree(out).items()} == files
    tree_rows = fields[fields["type"] == TREE]
    assert len(tree_rows) >= 1


def test_no_change_commit_of_many_files_opens_none_of_them(
    many: tuple[Path, dict[str, bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, files = many
    repo = Repository.init(tmp_path / "repo")
    commit(repo, data)
    time.sleep(0.15)  # past the racy window of the last write
    commit(repo, data)  # the files written last are vouched for now
    if os.geteuid() != 0:  # a file nobody may read cannot be read by mistake
        for rel in files:
            os.chmod(data / rel, 0)
    opened: list[str] = []

    def watching(real: Callable[..., Any]) -> Callable[..., Any]:
        def watched(path: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                opened_now = real(path, *args, **kwargs)
            except FileNotFoundError:
                raise  # no such file: nothing opened (a folder's `config`, looked for by a scan)
            except OSError:
                note(path)
                raise
            note(path)
            return opened_now

        def note(path: Any) -> None:
            if isinstance(path, (str, bytes, os.PathLike)):
                name = os.fsdecode(path)
                if name.startswith(str(data)) and not os.path.isdir(name):
                    opened.append(name)

        return watched

    monkeypatch.setattr(os, "open", watching(os.open))
    monkeypatch.setattr(builtins, "open", watching(builtins.open))
    monkeypatch.setattr(io, "open", watching(io.open))
    result = commit(repo, data)
    assert result.files_unchanged == 2000 and result.bytes_read == 0
    assert opened == []


def test_new_folders_move_in_whole_with_their_modes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_files(data, 300, seed=3, folders=6)
    (data / "d01" / "deep" / "er").mkdir(parents=True)
    (data / "d01" / "deep" / "er" / "x.txt").write_text("deep")
    modes = {"d00": 0o750, "d01": 0o700, "d01/deep": 0o755, "d01/deep/er": 0o710}
    for rel, mode in modes.items():
        os.chmod(data / rel, mode)
    repo = Repository.init(tmp_path / "repo")
    commit(repo, data)
    # one folder is there already (with a file no snapshot holds): its files go in one by one
    out = tmp_path / "out"
    (out / "d02").mkdir(parents=True)
    (out / "d02" / "stray.txt").write_text("not in the snapshot")
    result = checkout(repo, "latest", out, safety_snapshot=False, force=True)  # stray.txt goes
    assert tree(out) == tree(data)
    assert result.removed == ["d02/stray.txt"]
    assert sorted(result.written) == sorted(tree(data))
    for rel, mode in modes.items():
        assert stat.S_IMODE((out / rel).stat().st_mode) == mode, rel
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".casnap-tmp")]


@pytest.mark.parametrize("encryption", ["none", "repokey"])
def test_whole_file_hash_of_one_chunk_files_verifies(tmp_path: Path, encryption: str) -> None:
    """A small file of one chunk records the chunk's id as its whole-file hash where ids are
    plain BLAKE3; where they are keyed it is hashed apart. Either way the entry holds the plain
    BLAKE3 of the file, which checkout and cat verify."""
    from blake3 import blake3

    data = tmp_path / "data"
    rng = random.Random(7)
    files = {f"f{i:03d}.dat": rng.randbytes(int(50 * 200 ** rng.random())) for i in range(80)}
    data.mkdir()
    for rel, body in files.items():
        (data / rel).write_bytes(body)
    repo = Repository.open_or_init(
        tmp_path / "repo", password=(lambda: "pw") if encryption == "repokey" else None,
        encryption=encryption,
    )  # fmt: skip
    commit(repo, data)
    snap = repo.snapshot(repo.resolve("latest"))
    chunks = {e.path: e.chunks for e in snap.files}
    assert min(chunks.values()) == 1 and max(chunks.values()) > 1  # both kinds present
    for e in snap.files:
        assert e.hash == blake3(files[e.path]).hexdigest(), e.path
    out = tmp_path / "out"
    checkout(repo, "latest", out, safety_snapshot=False)
    assert {p: b for p, (b, _m, _t) in tree(out).items()} == files


def test_batch_hands_back_files_that_changed_and_reads_the_rest_right(tmp_path: Path) -> None:
    """Files of a batch that changed since the scan (grown, shrunk) go back to be read on their
    own; the files read around them, in this batch and in later ones that use its memory again,
    are stored with their own bytes."""
    import contextlib

    from blake3 import blake3

    from casnap import capture, smallingest
    from casnap.phases import Phases
    from casnap.reading import Reader

    data = tmp_path / "data"
    files = make_files(data, 300, seed=3, folders=3)
    repo = Repository.init(tmp_path / "repo")
    sources = capture.scan(data)
    changed = {sources[5].path, sources[150].path, sources[299].path}
    time.sleep(0.05)
    for rel in changed:  # after the scan: one grows, one shrinks, one is rewritten longer
        files[rel] = (
            files[rel][: len(files[rel]) // 2]
            if rel == sources[150].path
            else (files[rel] + b"more")
        )
        (data / rel).write_bytes(files[rel])
    reader = Reader(repo, Phases(), time.time_ns(), False)
    with contextlib.ExitStack() as stack:
        reader.stack = stack
        small = reader._small_files()
        done: list[smallingest.Stored] = []
        for i, src in enumerate(sources):
            assert smallingest.batchable(src)
            done += small.add(smallingest.Waiting(i, src, None))
            if i % 100 == 99:
                done += small.finish()  # batches one after the other: memory used again
        done += small.finish()
        reader.finish()
    assert len(done) == 300
    handed_back = {w.src.path for w, entry, _n in done if entry is None}
    assert handed_back == changed
    for w, entry, n in done:
        if entry is not None:
            assert n == entry.size == len(files[w.src.path])
            assert entry.hash == blake3(files[w.src.path]).hexdigest(), w.src.path


def _unblock(fifo: Path) -> None:
    """Open fifo for writing without waiting, so a reader stuck opening it returns."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def test_a_file_that_became_a_fifo_or_a_folder_since_the_scan_is_never_waited_on(
    tmp_path: Path,
) -> None:
    """A file swapped for a FIFO after the scan is handed back by its batch and refused on its
    own (SourceError, exit 7) at once: opening a FIFO to read waits for a writer forever. One
    swapped for a folder or a symbolic link is refused the same way."""
    import contextlib
    import threading

    from casnap import capture, smallingest
    from casnap.errors import SourceError
    from casnap.phases import Phases
    from casnap.reading import Reader

    data = tmp_path / "data"
    make_files(data, 40, seed=4, folders=2)
    repo = Repository.init(tmp_path / "repo")
    sources = capture.scan(data)
    fifo, folder, link = sources[3], sources[20], sources[30]
    os.unlink(fifo.full)
    os.mkfifo(fifo.full)
    os.unlink(folder.full)
    os.mkdir(folder.full)
    os.unlink(link.full)
    os.symlink(sources[0].full, link.full)
    outcome: dict[str, Any] = {}

    def run() -> None:
        reader = Reader(repo, Phases(), time.time_ns(), False)
        with contextlib.ExitStack() as stack:
            reader.stack = stack
            small = reader._small_files()
            done: list[smallingest.Stored] = []
            for i, src in enumerate(sources):
                done += small.add(smallingest.Waiting(i, src, None))
            done += small.finish()
            outcome["handed back"] = {w.src.path for w, entry, _n in done if entry is None}
            for src in (fifo, folder, link):
                try:
                    reader.read_file(src, None)
                except SourceError as exc:
                    outcome[src.path] = str(exc)
            reader.finish()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)
    stuck = worker.is_alive()
    while worker.is_alive():  # let it end (and its repository's files close) before tmp goes
        _unblock(Path(fifo.full))
        worker.join(0.1)
    assert not stuck, "a read of the FIFO waited for a writer"
    assert outcome["handed back"] == {fifo.path, folder.path, link.path}
    for src in (fifo, folder, link):
        assert "was replaced while committing" in outcome[src.path], outcome
