"""gc: reclaims exactly what no snapshot needs, survives a crash at any step, and never races a
commit (the exclusive lock)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from casnap import checker, collector, compression, retention
from casnap.backends.local import LocalBackend
from casnap.checker import verify
from casnap.chunkindex import DATA
from casnap.cli import cli
from casnap.committer import commit
from casnap.constants import TEMP_PREFIX
from casnap.errors import IntegrityError, SnapshotNotFound
from casnap.ids import ObjectId, hash_bytes
from casnap.packs import pack_key
from casnap.packwriter import PackWriter
from casnap.repository import Repository
from casnap.restorer import checkout
from tests.helpers_gc import (
    Crash,
    CrashingBackend,
    build_history,
    evolve,
    flip_byte,
    listing,
    repo_bytes,
    same_content,
    tree_bytes,
)
from tests.util import write_entries


def run(*args: str) -> tuple[int, str]:
    """Exit code and output (stdout alone with --json, else stdout and stderr together)."""
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout if "--json" in args else result.output


def pack_files(root: Path) -> set[str]:
    return {p.name for p in (root / "packs").rglob("*") if p.is_file()}


def restore_state(data: Path, state: Path) -> None:
    """Make the data dir hold exactly the files of a saved state (new inodes: read again)."""
    shutil.rmtree(data)
    shutil.copytree(state, data)


def test_prune_keep_last_2_of_6_then_gc(tmp_path: Path) -> None:
    """The survivors check out byte-identically and the repository ends within 10% of a fresh
    one holding only them; verify --read-data passes."""
    repo, data, states = build_history(tmp_path, 6)
    root = tmp_path / "repo"
    survivors = [sid.hex() for sid, _ in repo.snapshots()[-2:]]
    before = {}
    for sid in survivors:
        checkout(repo, sid, tmp_path / f"before-{sid[:8]}", safety_snapshot=False)
        before[sid] = tree_bytes(tmp_path / f"before-{sid[:8]}")
    size_before = repo_bytes(root)

    base = ["--repo", str(root), "--data", str(data)]
    code, out = run(*base, "prune", "--keep-last", "2", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert len(report["removed"]) == 4
    assert sorted(k["id"] for k in report["groups"][0]["keep"]) == sorted(survivors)
    assert report["gc"]["bytes_freed"] > 0

    repo = Repository.open(root)
    assert [s.hex() for s, _ in repo.snapshots()] == survivors
    for sid, state in zip(survivors, states[-2:], strict=True):
        target = tmp_path / f"after-{sid[:8]}"
        checkout(repo, sid, target, safety_snapshot=False)
        assert tree_bytes(target) == before[sid]
        assert same_content(target, state)

    fresh_root = tmp_path / "fresh"
    fresh = Repository.init(fresh_root)
    for state in states[-2:]:
        commit(fresh, state)
    pruned, reference = repo_bytes(root), repo_bytes(fresh_root)
    assert pruned <= 1.10 * reference, (pruned, reference)
    assert pruned < 0.75 * size_before

    code, out = run(*base, "verify", "--read-data")
    assert code == 0, out
    assert "no problems" in out


def test_gc_dry_run_changes_no_file(tmp_path: Path) -> None:
    repo, data, _ = build_history(tmp_path, 4)
    root = tmp_path / "repo"
    retention.forget(repo, [repo.snapshots()[0][0].hex(), repo.snapshots()[1][0].hex()])
    (root / "packs" / f"{TEMP_PREFIX}leftover").write_bytes(b"x" * 10)
    before = listing(root)
    code, out = run("--repo", str(root), "--data", str(data), "gc", "--dry-run", "--json")
    assert code == 0, out
    dry = json.loads(out)
    assert listing(root) == before
    assert dry["dry_run"] and dry["packs_repacked"] + dry["packs_deleted"] > 0
    assert dry["temp_files_removed"] == 1

    code, out = run("--repo", str(root), "--data", str(data), "gc", "--json")
    real = json.loads(out)
    assert not real["dry_run"]
    for key in ("packs_deleted", "packs_repacked", "packs_unindexed", "index_entries_dropped"):
        assert real[key] == dry[key], key
    assert real["pack_bytes_removed"] == dry["pack_bytes_removed"]
    assert real["bytes_freed"] == dry["bytes_freed"] > 0
    assert not list(root.rglob(f"{TEMP_PREFIX}*"))
    assert listing(root) != before


def test_second_gc_finds_nothing_to_do(tmp_path: Path) -> None:
    repo, _, _ = build_history(tmp_path, 3)
    retention.forget(repo, [repo.snapshots()[0][0].hex()])
    first = collector.collect(repo)
    assert first.packs_repacked + first.packs_deleted > 0
    before = listing(tmp_path / "repo")
    second = collector.collect(repo)
    assert second.bytes_freed == 0
    assert second.index_files_written == 0 and second.packs_written == 0
    assert {k: v for k, v in listing(tmp_path / "repo").items() if "locks" not in k} == before


def test_max_unused_threshold(tmp_path: Path) -> None:
    repo, _, _ = build_history(tmp_path, 3)
    retention.forget(repo, [repo.snapshots()[0][0].hex()])
    lazy = collector.collect(repo, dry_run=True, max_unused=100)
    assert lazy.packs_repacked == 0
    eager = collector.collect(repo, dry_run=True, max_unused=0)
    assert eager.packs_repacked > 0
    for fate in eager.packs:
        if fate.action == collector.REPACK:
            assert fate.unused_bytes > 0


def test_gc_removes_leftovers_of_crashed_commits(tmp_path: Path) -> None:
    repo, data, states = build_history(tmp_path, 2)
    root = tmp_path / "repo"
    # a commit that died after writing a pack and before its index: the pack is named nowhere
    writer = PackWriter(repo.store)
    writer.add(hash_bytes(b"never indexed"), DATA, b"\x00never indexed", len(b"never indexed"))
    writer.flush()
    (orphan,), _ids, _fields = writer.new_entries()
    (root / "tmp").mkdir(exist_ok=True)
    (root / "tmp" / f"{TEMP_PREFIX}123-abc.db").write_bytes(b"half a database")
    (root / "index" / f"{TEMP_PREFIX}deadbeef").write_bytes(b"torn")
    r = collector.collect(Repository.open(root))
    assert r.packs_unindexed == 1 and r.temp_files_removed == 2
    assert not (root / pack_key(orphan)).exists()
    assert not list(root.rglob(f"{TEMP_PREFIX}*"))
    repo = Repository.open(root)
    assert verify(repo, read_data=True).ok
    checkout(repo, "latest", tmp_path / "out", safety_snapshot=False)
    assert same_content(tmp_path / "out", states[-1])


def test_gc_refuses_when_a_needed_chunk_is_not_indexed(tmp_path: Path) -> None:
    repo, _, _ = build_history(tmp_path, 2)
    root = tmp_path / "repo"
    for p in (root / "index").iterdir():
        p.unlink()
    before = pack_files(root)
    with pytest.raises(IntegrityError, match="gc stopped before changing anything"):
        collector.collect(Repository.open(root))
    assert pack_files(root) == before


def test_gc_refuses_on_a_damaged_chunk_list(tmp_path: Path) -> None:
    repo, _, _ = build_history(tmp_path, 2)
    root = tmp_path / "repo"
    repo.store.load_index()
    lid = bytes.fromhex(repo.snapshots()[-1][1].files[0].lists[0])
    e = next(e for cid, e in repo.store.index.items() if cid == lid)
    flip_byte(root / pack_key(e.pack), e.offset + e.length // 2)
    before = pack_files(root)
    with pytest.raises(IntegrityError, match="gc stopped"):
        collector.collect(Repository.open(root))
    assert pack_files(root) == before


def test_gc_names_the_pack_a_chunk_list_lies_past_the_end_of(tmp_path: Path) -> None:
    """A chunk list indexed in a pack cut short is not "not in the index": gc says where it
    lies and that the pack is truncated."""
    repo, _, _ = build_history(tmp_path, 2)
    root = tmp_path / "repo"
    repo.store.load_index()
    lid = bytes.fromhex(repo.snapshots()[-1][1].files[0].lists[0])
    e = next(e for cid, e in repo.store.index.items() if cid == lid)
    with open(root / pack_key(e.pack), "r+b") as f:
        f.truncate(e.offset + 1)
    before = pack_files(root)
    with pytest.raises(IntegrityError) as caught:
        collector.collect(Repository.open(root))
    message = str(caught.value)
    assert "not in the index" not in message
    assert f"past the end of pack {e.pack.hex()}" in message and "truncated" in message
    missing = root / pack_key(e.pack)
    missing.unlink()
    with pytest.raises(IntegrityError, match=f"pack {e.pack.hex()}, which is missing"):
        collector.collect(Repository.open(root))
    assert pack_files(root) == before - {missing.name}


def test_gc_killed_at_any_step_leaves_every_snapshot_checkable(tmp_path: Path) -> None:
    """Crash gc at its n-th write or delete for every n; each time every snapshot still checks
    out and verifies, and the next gc finishes the job."""
    template, data, states = build_history(tmp_path / "t", 5)
    tpl_root = tmp_path / "t" / "repo"
    snaps = template.snapshots()
    retention.forget(template, [snaps[0][0].hex(), snaps[2][0].hex()])
    kept = {sid.hex(): states[i] for i, (sid, _) in enumerate(snaps) if i not in (0, 2)}
    clean = tmp_path / "clean"
    shutil.copytree(tpl_root, clean)
    collector.collect(Repository.open(clean))
    clean_size = repo_bytes(clean)

    crashes = 0
    for n in range(100):
        root = tmp_path / f"r{n}"
        shutil.copytree(tpl_root, root)
        backend = CrashingBackend(LocalBackend(root), n)
        try:
            collector.collect(Repository.open_backend(backend, root / "tmp"))
        except Crash:
            crashes += 1
        if not backend.crashed:
            break
        repo = Repository.open(root)
        assert verify(repo, read_data=True).ok, n
        for sid, state in kept.items():
            out = root.parent / f"out{n}-{sid[:8]}"
            checkout(repo, sid, out, safety_snapshot=False)
            assert same_content(out, state), (n, sid)
        collector.collect(repo)
        assert checker.verify(repo, read_data=True).ok, n
        again = collector.collect(repo, dry_run=True)
        assert again.bytes_freed == 0, n
        assert repo_bytes(root) == clean_size, n
        shutil.rmtree(root)
    assert crashes >= 6  # new pack, new index, old index files, old packs: every step was hit


def test_gc_waits_for_a_commit_in_progress(tmp_path: Path) -> None:
    """While a commit holds its shared lock, gc waits; the commit may reuse chunks that only a
    forgotten snapshot referenced, and gc, running afterwards, keeps them."""
    repo, data, states = build_history(tmp_path, 3)
    root = tmp_path / "repo"
    retention.forget(repo, [repo.snapshots()[0][0].hex()])  # state 0 is garbage now
    restore_state(data, states[0])
    committer = Repository.open(root)
    result: dict[str, object] = {}
    started = threading.Event()

    def run_gc() -> None:
        started.set()
        try:
            result["gc"] = collector.collect(Repository.open(root))
        except Exception as exc:  # noqa: BLE001 - handed to the main thread
            result["error"] = exc

    with committer.lock("commit"):
        thread = threading.Thread(target=run_gc)
        thread.start()
        started.wait()
        thread.join(0.5)
        assert thread.is_alive()  # blocked by the running commit's lock
        packs_while_waiting = pack_files(root)
        new_id = commit(committer, data).id  # shared locks coexist; gc keeps waiting
        assert thread.is_alive()
        assert pack_files(root) >= packs_while_waiting
    thread.join(120)
    assert not thread.is_alive() and "error" not in result
    repo = Repository.open(root)
    assert verify(repo, read_data=True).ok
    checkout(repo, new_id, tmp_path / "out", safety_snapshot=False)
    assert same_content(tmp_path / "out", states[0])


def _commit_and_gc_together(root: Path, data: Path, use_process: bool) -> str:
    """Start a commit and a gc at the same instant; both must succeed. Returns the commit id."""
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []
    commit_id: list[str] = []

    def do_commit() -> None:
        try:
            barrier.wait()
            if use_process:
                out = subprocess.run(
                    [sys.executable, "-m", "casnap", "--repo", str(root), "--data", str(data)]
                    + ["commit", "--json"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                commit_id.append(json.loads(out)["id"])
            else:
                commit_id.append(commit(Repository.open(root), data).id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def do_gc() -> None:
        try:
            barrier.wait()
            collector.collect(Repository.open(root))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=do_commit), threading.Thread(target=do_gc)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(300)
    assert not errors, errors
    return commit_id[0]


def _concurrent_rounds(tmp_path: Path, use_process: bool) -> None:
    repo, data, states = build_history(tmp_path, 4)
    root = tmp_path / "repo"
    for rnd in range(2 if use_process else 3):
        retention.forget(repo, [repo.snapshots()[0][0].hex()])
        restore_state(data, states[rnd])  # a commit that needs exactly the garbage chunks
        new_id = _commit_and_gc_together(root, data, use_process)
        repo = Repository.open(root)
        report = verify(repo, read_data=True)
        assert report.ok, [p.line() for p in report.problems]
        out = tmp_path / f"out{rnd}"
        checkout(repo, new_id, out, safety_snapshot=False)
        assert same_content(out, states[rnd])
        for sid, _ in repo.snapshots():
            checkout(repo, sid.hex(), tmp_path / f"all{rnd}-{sid.short}", safety_snapshot=False)


def test_commit_and_gc_started_together_threads(tmp_path: Path) -> None:
    _concurrent_rounds(tmp_path, use_process=False)


def test_commit_and_gc_started_together_processes(tmp_path: Path) -> None:
    _concurrent_rounds(tmp_path, use_process=True)


def test_long_lived_repository_sees_gc_of_another(tmp_path: Path) -> None:
    """A Repository opened before another process's gc must not trust its cached index."""
    repo, data, states = build_history(tmp_path, 3)
    root = tmp_path / "repo"
    old_id = repo.snapshots()[0][0].hex()
    stale = Repository.open(root)
    checkout(stale, "latest", tmp_path / "warm", safety_snapshot=False)  # caches index, snapshots
    other = Repository.open(root)
    retention.forget(other, [old_id])
    r = collector.collect(other)
    assert r.packs_repacked + r.packs_deleted > 0
    restore_state(data, states[0])
    new_id = commit(stale, data).id  # would reuse deleted chunks with a stale index
    fresh = Repository.open(root)
    assert verify(fresh, read_data=True).ok
    checkout(fresh, new_id, tmp_path / "out", safety_snapshot=False)
    assert same_content(tmp_path / "out", states[0])
    with pytest.raises(SnapshotNotFound):
        checkout(stale, old_id, tmp_path / "gone", safety_snapshot=False)


def test_gc_cli_human_output(tmp_path: Path) -> None:
    repo, data, _ = build_history(tmp_path, 3)
    retention.forget(repo, [repo.snapshots()[0][0].hex()])
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    code, out = run(*base, "gc", "--dry-run")
    assert code == 0 and "would free" in out and "would repack" in out
    code, out = run(*base, "gc")
    assert code == 0 and "freed" in out and "would" not in out
    evolve(data, 9)
    assert commit(Repository.open(tmp_path / "repo"), data).files_changed > 0


def damage_one_kept_chunk(path: Path, kept: list) -> ObjectId:
    """Flip a byte of a frame in the pack at path so that it still decodes but one needed
    chunk, and only that one, reads back wrong (a frame holds several chunks, not all of them
    needed); the chunk's id."""
    raw = path.read_bytes()
    for cid, e in sorted(kept, key=lambda item: -item[1].length):
        frame = raw[e.offset : e.offset + e.length]
        good = np.frombuffer(compression.decode(frame, e.frame_size), dtype=np.uint8)
        middle = len(frame) // 2
        for at in sorted(range(1, len(frame)), key=lambda i: abs(i - middle))[:4000]:
            bad = bytearray(frame)
            bad[at] ^= 0xFF
            try:
                out = np.frombuffer(compression.decode(bytes(bad), e.frame_size), dtype=np.uint8)
            except IntegrityError:
                continue
            diff = np.flatnonzero(out != good)
            if len(diff) and e.inner <= diff[0] and diff[-1] < e.inner + e.plain:
                flip_byte(path, e.offset + at)
                return cid
    raise AssertionError("no byte of these frames damages exactly one needed chunk")


def test_gc_never_copies_a_damaged_chunk(tmp_path: Path) -> None:
    """A needed chunk that fails its hash while being repacked stops gc before any deletion."""
    repo, _, _ = build_history(tmp_path, 3)
    root = tmp_path / "repo"
    retention.forget(repo, [repo.snapshots()[0][0].hex()])
    plan = collector.plan(Repository.open(root), max_unused=0)
    pack = next(f.pack for f in plan.report.packs if f.action == collector.REPACK)
    cid = damage_one_kept_chunk(root / pack_key(pack), plan.keep[pack])
    index_before = {p.name for p in (root / "index").iterdir()}
    packs_before = pack_files(root)
    with pytest.raises(IntegrityError, match="gc stopped before deleting anything"):
        collector.collect(Repository.open(root), max_unused=0)
    assert {p.name for p in (root / "index").iterdir()} == index_before
    assert packs_before <= pack_files(root)  # at most new, unindexed packs were added
    report = verify(Repository.open(root), read_data=True)
    assert {p.blob for p in report.problems if p.kind == "chunk"} == {cid.hex()}


def test_gc_keeps_the_index_entry_its_pack_confirms(tmp_path: Path) -> None:
    """A wrong index entry (as a damaged or foreign index could hold) is never carried over."""
    repo, _, states = build_history(tmp_path, 2)
    root = tmp_path / "repo"
    repo.store.load_index()
    cid, e = max(
        ((c, x) for c, x in repo.store.index.items() if x.type == DATA and x.offset > 64),
        key=lambda item: item[1].length,
    )
    write_entries(repo.store, {cid: e._replace(offset=e.offset - 1)})  # sorts before the right one
    r = collector.collect(Repository.open(root))
    assert r.index_files_written == 1
    fresh = Repository.open(root)
    fresh.store.load_index()
    assert fresh.store.index[cid] == e
    assert verify(fresh, read_data=True).ok
    checkout(fresh, "latest", tmp_path / "out", safety_snapshot=False)
    assert same_content(tmp_path / "out", states[-1])
