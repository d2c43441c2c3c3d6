"""casnap copy from a source with one damaged snapshot among intact ones: the error names the
snapshot and its file, every intact snapshot is copied, the damaged one leaves nothing behind."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap.cli import cli
from casnap.copier import copy_snapshots
from casnap.errors import IntegrityError
from casnap.packs import pack_key
from casnap.repository import Repository
from tests.helpers_gc import flip_byte
from tests.util import snapshot_tree

PASSWORD_VARS = [
    f"CASNAP_{role}PASSWORD{tail}"
    for role in ("", "FROM_", "TO_")
    for tail in ("", "_FILE", "_COMMAND")
]
PW = "destination password"


def run(repo: Path, data: Path, *args: str, **env: str) -> tuple[int, str, str]:
    full: dict[str, str | None] = dict.fromkeys(PASSWORD_VARS)
    full.update(env)
    result = CliRunner().invoke(cli, ["--repo", str(repo), "--data", str(data), *args], env=full)
    return result.exit_code, result.stdout, result.stderr


def stored(repo: Path, folder: str) -> set[Path]:
    return {p for p in (repo / folder).rglob("*") if p.is_file()}


def objects(repo: Path) -> dict[str, bytes]:
    return {
        p.relative_to(repo).as_posix(): p.read_bytes()
        for p in repo.rglob("*")
        if p.is_file() and p.relative_to(repo).parts[0] not in ("locks", "tmp")
    }


@pytest.fixture
def damaged(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, Path, list[str], dict]:
    """A plain source of three snapshots, the second the only one holding b.bin, whose new pack
    (or index file) is deleted, or a byte of one of its data chunks flipped; the data dir's
    files at each."""
    data, src = tmp_path / "data", tmp_path / "src"
    data.mkdir()
    rng = random.Random(7)
    ids, trees, added = [], {}, []
    for name in ("a.bin", "b.bin", "c.bin"):
        if name == "c.bin":
            (data / "b.bin").unlink()
        (data / name).write_bytes(rng.randbytes(200_000))
        packs, index = stored(src, "packs"), stored(src, "index")
        code, out, err = run(src, data, "commit", "-q")
        assert code == 0, err
        ids.append(out.strip())
        trees[out.strip()] = snapshot_tree(data)
        added.append((stored(src, "packs") - packs, stored(src, "index") - index))
    new_packs, new_index = added[1]
    if request.param == "flipped":  # a data chunk of b.bin, its chunk list intact
        with Repository.open(src) as repo:
            repo.ensure_index()
            snap = repo.load_snapshot(repo.resolve(ids[1]))
            (entry,) = [e for e in snap.files if e.path == "b.bin"]
            e = repo.store.entry(repo.chunk_refs(entry)[0][0])
        flip_byte(src / pack_key(e.pack), e.offset + e.length // 2)
    if request.param == "index-flipped":  # its index file does not match its name
        (index,) = new_index
        flip_byte(index, index.stat().st_size // 2)
    if request.param == "manifest":  # its head does not read: its time, tags and files unknown
        manifest = src / "snapshots" / ids[1]
        flip_byte(manifest, manifest.stat().st_size // 2)
    for lost in {"pack": new_packs, "index": new_index}.get(request.param, ()):
        lost.unlink()
    return data, src, ids, trees


@pytest.mark.parametrize("damaged", ["pack", "index", "index-flipped", "flipped"], indirect=True)
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_damaged_snapshot_is_named_and_the_intact_ones_are_copied(
    tmp_path: Path, damaged: tuple[Path, Path, list[str], dict], encrypted: bool
) -> None:
    """The copy stopped at the damaged second snapshot with `b.bin: chunk ... is not in the
    index`, naming no snapshot, and never copied the intact third one; an index file that does
    not match its name stopped it before it copied anything, naming neither the snapshots it
    spoils nor which of the two repositories holds it."""
    data, src, ids, trees = damaged
    dst = tmp_path / "dst"
    env = {"CASNAP_TO_PASSWORD": PW} if encrypted else {}
    enc = ["--to-encryption", "repokey" if encrypted else "none"]
    code, out, err = run(src, data, "copy", "--to", str(dst), *enc, **env)
    assert code == IntegrityError.exit_code, err
    error = [line for line in err.strip().splitlines() if "error" in line]
    assert len(error) == 1 and ids[1][:8] in error[0] and "b.bin" in error[0], err
    assert f"not copied {ids[1][:8]}" in out and "b.bin" in out, out
    assert "2 snapshot(s) copied, 0 already there, 1 not copied (damaged in the source)" in out

    dst_env = {"CASNAP_PASSWORD": PW} if encrypted else {}
    code, out, err = run(dst, data, "log", "--json", **dst_env)
    assert code == 0, err
    copied = [row["id"] for row in json.loads(out)][::-1]  # log: newest first
    assert len(copied) == 2
    if not encrypted:
        assert copied == [ids[0], ids[2]]
    for n, sid in enumerate(copied):
        target = tmp_path / f"out{n}"
        code, _, err = run(dst, data, "checkout", sid, "--to", str(target), "--no-smoke", **dst_env)
        assert code == 0, err
        assert snapshot_tree(target) == trees[(ids[0], ids[2])[n]]
    # nothing of the damaged snapshot stays: no pack that no index file names
    code, out, err = run(dst, data, "verify", "--read-data", "--json", **dst_env)
    assert code == 0, out + err
    assert json.loads(out)["notes"] == [], out

    # a rerun tries the damaged snapshot again, and again leaves nothing of it
    before = objects(dst)
    code, out, err = run(src, data, "copy", "--to", str(dst), "--json", **env)
    assert code == IntegrityError.exit_code, err
    result = json.loads(out)
    assert result["copied"] == 0 and result["present"] == 2, result
    (bad,) = result["damaged"]
    assert bad["source"] == ids[1] and "b.bin" in bad["error"], result
    assert objects(dst) == before


@pytest.mark.parametrize("damaged", ["pack"], indirect=True)
def test_a_copy_of_only_a_damaged_snapshot_takes_its_new_destination_back(
    tmp_path: Path, damaged: tuple[Path, Path, list[str], dict]
) -> None:
    data, src, ids, _trees = damaged
    dst = tmp_path / "dst"
    code, out, err = run(src, data, "copy", "--to", str(dst), ids[1][:8])
    assert code == IntegrityError.exit_code, err
    assert ids[1][:8] in err and "b.bin" in err and len(err.strip().splitlines()) == 1, err
    assert "created" not in err
    assert not dst.exists()
    with Repository.open(src) as a, Repository.open_or_init(dst) as b:  # the Python API
        result = copy_snapshots(a, b)
    assert [d.source for d in result.damaged] == [ids[1]] and "b.bin" in result.damaged[0].error
    assert [s.source for s in result.snapshots if s.copied] == [ids[0], ids[2]]


@pytest.mark.parametrize("damaged", ["manifest"], indirect=True)
def test_a_snapshot_whose_manifest_does_not_read_is_named_and_the_others_are_copied(
    tmp_path: Path, damaged: tuple[Path, Path, list[str], dict]
) -> None:
    """A nightly copy to another repository stopped at one flipped bit of an old manifest and
    copied nothing more: now it copies the others and names that one (exit 5), as it does past
    a snapshot whose data does not read."""
    data, src, ids, trees = damaged
    dst = tmp_path / "dst"
    code, out, err = run(src, data, "copy", "--to", str(dst), "--json")
    assert code == IntegrityError.exit_code, err
    result = json.loads(out)
    assert [s["source"] for s in result["snapshots"] if s["copied"]] == [ids[0], ids[2]]
    (bad,) = result["damaged"]
    assert bad["source"] == ids[1] and f"snapshots/{ids[1]}" in bad["error"], result
    for n, sid in enumerate((ids[0], ids[2])):
        target = tmp_path / f"out{n}"
        code, _, err = run(dst, data, "checkout", sid, "--to", str(target), "--no-smoke")
        assert code == 0, err
        assert snapshot_tree(target) == trees[sid]
    code, out, err = run(src, data, "copy", "--to", str(dst), ids[1][:8])  # named: its error
    assert code == IntegrityError.exit_code and f"snapshots/{ids[1]}" in err, err
    code, out, err = run(src, data, "copy", "--to", str(dst), ids[2][:8])  # another: no matter
    assert code == 0, out + err


def test_a_snapshot_whose_pack_was_lost_is_mended_by_a_copy_back_as_the_usage_says(
    tmp_path: Path,
) -> None:
    """docs/USAGE.md, "casnap copy": a pack lost from a repository whose snapshots another one
    holds too. A copy back alone skips the damaged snapshot (already there); after `forget` it
    stops, naming the destination, whose index still names the lost chunks; after
    `repair-index` too it is copied back whole, under its own id, and reads back."""
    data, repo, other = tmp_path / "data", tmp_path / "repo", tmp_path / "other"
    data.mkdir()
    rng = random.Random(11)
    ids, trees = [], {}
    for name in ("a.bin", "b.bin"):
        (data / name).write_bytes(rng.randbytes(200_000))
        packs = stored(repo, "packs")
        code, out, err = run(repo, data, "commit", "-q")
        assert code == 0, err
        ids.append(out.strip())
        trees[ids[-1]] = snapshot_tree(data)
    (lost,) = stored(repo, "packs") - packs
    code, _, err = run(repo, data, "copy", "--to", str(other))
    assert code == 0, err
    lost.unlink()
    code, _, err = run(repo, data, "verify")
    assert code == 9 and ids[1][:8] in err, err

    code, out, err = run(repo, data, "copy", "--from", str(other))
    assert code == 0 and "0 snapshot(s) copied, 2 already there" in out, out + err
    code, _, err = run(repo, data, "forget", ids[1])
    assert code == 0, err
    code, out, err = run(repo, data, "copy", "--from", str(other))  # the index names them still
    assert code == IntegrityError.exit_code, out + err
    (line,) = err.strip().splitlines()
    assert f"in the destination {repo}" in line and "repair-index" in line, err
    code, _, err = run(repo, data, "repair-index")
    assert code == 0, err
    code, out, err = run(repo, data, "copy", "--from", str(other))
    assert code == 0 and f"copied {ids[1][:8]} -> {ids[1][:8]}" in out, out + err
    code, out, err = run(repo, data, "verify", "--read-data")
    assert code == 0, out + err
    target = tmp_path / "out"
    code, _, err = run(repo, data, "checkout", ids[1], "--to", str(target), "--no-smoke")
    assert code == 0, err
    assert snapshot_tree(target) == trees[ids[1]]


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_destination_with_a_manifest_that_does_not_read_still_takes_new_snapshots(
    tmp_path: Path, encrypted: bool
) -> None:
    """One flipped bit in an old manifest of the destination stopped every later copy into it
    (exit 5, "gc, prune and forget stop here"), while a commit into it goes on past it: the
    nightly copy to another repository stopped for good. Now the copy passes over it with a
    warning, as a commit does; between plain repositories the source's intact manifest of the
    same id is copied over it, which mends it."""
    data, src, dst = tmp_path / "data", tmp_path / "src", tmp_path / "dst"
    data.mkdir()
    rng = random.Random(5)
    ids, trees = [], {}
    for name in ("a.bin", "b.bin", "c.bin"):
        (data / name).write_bytes(rng.randbytes(100_000))
        code, out, err = run(src, data, "commit", "-q")
        assert code == 0, err
        ids.append(out.strip())
        trees[ids[-1]] = snapshot_tree(data)
        if len(ids) == 2:
            env = {"CASNAP_TO_PASSWORD": PW} if encrypted else {}
            enc = ["--to-encryption", "repokey" if encrypted else "none"]
            code, out, err = run(src, data, "copy", "--to", str(dst), *enc, **env)
            assert code == 0, out + err
    dst_env = {"CASNAP_PASSWORD": PW} if encrypted else {}
    code, out, err = run(dst, data, "log", "--json", **dst_env)
    assert code == 0, err
    first = json.loads(out)[-1]["id"]  # the destination's copy of the oldest one
    other = tmp_path / "other"  # and a snapshot of its own, which no copy brings again
    other.mkdir()
    (other / "o.bin").write_bytes(rng.randbytes(1000))
    code, own, err = run(dst, other, "commit", "-q", **dst_env)
    assert code == 0, err
    for sid in (first, own.strip()):
        manifest = dst / "snapshots" / sid
        flip_byte(manifest, manifest.stat().st_size // 2)

    code, out, err = run(src, data, "copy", "--to", str(dst), "--json", **env)
    assert code == 0, out + err
    result = json.loads(out)
    assert ids[2] in [s["source"] for s in result["snapshots"] if s["copied"]], result
    copied = {s["source"]: s["destination"] for s in result["snapshots"] if s["copied"]}
    assert encrypted or copied[ids[0]] == first  # between plain ones: the same id, always
    warned = [line for line in err.splitlines() if "warning" in line and "forget" in line]
    assert any(own[:8] in line for line in warned), err  # passed over, a way out named
    if copied.get(ids[0]) == first:  # the intact manifest of that id replaced the damaged one
        assert first[:8] not in err, err
    else:  # named, and left for `casnap forget`
        assert f"snapshot {first[:8]}" in err, err
    code, out, err = run(dst, data, "log", "--json", **dst_env)
    newest = json.loads(out)[0]["id"]
    target = tmp_path / "out"
    code, _, err = run(dst, data, "checkout", newest, "--to", str(target), "--no-smoke", **dst_env)
    assert code == 0, err
    assert snapshot_tree(target) == trees[ids[2]]


def test_a_damaged_index_file_of_the_destination_is_said_to_be_the_destination_s(
    tmp_path: Path,
) -> None:
    """`index/...: index file does not match its name` named neither repository: the user
    could not tell which one to repair."""
    data, src, dst = tmp_path / "data", tmp_path / "src", tmp_path / "dst"
    data.mkdir()
    (data / "a.bin").write_bytes(random.Random(3).randbytes(50_000))
    assert run(src, data, "commit", "-q")[0] == 0
    assert run(src, data, "copy", "--to", str(dst))[0] == 0
    (index,) = stored(dst, "index")
    flip_byte(index, index.stat().st_size // 2)
    (data / "b.bin").write_bytes(random.Random(4).randbytes(50_000))
    assert run(src, data, "commit", "-q")[0] == 0
    code, out, err = run(src, data, "copy", "--to", str(dst))
    assert code == IntegrityError.exit_code, out + err
    (line,) = err.strip().splitlines()
    assert f"in the destination {dst}" in line and "repair-index" in line, err


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_copy_stops_at_a_pack_the_destination_s_index_names_and_it_lacks(
    tmp_path: Path, encrypted: bool
) -> None:
    """A pack of the destination lost (deleted by hand, a disk's damage) while its index names
    it: the copy took its chunks for stored, sent none of them, read the new snapshot's chunk
    list back from another pack and stored a snapshot that does not restore, exit 0. A commit
    stops there; so does a copy now, naming the pack and the way out, before it writes."""
    data, src, dst = tmp_path / "data", tmp_path / "src", tmp_path / "dst"
    data.mkdir()
    rng = random.Random(9)
    first = rng.randbytes(200_000)
    (data / "a.bin").write_bytes(first)
    ids = [run(src, data, "commit", "-q")[1].strip()]
    (data / "b.bin").write_bytes(first + rng.randbytes(50_000))  # a.bin's chunks, and more
    ids.append(run(src, data, "commit", "-q")[1].strip())
    env = {"CASNAP_TO_PASSWORD": PW} if encrypted else {}
    enc = ["--to-encryption", "repokey" if encrypted else "none"]
    assert run(src, data, "copy", "--to", str(dst), *enc, ids[0], **env)[0] == 0
    (lost,) = stored(dst, "packs")  # a.bin's chunks and its list
    assert run(src, data, "copy", "--to", str(dst), **env)[0] == 0
    lost.unlink()
    (data / "a.bin").unlink()  # its list, in the lost pack, would be read back
    (data / "c.bin").write_bytes((data / "b.bin").read_bytes())  # b.bin's list, kept intact
    assert run(src, data, "commit", "-q")[0] == 0
    before = objects(dst)

    code, out, err = run(src, data, "copy", "--to", str(dst), **env)
    assert code == IntegrityError.exit_code, out + err
    (line,) = err.strip().splitlines()
    assert f"in the destination {dst}" in line and lost.name in line, line
    assert "repair-index" in line, line
    assert objects(dst) == before
