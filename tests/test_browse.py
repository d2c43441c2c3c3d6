"""casnap ls (a snapshot's files) and casnap cat (one file on stdout, every chunk verified)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import blake3
import numpy as np
import pytest
from click.testing import CliRunner

from casnap import compression
from casnap.cli import cli
from casnap.errors import EXIT_CODES, IntegrityError
from casnap.packs import pack_key
from casnap.repository import Repository
from tests.helpers_memory import MB
from tests.helpers_reliability import ROOT, casnap_env
from tests.helpers_smoke import make_app

MiB = 1 << 20


def run(repo: Path, data: Path, *args: str) -> tuple[int, bytes, str]:
    r = CliRunner().invoke(cli, ["--repo", str(repo), "--data", str(data), *args])
    return r.exit_code, r.stdout_bytes, r.stderr


@pytest.fixture
def app(tmp_path: Path) -> Path:
    data = make_app(tmp_path / "data")
    (data / "docs").mkdir()
    (data / "docs" / "notes.txt").write_text("hello\n")
    os.chmod(data / "docs" / "notes.txt", 0o640)
    os.utime(data / "docs" / "notes.txt", ns=(1_700_000_000_123_000_000,) * 2)
    return data


@pytest.fixture
def repo_dir(tmp_path: Path, app: Path) -> Path:
    repo = tmp_path / "repo"
    code, _, err = run(repo, app, "commit", "-m", "first")
    assert code == 0, err
    return repo


ALL_FILES = [
    "app.db",
    "docs/notes.txt",
    "faiss/flat.index",
    "faiss/flat.meta.json",
    "faiss/hnsw.index",
    "faiss/hnsw.meta.json",
    "faiss/ivf.index",
    "faiss/ivf.meta.json",
]


def test_ls_lists_every_file_or_those_under_a_path(
    repo_dir: Path, app: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run(repo_dir, app, "ls", "latest")
    assert code == 0, err
    assert out.decode().splitlines() == ALL_FILES
    code, out, _ = run(repo_dir, app, "ls", "latest", "faiss")
    assert out.decode().splitlines() == [p for p in ALL_FILES if p.startswith("faiss/")]
    # paths as every command reads them: from the data dir's parent, absolute, ./
    monkeypatch.chdir(app.parent)
    for given in ("data/docs", str(app / "docs"), "./docs", "docs/"):
        code, out, err = run(repo_dir, app, "ls", "latest", given)
        assert (code, out.decode()) == (0, "docs/notes.txt\n"), (given, err)
    code, out, _ = run(repo_dir, app, "ls", "latest", "docs/notes.txt")
    assert out.decode() == "docs/notes.txt\n"
    code, out, err = run(repo_dir, app, "ls", "latest", "nothing-here")
    assert code == 4 and out == b"" and "nothing-here is not in snapshot" in err
    code, _, err = run(repo_dir, app, "ls", "latest", "/elsewhere")
    assert code == 2, err


def test_ls_long_and_json(repo_dir: Path, app: Path) -> None:
    code, out, _ = run(repo_dir, app, "ls", "latest", "docs", "-l")
    assert code == 0
    (line,) = out.decode().splitlines()
    fields = line.split()
    assert fields[0] == "-rw-r-----"
    assert fields[1] == "6"
    local = (
        __import__("datetime")
        .datetime.fromtimestamp(1_700_000_000.123)
        .strftime("%Y-%m-%d %H:%M:%S")
    )
    assert " ".join(fields[2:4]) == local
    assert fields[4] == "docs/notes.txt"
    code, out, _ = run(repo_dir, app, "ls", "latest", "--long")
    assert len(out.decode().splitlines()) == len(ALL_FILES)
    code, out, _ = run(repo_dir, app, "ls", "latest", "--json")
    doc = json.loads(out)
    repo = Repository.open(repo_dir)
    assert doc["id"] == repo.resolve("latest").hex()
    assert doc["paths"] == []
    files = {f["path"]: f for f in doc["files"]}
    assert list(files) == ALL_FILES
    notes = files["docs/notes.txt"]
    assert notes["size"] == 6 and notes["mode"] == 0o640 and notes["kind"] == "file"
    assert notes["mtime"] == "2023-11-14T22:13:20.123000Z"
    assert notes["mtime_ns"] == 1_700_000_000_123_000_000
    assert notes["hash"] == blake3.blake3(b"hello\n").hexdigest()
    assert files["app.db"]["kind"] == "sqlite"


def test_ls_and_cat_follow_the_path_and_tag_filters(repo_dir: Path, app: Path) -> None:
    (app / "docs" / "notes.txt").write_text("second version\n")
    code, _, err = run(repo_dir, app, "commit", "docs", "--tag", "docs-only")
    assert code == 0, err
    (app / "docs" / "notes.txt").write_text("third, not committed\n")
    code, out, _ = run(repo_dir, app, "ls", "latest")
    assert out.decode().splitlines() == ["docs/notes.txt"]  # the newest is the docs snapshot
    code, out, _ = run(repo_dir, app, "ls", "latest", "--path", ".")
    assert out.decode().splitlines() == ALL_FILES  # the newest whole-dir snapshot
    code, out, _ = run(repo_dir, app, "cat", "latest", "docs/notes.txt", "--path", ".")
    assert (code, out) == (0, b"hello\n")
    code, out, _ = run(repo_dir, app, "cat", "docs-only", "docs/notes.txt")
    assert (code, out) == (0, b"second version\n")
    code, out, _ = run(repo_dir, app, "cat", "latest", "docs/notes.txt", "--tag", "docs-only")
    assert (code, out) == (0, b"second version\n")
    code, out, err = run(repo_dir, app, "cat", "latest", "app.db", "--tag", "docs-only")
    assert code == 4 and out == b"", err


def test_cat_writes_the_committed_bytes(repo_dir: Path, app: Path, tmp_path: Path) -> None:
    for rel in ("faiss/flat.index", "faiss/ivf.meta.json", "docs/notes.txt"):
        code, out, err = run(repo_dir, app, "cat", "latest", rel)
        assert code == 0, err
        assert out == (app / rel).read_bytes(), rel
    # a database: the image commit captured, the one checkout restores
    code, out, _ = run(repo_dir, app, "cat", "latest", str(app / "app.db"))
    restored = tmp_path / "restored"
    code2, _, err = run(repo_dir, app, "checkout", "latest", "--to", str(restored), "--no-smoke")
    assert code == code2 == 0, err
    assert out == (restored / "app.db").read_bytes()
    assert out[:16] == b"SQLite format 3\x00"


def test_cat_of_a_folder_or_a_missing_file(repo_dir: Path, app: Path) -> None:
    code, out, err = run(repo_dir, app, "cat", "latest", "faiss")
    assert code == 2 and out == b"" and "casnap ls" in err
    code, out, err = run(repo_dir, app, "cat", "latest", ".")
    assert code == 2 and out == b""
    code, out, err = run(repo_dir, app, "cat", "latest", "faiss/missing.index")
    assert code == 4 and out == b"" and "not in snapshot" in err
    code, out, err = run(repo_dir, app, "cat", "beef", "app.db")
    assert code == 4 and out == b""


def big_random_file(data: Path, size: int, seed: int = 3) -> bytes:
    body = np.random.default_rng(seed).bytes(size)
    (data / "blob.bin").write_bytes(body)
    return body


def _committed_one(tmp_path: Path, data: Path) -> tuple[Path, Repository, list]:
    """A commit of data (one file) into tmp_path/repo: the repository folder, the repository
    opened with its index, and the file's chunk refs."""
    repo_dir = tmp_path / "repo"
    code, _, err = run(repo_dir, data, "commit")
    assert code == 0, err
    repo = Repository.open(repo_dir)
    repo.ensure_index()
    (entry,) = repo.load_snapshot(repo.resolve("latest")).files
    return repo_dir, repo, repo.chunk_refs(entry)


def test_cat_stops_at_a_damaged_chunk_with_only_the_bytes_before_it(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    body = big_random_file(data, 3 * MiB)  # random: stored raw, so damage decodes fine
    repo_dir, repo, refs = _committed_one(tmp_path, data)
    assert len(refs) > 8
    k = len(refs) // 2
    cid, n = refs[k]
    start = sum(length for _, length in refs[:k])
    e = repo.store.entry(cid)
    pack = repo_dir / pack_key(e.pack)
    raw = bytearray(pack.read_bytes())
    assert raw[e.offset] == 0  # the raw codec: codec byte, then the plain bytes
    raw[e.offset + 1 + e.inner + n // 2] ^= 0x40
    os.chmod(pack, 0o600)
    pack.write_bytes(bytes(raw))

    code, out, err = run(repo_dir, data, "cat", "latest", "blob.bin")
    assert code == 5, err
    assert cid.hex() in err and "blob.bin" in err and "damaged" in err
    assert out == body[: len(out)]  # nothing written that is not the file's
    assert len(out) <= start  # the damaged chunk itself never reached stdout


def test_cat_names_the_chunk_of_a_frame_that_does_not_decode(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "log.txt").write_bytes(b"".join(b"entry %d of the log\n" % i for i in range(300_000)))
    repo_dir, repo, refs = _committed_one(tmp_path, data)
    e = repo.store.entry(refs[len(refs) // 2][0])
    first = next(cid for cid, _ in refs if repo.store.entry(cid).offset == e.offset)
    repo.close()
    pack = repo_dir / pack_key(e.pack)
    raw = bytearray(pack.read_bytes())
    assert raw[e.offset] == 1  # zstd
    for at in range(e.offset + 5, e.offset + e.length):  # a flip that makes it fail to decode
        raw[at] ^= 0x40
        try:
            compression.decode(bytes(raw[e.offset : e.offset + e.length]), e.frame_size)
        except IntegrityError:
            break
        raw[at] ^= 0x40
    os.chmod(pack, 0o600)
    pack.write_bytes(bytes(raw))

    code, _, err = run(repo_dir, data, "cat", "latest", "log.txt")
    assert code == 5, err
    assert f"log.txt: chunk {first.hex()}" in err, err


def test_cat_checks_the_whole_file_hash(tmp_path: Path) -> None:
    """A manifest whose file hash disagrees with its chunks: every byte goes out, exit 5."""
    from casnap.manifest import compress_manifest, decompress_manifest

    data = tmp_path / "data"
    data.mkdir()
    body = big_random_file(data, 300_000)
    repo_dir = tmp_path / "repo"
    code, out, err = run(repo_dir, data, "commit")
    sid = out.decode().strip()
    key = repo_dir / "snapshots" / sid
    d = json.loads(decompress_manifest(key.read_bytes(), "m"))
    d["files"][0]["hash"] = "0" * 64
    raw = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    new = blake3.blake3(raw).hexdigest()
    (repo_dir / "snapshots" / new).write_bytes(compress_manifest(raw))
    code, out, err = run(repo_dir, data, "cat", new, "blob.bin")
    assert code == 5, err
    assert "recorded hash" in err
    assert out == body


def test_cat_streams_a_large_file_in_bounded_memory(tmp_path: Path) -> None:
    """512 MiB, mostly one zero run (written out as zeros on a pipe) and one repeated block,
    streamed to a reader that hashes it: the CLI's peak stays far below the file's size."""
    data = tmp_path / "data"
    data.mkdir()
    big = data / "big.bin"
    rng = np.random.default_rng(9)
    block = rng.bytes(4096) * 256  # 1 MiB of one repeated 4 KiB block
    with open(big, "wb") as f:
        f.truncate(512 * MiB)
        f.write(rng.bytes(3 * MiB))
        f.seek(100 * MiB + 7)
        for _ in range(64):
            f.write(block)
        f.seek(400 * MiB)
        f.write(rng.bytes(MiB))
    expected = blake3.blake3()
    with open(big, "rb") as f:
        while piece := f.read(8 * MiB):
            expected.update(piece)
    repo = tmp_path / "repo"
    base = ["--repo", str(repo), "--data", str(data)]
    env = casnap_env()
    done = subprocess.run(
        [sys.executable, "-m", "casnap", *base, "commit"], env=env, cwd=ROOT, capture_output=True
    )
    assert done.returncode == 0, done.stderr
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak"
        with subprocess.Popen(
            [sys.executable, "-m", "tests.peak_cli", str(peak_file), *base, "cat", "latest"]
            + ["big.bin"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            got = blake3.blake3()
            size = 0
            while piece := proc.stdout.read(4 * MiB):
                got.update(piece)
                size += len(piece)
            err = proc.stderr.read()
            assert proc.wait(timeout=300) == 0, err
        peak = int(peak_file.read_text())
    assert size == 512 * MiB
    assert got.hexdigest() == expected.hexdigest()
    assert peak < 150 * MB, f"cat peaked at {peak / MB:.0f} MB"


def test_cat_into_a_closed_pipe_ends_quietly_with_exit_141(repo_dir: Path, app: Path) -> None:
    """`casnap cat ... | head -c 10`: the reader has what it wanted; 141, as a process SIGPIPE
    ended (restic's dump), still tells a script checking the code that the file was cut."""
    base = ["--repo", str(repo_dir), "--data", str(app)]
    with subprocess.Popen(
        [sys.executable, "-m", "casnap", *base, "cat", "latest", "faiss/flat.index"],
        env=casnap_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.read(10)
        proc.stdout.close()
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=60)
    assert code == EXIT_CODES["output-closed"] == 141
    assert err == ""


def test_ls_mode_of_a_file_with_special_bits_is_shown_as_recorded(
    repo_dir: Path, app: Path
) -> None:
    code, out, _ = run(repo_dir, app, "ls", "latest", "app.db", "-l")
    st = os.stat(app / "app.db")
    assert out.decode().split()[0] == stat.filemode(st.st_mode)
