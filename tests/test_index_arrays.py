"""gc, verify and repair-index on arrays: every entry of every index file without an object per
entry, an index gc writes in pack order, and a dry run that predicts what gc frees."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from casnap import collector, repair, retention
from casnap.checker import verify
from casnap.chunkindex import FIELD_DTYPE, decode_index, encode_index, unique_ids
from casnap.entrytable import EntryTable, merge_parts
from casnap.ids import ObjectId, hash_bytes
from casnap.reachability import walk
from casnap.repository import Repository
from tests.helpers_gc import build_history, repo_bytes


def fields_of(rows: list[tuple[int, int, int, int, int, int, int]]) -> np.ndarray:
    return np.array(rows, dtype=FIELD_DTYPE)


def some_ids(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32), dtype=np.uint8)


def test_entry_table_keeps_each_distinct_entry_once_in_the_order_first_seen() -> None:
    p1, p2 = ObjectId(hash_bytes(b"p1")), ObjectId(hash_bytes(b"p2"))
    ids = some_ids(4, 1)
    twin = ids[0].copy()
    twin[8:] ^= 0xFF  # the same first 8 bytes (the sort key) as ids[0], another id
    a = ([p1], ids[:3], fields_of([(0, 0, 16, 10, 40, 0, 0)] * 3))
    # the second file names ids[1] again identically, ids[2] in another pack, plus the twin
    b = (
        [p2, p1],
        np.stack([ids[1], ids[2], twin, ids[3]]),
        fields_of(
            [(1, 0, 16, 10, 40, 0, 0), (0, 0, 99, 10, 40, 0, 0), (0, 0, 5, 5, 5, 0, 0)]
            + [(1, 1, 7, 7, 7, 0, 0)]
        ),
    )
    table = EntryTable([a, b])
    assert len(table) == 6  # ids[1]'s repeat dropped
    assert table.packs == [p1, p2]
    assert [table.id_at(r) for r in range(len(table))] == [
        ObjectId(bytes(x)) for x in (ids[0], ids[1], ids[2], ids[2], twin, ids[3])
    ]
    assert table.rows_of(bytes(ids[2])).tolist() == [2, 3]
    assert table.entry(3).pack == p2 and table.entry(3).offset == 99
    assert table.rows_of(bytes(twin)).tolist() == [4]
    assert table.rows_of(hash_bytes(b"absent")).tolist() == []
    query = np.stack([ids[2], twin, some_ids(1, 9)[0]])
    assert table.first_rows(query).tolist() == [2, 4, -1]
    group, distinct = table.id_groups()
    assert distinct == 5 and group[2] == group[3] and len(set(group.tolist())) == 5
    assert sorted(table.by_pack()) == [0, 1] and table.by_pack()[1].tolist() == [3, 4]


def test_merge_parts_writes_pack_then_frame_order_and_only_packs_in_use() -> None:
    packs = [ObjectId(hash_bytes(b"%d" % i)) for i in range(3)]
    ids = some_ids(5, 2)
    fields = fields_of(
        [
            (2, 0, 900, 9, 9, 0, 0),
            (0, 0, 500, 9, 9, 4, 20),
            (0, 0, 500, 9, 9, 0, 20),
            (2, 0, 16, 9, 9, 0, 0),
            (0, 0, 16, 9, 9, 0, 0),
        ]
    )
    table, out_ids, out_fields = merge_parts([(packs, ids, fields)])
    assert table == sorted([packs[0], packs[2]])  # packs[1] holds nothing: left out
    order = [(table[int(f["pack"])], int(f["offset"]), int(f["inner"])) for f in out_fields]
    assert order == sorted(order)
    back = decode_index("index/x", encode_index(table, out_ids, out_fields))
    got = {
        (bytes(i), back[0][int(f["pack"])], int(f["offset"]))
        for i, f in zip(*back[1:], strict=True)
    }
    want = {
        (bytes(i), packs[int(f["pack"])], int(f["offset"]))
        for i, f in zip(ids, fields, strict=True)
    }
    assert got == want


def test_referenced_ids_without_kept_lists_match_the_referenced_set(tmp_path: Path) -> None:
    repo, _, _ = build_history(tmp_path, 4)
    repo.store.load_index()
    snaps = repo.snapshots()
    full = walk(snaps, repo.store.get)
    lean = walk(snaps, repo.store.get, keep_lists=False)
    ids = lean.referenced_ids()
    assert {ObjectId(bytes(i)) for i in ids} == full.referenced()
    assert np.array_equal(ids, unique_ids(ids)) and np.array_equal(ids, full.referenced_ids())
    assert set(lean.trees) == set(full.trees) and not lean.resolved
    with pytest.raises(ValueError):
        lean.chunks_of(lean.files[0])


@pytest.mark.parametrize(("states", "forget"), [(4, (0, 1)), (6, (0, 2, 3)), (5, (1,))])
def test_dry_run_predicts_what_gc_frees(
    tmp_path: Path, states: int, forget: tuple[int, ...]
) -> None:
    repo, _, _ = build_history(tmp_path, states)
    snaps = repo.snapshots()
    retention.forget(repo, [snaps[i][0].hex() for i in forget])
    dry = collector.collect(repo, dry_run=True)
    before = repo_bytes(tmp_path / "repo")
    real = collector.collect(repo)
    assert real.packs_repacked > 0 and real.bytes_freed > 0
    assert real.bytes_freed == before - repo_bytes(tmp_path / "repo")
    assert dry.bytes_freed == real.bytes_freed
    assert dry.index_bytes_written == real.index_bytes_written
    assert dry.pack_bytes_written == real.pack_bytes_written
    assert dry.packs_written == real.packs_written
    assert verify(repo, read_data=True).ok


def test_merging_index_files_alone_is_predicted_exactly_and_frees_bytes(tmp_path: Path) -> None:
    """Nothing to delete, one index file per commit: gc only merges them. The merged file holds
    the same entries in the same pack and frame order, so it is no larger (written in id order,
    it grew by a quarter on the 350 MB sample), and the dry run computes it exactly."""
    repo, _, _ = build_history(tmp_path, 5)
    root = tmp_path / "repo"
    assert len(list((root / "index").iterdir())) == 5
    dry = collector.collect(repo, dry_run=True)
    before = repo_bytes(root)
    real = collector.collect(repo)
    assert real.packs_repacked == real.packs_deleted == 0
    assert real.index_files_removed == 5 and real.index_files_written == 1
    assert dry.index_bytes_written == real.index_bytes_written
    assert dry.bytes_freed == real.bytes_freed == before - repo_bytes(root)
    assert real.bytes_freed >= 0
    assert collector.collect(repo, dry_run=True).bytes_freed == 0


def test_repair_index_writes_what_gc_writes(tmp_path: Path) -> None:
    """Both rebuild one index in pack order: from the same packs, the same file."""
    repo, _, _ = build_history(tmp_path, 3)
    collector.collect(repo)
    root = tmp_path / "repo"
    (written,) = (root / "index").iterdir()
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    report = repair.repair_index(Repository.open(copy))
    assert report.missing == 0 and report.index_files_removed == 0
    assert report.index_written == f"index/{written.name}"
    assert verify(Repository.open(copy), read_data=True).ok
