"""Damage in an encrypted repository: a segment that fails authentication costs only the chunks
it holds. repair-index keeps the others, verify --read-data names the files and snapshots the
damaged ones break, and a damaged scheme byte is damage (exit 5), not a newer format."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from casnap import Repository, compression
from casnap.backends.base import salvage
from casnap.backends.cached import CachingBackend
from casnap.backends.encrypted import EncryptedBackend
from casnap.backends.memory import MemoryBackend
from casnap.backends.retrying import RetryingBackend
from casnap.crypto import HEADER_SIZE, SEALED_SEGMENT, SEGMENT, Sealer
from casnap.errors import EXIT_CODES, IntegrityError
from casnap.ids import ObjectId, hash_bytes
from casnap.packs import pack_key
from tests.conftest import evolve_app, make_app
from tests.helpers_gc import flip_byte
from tests.test_encryption import PW, run

BLOB = "blob.bin"  # incompressible, so the first pack spans several segments


@dataclass
class Damaged:
    """A repository of three snapshots with one byte flipped in one pack, and what it breaks."""

    root: Path
    data: Path
    pack: ObjectId
    chunks_before: int
    lost: set[ObjectId]  # blobs (chunks and chunk lists) whose bytes the flip touched
    broken: set[tuple[str, str]]  # (snapshot hex, path) of every file that needs a lost blob
    intact: dict[str, dict[str, str]]  # snapshot hex -> {path: whole-file hash} of the others


def _history(tmp_path: Path, password: str | None) -> tuple[Path, Path]:
    data = tmp_path / "data"
    make_app(data, rows=120, vectors=200)
    (data / BLOB).write_bytes(random.Random(3).randbytes(640 * 1024))
    root = tmp_path / "backups"
    enc = ["--encryption", "repokey" if password else "none"]
    assert run(root, data, "init", *enc, password=password)[0] == 0
    for step in range(3):
        if step:
            evolve_app(data, step)
        code, _, err = run(root, data, "commit", "-m", f"step {step}", password=password)
        assert code == 0, err
    return root, data


def _open(root: Path, password: str | None) -> Repository:
    return Repository.open(root, (lambda: password) if password else None, cache=False)


def _damage(tmp_path: Path, password: str | None, first: bool = False) -> Damaged:
    """Flip one byte in a middle segment (64 KiB of plaintext) of the largest pack, or in its
    first (the one holding the pack's header); in a plain repository the same plaintext range's
    middle byte."""
    root, data = _history(tmp_path, password)
    repo = _open(root, password)
    repo.store.load_index()
    index = repo.store.index
    packs = sorted((root / "packs").rglob("*"), key=lambda p: p.stat().st_size)
    pack = ObjectId.from_hex(packs[-1].name)
    plain_len = len(repo.backend.get(pack_key(pack)))
    segments = -(-plain_len // SEGMENT)
    assert segments >= 6, segments
    k = 0 if first else segments // 2
    lo, hi = k * SEGMENT, (k + 1) * SEGMENT
    users: dict[ObjectId, set[tuple[str, str]]] = {}
    hashes: dict[str, dict[str, str]] = {}
    for sid, snap in repo.snapshots():
        hashes[sid.hex()] = {}
        for f in snap.files:
            hashes[sid.hex()][f.path] = f.hash
            blobs = [ObjectId.from_hex(h) for h in f.lists]
            blobs += [cid for cid, _ in repo.chunk_refs(f)]
            for b in blobs:
                users.setdefault(b, set()).add((sid.hex(), f.path))
    lost = set()
    for blob in users:
        e = index[blob]
        if e.pack != pack:
            continue
        start, end = e.offset, e.offset + e.length  # a compressed frame: all of it
        if repo.backend.get(pack_key(pack), e.offset, 1)[0] == compression.RAW:
            start = e.offset + 1 + e.inner  # a stored frame: the chunk's own bytes
            end = start + e.plain
        if start < hi and end > lo:
            lost.add(blob)
    assert lost
    broken = set().union(*(users[b] for b in lost))
    intact = {
        sid: {p: h for p, h in files.items() if (sid, p) not in broken}
        for sid, files in hashes.items()
    }
    assert any(intact.values())
    at = (HEADER_SIZE + k * SEALED_SEGMENT + 100) if password else (lo + SEGMENT // 2)
    flip_byte(root / pack_key(pack), at)
    return Damaged(root, data, pack, len(index), lost, broken, intact)


@pytest.fixture(params=["middle", "first"])
def damaged(tmp_path: Path, request: pytest.FixtureRequest) -> Damaged:
    """The first segment holds the pack's header: its chunks are lost with it, the others kept
    (the pack was left out whole as "bad header", and verify sent the user back to repair-index)."""
    return _damage(tmp_path, PW, first=request.param == "first")


def test_repair_index_keeps_every_chunk_outside_the_damaged_segment(damaged: Damaged) -> None:
    d = damaged
    code, out, err = run(d.root, d.data, "repair-index", "--json")
    assert code == 9, err  # the report is printed, and the exit code says blobs are lost
    report = json.loads(out)
    assert report["missing"] > 0
    why = {s["pack"]: s["reason"] for s in report["skipped"]}
    assert "fails authentication" in why[pack_key(d.pack)]
    assert "chunks verified and kept" in why[pack_key(d.pack)]
    assert report["chunks_indexed"] == d.chunks_before - len(d.lost)
    repo = _open(d.root, PW)
    repo.store.load_index()
    assert len(repo.store.index) == d.chunks_before - len(d.lost)
    assert not any(b in repo.store.index for b in d.lost)
    for n, (sid, files) in enumerate(sorted(d.intact.items())):
        if not files:
            continue
        target = d.root.parent / f"out{n}"
        code, _, err = run(
            d.root,
            d.data,
            "checkout",
            sid,
            *files,
            "--to",
            str(target),
            "--no-safety-snapshot",
        )
        assert code == 0, err
        for path, whole in files.items():
            assert hash_bytes((target / path).read_bytes()).hex() == whole, path


def test_verify_read_data_names_the_files_a_damaged_segment_breaks(damaged: Damaged) -> None:
    d = damaged
    code, out, err = run(d.root, d.data, "verify", "--read-data", "--json")
    assert code == EXIT_CODES["check-failed"], err
    report = json.loads(out)
    affected = {(a["snapshot"], a["path"]) for p in report["problems"] for a in p["affected"]}
    assert affected == d.broken
    assert {sid: set(files) for sid, files in report["damaged"].items()} == {
        sid: {p for s, p in d.broken if s == sid} for sid in {s for s, _ in d.broken}
    }
    pack_problems = [p for p in report["problems"] if p["kind"] == "pack"]
    assert [p["pack"] for p in pack_problems] == [d.pack.hex()]
    assert "fails authentication" in pack_problems[0]["message"]
    chunks = {p["blob"] for p in report["problems"] if p["kind"] == "chunk"}
    assert chunks == {b.hex() for b in d.lost}
    code, out, _ = run(d.root, d.data, "verify", "--read-data")
    assert code == EXIT_CODES["check-failed"] and "no snapshot is affected" not in out


def test_a_plain_repository_keeps_its_intact_chunks_as_before(tmp_path: Path) -> None:
    d = _damage(tmp_path, None)
    code, out, _ = run(d.root, d.data, "verify", "--read-data", "--json", password=None)
    assert code == EXIT_CODES["check-failed"]
    report = json.loads(out)
    assert {(a["snapshot"], a["path"]) for p in report["problems"] for a in p["affected"]}
    code, out, _ = run(d.root, d.data, "repair-index", "--json", password=None)
    report = json.loads(out)
    why = {s["pack"]: s["reason"] for s in report["skipped"]}
    assert why[pack_key(d.pack)].startswith("pack does not match its name (damaged); ")
    # one frame holds the flipped byte: every chunk of the pack but its own is kept
    assert d.chunks_before - report["chunks_indexed"] in range(1, len(d.lost) + 1)


@pytest.mark.parametrize("folder", ["packs", "index", "snapshots"])
def test_a_damaged_scheme_byte_is_damage_not_a_newer_format(tmp_path: Path, folder: str) -> None:
    root, data = _history(tmp_path, PW)
    victim = max((root / folder).rglob("*"), key=lambda p: (p.is_file(), p.stat().st_size))
    flip_byte(victim, 7)
    code, _, err = run(root, data, "checkout", "latest", "--to", str(tmp_path / "out"))
    assert code == EXIT_CODES["integrity"], err
    assert "upgrade casnap" not in err and victim.name in err


def test_salvage_zeroes_only_the_segments_that_fail() -> None:
    sealer = Sealer(bytes(range(32)))
    plain = random.Random(5).randbytes(3 * SEGMENT + 123)
    sealed = bytearray(sealer.seal("packs/ab/x", plain))
    sealed[HEADER_SIZE + SEALED_SEGMENT + 9] ^= 1
    with pytest.raises(IntegrityError):
        sealer.open("packs/ab/x", bytes(sealed))
    data, failed = sealer.salvage("packs/ab/x", bytes(sealed))
    assert failed == [(SEGMENT, 2 * SEGMENT)]
    assert data[:SEGMENT] == plain[:SEGMENT] and data[2 * SEGMENT :] == plain[2 * SEGMENT :]
    assert data[SEGMENT : 2 * SEGMENT] == bytes(SEGMENT)
    assert sealer.salvage("packs/ab/x", sealer.seal("packs/ab/x", plain)) == (plain, [])
    sealed[7] ^= 1
    with pytest.raises(IntegrityError):
        sealer.salvage("packs/ab/x", bytes(sealed))


def test_salvage_is_found_through_wrapping_backends(tmp_path: Path) -> None:
    """A damaged object below caching and retrying layers is still salvaged; a plain backend
    has nothing to salvage."""
    memory = MemoryBackend()
    sealer = Sealer(bytes(range(32)))
    plain = random.Random(6).randbytes(2 * SEGMENT)
    sealed = bytearray(sealer.seal("packs/ab/y", plain))
    sealed[-3] ^= 1  # the last segment's tag
    memory.put("packs/ab/y", bytes(sealed))
    stack = RetryingBackend(CachingBackend(EncryptedBackend(memory, sealer), tmp_path / "c"))
    with pytest.raises(IntegrityError):
        stack.get("packs/ab/y")
    left = salvage(stack, "packs/ab/y")
    assert left is not None and left.failed == [(SEGMENT, 2 * SEGMENT)]
    assert left.data[:SEGMENT] == plain[:SEGMENT]
    assert salvage(RetryingBackend(memory), "packs/ab/y") is None


def test_gc_repacks_the_intact_chunks_of_a_damaged_encrypted_pack(tmp_path: Path) -> None:
    """Once the snapshots a damaged segment breaks are forgotten, gc keeps what the others need
    from the damaged pack (salvaged segment by segment) and drops the pack: verify is clean."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.bin").write_bytes(random.Random(1).randbytes(300_000))
    (data / "b.bin").write_bytes(random.Random(2).randbytes(300_000))
    repo = tmp_path / "backups"
    code, first, err = run(repo, data, "commit", "-q")
    assert code == 0, err
    (data / "b.bin").unlink()
    code, second, err = run(repo, data, "commit", "-q", "--allow-empty")
    assert code == 0, err
    (pack,) = [p for p in (repo / "packs").rglob("*") if p.is_file()]
    raw = bytearray(pack.read_bytes())
    raw[len(raw) * 3 // 4] ^= 1  # in b.bin's half of the pack (files are stored in path order)
    pack.write_bytes(bytes(raw))
    code, out, _ = run(repo, data, "verify", "--read-data", "--json")
    assert code == EXIT_CODES["check-failed"]
    report = json.loads(out)
    hit = {(a["snapshot"], a["path"]) for p in report["problems"] for a in p["affected"]}
    assert {snap[:8] for snap, _ in hit} == {first.strip()[:8]} and {p for _, p in hit} == {"b.bin"}
    assert run(repo, data, "forget", first.strip()[:8])[0] == 0
    code, _, err = run(repo, data, "gc", "--max-unused", "0")
    assert code == 0, err
    code, _, err = run(repo, data, "verify", "--read-data")
    assert code == 0, err
    target = tmp_path / "out"
    assert run(repo, data, "checkout", second.strip(), "--to", str(target))[0] == 0
    assert (target / "a.bin").read_bytes() == (data / "a.bin").read_bytes()


def test_a_plain_config_put_over_an_encrypted_repository_is_named(tmp_path: Path) -> None:
    """A downgrade: an encrypted repository's config replaced by a plain one and keys/ removed.
    Its sealed objects then fail to read; the message says they are encrypted under a plain
    config, not that a manifest or index file is merely corrupt."""
    data, repo = _downgraded(tmp_path)
    evolve_app(data, 1)
    for args in (("log",), ("commit", "-q"), ("verify",)):
        code, out, err = run(repo, data, *args, password=None)
        assert code == EXIT_CODES["integrity"] or code == 9, (args, out, err)
        said = out + err  # verify lists its problems on stdout
        assert "encrypted" in said and "config" in said and "plain" in said, (args, said)


def _downgraded(tmp_path: Path) -> tuple[Path, Path]:
    """An encrypted repository of one snapshot, its config replaced by a plain one, keys/ gone."""
    data, repo, plain = tmp_path / "data", tmp_path / "repo", tmp_path / "plain"
    make_app(data, rows=50, vectors=100)
    assert run(repo, data, "init", "--encryption", "repokey")[0] == 0
    assert run(repo, data, "commit", "-q")[0] == 0
    assert run(plain, data, "init", password=None)[0] == 0
    (repo / "config").write_bytes((plain / "config").read_bytes())
    for key in (repo / "keys").iterdir():
        key.unlink()
    (repo / "keys").rmdir()
    return data, repo


def test_repair_index_under_a_plain_config_stops_and_keeps_the_index(tmp_path: Path) -> None:
    """repair-index over a downgraded repository: its packs are encrypted, not damaged. It
    stops as the other commands do (exit 5) and removes no index file; it left every pack out
    as 'not a casnap pack', removed the index and said so with exit 0."""
    data, repo = _downgraded(tmp_path)
    before = sorted(p.name for p in (repo / "index").iterdir())
    code, out, err = run(repo, data, "repair-index", password=None)
    assert code == EXIT_CODES["integrity"], (code, out, err)
    assert "encrypted" in err and "plain" in err, err
    assert sorted(p.name for p in (repo / "index").iterdir()) == before


def test_an_encrypted_manifest_copied_into_a_plain_repository_is_one_damaged_snapshot(
    tmp_path: Path,
) -> None:
    """One manifest of an encrypted repository copied into a plain one beside its own: that
    snapshot is damaged (left out with a warning, forget removes it), not a downgrade of the
    whole repository that stopped every command, forget included."""
    data, enc = tmp_path / "data", tmp_path / "enc"
    make_app(data, rows=50, vectors=100)
    assert run(enc, data, "init", "--encryption", "repokey")[0] == 0
    assert run(enc, data, "commit", "-q")[0] == 0
    repo = tmp_path / "repo"
    assert run(repo, data, "init", password=None)[0] == 0
    assert run(repo, data, "commit", "-q", password=None)[0] == 0
    (stray,) = (enc / "snapshots").iterdir()
    (repo / "snapshots" / stray.name).write_bytes(stray.read_bytes())
    code, out, err = run(repo, data, "log", password=None)
    assert code == 0, err
    assert stray.name[:8] in err and "encrypted" in err and "forget" in err, err
    evolve_app(data, 1)
    assert run(repo, data, "commit", "-q", password=None)[0] == 0
    code, out, err = run(repo, data, "forget", stray.name[:8], password=None)
    assert code == 0, err
    assert not (repo / "snapshots" / stray.name).exists()
    assert run(repo, data, "gc", password=None)[0] == 0
