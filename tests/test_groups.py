"""Group digests kept on this host: a later commit of a database hashes page by page only the
groups of pages that changed, and stores exactly what a commit hashing every page stores."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from casnap import groups
from casnap.committer import commit
from casnap.fsutil import cache_dir
from casnap.ids import IdHasher
from casnap.repository import Repository
from casnap.restorer import checkout
from tests import helpers_chunking as h


@pytest.fixture
def hashed(monkeypatch) -> list[int]:
    """Counts the pieces hashed one by one (IdHasher.digests)."""
    counts: list[int] = []
    digests = IdHasher.digests

    def counting(self: IdHasher, data: memoryview, lengths: list[int]) -> list[bytes]:
        counts.append(len(lengths))
        return digests(self, data, lengths)

    monkeypatch.setattr(IdHasher, "digests", counting)
    return counts


def _two_versions(tmp_path: Path, change) -> tuple[Path, Path]:
    """A data dir with a database of several read blocks, committed; then changed by change."""
    data = tmp_path / "data"
    data.mkdir()
    h.make_db(data / "app.db", rows=9000)
    assert (data / "app.db").stat().st_size > 6 * 1024 * 1024  # more than one 4 MiB block
    repo_dir = tmp_path / "repo"
    commit(Repository.init(repo_dir), data)
    change(data / "app.db")
    return data, repo_dir


def _entry(repo: Repository, path: str = "app.db"):
    snap = repo.snapshot(repo.resolve("latest"))
    return next(e for e in snap.files if e.path == path)


def _same_as_hashing_every_page(
    tmp_path: Path, data: Path, repo_dir: Path, path: str = "app.db"
) -> None:
    """The latest commit's entry for app.db is the one a commit without kept digests makes."""
    twin = tmp_path / "twin"
    shutil.copytree(repo_dir, twin)
    repo = Repository.open(repo_dir)
    other = Repository.open(twin)
    other.refresh()
    shutil.rmtree(cache_dir() / other.id / "groups", ignore_errors=True)
    forget_latest = other.snapshots()[-1][0]
    (twin / "snapshots" / forget_latest.hex()).unlink()
    commit(Repository.open(twin), data)
    mine, theirs = _entry(repo, path), _entry(Repository.open(twin), path)
    assert (mine.hash, mine.lists, mine.chunks) == (theirs.hash, theirs.lists, theirs.chunks)


def test_unchanged_page_groups_are_not_hashed_page_by_page(tmp_path: Path, hashed) -> None:
    data, repo_dir = _two_versions(tmp_path, lambda p: h.update_rows(p, 5))
    pages = (data / "app.db").stat().st_size // 4096
    hashed.clear()
    result = commit(Repository.open(repo_dir), data)
    assert result.files_changed == 1
    assert 0 < sum(hashed) < pages // 4, (sum(hashed), pages)
    _same_as_hashing_every_page(tmp_path, data, repo_dir)


def test_a_vacuumed_database_is_stored_as_when_every_page_is_hashed(tmp_path: Path) -> None:
    def vacuum(p: Path) -> None:
        h.update_rows(p, 40)
        import contextlib
        import sqlite3

        with contextlib.closing(sqlite3.connect(p)) as db:
            db.execute("DELETE FROM docs WHERE id % 7 = 0")
            db.commit()
            db.execute("VACUUM")

    data, repo_dir = _two_versions(tmp_path, vacuum)
    commit(Repository.open(repo_dir), data)
    _same_as_hashing_every_page(tmp_path, data, repo_dir)


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign"])
def test_damaged_kept_digests_are_not_used(tmp_path: Path, hashed, damage: str) -> None:
    data, repo_dir = _two_versions(tmp_path, lambda p: h.update_rows(p, 5))
    repo = Repository.open(repo_dir)
    kept = next((cache_dir() / repo.id / "groups").rglob("*"))
    while kept.is_dir():
        kept = next(kept.iterdir())
    body = bytearray(kept.read_bytes())
    if damage == "flip":
        body[len(body) // 2] ^= 1
    elif damage == "truncate":
        del body[len(body) // 2 :]
    else:  # a valid file of other digests: every group differs, so every page is hashed
        count = (len(body) - 20 - 32) // groups.RECORD.size
        records = b"".join(groups.RECORD.pack(bytes(32), 16 * i, 16) for i in range(count))
        groups.keep(repo.id, kept.name, 4096, records, None, repo.store.ids.digest)
        body = bytearray(kept.read_bytes())
    kept.write_bytes(bytes(body))
    pages = (data / "app.db").stat().st_size // 4096
    hashed.clear()
    commit(Repository.open(repo_dir), data)
    assert sum(hashed) >= pages - 1
    _same_as_hashing_every_page(tmp_path, data, repo_dir)


def test_only_the_latest_version_keeps_its_digests(tmp_path: Path) -> None:
    data, repo_dir = _two_versions(tmp_path, lambda p: h.update_rows(p, 5))
    repo = Repository.open(repo_dir)
    first = _entry(repo).hash
    commit(repo, data)
    second = _entry(Repository.open(repo_dir)).hash
    folder = cache_dir() / repo.id / "groups"
    kept = {p.name for p in folder.rglob("*") if p.is_file()}
    assert kept == {second} and first != second
    assert groups.read(repo.id, second, 4096, repo.store.ids.digest) is not None


def test_an_encrypted_repository_keeps_keyed_digests(tmp_path: Path, hashed) -> None:
    """The digests are the repository's ids of the groups' bytes: keyed, they say nothing of
    the data to whoever reads the cache."""
    from casnap.ids import hash_bytes

    data = tmp_path / "data"
    data.mkdir()
    h.make_db(data / "app.db", rows=9000)
    repo = Repository.open_or_init(tmp_path / "repo", password=lambda: "pw", encryption="repokey")
    commit(repo, data)
    entry = _entry(repo)
    kept = groups.read(repo.id, entry.hash, 4096, repo.store.ids.digest)
    assert kept is not None
    span = groups.GROUP_BYTES  # the second group: the first holds the header the image sets
    second = (data / "app.db").read_bytes()[span : 2 * span]
    digest = kept.digests[list(kept.first).index(16)].tobytes()
    assert digest != hash_bytes(second) and digest == repo.ids(second)
    h.update_rows(data / "app.db", 5)
    pages = (data / "app.db").stat().st_size // 4096
    hashed.clear()
    commit(Repository.open(tmp_path / "repo", password=lambda: "pw"), data)
    assert 0 < sum(hashed) < pages // 4
    assert os.environ.get("CASNAP_CACHE_DIR")  # the suite's own cache dir, not the user's


def _faiss_versions(tmp_path: Path, index, grow) -> tuple[Path, Path]:
    data = tmp_path / "data"
    data.mkdir()
    h.write(index, data / "vectors.index")
    repo_dir = tmp_path / "repo"
    commit(Repository.init(repo_dir), data)
    grow(index)
    h.write(index, data / "vectors.index")
    return data, repo_dir


def test_faiss_indexes_are_not_grouped(tmp_path: Path) -> None:
    """Pieces cut by content are not grouped: digesting every byte once more cost as much as
    the per-piece calls it saved. Their commits keep nothing here."""
    data, repo_dir = _faiss_versions(
        tmp_path, h.ivf_flat(20000, nlist=16), lambda ix: ix.add(h.vectors(8, seed=5))
    )
    repo = Repository.open(repo_dir)
    commit(repo, data)
    assert not (cache_dir() / repo.id / "groups").exists()


def test_a_database_that_grows_past_its_first_group_commits_again(tmp_path: Path) -> None:
    """A database of fewer pages than a group keeps an empty record; once it has grown, its next
    commit finds none of its groups there and hashes its pages as before."""
    data = tmp_path / "data"
    data.mkdir()
    h.make_db(data / "small.db", rows=5)
    assert (data / "small.db").stat().st_size < groups.GROUP_BYTES
    repo = Repository.init(tmp_path / "repo")
    commit(repo, data)
    h.make_db(data / "small.db.new", rows=400)
    (data / "small.db.new").replace(data / "small.db")
    assert (data / "small.db").stat().st_size > 2 * groups.GROUP_BYTES
    result = commit(Repository.open(tmp_path / "repo"), data)
    assert result.files_changed == 1
    _same_as_hashing_every_page(tmp_path, data, tmp_path / "repo", "small.db")


def test_kept_digests_are_readable_by_their_owner_alone(tmp_path: Path) -> None:
    """The group files are 0600 as FORMAT.md says, whatever the umask and even in a folder
    another tool made readable: in a plain repository their digests are unkeyed hashes of the
    database's bytes."""
    data = tmp_path / "data"
    data.mkdir()
    h.make_db(data / "app.db", rows=300)
    repo = Repository.init(tmp_path / "repo")
    old = os.umask(0o022)
    try:
        commit(repo, data)
    finally:
        os.umask(old)
    files = [p for p in (cache_dir() / repo.id / "groups").rglob("*") if p.is_file()]
    assert files
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o600)}


def test_an_encrypted_repositorys_kept_digests_cannot_be_swapped(tmp_path: Path) -> None:
    """In an encrypted repository no kept-digest file can be made without the key, nor one
    moved under another version's name: the copy of another database's groups put in place of
    app.db's is ignored, and the next commit of app.db stores what hashing every page stores
    (were it used, app.db's old refs would be taken for the other database's groups)."""
    data = tmp_path / "data"
    data.mkdir()
    h.make_db(data / "app.db", rows=2000, seed=1)
    h.make_db(data / "other.db", rows=2000, seed=2)
    repo_dir = tmp_path / "repo"
    repo = Repository.open_or_init(repo_dir, password=lambda: "pw", encryption="repokey")
    commit(repo, data)
    app, other = _entry(repo, "app.db"), _entry(repo, "other.db")
    folder = cache_dir() / repo.id / "groups"
    shutil.copyfile(folder / other.hash[:2] / other.hash, folder / app.hash[:2] / app.hash)
    shutil.copyfile(data / "other.db", data / "app.db")  # app.db now holds other.db's groups
    os.utime(data / "app.db", ns=(1, 1))
    commit(Repository.open(repo_dir, password=lambda: "pw"), data)
    out = tmp_path / "out"
    checkout(Repository.open(repo_dir, password=lambda: "pw"), "latest", out, safety_snapshot=False)
    assert (out / "app.db").read_bytes()[100:] == (data / "app.db").read_bytes()[100:]


def test_groups_of_versions_no_commit_took_up_again_are_removed(tmp_path: Path) -> None:
    """Groups left behind (a database deleted from the data dir, a failed commit, another
    host's version) do not pile up: a commit that keeps groups removes those unused for
    groups.STALE_SECONDS."""
    data, repo_dir = _two_versions(tmp_path, lambda p: h.update_rows(p, 5))
    repo = Repository.open(repo_dir)
    folder = cache_dir() / repo.id / "groups"
    left = folder / "ab" / ("ab" + "0" * 62)
    left.parent.mkdir(parents=True, exist_ok=True)
    left.write_bytes(b"left behind")
    recent = folder / "cd" / ("cd" + "0" * 62)
    recent.parent.mkdir(parents=True, exist_ok=True)
    recent.write_bytes(b"used lately")
    old = time.time() - groups.STALE_SECONDS - 60
    os.utime(left, (old, old))
    commit(repo, data)
    assert not left.exists() and recent.exists()
    assert groups.read(repo.id, _entry(Repository.open(repo_dir)).hash, 4096, repo.ids) is not None


def test_a_read_tried_again_still_finds_the_parents_groups(
    tmp_path: Path, hashed, monkeypatch
) -> None:
    """A database that changed while it was read without a lock is read again; the attempt that
    did not count keeps no groups and drops none, so the next attempt still finds the parent's."""
    from casnap import dbimage

    data, repo_dir = _two_versions(tmp_path, lambda p: h.update_rows(p, 5))
    pages = (data / "app.db").stat().st_size // 4096
    answers = iter([False])
    intact = dbimage.Image.intact
    monkeypatch.setattr(dbimage.Image, "intact", lambda self: next(answers, True) and intact(self))
    hashed.clear()
    commit(Repository.open(repo_dir), data)
    assert next(answers, "done") == "done"  # the first read was refused
    assert sum(hashed) < 2 * (pages // 4), (sum(hashed), pages)  # both reads used the groups
    _same_as_hashing_every_page(tmp_path, data, repo_dir)
