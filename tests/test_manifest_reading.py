"""Reading manifests: listings read heads only, file lists on first use, canonical bytes kept."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casnap.canonical import canonical_json
from casnap.committer import commit
from casnap.errors import EXIT_CODES, CasnapError, HostileManifest
from casnap.ids import ObjectId, hash_bytes
from casnap.manifest import FileEntry, LazyFiles, Snapshot, chronological, compress_manifest
from casnap.repository import Repository
from tests.helpers_memory import MB, run_measured
from tests.helpers_reliability import run_casnap, small_app
from tests.test_hostile import craft, one_line, small_config


def reference(d: Any) -> bytes:
    """The canonical encoding as it has always been written."""
    return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()


@pytest.fixture
def history(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """A repository with three snapshots of a small real data dir."""
    data = small_app(tmp_path / "data")
    repo = Repository.init(tmp_path / "repo", small_config())
    sids = []
    for i in range(3):
        (data / f"note{i}.txt").write_text(f"note {i}\n" * 50)
        sids.append(commit(repo, data).id)
    return tmp_path / "repo", data, sids


def test_a_listing_decodes_no_file_list_and_the_lazy_list_equals_the_eager_one(
    history: tuple[Path, Path, list[str]],
) -> None:
    repo_dir, _, sids = history
    repo = Repository.open(repo_dir)
    listed = repo.snapshots()
    assert [sid.hex() for sid, _ in listed] == sids
    for _, snap in listed:
        assert isinstance(snap.files, LazyFiles) and not snap.files.loaded
    assert all(s.file_count > 0 for _, s in listed)
    assert not any(s.files.loaded for _, s in listed if isinstance(s.files, LazyFiles))
    for sid, snap in listed:
        eager = Repository.open(repo_dir).load_snapshot(sid)
        assert isinstance(eager.files, tuple)
        assert tuple(snap.files) == eager.files and snap == eager
        assert snap.file_count == len(eager.files)
        assert snap.logical_bytes == sum(f.size for f in eager.files)
        assert snap.encode() == eager.encode() and hash_bytes(snap.encode()) == sid


def _hide_hostile(sid: str, time: str):
    """A change making an older snapshot whose head reads but whose file list is hostile."""

    def change(d: dict) -> None:
        d["time"] = time
        d["files"][0]["path"] = "../evil"

    return change


def test_commit_and_log_read_no_file_list_but_the_parents(
    history: tuple[Path, Path, list[str]],
) -> None:
    """A damaged file list under an intact head: whatever reads it refuses it (gc, prune,
    forget, verify, checkout); log and a commit, which read no file list but the parent's, go on."""
    repo_dir, data, sids = history
    base = ["--repo", str(repo_dir), "--data", str(data)]
    bad = craft(repo_dir, sids[0], _hide_hostile(sids[0], "2001-01-01T00:00:00.000000Z"))
    log = run_casnap([*base, "log", "--json"])
    assert log.returncode == 0, log.stderr
    rows = json.loads(log.stdout)
    assert bad in {r["id"] for r in (rows if isinstance(rows, list) else rows["snapshots"])}
    proc = run_casnap([*base, "commit", "-m", "no change"])
    assert proc.returncode == 0, proc.stderr
    for args in (["gc"], ["prune", "--keep-last", "1"], ["forget", sids[1]]):
        line = one_line(run_casnap([*base, *args]), EXIT_CODES["integrity"], "unsafe path")
        assert bad in line and "remove" in line
    one_line(run_casnap([*base, "checkout", bad, "--to", str(repo_dir.parent / "t")]), 5, "unsafe")
    verify = run_casnap([*base, "verify"])
    assert verify.returncode != 0 and bad in verify.stdout
    assert len(Repository.open(repo_dir).snapshots()) == 5  # nothing was forgotten


def test_a_damaged_parent_file_list_stops_the_commit(
    history: tuple[Path, Path, list[str]],
) -> None:
    repo_dir, data, sids = history
    craft(repo_dir, sids[-1], _hide_hostile(sids[-1], "2099-01-01T00:00:00.000000Z"))
    proc = run_casnap(["--repo", str(repo_dir), "--data", str(data), "commit"])
    one_line(proc, EXIT_CODES["integrity"], "unsafe path")


def test_a_file_list_that_reads_otherwise_than_its_head_is_refused(
    history: tuple[Path, Path, list[str]],
) -> None:
    """A crafted manifest whose `files` array is followed by a second `host`: cut out at the
    first, its head says another host than the whole manifest does."""
    repo_dir, _, sids = history
    repo = Repository.open(repo_dir)
    raw = repo.load_snapshot(ObjectId.from_hex(sids[0])).encode()
    i = raw.index(b',"files":[') + len(b',"files":[')
    crafted = raw[:i] + b'{"x":[],"host":"ghost"},' + raw[i:]
    crafted = crafted.replace(b'{"x":[],"host":"ghost"},', b'{"x":[1],"host":"ghost","y":0},')
    sid = hash_bytes(crafted)
    (repo_dir / "snapshots" / sid.hex()).write_bytes(compress_manifest(crafted))
    snap = Repository.open(repo_dir).load_snapshot(sid, files=False)
    with pytest.raises(CasnapError):
        len(snap.files)


NAMES = [
    "plain/a.txt",
    "caf\u00e9/na\u00efve.db",
    "\u65e5\u672c/\u30d5\u30a1\u30a4\u30eb",
    "emoji/\U0001f600.bin",
    "ctl/\x01\x1f\t\n\r\x08\x0c\"'.txt",
    "del/\x7f",
    "sur/\udcff\udc80",
]


T0 = "2001-01-01T00:00:00.000000Z"  # a time as manifests record it


def _entry(path: str, **chunker: Any) -> FileEntry:
    return FileEntry(
        path=path, kind="file", size=3, mode=0o644, mtime_ns=1, hash="a" * 64,
        chunker={"name": "fastcdc", **chunker}, lists=("b" * 64,), chunks=1, source=(1, 2),
    )  # fmt: skip


def test_non_ascii_paths_keep_the_canonical_bytes_and_ids() -> None:
    snap = Snapshot(
        time="2026-01-01T00:00:00.000000Z", host="h\u00f6st", user="u", source="/d\u00e4ta",
        paths=(), excludes=("\u00e9x",), message="m\u00e9ssage \U0001f600", tags=("t\u00e4g",),
        parent=None, files=tuple(_entry(p) for p in sorted(NAMES)),
        dirs={"caf\u00e9": (0o755, 0, 0)}, totals=(len(NAMES), 3 * len(NAMES)),
    )  # fmt: skip
    raw = snap.encode()
    as_json: dict[str, Any] = json.loads(raw)
    assert raw == reference(as_json) and raw.isascii()
    assert snap.id == hash_bytes(reference(as_json))
    back = Snapshot.decode(raw)
    assert back == snap and back.encode() == raw
    head = Snapshot.decode_head(raw, "m", lambda: raw)
    assert head == snap and head.encode() == raw


def test_numbers_orjson_reads_otherwise_are_read_as_json_reads_them() -> None:
    """Integers past 64 bits (orjson would make them floats) and floats in a chunker."""
    for extra in ({"big": 1 << 70, "neg": -(1 << 64)}, {"f": 1e16, "g": 0.1}):
        snap = Snapshot(
            time=T0, host="h", user="u", source="/d", paths=(), excludes=(), message="",
            tags=(), parent=None, files=(_entry("a", **extra),), stats={"huge": 1 << 66},
        )  # fmt: skip
        raw = snap.encode()
        assert raw == reference(json.loads(raw))
        back = Snapshot.decode(raw)
        assert back.files[0].chunker == snap.files[0].chunker
        types = {k: type(v) for k, v in back.files[0].chunker.items()}
        assert types == {k: type(v) for k, v in snap.files[0].chunker.items()}
        assert back.encode() == raw


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(value=json_values, key=st.text())
def test_canonical_json_is_json_dumps_byte_for_byte(value: Any, key: str) -> None:
    d = {"files": [{"chunker": value}], key: value, "stats": {"n": 1}}
    assert canonical_json(d) == reference(d)


def test_totals_that_do_not_match_the_files_are_refused() -> None:
    snap = Snapshot(
        time=T0, host="h", user="u", source="/d", paths=(), excludes=(), message="",
        tags=(), parent=None, files=(_entry("a"),), totals=(2, 3),
    )  # fmt: skip
    raw = snap.encode()
    with pytest.raises(CasnapError, match="totals"):
        Snapshot.decode(raw)
    head = Snapshot.decode_head(raw, "m", lambda: raw)
    assert head.file_count == 2  # what the head says, until the file list is read
    with pytest.raises(CasnapError, match="totals"):
        list(head.files)
    hostile = raw.replace(b'"path":"a"', b'"path":"/a"').replace(b'"files":2', b'"files":1')
    head = Snapshot.decode_head(hostile, "m", lambda: hostile)
    with pytest.raises(HostileManifest):
        list(head.files)


def _linked_to(path: str, target: str, **changed: Any) -> FileEntry:
    return _entry(path)._replace(link=target, **changed)


REFUSED_FILE_LISTS = {
    "a path twice": [_entry("a"), _entry("a")],
    "a file and a folder": [_entry("a"), _entry("a/b")],
    "a file below a file": [_entry("a/b"), _entry("a/b/c/d")],
    "a link to a path it lacks": [_entry("y/b")._replace(link="x/a")],
    "a link to a link": [_entry("a"), _linked_to("b", "a"), _linked_to("c", "b")],
    "a link to other content": [_entry("a"), _linked_to("b", "a", hash="c" * 64)],
}


@pytest.mark.parametrize("files", REFUSED_FILE_LISTS.values(), ids=REFUSED_FILE_LISTS.keys())
def test_the_check_before_a_manifest_is_stored_refuses_what_a_reader_refuses(
    files: list[FileEntry],
) -> None:
    snap = Snapshot(
        time=T0, host="h", user="u", source="/d", paths=(), excludes=(), message="",
        tags=(), parent=None, files=tuple(files), totals=(len(files), 3 * len(files)),
    )  # fmt: skip
    with pytest.raises(HostileManifest):
        Snapshot.decode(snap.encode())
    with pytest.raises(HostileManifest):
        snap.check()


def test_the_check_before_a_manifest_is_stored_refuses_totals_that_do_not_match() -> None:
    snap = Snapshot(
        time=T0, host="h", user="u", source="/d", paths=(), excludes=(), message="",
        tags=(), parent=None, files=(_entry("a"),), totals=(1, 4),
    )  # fmt: skip
    with pytest.raises(CasnapError, match="totals"):
        snap.check()
    assert dataclasses.replace(snap, totals=(1, 3)).check()


def _big(d: dict, i: int, count: int) -> None:
    """d as a snapshot of count files of another data dir, taken at time i (never a parent)."""
    entry = d["files"][0]
    d["files"] = [dict(entry, path=f"f/{n:06d}.bin") for n in range(count)]
    d["time"] = f"2001-01-01T00:00:{i:02d}.000000Z"
    d["source"] = "/elsewhere"
    d["totals"] = {"files": count, "bytes": count * entry["size"]}


def test_the_peak_memory_of_log_does_not_grow_with_the_number_of_big_manifests(
    history: tuple[Path, Path, list[str]],
) -> None:
    repo_dir, data, sids = history
    base = ["--repo", str(repo_dir), "--data", str(data), "log"]
    craft(repo_dir, sids[0], lambda d: _big(d, 0, 20_000))
    one, one_peak = run_measured(base)
    assert one.returncode == 0, one.stderr
    for i in range(1, 6):
        craft(repo_dir, sids[0], lambda d, i=i: _big(d, i, 20_000))
    six, six_peak = run_measured(base)
    assert six.returncode == 0, six.stderr
    assert len(six.stdout.splitlines()) > len(one.stdout.splitlines())
    # each such manifest decoded takes ~30 MB; read for its head, nothing stays
    assert six_peak - one_peak < 40 * MB, (one_peak, six_peak)


def test_chronological_puts_a_snapshot_after_its_parent_among_equal_times() -> None:
    """Of equal times each snapshot follows its parent, the others by id; a loop of parents
    (no commit writes one) and a parent at another time leave id order."""

    def snap(time: str, parent: ObjectId | None) -> Snapshot:
        return Snapshot(
            time=time, host="h", user="u", source="/d", paths=(), excludes=(), message="",
            tags=(), parent=None if parent is None else parent.hex(), files=(),
        )  # fmt: skip

    t, earlier = "2026-01-01T00:00:00.000000Z", "2025-12-31T00:00:00.000000Z"
    ids = sorted(ObjectId(bytes([b]) * 32) for b in (9, 1, 5, 3, 7, 2))
    old = (ids[5], snap(earlier, None))
    a = (ids[4], snap(t, old[0]))  # the first of the day: its parent is older
    b = (ids[0], snap(t, a[0]))
    c = (ids[3], snap(t, b[0]))
    other = (ids[2], snap(t, None))  # another group's, unrelated
    assert chronological([c, other, b, old, a]) == [old, other, a, b, c]
    x = (ids[1], snap(t, ids[0]))
    loop = [(ids[0], snap(t, ids[1])), x]
    assert chronological(loop) == sorted(loop, key=lambda kv: kv[0].hex())


def test_chronological_puts_a_snapshot_whose_parent_was_forgotten_after_the_first_ones() -> None:
    """A snapshot naming a parent the repository no longer holds (forgotten) was made after
    that parent, so after the snapshots of its time whose parent is held or none: sorted by id
    among them, it could come first, and `latest` name an older state."""

    def snap(parent: ObjectId | None) -> Snapshot:
        return Snapshot(
            time="2026-01-01T00:00:00.000000Z", host="h", user="u", source="/d", paths=(),
            excludes=(), message="", tags=(), parent=None if parent is None else parent.hex(),
            files=(),
        )  # fmt: skip

    ids = [ObjectId(bytes([b]) * 32) for b in (9, 5, 7, 1, 3)]
    first = (ids[0], snap(None))
    second = (ids[1], snap(first[0]))
    # ids[2], made third, forgotten
    fourth = (ids[3], snap(ids[2]))
    fifth = (ids[4], snap(fourth[0]))
    assert chronological([fifth, second, first, fourth]) == [first, second, fourth, fifth]
