"""Scale: `log` never reads the index; a large index is loaded in about the memory its arrays
take (streamed from its file, kept in segments), and looked up exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from casnap import chunkindex
from casnap.chunkindex import FIELD_DTYPE, ChunkIndex, decode_index, encode_index
from casnap.errors import IntegrityError
from casnap.ids import ID_SIZE, PLAIN_IDS, IdHasher, ObjectId
from casnap.indexstream import read_index
from casnap.packs import MIN_PACK_SIZE, index_key, pack_key
from casnap.repository import Repository
from tests.conftest import evolve_app, make_app
from tests.helpers_memory import MB, run_measured


def synthetic(
    n: int, seed: int, per_pack: int = 10_000
) -> tuple[list[ObjectId], np.ndarray, np.ndarray]:
    """(pack table, ids, fields) of n random chunks: 4 KiB pages in frames of 128, in packs."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 256, size=(n, ID_SIZE), dtype=np.uint8)
    row = np.arange(n, dtype=np.int64)
    packs = [ObjectId(rng.bytes(ID_SIZE)) for _ in range(-(-n // per_pack))]
    fields = np.zeros(n, dtype=FIELD_DTYPE)
    fields["pack"] = row // per_pack
    fields["offset"] = 16 + (row % per_pack) // 128 * 200_000
    fields["length"] = 200_000
    fields["plain"] = 4096
    fields["inner"] = row % 128 * 4096
    fields["frame_plain"] = 128 * 4096
    return packs, ids, fields


def store_synthetic(repo_dir: Path, n: int, seed: int) -> str:
    """An index file naming n synthetic chunks, stored in the repository; its key. The packs it
    names are sparse files as long as the frames it names in them: there, as a commit checks,
    but holding nothing."""
    with Repository.open(repo_dir) as repo:
        packs, ids, fields = synthetic(n, seed)
        blob = encode_index(packs, ids, fields)
        key = index_key(repo.ids(blob))
        repo.store.put_verified(key, blob)
    ends = fields["offset"].astype(np.int64) + fields["length"]
    for pack in packs:
        path = repo_dir / pack_key(pack)
        path.parent.mkdir(exist_ok=True)
        with path.open("wb") as f:
            f.truncate(max(MIN_PACK_SIZE, int(ends.max())))
    return key


def cli(repo: Path, data: Path, *args: str):
    return run_measured(["--repo", str(repo), "--data", str(data), *args])


def ok(proc) -> None:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


# -- log -----------------------------------------------------------------------------------------


def test_log_reads_no_index_file(tmp_path: Path) -> None:
    data, repo = tmp_path / "data", tmp_path / "repo"
    make_app(data)
    for step in range(3):
        if step:
            evolve_app(data, step)
        ok(cli(repo, data, "-q", "commit", "-m", f"step {step}")[0])
    index_files = sorted((repo / "index").iterdir())
    assert len(index_files) == 3
    for f in index_files:  # emptied: damage to anything that reads them
        f.write_bytes(b"")
    proc, _ = cli(repo, data, "log")
    ok(proc)
    assert [line.count("step") for line in proc.stdout.splitlines()].count(1) == 3
    proc, _ = cli(repo, data, "log", "--json", "--path", ".")
    ok(proc)
    proc, _ = cli(repo, data, "stats")  # reads the index: the damage shows
    assert proc.returncode != 0
    assert "index/" in proc.stderr


def test_log_gets_no_index_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, through the real local backend with every read recorded."""
    from click.testing import CliRunner

    from casnap.backends.local import LocalBackend
    from casnap.cli.main import cli as main_cli

    data, repo = tmp_path / "data", tmp_path / "repo"
    make_app(data)
    ok(cli(repo, data, "-q", "commit")[0])
    got: list[str] = []
    real_get = LocalBackend.get

    def recording_get(self, key, offset=0, length=None):
        got.append(key)
        return real_get(self, key, offset, length)

    monkeypatch.setattr(LocalBackend, "get", recording_get)
    result = CliRunner().invoke(main_cli, ["--repo", str(repo), "--data", str(data), "log"])
    assert result.exit_code == 0, result.output
    assert any(k.startswith("snapshots/") for k in got)
    assert not [k for k in got if k.startswith(("index/", "packs/"))]


# -- the index in memory ---------------------------------------------------------------------------


def test_commit_against_a_large_index_needs_little_more_than_its_arrays(tmp_path: Path) -> None:
    """1.5M entries in one index file (as gc leaves it, 48 MB stored): the commit of a small
    change loads all of it and looks its new chunks up there. Held as arrays that is ~65 bytes
    an entry; reading the file whole and sorting copies of the arrays cost over 200."""
    data, repo = tmp_path / "data", tmp_path / "repo"
    make_app(data)
    ok(cli(repo, data, "-q", "commit")[0])
    evolve_app(data, 1)
    proc, without = cli(repo, data, "-q", "commit", "--json")
    ok(proc)
    n = 1_500_000
    key = store_synthetic(repo, n, seed=3)
    assert (repo / key).stat().st_size > 16 << 20  # past INDEX_STREAM_BYTES: streamed
    evolve_app(data, 2)
    proc, peak = cli(repo, data, "-q", "commit", "--json")
    ok(proc)
    done = json.loads(proc.stdout)  # new chunks: each was looked up in the loaded index
    assert done["chunks_new"] > 0 and done["phases"]["index"] > 0
    grown = peak - without
    assert grown < n * 110, f"the index cost {grown / n:.0f} bytes an entry ({peak / MB:.0f} MB)"
    with Repository.open(repo) as r:
        r.ensure_index()
        assert len(r.store.index) == n + len(done_before(r))


def done_before(repo: Repository) -> set[bytes]:
    """The distinct chunks the real commits stored (every index file but the synthetic one)."""
    ids: set[bytes] = set()
    for key, size in repo.backend.list("index/"):
        if size <= 16 << 20:
            ids.update(bytes(i) for i in repo.store.load_index_file(key, size)[1])
    return ids


def test_streamed_index_file_decodes_as_a_whole_read(tmp_path: Path) -> None:
    packs, ids, fields = synthetic(50_000, seed=1, per_pack=900)
    fields["type"][::7] = chunkindex.TREE
    blob = encode_index(packs, ids, fields)
    key = index_key(PLAIN_IDS(blob))
    reads: list[tuple[int, int]] = []

    def fetch(offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return blob[offset : offset + length]

    streamed = read_index(key, fetch, len(blob), PLAIN_IDS)
    whole = decode_index(key, blob)
    assert streamed[0] == whole[0] == packs
    assert np.array_equal(streamed[1], ids) and np.array_equal(whole[1], ids)
    assert np.array_equal(streamed[2], fields) and np.array_equal(whole[2], fields)
    assert sum(n for _, n in reads) == len(blob)

    keyed = IdHasher(bytes(range(32)))
    keyed_key = index_key(keyed(blob))
    assert np.array_equal(read_index(keyed_key, fetch, len(blob), keyed)[1], ids)
    with pytest.raises(IntegrityError, match="does not match its name"):
        read_index(keyed_key, fetch, len(blob), PLAIN_IDS)


@pytest.mark.parametrize("damage", ["flip", "short", "long", "name"])
def test_streamed_index_file_refuses_damage(damage: str) -> None:
    blob = bytearray(encode_index(*synthetic(20_000, seed=2)))
    key = index_key(PLAIN_IDS(bytes(blob)))
    size = len(blob)
    if damage == "flip":
        blob[len(blob) // 2] ^= 0x40
    elif damage == "short":
        size -= 100
    elif damage == "long":
        blob += b"\0" * 64
        size = len(blob)
    else:
        key = index_key(PLAIN_IDS(b"another"))
    with pytest.raises(IntegrityError, match=key):
        read_index(key, lambda o, n: bytes(blob[o : o + n]), size, PLAIN_IDS)


def test_index_in_segments_finds_every_id_and_its_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunkindex, "SEGMENT_ENTRIES", 1000)
    parts = [synthetic(n, seed) for seed, n in enumerate([2500, 300, 400, 10, 999, 1])]
    # ids sharing their first 8 bytes (a sort key) with others, in several segments
    twin = parts[0][1][5].copy()
    for _, ids, _ in parts[1:3]:
        ids[7, :8] = twin[:8]
    index = ChunkIndex()
    index.add(parts[:4])
    index.add(parts[4:])
    segments = index._state()[0]
    assert len(segments) > 2 and max(len(s) for s in segments) == 2500
    assert len(index) == sum(len(i) for _, i, _ in parts)
    everything = np.concatenate([i for _, i, _ in parts])
    rows = index.lookup(everything)
    assert (rows >= 0).all()
    assert len(set(rows.tolist())) == len(rows)
    found = index.fields(rows)
    for (packs, ids, fields), start in zip(
        parts, np.cumsum([0, *(len(p[1]) for p in parts)])[:-1], strict=True
    ):
        mine = found[start : start + len(ids)]
        assert np.array_equal(
            mine[["offset", "length", "plain", "inner"]],
            fields[["offset", "length", "plain", "inner"]],
        )
        assert [index.packs[p] for p in mine["pack"].tolist()] == [
            packs[p] for p in fields["pack"].tolist()
        ]
    for row in rows[::97].tolist():
        assert index.get(index.id_at(row)) == index.entry_at(row)
    absent = np.random.default_rng(9).integers(0, 256, size=(500, ID_SIZE), dtype=np.uint8)
    absent[:3, :8] = twin[:8]  # a known key, another id
    assert (index.lookup(absent) == -1).all()
    assert set(index.entries([bytes(i) for i in everything[:50]])) == {
        bytes(i) for i in everything[:50]
    }
    assert index.nbytes == sum(s.nbytes for s in segments)
    assert index.nbytes < 66 * len(index)
