"""Crafted manifests a hostile tester built: each is refused with one error line and the
documented exit code (never an internal error), and `verify` finds what `checkout` refuses."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from casnap.backends import LocalBackend
from casnap.committer import commit
from casnap.errors import HostileManifest, IntegrityError
from casnap.ids import ObjectId, hash_bytes
from casnap.manifest import (
    Snapshot,
    compress_manifest,
    decompress_manifest,
)
from casnap.manifestfields import MAX_PATH_DEPTH
from casnap.repository import Repository
from tests.helpers_reliability import run_casnap, small_app, small_config
from tests.test_hostile import one_line


@pytest.fixture
def made(tmp_path: Path) -> tuple[Path, Path, str]:
    """A local repository with one snapshot of a small real data dir."""
    data = small_app(tmp_path / "data")
    repo = Repository.init(tmp_path / "repo", small_config())
    sid = commit(repo, data).id
    return tmp_path / "repo", data, sid


def manifest_of(repo_dir: Path, sid: str) -> dict:
    raw = decompress_manifest(LocalBackend(repo_dir).get(f"snapshots/{sid}"), "m")
    return json.loads(raw)


def store(repo_dir: Path, d: dict) -> str:
    """Store d as a manifest (canonical JSON, as casnap writes it); its id."""
    raw = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    sid = hash_bytes(raw).hex()
    LocalBackend(repo_dir).put(f"snapshots/{sid}", compress_manifest(raw))
    return sid


def cli(repo: Path, data: Path, *args: str):
    return run_casnap(["--repo", str(repo), "--data", str(data), *args])


def passed_over(proc, bad: str, pattern: str) -> None:
    """A command that deletes nothing listed the snapshots past bad and warned of it."""
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("casnap: warning: ")]
    assert re.search(f"snapshot {bad[:8]} left out: snapshots/{bad}.*{pattern}", line), line


# -- the manifest's time --------------------------------------------------------------------------

BAD_TIMES = [
    "garbage",
    "2026-12-07T00:00:00+05:00",
    "1-01-01T00:00:00.000000Z",  # what casnap once wrote for year 1
    "0001-01-01T00:00:00.000000Z",  # shown in local time west of Greenwich: year 0
    "2025-02-30T00:00:00.000000Z",
    "2025-06-31T00:00:00.000000Z",
    "2025-01-01T24:00:00.000000Z",
    "2025-01-01T23:59:60.000000Z",
    "2025-01-01T23:60:00.000000Z",
    "2025-01-01T00:00:00.000000",
    " 2025-01-01T00:00:00.000000Z",
]


@pytest.mark.parametrize("when", BAD_TIMES)
def test_a_malformed_time_is_an_integrity_error(made: tuple[Path, Path, str], when: str) -> None:
    repo_dir, _, sid = made
    d = manifest_of(repo_dir, sid)
    d["time"] = when
    raw = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(IntegrityError, match="time"):
        Snapshot.decode(raw, "snapshots/x")
    with pytest.raises(IntegrityError, match="time"):
        Snapshot.decode_head(raw, "snapshots/x", lambda: raw)


def test_times_casnap_writes_are_read(made: tuple[Path, Path, str]) -> None:
    repo_dir, _, sid = made
    d = manifest_of(repo_dir, sid)
    for when in ("1000-01-01T00:00:00.000000Z", "1969-07-20T20:17:40.000000Z", d["time"]):
        d["time"] = when
        raw = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
        assert Snapshot.decode(raw).time == when


@pytest.mark.parametrize("when", ["garbage", "2026-12-07T00:00:00+05:00"])
def test_listing_commands_refuse_a_malformed_time(made: tuple[Path, Path, str], when: str) -> None:
    repo_dir, data, sid = made
    d = manifest_of(repo_dir, sid)
    d["time"] = when
    bad = store(repo_dir, d)
    for args in (["show", bad], ["prune", "--keep-last", "1"]):
        one_line(cli(repo_dir, data, *args), 5, f"snapshots/{bad}.*time")
    for args in (["log"], ["stats"]):  # the others listed, that one named
        passed_over(cli(repo_dir, data, *args), bad, "time")


# -- a file entry's chunker -----------------------------------------------------------------------


def nested(depth: int) -> dict:
    value: dict = {"name": "fastcdc"}
    for _ in range(depth):
        value = {"x": value}
    return value


@pytest.mark.parametrize(
    "chunker",
    [
        nested(600),
        nested(2),
        {"name": "faiss-cdc", "vectors": [[4096]]},
        {"name": "fastcdc", "extra": {"min": 1}},
        {f"k{i}": i for i in range(200)},
        {"name": "faiss-cdc", "vectors": list(range(100))},
        ["name", "fastcdc"],
    ],
    ids=["deep", "nested", "list-in-list", "object", "many-fields", "long-list", "not-object"],
)
def test_a_chunker_holding_more_than_parameters_is_refused(
    made: tuple[Path, Path, str], chunker: object
) -> None:
    repo_dir, _, sid = made
    d = manifest_of(repo_dir, sid)
    d["files"][0]["chunker"] = chunker
    raw = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(IntegrityError, match="chunker"):
        Snapshot.decode(raw, "snapshots/x")


def test_chunkers_casnap_writes_are_read(made: tuple[Path, Path, str]) -> None:
    repo_dir, _, sid = made
    d = manifest_of(repo_dir, sid)
    kept = Snapshot.decode(json.dumps(d).encode())
    assert {f.chunker["name"] for f in kept.files} >= {"sqlite", "faiss-cdc", "fastcdc"}
    d["files"][0]["chunker"] = {"name": "x", "f": 0.5, "big": 1 << 70, "n": None, "l": [1, "a"]}
    raw = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    assert Snapshot.decode(raw).encode() == raw


def test_a_deeply_nested_chunker_is_an_integrity_error_everywhere(
    made: tuple[Path, Path, str], tmp_path: Path
) -> None:
    repo_dir, data, sid = made
    d = manifest_of(repo_dir, sid)
    d["files"][0]["chunker"] = nested(600)
    bad = store(repo_dir, d)
    target = tmp_path / "target"
    first = d["files"][0]["path"]
    for args in (
        ["show", bad],
        ["ls", bad],
        ["cat", bad, first],
        ["diff", sid, bad],
        ["checkout", bad, "--to", str(target)],
        ["gc"],
    ):
        one_line(cli(repo_dir, data, *args), 5, f"snapshots/{bad}.*chunker")
    assert not target.exists()
    one_line(cli(repo_dir, data, "verify"), 9, f"damaged snapshot.*{bad[:8]}")


# -- deep paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_PATH_DEPTH + 1, 3000])
def test_a_path_nested_too_deeply_is_refused(
    made: tuple[Path, Path, str], tmp_path: Path, depth: int
) -> None:
    repo_dir, data, sid = made
    d = manifest_of(repo_dir, sid)
    d["files"][0]["path"] = "/".join(["d"] * (depth - 1) + ["f"])
    bad = store(repo_dir, d)
    target = tmp_path / "target"
    for args in (["checkout", bad, "--to", str(target)], ["ls", bad], ["show", bad]):
        one_line(cli(repo_dir, data, *args), 5, "nested too deeply")
    assert not target.exists()
    with pytest.raises(HostileManifest):
        Repository.open(repo_dir).load_snapshot(ObjectId.from_hex(bad))


def test_the_deepest_path_allowed_is_committed_and_restored(tmp_path: Path) -> None:
    data = tmp_path / "data"
    deep = data.joinpath(*["d"] * (MAX_PATH_DEPTH - 1))
    deep.mkdir(parents=True)
    (deep / "f").write_bytes(b"deep")
    (data / "g").write_bytes(b"flat")
    too_deep = deep / "e"
    too_deep.mkdir()
    (too_deep / "h").write_bytes(b"too deep")
    repo = Repository.init(tmp_path / "repo", small_config())
    r = commit(repo, data)
    sid = r.id
    snap = repo.load_snapshot(repo.resolve(sid))
    assert sorted(f.path.count("/") + 1 for f in snap.files) == [1, MAX_PATH_DEPTH]
    assert [w for w in r.warnings if "nested too deeply" in w] == [
        "/".join(["d"] * (MAX_PATH_DEPTH - 1) + ["e"])
        + ": not stored (folders nested too deeply: a manifest holds at most "
        + f"{MAX_PATH_DEPTH} levels)"
    ]
    target = tmp_path / "target"
    proc = cli(tmp_path / "repo", data, "checkout", sid, "--to", str(target))
    assert proc.returncode == 0, proc.stderr
    assert (target.joinpath(*["d"] * (MAX_PATH_DEPTH - 1)) / "f").read_bytes() == b"deep"
    # what a commit leaves out is said even with -q (a nightly `commit -q` lost it in silence)
    (data / "g").write_bytes(b"changed")
    proc = cli(tmp_path / "repo", data, "-q", "commit")
    assert proc.returncode == 0 and "nested too deeply" in proc.stderr, proc.stderr


# -- entries that disagree with their chunk lists ------------------------------------------------


@pytest.fixture
def plain(tmp_path: Path) -> tuple[Path, Path, str]:
    """A repository with one snapshot of a.txt (6 bytes), b.txt (7 bytes), big.bin (200000)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_bytes(b"hello\n")
    (data / "b.txt").write_bytes(b"world!\n")
    (data / "big.bin").write_bytes(random.Random(7).randbytes(200_000))
    repo = Repository.init(tmp_path / "repo", small_config())
    sid = commit(repo, data).id
    return tmp_path / "repo", data, sid


def entry(d: dict, path: str) -> dict:
    return next(f for f in d["files"] if f["path"] == path)


def _more_chunks(d: dict) -> None:
    entry(d, "a.txt")["chunks"] += 1


def _list_of_another(d: dict) -> None:
    entry(d, "a.txt")["lists"] = entry(d, "big.bin")["lists"]


def _huge_size(d: dict) -> None:
    entry(d, "a.txt")["size"] = 1 << 62
    d["totals"]["bytes"] = sum(f["size"] for f in d["files"])


def _hash_of_another(d: dict) -> None:
    entry(d, "a.txt")["hash"] = entry(d, "b.txt")["hash"]


@pytest.mark.parametrize(
    ("change", "read_data", "pattern"),
    [
        (_more_chunks, False, "a.txt.*2 chunks"),
        (_list_of_another, False, "a.txt.*6 bytes"),
        (_huge_size, False, f"a.txt.*{1 << 62} bytes"),
        (_hash_of_another, True, "a.txt.*hash"),
    ],
    ids=["chunks", "another-list", "size", "another-hash"],
)
def test_verify_finds_what_checkout_refuses(
    plain: tuple[Path, Path, str], tmp_path: Path, change, read_data: bool, pattern: str
) -> None:
    repo_dir, data, sid = plain
    d = manifest_of(repo_dir, sid)
    change(d)
    bad = store(repo_dir, d)
    one_line(cli(repo_dir, data, "checkout", bad, "--to", str(tmp_path / "t")), 5, "a.txt")
    args = ["verify", "--read-data"] if read_data else ["verify"]
    proc = cli(repo_dir, data, *args, "--json")
    assert proc.returncode == 9, proc.stderr
    report = json.loads(proc.stdout)
    assert report["damaged"] == {bad: ["a.txt"]}
    (problem,) = report["problems"]
    assert problem["kind"] == "file"
    assert problem["affected"] == [{"snapshot": bad, "path": "a.txt"}]
    assert re.search(pattern, problem["message"]), problem["message"]
    one_line(cli(repo_dir, data, *args), 9, f"{bad[:8]} \\(a.txt\\)")
    # the snapshot it was made from is whole
    assert cli(repo_dir, data, "verify", "--read-data", sid).returncode == 0


def test_verify_without_read_data_does_not_hash_files(plain: tuple[Path, Path, str]) -> None:
    repo_dir, data, sid = plain
    d = manifest_of(repo_dir, sid)
    _hash_of_another(d)
    store(repo_dir, d)
    proc = cli(repo_dir, data, "verify")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("field", ["size", "lists", "chunks", "hash"])
def test_a_link_must_equal_its_target(
    plain: tuple[Path, Path, str], tmp_path: Path, field: str
) -> None:
    repo_dir, data, sid = plain
    d = manifest_of(repo_dir, sid)
    a, big = entry(d, "a.txt"), entry(d, "big.bin")
    big.update({k: a[k] for k in ("size", "lists", "chunks", "hash") if k != field})
    big["link"] = "a.txt"
    d["totals"]["bytes"] = sum(f["size"] for f in d["files"])
    raw = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(HostileManifest, match="links 'big.bin' to 'a.txt'"):
        Snapshot.decode(raw, "snapshots/x")
    bad = store(repo_dir, d)
    target = tmp_path / "t"
    one_line(cli(repo_dir, data, "checkout", bad, "--to", str(target)), 5, "links 'big.bin'")
    assert not target.exists()
    one_line(cli(repo_dir, data, "verify"), 9, f"damaged snapshot.*{bad[:8]} \\(manifest\\)")


def test_a_link_equal_to_its_target_is_read(plain: tuple[Path, Path, str]) -> None:
    repo_dir, _, sid = plain
    d = manifest_of(repo_dir, sid)
    a, b = entry(d, "a.txt"), entry(d, "b.txt")
    b.update({k: a[k] for k in ("size", "lists", "chunks", "hash")}, link="a.txt")
    d["totals"]["bytes"] = sum(f["size"] for f in d["files"])
    raw = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    assert Snapshot.decode(raw).encode() == raw


# -- numbers past 64 bits ------------------------------------------------------------------------


def _huge_totals(d: dict) -> None:
    d["totals"] = {"files": 10**30, "bytes": 10**400}


def _huge_size_without_totals(d: dict) -> None:
    d["files"][0]["size"] = 10**400
    del d["totals"]  # as a manifest written before totals were recorded


@pytest.mark.parametrize(
    "change", [_huge_totals, _huge_size_without_totals], ids=["totals", "size"]
)
def test_sizes_past_63_bits_are_an_integrity_error(made: tuple[Path, Path, str], change) -> None:
    repo_dir, data, sid = made
    d = manifest_of(repo_dir, sid)
    change(d)
    bad = store(repo_dir, d)
    for args in (["show", bad], ["prune", "--keep-last", "1"]):
        one_line(cli(repo_dir, data, *args), 5, f"snapshots/{bad}.*range")
    for args in (["log"], ["stats"]):
        proc = cli(repo_dir, data, *args)
        if change is _huge_totals:  # its head does not read: passed over
            passed_over(proc, bad, "range")
        else:  # its head reads; its file list, read to count its files, stops them
            one_line(proc, 5, f"snapshots/{bad}.*range")


def test_a_counter_too_large_for_a_float_is_still_listed(made: tuple[Path, Path, str]) -> None:
    """The commit's counters are read as they are (any integer); log and stats show one past
    what a float holds as the largest size instead of failing."""
    repo_dir, data, sid = made
    d = manifest_of(repo_dir, sid)
    d["stats"]["bytes_added"] = 10**400
    bad = store(repo_dir, d)
    for args in (["log"], ["stats"]):
        proc = cli(repo_dir, data, *args)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    line = next(x for x in cli(repo_dir, data, "log").stdout.splitlines() if x.startswith(bad[:8]))
    assert ">= 8 EiB" in line


# -- a small file whose size disagrees with its chunks, in a folder of its own ---------------------


def test_a_small_file_whose_size_lies_is_an_integrity_error_in_a_new_folder(
    made: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """A small file that the batched restore passes over (its chunks do not add up to its size)
    is restored on its own; its folder, which no other file made, is made first, so the checkout
    names the damaged manifest (exit 5) rather than a missing folder of the stage (exit 1)."""
    repo_dir, data, _ = made
    (data / "notes" / "deep").mkdir(parents=True)
    (data / "notes" / "deep" / "a.txt").write_text("a small file of its own folder\n")
    sid = commit(Repository.open(repo_dir), data).id
    d = manifest_of(repo_dir, sid)
    entry = next(f for f in d["files"] if f["path"] == "notes/deep/a.txt")
    d["totals"]["bytes"] -= entry["size"] - 1
    entry["size"] = 1
    bad = store(repo_dir, d)
    target = tmp_path / "target"
    proc = cli(repo_dir, data, "checkout", bad, "--to", str(target), "--no-smoke")
    one_line(proc, 5, "notes/deep/a.txt")
    assert not target.exists()


def test_small_files_of_a_frame_that_does_not_decode_name_the_damage(tmp_path: Path) -> None:
    """The same path from real damage: a flipped byte in the zstd frame holding a batch of small
    files, all in a folder of their own; they are restored again one by one, which names the
    chunk and its pack (exit 5), not the stage's folder."""
    data = tmp_path / "data"
    (data / "a" / "b").mkdir(parents=True)
    for i in range(20):
        (data / "a" / "b" / f"f{i}.txt").write_text(f"line {i} of some text\n" * 300)
    repo_dir = tmp_path / "repo"
    commit(Repository.init(repo_dir, small_config()), data)
    [pack] = [p for p in (repo_dir / "packs").rglob("*") if p.is_file()]
    raw = bytearray(pack.read_bytes())
    assert raw[16] == 1  # the first frame, right after the pack's header, is zstd
    raw[20] ^= 0xFF  # inside the zstd frame's header
    pack.chmod(0o600)
    pack.write_bytes(bytes(raw))
    target = tmp_path / "target"
    proc = cli(repo_dir, data, "checkout", "latest", "--to", str(target), "--no-smoke")
    one_line(proc, 5, r"a/b/f\d+\.txt: chunk [0-9a-f]{64}: frame at 16 in pack [0-9a-f]{64}")
    assert not target.exists()


def _size_lie(repo_dir: Path, sid: str, path: str) -> str:
    d = manifest_of(repo_dir, sid)
    entry = next(f for f in d["files"] if f["path"] == path)
    d["totals"]["bytes"] -= entry["size"] - 1
    entry["size"] = 1
    return store(repo_dir, d)


def test_a_copy_passes_over_a_snapshot_whose_sizes_lie(
    made: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """A file entry whose chunks add up to more bytes than its size (verify calls the snapshot
    damaged) is damage in the source: the copy names that snapshot and passes it over (exit 5),
    as for a chunk list that does not decode; it copied it, manifest and all, and the copy
    failed verify. cat says the same of the file."""
    repo_dir, data, sid = made
    path = next(f["path"] for f in manifest_of(repo_dir, sid)["files"] if f["size"] > 1)
    bad = _size_lie(repo_dir, sid, path)
    dst = tmp_path / "dst"
    Repository.init(dst, small_config())
    proc = cli(repo_dir, data, "copy", "--to", str(dst))
    line = one_line(proc, 5, f"{bad[:8]}.*{path}")
    assert sid[:8] not in line
    assert sorted(p.name for p in (dst / "snapshots").iterdir()) == [sid]
    assert cli(dst, data, "verify").returncode == 0
    one_line(cli(repo_dir, data, "cat", bad, path), 5, f"chunk list of {path} holds \\d+ bytes")


def test_a_copy_checks_the_size_of_every_entry_sharing_a_chunk_list(
    made: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """Two entries of one chunk list (the same content at two paths): the list is sent once,
    and the second entry's size, which lies, is checked against it all the same."""
    repo_dir, data, sid = made
    d = manifest_of(repo_dir, sid)
    first = next(f for f in d["files"] if f["size"] > 1)
    twin = dict(first, path=first["path"] + ".twin", size=1, source=None)
    d["files"] = sorted([*d["files"], twin], key=lambda f: f["path"])
    d["totals"] = {"files": d["totals"]["files"] + 1, "bytes": d["totals"]["bytes"] + 1}
    bad = store(repo_dir, d)
    dst = tmp_path / "dst"
    Repository.init(dst, small_config())
    proc = cli(repo_dir, data, "copy", bad, "--to", str(dst))
    one_line(proc, 5, f"{bad[:8]}.*{twin['path']} holds \\d+ bytes, its entry says 1")
    assert not list(dst.glob("snapshots/*"))


@pytest.mark.parametrize(
    "dirs",
    [{"sub": [493]}, {"sub": "rwx"}, {"sub": [493, 0, 0, 1]}, {"sub": {"mode": 493}}, ["sub"]],
    ids=["one-value", "a-string", "four-values", "an-object", "a-list"],
)
def test_a_malformed_folder_entry_is_named_as_such(made: tuple[Path, Path, str], dirs) -> None:
    """A `dirs` value that is no (mode, uid, gid) triple was reported with Python's own words
    ("not enough values to unpack (expected 3, got 1)"): the folder and what is wrong are
    named now."""
    repo_dir, _, sid = made
    d = manifest_of(repo_dir, sid)
    d["dirs"] = dirs
    raw = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(IntegrityError) as info:
        Snapshot.decode(raw, "snapshots/x")
    message = str(info.value)
    assert "unpack" not in message and "object is not" not in message, message
    assert "folder" in message or "dirs" in message, message
