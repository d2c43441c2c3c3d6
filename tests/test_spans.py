"""Remote reads in spans: a file restored from a later snapshot, whose chunks alternate between
the packs of several commits, is read from a remote backend in about one request per pack (not
one per alternation), byte-identical; the span planner merges near ranges and never overlaps."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from casnap import spans
from casnap.backends.memory import MemoryBackend
from casnap.committer import commit
from casnap.config import default_config
from casnap.repository import Repository
from casnap.restorer import checkout

MiB = 1 << 20


class RemoteMemory(MemoryBackend):
    """A memory backend that says each request is a round trip, and counts its ranged reads."""

    remote = True

    def __init__(self) -> None:
        super().__init__()
        self.pack_reads: list[tuple[str, int, int | None]] = []
        self._count = threading.Lock()

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        if key.startswith("packs/"):
            with self._count:
                self.pack_reads.append((key, offset, length))
        return super().get(key, offset, length)


def test_merge_joins_near_ranges_up_to_the_limit_and_never_overlaps() -> None:
    merge = spans._merge
    assert merge([(0, 10), (15, 20), (100, 110)], gap=5, limit=1000) == [(0, 20), (100, 110)]
    assert merge([(0, 10), (12, 20)], gap=5, limit=15) == [(0, 10), (12, 20)]  # limit
    assert merge([(0, 10), (5, 30)], gap=0, limit=15) == [(0, 30)]  # overlap always merges
    assert merge([(0, 50)], gap=0, limit=10) == [(0, 50)]  # one long range stays whole


def test_spans_slice_the_fetched_bytes_and_refuse_ranges_they_do_not_hold() -> None:
    backend = MemoryBackend()
    blob = np.random.default_rng(1).bytes(100_000)
    backend.put("packs/aa/x", blob)
    with ThreadPoolExecutor(2) as pool:
        got = spans.Spans(backend, pool, [("packs/aa/x", 10, 20), ("packs/aa/x", 500, 900)])
        assert bytes(got.get("packs/aa/x", 12, 5)) == blob[12:17]
        assert bytes(got.get("packs/aa/x", 600, 300)) == blob[600:900]
        with pytest.raises(KeyError):
            got.get("packs/aa/x", 50_000, 10)
        with pytest.raises(KeyError):
            got.get("packs/bb/y", 0, 1)


def evolving_file(data: Path, repo: Repository, rounds: int) -> None:
    """A 6 MiB file committed, then `rounds` times 60 scattered 4 KiB pages rewritten and
    committed again: its last version alternates between the packs of every commit."""
    rng = np.random.default_rng(7)
    buf = bytearray(rng.bytes(6 * MiB))
    path = data / "vectors.bin"
    path.write_bytes(buf)
    commit(repo, data)
    for _ in range(rounds):
        for page in rng.choice(len(buf) // 4096, size=60, replace=False):
            buf[page * 4096 : page * 4096 + 4096] = rng.bytes(4096)
        path.write_bytes(buf)
        commit(repo, data)


def test_restore_from_a_remote_backend_reads_each_pack_in_few_requests(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    backend = RemoteMemory()
    cfg = default_config()
    cfg["pack_target"] = 64 * MiB  # every commit's new chunks in one pack
    repo = Repository.init_backend(backend, cfg, tmp_path / "tmp")
    evolving_file(data, repo, rounds=4)
    backend.pack_reads.clear()
    out = tmp_path / "out"
    checkout(repo, "latest", out, safety_snapshot=False, smoke=False)
    assert (out / "vectors.bin").read_bytes() == (data / "vectors.bin").read_bytes()
    packs = {key for key, _, _ in backend.pack_reads}
    assert len(packs) >= 5  # the file's bytes come from every commit
    # one span per pack for the data, and one per pack for the chunk lists read ahead; a
    # read per run of adjacent frames would make hundreds
    assert len(backend.pack_reads) <= 2 * len(packs) + 2, len(backend.pack_reads)


def test_chunk_lists_of_the_files_after_one_are_read_with_it(tmp_path: Path) -> None:
    """On a remote backend the chunk lists of a snapshot's files are read in one batch; a file
    entry of no known snapshot (built elsewhere) is read on its own, correctly."""
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(3)
    for i in range(12):
        (data / f"f{i:02d}.bin").write_bytes(rng.bytes(300_000))
    backend = RemoteMemory()
    repo = Repository.init_backend(backend, default_config(), tmp_path / "tmp")
    sid = commit(repo, data).id
    snap = repo.load_snapshot(repo.resolve(sid))
    backend.pack_reads.clear()
    first = repo.file_refs(snap.files[0])
    batch = len(backend.pack_reads)
    assert batch >= 1
    rest = [repo.file_refs(e) for e in snap.files[1:]]
    assert len(backend.pack_reads) == batch  # read with the first
    assert len({first, *rest}) == len(snap.files)
    foreign = snap.files[5]._replace(path="elsewhere.bin", lists=snap.files[5].lists)
    assert repo.file_refs(foreign) == rest[4]


def test_small_files_restored_from_a_remote_backend_share_their_requests(tmp_path: Path) -> None:
    """Files smaller than a stretch of reads are planned together: their frames, side by side
    in one pack, come in one span rather than one request per file."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i in range(12):
        (data / ("sub" if i % 3 else ".") / f"f{i:02d}.bin").write_bytes(rng.bytes(300_000))
    backend = RemoteMemory()
    cfg = default_config()
    cfg["pack_target"] = 64 * MiB
    repo = Repository.init_backend(backend, cfg, tmp_path / "tmp")
    commit(repo, data)
    backend.pack_reads.clear()
    out = tmp_path / "out"
    checkout(repo, "latest", out, safety_snapshot=False, smoke=False)
    for p in data.rglob("*.bin"):
        assert (out / p.relative_to(data)).read_bytes() == p.read_bytes()
    assert len({key for key, _, _ in backend.pack_reads}) == 1
    # the chunk lists of every file in one span, the data of every file in another
    assert len(backend.pack_reads) <= 2, backend.pack_reads


def test_spans_are_fetched_a_bounded_amount_ahead_and_dropped_once_read() -> None:
    """Spans are fetched in the order of their first read, no more than `ahead` bytes of them
    not read from yet; a span whose every range was read is dropped (its memory freed), and
    one whose ranges were all skipped (served from elsewhere) is never fetched."""
    backend = RemoteMemory()
    blob = np.random.default_rng(2).bytes(1_000_000)
    backend.put("packs/aa/x", blob)
    key = "packs/aa/x"
    # four spans of 100 kB, 200 kB apart; wanted last one first
    order = [(key, 600_000, 700_000), (key, 0, 50_000), (key, 50_000, 100_000)]
    order += [(key, 200_000, 300_000), (key, 400_000, 500_000)]
    with ThreadPoolExecutor(1) as pool:  # fetches run in the order submitted
        got = spans.Spans(backend, pool, order, gap=10, limit=1 << 20, ahead=150_000)
        wait_idle(pool)
        assert [r[1] for r in backend.pack_reads] == [600_000]  # one span ahead, no more
        assert bytes(got.get(key, 600_000, 100_000)) == blob[600_000:700_000]
        wait_idle(pool)
        assert [r[1] for r in backend.pack_reads] == [600_000, 0]
        assert got.held() == 100_000  # the first span was dropped once read
        assert bytes(got.get(key, 0, 50_000)) == blob[:50_000]
        wait_idle(pool)
        assert got.held() == 200_000  # half of the second one still wanted; the next ahead
        got.skip(key, 400_000, 100_000)  # served from elsewhere: never fetched
        assert bytes(got.get(key, 50_000, 50_000)) == blob[50_000:100_000]
        assert got.held() == 100_000
        assert bytes(got.get(key, 200_000, 100_000)) == blob[200_000:300_000]
        assert [r[1] for r in backend.pack_reads] == [600_000, 0, 200_000]
        assert got.held() == 0


def wait_idle(pool: ThreadPoolExecutor) -> None:
    """Wait until every task submitted to pool (of one thread) so far has run."""
    pool.submit(lambda: None).result()


def test_encrypted_views_hold_the_bytes_get_returns() -> None:
    """A view of a large read (what spans slice) holds exactly the bytes get gives, whatever the
    range's alignment to the sealed segments; a damaged object fails it the same way."""
    from casnap.backends.base import read_view
    from casnap.backends.encrypted import EncryptedBackend
    from casnap.crypto import Sealer
    from casnap.errors import IntegrityError

    inner = MemoryBackend()
    sealed = EncryptedBackend(inner, Sealer(bytes(range(32))))
    blob = np.random.default_rng(4).bytes(300_000)
    sealed.put("packs/aa/x", blob)
    rng = np.random.default_rng(5)
    for _ in range(40):
        start = int(rng.integers(0, len(blob)))
        length = int(rng.integers(0, len(blob) - start + 1))
        view = read_view(sealed, "packs/aa/x", start, length)
        assert (
            bytes(view) == sealed.get("packs/aa/x", start, length) == blob[start : start + length]
        )
    assert bytes(read_view(inner, "packs/aa/x", 0, 10)) == inner.get("packs/aa/x", 0, 10)
    damaged = bytearray(inner.get("packs/aa/x"))
    damaged[100_000] ^= 1
    inner.delete("packs/aa/x")
    inner.put("packs/aa/x", bytes(damaged))
    with pytest.raises(IntegrityError):
        read_view(sealed, "packs/aa/x", 90_000, 20_000)


def test_a_whole_pack_is_one_request(tmp_path: Path) -> None:
    """A pack holds pack_target bytes of frames and then some (its last frame, its directory):
    a restore that needs all of it asks for it in one request, not one and a sliver."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "big.bin").write_bytes(np.random.default_rng(8).bytes(36 * MiB))
    backend = RemoteMemory()
    repo = Repository.init_backend(backend, default_config(), tmp_path / "tmp")
    commit(repo, data)
    packs = {key for key in backend.objects if key.startswith("packs/")}
    assert len(packs) >= 3
    for entry in repo.load_snapshot(repo.resolve("latest")).files:
        repo.file_refs(entry)  # its chunk list read (and held) first: only data reads remain
    backend.pack_reads.clear()
    out = tmp_path / "out"
    checkout(repo, "latest", out, safety_snapshot=False, smoke=False)
    assert (out / "big.bin").read_bytes() == (data / "big.bin").read_bytes()
    assert len(backend.pack_reads) == len(packs), backend.pack_reads


def test_the_first_stretch_is_handed_out_as_soon_as_it_is_fetching() -> None:
    """The tasks of the first stretch are handed out once its spans are under way, before the
    next stretch is planned (later ones wait for the next to start: reads overlap work)."""
    from casnap import pipeline

    class FakeIndex:
        packs = [bytes(32)]

    class FakeStore:
        index = FakeIndex()
        backend = RemoteMemory()

    FakeStore.backend.put("packs/00/" + bytes(32).hex(), bytes(1))
    stretch = pipeline.SPAN_WINDOW // MiB
    count = 2 * stretch + 5
    pulled = []

    def tasks() -> Iterator[pipeline.Task]:
        for i in range(count):
            pulled.append(i)
            task = pipeline.Task(i * MiB)
            task.size = MiB
            read = pipeline._Read(0, i * MiB)
            read.frames.append([i * MiB, MiB, MiB, [(0, MiB)], False])
            read.stop = (i + 1) * MiB
            task.reads.append(read)
            yield task

    with ThreadPoolExecutor(1) as pool:
        handed = pipeline.spans_ahead(FakeStore(), tasks(), pool, lambda t: t)  # type: ignore[arg-type]
        first = next(handed)
        assert len(pulled) == stretch  # the second stretch not planned yet
        rest = [first, *handed]
        for task in rest:
            assert task.spans is not None
            task.spans.cancel()
    assert len(rest) == count


def test_spans_partly_read_are_cut_or_dropped_past_the_limit() -> None:
    """A span read early and again much later (a later commit's pack, read a little per file)
    does not hold memory for the whole stretch: past `held` bytes, the spans read from least
    recently are cut to what their reads to come need (when that is at most half of them) or
    dropped, and then fetched again from where those reads start."""
    backend = RemoteMemory()
    blob = np.random.default_rng(6).bytes(1_000_000)
    backend.put("packs/aa/x", blob)
    key = "packs/aa/x"
    cut = [(key, 0, 60_000), (key, 90_000, 100_000)]  # one span: 10% of it wanted later
    drop = [(key, 900_000, 910_000), (key, 910_000, 1_000_000)]  # one span: 90% wanted later
    middle = [(key, a, a + 100_000) for a in (200_000, 400_000, 600_000)]
    order = [cut[0], drop[0], *middle, cut[1], drop[1]]
    with ThreadPoolExecutor(1) as pool:
        got = spans.Spans(
            backend, pool, order, gap=40_000, limit=1 << 20, ahead=100_000, held=250_000
        )
        peak = 0
        for k, a, b in order:
            assert bytes(got.get(k, a, b - a)) == blob[a:b]
            peak = max(peak, got.held())
        assert got.held() == 0
    assert peak <= 250_000
    assert backend.pack_reads == [
        (key, 0, 100_000),
        (key, 900_000, 100_000),
        *((key, a, 100_000) for a in (200_000, 400_000, 600_000)),
        (key, 910_000, 90_000),  # dropped, fetched again: the cut one never was
    ]
