"""verify names every damaged chunk with the snapshots and files it breaks; repair-index rebuilds
the index from the packs alone."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from click.testing import CliRunner

from casnap import checker, repair
from casnap.checker import verify
from casnap.chunkindex import DATA, IndexEntry
from casnap.cli import cli
from casnap.committer import commit
from casnap.errors import CheckFailed
from casnap.ids import ObjectId
from casnap.packs import pack_key
from casnap.repository import Repository
from casnap.restorer import checkout
from tests.helpers_gc import build_history, flip_byte, same_content
from tests.util import write_entries


def run(*args: str) -> tuple[int, str]:
    """Exit code and output (stdout alone with --json, else stdout and stderr together)."""
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout if "--json" in args else result.output


def data_chunk_of(
    repo: Repository, path: str, avoid_pack: ObjectId | None = None
) -> tuple[ObjectId, IndexEntry, set[str]]:
    """A data chunk that only `path` uses, its index entry, and the snapshots holding it."""
    repo.store.load_index()
    users: dict[ObjectId, set[tuple[str, str]]] = {}
    for sid, snap in repo.snapshots():
        for f in snap.files:
            for cid, _ in repo.chunk_refs(f):
                users.setdefault(cid, set()).add((sid.hex(), f.path))
    for cid, who in sorted(users.items()):
        e = repo.store.index[cid]
        if e.pack == avoid_pack:
            continue
        if e.type == DATA and {p for _, p in who} == {path} and e.length > 64:
            return cid, e, {s for s, _ in who}
    raise AssertionError(f"no chunk used only by {path}")


def test_healthy_repository_verifies(tmp_path: Path) -> None:
    repo, data, _ = build_history(tmp_path, 3)
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    code, out = run(*base, "verify")
    assert code == 0 and "no problems found" in out
    code, out = run(*base, "verify", "--read-data", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["ok"] and report["problems"] == []
    assert report["packs_read"] == report["packs"] == 3
    assert report["snapshots_checked"] == 3
    assert report["chunks_read"] > 0


def test_flipped_byte_names_chunk_snapshots_and_files(tmp_path: Path) -> None:
    repo, data, _ = build_history(tmp_path, 3)
    root = tmp_path / "repo"
    cid, e, sids = data_chunk_of(repo, "faiss/ivf.index")
    flip_byte(root / pack_key(e.pack), e.offset + e.length // 2)
    base = ["--repo", str(root), "--data", str(data)]

    code, out = run(*base, "verify")  # structure alone does not read data chunks
    assert code == 0, out

    code, out = run(*base, "verify", "--read-data")
    assert code == CheckFailed.exit_code == 9
    lines = out.splitlines()
    chunk_line = next(line for line in lines if cid.hex()[:16] in line)
    assert "faiss/ivf.index" in chunk_line and e.pack.hex()[:12] in chunk_line
    for sid in sids:
        assert sid[:8] in chunk_line
    assert any("does not match its name" in line for line in lines)
    assert "damaged snapshot" in lines[-1] and "faiss/ivf.index" in lines[-1]

    report = verify(Repository.open(root), read_data=True)
    assert not report.ok
    assert set(report.damaged) == sids
    assert all(files == ["faiss/ivf.index"] for files in report.damaged.values())
    chunk_problems = [p for p in report.problems if p.blob == cid.hex()]
    assert len(chunk_problems) == 1
    assert {s for s, _ in chunk_problems[0].affected} == sids


def test_blind_flip_in_the_middle_of_a_pack(tmp_path: Path) -> None:
    """One byte flipped at the middle of every pack: verify --read-data fails naming files."""
    repo, data, _ = build_history(tmp_path, 6)
    root = tmp_path / "repo"
    packs = sorted(p for p in (root / "packs").rglob("*") if p.is_file())
    for p in packs:
        flip_byte(p, p.stat().st_size // 2)
    code, out = run("--repo", str(root), "--data", str(data), "verify", "--read-data")
    assert code == 9
    names = {"app.db", "faiss/flat.index", "faiss/ivf.index", "faiss/hnsw.index"}
    assert any(name in out for name in names)
    assert sum("does not match its name" in line for line in out.splitlines()) == len(packs)


def test_truncated_pack_and_every_problem_reported(tmp_path: Path) -> None:
    repo, data, _ = build_history(tmp_path, 3)
    root = tmp_path / "repo"
    cid, e, sids = data_chunk_of(repo, "app.db")
    other, oe, other_sids = data_chunk_of(repo, "faiss/hnsw.index", avoid_pack=e.pack)
    flip_byte(root / pack_key(oe.pack), oe.offset + oe.length // 2)
    victim = root / pack_key(e.pack)
    with open(victim, "r+b") as f:
        f.truncate(e.offset + 1)  # cuts this chunk and everything after it (its chunk list too)

    base = ["--repo", str(root), "--data", str(data)]
    code, out = run(*base, "verify")  # truncation shows in the structure check already
    assert code == 9
    assert "truncated" in out and "app.db" in out

    code, out = run(*base, "verify", "--read-data", "--json")
    assert code == 9
    report = json.loads(out)
    problems = report["problems"]
    # both kinds of damage are reported, not just the first found
    flipped = [p for p in problems if p["blob"] == other.hex()]
    message = flipped[0]["message"] if flipped else ""
    # a flipped byte in a compressed frame fails decoding; in a raw one, the chunk's hash
    assert len(flipped) == 1 and ("does not match its hash" in message or "corrupt" in message)
    assert {(a["snapshot"], a["path"]) for a in flipped[0]["affected"]} == {
        (s, "faiss/hnsw.index") for s in other_sids
    }
    assert set(problems[0]) == {"kind", "message", "blob", "pack", "affected"}  # as before
    cut = [p for p in problems if p["pack"] == e.pack.hex() and p["kind"] == "chunk"]
    assert cut and all("truncated" in p["message"] for p in cut)
    assert any(a["path"] == "app.db" for p in cut for a in p["affected"])
    assert any(p["kind"] == "pack" and "truncated" in p["message"] for p in problems)
    assert report["damaged"]


def test_damaged_manifest_and_missing_pack(tmp_path: Path) -> None:
    repo, data, _ = build_history(tmp_path, 3)
    root = tmp_path / "repo"
    sid = repo.snapshots()[0][0].hex()
    flip_byte(root / "snapshots" / sid, 10)
    cid, e, _ = data_chunk_of(repo, "faiss/flat.index")
    os.remove(root / pack_key(e.pack))
    report = verify(Repository.open(root))
    kinds = {p.kind for p in report.problems}
    assert {"manifest", "pack", "chunk"} <= kinds
    assert sid in report.damaged
    (manifest,) = [p for p in report.problems if p.kind == "manifest"]
    assert manifest.snapshot == sid and manifest.key == f"snapshots/{sid}"
    assert manifest.fault == "damaged"
    assert any(
        p.fault == "missing" and p.pack == e.pack.hex() and "missing" in p.message
        for p in report.problems
        if p.kind == "pack"
    )


def test_verify_one_snapshot_and_subset(tmp_path: Path) -> None:
    repo, data, _ = build_history(tmp_path, 4)
    root = tmp_path / "repo"
    first = repo.snapshots()[0][0].hex()
    report = verify(repo, [first[:8]], read_data=True)
    assert report.ok and report.snapshots_checked == 1
    assert report.packs_read == 1  # the first snapshot's chunks all live in the first pack
    half = verify(repo, subset_pct=50, seed=1)
    assert half.ok and half.packs_read == math.ceil(4 * 0.5)
    code, out = run(
        "--repo", str(root), "--data", str(data), "verify", "--read-data-subset", "25", "--json"
    )
    assert code == 0 and json.loads(out)["packs_read"] == 1


def test_deleted_index_is_rebuilt_from_packs(tmp_path: Path) -> None:
    repo, data, states = build_history(tmp_path, 4)
    root = tmp_path / "repo"
    for p in (root / "index").iterdir():
        p.unlink()
    base = ["--repo", str(root), "--data", str(data)]
    code, out = run(*base, "verify")
    assert code == 9 and "is not in the index" in out and "repair-index" in out
    # its packs hold what the snapshots need: gc stops on them, so verify does not say gc
    # removes them
    assert "named by no index but holds chunks snapshots need" in out
    assert "the next gc removes it" not in out
    code, _ = run(*base, "gc", "--dry-run")
    assert code == 5

    code, out = run(*base, "repair-index", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["skipped"] == [] and report["missing"] == 0 and report["chunks_indexed"] > 0
    assert len(list((root / "index").iterdir())) == 1

    repo = Repository.open(root)
    assert verify(repo, read_data=True).ok
    for (sid, _), state in zip(repo.snapshots(), states, strict=True):
        out_dir = tmp_path / f"out-{sid.short}"
        checkout(repo, sid.hex(), out_dir, safety_snapshot=False)
        assert same_content(out_dir, state)


def test_repair_index_goes_on_past_a_damaged_pack(tmp_path: Path) -> None:
    repo, data, states = build_history(tmp_path, 3)
    root = tmp_path / "repo"
    cid, e, sids = data_chunk_of(repo, "faiss/hnsw.index")
    flip_byte(root / pack_key(e.pack), e.offset + e.length // 2)
    broken_tail = next(
        p for p in sorted((root / "packs").rglob("*")) if p.is_file() and p.name != e.pack.hex()
    )
    with open(broken_tail, "r+b") as f:
        f.truncate(broken_tail.stat().st_size - 5)  # directory trailer gone: pack unreadable
    for p in (root / "index").iterdir():
        p.unlink()

    report = repair.repair_index(Repository.open(root))
    skipped = dict(report.skipped)
    assert pack_key(e.pack) in skipped and "chunks verified and kept" in skipped[pack_key(e.pack)]
    assert any("left out" in why for why in skipped.values())
    assert report.missing > 0
    assert report.index_written is not None

    code, out = run("--repo", str(root), "--data", str(data), "repair-index")
    assert code == 9 and "damaged" in out
    final = verify(Repository.open(root))
    assert not final.ok
    assert any(
        p.blob == cid.hex()
        and p.kind == "missing"
        and p.fault == "not-indexed"
        and "not in the index" in p.message
        for p in final.problems
    )


def test_index_entry_disagreeing_with_its_pack(tmp_path: Path) -> None:
    """A wrong second index entry is reported; the intact copy means no file is broken."""
    repo, _, _ = build_history(tmp_path, 2)
    root = tmp_path / "repo"
    cid, e, _ = data_chunk_of(repo, "app.db")
    write_entries(repo.store, {cid: e._replace(offset=e.offset + 1)})
    structure = checker.verify(Repository.open(root))
    assert [p.kind for p in structure.problems] == ["pack"]
    assert "disagree" in structure.problems[0].message
    assert structure.problems[0].fault == "disagrees"
    assert structure.problems[0].pack == e.pack.hex()
    full = checker.verify(Repository.open(root), read_data=True)
    chunk = [p for p in full.problems if p.kind == "chunk"]
    assert len(chunk) == 1 and chunk[0].blob == cid.hex()
    assert "another copy is intact" in chunk[0].message and chunk[0].affected == ()
    assert full.damaged == {}
    assert "no snapshot is affected" in full.summary()


def test_filters_without_snapshot_ids_narrow_what_verify_follows(tmp_path: Path) -> None:
    """`verify --tag T` (no ids) follows the tagged snapshots only, as its help says, and one that
    matches none is exit 4, as prune and forget are, not 'no problems found' of everything."""
    repo, data, _ = build_history(tmp_path, 3)
    commit(repo, data, message="tagged", tags=["kept"])
    repo.close()
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    code, out = run(*base, "verify", "--tag", "kept", "--read-data", "--json")
    assert code == 0, out
    assert json.loads(out)["snapshots_checked"] == 1
    code, out = run(*base, "verify", "--host", "no-such-host")
    assert code == 4 and "no snapshot to verify" in out, out


def test_verify_names_the_temp_files_a_killed_writer_left(tmp_path: Path) -> None:
    """A commit killed while it wrote a pack leaves its temp file: verify says so (a note, the
    repository is whole) and that gc removes it; a running writer's temp file is not named."""
    import subprocess
    import sys

    from casnap.fsutil import HOST_TAG, temp_name

    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a\n")
    repo = Repository.init(tmp_path / "repo")
    commit(repo, data)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    folder = tmp_path / "repo" / "packs" / "ab"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f".casnap-tmp-{gone}-{HOST_TAG}-0123").write_bytes(b"x" * 3000)
    (folder / temp_name()).write_bytes(b"y")  # this process's own: a writer still running
    report = verify(Repository.open(tmp_path / "repo"))
    assert report.ok
    notes = [n for n in report.notes if "temp file" in n]
    assert len(notes) == 1 and notes[0].startswith("1 temp file") and "gc" in notes[0], notes


def test_verify_naming_a_damaged_snapshot_reports_its_damage(tmp_path: Path) -> None:
    """A snapshot named by id whose manifest is damaged is what verify found, not one missing:
    exit 9 naming it, as when verify names another snapshot or none."""
    repo, data, _ = build_history(tmp_path, 2)
    root = tmp_path / "repo"
    sid = repo.snapshots()[0][0].hex()
    flip_byte(root / "snapshots" / sid, 10)
    report = verify(Repository.open(root), [sid[:8]])
    assert not report.ok and sid in report.damaged and report.snapshots_checked == 0
    code, out = run("--repo", str(root), "--data", str(data), "verify", sid[:8])
    assert code == CheckFailed.exit_code, out
    assert f"snapshots/{sid}" in out and "matches" not in out
