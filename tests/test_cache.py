"""The local cache of index files, manifests and pack directories (backends/cached.py): commands
that only read metadata ask the backend for listings alone once the cache is warm."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from casnap import Repository, checkout, collect, commit, diff, forget, verify
from casnap.backends.base import Backend
from casnap.backends.cached import CachingBackend, cache_dir_for
from casnap.backends.encrypted import EncryptedBackend
from casnap.backends.local import LocalBackend
from casnap.backends.memory import MemoryBackend
from casnap.errors import (
    CasnapError,
    IntegrityError,
    InvalidArgument,
    PasswordError,
    RepositoryNotFound,
)
from casnap.stats import log_rows
from tests.conftest import evolve_app, make_app, tree_bytes

PW = "correct horse battery staple"
Call = tuple[str, str, int, int | None]  # verb, key, offset, length
Calls = list[Call]  # named here: inside Counting, `list` is its method


class Counting(Backend):
    """A backend that records every request it passes on: (verb, key, offset, length)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.calls: Calls = []
        self._lock = threading.Lock()

    def _note(self, verb: str, key: str, offset: int = 0, length: int | None = None) -> None:
        with self._lock:
            self.calls.append((verb, key, offset, length))

    @property
    def location(self) -> str:
        return self.inner.location

    def put(self, key: str, data: bytes | memoryview) -> bool:
        self._note("put", key)
        return self.inner.put(key, data)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        self._note("get", key, offset, length)
        return self.inner.get(key, offset, length)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        self._note("list", prefix)
        yield from self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self._note("delete", key)
        self.inner.delete(key)

    def exists(self, key: str) -> bool:
        self._note("exists", key)
        return self.inner.exists(key)

    def gets(self, *prefixes: str) -> Calls:
        """The gets of keys under these prefixes, and forget every call recorded so far. The
        read back of an object just put (a write is checked at the storage) is left out."""
        with self._lock:
            put = {c[1] for c in self.calls if c[0] == "put"}
            out = [
                c
                for c in self.calls
                if c[0] == "get" and c[1].startswith(prefixes) and c[1] not in put
            ]
            self.calls.clear()
        return out

    def tail_gets(self) -> Calls:
        """The reads of packs from an offset to their end (their directory), and forget all."""
        return [c for c in self.gets("packs/") if c[2] > 0 and c[3] is None]


def open_counted(root: Path, password: str | None = None) -> tuple[Repository, Counting]:
    """The repository at root over a counting backend, with the cache."""
    counting = Counting(LocalBackend(root))
    pw = None if password is None else (lambda: password)
    repo = Repository.open_backend(counting, root / "tmp", root=root, password=pw, cache=True)
    return repo, counting


def two_snapshots(tmp_path: Path, password: str | None = None) -> tuple[Path, Path, list[str]]:
    """A repository (encrypted when a password is given) with two snapshots of a real app."""
    data, root = tmp_path / "data", tmp_path / "repo"
    make_app(data)
    pw = None if password is None else (lambda: password)
    repo = Repository.open_or_init(
        root, password=pw, encryption="none" if pw is None else "repokey"
    )
    ids = [commit(repo, data, message="first").id]
    evolve_app(data, 1)
    ids.append(commit(repo, data, message="second").id)
    repo.close()
    return data, root, ids


def metadata_commands(repo: Repository, data: Path, ids: list[str]) -> None:
    """log, show, diff of two snapshots and a commit that finds nothing new."""
    assert len(log_rows(repo)) >= 2
    assert len(repo.snapshots()) >= 2
    assert repo.load_snapshot(repo.resolve(ids[0])).message == "first"
    assert diff(repo, ids[0], ids[1]).files
    commit(repo, data, message="again")


def test_a_warm_cache_answers_metadata_reads_with_listings_alone(tmp_path: Path) -> None:
    data, root, ids = two_snapshots(tmp_path)
    repo, counting = open_counted(root)
    assert isinstance(repo.backend, CachingBackend)
    metadata_commands(repo, data, ids)
    assert counting.gets("index/", "snapshots/")  # a cold cache fetches them once
    repo.close()

    for _ in range(2):  # each a new process's view: nothing kept in memory
        repo, counting = open_counted(root)
        assert len(log_rows(repo)) >= 2
        assert counting.gets("index/", "snapshots/") == []
        assert {c[0] for c in counting.calls} <= {"list"}
        repo.close()
    repo, counting = open_counted(root)
    metadata_commands(repo, data, ids)
    assert counting.gets("index/", "snapshots/") == []
    repo.close()


def test_pack_directories_are_read_once(tmp_path: Path) -> None:
    _data, root, _ids = two_snapshots(tmp_path)
    repo, counting = open_counted(root)
    assert verify(repo).ok
    assert counting.tail_gets()  # verify read each pack's directory from its tail
    repo.close()
    repo, counting = open_counted(root)
    assert verify(repo).ok
    assert counting.tail_gets() == []
    assert collect(repo, dry_run=True) is not None
    assert counting.tail_gets() == []
    repo.close()


def test_a_damaged_cache_file_is_fetched_again(tmp_path: Path) -> None:
    data, root, ids = two_snapshots(tmp_path)
    repo, _ = open_counted(root)
    metadata_commands(repo, data, ids)
    folder = cache_dir_for(repo.id)
    repo.close()
    manifests = sorted((folder / "snapshots").iterdir())
    indexes = sorted((folder / "index").iterdir())
    assert manifests and indexes
    flipped = bytearray(manifests[0].read_bytes())
    flipped[-1] ^= 1
    manifests[0].write_bytes(bytes(flipped))
    indexes[0].write_bytes(b"")  # cut short: not even a header
    (folder / "snapshots" / "stray").write_bytes(b"junk")  # a key no listing names

    repo, counting = open_counted(root)
    assert len(log_rows(repo)) == 3
    refetched = {c[1] for c in counting.gets("index/", "snapshots/")}
    assert refetched == {f"snapshots/{manifests[0].name}"}
    assert not (folder / "snapshots" / "stray").exists()  # dropped by the listing
    repo.ensure_index()
    assert {c[1] for c in counting.gets("index/", "snapshots/")} == {f"index/{indexes[0].name}"}
    target = tmp_path / "out"
    checkout(repo, ids[1], target, safety_snapshot=False)
    repo.close()
    # stored whole again: the next run reads nothing
    repo, counting = open_counted(root)
    repo.ensure_index()
    assert len(log_rows(repo)) == 3
    assert counting.gets("index/", "snapshots/") == []
    repo.close()


def test_deleting_the_cache_is_harmless(tmp_path: Path) -> None:
    import shutil

    data, root, ids = two_snapshots(tmp_path)
    repo, _ = open_counted(root)
    metadata_commands(repo, data, ids)
    folder = cache_dir_for(repo.id)
    repo.close()
    assert folder.is_dir()
    shutil.rmtree(folder)
    repo, counting = open_counted(root)
    metadata_commands(repo, data, ids)
    assert counting.gets("snapshots/")  # a miss: fetched again
    shutil.rmtree(folder)  # while it is open
    assert verify(repo).ok
    repo.close()


def test_an_object_deleted_elsewhere_leaves_the_cache_at_the_next_listing(
    tmp_path: Path,
) -> None:
    data, root, ids = two_snapshots(tmp_path)
    repo, _ = open_counted(root)
    metadata_commands(repo, data, ids)
    assert verify(repo).ok  # pack directories kept too
    folder = cache_dir_for(repo.id)
    repo.close()
    kept_packs = {p.name.split(".")[0] for p in (folder / "packs").rglob("*.tail")}
    assert kept_packs

    other = Repository.open(root)  # another process, without the cache, forgets and collects
    forget(other, [ids[0]])
    collect(other, max_unused=0.0)
    other.close()
    assert not (root / "snapshots" / ids[0]).exists()
    assert (folder / "snapshots" / ids[0]).exists()

    repo, counting = open_counted(root)
    assert len(log_rows(repo)) == 2
    assert not (folder / "snapshots" / ids[0]).exists()
    listed = {p.name for p in (root / "snapshots").iterdir()}
    assert {p.name for p in (folder / "snapshots").iterdir()} == listed
    assert verify(repo).ok
    assert counting.gets("snapshots/") == []
    stored_index = {p.name for p in (root / "index").iterdir()}
    assert {p.name for p in (folder / "index").iterdir()} <= stored_index
    stored_packs = {p.name for p in (root / "packs").rglob("*") if p.is_file()}
    assert {p.name.split(".")[0] for p in (folder / "packs").rglob("*.tail")} <= stored_packs
    repo.close()


def test_delete_through_the_cache_drops_its_copy(tmp_path: Path) -> None:
    inner = Counting(MemoryBackend())
    cached = CachingBackend(inner, tmp_path / "cache")
    assert cached.put("snapshots/ab", b"manifest")  # what is stored is kept at once
    assert cached.get("snapshots/ab") == b"manifest"
    assert inner.inner.put("snapshots/cd", b"stored elsewhere")
    assert cached.get("snapshots/cd") == b"stored elsewhere"  # a miss: fetched, then kept
    assert cached.get("snapshots/cd") == b"stored elsewhere"
    assert [c[1] for c in inner.gets("snapshots/")] == ["snapshots/cd"]
    cached.delete("snapshots/ab")
    assert not (tmp_path / "cache" / "snapshots" / "ab").exists()
    assert cached.put("snapshots/ab", b"stored again")  # a new object under the same key
    assert cached.get("snapshots/ab") == b"stored again"
    # what is not kept passes through every time; nothing is written for it
    assert inner.inner.put("config", b"cfg") and inner.inner.put("packs/cd/cdef", b"p" * 100)
    for _ in range(2):
        assert cached.get("config") == b"cfg"
        assert cached.get("packs/cd/cdef") == b"p" * 100
        assert cached.get("packs/cd/cdef", 10, 20) == b"p" * 20
    assert len(inner.gets("config", "packs/")) == 6
    assert not (tmp_path / "cache" / "config").exists()
    assert not list((tmp_path / "cache").glob("packs/**/*.*"))


def test_pack_tails_and_heads_serve_exactly_their_bytes(tmp_path: Path) -> None:
    inner = Counting(MemoryBackend())
    cached = CachingBackend(inner, tmp_path / "cache")
    blob = bytes(range(256)) * 4
    inner.inner.put("packs/ab/abcd", blob)
    assert cached.get("packs/ab/abcd", 1000) == blob[1000:]
    assert cached.get("packs/ab/abcd", 900) == blob[900:]  # a longer tail replaces it
    assert cached.get("packs/ab/abcd", 0, 40) == blob[:40]
    assert len(inner.gets("packs/")) == 3
    assert cached.get("packs/ab/abcd", 1000) == blob[1000:]
    assert cached.get("packs/ab/abcd", 950, 30) == blob[950:980]
    assert cached.get("packs/ab/abcd", 1024) == b""
    assert cached.get("packs/ab/abcd", 0, 16) == blob[:16]
    assert inner.gets("packs/") == []
    with pytest.raises(IntegrityError):  # past the end: the backend below answers (damage)
        cached.get("packs/ab/abcd", 1020, 10)
    assert inner.gets("packs/")


def test_concurrent_gets_share_the_cache(tmp_path: Path) -> None:
    inner = MemoryBackend()
    cached = CachingBackend(inner, tmp_path / "cache")
    blobs = {f"index/{i:04x}": os.urandom(3000 + i) for i in range(40)}
    for k, v in blobs.items():
        cached.put(k, v)
    errors: list[BaseException] = []

    def reader(seed: int) -> None:
        try:
            for n in range(200):
                k = f"index/{(seed * 7 + n) % 40:04x}"
                assert cached.get(k) == blobs[k]
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.name.startswith(".casnap-tmp")]
    assert leftovers == []


def test_cache_files_are_private(tmp_path: Path) -> None:
    inner = MemoryBackend()
    cached = CachingBackend(inner, tmp_path / "cache" / "repos" / "x")
    cached.put("index/ab", b"index")
    cached.get("index/ab")
    path = tmp_path / "cache" / "repos" / "x" / "index" / "ab"
    assert path.stat().st_mode & 0o777 == 0o600
    for folder in (path.parent, path.parent.parent, tmp_path / "cache"):
        assert folder.stat().st_mode & 0o777 == 0o700


def test_the_cache_lives_in_the_user_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CASNAP_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir_for("0123abcd") == tmp_path / "c" / "repos" / "0123abcd"
    escaped = cache_dir_for("../../etc")
    assert escaped.parent == tmp_path / "c" / "repos" and ".." not in escaped.name


def test_an_encrypted_repository_keeps_sealed_bytes_only(tmp_path: Path) -> None:
    data, root, ids = two_snapshots(tmp_path, PW)
    repo, counting = open_counted(root, PW)
    assert isinstance(repo.backend, EncryptedBackend)
    assert isinstance(repo.backend.inner, CachingBackend)
    metadata_commands(repo, data, ids)
    assert verify(repo).ok
    folder = cache_dir_for(repo.id)
    repo.close()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    assert any(p.name.endswith(".tail") for p in files)
    assert any(p.parent.name == "snapshots" for p in files)
    names = [b"app.db", b"shard_000.index", b"ivf.index", b"hnsw.index", b"first", b"docs"]
    for p in files:
        body = p.read_bytes()
        assert not [n for n in names if n in body], p

    repo, counting = open_counted(root, PW)
    metadata_commands(repo, data, ids)
    assert counting.gets("index/", "snapshots/") == []
    assert verify(repo).ok
    assert counting.tail_gets() == []
    heads = [c for c in counting.gets("packs/") if c[2] == 0 and c[3] is not None and c[3] <= 64]
    assert heads == []
    target = tmp_path / "out"
    checkout(repo, ids[1], target, safety_snapshot=False)
    assert (target / "app.db").is_file()
    repo.close()


@pytest.mark.parametrize("password", [None, PW], ids=["plain", "encrypted"])
def test_a_warm_log_is_one_listing_and_nothing_else(tmp_path: Path, password: str | None) -> None:
    """The config and the key file that opened it are kept too (opening.py): with a warm cache,
    opening the repository and listing its snapshots is a single listing request."""
    _data, root, ids = two_snapshots(tmp_path, password)
    repo, counting = open_counted(root, password)
    assert len(log_rows(repo)) == 2  # warms the cache
    repo.close()
    repo, counting = open_counted(root, password)
    assert {row["id"] for row in log_rows(repo)} == set(ids)
    assert counting.calls == [("list", "snapshots/", 0, None)]
    repo.close()


def made_anew_after_a_log(tmp_path: Path) -> tuple[Path, Path, str]:
    """A repository of two snapshots whose config this host keeps (a log read it), then
    deleted and made anew at the same location with one snapshot: (the data dir, its root,
    that id)."""
    data, root, _ids = two_snapshots(tmp_path, PW)
    repo, _ = open_counted(root, PW)
    assert len(log_rows(repo)) == 2
    repo.close()
    shutil.rmtree(root)
    fresh = Repository.open_or_init(root, password=lambda: PW, encryption="repokey")
    new_id = commit(fresh, data, message="anew").id
    fresh.close()
    return data, root, new_id


def test_a_repository_made_anew_where_a_cached_one_was_is_noticed(tmp_path: Path) -> None:
    """A cached config is only trusted until the snapshot listing disagrees: a repository
    deleted and made anew at the same location (another master key) is reported once, the
    cached copies dropped, and the next open reads the new one."""
    _data, root, new_id = made_anew_after_a_log(tmp_path)
    repo, _ = open_counted(root, PW)
    with pytest.raises(CasnapError, match="made anew"):
        log_rows(repo)
    repo.close()
    repo, _ = open_counted(root, PW)
    assert [row["id"] for row in log_rows(repo)] == [new_id]
    repo.close()
    shutil.rmtree(root)
    root.mkdir()
    repo, _ = open_counted(root, PW)  # nothing there now: said so, not an empty log
    with pytest.raises(RepositoryNotFound):
        log_rows(repo)
    repo.close()


@pytest.mark.parametrize("command", ["log", "commit"])
def test_a_repository_made_anew_is_noticed_by_the_commands_that_pass_over_damage(
    tmp_path: Path, command: str
) -> None:
    """log, commit and the other commands that list snapshots past a damaged manifest (with a
    warning) see every manifest of a repository made anew fail to open with the kept key: that
    is the config to check, not damage to report ("`casnap forget ID` removes that snapshot"
    would have a user delete the new repository's snapshots). Said once, the next run reads
    the new repository."""
    data, root, new_id = made_anew_after_a_log(tmp_path)
    repo, _ = open_counted(root, PW)
    repo.skip_damaged = True  # as the command line sets it for these commands
    with pytest.raises(CasnapError, match="made anew"):
        if command == "log":
            log_rows(repo)
        else:
            commit(repo, data, message="after")
    assert not repo.damaged
    repo.close()
    repo, _ = open_counted(root, PW)
    repo.skip_damaged = True
    if command == "commit":
        commit(repo, data, message="after")
    assert new_id in {row["id"] for row in log_rows(repo)}
    assert not repo.damaged
    repo.close()


@pytest.mark.parametrize("command", ["log", "commit"])
def test_a_plain_repository_made_anew_encrypted_is_noticed(tmp_path: Path, command: str) -> None:
    """A host keeps a plain repository's config; the repository is deleted and made anew,
    encrypted, at that location. Its manifests are sealed, which under the kept plain config
    read as a downgrade ("put the repository's own config and keys/ back", exit 5, on every
    run while the cache lasted): the stored config is the one to check, and it differs."""
    data, root, _ids = two_snapshots(tmp_path)
    repo, _ = open_counted(root)
    assert len(log_rows(repo)) == 2  # the plain config is kept
    repo.close()
    shutil.rmtree(root)
    fresh = Repository.open_or_init(root, password=lambda: PW, encryption="repokey")
    new_id = commit(fresh, data, message="anew").id
    fresh.close()
    repo, _ = open_counted(root, PW)
    repo.skip_damaged = True  # as the command line sets it for these commands
    with pytest.raises(CasnapError, match="made anew"):
        if command == "log":
            log_rows(repo)
        else:
            commit(repo, data, message="after")
    repo.close()
    repo, _ = open_counted(root, PW)  # the next run reads the new repository
    assert [row["id"] for row in log_rows(repo)] == [new_id]
    repo.close()


def test_an_encrypted_repository_made_anew_with_another_password_opens_with_it(
    tmp_path: Path,
) -> None:
    """A host keeps an encrypted repository's config; the repository is deleted and made anew
    at that location with another password. Opened with the new password, the kept config (of
    the old master key) did not open with the new key file: "config is damaged or tampered
    with" (exit 5) on every run while the cache lasted, of a healthy repository. The stored
    config is the one to check: it differs, so the kept copies go and the new one is read."""
    data, root, _ids = two_snapshots(tmp_path, PW)
    repo, _ = open_counted(root, PW)
    assert len(log_rows(repo)) == 2  # the config and the key file are kept
    repo.close()
    shutil.rmtree(root)
    fresh = Repository.open_or_init(root, password=lambda: "another", encryption="repokey")
    new_id = commit(fresh, data, message="anew").id
    fresh.close()
    repo, _ = open_counted(root, "another")
    assert [row["id"] for row in log_rows(repo)] == [new_id]
    repo.close()


def test_a_repository_made_anew_plain_opens_without_a_password(tmp_path: Path) -> None:
    """A host keeps an encrypted repository's config; the repository is deleted and made anew,
    plain, at that location. Without a password the kept config asked for one ("repository is
    encrypted", exit 10) of a repository that is not: the stored config is read, and used."""
    data, root, _ids = two_snapshots(tmp_path, PW)
    repo, _ = open_counted(root, PW)
    assert len(log_rows(repo)) == 2
    repo.close()
    shutil.rmtree(root)
    fresh = Repository.open_or_init(root, encryption="none")
    new_id = commit(fresh, data, message="anew").id
    fresh.close()
    repo, _ = open_counted(root)
    assert [row["id"] for row in log_rows(repo)] == [new_id]
    repo.close()


def test_a_wrong_password_is_still_one_with_a_kept_config(tmp_path: Path) -> None:
    """The stored config is only read to tell a repository made anew from a wrong password or
    a missing one: for the repository the host kept, both are still exit 10."""
    _data, root, _ids = two_snapshots(tmp_path, PW)
    repo, _ = open_counted(root, PW)
    assert len(log_rows(repo)) == 2
    repo.close()
    for password in ("wrong", None):
        with pytest.raises(PasswordError):
            open_counted(root, password)
    repo, _ = open_counted(root, PW)  # the kept copies stay
    assert len(log_rows(repo)) == 2
    repo.close()


def test_cache_files_swapped_for_fifos_or_folders_are_misses_not_waits(tmp_path: Path) -> None:
    """A kept copy that is a FIFO (opening it to read waits for a writer forever) or a folder is
    a miss like a damaged one: the object is fetched again and the command goes on. So is a
    checkout's record of restored files swapped for a FIFO."""
    data, root, ids = two_snapshots(tmp_path)
    repo, _ = open_counted(root)
    metadata_commands(repo, data, ids)
    checkout(repo, ids[1], tmp_path / "out", safety_snapshot=False, smoke=False)
    folder = cache_dir_for(repo.id)
    repo.close()
    manifests = sorted((folder / "snapshots").iterdir())
    records = [  # the checkout's, not the one the commits from the data dir keep
        p
        for p in sorted(Path(os.environ["CASNAP_CACHE_DIR"]).glob("*/restored/*.json"))
        if json.loads(p.read_bytes())["source"] == str(tmp_path / "out")
    ]
    assert manifests and records
    fifos = [manifests[0], records[0]]
    for path in fifos:
        path.unlink()
        os.mkfifo(path)
    (folder / "index").rename(tmp_path / "index-copies")
    (folder / "index").mkdir()
    for copy in (tmp_path / "index-copies").iterdir():  # each copy a folder by its name
        (folder / "index" / copy.name).mkdir()
    outcome: dict[str, object] = {}

    def run() -> None:
        repo, _ = open_counted(root)
        outcome["log"] = len(log_rows(repo))
        target = tmp_path / "out"
        (target / "extra.txt").write_bytes(b"unsaved\n")
        # the record of the checkout into it, which made it known, is a miss: extra.txt stays
        with pytest.raises(InvalidArgument, match="extra.txt"):
            checkout(repo, ids[0], target, smoke=False)
        checkout(repo, ids[0], target, smoke=False, force=True)
        outcome["checkout"] = True
        repo.close()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)
    stuck = worker.is_alive()
    while worker.is_alive():  # a reader stuck on a FIFO gets its writer and ends
        for path in fifos:
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        worker.join(0.1)
    assert not stuck, "a cache file that is a FIFO was waited on"
    assert outcome == {"log": 3, "checkout": True}


def test_a_pack_stored_again_with_a_new_salt_is_read_past_its_kept_header(
    tmp_path: Path,
) -> None:
    """An encrypted pack deleted elsewhere (forget + gc) and stored again by a commit of the
    same data has the same name and plaintext but a new salt: the header and tail this host kept
    of the old object do not open the new one's segments. Such a read is retried from the
    storage with the kept copies dropped, not reported as damage (which verify, bypassing the
    cache, would not find) on every checkout until the cache is deleted."""
    data, root = tmp_path / "data", tmp_path / "repo"
    make_app(data)
    writer = Repository.open_or_init(root, password=lambda: PW, encryption="repokey")
    first = commit(writer, data, message="first").id
    writer.close()
    reader, _ = open_counted(root, PW)  # this host: reads the pack, keeps its header and tail
    checkout(reader, first, tmp_path / "out1", safety_snapshot=False, smoke=False)
    reader.close()
    packs = {p.name for p in (root / "packs").rglob("*") if p.is_file()}

    other = Repository.open(root, password=lambda: PW)  # another host, without this cache
    forget(other, [first])
    collect(other)
    assert not any(p.is_file() for p in (root / "packs").rglob("*"))
    again = commit(other, data, message="again").id
    other.close()
    assert {p.name for p in (root / "packs").rglob("*") if p.is_file()} == packs

    reader, _ = open_counted(root, PW)
    checkout(reader, again, tmp_path / "out2", safety_snapshot=False, smoke=False)
    assert tree_bytes(tmp_path / "out2") == tree_bytes(tmp_path / "out1")
    assert verify(reader, read_data=True).ok
    reader.close()


def test_a_kept_key_file_of_another_repository_is_dropped_not_fatal(tmp_path: Path) -> None:
    """Two repositories with one password: a key file of the other one kept for this location
    opened with the password but not the config, and every command stopped with an integrity
    error (exit 5) until the cache was deleted. A kept key file that does not open the config
    is dropped and the stored key files are used, as a kept copy that fails its checksum is.
    (A kept config of another repository is found by the listing: "made anew?".)"""
    from casnap.backends.cached import opened_cache_dir

    data, root, ids = two_snapshots(tmp_path, PW)
    other = tmp_path / "other"
    fresh = Repository.open_or_init(other, password=lambda: PW, encryption="repokey")
    commit(fresh, data, message="other")
    fresh.close()
    for where in (root, other):  # each location's config and key file kept
        repo, _ = open_counted(where, PW)
        assert log_rows(repo)
        repo.close()
    mine, theirs = opened_cache_dir(str(root)), opened_cache_dir(str(other))
    assert list((mine / "keys").iterdir()) and list((theirs / "keys").iterdir())
    shutil.rmtree(mine / "keys")
    shutil.copytree(theirs / "keys", mine / "keys")

    repo, _ = open_counted(root, PW)
    assert [row["id"] for row in log_rows(repo)] == ids[::-1]
    checkout(repo, ids[1], tmp_path / "out", safety_snapshot=False, smoke=False)
    repo.close()
    assert {p.name for p in (mine / "keys").iterdir()} == {
        p.name for p in (root / "keys").iterdir()
    }
    repo, counting = open_counted(root, PW)  # kept anew: the next open asks for nothing
    assert len(log_rows(repo)) == 2
    assert [c for c in counting.calls if c[1] == "config" or c[1].startswith("keys/")] == []
    repo.close()
