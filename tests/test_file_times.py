"""File times past 2262 (st_mtime_ns of 2**63 and more) and before 1970: stored, restored exactly,
and every snapshot holding one stays readable by every command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap import manifest
from casnap.backends import LocalBackend
from casnap.canonical import canonical_json
from casnap.cli import cli
from casnap.errors import IntegrityError
from casnap.ids import hash_bytes
from casnap.manifest import FileEntry, Snapshot, compress_manifest, decompress_manifest
from casnap.manifestfields import TIME_NS_LIMIT
from casnap.repository import Repository

# 2265-06-12: past what 63 bits of nanoseconds hold, well inside what ext4 keeps (2446)
FAR = 2**63 + 10**17 + 123_456_789
BEFORE_1970 = -(10**18) + 7  # 1938


def run(repo: Path, data: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--repo", str(repo), "--data", str(data), *args])
    return result.exit_code, result.stdout, result.stderr


def set_mtime(path: Path, ns: int) -> None:
    os.utime(path, ns=(ns, ns))
    assert path.stat().st_mtime_ns == ns  # the filesystem keeps it (ext4, xfs, tmpfs, btrfs)


def test_file_after_2262_commits_restores_exactly_and_keeps_the_repository_usable(
    tmp_path: Path,
) -> None:
    repo, data, out = tmp_path / "repo", tmp_path / "data", tmp_path / "out"
    data.mkdir()
    (data / "far.txt").write_bytes(b"from the future\n")
    (data / "old.txt").write_bytes(b"from the past\n")
    (data / "now.txt").write_bytes(b"today\n")
    set_mtime(data / "far.txt", FAR)
    set_mtime(data / "old.txt", BEFORE_1970)
    code, out_, err = run(repo, data, "commit")
    assert code == 0, err
    first = out_.strip()
    # every command reads it: log, show, ls (its times in JSON exact), verify
    code, _, err = run(repo, data, "log")
    assert code == 0, err
    code, shown, err = run(repo, data, "show", first, "--json")
    assert code == 0, err
    times = {f["path"]: f["mtime_ns"] for f in json.loads(shown)["files"]}
    assert times["far.txt"] == FAR and times["old.txt"] == BEFORE_1970
    code, listed, err = run(repo, data, "ls", first, "--json")
    assert code == 0, err
    rows = {f["path"]: f for f in json.loads(listed)["files"]}
    assert rows["far.txt"]["mtime_ns"] == FAR
    assert rows["far.txt"]["mtime"] == "2265-06-12T09:33:56.978232Z"  # exact, not rounded
    code, long_, err = run(repo, data, "ls", first, "-l")
    assert code == 0 and "far.txt" in long_, err
    # a checkout restores bytes and times exactly
    code, _, err = run(repo, out, "checkout", first)
    assert code == 0, err
    for name in ("far.txt", "old.txt", "now.txt"):
        assert (out / name).read_bytes() == (data / name).read_bytes()
        assert (out / name).stat().st_mtime_ns == (data / name).stat().st_mtime_ns
    # the next commits of the data dir read their parent; prune, gc and verify read them all
    (data / "now.txt").write_bytes(b"tomorrow\n")
    code, _, err = run(repo, data, "commit")
    assert code == 0, err
    code, second, err = run(repo, data, "commit", "--allow-empty")
    assert code == 0, err
    code, _, err = run(repo, data, "verify", "--read-data")
    assert code == 0, err
    code, _, err = run(repo, data, "prune", "--keep-last", "1")
    assert code == 0, err
    code, _, err = run(repo, data, "verify")
    assert code == 0, err
    ((_sid, snap),) = Repository.open(repo).snapshots(files=True)
    entries = {f.path: f for f in snap.files}
    assert entries["far.txt"].mtime_ns == FAR
    # a time in the future is too fresh to vouch for the file (read again each commit)
    old = entries["old.txt"]
    assert old.mtime_ns == BEFORE_1970 and old.source is not None and old.source[1] == BEFORE_1970


def test_checkout_saves_a_file_dated_after_2262_in_a_readable_snapshot(tmp_path: Path) -> None:
    """A file changed since the last commit and dated 2263 is saved before a checkout replaces
    it, in a pre-checkout snapshot that can be checked out again."""
    repo, data = tmp_path / "repo", tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_bytes(b"v1\n")
    assert run(repo, data, "commit")[0] == 0
    (data / "a.txt").write_bytes(b"precious\n")
    set_mtime(data / "a.txt", FAR)
    code, _, err = run(repo, data, "checkout", "latest")
    assert code == 0, err
    assert (data / "a.txt").read_bytes() == b"v1\n"
    code, _, err = run(repo, data, "checkout", "pre-checkout")
    assert code == 0, err
    assert (data / "a.txt").read_bytes() == b"precious\n"
    assert (data / "a.txt").stat().st_mtime_ns == FAR
    code, _, err = run(repo, data, "commit")  # its parent, the pre-checkout snapshot, reads
    assert code == 0, err


ENTRY = FileEntry("a", "file", 1, 0o644, 0, "0" * 64, {"name": "fastcdc"}, (), 0, None)


def snapshot(*entries: FileEntry) -> Snapshot:
    return Snapshot("2026-01-01T00:00:00.000000Z", "h", "u", "/d", (), (), "", (), None, entries)


@pytest.mark.parametrize("ns", [-TIME_NS_LIMIT, -(2**63) - 1, 2**63, 2**64, TIME_NS_LIMIT - 1])
def test_every_time_linux_can_give_reads_back(ns: int) -> None:
    """Seconds in a signed 64 bits, nanoseconds below 10**9 (tmpfs keeps all of them): the
    manifest holds each, past 64 bits as the json module writes them."""
    snap = snapshot(ENTRY._replace(mtime_ns=ns, source=(1, ns, ns, 5)))
    back = Snapshot.decode(snap.encode())
    assert back == snap and back.encode() == snap.encode()
    assert json.loads(snap.encode())["files"][0]["mtime_ns"] == ns


@pytest.mark.parametrize("ns", [-TIME_NS_LIMIT - 1, TIME_NS_LIMIT, 1 << 100])
def test_a_time_no_file_can_have_is_refused(ns: int) -> None:
    raw = snapshot(ENTRY._replace(mtime_ns=ns)).encode()
    with pytest.raises(IntegrityError, match="out-of-range mtime"):
        Snapshot.decode(raw)


def test_times_past_what_a_date_can_show_are_listed_and_restored(tmp_path: Path) -> None:
    """tmpfs and btrfs keep any 64-bit second: a snapshot of such files lists their times
    as far as they can be shown, their nanoseconds exact, and checks out."""
    repo, data, out = tmp_path / "repo", tmp_path / "data", tmp_path / "out"
    data.mkdir()
    (data / "late").write_bytes(b"late\n")
    (data / "early").write_bytes(b"early\n")
    assert run(repo, data, "commit")[0] == 0
    backend = LocalBackend(repo)
    ((key, _size),) = backend.list("snapshots/")
    d = json.loads(decompress_manifest(backend.get(key), key))
    times = {"late": TIME_NS_LIMIT - 1, "early": -TIME_NS_LIMIT}
    for f in d["files"]:
        f["mtime_ns"] = times[f["path"]]
    raw = canonical_json(d)  # as a commit of a tmpfs data dir writes it
    sid = hash_bytes(raw).hex()
    backend.put(f"snapshots/{sid}", compress_manifest(raw))
    code, listed, err = run(repo, data, "ls", sid, "--json")
    assert code == 0, err
    rows = {f["path"]: f for f in json.loads(listed)["files"]}
    assert {p: (r["mtime"], r["mtime_ns"]) for p, r in rows.items()} == {
        "late": (None, TIME_NS_LIMIT - 1),
        "early": (None, -TIME_NS_LIMIT),
    }
    code, long_, err = run(repo, data, "ls", sid, "-l")
    assert code == 0, err
    lines = {line.split()[-1]: line for line in long_.splitlines()}
    assert "after year 9999" in lines["late"] and "before year 1" in lines["early"]
    code, shown, err = run(repo, data, "show", sid, "--json")
    assert code == 0 and "late" in shown, err
    assert run(repo, data, "log")[0] == 0
    code, _, err = run(repo, out, "checkout", sid)  # ext4 keeps what it can of such a time
    assert code == 0, err
    assert (out / "late").read_bytes() == b"late\n" and (out / "early").read_bytes() == b"early\n"


def stored(repo: Path) -> dict[str, bytes]:
    """The repository's objects (not its locks or scratch files)."""
    return {
        p.relative_to(repo).as_posix(): p.read_bytes()
        for p in repo.rglob("*")
        if p.is_file() and p.relative_to(repo).parts[0] not in ("locks", "tmp")
    }


def test_a_commit_never_stores_a_manifest_its_reader_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the reader ever take less than a commit records (here: times up to 2262 only),
    the commit fails with one line and stores nothing, and a checkout that would have to save
    such a file first replaces nothing."""
    repo, data = tmp_path / "repo", tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_bytes(b"v1\n")
    assert run(repo, data, "commit")[0] == 0
    before = stored(repo)
    monkeypatch.setattr(manifest, "TIME_NS_LIMIT", 1 << 63)
    (data / "b.txt").write_bytes(b"new\n")
    set_mtime(data / "b.txt", FAR)
    code, out, err = run(repo, data, "commit")
    assert (code, out) == (7, ""), err
    assert err.count("\n") == 1 and "nothing committed" in err and "'b.txt'" in err, err
    assert stored(repo) == before
    (data / "b.txt").unlink()
    (data / "a.txt").write_bytes(b"precious\n")
    set_mtime(data / "a.txt", FAR)
    code, _, err = run(repo, data, "checkout", "latest")
    assert code == 7 and err.count("\n") == 1 and "nothing committed" in err, err
    assert (data / "a.txt").read_bytes() == b"precious\n"
    assert [k for k in stored(repo) if k.startswith("snapshots/")] == [
        k for k in before if k.startswith("snapshots/")
    ]
    monkeypatch.undo()
    assert run(repo, data, "verify")[0] == 0
