"""Chunk lists kept in the local cache (casnap/listcache.py): a checkout of snapshots committed
(or read) on this host plans without reading a chunk list from the storage; a damaged or missing
copy is only a fetch, and an encrypted repository's copies are sealed."""

from __future__ import annotations

from pathlib import Path

import pytest

from casnap import Repository, checkout, commit
from casnap.backends.cached import CachingBackend, cache_dir_for
from casnap.backends.local import LocalBackend
from casnap.chunkindex import TREE
from casnap.crypto import is_sealed
from casnap.packs import pack_key
from tests.conftest import evolve_app, make_app
from tests.test_cache import PW, Counting, open_counted, two_snapshots
from tests.util import snapshot_tree

HEADER = 50  # a cache file's header (docs/FORMAT.md, "Local cache")


def tree_frames(repo: Repository) -> set[tuple[str, int, int]]:
    """(pack key, offset, length) of every chunk-list frame the index names."""
    repo.ensure_index()
    index = repo.store.index
    out = set()
    for row in range(len(index)):
        e = index.entry_at(row)
        if e.type == TREE:
            out.add((pack_key(e.pack), e.offset, e.length))
    return out


def list_reads(counting: Counting, frames: set[tuple[str, int, int]]) -> list[tuple]:
    """The reads recorded that cover a chunk-list frame (and forget every call recorded)."""
    found = []
    for _verb, key, offset, length in counting.gets("packs/"):
        stop = None if length is None else offset + length
        for k, o, n in frames:
            if k == key and offset <= o and (stop is None or o + n <= stop):
                found.append((key, offset, length))
    return found


def open_top(root: Path, password: str | None) -> tuple[Repository, Counting]:
    """The repository at root with the cache, its reads counted above the encryption (plain
    offsets in packs, as the index gives them)."""
    repo, _below = open_counted(root, password)
    counting = Counting(repo.backend)
    repo.backend = counting
    return repo, counting


def commit_counted(tmp_path: Path, password: str | None) -> tuple[Path, Path, list[str]]:
    """Two snapshots committed through the cache (this host's commits)."""
    data, root = tmp_path / "data", tmp_path / "repo"
    make_app(data)
    pw = None if password is None else (lambda: password)
    Repository.open_or_init(
        root, password=pw, encryption="none" if pw is None else "repokey"
    ).close()
    ids = []
    for step in range(2):
        if step:
            evolve_app(data, step)
        repo, _ = open_counted(root, password)
        ids.append(commit(repo, data, message=f"c{step}").id)
        repo.close()
    return data, root, ids


@pytest.mark.parametrize("password", [None, PW], ids=["plain", "encrypted"])
def test_a_checkout_of_snapshots_committed_here_reads_no_chunk_list(
    tmp_path: Path, password: str | None
) -> None:
    data, root, ids = commit_counted(tmp_path, password)
    repo, counting = open_top(root, password)
    frames = tree_frames(repo)
    assert frames
    counting.calls.clear()
    target = tmp_path / "out"
    checkout(repo, ids[-1], target, safety_snapshot=False)
    assert snapshot_tree(target) == snapshot_tree(data)
    assert list_reads(counting, frames) == []
    repo.close()


def test_chunk_lists_read_once_are_kept(tmp_path: Path) -> None:
    """Snapshots committed elsewhere (no cache): the first checkout reads their lists, the
    next none."""
    data, root, ids = two_snapshots(tmp_path)
    for n in range(2):
        repo, counting = open_top(root, None)
        frames = tree_frames(repo)
        counting.calls.clear()
        target = tmp_path / f"out{n}"
        checkout(repo, ids[-1], target, safety_snapshot=False)
        assert snapshot_tree(target) == snapshot_tree(data)
        assert bool(list_reads(counting, frames)) == (n == 0)
        repo.close()


@pytest.mark.parametrize("password", [None, PW], ids=["plain", "encrypted"])
def test_a_damaged_kept_chunk_list_is_fetched_again(tmp_path: Path, password: str | None) -> None:
    data, root, ids = commit_counted(tmp_path, password)
    repo, _ = open_counted(root, password)
    folder = cache_dir_for(repo.id) / "lists"
    # the lists the checkout below reads (an encrypted repository's list ids are keyed, so
    # which cache files belong to the last snapshot differs from run to run)
    needed = {lid for f in repo.load_snapshot(repo.resolve(ids[-1])).files for lid in f.lists}
    repo.close()
    every = sorted(p for p in folder.rglob("*") if p.is_file())
    assert every
    for p in every:
        body = p.read_bytes()
        if password is not None:
            assert is_sealed(body[HEADER:])  # sealed, as every byte the cache holds
    kept = [p for p in every if p.name in needed]
    assert len(kept) >= 2
    flipped = bytearray(kept[0].read_bytes())  # fails the cache file's checksum
    flipped[-1] ^= 1
    kept[0].write_bytes(bytes(flipped))
    # a cache file that is whole but holds another list's bytes: fails the blob's id
    cache = CachingBackend(LocalBackend(root), cache_dir_for(repo.id))
    first, second = (p.relative_to(cache.cache_dir).as_posix() for p in kept[-2:])
    other = cache.kept(second)
    assert other is not None
    cache.keep(first, other)
    repo, counting = open_top(root, password)
    frames = tree_frames(repo)
    counting.calls.clear()
    target = tmp_path / "out"
    checkout(repo, ids[-1], target, safety_snapshot=False)
    assert snapshot_tree(target) == snapshot_tree(data)
    assert list_reads(counting, frames)  # the damaged copies were fetched again
    repo.close()
    repo, counting = open_top(root, password)
    counting.calls.clear()
    checkout(repo, ids[-1], tmp_path / "again", safety_snapshot=False)
    assert list_reads(counting, frames) == []  # and kept again
    repo.close()
