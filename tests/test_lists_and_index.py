"""Chunk-list deltas, the array index and its files, pack directories and index entries checked
against them, damaged chunks."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casnap import chunklist, compression
from casnap.backends.memory import MemoryBackend
from casnap.chunkindex import (
    DATA,
    TREE,
    ChunkIndex,
    IdSet,
    IndexEntry,
    decode_index,
    encode_index,
    entry_of,
    id_matrix,
)
from casnap.constants import MAX_PACK_SIZE
from casnap.errors import IntegrityError
from casnap.ids import ObjectId, hash_bytes
from casnap.packs import check_pack_entries, pack_key, parse_pack_directory
from casnap.packwriter import PackWriter
from casnap.store import HASH_MISMATCH, ChunkDamaged, Store
from tests.util import as_arrays

# -- chunk lists -------------------------------------------------------------------------------

ALPHABET = [hash_bytes(bytes([i])) for i in range(12)]
refs_strategy = st.lists(
    st.tuples(st.sampled_from(ALPHABET), st.sampled_from([4096, 1, 70000])), max_size=60
)


@settings(max_examples=200, deadline=None)
@given(base=refs_strategy, new=refs_strategy)
def test_delta_round_trips(base, new) -> None:
    b, n = chunklist.pack_refs(base), chunklist.pack_refs(new)
    body = chunklist.encode_delta(b, n)
    assert chunklist.apply_delta(b, body) == n


def test_delta_of_moved_and_changed_refs_is_small() -> None:
    refs = [(hash_bytes(i.to_bytes(4, "little")), 4096) for i in range(5000)]
    moved = refs[2500:] + refs[:2500]  # VACUUM-like: two long runs swap places
    moved[100] = (hash_bytes(b"changed"), 4096)
    base, new = chunklist.pack_refs(refs), chunklist.pack_refs(moved)
    body = chunklist.encode_delta(base, new)
    assert len(body) < 100
    assert chunklist.apply_delta(base, body) == new


def test_resolve_applies_pieces_then_deltas(monkeypatch) -> None:
    monkeypatch.setattr(chunklist, "LIST_PIECE_REFS", 3)
    v1 = chunklist.pack_refs([(ALPHABET[i], i + 1) for i in range(8)])
    v2 = chunklist.pack_refs([(ALPHABET[i], i + 1) for i in (0, 1, 9, 3, 4, 5, 6, 7, 7)])
    v3 = chunklist.pack_refs([(ALPHABET[i], i + 1) for i in (7, 0, 1)])
    pieces = list(chunklist.pieces(v1))
    assert len(pieces) == 3
    d2 = chunklist.encode_delta(v1, v2)
    d3 = chunklist.encode_delta(v2, v3)
    assert chunklist.resolve(pieces) == (v1, 0)
    assert chunklist.resolve([*pieces, d2, d3]) == (v3, 2)
    with pytest.raises(IntegrityError):
        chunklist.resolve([*pieces, d3])  # a delta on the wrong base
    with pytest.raises(IntegrityError):
        chunklist.resolve([d2, *pieces])


@pytest.mark.parametrize(
    "body",
    [
        b"\x01",  # truncated header
        b"\x01\x02\x01\x02\x00",  # copy of one ref, then nothing: too short
        b"\x01\x01\x05\x7f",  # copy count beyond the result
        b"\x01\x01\x01\x02\x10",  # copy outside its base
        b"\x01\x00\x01\x03" + bytes(10),  # truncated literal
        b"\x07abc",  # unknown tag
    ],
)
def test_malformed_deltas_are_integrity_errors(body: bytes) -> None:
    base = chunklist.pack_refs([(ALPHABET[0], 5)])
    with pytest.raises(IntegrityError):
        chunklist.resolve([next(chunklist.pieces(base)), body])


# -- the index ---------------------------------------------------------------------------------


def entry(pack: int, i: int) -> IndexEntry:
    return IndexEntry(ObjectId(bytes([pack]) * 32), DATA, 16 + i, 10 + i, 100 + i, i, 0)


def test_lookup_handles_prefix_collisions_and_duplicates() -> None:
    a = ObjectId(b"\x01" * 8 + b"a" * 24)
    b = ObjectId(b"\x01" * 8 + b"b" * 24)  # same first 8 bytes
    c = ObjectId(os.urandom(32))
    idx = ChunkIndex()
    idx.add([as_arrays([(b, entry(1, 2)), (a, entry(1, 1))])])
    idx.add([as_arrays([(a, entry(2, 1)), (c, entry(2, 3))])])  # a again, from another file
    missing = ObjectId(b"\x01" * 8 + b"z" * 24)
    rows = idx.lookup(id_matrix([a, b, c, missing]))
    assert (rows[:3] >= 0).all() and rows[3] == -1
    assert idx[b] == entry(1, 2)
    assert idx[c] == entry(2, 3)
    assert idx[a] in (entry(1, 1), entry(2, 1))
    assert missing not in idx and a in idx
    assert set(idx) == {a, b, c}
    assert len(idx.packs) == 2


def test_index_files_round_trip_and_reject_damage() -> None:
    entries = [(hash_bytes(os.urandom(8)), entry(i % 3, i)) for i in range(50)]
    blob = encode_index(*as_arrays(entries))
    packs, ids, fields = decode_index("index/x", blob)
    decoded = [(ObjectId(ids[i].tobytes()), entry_of(packs, fields[i])) for i in range(len(ids))]
    assert decoded == entries
    assert len(packs) == 3 and len(ids) == 50
    with pytest.raises(IntegrityError):
        decode_index("index/x", blob[:-5])
    with pytest.raises(IntegrityError):
        decode_index("index/x", compression.encode(b"CASNIDX1" + bytes(40))[1:])


def test_store_index_equals_rebuild_from_packs(tmp_path) -> None:
    backend = MemoryBackend()
    store = Store(backend, pack_target=4000)  # several packs
    writer = PackWriter(store)
    rng = np.random.default_rng(0)
    chunks = [rng.bytes(int(n)) for n in rng.integers(100, 2000, 40)]
    ids = [hash_bytes(c) for c in chunks]
    for k in range(0, 40, 4):  # frames of four chunks
        group = chunks[k : k + 4]
        members, inner = [], 0
        for cid, c in zip(ids[k : k + 4], group, strict=True):
            members.append((bytes(cid), inner, len(c)))
            inner += len(c)
        writer.add_frame(DATA, compression.encode(b"".join(group)), inner, members)
    tree = b"\x00" + b"".join(bytes(i) + b"\x00\x00\x00\x00" for i in ids)
    writer.add(hash_bytes(tree), TREE, compression.encode(tree), len(tree))
    writer.finish()
    assert writer.packs_written > 1
    fresh = Store(backend, pack_target=4000)
    fresh.load_index()
    rebuilt = ChunkIndex()
    rebuilt.add([fresh.rebuild_index()])
    assert dict(rebuilt.items()) == dict(fresh.index.items())
    for cid, c in zip(ids, chunks, strict=True):
        assert fresh.get(cid) == c
        assert fresh.entry(cid).frame_plain > 0
    assert fresh.get(hash_bytes(tree)) == tree
    key = next(k for k in backend.objects if k.startswith("packs/"))
    records = parse_pack_directory(key, backend.objects[key])
    assert all(t in (DATA, TREE) for t in records["type"].tolist())
    damaged = bytearray(backend.objects[key])
    damaged[-30] ^= 1  # inside the directory checksum
    with pytest.raises(IntegrityError):
        parse_pack_directory(key, bytes(damaged))


def _one_pack(chunks: list[bytes]) -> tuple[MemoryBackend, Store]:
    """A store holding chunks in one pack, each its own frame, its index file written."""
    backend = MemoryBackend()
    store = Store(backend, pack_target=1 << 20)
    writer = PackWriter(store)
    for c in chunks:
        writer.add(hash_bytes(c), DATA, compression.encode(c), len(c))
    writer.finish()
    return backend, store


def test_index_entries_are_checked_against_their_pack() -> None:
    """The one check gc and verify share: an entry is trusted inside an existing pack whose own
    directory holds the same record; a damaged directory confirms and denies nothing."""
    chunks = [bytes([i]) * 3000 for i in range(4)]
    backend, store = _one_pack(chunks)
    (key,) = store.index_files
    (pack,), ids, fields = store.load_index_file(key)
    size = len(backend.objects[pack_key(pack)])

    whole = check_pack_entries(backend, pack, size, ids, fields)
    assert whole.trusted.all() and whole.agrees.all() and whole.described == 4
    assert whole.unreadable is None and whole.too_large is None

    wrong = fields.copy()
    wrong["offset"][1] += 1  # disagrees with the directory, still inside the pack
    wrong["length"][2] = size  # ends past the pack's end
    check = check_pack_entries(backend, pack, size, ids, wrong)
    assert check.beyond.tolist() == [False, False, True, False]
    assert check.agrees.tolist() == [True, False, False, True]
    assert check.trusted.tolist() == [True, False, False, True]

    missing = check_pack_entries(backend, pack, None, ids, fields)
    assert missing.size is None and not missing.trusted.any()

    large = check_pack_entries(backend, pack, MAX_PACK_SIZE + 1, ids, fields)
    assert "past the limit" in str(large.too_large) and large.agrees is None
    assert large.trusted.all()  # not read: the size alone denies nothing

    damaged = bytearray(backend.objects[pack_key(pack)])
    damaged[-30] ^= 1  # inside the directory checksum
    backend.objects[pack_key(pack)] = bytes(damaged)
    unread = check_pack_entries(backend, pack, size, ids, wrong)
    assert isinstance(unread.unreadable, IntegrityError) and unread.agrees is None
    assert unread.described is None
    assert unread.trusted.tolist() == [True, True, False, True]


def test_damaged_chunks_name_chunk_pack_and_reason_apart() -> None:
    plain = np.random.default_rng(3).bytes(3000)
    backend, store = _one_pack([plain])
    cid = hash_bytes(plain)
    e = store.entry(cid)
    encoded = bytearray(backend.get(pack_key(e.pack), e.offset, e.length))
    assert encoded[0] == compression.RAW  # random bytes: stored raw, a flip decodes
    encoded[100] ^= 1
    (damage,) = Store(MemoryBackend(), 1 << 20).frame_damage(bytes(encoded), [(cid, e)])
    assert isinstance(damage, ChunkDamaged) and isinstance(damage, IntegrityError)
    assert (damage.chunk, damage.pack, damage.reason) == (cid, e.pack, HASH_MISMATCH)
    assert str(damage) == f"chunk {cid.hex()} in pack {e.pack.hex()} does not match its hash " + (
        "(damaged)"
    )
    with pytest.raises(ChunkDamaged) as caught:
        Store(MemoryBackend(), 1 << 20).decode_verified(cid, e, b"\x01garbage")
    assert caught.value.reason.startswith("corrupt compressed chunk")
    assert str(caught.value) == f"chunk {cid.hex()} in pack {e.pack.hex()}: {caught.value.reason}"


def test_id_set_grows_in_runs_and_answers_in_batches() -> None:
    rng = np.random.default_rng(5)
    added = [rng.integers(0, 256, (n, 32), dtype=np.uint8) for n in (500, 7, 300, 1, 2000, 40)]
    twin = added[0][:1].copy()
    twin[0, 8:] ^= 0xFF  # same 8-byte key as an added id, another id
    s = IdSet()
    for batch in added:
        s.add(batch)
    everything = np.concatenate(added)
    assert len(s) == len(everything)
    assert s.contains_many(everything).all()
    assert not s.contains_many(rng.integers(0, 256, (100, 32), dtype=np.uint8)).any()
    assert not s.contains_many(twin)[0]
    assert bytes(everything[42]) in s and bytes(twin[0]) not in s
    assert len(s._runs) <= 4  # runs are merged, not piled up


def _positions_spec(base: bytes, new: bytes) -> list[int]:
    """chunklist._positions as its docstring defines it, one ref at a time."""
    size = chunklist.REF_SIZE
    b = [base[i : i + size] for i in range(0, len(base), size)]
    n = [new[i : i + size] for i in range(0, len(new), size)]
    first: dict[bytes, int] = {}
    for j, ref in enumerate(b):
        first.setdefault(ref, j)
    m0 = [first.get(ref, -1) for ref in n]
    m = list(m0)
    for i in range(1, len(n)):
        p = m0[i - 1]
        if p >= 0 and p + 1 < len(b) and m0[i] != p + 1 and b[p + 1] == n[i]:
            j = m[i - 1] + 1
            if j < len(b) and b[j] == n[i]:
                m[i] = j
    return m


@settings(max_examples=300, deadline=None)
@given(base=refs_strategy, new=refs_strategy, edits=st.integers(0, 3))
def test_delta_positions_follow_their_definition(base, new, edits) -> None:
    """The matching behind a delta (first occurrence, runs continued through repeated refs),
    also where most refs stay in place, as a database's pages do."""
    if edits:  # mostly in place: new is base with a few refs replaced
        new = list(base)
        for k in range(min(edits, len(new))):
            new[(k * 7) % len(new)] = (ALPHABET[k], 1)
    b, n = chunklist.pack_refs(base), chunklist.pack_refs(new)
    assert chunklist._positions(b, n).tolist() == _positions_spec(b, n)


def test_delta_positions_of_a_large_list_mostly_in_place() -> None:
    rng = np.random.default_rng(3)
    zero = (hash_bytes(bytes(4096)), 4096)
    refs = [(hash_bytes(int(i).to_bytes(4, "little")), 4096) for i in range(6000)]
    for i in rng.choice(6000, 400, replace=False):  # repeated pages (zeroed, freed)
        refs[int(i)] = zero
    new = list(refs)
    for i in rng.choice(6000, 60, replace=False):  # rewritten in place, moved, zeroed
        new[int(i)] = [zero, refs[int(rng.integers(6000))], (ALPHABET[0], 9)][int(i) % 3]
    new = new[:3000] + refs[10:40] + new[3000:]
    b, n = chunklist.pack_refs(refs), chunklist.pack_refs(new)
    assert chunklist._positions(b, n).tolist() == _positions_spec(b, n)
