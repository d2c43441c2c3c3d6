"""Hostile repositories that ask for absurd amounts of memory: decompression bombs, index entries,
pack directories and config values past casnap's limits. Each is refused with one line and the
documented exit code, and the real CLI (a subprocess, its peak RSS measured) stays small."""

from __future__ import annotations

import json
import re
from pathlib import Path

import blake3
import numpy as np
import pytest
import zstandard

from casnap import chunklist, compression
from casnap.backends import LocalBackend, MemoryBackend
from casnap.checker import verify
from casnap.chunkindex import DATA, FIELD_DTYPE, TREE, decode_index, encode_index
from casnap.chunking import SQLitePageChunker, choose_chunker
from casnap.committer import commit
from casnap.config import default_config
from casnap.constants import (
    MAX_CHUNK_SIZE,
    MAX_FRAME_LENGTH,
    MAX_FRAME_SIZE,
    MAX_PACK_DIRECTORY,
    MAX_PACK_SIZE,
    MAX_PACK_TARGET,
)
from casnap.errors import EXIT_CODES, IntegrityError
from casnap.formats.faiss import FAISS_SAMPLE_HEADER
from casnap.formats.hnsw import HNSW_SAMPLE_RECORDS
from casnap.formats.sqlite import SQLITE_SAMPLE_HEADER
from casnap.ids import ObjectId, hash_bytes
from casnap.manifest import compress_manifest, decompress_manifest
from casnap.packs import pack_key, parse_pack_directory, read_pack_directory
from casnap.packwriter import PackWriter
from casnap.repository import Repository
from casnap.restorer import checkout
from casnap.store import Store
from tests.helpers_memory import MB, run_measured

FOUR_GIB = (1 << 32) - 1  # the largest size an index entry can claim
MiB = 1 << 20
ZEROS = bytes(16 * MiB)


def zero_bomb(n: int) -> bytes:
    """A zstd frame of n zero bytes written as a stream, so its header declares no size."""
    cobj = zstandard.ZstdCompressor(level=1, write_content_size=False).compressobj()
    parts = []
    for at in range(0, n, len(ZEROS)):
        parts.append(cobj.compress(memoryview(ZEROS)[: min(len(ZEROS), n - at)]))
    parts.append(cobj.flush())
    bomb = b"".join(parts)
    assert zstandard.frame_content_size(bomb) == -1
    return bomb


def zeros_id(n: int) -> ObjectId:
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    for at in range(0, n, len(ZEROS)):
        h.update(memoryview(ZEROS)[: min(len(ZEROS), n - at)])
    return ObjectId(h.digest())


def seed_repo(root: Path, config: dict | None = None) -> tuple[Path, Path, str]:
    """A local repository holding one snapshot of a one-file data dir."""
    data = root / "data"
    data.mkdir()
    (data / "seed.bin").write_bytes(b"seed")
    repo = Repository.init(root / "repo", config)
    return root / "repo", data, commit(repo, data).id


def add_file(repo_dir: Path, sid: str, path: str, frame: bytes, claimed: int, n: int) -> str:
    """A snapshot like sid plus a file whose one chunk is `frame` (codec byte included), indexed
    as a chunk of `claimed` bytes; the chunk id and file hash are those of n zero bytes.

    Pack, directory, index file and chunk list are written by casnap's own writer, so everything
    agrees: only the sizes are hostile."""
    repo = Repository.open(repo_dir)
    cid = zeros_id(n)
    body = bytes([chunklist.TAG_PIECE]) + chunklist.REF.pack(cid, claimed)
    lid = hash_bytes(body)
    writer = PackWriter(repo.store)
    writer.add_frame(DATA, frame, 0, [(cid, 0, claimed)])
    writer.add(lid, TREE, compression.encode(body), len(body))
    writer.finish()
    backend = LocalBackend(repo_dir)
    d = json.loads(decompress_manifest(backend.get(f"snapshots/{sid}"), "m"))
    entry = dict(d["files"][0], path=path, size=claimed, hash=cid.hex(), lists=[lid.hex()])
    d["files"] = [*d["files"], entry]
    d.pop("totals", None)  # as a manifest written before totals were recorded
    raw = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    new = hash_bytes(raw).hex()
    backend.put(f"snapshots/{new}", compress_manifest(raw))
    return new


def cli(repo: Path, data: Path, *args: str):
    return run_measured(["--repo", str(repo), "--data", str(data), *args])


def one_line(proc, code: int, pattern: str) -> str:
    """The CLI failed with `code` and one error line on stderr matching pattern (beside notes
    such as verify's), no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("note: ")]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("casnap: error: "), lines[0]
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


INTEGRITY = EXIT_CODES["integrity"]
CHECK = EXIT_CODES["check-failed"]


@pytest.fixture(scope="module")
def four_gib_bomb() -> bytes:
    """4 GiB of zeros in a ~130 KB zstd frame that declares no size."""
    return bytes([compression.ZSTD]) + zero_bomb(FOUR_GIB)


def test_an_index_entry_claiming_a_4gib_frame_is_refused_in_bounded_memory(
    tmp_path: Path, four_gib_bomb: bytes
) -> None:
    """The chunk really is 4 GiB of zeros, its id and file hash are right: only its size is
    past the limit. checkout refuses (exit 5), verify --read-data lists it (exit 9)."""
    repo, data, sid = seed_repo(tmp_path)
    bad = add_file(repo, sid, "bomb.bin", four_gib_bomb, FOUR_GIB, FOUR_GIB)
    proc, peak = cli(repo, data, "checkout", bad, "--to", str(tmp_path / "out"), "--no-smoke")
    one_line(proc, INTEGRITY, r"index/[0-9a-f]{64}: .*4294967295.*limit")
    assert peak < 300 * MB, f"checkout peaked at {peak / MB:.0f} MB"
    assert not (tmp_path / "out" / "bomb.bin").exists()
    proc, peak = cli(repo, data, "verify", "--read-data")
    one_line(proc, CHECK, r"verify: \d+ problem")
    assert peak < 300 * MB, f"verify --read-data peaked at {peak / MB:.0f} MB"
    assert re.search(r"index/[0-9a-f]{64}: .*4294967295.*limit", proc.stdout), proc.stdout
    assert re.search(r"pack [0-9a-f]{12}.*: .*4294967295.*limit", proc.stdout), proc.stdout
    assert re.search(r"bomb\.bin \(" + bad[:8], proc.stdout), proc.stdout  # what it breaks


def test_a_frame_that_decodes_past_its_claimed_size_is_damage(
    tmp_path: Path, four_gib_bomb: bytes
) -> None:
    """Indexed as 1 MiB (within every limit) but 4 GiB of zeros when decoded: decoding stops
    at the claimed size and calls the frame damaged, without allocating more."""
    repo, data, sid = seed_repo(tmp_path)
    bad = add_file(repo, sid, "bomb.bin", four_gib_bomb, MiB, MiB)
    proc, peak = cli(repo, data, "checkout", bad, "--to", str(tmp_path / "out"), "--no-smoke")
    one_line(proc, INTEGRITY, r"bomb\.bin: .*decodes past its 1048576 bytes")
    assert peak < 300 * MB, f"checkout peaked at {peak / MB:.0f} MB"
    proc, peak = cli(repo, data, "verify", "--read-data")
    one_line(proc, CHECK, r"verify: 1 problem")
    assert peak < 300 * MB, f"verify --read-data peaked at {peak / MB:.0f} MB"
    assert re.search(r"data chunk [0-9a-f]{16} in pack [0-9a-f]{12}: .*decodes past", proc.stdout)
    assert "bomb.bin" in proc.stdout


def test_one_frame_per_worker_of_a_hostile_repository(tmp_path: Path) -> None:
    """Four files, each one frame of 256 MiB of zeros claimed as 1 MiB: the workers decode them
    at once, each bounded by the claim."""
    repo, data, sid = seed_repo(tmp_path)
    frame = bytes([compression.ZSTD]) + zero_bomb(256 * MiB)
    for n in range(4):
        sid = add_file(repo, sid, f"bomb{n}.bin", frame + bytes(n), MiB, MiB)
    proc, peak = cli(repo, data, "checkout", sid, "--to", str(tmp_path / "out"), "--no-smoke")
    one_line(proc, INTEGRITY, r"bomb\d\.bin: .*decodes past")
    assert peak < 300 * MB, f"checkout peaked at {peak / MB:.0f} MB"


def test_a_smoke_command_printing_without_bound_is_held_to_its_tail(tmp_path: Path) -> None:
    """A smoke command's output was held whole (then its last 2000 characters kept): one that
    printed 200 MB (a verbose test run) made the checkout take 600 MB. Only each
    stream's tail is held now; the failure still names the command's last line."""
    repo, data, sid = seed_repo(tmp_path)
    loud = "head -c 200000000 /dev/zero | tr '\\0' x; echo; echo 'last words' >&2; exit 3"
    out = tmp_path / "out"
    proc, peak = cli(repo, data, "checkout", sid, "--to", str(out), "--smoke-cmd", loud)
    one_line(proc, CHECK, r"exit code 3: last words")
    assert not out.exists()
    assert peak < 300 * MB, f"checkout peaked at {peak / MB:.0f} MB"


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"pack_target": 10**12}, r"pack_target 1000000000000 .*limit"),
        ({"frame_target": 1 << 30}, r"frame_target 1073741824 .*limit"),
        (
            {"chunker": {"default": {"name": "fastcdc", "min": 1, "avg": 1, "max": 1}}},
            r"chunker .*min 1 .*limit",
        ),
        ({"chunker": {"default": {"name": "fixed", "size": 1}}}, r"chunker .*size 1 .*limit"),
        (
            {"chunker": {"default": {"name": "fixed", "size": 1 << 30}}},
            r"chunker .*size 1073741824 .*limit",
        ),
    ],
    ids=["pack-target-1e12", "frame-target-1gib", "cdc-1-byte", "fixed-1-byte", "fixed-1gib"],
)
def test_config_values_past_the_limits_are_refused(
    tmp_path: Path, change: dict, pattern: str
) -> None:
    """A config that would make a commit hold a terabyte pack or cut files into 1-byte chunks
    is damaged: every command refuses it (exit 5) before reading any data."""
    repo, data, sid = seed_repo(tmp_path)
    cfg = json.loads((repo / "config").read_text())
    cfg.update(change)
    (repo / "config").write_text(json.dumps(cfg))
    (data / "more.bin").write_bytes(bytes(range(256)) * 40_000)
    for args in (
        ["commit"],
        ["checkout", sid, "--to", str(tmp_path / "out"), "--no-smoke"],
        ["verify", "--read-data"],
    ):
        proc, peak = cli(repo, data, *args)
        one_line(proc, INTEGRITY, r"config is damaged: " + pattern)
        assert peak < 300 * MB, f"{args[0]} peaked at {peak / MB:.0f} MB"
    assert len(list((repo / "snapshots").iterdir())) == 1


# -- the limits one by one, in process ---------------------------------------------------------


def test_casnap_writes_nothing_past_its_own_limits() -> None:
    """The defaults sit well inside the limits: the largest chunk each default chunker can cut,
    the frame and pack targets."""
    cfg = default_config()
    chosen = [
        choose_chunker(header, cfg["chunker"], records)
        for header, records in (
            (b"", None),
            (SQLITE_SAMPLE_HEADER, None),
            (FAISS_SAMPLE_HEADER, None),
            (b"", HNSW_SAMPLE_RECORDS),
        )
    ]
    assert len({c.name for c in chosen}) == len(chosen) == len(cfg["chunker"])
    largest = max(c.max_size for c in chosen)
    assert largest * 64 <= MAX_CHUNK_SIZE
    assert SQLitePageChunker(65536).max_size * 64 <= MAX_CHUNK_SIZE  # SQLite's largest page
    assert cfg["frame_target"] * 16 <= MAX_FRAME_SIZE
    assert cfg["pack_target"] * 4 <= MAX_PACK_TARGET
    assert MAX_PACK_TARGET + MAX_FRAME_LENGTH + 2 * MAX_PACK_DIRECTORY <= MAX_PACK_SIZE
    assert Repository.open_backend(_backend_with(cfg)).config == cfg


def _backend_with(cfg: dict) -> MemoryBackend:
    backend = MemoryBackend()
    backend.put("config", json.dumps(cfg).encode())
    return backend


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pack_target", MAX_PACK_TARGET + 1),
        ("pack_target", 0),
        ("frame_target", MAX_FRAME_SIZE + 1),
        ("frame_target", -1),
        ("faiss.graph", 8),
        ("faiss.vectors", 1 << 30),
        ("faiss.min", 64),
        ("default.max", MAX_CHUNK_SIZE * 2),
        ("hnsw.max", MAX_CHUNK_SIZE * 2),
        ("hnsw.max", 100),
        ("default.min", 1 << 20),  # min > avg
    ],
)
def test_config_values_past_the_limits_are_integrity_errors(field: str, value: int) -> None:
    cfg = default_config()
    if "." in field:
        which, name = field.split(".")
        cfg["chunker"][which][name] = value
    else:
        cfg[field] = value
    with pytest.raises(IntegrityError, match="config is damaged"):
        Repository.open_backend(_backend_with(cfg))


def _index_file(cid: ObjectId, **change: int) -> bytes:
    """An index file of one entry (in pack 0 of a one-pack table), its fields changed."""
    values = {"type": DATA, "offset": 16, "length": 100, "plain": 4096, "inner": 0}
    values.update(change)
    fields = np.zeros(1, dtype=FIELD_DTYPE)
    for name, value in values.items():
        fields[name] = value
    return encode_index([ObjectId(bytes(32))], np.frombuffer(cid, np.uint8).reshape(1, 32), fields)


@pytest.mark.parametrize(
    "change",
    [
        {"plain": MAX_CHUNK_SIZE + 1, "frame_plain": MAX_CHUNK_SIZE + 1},
        {"frame_plain": MAX_FRAME_SIZE + 1},
        {"length": MAX_FRAME_LENGTH + 1},
        {"offset": MAX_PACK_SIZE},
    ],
    ids=["chunk", "frame", "stored-frame", "offset"],
)
def test_index_entries_past_the_limits_are_refused(change: dict) -> None:
    blob = _index_file(ObjectId(bytes([1]) * 32), **change)
    with pytest.raises(IntegrityError, match=r"index/x: index entry of .* past the limit"):
        decode_index("index/x", blob)
    assert decode_index("index/x", _index_file(ObjectId(bytes(32))))


def test_pack_directory_records_past_the_limits_are_refused() -> None:
    backend = MemoryBackend()
    store = Store(backend, 1 << 20)
    writer = PackWriter(store)
    frame = compression.encode(bytes(4096))
    writer.add_frame(DATA, frame, 0, [(hash_bytes(bytes(4096)), 0, MAX_CHUNK_SIZE + 1)])
    writer.close()
    (pack,), _ids, _fields = writer.new_entries()
    data = backend.get(pack_key(pack))
    with pytest.raises(IntegrityError, match="pack directory entry of a chunk of 16777217"):
        parse_pack_directory(pack_key(pack), data)
    with pytest.raises(IntegrityError, match="past the limit"):
        read_pack_directory(backend, pack, len(data))


def test_a_pack_past_the_size_limit_is_reported_unread(tmp_path: Path) -> None:
    """verify names a pack larger than MAX_PACK_SIZE and the files it breaks without reading it
    (a sparse file here), and repair-index leaves it out."""
    repo_dir, data, sid = seed_repo(tmp_path)
    pack = next(p for p in (repo_dir / "packs").rglob("*") if p.is_file())
    with open(pack, "r+b") as f:
        f.truncate(MAX_PACK_SIZE + 1)
    repo = Repository.open(repo_dir)
    report = verify(repo, read_data=True)
    assert report.packs_read == 0 and report.bytes_read == 0
    lines = [p.line() for p in report.problems]
    assert any(
        re.search(rf"pack {pack.name[:12]}: .*pack of {MAX_PACK_SIZE + 1} bytes", p.line())
        and p.fault == "too-large"
        and p.pack == pack.name
        for p in report.problems
    ), lines
    assert report.damaged == {sid: ["seed.bin"]}
    skipped: list[tuple[str, str]] = []
    packs, _ids, _fields = repo.store.rebuild_index(skipped)
    assert not packs and "past the limit" in skipped[0][1]


@pytest.mark.parametrize("declares", [False, True])
def test_frames_decode_to_exactly_their_claimed_size(declares: bool) -> None:
    plain = np.random.default_rng(0).bytes(3000) * 50
    cctx = zstandard.ZstdCompressor(write_content_size=declares)
    blob = bytes([compression.ZSTD]) + cctx.compress(plain)
    assert compression.decode(blob, len(plain)) == plain
    with pytest.raises(IntegrityError, match="declares|decodes past"):
        compression.decode(blob, len(plain) - 1)
    with pytest.raises(IntegrityError, match="declares|decodes to"):
        compression.decode(blob, len(plain) + 1)
    with pytest.raises(IntegrityError, match="past the limit"):
        compression.decode(blob, MAX_FRAME_SIZE + 1)


def test_objects_without_a_declared_size_are_decoded_within_their_bound() -> None:
    """A stored object (manifest, index file, pack directory) that declares no size is decoded
    as a stream and refused once it passes its bound, instead of allocating the bound."""
    body = b"casnap " * 10_000
    stream = zstandard.ZstdCompressor(write_content_size=False).compress(body)
    assert compression.decompress_object(stream, "x") == body
    bomb = zero_bomb(64 * MiB)
    with pytest.raises(IntegrityError, match=r"x \(decodes past \d+ bytes\)"):
        compression.decompress_object(bomb, "x")


def test_a_pack_directory_is_written_before_it_grows_past_its_limit(monkeypatch) -> None:
    monkeypatch.setattr("casnap.packwriter.MAX_PACK_DIRECTORY", 10 * 53)
    store = Store(MemoryBackend(), 1 << 30)
    writer = PackWriter(store)
    for i in range(25):
        body = i.to_bytes(4, "little") * 1000
        writer.add(hash_bytes(body), DATA, compression.encode(body), len(body))
    writer.finish()
    assert writer.packs_written == 3  # 10 + 10 + 5 chunks, though pack_target is 1 GiB


def test_a_chunk_list_delta_past_the_chunk_limit_is_stored_as_a_full_list(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr("casnap.filelists.MAX_CHUNK_SIZE", 8)  # any delta is too long
    data = tmp_path / "data"
    data.mkdir()
    body = bytearray(np.random.default_rng(1).bytes(300_000))
    (data / "f.bin").write_bytes(body)
    repo = Repository.init_backend(MemoryBackend(), tmp_dir=tmp_path / "tmp")
    commit(repo, data)
    body[1000:1010] = bytes(10)
    (data / "f.bin").write_bytes(body)
    sid = commit(repo, data).id
    (entry,) = repo.load_snapshot(repo.resolve(sid)).files
    assert len(entry.lists) == 1  # one full piece, no delta
    out = tmp_path / "out"
    checkout(repo, sid, out, safety_snapshot=False, smoke=False)
    assert (out / "f.bin").read_bytes() == body
