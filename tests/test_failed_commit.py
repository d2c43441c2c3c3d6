"""A commit that fails (a full disk above all) takes back the packs it wrote and never indexed, so
the space is there for the next commit without a gc; a first commit that fails leaves no
repository behind. A pack some index file names is never deleted."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap import collector
from casnap.backends import Backend, LocalBackend, MemoryBackend
from casnap.chunkindex import decode_index
from casnap.cli import cli
from casnap.committer import commit
from casnap.errors import CasnapError, StorageFull
from casnap.packs import pack_key
from casnap.repository import Repository
from tests import faults as F
from tests.conftest import evolve_app
from tests.helpers_reliability import Ledger, check_healthy, run_casnap, small_app, small_config
from tests.test_hostile import in_small_tmpfs


def unindexed_packs(backend: Backend) -> set[str]:
    """Keys of the packs no index file names."""
    named: set[str] = set()
    for key, _ in backend.list("index/"):
        named |= {pack_key(p) for p in decode_index(key, backend.get(key))[0]}
    return {k for k, _ in backend.list("packs/")} - named


def keys(backend: Backend) -> set[str]:
    return {k for k, _ in backend.list("") if not k.startswith("locks/")}


def make_world(kind: str, tmp_path: Path) -> tuple[Backend, Ledger, Path]:
    backend: Backend = LocalBackend(tmp_path / "repo") if kind == "local" else MemoryBackend()
    # packs of 4 KiB: the commit of the evolved data writes more than four of them
    repo = Repository.init_backend(backend, small_config(4096), tmp_path / "tmp")
    data = small_app(tmp_path / "data")
    ledger = Ledger()
    ledger.commit(repo, data, message="s0")
    evolve_app(data, 1)
    return backend, ledger, data


def _raise_enospc(key: str) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), key)


# where the disk fills, and whether the commit's packs were indexed by then
FAULTS = {
    "second-pack": (F.no_space(2, "packs/"), False),
    "fourth-pack": (F.no_space(4, "packs/"), False),
    "index": (F.no_space(1, "index/"), False),
    # the index file landed, then the commit failed: no other snapshot came meanwhile, so
    # nothing can use its chunks, and the index file goes with its packs
    "after-index": (F.call_after("put", 1, _raise_enospc, "index/"), False),
    "manifest": (F.no_space(1, "snapshots/"), False),
}


@pytest.mark.parametrize("kind", ["local", "memory"])
@pytest.mark.parametrize("where", list(FAULTS))
def test_failed_commit_leaves_no_unindexed_pack(kind: str, where: str, tmp_path: Path) -> None:
    backend, ledger, data = make_world(kind, tmp_path)
    before = keys(backend)
    fault, indexed = FAULTS[where]
    wrapped = F.FaultyBackend(backend, [fault])
    with pytest.raises(StorageFull):
        commit(Repository.open_backend(wrapped, tmp_path / "tmp"), data)
    assert wrapped.fired
    assert not unindexed_packs(backend)
    if indexed:  # kept: the next commit finds the chunks stored already
        assert {k for k in keys(backend) - before if k.startswith("packs/")}
    else:  # the repository is exactly as before the commit
        assert keys(backend) == before
    check_healthy(backend, ledger, tmp_path / "check", data)  # the next commit, gc, verify


class SmallDisk(LocalBackend):
    """A local repository on a disk of `capacity` bytes: a put that does not fit fails with
    ENOSPC, as the disk would (what a failed write leaves behind still takes its space)."""

    def __init__(self, root: Path, capacity: int) -> None:
        super().__init__(root)
        self.capacity = capacity

    def used(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def put(self, key: str, data: bytes | memoryview) -> bool:
        if self.used() + len(data) > self.capacity:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), key)
        return super().put(key, data)


def test_next_commit_fits_once_space_is_back_without_a_gc(tmp_path: Path) -> None:
    """The disk fills halfway through a commit. Once as much space is free again as the next
    commit needs, it succeeds: the failed commit took its packs back (left there, they would
    take the space, and every commit would fail until a gc)."""
    backend, ledger, data = make_world("local", tmp_path)
    root = tmp_path / "repo"
    used = SmallDisk(root, 0).used()
    probe = tmp_path / "probe"
    shutil.copytree(root, probe)
    commit(Repository.open(probe), data)
    need = SmallDisk(probe, 0).used() - used
    assert need > 20_000  # several packs
    with pytest.raises(StorageFull):
        commit(Repository.open_backend(SmallDisk(root, used + need // 2), tmp_path / "tmp"), data)
    assert SmallDisk(root, 0).used() <= used + 4096  # a lock at most
    evolve_app(data, 2)  # the app went on writing: the next commit stores other packs
    shutil.rmtree(probe)
    shutil.copytree(root, probe)
    commit(Repository.open(probe), data)
    need = SmallDisk(probe, 0).used() - used
    roomy = SmallDisk(root, used + need + 4096)
    ledger.commit(Repository.open_backend(roomy, tmp_path / "tmp"), data)
    check_healthy(backend, ledger, tmp_path / "check", data, step=3)


def test_failed_commit_leaves_its_packs_to_gc_while_another_holds_a_lock(tmp_path: Path) -> None:
    """The packs are deleted under the exclusive lock only (a concurrent commit may have made the
    very same pack and be about to index it): while another process holds a lock they stay, and
    the next gc removes them."""
    backend, ledger, data = make_world("local", tmp_path)
    before = keys(backend)
    wrapped = F.FaultyBackend(backend, [F.no_space(1, "index/")])
    with Repository.open(tmp_path / "repo").lock("checkout"):
        with pytest.raises(StorageFull):
            commit(Repository.open_backend(wrapped, tmp_path / "tmp"), data)
        left = unindexed_packs(backend)
        assert left
    report = collector.collect(Repository.open(tmp_path / "repo"))
    assert report.packs_unindexed == len(left)
    assert not unindexed_packs(backend) and keys(backend) == before
    check_healthy(backend, ledger, tmp_path / "check", data)


def _commit(root: Path, data: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--repo", str(root), "--data", str(data), "commit"])
    return result.exit_code, result.output


@pytest.mark.parametrize("placeholder", [None, "README.md"])
def test_failed_first_commit_leaves_no_repository(
    placeholder: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = small_app(tmp_path / "data", rows=400)
    root = tmp_path / "backups"
    if placeholder:
        root.mkdir()
        (root / placeholder).write_text("backups of the app\n")
    # small packs, so the commit writes several
    monkeypatch.setattr("casnap.config.default_config", small_config)
    with F.faulty_local_backends("put:enospc:2:packs/"):
        code, out = _commit(root, data)
    assert code == 8, out
    if placeholder:
        assert sorted(p.name for p in root.iterdir()) == [placeholder]
    else:
        assert not root.exists()
    code, out = _commit(root, data)
    assert code == 0, out
    assert len(Repository.open(root).snapshots()) == 1


def test_failed_first_commit_into_an_initialised_repository_keeps_it(tmp_path: Path) -> None:
    """`casnap init` made the repository: the failed commit takes back its packs, not the
    repository."""
    data = small_app(tmp_path / "data", rows=400)
    root = tmp_path / "backups"
    Repository.init(root, small_config())
    with F.faulty_local_backends("put:enospc:2:packs/"):
        code, out = _commit(root, data)
    assert code == 8, out
    assert (root / "config").is_file()
    assert not unindexed_packs(LocalBackend(root))
    assert not [p for p in (root / "packs").rglob("*") if p.is_file()]
    code, out = _commit(root, data)
    assert code == 0, out


def test_a_commit_that_waited_for_a_removed_repository_refuses(tmp_path: Path) -> None:
    """A commit that opened a repository which was then removed (a failed first commit of
    another process took it back) stops instead of writing into a folder without a config."""
    data = small_app(tmp_path / "data")
    repo = Repository.init(tmp_path / "repo", small_config())
    (tmp_path / "repo" / "config").unlink()
    with pytest.raises(CasnapError, match="no casnap repository"):
        commit(repo, data)
    assert not (tmp_path / "repo" / "packs").exists()


REAL_DISK = r"""
import json, os, shutil, subprocess, sys
from pathlib import Path
from casnap.chunkindex import decode_index
from casnap.repository import Repository
from tests.helpers_reliability import small_config
small, data = Path(sys.argv[1]), Path(sys.argv[2])
repo = small / "repo"
def run(*args):
    p = subprocess.run([sys.executable, "-m", "casnap", "--repo", str(repo), "--data", str(data),
                        *args], capture_output=True, text=True)
    return [p.returncode, p.stderr]
def unindexed():
    named = set()
    for p in (repo / "index").iterdir():
        named |= {x.hex() for x in decode_index(p.name, p.read_bytes())[0]}
    packs = [p.name for p in (repo / "packs").rglob("*") if p.is_file()]
    return sorted(p for p in packs if p not in named)
res = {"first": run("commit")}  # does not fit: 3 MiB of incompressible data
res["left_by_first"] = sorted(str(p) for p in small.rglob("*"))
(data / "big.bin").unlink()
shutil.rmtree(repo, ignore_errors=True)  # (nothing to remove, unless the first commit left it)
Repository.init(repo, small_config(256 * 1024))
res["second"] = run("commit")
(data / "big.bin").write_bytes(os.urandom(2000 << 10))  # more than is free
res["third"] = run("commit")  # fills the disk halfway through
res["unindexed"] = unindexed()
(data / "big.bin").write_bytes(os.urandom(300 << 10))
res["fourth"] = run("commit")  # fits, unless the third commit's packs were left behind
res["snapshots"] = len(list((repo / "snapshots").iterdir()))
print(json.dumps(res))
"""


def test_full_disk_for_real(tmp_path: Path) -> None:
    """On a 2 MiB filesystem: a first commit that does not fit leaves no repository; a later one
    that fills the disk halfway takes its packs back, so the next commit that fits succeeds."""
    data = small_app(tmp_path / "data")
    (data / "big.bin").write_bytes(os.urandom(3 << 20))
    res = in_small_tmpfs(tmp_path / "small", REAL_DISK, str(tmp_path / "small"), str(data))
    assert res["first"][0] == 8 and "no space left on device" in res["first"][1], res
    left_by_first = res.pop("left_by_first")
    assert res["second"][0] == 0, res
    assert res["third"][0] == 8, res
    assert res["unindexed"] == [], res
    assert res["fourth"][0] == 0, res
    assert res["snapshots"] == 2
    assert left_by_first == []


NEARLY_FULL = r"""
import json, os, shutil, subprocess, sys
from pathlib import Path
small, data, src = (Path(p) for p in sys.argv[1:4])
def run(repo, *args):
    p = subprocess.run([sys.executable, "-m", "casnap", "--repo", str(repo), "--data", str(data),
                        *args], capture_output=True, text=True)
    return [p.returncode, p.stderr]
res = []
for free_pages in range(0, 4):  # room for the config, not for the first lock, or neither
    filler = small / "filler"
    filler.unlink(missing_ok=True)
    st = os.statvfs(small)
    with open(filler, "wb") as f:
        f.write(bytes(st.f_bavail * st.f_frsize - free_pages * 4096))
    new = small / f"new{free_pages}"
    commit = run(new, "commit")
    res.append([free_pages, "commit", commit, sorted(str(p) for p in small.rglob("*"))])
    copy = run(src, "copy", "--to", str(new))
    res.append([free_pages, "copy", copy, sorted(str(p) for p in small.rglob("*"))])
print(json.dumps(res))
"""


def test_a_disk_full_at_the_first_lock_leaves_no_repository(tmp_path: Path) -> None:
    """A first commit, or a copy into a missing repository, on a disk with room for the new
    repository's config but not for its first lock left config, keys/ and locks/ behind: the
    rollback that takes a new repository back needs the exclusive lock, which did not fit
    either. A repository made for the command, holding no lock and no snapshot, is now taken
    back without one."""
    data = small_app(tmp_path / "data")
    src = tmp_path / "src"
    assert run_casnap(["--repo", str(src), "--data", str(data), "commit"]).returncode == 0
    small = tmp_path / "small"
    res = in_small_tmpfs(small, NEARLY_FULL, str(small), str(data), str(src))
    failed = 0
    for free_pages, what, (code, err), left in res:
        assert code == StorageFull.exit_code, (free_pages, what, err)
        assert err.count("\n") == 1 and "no space left" in err, err
        assert left == [str(small / "filler")], (free_pages, what, err, left)
        failed += "locks/" in err
    assert failed, res  # the lock's write was reached


def test_a_commit_past_the_file_size_limit_is_a_storage_error(tmp_path: Path) -> None:
    """A pack larger than the process may write (ulimit -f, or a filesystem's largest file, as
    FAT's 4 GiB) is refused with EFBIG: one line and the storage exit code, as a full disk, and
    the repository keeps its earlier snapshots."""
    import resource
    import subprocess
    import sys

    data = tmp_path / "data"
    data.mkdir()
    (data / "small.txt").write_text("kept\n")
    repo = tmp_path / "repo"
    base = [sys.executable, "-m", "casnap", "--repo", str(repo), "--data", str(data)]
    assert subprocess.run([*base, "commit"], capture_output=True).returncode == 0
    (data / "big.bin").write_bytes(os.urandom(3 << 20))  # a pack past the 1 MiB limit

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    p = subprocess.run([*base, "commit"], capture_output=True, text=True, preexec_fn=limit)
    assert p.returncode == StorageFull.exit_code, p.stderr
    assert p.stderr.count("\n") == 1 and "too large" in p.stderr and "Traceback" not in p.stderr
    (data / "big.bin").unlink()
    v = subprocess.run([*base, "verify"], capture_output=True, text=True)
    assert v.returncode == 0, v.stderr


@pytest.mark.parametrize("placeholder", [None, "README.md"])
def test_a_disk_full_at_a_new_repository_s_tmp_leaves_no_repository(
    placeholder: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk with room for a new repository's config but not for its tmp/ folder (an inode
    short): an init, or a first commit that made the repository, failed (exit 8) and left the
    config alone behind, so the commit's failure took nothing back and an init retried once
    there was room said the location already held a repository (exit 3). The init is taken
    back whole: the folder is as it was, and an init then succeeds."""
    from casnap import fsutil

    real = fsutil.make_dirs

    def full(path: Path, durable: bool = True) -> None:
        if Path(path).name == "tmp":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, durable)

    data = small_app(tmp_path / "data")
    for command in ("init", "commit"):
        root = tmp_path / command
        if placeholder:
            root.mkdir()
            (root / placeholder).write_text("backups of the app\n")
        monkeypatch.setattr(fsutil, "make_dirs", full)
        result = CliRunner().invoke(cli, ["--repo", str(root), "--data", str(data), command])
        assert result.exit_code == StorageFull.exit_code, result.output
        assert "no space left" in result.output and "tmp" in result.output, result.output
        left = sorted(p.name for p in root.iterdir()) if root.exists() else None
        assert left == ([placeholder] if placeholder else None), (command, left)
        monkeypatch.setattr(fsutil, "make_dirs", real)
        again = CliRunner().invoke(cli, ["--repo", str(root), "--data", str(data), command])
        assert again.exit_code == 0, again.output


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may mount")
def test_a_commit_short_of_inodes_says_inodes_ran_out(tmp_path: Path) -> None:
    """A repository's file system with free blocks but no free inode failed a commit with
    'no space left on device', which `df` contradicts: the line says the inodes ran out."""
    from tests.test_failed_swap import tmpfs_mounted

    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("first\n")
    vol = tmp_path / "vol"
    vol.mkdir()
    with tmpfs_mounted(vol, "8m,nr_inodes=64"):
        repo_dir = vol / "repo"
        commit(Repository.init(repo_dir), data)
        (data / "notes.txt").write_text("second\n")
        n = 0
        while os.statvfs(vol).f_ffree > 0:
            (vol / f"filler{n}").touch()
            n += 1
        with pytest.raises(StorageFull) as caught:
            commit(Repository.open(repo_dir), data)
        said = str(caught.value)
        assert "no free inodes left on device (see df -i)" in said, said
        assert "no space left" not in said, said
