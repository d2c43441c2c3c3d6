"""The backend contract (casnap/backends/base.py), one suite run over every backend.

Each backend is one `Kit` line in KITS: how to make it on fresh storage, how to open a second
backend on the same storage, and what a put killed half-way leaves behind. Every test takes the
`kit` fixture, so a backend added later is held to the same contract by adding its line; test ids
name the backend (`test_put_if_absent[local]`). The local backend is also run against real
failures: a full tmpfs, a read-only mount and folders it may not enter.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from casnap.backends import Backend, LocalBackend, MemoryBackend
from casnap.backends.cached import CachingBackend
from casnap.backends.encrypted import EncryptedBackend
from casnap.backends.retrying import RetryingBackend
from casnap.crypto import Sealer
from casnap.errors import AccessDenied, CasnapError, IntegrityError, ObjectMissing, StorageFull
from casnap.fsutil import make_dirs, temp_name
from tests import faults as F
from tests.helpers_reliability import ROOT, casnap_env, temp_files
from tests.s3server import have_s3, make_bucket
from tests.test_hostile import in_small_tmpfs, unprivileged


def _blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


# -- the backends under contract -------------------------------------------------------------------


def _local_leftover(backend: Backend, key: str, data: bytes) -> None:
    """What a put killed while writing leaves: a half-written temp file beside the object."""
    assert isinstance(backend, LocalBackend)
    folder = backend.root.joinpath(*key.split("/")[:-1])
    make_dirs(folder)
    (folder / temp_name()).write_bytes(data[: len(data) // 2])


def _memory_reopen(backend: Backend) -> Backend:
    """A second memory backend on the same objects (the dict is its storage)."""
    assert isinstance(backend, MemoryBackend)
    again = MemoryBackend()
    again.objects = backend.objects
    return again


SEALER = Sealer(bytes(range(32)))


def _encrypted_leftover(backend: Backend, key: str, data: bytes) -> None:
    assert isinstance(backend, EncryptedBackend)
    _local_leftover(backend.inner, key, data)


def _cached_leftover(backend: Backend, key: str, data: bytes) -> None:
    assert isinstance(backend, CachingBackend)
    _local_leftover(backend.inner, key, data)


def _retrying(cls: type[Backend], tmp: Path) -> Backend:
    """A local backend behind RetryingBackend, whose first call of each kind fails transiently
    (a put and a delete after they landed, their answers lost): the contract holds through
    retries."""
    faults = [F.answer_lost("put"), F.transient("get"), F.transient("list")]
    faults.append(F.answer_lost("delete"))
    inner = F.FaultyBackend(LocalBackend(tmp / "repo"), faults)
    return cls(inner, sleep=lambda _s: None)  # type: ignore[call-arg]


def _retrying_local(backend: Backend) -> LocalBackend:
    assert isinstance(backend, RetryingBackend) and isinstance(backend.inner, F.FaultyBackend)
    assert isinstance(backend.inner.inner, LocalBackend)
    return backend.inner.inner


_S3_BUCKETS = itertools.count()


def _s3_make(cls: type[Backend], tmp: Path) -> Backend:
    """A backend on a fresh bucket of the test server (tests/s3server.py), under a prefix."""
    from casnap.locations import S3Url

    bucket = f"contract-{os.getpid()}-{next(_S3_BUCKETS)}"
    make_bucket(bucket)
    return cls(S3Url(bucket, "repo/x"))  # type: ignore[call-arg]


def _s3_reopen(backend: Backend) -> Backend:
    from casnap.backends.s3 import S3Backend

    assert isinstance(backend, S3Backend)
    return S3Backend(backend.url)


def _s3_leftover(backend: Backend, key: str, data: bytes) -> None:
    """What a put killed while uploading leaves on S3: a multipart upload never completed."""
    from casnap.backends.s3 import S3Backend, make_client

    assert isinstance(backend, S3Backend)
    client = make_client()
    name = f"{backend.url.prefix}/{key}"
    upload = client.create_multipart_upload(Bucket=backend.bucket, Key=name)
    client.upload_part(
        Bucket=backend.bucket, Key=name, UploadId=upload["UploadId"], PartNumber=1, Body=data
    )
    client.close()


@dataclass(frozen=True)
class Kit:
    """One backend under contract: its class, how to make one on fresh storage under a folder,
    how to open a second one on the same storage, and what a put killed half-way leaves."""

    name: str
    cls: type[Backend]
    make: Callable[[type[Backend], Path], Backend]
    reopen: Callable[[Backend], Backend]
    leave_interrupted_put: Callable[[Backend, str, bytes], None]


KITS = [
    Kit(
        "local",
        LocalBackend,
        lambda cls, tmp: cls(tmp / "repo"),  # type: ignore[call-arg]
        lambda b: LocalBackend(b.root),  # type: ignore[attr-defined]
        _local_leftover,
    ),
    Kit("memory", MemoryBackend, lambda cls, tmp: cls(), _memory_reopen, lambda b, k, d: None),
    Kit(
        "encrypted",
        EncryptedBackend,
        lambda cls, tmp: cls(LocalBackend(tmp / "repo"), SEALER),  # type: ignore[call-arg]
        lambda b: EncryptedBackend(LocalBackend(b.inner.root), SEALER),  # type: ignore[attr-defined]
        _encrypted_leftover,
    ),
    Kit(
        "cached",
        CachingBackend,
        lambda cls, tmp: cls(LocalBackend(tmp / "repo"), tmp / "cache"),  # type: ignore[call-arg]
        lambda b: CachingBackend(LocalBackend(b.inner.root), b.cache_dir),  # type: ignore[attr-defined]
        _cached_leftover,
    ),
    Kit(
        "retrying",
        RetryingBackend,
        _retrying,
        lambda b: RetryingBackend(LocalBackend(_retrying_local(b).root)),
        lambda b, k, d: _local_leftover(_retrying_local(b), k, d),
    ),
]
if have_s3():
    from casnap.backends.s3 import S3Backend

    KITS.append(Kit("s3", S3Backend, _s3_make, _s3_reopen, _s3_leftover))


@pytest.fixture(params=KITS, ids=lambda k: k.name)
def kit(request: pytest.FixtureRequest) -> Kit:
    if request.param.name == "s3":
        request.getfixturevalue("s3_env")  # the test server, and this process pointed at it
    return request.param


@pytest.fixture
def backend(kit: Kit, tmp_path: Path) -> Backend:
    return kit.make(kit.cls, tmp_path)


# -- put -------------------------------------------------------------------------------------------


def test_put_if_absent(backend: Backend) -> None:
    first, second = _blob(1, 5000), _blob(2, 7000)
    assert backend.put("packs/ab/obj", first) is True
    assert backend.put("packs/ab/obj", second) is False  # never overwrites
    assert backend.get("packs/ab/obj") == first
    assert dict(backend.list("packs/")) == {"packs/ab/obj": len(first)}
    assert backend.put("config", b"") is True  # an empty object is an object
    assert backend.put("config", b"x") is False
    assert backend.get("config") == b""


def test_put_takes_a_memoryview_and_keeps_its_own_copy(backend: Backend) -> None:
    buf = bytearray(_blob(3, 4096))
    want = bytes(buf)
    assert backend.put("index/one", memoryview(buf)[: len(buf)])
    buf[:] = bytes(len(buf))  # the caller reuses its buffer
    assert backend.get("index/one") == want
    assert backend.put("index/two", memoryview(want)[100:200])
    assert backend.get("index/two") == want[100:200]


def _race(backend: Backend, key: str, blobs: list[bytes]) -> list[bool | BaseException]:
    """Put blobs[i] under key from thread i, all released at once; what each put returned."""
    results: list[bool | BaseException] = [False] * len(blobs)
    barrier = threading.Barrier(len(blobs))

    def put(i: int) -> None:
        barrier.wait()
        try:
            results[i] = backend.put(key, blobs[i])
        except BaseException as exc:  # noqa: BLE001 - reported by the caller's assertion
            results[i] = exc

    threads = [threading.Thread(target=put, args=(i,)) for i in range(len(blobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_puts_of_one_key_have_one_winner(backend: Backend) -> None:
    """Writers racing for one key: exactly one put returns True, and the object is whole: all of
    the winner's bytes, none of anybody else's."""
    for round_ in range(6):
        key = f"packs/{round_:02x}/contended"
        blobs = [_blob(100 * round_ + i, 20_000 + 997 * i) for i in range(8)]
        results = _race(backend, key, blobs)
        assert all(isinstance(r, bool) for r in results), results
        assert results.count(True) == 1, results
        winner = blobs[results.index(True)]
        assert backend.get(key) == winner
        assert dict(backend.list(f"packs/{round_:02x}/")) == {key: len(winner)}


# -- get -------------------------------------------------------------------------------------------


def test_get_reads_a_whole_object(backend: Backend) -> None:
    sizes = {"packs/00/empty": 0, "packs/00/small": 1, "packs/01/page": 4096, "big": 3_000_017}
    blobs = {k: _blob(i, n) for i, (k, n) in enumerate(sizes.items())}
    for key, data in blobs.items():
        assert backend.put(key, data)
    for key, data in blobs.items():
        assert backend.get(key) == data
        assert backend.get(key, 0, None) == data
        assert backend.get(key, 0, len(data)) == data


def test_ranged_get_returns_exactly_the_range(backend: Backend) -> None:
    data = _blob(7, 100_000)
    backend.put("packs/aa/p", data)
    rng = random.Random(8)
    for _ in range(200):
        offset = rng.randrange(len(data))
        length = rng.randrange(len(data) - offset + 1)
        assert backend.get("packs/aa/p", offset, length) == data[offset : offset + length]
    assert backend.get("packs/aa/p", 99_990) == data[99_990:]  # to the end
    assert backend.get("packs/aa/p", len(data)) == b""  # the empty end of the object
    assert backend.get("packs/aa/p", len(data), 0) == b""
    assert backend.get("packs/aa/p", 5, 0) == b""


def test_reading_past_the_end_is_an_integrity_error(backend: Backend) -> None:
    """A range the object does not hold means a truncated object (a damaged repository):
    IntegrityError naming the key, never a short read handed back."""
    data = _blob(9, 1000)
    backend.put("packs/bb/p", data)
    for offset, length in ((990, 11), (0, 1001), (1000, 1), (1500, 10), (1001, 0), (5000, None)):
        with pytest.raises(IntegrityError, match="packs/bb/p") as info:
            backend.get("packs/bb/p", offset, length)
        assert not isinstance(info.value, ObjectMissing)
    assert backend.get("packs/bb/p", 990, 10) == data[990:]  # the object is untouched


def test_negative_ranges_are_refused(backend: Backend) -> None:
    backend.put("packs/cc/p", b"0123456789")
    for offset, length in ((-1, None), (-3, 2), (0, -1)):
        with pytest.raises(ValueError):
            backend.get("packs/cc/p", offset, length)


def test_missing_keys(backend: Backend) -> None:
    backend.put("config", b"{}")
    backend.put("packs/dd/there", b"x")
    for key in ("nothing", "packs/dd/absent", "packs/ee/absent", "config/below-an-object"):
        with pytest.raises(ObjectMissing, match=key):
            backend.get(key)
        with pytest.raises(ObjectMissing, match=key):
            backend.get(key, 0, 1)
        assert backend.exists(key) is False
        backend.delete(key)  # absent: not an error
    assert isinstance(ObjectMissing("k"), IntegrityError)  # a reference to nothing is damage


def test_reads_while_holding_answer_as_outside(backend: Backend) -> None:
    """holding (a restore keeps its packs open between reads) changes no answer: the bytes of
    every range read from several threads at once, a range past an object's end failing as
    damage, a missing object as missing, other folders as ever."""
    blobs = {f"packs/{i:02x}/p": _blob(40 + i, 50_000 + 7 * i) for i in range(4)}
    for key, data in blobs.items():
        assert backend.put(key, data)
    backend.put("index/i", b"abc")
    wrong: list[object] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(150):
            key = rng.choice(sorted(blobs))
            data = blobs[key]
            offset = rng.randrange(len(data))
            length = rng.randrange(1, len(data) - offset + 1)
            if backend.get(key, offset, length) != data[offset : offset + length]:
                wrong.append((key, offset, length))

    with backend.holding("packs/"):
        with backend.holding("packs/"):  # nested: the outer one holds, and closes
            threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert wrong == []
        for key, data in blobs.items():
            with pytest.raises(IntegrityError, match=key) as info:
                backend.get(key, len(data) - 5, 6)
            assert not isinstance(info.value, ObjectMissing)
            assert backend.get(key, 0, 10) == data[:10]
        with pytest.raises(ObjectMissing, match="packs/ff/absent"):
            backend.get("packs/ff/absent", 0, 1)
        assert backend.get("index/i") == b"abc"
    with pytest.raises(ValueError):
        with backend.holding("packs"):  # a folder ends in "/"
            pass


def test_a_pack_truncated_while_held_open_is_damage(tmp_path: Path) -> None:
    """An object cut short after holding opened it: a read of what it no longer holds fails as
    damage, as without holding; once holding ends, no descriptor of it stays open."""
    backend = LocalBackend(tmp_path / "repo")
    data = _blob(50, 200_000)
    backend.put("packs/ab/p", data)
    before = sorted(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    with backend.holding("packs/"):
        assert backend.get("packs/ab/p", 1000, 5000) == data[1000:6000]  # opened and kept
        os.truncate(backend.root / "packs/ab/p", 100_000)
        assert backend.get("packs/ab/p", 90_000, 10_000) == data[90_000:100_000]
        with pytest.raises(IntegrityError, match="packs/ab/p is truncated"):
            backend.get("packs/ab/p", 150_000, 1000)
        if before is not None:
            assert len(os.listdir("/proc/self/fd")) > len(before)  # held
    if before is not None:
        assert sorted(os.listdir("/proc/self/fd")) == before


# -- list, exists, delete --------------------------------------------------------------------------


def test_list_by_prefix(backend: Backend) -> None:
    objects = {
        "config": 17,
        "packs/00/a": 100,
        "packs/00/b": 0,
        "packs/ff/c": 3000,
        "packsx/d": 5,  # a sibling folder whose name starts like packs
        "index/e": 64,
        "snapshots/f": 9,
    }
    for i, (key, size) in enumerate(objects.items()):
        assert backend.put(key, _blob(i, size))

    def listed(prefix: str) -> dict[str, int]:
        items = list(backend.list(prefix))
        assert len(items) == len({k for k, _ in items}), f"{prefix}: a key listed twice"
        return dict(items)

    assert listed("") == objects
    assert listed("packs/") == {k: s for k, s in objects.items() if k.startswith("packs/")}
    assert listed("packs/00/") == {"packs/00/a": 100, "packs/00/b": 0}
    assert listed("index/") == {"index/e": 64}
    assert listed("locks/") == {}  # a folder never written to
    assert listed("config/") == {}  # an object is not a folder
    backend.delete("packs/ff/c")
    assert listed("packs/ff/") == {}
    assert listed("packs/") == {"packs/00/a": 100, "packs/00/b": 0}


def test_list_several_lists_exactly_those_folders(backend: Backend) -> None:
    """One listing of several folders (locks/, repairs/, snapshots/ around packs/) names each of
    their objects once and nothing of the folders between, before or after them."""
    objects = {
        "config": 3,
        "index/e": 4,
        "keys/k": 5,
        "locks/l1": 6,
        "locks/l2": 7,
        "locksx/n": 8,  # a sibling whose name starts like locks
        "packs/00/a": 9,
        "packs/ff/b": 10,
        "repairs/r": 11,
        "snapshots/s1": 12,
        "snapshots/deep/packs/x": 13,  # names the folder between inside a listed one
        "snapshotsz/t": 14,
        "tmp/u": 15,
    }
    for i, (key, size) in enumerate(objects.items()):
        assert backend.put(key, _blob(i, size))
    folders = ("snapshots/", "locks/", "repairs/")
    items = list(backend.list_several(folders))
    assert len(items) == len({k for k, _ in items}), "a key listed twice"
    assert dict(items) == {k: s for k, s in objects.items() if k.startswith(folders)}
    assert dict(backend.list_several(["locks/"])) == {"locks/l1": 6, "locks/l2": 7}
    assert dict(backend.list_several(["locks/", "nothing/"])) == {"locks/l1": 6, "locks/l2": 7}
    for bad in ([""], ["packs/", "packs/00/"], ["locks"], ["locks/", "../"]):
        with pytest.raises(ValueError):
            list(backend.list_several(bad))


def test_invalid_list_prefixes_are_refused(backend: Backend) -> None:
    """A prefix is "" (everything) or a folder ending in "/"; anything else is a caller's bug."""
    backend.put("packs/00/a", b"a")
    for prefix in ("packs", "packs/0", "/", "/etc/", "../", "packs/../", "packs//", "./"):
        with pytest.raises(ValueError):
            list(backend.list(prefix))


def test_an_interrupted_put_leaves_no_object(kit: Kit, backend: Backend) -> None:
    """What a put killed half-way leaves (a temp file, on disk) is never listed, never read and
    never blocks the next put of that key."""
    data = _blob(11, 9000)
    backend.put("packs/00/other", b"o")
    kit.leave_interrupted_put(backend, "packs/00/obj", data)
    kit.leave_interrupted_put(backend, "config", data)
    assert dict(backend.list("")) == {"packs/00/other": 1}
    assert not backend.exists("packs/00/obj")
    with pytest.raises(ObjectMissing):
        backend.get("packs/00/obj")
    assert backend.put("packs/00/obj", data) is True
    assert backend.get("packs/00/obj") == data
    assert dict(backend.list("packs/")) == {"packs/00/other": 1, "packs/00/obj": len(data)}


def test_list_while_putting_shows_only_whole_objects(backend: Backend) -> None:
    """A listing that runs while objects are written shows each one whole or not at all."""
    sizes = {f"packs/{i % 4:02x}/{i:04d}": 1000 + 37 * i for i in range(120)}
    done = threading.Event()
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            for i, (key, size) in enumerate(sizes.items()):
                backend.put(key, _blob(i, size))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)
        finally:
            done.set()

    t = threading.Thread(target=writer)
    t.start()
    while not done.is_set():
        for key, size in backend.list("packs/"):
            assert sizes.get(key) == size, f"listed {key} with {size} bytes"
    t.join()
    assert not failures, failures
    assert dict(backend.list("packs/")) == sizes


def test_exists(backend: Backend) -> None:
    assert backend.exists("config") is False
    backend.put("config", b"c")
    backend.put("packs/00/a", b"")
    assert backend.exists("config") is True
    assert backend.exists("packs/00/a") is True  # an empty object exists
    assert backend.exists("packs/00") is False  # a folder is not an object
    assert backend.exists("packs/00/b") is False
    backend.delete("config")
    assert backend.exists("config") is False


def test_delete(backend: Backend) -> None:
    backend.put("locks/l1", b"lock")
    backend.put("locks/l2", b"other")
    backend.delete("locks/l1")
    assert not backend.exists("locks/l1")
    with pytest.raises(ObjectMissing):
        backend.get("locks/l1")
    assert dict(backend.list("locks/")) == {"locks/l2": 5}
    backend.delete("locks/l1")  # already gone: not an error
    backend.delete("locks/never")
    backend.delete("nowhere/at/all")
    assert backend.put("locks/l1", b"again") is True  # a deleted key can be put afresh
    assert backend.get("locks/l1") == b"again"


def test_deletes_in_a_row_are_done_when_the_block_ends(backend: Backend) -> None:
    """deleting() (gc's and forget's deletes, made durable together) changes no answer: each
    delete is done when it returns, the block nests, and one that raises still ends it."""
    for i in range(6):
        backend.put(f"index/{i:064x}", b"entry %d" % i)
    with backend.deleting():
        backend.delete(f"index/{0:064x}")
        assert not backend.exists(f"index/{0:064x}")
        with backend.deleting():  # nested: the outer one makes them durable
            backend.delete(f"index/{1:064x}")
        backend.delete("index/never")
    with pytest.raises(KeyError), backend.deleting():
        backend.delete(f"index/{2:064x}")
        raise KeyError("a failure part way")
    assert sorted(k for k, _ in backend.list("index/")) == [f"index/{i:064x}" for i in (3, 4, 5)]


def test_remove_says_whether_the_object_was_there(backend: Backend) -> None:
    """remove deletes like delete and answers whether the key was stored: True for an object
    put by this backend or another one on the same storage, False once it is gone."""
    backend.put("locks/l1", b"lock")
    backend.put("locks/l2", b"other")
    assert backend.remove("locks/l1") is True
    assert not backend.exists("locks/l1")
    assert backend.remove("locks/l1") is False
    assert backend.remove("locks/never") is False
    backend.delete("locks/l2")
    assert backend.remove("locks/l2") is False  # put here, then deleted: gone
    assert backend.put("locks/l2", b"again") is True
    assert backend.remove("locks/l2") is True
    assert dict(backend.list("locks/")) == {}
    with pytest.raises(ValueError):
        backend.remove("../x")


BAD_KEYS = ["", "/", "/etc/passwd", "..", ".", "../x", "a/../b", "a/./b", "a//b", "a/", "./a"]


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_invalid_keys_are_refused(backend: Backend, key: str) -> None:
    """Keys are relative POSIX paths of non-empty components, none "." or "..": a key that could
    name something outside the repository is refused before anything is touched."""
    backend.put("config", b"c")
    calls: dict[str, Callable[[], object]] = {
        "put": lambda: backend.put(key, b"x"),
        "get": lambda: backend.get(key),
        "ranged get": lambda: backend.get(key, 0, 1),
        "exists": lambda: backend.exists(key),
        "delete": lambda: backend.delete(key),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match="invalid backend key"):
            call()
            pytest.fail(f"{name} accepted {key!r}")
    assert dict(backend.list("")) == {"config": 1}


# -- errors ----------------------------------------------------------------------------------------

ERRNOS = [
    pytest.param(code, cls, id=errno.errorcode[code])
    for code, cls in (
        (errno.ENOSPC, StorageFull),
        (errno.EDQUOT, StorageFull),
        (errno.EACCES, AccessDenied),
        (errno.EPERM, AccessDenied),
        (errno.EROFS, AccessDenied),
        (errno.EIO, CasnapError),
    )
]


@pytest.mark.parametrize(("code", "cls"), ERRNOS)
def test_an_oserror_inside_a_backend_is_a_casnap_error(
    kit: Kit, tmp_path: Path, code: int, cls: type[CasnapError]
) -> None:
    """Whatever OSError a backend's own code meets surfaces as the CasnapError a user should see
    (a full disk StorageFull, no permission AccessDenied), naming the key and the backend, with
    the OSError kept as its cause."""

    def fail(key: str) -> OSError:
        return OSError(code, os.strerror(code), key)

    class Failing(kit.cls):  # type: ignore[name-defined,misc]
        """The backend, with storage that fails every call."""

        def put(self, key: str, data: bytes | memoryview) -> bool:
            raise fail(key)

        def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
            raise fail(key)

        def list(self, prefix: str):  # type: ignore[no-untyped-def]
            yield from ()
            raise fail(prefix)

        def delete(self, key: str) -> None:
            raise fail(key)

    b = kit.make(Failing, tmp_path)
    calls: dict[str, tuple[str, Callable[[], object]]] = {
        "put": ("writing packs/00/a", lambda: b.put("packs/00/a", b"x")),
        "get": ("reading packs/00/b", lambda: b.get("packs/00/b")),
        "ranged get": ("reading packs/00/c", lambda: b.get("packs/00/c", 4, 8)),
        "list": ("listing index/", lambda: list(b.list("index/"))),
        "delete": ("deleting locks/d", lambda: b.delete("locks/d")),
    }
    for name, (what, call) in calls.items():
        with pytest.raises(CasnapError) as info:
            call()
        assert type(info.value) is cls, f"{name}: {info.value!r}"
        assert str(info.value).startswith(f"{what} in {b.location}: "), str(info.value)
        assert isinstance(info.value.__cause__, OSError), f"{name}: cause lost"


def test_close(kit: Kit, backend: Backend) -> None:
    """close releases what the backend holds, may be called again, and what was stored stays
    for the next backend opened on the same storage."""
    backend.put("config", b"cfg")
    backend.put("packs/00/a", b"pack")
    backend.close()
    backend.close()
    again = kit.reopen(backend)
    assert again.get("config") == b"cfg"
    assert dict(again.list("")) == {"config": 3, "packs/00/a": 4}
    again.close()


# -- the local backend against real failures ------------------------------------------------------

PROBE = r"""
import json, subprocess, sys
from pathlib import Path
from casnap.backends import LocalBackend
from casnap.errors import CasnapError

root, size = Path(sys.argv[1]), int(sys.argv[3])
b = LocalBackend(root)
steps = {
    "setup": lambda: b.put("packs/00/old", b"old") and b.put("config", b"{}"),
    "read-only": lambda: subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True),
    "put": lambda: b.put("packs/00/new", bytes(size)),
    "put-new-folder": lambda: b.put("packs/ff/new", bytes(size)),
    "get": lambda: b.get("packs/00/old"),
    "list": lambda: list(b.list("packs/")),
    "delete": lambda: b.delete("packs/00/old"),
}
out = {}
for name in sys.argv[2].split(","):
    try:
        steps[name]()
        out[name] = "ok"
    except CasnapError as exc:
        out[name] = f"{type(exc).__name__}({type(exc.__cause__).__name__}): {exc}"
out["files"] = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
print(json.dumps(out))
"""


def test_local_full_disk_is_storage_full(tmp_path: Path) -> None:
    """A put into a really full filesystem (a 2 MiB tmpfs) is StorageFull naming the object,
    leaves no temp file, and the objects already there stay readable and deletable."""
    root = tmp_path / "small"
    calls = "setup,put,get,list,delete"
    outcome = in_small_tmpfs(root, PROBE, str(root), calls, str(3 << 20))
    assert outcome["put"].startswith("StorageFull(OSError): writing "), outcome
    assert "packs/00/new" in outcome["put"] and "no space left on device" in outcome["put"]
    assert outcome["get"] == outcome["list"] == outcome["delete"] == "ok"
    assert outcome["files"] == ["config"]  # the old object deleted, nothing half-written left


def test_local_read_only_filesystem_is_access_denied(tmp_path: Path) -> None:
    root = tmp_path / "small"
    calls = "setup,read-only,put,put-new-folder,get,list,delete"
    outcome = in_small_tmpfs(root, PROBE, str(root), calls, "10")
    for call in ("put", "put-new-folder", "delete"):
        assert outcome[call].startswith("AccessDenied(OSError): "), outcome
    assert "Read-only file system" in outcome["put"]
    assert outcome["get"] == outcome["list"] == "ok"
    assert outcome["files"] == ["config", "packs/00/old"]


def _probe(prefix: list[str], root: Path, calls: str) -> dict[str, str]:
    """Run PROBE's calls on a LocalBackend at root in a subprocess started through prefix."""
    proc = subprocess.run(
        [*prefix, sys.executable, "-c", PROBE, str(root), calls, "10"],
        env=casnap_env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_local_permission_denied_is_access_denied(tmp_path: Path) -> None:
    """Folders and objects the process may not enter or read: every call is AccessDenied (a
    listing never passes over a folder it cannot read as if it were empty)."""
    prefix = unprivileged()
    root = tmp_path / "repo"
    assert _probe([], root, "setup")["setup"] == "ok"
    packs = root / "packs"
    (packs / "00").chmod(0o500)  # may read, may not add or remove
    (packs / "00" / "old").chmod(0)
    try:
        outcome = _probe(prefix, root, "put,get,delete")
        (packs / "00").chmod(0)
        outcome.update(_probe(prefix, root, "list"))
    finally:
        (packs / "00").chmod(0o700)
        (packs / "00" / "old").chmod(0o600)
    for call in ("put", "get", "delete", "list"):
        assert outcome[call].startswith("AccessDenied(PermissionError): "), outcome
        assert "Permission denied" in outcome[call]
    assert "packs/" in outcome["list"]
    assert not temp_files(root)


def test_local_an_object_that_is_a_fifo_is_damage_not_a_wait(tmp_path: Path) -> None:
    """A FIFO where an object should be (opening it to read would wait for a writer forever) is
    read as damage: a manifest is passed over by `log`, which names it, and stops gc with exit 5,
    an index file is a problem
    `verify` reports, and a lock is an unreadable one `unlock` removes."""
    from casnap.committer import commit
    from casnap.repository import Repository
    from tests.helpers_reliability import run_casnap, small_app, small_config

    data = small_app(tmp_path / "data")
    root = tmp_path / "repo"
    commit(Repository.init(root, small_config()), data)
    fake = "ab" * 32
    for folder in ("snapshots", "index", "locks"):
        (root / folder).mkdir(exist_ok=True)
        os.mkfifo(root / folder / fake)
    env = casnap_env(CASNAP_LOCK_WAIT="0")
    where = ["--repo", str(root), "--data", str(data)]

    log = run_casnap([*where, "--no-lock", "log"], env=env, timeout=60)
    assert log.returncode == 0 and f"snapshots/{fake}" in log.stderr, log.stderr
    unlocked = run_casnap([*where, "unlock"], env=env, timeout=60)
    assert unlocked.returncode == 0, unlocked.stderr
    assert not (root / "locks" / fake).exists()
    gc = run_casnap([*where, "gc"], env=env, timeout=60)
    assert gc.returncode == 5 and f"snapshots/{fake}" in gc.stderr, gc.stderr
    os.unlink(root / "snapshots" / fake)
    verify = run_casnap([*where, "verify"], env=env, timeout=60)
    assert verify.returncode == 9 and "Traceback" not in verify.stderr, verify.stderr
    assert f"index/{fake}" in verify.stdout + verify.stderr


@pytest.mark.parametrize("damage", ["folder-dangling-link", "folder-is-a-fifo", "object-dangling"])
def test_local_a_snapshots_folder_or_manifest_gone_behind_a_link_is_damage_not_absence(
    tmp_path: Path, damage: str
) -> None:
    """`snapshots/` turned into a link to nothing (a disk not mounted) or a FIFO is a listing
    that cannot be read, never an empty folder: `log` stops with exit 5. A manifest that is a
    link to nothing is a damaged one, never a forgotten one: `log` names it as it passes over
    it. Either way gc stops before it deletes the packs the snapshots it cannot see need."""
    from casnap.committer import commit
    from casnap.repository import Repository
    from tests.helpers_reliability import run_casnap, small_app, small_config

    data = small_app(tmp_path / "data")
    root = tmp_path / "repo"
    sid = commit(Repository.init(root, small_config()), data).id
    snapshots = root / "snapshots"
    if damage == "object-dangling":
        (snapshots / sid).rename(tmp_path / "moved")
        os.symlink(tmp_path / "elsewhere" / sid, snapshots / sid)
    else:
        snapshots.rename(tmp_path / "moved")
        if damage == "folder-is-a-fifo":
            os.mkfifo(snapshots)
        else:
            os.symlink(tmp_path / "unmounted" / "snapshots", snapshots)
    packs = sorted(p.name for p in (root / "packs").rglob("*") if p.is_file())
    backend = LocalBackend(root)
    with pytest.raises(IntegrityError):
        if damage == "object-dangling":  # listed, and its read says why it cannot be read
            assert [k for k, _ in backend.list("snapshots/")] == [f"snapshots/{sid}"]
            backend.get(f"snapshots/{sid}")
        list(backend.list("snapshots/"))

    where = ["--repo", str(root), "--data", str(data)]
    env = casnap_env(CASNAP_LOCK_WAIT="0")
    log = run_casnap([*where, "log"], env=env, timeout=60)
    assert log.returncode == (0 if damage == "object-dangling" else 5), log.stderr
    assert "Traceback" not in log.stderr, log.stderr
    said = [line for line in log.stderr.splitlines() if line.startswith("casnap: ")]
    assert len(said) == 1 and "snapshots" in said[0], log.stderr
    gc = run_casnap([*where, "gc"], env=env, timeout=60)
    assert gc.returncode == 5 and "Traceback" not in gc.stderr, gc.stderr
    assert sorted(p.name for p in (root / "packs").rglob("*") if p.is_file()) == packs


def test_local_a_file_where_a_folder_of_objects_belongs_is_damage_named_on_put(
    tmp_path: Path,
) -> None:
    """A regular file in place of `index/` (or `packs/ab/`): a put there is damage naming the
    folder (exit 5), not an operating system's "File exists" (exit 1)."""
    backend = LocalBackend(tmp_path / "repo")
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "index").write_bytes(b"x")
    with pytest.raises(IntegrityError, match=r"index is not a folder"):
        backend.put("index/" + "ab" * 32, b"data")
    assert (tmp_path / "repo" / "index").read_bytes() == b"x"


@pytest.mark.parametrize("folder", ["snapshots", "index", "packs"])
def test_local_a_file_where_a_folder_of_objects_belongs_is_damage_not_emptiness(
    tmp_path: Path, folder: str
) -> None:
    """A regular file standing where the repository's snapshots/, index/ or packs/ belongs
    listed as an empty folder: `gc` then took every pack for unused and deleted them all."""
    from casnap.committer import commit
    from casnap.repository import Repository
    from tests.helpers_reliability import run_casnap, small_app, small_config

    data = small_app(tmp_path / "data")
    root = tmp_path / "repo"
    commit(Repository.init(root, small_config()), data)
    packs = sorted(p.relative_to(root) for p in (root / "packs").rglob("*") if p.is_file())
    os.rename(root / folder, tmp_path / "moved")
    (root / folder).write_bytes(b"not a folder")
    gc = run_casnap(["--repo", str(root), "--data", str(data), "gc"], timeout=60)
    assert gc.returncode == 5 and f"{root / folder} is not a folder" in gc.stderr, gc.stderr
    (root / folder).unlink()
    os.rename(tmp_path / "moved", root / folder)
    assert sorted(p.relative_to(root) for p in (root / "packs").rglob("*") if p.is_file()) == packs
