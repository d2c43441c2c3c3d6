"""Loading the index from many small index files (a commit adds one each, gc merges them): the
index holds every entry of every file as it would loading each file alone, and a file that does
not read is named, and left out with skip_damaged, exactly as when it was found alone: the first
bad file in listing order decides the error, whatever made it bad."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from casnap.chunkindex import FIELD_DTYPE, decode_index, encode_index
from casnap.constants import MAX_CHUNK_SIZE
from casnap.errors import IntegrityError
from casnap.ids import ID_SIZE, ObjectId
from casnap.repository import Repository
from casnap.store import Store


def random_file(rng: np.random.Generator, n: int, npacks: int) -> bytes:
    """An index file of n entries over npacks random packs."""
    packs = [ObjectId(rng.bytes(ID_SIZE)) for _ in range(npacks)]
    ids = np.frombuffer(rng.bytes(n * ID_SIZE), dtype=np.uint8).reshape(-1, ID_SIZE).copy()
    fields = np.zeros(n, dtype=FIELD_DTYPE)
    fields["pack"] = rng.integers(0, npacks, n)
    fields["type"] = rng.integers(0, 2, n)
    fields["offset"] = rng.integers(0, 1 << 20, n)
    fields["length"] = rng.integers(1, 1 << 12, n)
    fields["plain"] = rng.integers(1, 1 << 14, n)
    return encode_index(packs, ids, fields)


def put(store: Store, blob: bytes, name: str | None = None) -> str:
    """Store an index file under its id (or name, a wrong one), returning its key."""
    key = f"index/{name or store.ids(blob).hex()}"
    store.backend.put(key, blob)
    return key


@pytest.fixture
def store(tmp_path: object) -> Store:
    return Repository.init(tmp_path / "repo").store  # type: ignore[operator]


def test_many_files_give_every_entry_of_each(store: Store) -> None:
    rng = np.random.default_rng(7)
    sizes = [1, 3, 0, 40, 2, 700, 5, 1, 64, 9] * 12  # one empty, a few larger
    blobs = {put(store, b): b for b in (random_file(rng, n, 1 + n % 4) for n in sizes)}
    store.load_index()
    assert sorted(store.index_files) == sorted(blobs)
    assert store.index_damaged == {}
    total = 0
    for key, blob in blobs.items():
        packs, ids, fields = decode_index(key, blob)
        total += len(ids)
        for row in range(len(ids)):
            e = store.index.get(ObjectId(ids[row].tobytes()))
            assert e is not None
            assert bytes(e.pack) == bytes(packs[fields["pack"][row]])
            assert (e.offset, e.length, e.plain) == tuple(
                int(fields[f][row]) for f in ("offset", "length", "plain")
            )
    assert len(store.index) == total


def bad_entry_file(rng: np.random.Generator) -> bytes:
    """An index file whose last entry names a chunk past the size limit."""
    blob = random_file(rng, 6, 2)
    packs, ids, fields = decode_index("x", blob)
    fields["plain"][-1] = MAX_CHUNK_SIZE + 1
    return encode_index(packs, ids, fields)


def bad_pack_file(rng: np.random.Generator) -> bytes:
    """An index file whose first entry names a pack outside its pack table."""
    packs, ids, fields = decode_index("x", random_file(rng, 4, 2))
    fields["pack"][0] = 2
    return encode_index(packs, ids, fields)


@pytest.mark.parametrize("make", [bad_entry_file, bad_pack_file])
def test_a_bad_file_among_many_is_named_or_left_out(store: Store, make: object) -> None:
    rng = np.random.default_rng(8)
    good = [put(store, random_file(rng, 1 + i % 5, 1)) for i in range(60)]
    bad = put(store, make(rng))  # type: ignore[operator]
    with pytest.raises(IntegrityError) as caught:
        store.load_index()
    assert bad in str(caught.value)
    alone = Store(store.backend, store.pack_target, store.ids)
    with pytest.raises(IntegrityError) as one:
        alone.load_index_file(bad)
    assert str(caught.value) == str(one.value)
    store.load_index(skip_damaged=True)
    assert store.index_damaged == {bad: str(one.value)}
    assert sorted(store.index_files) == sorted([*good, bad])
    assert len(store.index) == sum(1 + i % 5 for i in range(60))


@pytest.mark.parametrize("mismatch_first", [True, False])
def test_the_first_bad_file_listed_decides(store: Store, mismatch_first: bool) -> None:
    """A file that does not match its name and one with a bad entry: the error is that of the
    one listed first, as when each file was checked before the next was read."""
    rng = np.random.default_rng(9)
    for i in range(30):
        put(store, random_file(rng, 1 + i % 3, 1))
    entry_bad = put(store, bad_entry_file(rng))
    name = ("0" if mismatch_first else "f") * 64
    mismatch = put(store, random_file(rng, 3, 1), name)
    assert sorted([entry_bad, mismatch])[0] == (mismatch if mismatch_first else entry_bad)
    with pytest.raises(IntegrityError) as caught:
        store.load_index()
    first = mismatch if mismatch_first else entry_bad
    assert first in str(caught.value)
    store.load_index(skip_damaged=True)
    assert set(store.index_damaged) == {entry_bad, mismatch}


def test_deletes_in_a_row_sync_each_folder_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local repository's deletes inside deleting() are made durable when the block ends, one
    sync of each folder they emptied (gc deleting thousands of index files and packs), not one
    per delete; a delete outside it is durable when it returns."""
    from casnap.backends import local

    synced: list[Path] = []
    real = local.fsync_dir

    def spy(path: Path) -> None:
        synced.append(Path(path))
        real(path)

    monkeypatch.setattr(local, "fsync_dir", spy)
    backend = local.LocalBackend(tmp_path)
    keys = [f"index/{i:064x}" for i in range(5)] + [f"packs/ab/ab{i:062x}" for i in range(5)]
    for key in keys:
        backend.put(key, b"x")
    synced.clear()
    backend.delete(keys[0])
    assert synced == [tmp_path / "index"]
    synced.clear()
    with backend.deleting():
        for key in keys[1:]:
            backend.delete(key)
        assert synced == []
    assert sorted(synced) == [tmp_path / "index", tmp_path / "packs" / "ab"]
    assert list(backend.list("")) == []
