"""How a checkout moves data: files already in place are neither read nor rewritten, files whose
checks take longest are staged first so the checks overlap the rest of the restore, and many
files restored through one pipeline come back byte for byte."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from casnap import faiss_child
from casnap.cli import cli
from casnap.committer import commit
from casnap.errors import IntegrityError
from casnap.repository import Repository
from casnap.restorer import checkout
from tests.helpers_smoke import make_app

OLD_NS = 1_600_000_000 * 10**9  # an mtime long past: a commit's stat cache vouches for the file


def stats(root: Path) -> dict[str, tuple[int, int, int]]:
    """inode, mtime and ctime of every file under root."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[p.relative_to(root).as_posix()] = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
    return out


def test_files_in_place_are_neither_read_nor_rewritten(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app")
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, app).id
    out = tmp_path / "out"
    first = checkout(repo, sid, out, safety_snapshot=False)
    assert first.files_written == len(stats(out)) and first.unchanged == []
    before = stats(out)
    again = checkout(repo, sid, out, safety_snapshot=False)
    assert again.files_written == 0 and again.written == []
    assert again.unchanged == sorted(before) and again.files_unchanged == len(before)
    assert again.bytes_compared == 0  # each known by the fingerprint the first checkout recorded
    assert stats(out) == before  # not even touched: same inode, mtime and ctime

    # a file changed since is read, found different and written again; the rest stay
    (out / "faiss" / "ivf.meta.json").write_text("{}")
    third = checkout(repo, sid, out, safety_snapshot=False)
    assert third.written == ["faiss/ivf.meta.json"]
    assert third.bytes_compared == 2
    assert third.unchanged == sorted(p for p in before if p != "faiss/ivf.meta.json")
    after = stats(out)
    assert {p: v for p, v in after.items() if p != "faiss/ivf.meta.json"} == {
        p: v for p, v in before.items() if p != "faiss/ivf.meta.json"
    }
    assert (out / "faiss" / "ivf.meta.json").read_bytes() == (
        app / "faiss" / "ivf.meta.json"
    ).read_bytes()


def test_a_committed_data_dir_is_known_by_its_commit(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app")
    for p in app.rglob("*"):
        if p.is_file():
            os.utime(p, ns=(OLD_NS, OLD_NS))  # not racy: the commit records its fingerprint
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, app).id
    before = stats(app)
    result = CliRunner().invoke(
        cli, ["--repo", str(repo.root), "--data", str(app), "checkout", sid, "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["unchanged"] == sorted(before) and report["written"] == []
    assert report["bytes_compared"] == 0  # not one byte of the data dir read, not even app.db
    assert stats(app) == before


def test_smoke_checks_start_before_the_last_file_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(3)
    for name in ("a1.bin", "a2.bin", "a3.bin"):  # named to sort before the database
        (data / name).write_bytes(rng.integers(0, 256, 12 << 20, dtype=np.uint8).tobytes())
    with contextlib.closing(sqlite3.connect(data / "zz.db")) as db:
        db.execute("CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT)")
        db.executemany("INSERT INTO t(b) VALUES (?)", [(f"row {i}",) for i in range(500)])
        db.commit()
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data).id

    progress: list[tuple[int, int]] = [(0, 1)]
    opened: list[tuple[int, int]] = []  # progress when the staged database was opened to check
    connect = sqlite3.connect

    def watched(target: str, *args: object, **kwargs: object) -> sqlite3.Connection:
        if str(target).endswith("/zz.db?immutable=1"):  # the smoke check's connection
            opened.append(progress[-1])
        return connect(target, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite3, "connect", watched)
    result = checkout(
        repo,
        sid,
        tmp_path / "out",
        safety_snapshot=False,
        progress=lambda done, total: progress.append((done, total)),
    )
    assert result.smoke is not None and result.smoke["ok"]
    checked = {(c["check"], c["path"]) for c in result.smoke["checks"]}
    assert ("sqlite-integrity", "zz.db") in checked
    assert opened, "the database was never checked"
    done, total = opened[0]
    assert done < total, "the database check began only once every file was written"


def test_many_files_through_one_pipeline_restore_byte_for_byte(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rng = np.random.default_rng(5)
    task = 1 << 20
    sizes = [0, 1, 4095, 4096, task - 1, task, task + 1, 3 * task + 17, 2 * task]
    files: dict[str, bytes] = {}
    for i, size in enumerate(sizes):
        files[f"d{i % 3}/f{i}.bin"] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    # zeros written as holes: inside a file, at its end, and a file of nothing else
    block = rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    files["sparse/middle.bin"] = block + bytes(3 * task) + block
    files["sparse/tail.bin"] = block + bytes(2 * task + 123)
    files["sparse/zeros.bin"] = bytes(5 * task)
    for rel, body in files.items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(body)
    os.link(data / "d0/f3.bin", data / "d1/link.bin")
    files["d1/link.bin"] = files["d0/f3.bin"]
    os.chmod(data / "d2/f2.bin", 0o640)
    os.utime(data / "d1/f1.bin", ns=(OLD_NS, OLD_NS + 123))
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data).id
    out = tmp_path / "out"
    result = checkout(repo, sid, out, safety_snapshot=False, smoke=False)
    assert sorted(result.written) == sorted(files)
    for rel, body in files.items():
        assert (out / rel).read_bytes() == body, rel
        want, got = (data / rel).stat(), (out / rel).stat()
        assert (got.st_mode, got.st_mtime_ns) == (want.st_mode, want.st_mtime_ns), rel
    assert (out / "d0/f3.bin").stat().st_ino == (out / "d1/link.bin").stat().st_ino
    assert (out / "sparse/zeros.bin").stat().st_blocks * 512 < task  # holes, not zeros


def open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_a_checkout_leaves_no_descriptor_open_whether_it_succeeds_or_fails(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rng = np.random.default_rng(9)
    for i, mib in enumerate([1, 1, 2, 3, 10]):  # the largest has its writeback started early
        (data / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        body = rng.integers(0, 9, mib << 20, np.uint8).tobytes()
        (data / f"d{i % 2}/f{i}.bin").write_bytes(body)
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data).id
    before = open_descriptors()
    checkout(repo, sid, tmp_path / "out", safety_snapshot=False, smoke=False)
    assert open_descriptors() == before
    for pack in (tmp_path / "repo" / "packs").rglob("*"):  # a damaged frame in every pack
        if pack.is_file():
            body = bytearray(pack.read_bytes())
            body[len(body) // 2] ^= 0xFF
            pack.write_bytes(bytes(body))
    with pytest.raises(IntegrityError):
        checkout(repo, sid, tmp_path / "again", safety_snapshot=False, smoke=False)
    assert open_descriptors() == before
    assert not (tmp_path / "again").exists()


def test_indexes_left_in_place_are_checked_while_the_rest_is_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_app(tmp_path / "data")
    rng = np.random.default_rng(4)
    (data / "blob.bin").write_bytes(rng.integers(0, 256, 24 << 20, dtype=np.uint8).tobytes())
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data).id
    out = tmp_path / "out"
    checkout(repo, sid, out, safety_snapshot=False, smoke=False)
    (out / "blob.bin").write_bytes(b"changed")  # to restore again; the indexes stay in place

    progress: list[tuple[int, int]] = [(0, 1)]
    handed: dict[str, tuple[int, int]] = {}  # index -> progress when the checker process got it
    send = faiss_child.ProbeChild.send

    def watched(child: faiss_child.ProbeChild, path: Path, *args: object) -> bool:
        handed.setdefault(str(path), progress[-1])
        return send(child, path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(faiss_child.ProbeChild, "send", watched)
    result = checkout(
        repo,
        sid,
        out,
        safety_snapshot=False,
        progress=lambda done, total: progress.append((done, total)),
    )
    assert result.written == ["blob.bin"] and "faiss/flat.index" in result.unchanged
    assert result.smoke is not None and result.smoke["ok"]
    done, total = handed[str(out / "faiss" / "flat.index")]
    assert done < total, "the index in place was checked only once every file was written"
