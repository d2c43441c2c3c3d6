"""A checkout whose swap cannot be completed changes nothing: a predictable failure (a folder it
may not write, an immutable or mounted-over file) is refused before the first rename, and a rename
that fails part way is undone, a replaced database given back with its -wal."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
import stat
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from casnap import preflight
from casnap.committer import commit
from casnap.constants import TEMP_PREFIX
from casnap.errors import AccessDenied, CasnapError, SourceError
from casnap.repository import Repository
from casnap.restorer import checkout
from tests.test_hostile import cli_unprivileged

ROOT = os.geteuid() == 0
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
IMMUTABLE = 0x10

CRASHING_APP = """
import os, signal, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA wal_autocheckpoint=0")
for i in range(500):
    db.execute("INSERT INTO k(v) VALUES (?)", (f"committed {i}",))
os.kill(os.getpid(), signal.SIGKILL)  # its 500 committed rows stay in the -wal
"""


def rows(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return int(conn.execute("SELECT count(*) FROM k").fetchone()[0])


def db_with_committed_wal(tmp_path: Path) -> tuple[Repository, str, Path]:
    """A repository holding a WAL database of 3000 rows; an app then committed 500 more, which
    sit only in the -wal beside it (the app died: nothing checkpointed them)."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    db = data / "w.db"
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE k(id INTEGER PRIMARY KEY, v TEXT)")
        conn.executemany("INSERT INTO k(v) VALUES (?)", [(f"base {i}",) for i in range(3000)])
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (data / "notes.txt").write_text("notes v1\n")
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data).id
    subprocess.run([sys.executable, "-c", CRASHING_APP, str(db)], check=False)
    (data / "notes.txt").write_text("notes v2\n")
    assert (data / "w.db-wal").stat().st_size > 0 and rows(db) == 3500
    return repo, sid, data


def state(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Bytes, mtime and inode of every file under root but a database's -shm (whose marks any
    reader rewrites) and casnap's temp files."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith("-shm") and not p.name.startswith(TEMP_PREFIX)
    }


def temp_names(*roots: Path) -> list[Path]:
    return [p for r in roots for p in r.rglob(f"{TEMP_PREFIX}*")]


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """path made immutable (chattr +i) for the block; skips the test where that cannot be."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            flags = struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(8))[:4])[0]
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags | IMMUTABLE) + bytes(4))
        except OSError as exc:
            pytest.skip(f"cannot make a file immutable here: {exc}")
        try:
            yield
        finally:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags) + bytes(4))
    finally:
        os.close(fd)


@contextlib.contextmanager
def bind_mounted(source: Path, onto: Path) -> Iterator[None]:
    """source bind-mounted over the file onto for the block (as a container's volume of one file
    is); skips the test where mounting is not allowed."""
    done = subprocess.run(["mount", "--bind", str(source), str(onto)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(onto)], check=True)


@contextlib.contextmanager
def after_renames_into(folder: Path, n: int, act: Any) -> Iterator[None]:
    """act() runs right after the nth rename into folder (by descriptor, as a checkout swaps
    files in): the moment part way through a swap."""
    real = os.replace
    seen = [0]

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        real(src, dst, **kwargs)
        fd = kwargs.get("dst_dir_fd")
        if fd is not None and os.readlink(f"/proc/self/fd/{fd}") == str(folder):
            seen[0] += 1
            if seen[0] == n:
                act()

    os.replace = replace  # type: ignore[assignment]
    try:
        yield
    finally:
        os.replace = real


# -- bug: the live database lost its -wal when its replacement failed ------------------------------


def test_a_database_whose_rename_fails_keeps_its_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stale -wal was removed before the restored database was renamed over the old one: a
    rename that then failed (EBUSY: a file mounted over) left the old database without the
    transactions its -wal held. Now the side files come back and the database keeps them."""
    repo, sid, data = db_with_committed_wal(tmp_path)
    before = state(data)
    real = os.replace

    def busy(src: Any, dst: Any, **kwargs: Any) -> None:
        if dst == "w.db" and kwargs.get("dst_dir_fd") is not None:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), dst)
        real(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", busy)
    with pytest.raises(CasnapError, match="left as it was") as err:
        checkout(repo, sid, data, safety_snapshot=False)
    monkeypatch.undo()
    assert "w.db" in str(err.value)
    assert rows(data / "w.db") == 3500
    assert state(data) == before
    assert not temp_names(data, tmp_path)


@pytest.mark.skipif(not ROOT, reason="only root may make a file immutable")
def test_an_immutable_database_is_refused_before_its_wal_is_touched(tmp_path: Path) -> None:
    repo, sid, data = db_with_committed_wal(tmp_path)
    before = state(data)
    with immutable(data / "w.db"):
        with pytest.raises(AccessDenied, match="immutable") as err:
            checkout(repo, sid, data, safety_snapshot=False)
    assert str(data / "w.db") in str(err.value) and "nothing was changed" in str(err.value)
    assert rows(data / "w.db") == 3500
    assert state(data) == before
    assert not temp_names(data, tmp_path)


@pytest.mark.skipif(not ROOT, reason="only root may mount")
def test_a_bind_mounted_database_is_refused_before_its_wal_is_touched(tmp_path: Path) -> None:
    """A file of the same filesystem mounted over the database (docker -v ./w.db:/data/w.db):
    same device, so only the mount table tells; its rename fails with EBUSY."""
    (tmp_path / "vol").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "vol" / "w.db").touch()
    (tmp_path / "data" / "w.db").touch()
    with bind_mounted(tmp_path / "vol" / "w.db", tmp_path / "data" / "w.db"):
        repo, sid, data = db_with_committed_wal(tmp_path)
        before = state(data)
        with pytest.raises(SourceError, match="mount point") as err:
            checkout(repo, sid, data)
        assert str(data / "w.db") in str(err.value)
        assert rows(data / "w.db") == 3500
        assert state(data) == before


# -- bug: a swap that failed part way left a mix of two snapshots ----------------------------------


def mixed_case(tmp_path: Path, extra: tuple[str, ...] = ()) -> tuple[Repository, str, Path]:
    """A snapshot of a.db, b.txt, c/d.txt, new.txt (and the files extra); since, a.db got a -wal
    of 500 committed rows, b.txt and c/d.txt changed, and new.txt and extra were removed."""
    repo, _, data = db_with_committed_wal(tmp_path)
    wal, shm = (data / "w.db-wal").read_bytes(), (data / "w.db-shm").read_bytes()
    for suffix in ("-wal", "-shm"):
        (data / f"w.db{suffix}").unlink()
    (data / "w.db").rename(data / "a.db")
    (data / "notes.txt").unlink()
    for name in ("b.txt", "c/d.txt", "new.txt", *extra):
        (data / name).parent.mkdir(exist_ok=True)
        (data / name).write_text(f"{name} v1")
    sid = commit(repo, data).id
    (data / "a.db-wal").write_bytes(wal)  # the 500 committed rows the snapshot lacks
    (data / "a.db-shm").write_bytes(shm)
    (data / "b.txt").write_text("b v2")
    (data / "c" / "d.txt").write_text("d v2")
    for name in ("new.txt", *extra):
        (data / name).unlink()
    for folder in sorted({(data / name).parent for name in extra}, key=lambda p: -len(p.parts)):
        while folder != data and folder.exists() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
    assert rows(data / "a.db") == 3500
    return repo, sid, data


def test_a_rename_failing_part_way_puts_back_what_was_swapped_in(tmp_path: Path) -> None:
    """a.db, b.txt and c/d.txt are renamed in, then new.txt cannot be (a folder appeared at its
    name: a rename that fails for root too): they were left new, the rest old. Now the files
    swapped in are put back, a.db with its -wal, and the error says the target is as it was."""
    repo, sid, data = mixed_case(tmp_path)
    before = state(data)

    def folder_in_the_way() -> None:
        (data / "new.txt").mkdir()
        (data / "new.txt" / "keep").write_text("someone else's")

    with after_renames_into(data / "c", 1, folder_in_the_way):
        with pytest.raises(SourceError, match="left as it was") as err:  # exit 7, as found first
            checkout(repo, sid, data)
    assert str(data / "new.txt") in str(err.value)
    assert "a folder stands where a file goes" in str(err.value)
    assert (data / "new.txt" / "keep").read_text() == "someone else's"
    after = state(data)
    del after["new.txt/keep"]
    assert after == before
    assert rows(data / "a.db") == 3500
    assert not temp_names(data, tmp_path / "repo", tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]
    # once the way is clear the same checkout completes
    (data / "new.txt" / "keep").unlink()
    (data / "new.txt").rmdir()
    checkout(Repository.open(tmp_path / "repo"), sid, data)
    assert (data / "new.txt").read_text() == "new.txt v1"
    assert (data / "b.txt").read_text() == "b.txt v1"
    assert not (data / "a.db-wal").exists()  # the stale one removed, not put back
    assert rows(data / "a.db") == 3000


def test_a_folder_moved_in_whole_is_taken_out_again(tmp_path: Path) -> None:
    """A folder the target lacks is moved in with one rename; a later failure moves it out."""
    repo, sid, data = mixed_case(tmp_path, extra=("zz/z.txt",))
    before = state(data)

    def folder_in_the_way() -> None:
        (data / "new.txt").mkdir()

    with after_renames_into(data / "c", 1, folder_in_the_way):
        with pytest.raises(CasnapError, match="left as it was"):
            checkout(repo, sid, data, safety_snapshot=False)
    assert not (data / "zz").exists()
    assert state(data) == before


def test_a_file_moved_aside_for_a_folder_is_put_back(tmp_path: Path) -> None:
    """A file standing where the snapshot has a folder (zz) is moved aside for it; a later
    failure takes the folder out and puts the file back."""
    repo, sid, data = mixed_case(tmp_path, extra=("zz/z.txt",))
    (data / "zz").write_text("a file where the folder was")
    before = state(data)
    with after_renames_into(data / "c", 1, lambda: (data / "new.txt").mkdir()):
        with pytest.raises(CasnapError, match="left as it was"):
            checkout(repo, sid, data)
    assert (data / "zz").read_text() == "a file where the folder was"
    assert state(data) == before
    (data / "new.txt").rmdir()
    checkout(Repository.open(tmp_path / "repo"), sid, data)
    assert (data / "zz" / "z.txt").read_text() == "zz/z.txt v1"


def test_a_folder_moved_aside_for_a_file_is_put_back(tmp_path: Path) -> None:
    """The other way round: a folder standing where the snapshot has a file (zz), moved aside
    whole for it, is put back with what it holds when a later rename fails."""
    repo, sid, data = mixed_case(tmp_path, extra=("zz",))
    (data / "zz" / "in").mkdir(parents=True)
    (data / "zz" / "in" / "q.txt").write_text("a folder where the file was")
    before = state(data)
    with after_renames_into(data / "c", 1, lambda: (data / "new.txt").mkdir()):
        with pytest.raises(CasnapError, match="left as it was"):
            checkout(repo, sid, data)
    assert state(data) == before
    (data / "new.txt").rmdir()
    checkout(Repository.open(tmp_path / "repo"), sid, data)
    assert (data / "zz").read_text() == "zz v1"


def test_a_folder_this_user_may_not_write_is_refused_before_the_first_rename(
    tmp_path: Path,
) -> None:
    """c/ may not be written by this user (root runs the CLI without its capabilities): b.txt
    and a.db were swapped in before c/d.txt failed. Now nothing is restored or saved at all."""
    repo, sid, data = mixed_case(tmp_path)
    before = state(data)
    (data / "c").chmod(0o555)
    try:
        proc = cli_unprivileged(tmp_path / "repo", data, "checkout", sid)
    finally:
        (data / "c").chmod(0o755)
    assert proc.returncode == 8, proc.stderr
    assert proc.stderr.strip() == (
        f"casnap: error: cannot replace {data / 'c' / 'd.txt'}: its folder {data / 'c'} is not "
        "writable by this user; nothing was changed"
    )
    assert state(data) == before
    assert rows(data / "a.db") == 3500
    assert len(repo.snapshots()) == 2  # no pre-checkout snapshot: refused before the work


@pytest.mark.skipif(not ROOT, reason="only root may make a file immutable")
def test_an_immutable_file_is_refused_before_the_first_rename(tmp_path: Path) -> None:
    repo, sid, data = mixed_case(tmp_path)
    before = state(data)
    with immutable(data / "c" / "d.txt"):
        with pytest.raises(AccessDenied, match="immutable") as err:
            checkout(repo, sid, data)
    assert str(data / "c" / "d.txt") in str(err.value)
    assert state(data) == before
    assert rows(data / "a.db") == 3500


def _stat(mode: int, dev: int = 1, uid: int = 1000) -> os.stat_result:
    return os.stat_result((mode, 1, dev, 1, uid, uid, 0, 0, 0, 0))


def test_the_refusals_a_stat_tells() -> None:
    folder = _stat(stat.S_IFDIR | 0o755)
    plain = _stat(stat.S_IFREG | 0o644)
    assert preflight.refusal(plain, folder, False, 0, 1000) is None
    assert "mount point" in str(preflight.refusal(_stat(stat.S_IFREG, dev=2), folder, False, 0, 0))
    assert "mount point" in str(preflight.refusal(plain, folder, True, 0, 0))
    assert "not a file" in str(preflight.refusal(_stat(stat.S_IFDIR | 0o755), folder, False, 0, 0))
    assert "immutable" in str(preflight.refusal(plain, folder, False, 0x10, 0))
    assert "append-only" in str(preflight.refusal(plain, folder, False, 0x20, 0))
    sticky = _stat(stat.S_IFDIR | 0o1777, uid=0)
    assert "sticky" in str(preflight.refusal(plain, sticky, False, 0, 1001))
    assert preflight.refusal(plain, sticky, False, 0, 1000) is None  # its owner may
    assert preflight.refusal(plain, sticky, False, 0, 0) is None  # root may
    assert preflight.refusal(plain, folder, False, None, 1000) is None  # flags unknown


def test_mount_points_below_a_folder_are_read_from_the_mount_table(tmp_path: Path) -> None:
    table = (
        "36 25 0:32 / /srv/app\\040data rw - ext4 /dev/vda rw\n"
        "37 36 254:0 /vol/w.db /srv/app\\040data/w.db rw - ext4 /dev/vda rw\n"
        "38 25 254:0 / /srv/other rw - ext4 /dev/vda rw\n"
    )
    below = preflight.mounts_below(Path("/srv/app data"), table)
    assert below == {"/srv/app data/w.db"}


def test_files_whose_old_version_cannot_be_linked_go_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """b.txt cannot be hard-linked (as on a filesystem without hard links): it is swapped in
    after the others, so the failure at new.txt still leaves everything as it was."""
    repo, sid, data = mixed_case(tmp_path)
    before = state(data)
    real_link = os.link

    def link(src: Any, dst: Any, **kwargs: Any) -> None:
        if src == "b.txt":
            raise OSError(errno.EPERM, os.strerror(errno.EPERM), src)
        real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "link", link)
    with after_renames_into(data / "c", 1, lambda: (data / "new.txt").mkdir()):
        with pytest.raises(CasnapError, match="left as it was"):
            checkout(repo, sid, data)
    monkeypatch.undo()
    (data / "new.txt").rmdir()
    assert state(data) == before
    assert rows(data / "a.db") == 3500


@pytest.mark.skipif(not ROOT, reason="only root may mount")
def test_a_folder_mounted_from_elsewhere_keeps_old_versions_beside_them(tmp_path: Path) -> None:
    """c/ is another mount than the staging dir: files are copied into it, and the old versions
    and side files are kept beside them under temp names, undone and removed like the others."""
    repo, sid, data = mixed_case(tmp_path)
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "d.txt").write_text("d v2")
    (data / "c" / "d.txt").unlink()
    with bind_mounted(vol, data / "c"):
        before = state(data)
        with after_renames_into(data / "c", 1, lambda: (data / "new.txt").mkdir()):
            with pytest.raises(CasnapError, match="left as it was"):
                checkout(repo, sid, data)
        (data / "new.txt").rmdir()
        assert state(data) == before
        assert not temp_names(data, tmp_path)
        checkout(repo, sid, data)
        assert (data / "c" / "d.txt").read_text() == "c/d.txt v1"
        assert not temp_names(data, tmp_path)


@pytest.mark.skipif(not ROOT, reason="only root may mount")
def test_a_folder_moved_aside_beside_itself_is_removed(tmp_path: Path) -> None:
    """c/ is another mount than the staging dir: a folder standing where the snapshot has a
    file (c/zz) is moved aside beside itself under a temp name, and removed once it is in."""
    repo, sid, data = mixed_case(tmp_path, extra=("c/zz",))
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "d.txt").write_text("d v2")
    (vol / "zz" / "in").mkdir(parents=True)
    (vol / "zz" / "in" / "q.txt").write_text("a folder where the file was")
    with bind_mounted(vol, data / "c"):
        checkout(repo, sid, data)
        assert (data / "c" / "zz").read_text() == "c/zz v1"
        assert not temp_names(data, tmp_path)


@contextlib.contextmanager
def tmpfs_mounted(onto: Path, size: str) -> Iterator[None]:
    """A tmpfs of size mounted on the folder onto for the block; skips the test where mounting
    is not allowed."""
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "none", str(onto)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(onto)], check=True)


def fill(folder: Path) -> None:
    """Write into folder until its filesystem is full."""
    with (folder / "filler").open("wb") as out:
        with contextlib.suppress(OSError):
            while True:
                out.write(bytes(65536))
                out.flush()


# -- bug: a failed swap left the old versions it kept beside files it never reached ---------------


@pytest.mark.skipif(not ROOT, reason="only root may mount")
def test_old_versions_kept_beside_files_the_swap_never_reached_are_removed(
    tmp_path: Path,
) -> None:
    """c/ is a small filesystem of its own: c/d.txt is copied in, then the filesystem fills up
    and c/e.txt cannot be. The undo put c/d.txt back but left the hard link it had kept of
    c/e.txt's old version beside it under a temp name (no step of the swap named it). Now the
    folder holds only what it held before."""
    repo, sid, data = mixed_case(tmp_path, extra=("c/e.txt",))
    with tmpfs_mounted(data / "c", "1m"):
        (data / "c" / "d.txt").write_text("d v2")
        (data / "c" / "e.txt").write_text("e v2")
        before = state(data)
        with after_renames_into(data / "c", 1, lambda: fill(data / "c")):
            with pytest.raises(CasnapError, match="left as it was"):
                checkout(repo, sid, data, safety_snapshot=False)
        (data / "c" / "filler").unlink()
        assert state(data) == before
        assert not temp_names(data, tmp_path)


KILLED_MID_COPY = """
import os, signal, sys
from casnap.repository import Repository
from casnap.restorer import checkout
repo, sid, data, folder = sys.argv[1:]
real = os.replace
def replace(src, dst, **kwargs):
    fd = kwargs.get("dst_dir_fd")
    into = fd is not None and os.readlink(f"/proc/self/fd/{fd}") == folder
    if into and kwargs.get("src_dir_fd") == fd:  # the copy made in folder, about to be renamed
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst, **kwargs)
os.replace = replace
checkout(Repository.open(repo), sid, data, safety_snapshot=False)
"""


# -- bug: the copy a checkout killed mid-way left in a folder on another mount stayed for good -----


@pytest.mark.skipif(not ROOT, reason="only root may mount")
def test_a_copy_into_another_mount_left_by_a_killed_checkout_is_removed_next_time(
    tmp_path: Path,
) -> None:
    """c/ is another mount than the staging dir, so c/d.txt is copied in under a temp name and
    then renamed. A checkout killed between the two left that copy, named without the host
    tag the cleanup of dead processes' temp files looks for: no later checkout removed it. Now
    the next checkout does."""
    repo, sid, data = mixed_case(tmp_path)
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "d.txt").write_text("d v2")
    (data / "c" / "d.txt").unlink()
    with bind_mounted(vol, data / "c"):
        args = [str(tmp_path / "repo"), sid, str(data), str(data / "c")]
        killed = subprocess.run([sys.executable, "-c", KILLED_MID_COPY, *args], check=False)
        assert killed.returncode == -9
        assert len(temp_names(data / "c")) == 2  # the copy, and the old version kept beside it
        checkout(Repository.open(tmp_path / "repo"), sid, data)
        assert (data / "c" / "d.txt").read_text() == "c/d.txt v1"
        assert not temp_names(data, tmp_path)


# -- bug: a failed swap's undo deleted what an app wrote into a folder the swap moved in ----------


def test_a_file_an_app_writes_into_a_folder_moved_in_whole_survives_the_undo(
    tmp_path: Path,
) -> None:
    """zz/ is moved in whole; an app then writes zz/app.log (and appends to zz/y.txt, one of
    the restored files) before a later rename fails. The undo took zz/ out whole with them:
    the app's file, no snapshot's, was deleted. Now only the restored files the app left
    untouched are taken out; what it wrote stays, and the error names the file it changed."""
    repo, sid, data = mixed_case(tmp_path, extra=("zz/z.txt", "zz/y.txt", "zz/sub/w.txt"))
    before = state(data)

    def app_writes_then_a_folder_is_in_the_way() -> None:
        (data / "zz" / "app.log").write_text("the app's own")
        with open(data / "zz" / "y.txt", "a") as f:
            f.write(" and the app's line")
        (data / "new.txt").mkdir()

    with after_renames_into(data / "c", 1, app_writes_then_a_folder_is_in_the_way):
        with pytest.raises(CasnapError) as err:
            checkout(repo, sid, data, safety_snapshot=False)
    assert "zz/y.txt" in str(err.value)
    assert (data / "zz" / "app.log").read_text() == "the app's own"
    assert (data / "zz" / "y.txt").read_text() == "zz/y.txt v1 and the app's line"
    assert not (data / "zz" / "z.txt").exists()
    assert not (data / "zz" / "sub").exists()
    after = state(data)
    del after["zz/app.log"], after["zz/y.txt"]
    assert after == before
    assert not temp_names(data, tmp_path / "repo", tmp_path)


def test_a_folder_made_where_a_new_folder_goes_is_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An app makes zz/ (empty, and holds it open) right before the swap moves the staged zz/
    in whole: the move replaced it (a rename replaces an empty folder), so what the app then
    wrote through its descriptor went into a folder no longer in the target. Now the move
    fails as the folder is there, the checkout is undone, and the app's folder stays."""
    import casnap.fsdir as fsdir

    repo, sid, data = mixed_case(tmp_path, extra=("zz/z.txt",))
    before = state(data)
    real = fsdir.rename_noreplace
    held: list[int] = []

    def app_first(src: int, name: str, dst: int, new_name: str) -> None:
        if new_name == "zz" and not held:
            (data / "zz").mkdir()
            held.append(os.open(data / "zz", os.O_RDONLY | os.O_DIRECTORY))
        real(src, name, dst, new_name)

    monkeypatch.setattr(fsdir, "rename_noreplace", app_first)
    try:
        with pytest.raises(CasnapError, match="left as it was") as err:
            checkout(repo, sid, data, safety_snapshot=False)
        assert str(data / "zz") in str(err.value)
        fd = os.open("written-by-the-app", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=held[0])
        os.close(fd)
        assert (data / "zz" / "written-by-the-app").exists()  # the app's folder is the one there
    finally:
        for fd in held:
            os.close(fd)
    assert sorted(p.name for p in (data / "zz").iterdir()) == ["written-by-the-app"]
    assert state(data) == {**before, "zz/written-by-the-app": state(data)["zz/written-by-the-app"]}


def test_a_database_an_app_writes_to_in_a_folder_moved_in_whole_survives_the_undo(
    tmp_path: Path,
) -> None:
    """zz/ (holding a WAL database) is moved in whole; an app opens zz/w.db and commits a row
    (into zz/w.db-wal: the database file itself keeps its size and mtime) before a later rename
    fails. The undo took w.db out as untouched and left the app's -wal beside nothing: the
    row it committed was lost. Now a database with a side file beside it stays, named."""
    repo, _, data = db_with_committed_wal(tmp_path)
    for suffix in ("-wal", "-shm"):
        (data / f"w.db{suffix}").unlink()
    (data / "zz").mkdir()
    (data / "w.db").rename(data / "zz" / "w.db")
    (data / "c").mkdir()
    (data / "c" / "d.txt").write_text("d v1")
    (data / "new.txt").write_text("new v1")
    sid = commit(repo, data).id
    (data / "zz" / "w.db").unlink()
    (data / "zz").rmdir()
    (data / "new.txt").unlink()
    (data / "c" / "d.txt").write_text("d v2")
    conns: list[sqlite3.Connection] = []

    def app_commits_then_a_folder_is_in_the_way() -> None:
        conn = sqlite3.connect(data / "zz" / "w.db", isolation_level=None)
        conn.execute("INSERT INTO k(v) VALUES ('the app''s row')")
        conns.append(conn)
        (data / "new.txt").mkdir()

    try:
        with after_renames_into(data / "c", 1, app_commits_then_a_folder_is_in_the_way):
            with pytest.raises(CasnapError) as err:
                checkout(repo, sid, data, safety_snapshot=False)
        assert "written since restored (an app at work there?) were left as written (zz/w.db)" in (
            str(err.value)
        )
        assert rows(data / "zz" / "w.db") == 3001
    finally:
        for conn in conns:
            conn.close()
    assert (data / "c" / "d.txt").read_text() == "d v2"


def test_a_new_file_an_app_writes_to_after_its_rename_survives_the_undo(tmp_path: Path) -> None:
    """c/e.txt, which the target lacked, is renamed into c/ (a folder it has); an app appends
    to it before a later rename fails. The undo removed it, the app's line with it. Now a file
    changed since it was restored stays as written, and the error names it."""
    repo, sid, data = mixed_case(tmp_path, extra=("c/e.txt",))

    def app_writes_then_a_folder_is_in_the_way() -> None:
        with open(data / "c" / "e.txt", "a") as f:
            f.write(" and the app's line")
        (data / "new.txt").mkdir()

    with after_renames_into(data / "c", 2, app_writes_then_a_folder_is_in_the_way):
        with pytest.raises(CasnapError) as err:
            checkout(repo, sid, data, safety_snapshot=False)
    assert str(err.value).endswith(
        f"; 1 file(s) of {data} written since restored (an app at work there?) were left as "
        "written (c/e.txt), the others put back; rerun the checkout to complete it"
    )
    assert (data / "c" / "e.txt").read_text() == "c/e.txt v1 and the app's line"
    assert (data / "c" / "d.txt").read_text() == "d v2"
    assert rows(data / "a.db") == 3500


def test_a_new_file_left_untouched_is_still_taken_out(tmp_path: Path) -> None:
    """The same swap without the app's write: c/e.txt is taken out, the target as it was."""
    repo, sid, data = mixed_case(tmp_path, extra=("c/e.txt",))
    before = state(data)
    with after_renames_into(data / "c", 2, lambda: (data / "new.txt").mkdir()):
        with pytest.raises(CasnapError, match="left as it was"):
            checkout(repo, sid, data, safety_snapshot=False)
    (data / "new.txt").rmdir()
    assert state(data) == before


# -- bug: an app's commit to a restored database was lost when the swap was undone --------------

APP_WRITE = """
import sqlite3, sys
try:
    conn = sqlite3.connect(sys.argv[1], timeout=0)
    conn.execute("INSERT INTO k(v) VALUES ('written by the app during the swap')")
    conn.commit()
    print("written")
except sqlite3.OperationalError as exc:
    print(exc)
"""


def test_an_app_cannot_write_a_restored_database_until_the_swap_is_done(tmp_path: Path) -> None:
    """a.db is renamed over the live one, then a later rename fails and the old a.db is put
    back. An app that opened the restored a.db in between and committed a row lost it with the
    undo, told nothing. The restored database is now locked as SQLite locks (as the live one
    was) from before its rename until the swap is done: the app's write is refused (busy), so
    it knows; afterwards the database is the app's again."""
    repo, sid, data = mixed_case(tmp_path)
    attempts: list[str] = []

    def app_writes_then_a_folder_is_in_the_way() -> None:  # another process: locks are per process
        done = subprocess.run(
            [sys.executable, "-c", APP_WRITE, str(data / "a.db")],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        attempts.append(done.stdout.strip())
        (data / "new.txt").mkdir()

    with after_renames_into(data, 1, app_writes_then_a_folder_is_in_the_way):
        with pytest.raises(CasnapError, match="left as it was"):
            checkout(repo, sid, data, safety_snapshot=False)
    assert attempts == ["database is locked"]
    assert rows(data / "a.db") == 3500  # the live database, as it was
    (data / "new.txt").rmdir()
    checkout(Repository.open(tmp_path / "repo"), sid, data, safety_snapshot=False)
    with contextlib.closing(sqlite3.connect(data / "a.db", timeout=0)) as conn:
        conn.execute("INSERT INTO k(v) VALUES ('the app, once the checkout is done')")
        conn.commit()
    assert rows(data / "a.db") == 3001


@pytest.mark.skipif(not ROOT, reason="only root may mount")
def test_a_checkout_short_of_inodes_says_so_and_that_nothing_was_restored(tmp_path: Path) -> None:
    """A filesystem with free blocks but no free inode fails at the first new file: the staged
    files, or the mark a swap writes before its first rename. Either way nothing is restored,
    and the line says so (not only the stage it named), and that inodes ran out, not space."""
    data = tmp_path / "vol" / "data"
    data.mkdir(parents=True)
    repo = Repository.init(tmp_path / "repo")
    for i in range(6):
        (data / f"f{i}.txt").write_text(f"v1 {i}\n")
    sid = commit(repo, data).id
    vol = data.parent
    with tmpfs_mounted(vol, "8m,nr_inodes=64"):
        data.mkdir()
        for i in range(6):
            (data / f"f{i}.txt").write_text(f"v2 {i}\n")
        (vol / "filler").mkdir()
        failures = []
        for free in range(12):
            fillers = sorted((vol / "filler").iterdir())
            while os.statvfs(vol).f_ffree > free:
                (vol / "filler" / str(len(fillers))).touch()
                fillers.append(vol / "filler" / str(len(fillers)))
            while os.statvfs(vol).f_ffree < free:
                fillers.pop().unlink()
            before = state(data)
            try:
                checkout(repo, sid, data, smoke=False, safety_snapshot=False)
            except CasnapError as exc:
                failures.append(str(exc))
                assert f"nothing restored, {data} untouched" in str(exc), (free, str(exc))
                assert "inode" in str(exc) and "no space left" not in str(exc), (free, str(exc))
                assert state(data) == before
                assert not temp_names(vol)
                continue
            assert (data / "f0.txt").read_text() == "v1 0\n"
            break
        assert len(failures) >= 2, failures  # the stage's files, then the swap's mark
