"""Hostile and bad input: crafted manifests, symlink tricks, damaged repositories, fuzzed parsers,
and every user error the CLI can meet answered with one line on stderr and the documented exit
code, with no traceback, nothing written outside the target and no temp file left behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casnap import chunkindex, chunklist, compression, locks, manifest, packs
from casnap.backends import LocalBackend, MemoryBackend
from casnap.committer import commit
from casnap.config import default_config
from casnap.errors import EXIT_CODES, CasnapError, HostileManifest
from casnap.ids import ObjectId, hash_bytes
from casnap.manifest import compress_manifest
from casnap.repository import Repository
from casnap.restorer import checkout
from tests.conftest import evolve_app
from tests.helpers_reliability import (
    ROOT,
    casnap_env,
    run_casnap,
    small_app,
    small_config,
    temp_files,
)
from tests.util import raw_tree

# -- the parsers, fuzzed: only CasnapError may escape ----------------------------------------------

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats()
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def only_casnap_errors(fn, *args) -> None:
    try:
        result = fn(*args)
        if hasattr(result, "__next__"):
            list(result)
    except CasnapError:
        pass


@FUZZ
@given(blob=st.binary(max_size=400), plain=st.integers(min_value=-3, max_value=1 << 20))
def test_fuzz_raw_bytes(blob: bytes, plain: int) -> None:
    only_casnap_errors(compression.decode, blob, plain)
    only_casnap_errors(chunkindex.decode_index, "index/x", blob)
    only_casnap_errors(packs.parse_pack_directory, "packs/x", blob)
    only_casnap_errors(chunklist.resolve, [blob])
    only_casnap_errors(chunklist.named_refs, blob)
    only_casnap_errors(manifest.Snapshot.decode, blob)


@FUZZ
@given(
    body=st.binary(max_size=600),
    magic=st.sampled_from([b"", chunkindex.INDEX_MAGIC]),
    mid=st.binary(max_size=200),
    records=st.integers(0, 6),
)
def test_fuzz_structured_index_and_pack(
    body: bytes, magic: bytes, mid: bytes, records: int
) -> None:
    cctx = zstandard.ZstdCompressor()
    only_casnap_errors(chunkindex.decode_index, "index/x", cctx.compress(magic + body))
    # a pack whose directory is a valid zstd frame of whole (random) records, checksummed right
    raw = (mid * (1 + records * packs.DIR_ENTRY_SIZE // max(1, len(mid))))[
        : records * packs.DIR_ENTRY_SIZE
    ]
    for directory in (mid, cctx.compress(raw)):
        trailer = (
            len(directory).to_bytes(4, "little")
            + bytes(hash_bytes(directory))[:16]
            + packs.PACK_END
        )
        only_casnap_errors(
            packs.parse_pack_directory, "packs/x", packs.PACK_HEADER + body + directory + trailer
        )


@FUZZ
@given(
    bodies=st.lists(
        st.tuples(st.sampled_from([b"\x00", b"\x01", b"\x02"]), st.binary(max_size=120)).map(
            lambda t: t[0] + t[1]
        ),
        min_size=1,
        max_size=4,
    ),
    base=st.binary(max_size=108),
)
def test_fuzz_chunk_lists(bodies: list[bytes], base: bytes) -> None:
    """Chunk lists: pieces, deltas against a base, and garbage tags."""
    only_casnap_errors(chunklist.resolve, bodies)
    only_casnap_errors(chunklist.apply_delta, base, bodies[0])
    only_casnap_errors(chunklist.named_refs, bodies[-1])


@FUZZ
@given(plain=st.binary(max_size=2000), cut=st.integers(0, 50), size=st.integers(-2, 5000))
def test_fuzz_codec_frames(plain: bytes, cut: int, size: int) -> None:
    for grouped in (False, True):
        blob = compression.encode(plain, grouped=grouped)
        only_casnap_errors(compression.decode, blob[: max(1, len(blob) - cut)], len(plain))
        only_casnap_errors(compression.decode, blob, size)


MANIFEST = {
    "version": 1,
    "time": "2026-01-01T00:00:00.000000Z",
    "host": "h",
    "user": "u",
    "source": "/data",
    "paths": [],
    "excludes": [],
    "message": "",
    "tags": [],
    "parent": None,
    "files": [],
    "stats": {},
}
ENTRY = {
    "path": "a",
    "kind": "file",
    "size": 1,
    "mode": 0o644,
    "mtime_ns": 1,
    "hash": "0" * 64,
    "chunker": {"name": "fastcdc", "min": 2048, "avg": 8192, "max": 65536},
    "lists": [],
    "chunks": 0,
    "source": None,
}


@FUZZ
@given(field=st.sampled_from(sorted(MANIFEST)), value=json_values)
def test_fuzz_manifest_fields(field: str, value: object) -> None:
    d = dict(MANIFEST, **{field: value})
    only_casnap_errors(manifest.Snapshot.decode, json.dumps(d).encode())


@FUZZ
@given(field=st.sampled_from(sorted(ENTRY)), value=json_values)
def test_fuzz_file_entry_fields(field: str, value: object) -> None:
    d = dict(MANIFEST, files=[dict(ENTRY, **{field: value})])
    only_casnap_errors(manifest.Snapshot.decode, json.dumps(d).encode())


@FUZZ
@given(field=st.sampled_from(sorted(default_config())), value=json_values, raw=st.binary())
def test_fuzz_config(field: str, value: object, raw: bytes) -> None:
    for blob in (json.dumps(dict(default_config(), **{field: value})).encode(), raw):
        backend = MemoryBackend()
        backend.put("config", blob)
        only_casnap_errors(Repository.open_backend, backend)
    backend = MemoryBackend()
    cfg = default_config()
    cfg["chunker"] = {"default": value}
    backend.put("config", json.dumps(cfg).encode())
    only_casnap_errors(Repository.open_backend, backend)


def test_deeply_nested_json_is_an_integrity_error() -> None:
    with pytest.raises(CasnapError, match="nested too deeply"):
        manifest.Snapshot.decode(b"[" * 100_000)
    backend = MemoryBackend()
    backend.put("config", b"[" * 100_000)
    with pytest.raises(CasnapError, match="config is damaged"):
        Repository.open_backend(backend)


def test_deeply_nested_lock_key_and_checkout_record_are_no_internal_error(
    tmp_path: Path,
) -> None:
    """Every JSON casnap reads from a repository or its own records meets a nesting bomb as
    damage (an unreadable lock counts as held), never as a crash."""
    from casnap import keys, restored

    bomb = b"[" * 100_000 + b"]" * 100_000
    backend = MemoryBackend()
    backend.put("locks/" + "ab" * 32, bomb)
    (held,) = locks.holders(backend)
    assert not held.readable and held.exclusive
    with pytest.raises(CasnapError, match="key"):
        keys.parse_key_file("cd" * 32, bomb, "keys/" + "cd" * 32)
    source = str(tmp_path / "data")
    restored._path("ef" * 32, source).parent.mkdir(parents=True, exist_ok=True)
    restored._path("ef" * 32, source).write_bytes(bomb)
    assert restored.load("ef" * 32, source) is None


@pytest.mark.parametrize(
    ("field", "value"),
    [("mode", 1 << 40), ("mode", -1), ("size", -5), ("chunks", -1), ("mtime_ns", 1 << 100)],
)
def test_out_of_range_entry_values_are_rejected(field: str, value: int) -> None:
    d = dict(MANIFEST, files=[dict(ENTRY, **{field: value})])
    with pytest.raises(CasnapError, match="out-of-range"):
        manifest.Snapshot.decode(json.dumps(d).encode())


# -- the CLI: one line, the documented code, nothing left behind -----------------------------------


def one_line(proc: subprocess.CompletedProcess[str], code: int, pattern: str) -> str:
    """The CLI failed with `code` and exactly one stderr line matching pattern, no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("casnap: error: "), lines[0]
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def cli(repo: Path, data: Path, *args: str, faults: str = ""):
    return run_casnap(["--repo", str(repo), "--data", str(data), *args], faults=faults)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, str]:
    """A local repository with one snapshot of a small real data dir."""
    data = small_app(tmp_path / "data")
    repo = Repository.init(tmp_path / "repo", small_config())
    sid = commit(repo, data).id
    return tmp_path / "repo", data, sid


def no_temp_files(*roots: Path) -> None:
    assert not temp_files(*roots), temp_files(*roots)


def craft(repo_dir: Path, sid: str, change) -> str:
    """Store a manifest derived from a real one (real chunk lists) with `change` applied."""
    backend = LocalBackend(repo_dir)
    d = json.loads(manifest.decompress_manifest(backend.get(f"snapshots/{sid}"), "m"))
    change(d)
    raw = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    new = hash_bytes(raw).hex()
    backend.put(f"snapshots/{new}", compress_manifest(raw))
    return new


def _rename_first(path: str):
    def change(d: dict) -> None:
        d["files"][0]["path"] = path

    return change


HOSTILE_PATHS = {
    "dotdot": "../evil",
    "dotdot-inside": "faiss/../../evil",
    "absolute": "/ABS/evil",
    "dot": "./evil",
    "empty-part": "faiss//evil",
    "backslash": "..\\evil",
    "nul": "evil\x00.db",
    "drive": "C:evil",
    # no file name decodes to it (names are read with surrogateescape): not a name to write
    "lone-surrogate": "evil\ud800.db",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_PATHS))
def test_hostile_manifest_paths_are_refused_before_anything_is_written(
    setup: tuple[Path, Path, str], tmp_path: Path, name: str
) -> None:
    repo_dir, data, sid = setup
    path = HOSTILE_PATHS[name].replace("/ABS", str(tmp_path))
    bad = craft(repo_dir, sid, _rename_first(path))
    target = tmp_path / "target"
    proc = cli(repo_dir, data, "checkout", bad, "--to", str(target))
    one_line(proc, EXIT_CODES["integrity"], "unsafe path")
    assert not target.exists() and not (tmp_path / "evil").exists()
    with pytest.raises(HostileManifest):
        Repository.open(repo_dir).load_snapshot(ObjectId.from_hex(bad))
    no_temp_files(repo_dir, tmp_path)


@pytest.mark.parametrize("path", ["../evil", "faiss/../..", "/ABS/evil", ""])
def test_committed_paths_outside_the_data_dir_are_refused(
    setup: tuple[Path, Path, str], tmp_path: Path, path: str
) -> None:
    """A manifest's `paths` (what its commit was given) name places in the data dir: one that
    leaves it is refused as a file path is, before diff or checkout reads or writes there."""
    repo_dir, data, sid = setup
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "secret.txt").write_text("outside\n")

    def change(d: dict) -> None:
        d["paths"] = [path.replace("/ABS", str(tmp_path))]

    bad = craft(repo_dir, sid, change)
    target = tmp_path / "target"
    for args in (["diff", bad], ["ls", bad], ["checkout", bad, "--to", str(target)]):
        one_line(cli(repo_dir, data, *args), EXIT_CODES["integrity"], "unsafe path")
    assert not target.exists()
    assert (tmp_path / "evil" / "secret.txt").read_text() == "outside\n"


def _duplicate(d: dict) -> None:
    d["files"].append(dict(d["files"][1]))


def _file_and_folder(d: dict) -> None:
    d["files"].append(dict(d["files"][0], path="faiss"))


@pytest.mark.parametrize(
    ("change", "pattern"),
    [(_duplicate, "twice"), (_file_and_folder, "as file and folder")],
    ids=["duplicate", "file-and-folder"],
)
def test_ambiguous_manifests_are_refused(
    setup: tuple[Path, Path, str], tmp_path: Path, change, pattern: str
) -> None:
    repo_dir, data, sid = setup
    bad = craft(repo_dir, sid, change)
    target = tmp_path / "target"
    one_line(cli(repo_dir, data, "checkout", bad, "--to", str(target)), 5, pattern)
    assert not target.exists()


def test_set_id_bits_of_a_manifest_are_not_restored(
    setup: tuple[Path, Path, str], tmp_path: Path
) -> None:
    repo_dir, data, sid = setup

    def setuid(d: dict) -> None:
        for f in d["files"]:
            f["mode"] = 0o6777

    bad = craft(repo_dir, sid, setuid)
    target = tmp_path / "target"
    assert cli(repo_dir, data, "checkout", bad, "--to", str(target)).returncode == 0
    modes = {p.stat().st_mode & 0o7777 for p in target.rglob("*") if p.is_file()}
    assert modes == {0o777}


@pytest.mark.parametrize("trick", ["folder-outside", "folder-inside", "file-outside", "dangling"])
def test_symlinks_in_the_target_are_never_followed(
    setup: tuple[Path, Path, str], tmp_path: Path, trick: str
) -> None:
    repo_dir, data, sid = setup
    target = tmp_path / "target"
    shutil.copytree(data, target)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"must stay")
    if trick == "folder-outside":
        shutil.rmtree(target / "faiss")
        (target / "faiss").symlink_to(outside)
    elif trick == "folder-inside":
        (target / "faiss").rename(target / "real")
        (target / "faiss").symlink_to(target / "real")
    elif trick == "file-outside":
        (target / "app.db").unlink()
        (target / "app.db").symlink_to(outside / "victim")
    else:
        (target / "app.db").unlink()
        (target / "app.db").symlink_to(outside / "not-there")
    (target / "notes.txt").write_text("unsaved")  # would force a safety snapshot first
    before = raw_tree(target)
    snaps_before = sorted((repo_dir / "snapshots").iterdir())
    proc = cli(repo_dir, data, "checkout", sid, "--to", str(target), "--force")  # notes.txt
    if trick == "dangling":
        one_line(proc, EXIT_CODES["source"], "exists and is not a file")
    else:
        one_line(proc, EXIT_CODES["integrity"], "symbolic link|resolves outside")
    assert raw_tree(outside) == {"victim": (b"must stay", (outside / "victim").stat().st_mtime_ns)}
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert raw_tree(target) == before
    assert sorted((repo_dir / "snapshots").iterdir()) == snaps_before  # refused before saving
    no_temp_files(target, outside, repo_dir)


def _flip(path: Path, at: float = 0.5) -> None:
    b = bytearray(path.read_bytes())
    b[int(len(b) * at)] ^= 0xFF
    path.write_bytes(bytes(b))


def _first(folder: Path) -> Path:
    return next(p for p in sorted(folder.rglob("*")) if p.is_file())


DAMAGE = {
    "pack-flipped": (lambda r: _flip(_first(r / "packs"), 0.3), r"chunk [0-9a-f]{64} in pack"),
    "pack-truncated": (
        lambda r: _first(r / "packs").write_bytes(_first(r / "packs").read_bytes()[:100]),
        r"packs/\w\w/[0-9a-f]{64} is truncated",
    ),
    "pack-missing": (
        lambda r: [p.unlink() for p in (r / "packs").rglob("*") if p.is_file()],
        r"packs/\w\w/[0-9a-f]{64} is missing",
    ),
    "index-flipped": (
        lambda r: _flip(_first(r / "index")),
        r"index/[0-9a-f]{64}: index file does not match its name",
    ),
    "index-stray": (
        lambda r: (r / "index" / "notes").write_text("x"),
        r"index/notes: index file does not match its name",
    ),
    "manifest-truncated": (
        lambda r: _first(r / "snapshots").write_bytes(_first(r / "snapshots").read_bytes()[:20]),
        r"snapshots/[0-9a-f]{64}: corrupt manifest",
    ),
    "manifest-flipped": (
        lambda r: _flip(_first(r / "snapshots")),
        r"snapshots/[0-9a-f]{64}",
    ),
    "config-garbled": (
        lambda r: (r / "config").write_bytes(b"\x00garbage{"),
        r"config is damaged",
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_repository_gives_an_integrity_error_naming_the_object(
    setup: tuple[Path, Path, str], tmp_path: Path, damage: str
) -> None:
    repo_dir, data, sid = setup
    target = tmp_path / "target"
    shutil.copytree(data, target)
    evolve_app(target, 1)  # every database and index differs: all of them must be restored
    before = raw_tree(target)
    spoil, pattern = DAMAGE[damage]
    spoil(repo_dir)
    proc = cli(repo_dir, data, "checkout", sid, "--to", str(target), "--no-safety-snapshot")
    one_line(proc, EXIT_CODES["integrity"], pattern)
    assert raw_tree(target) == before
    no_temp_files(target, repo_dir)


def _config_changed(change) -> Callable[[Path], None]:
    """A spoiler that rewrites the repository's config as change(its JSON) returns it."""

    def spoil(repo_dir: Path) -> None:
        cfg = json.loads((repo_dir / "config").read_text())
        (repo_dir / "config").write_text(json.dumps(change(cfg)))

    return spoil


def _without(cfg: dict, *path: str) -> dict:
    inner = cfg
    for key in path[:-1]:
        inner = inner[key]
    del inner[path[-1]]
    return cfg


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (lambda cfg: {}, r"the format version \(casnap_format\) is missing"),
        (lambda cfg: [], r"it is not a JSON object"),
        (lambda cfg: _without(cfg, "chunker"), r"the chunker section \(chunker\) is missing"),
        (
            lambda cfg: _without(cfg, "chunker", "default"),
            r"the chunker of plain files \(chunker.default\) is missing",
        ),
        (
            lambda cfg: {**cfg, "chunker": "fastcdc"},
            r"the chunker section \(chunker\) is not a JSON",
        ),
        (lambda cfg: _without(cfg, "pack_target"), r"the pack size \(pack_target\) is missing"),
        (
            lambda cfg: _without(cfg, "zstd_level"),
            r"the compression level \(zstd_level\) is missing",
        ),
    ],
    ids=[
        "empty",
        "list",
        "no-chunker",
        "no-default-chunker",
        "chunker-text",
        "no-pack",
        "no-level",
    ],
)
def test_a_config_missing_a_field_says_which_in_words(
    setup: tuple[Path, Path, str], change: Callable[[dict], object], pattern: str
) -> None:
    """A config reading `{}` said "config is damaged: 'casnap_format'", a KeyError's bare text:
    the line names what is missing (or of the wrong kind) in words."""
    repo_dir, data, _sid = setup
    _config_changed(change)(repo_dir)
    line = one_line(cli(repo_dir, data, "log"), EXIT_CODES["integrity"], "config is damaged: ")
    assert re.search(pattern, line), line


def test_unknown_and_ambiguous_ids(setup: tuple[Path, Path, str], tmp_path: Path) -> None:
    repo_dir, data, sid = setup
    other = "0000" if not sid.startswith("0000") else "ffff"
    one_line(cli(repo_dir, data, "checkout", other), 4, f"no snapshot matches '{other}'")
    one_line(cli(repo_dir, data, "show", sid[:3]), 4, "at least 4 hex digits")
    seen: dict[str, int] = {}
    n = 0
    while True:  # two real manifests whose ids share 4 hex digits
        n += 1
        prefix = craft_id(repo_dir, sid, n)
        if prefix[:4] in seen:
            break
        seen[prefix[:4]] = n
    for m in (seen[prefix[:4]], n):
        craft(repo_dir, sid, lambda d, m=m: d.__setitem__("message", f"m{m}"))
    one_line(cli(repo_dir, data, "checkout", prefix[:4]), 4, "matches 2 snapshots")


def craft_id(repo_dir: Path, sid: str, n: int) -> str:
    backend = LocalBackend(repo_dir)
    d = json.loads(manifest.decompress_manifest(backend.get(f"snapshots/{sid}"), "m"))
    d["message"] = f"m{n}"
    return hash_bytes(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hex()


def test_repository_missing_foreign_or_newer(setup: tuple[Path, Path, str], tmp_path: Path) -> None:
    repo_dir, data, _ = setup
    one_line(cli(tmp_path / "nowhere", data, "log"), 3, "no casnap repository")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep")
    one_line(cli(foreign, data, "log"), 3, "not a casnap repository")
    one_line(cli(foreign, data, "commit"), 3, "not a casnap repository")
    assert sorted(p.name for p in foreign.iterdir()) == ["precious.txt"]
    cfg = json.loads((repo_dir / "config").read_text())
    cfg["casnap_format"] = 99
    (repo_dir / "config").write_text(json.dumps(cfg))
    one_line(cli(repo_dir, data, "log"), 3, "format 99.*upgrade casnap")
    no_temp_files(repo_dir, foreign)


def test_missing_data_dir(setup: tuple[Path, Path, str], tmp_path: Path) -> None:
    repo_dir, _data, _ = setup
    one_line(cli(repo_dir, tmp_path / "gone", "commit"), 7, "does not exist")
    no_temp_files(repo_dir)


def test_full_disk_from_the_backend(setup: tuple[Path, Path, str], tmp_path: Path) -> None:
    repo_dir, data, sid = setup
    (data / "new.bin").write_bytes(os.urandom(50_000))
    faults = "put:enospc:1:packs/"
    one_line(cli(repo_dir, data, "commit", faults=faults), 8, r"packs/.*no space left on device")
    no_temp_files(repo_dir, data)
    assert cli(repo_dir, data, "checkout", sid, "--to", str(tmp_path / "o")).returncode == 0


# -- permissions: chmod bites only without root's capabilities -------------------------------------


def unprivileged() -> list[str]:
    """A command prefix under which chmod 000 denies access: none for a normal user; for root,
    setpriv dropping every capability (root without them is bound by file modes)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip(
            "running as root without setpriv (util-linux): root keeps its capabilities, so "
            "chmod cannot deny it access"
        )
    prefix = [setpriv, "--bounding-set=-all", "--inh-caps=-all", "--"]
    with tempfile.TemporaryDirectory() as tmp:
        locked = Path(tmp, "locked")
        locked.mkdir(mode=0)
        probe = subprocess.run(
            [*prefix, sys.executable, "-c", f"import os; os.listdir({str(locked)!r})"],
            capture_output=True,
            text=True,
        )
        locked.chmod(0o700)
    if "PermissionError" not in probe.stderr:
        pytest.skip(
            "running as root and dropping capabilities with setpriv does not make chmod 000 "
            f"deny access here ({probe.stderr.strip()[-200:] or 'access granted'})"
        )
    return prefix


def cli_unprivileged(repo: Path, data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*unprivileged(), sys.executable, "-m", "casnap", "--repo", str(repo), "--data", str(data)]
        + list(args),
        env=casnap_env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


@pytest.mark.parametrize("what", ["data-dir", "one-file", "repository"])
def test_unreadable_data(setup: tuple[Path, Path, str], what: str) -> None:
    repo_dir, data, _ = setup
    locked = {"data-dir": data, "one-file": data / "faiss" / "ivf.index", "repository": repo_dir}
    path = locked[what]
    path.chmod(0)
    try:
        proc = cli_unprivileged(repo_dir, data, "commit")
    finally:
        path.chmod(0o755 if path.is_dir() else 0o644)
    one_line(proc, EXIT_CODES["storage"], "Permission denied")
    no_temp_files(repo_dir, data)
    assert len(list((repo_dir / "snapshots").iterdir())) == 1


def test_read_only_target(setup: tuple[Path, Path, str], tmp_path: Path) -> None:
    repo_dir, data, sid = setup
    target = tmp_path / "target"
    shutil.copytree(data, target)
    (target / "app.db").write_bytes(b"SQLite format 3\x00" + b"\x00" * 2000)  # to be replaced
    before = raw_tree(target)
    folders = [target, target / "faiss"]
    for d in folders:
        d.chmod(0o555)
    try:
        proc = cli_unprivileged(repo_dir, data, "checkout", sid, "--to", str(target))
    finally:
        for d in folders:
            d.chmod(0o755)
    one_line(proc, EXIT_CODES["storage"], "app.db: its folder .* is not writable by this user")
    assert raw_tree(target) == before
    no_temp_files(target, repo_dir)


# -- a really full disk: a 2 MiB tmpfs in a private mount namespace --------------------------------

FULL_DISK = r"""
import contextlib, json, os, shutil, sqlite3, subprocess, sys
from pathlib import Path
small, seed, data, sid, out = (Path(p) for p in sys.argv[1:6])
repo, target = small / "repo", small / "target"
shutil.copytree(seed, repo)
def run(*args):
    p = subprocess.run([sys.executable, "-m", "casnap", "--repo", str(repo), "--data", str(data),
                        *args], capture_output=True, text=True)
    return [p.returncode, p.stderr]
def temps():
    return [str(p) for p in small.rglob(".casnap-tmp-*")]
res = {"pack": run("commit"), "temps_pack": temps()}
(data / "faiss" / "big.index").unlink()
# an app holds the database open in WAL mode, its rows in the -wal: the image is made by the
# backup API in the repository's tmp/ (a database read in place needs no scratch space)
with contextlib.closing(sqlite3.connect(data / "app.db")) as db:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("CREATE TABLE blobs(b BLOB)")
    db.executemany("INSERT INTO blobs VALUES (?)", [(os.urandom(4000),) for _ in range(800)])
    db.commit()
    res["image"] = run("commit")
    res["temps_image"] = temps()
res["earlier"] = run("checkout", sid.name, "--to", str(out), "--no-safety-snapshot")
res["checkout"] = run("checkout", "latest", "--to", str(target))
res["temps"] = temps()
res["target"] = sorted(str(p) for p in target.rglob("*")) if target.exists() else []
res["snapshots"] = len(list((repo / "snapshots").iterdir()))
print(json.dumps(res))
"""


def in_small_tmpfs(mount: Path, script: str, *args: str) -> dict:
    """Run a python script with a 2 MiB tmpfs mounted at `mount`, in a private mount namespace
    (root: unshare -m; otherwise a user namespace, unshare -rm)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is missing: cannot mount a small filesystem")
    ns = [unshare, "-m", "--propagation", "private"] if os.geteuid() == 0 else [unshare, "-rm"]
    mount.mkdir()
    probe = subprocess.run(
        [*ns, "sh", "-c", f'mount -t tmpfs -o size=1m tmpfs "{mount}"'],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace ({probe.stderr.strip()})")
    cmd = f'mount -t tmpfs -o size=2m tmpfs "{mount}" && exec "$0" "$@"'
    proc = subprocess.run(
        [*ns, "sh", "-c", cmd, sys.executable, "-c", script, *args],
        env=casnap_env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_full_disk_for_real(tmp_path: Path) -> None:
    """Repository and target on a 2 MiB filesystem: new data that does not fit, a database
    image that does not fit, and a checkout that does not fit all fail with exit 8 and one line
    naming what is full, leave no temp file, and the earlier snapshot still restores."""
    small = tmp_path / "small"
    data = small_app(tmp_path / "data")
    (data / "faiss" / "extra.bin").write_bytes(os.urandom(1200 << 10))  # fills most of the disk
    seed = tmp_path / "seed"
    sid = commit(Repository.init(seed, small_config(256 * 1024)), data).id
    (data / "faiss" / "big.index").write_bytes(os.urandom(3 << 20))  # incompressible
    res = in_small_tmpfs(
        small, FULL_DISK, str(small), str(seed), str(data), sid, str(tmp_path / "out")
    )
    for step, pattern in [
        ("pack", r"writing .*packs/.*: no space left on device"),
        ("image", r"copying .*app.db into .*tmp: no space left on device"),
        ("checkout", r"no space left on device"),
    ]:
        code, err = res[step]
        assert code == EXIT_CODES["storage"], (step, err)
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert re.search(pattern, err), (step, err)
    assert "untouched" in res["checkout"][1], res["checkout"]  # not only the stage named
    assert res["temps_pack"] == res["temps_image"] == res["temps"] == []
    assert res["earlier"][0] == 0, res["earlier"]
    assert res["target"] == []  # what the failed checkout created is gone again
    assert res["snapshots"] == 1


FULL_VERIFY = r"""
import json, shutil, subprocess, sys
from pathlib import Path
small, seed, data = (Path(p) for p in sys.argv[1:4])
repo = small / "repo"
shutil.copytree(seed, repo)
with open(small / "filler", "wb") as f:  # the disk full, as the backups' disk often is
    try:
        while True:
            f.write(bytes(1 << 16))
            f.flush()
    except OSError:
        pass
res = {}
for command in (["verify", "--read-data"], ["log"], ["ls", "latest"]):
    p = subprocess.run([sys.executable, "-m", "casnap", "--repo", str(repo), "--data",
                        str(data), *command], capture_output=True, text=True)
    res[command[0]] = [p.returncode, p.stderr]
print(json.dumps(res))
"""


def test_a_repository_on_a_full_disk_is_still_read(tmp_path: Path) -> None:
    """verify (and every command that only reads) stopped with exit 8 on a full disk: its
    lock could not be written. The disk holding the backups is full more often than not when
    a user checks them: a lock that cannot be written for lack of space is skipped as one
    that cannot be written for lack of permission, saying so in one line."""
    data = small_app(tmp_path / "data")
    seed = tmp_path / "seed"
    commit(Repository.init(seed, small_config(256 * 1024)), data)
    res = in_small_tmpfs(tmp_path / "small", FULL_VERIFY, str(tmp_path / "small"), str(seed),
                         str(data))  # fmt: skip
    for command, (code, err) in res.items():
        assert code == 0, (command, err)
        assert "Traceback" not in err, err
    assert "cannot write a lock" in res["verify"][1] and "reading without one" in res["verify"][1]


@pytest.mark.parametrize("cut", [16, 100, 3000, 20_000], ids=lambda n: f"first-{n}-bytes")
def test_damaged_database_in_the_data_dir_is_kept_as_bytes(tmp_path: Path, cut: int) -> None:
    """A file that starts like SQLite but that SQLite cannot read is stored as it is: a backup
    tool keeps what is there rather than refusing to snapshot anything. With a whole header it
    is a database cut short (it ends inside a page): stored as a database, reported as damage."""
    data = small_app(tmp_path / "data")
    whole = (data / "app.db").read_bytes()
    (data / "broken.db").write_bytes(whole[:cut] + b"\xff" * 5000)
    repo = Repository.init_backend(MemoryBackend(), tmp_dir=tmp_path / "t")
    r = commit(repo, data)
    sid = r.id
    kinds = {f.path: f.kind for f in repo.load_snapshot(repo.resolve(sid)).files}
    header = cut >= 100
    assert kinds["broken.db"] == ("sqlite" if header else "file") and kinds["app.db"] == "sqlite"
    assert [d.split(":")[0] for d in r.damage] == (["broken.db"] if header else [])
    out = tmp_path / "out"
    checkout(repo, sid, out, safety_snapshot=False, smoke=False)
    assert (out / "broken.db").read_bytes() == (data / "broken.db").read_bytes()


def test_small_frames_declaring_huge_sizes_are_refused_before_allocating() -> None:
    import zstandard

    from casnap import compression
    from casnap.errors import IntegrityError

    bomb = zstandard.ZstdCompressor().compress(bytes(64 << 20))  # 64 MiB of zeros in ~2 KiB
    assert len(bomb) < 1 << 16
    with pytest.raises(IntegrityError, match="declares"):
        compression.decompress_object(bomb, "snapshots/x: corrupt manifest")
    with pytest.raises(IntegrityError, match="declares"):
        compression.decode(bytes([compression.ZSTD]) + bomb, 4096)
