"""stats: logical, unique and stored bytes, and what each snapshot and each file added."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from casnap import collector, retention, stats
from casnap.cli import cli
from casnap.committer import commit
from casnap.repository import Repository
from tests.helpers_gc import build_history, evolve, make_data


def run(*args: str) -> tuple[int, str]:
    """Exit code and output (stdout alone with --json, else stdout and stderr together)."""
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout if "--json" in args else result.output


def folder_bytes(root: Path, name: str) -> int:
    return sum(p.stat().st_size for p in (root / name).rglob("*") if p.is_file())


def test_repository_totals(tmp_path: Path) -> None:
    repo, data, _ = build_history(tmp_path, 4)
    root = tmp_path / "repo"
    unchanged = commit(repo, data).id  # nothing changed: adds no chunk
    r = stats.repository_stats(repo)
    snaps = repo.snapshots()
    assert r.snapshots == 5
    assert r.logical_bytes == sum(s.logical_bytes for _, s in snaps)
    assert r.pack_bytes == folder_bytes(root, "packs")
    assert r.index_bytes == folder_bytes(root, "index")
    assert r.manifest_bytes == folder_bytes(root, "snapshots")
    assert r.stored_bytes == r.pack_bytes + r.index_bytes + r.manifest_bytes
    assert 0 < r.unique_bytes < r.logical_bytes
    assert r.dedup_ratio == r.logical_bytes / r.unique_bytes and r.dedup_ratio > 1.5
    assert r.compression_ratio > 1.0  # SQLite pages compress
    assert r.missing_blobs == 0
    added = {a.id: a for a in r.snapshots_added}
    assert [a.id for a in r.snapshots_added] == [s.hex() for s, _ in snaps]
    assert added[unchanged].added_bytes == 0 and added[unchanged].new_blobs == 0
    # every stored blob is charged to exactly one snapshot
    assert sum(a.added_bytes for a in r.snapshots_added) == r.stored_chunk_bytes + r.tree_bytes
    # with nothing to collect, the blobs fill the packs up to their headers and directories
    assert collector.collect(repo, dry_run=True).pack_bytes_removed == 0
    assert r.stored_chunk_bytes + r.tree_bytes < r.pack_bytes


def test_snapshot_stats_show_what_made_it_big(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data")
    repo = Repository.init(tmp_path / "repo")
    commit(repo, data)
    evolve(data, 1, faiss_too=False)  # only the database changes
    sid = commit(repo, data).id
    s = stats.snapshot_stats(repo, sid[:8])
    assert s.older_snapshots == 1
    assert s.files[0].path == "app.db" and s.files[0].new_bytes > 0
    assert all(f.new_bytes == 0 for f in s.files[1:])
    assert [f.new_bytes for f in s.files] == sorted((f.new_bytes for f in s.files), reverse=True)
    whole = {a.id: a for a in stats.repository_stats(repo).snapshots_added}
    assert s.new_bytes == whole[sid].added_bytes
    first = stats.snapshot_stats(repo, repo.snapshots()[0][0].hex())
    assert first.older_snapshots == 0
    assert first.new_plain_bytes == stats.repository_stats(repo).unique_bytes - sum(
        f.new_plain_bytes for f in s.files
    )


def test_stats_after_prune_count_only_survivors(tmp_path: Path) -> None:
    repo, _, _ = build_history(tmp_path, 4)
    before = stats.repository_stats(repo)
    retention.prune(repo, retention.Policy(last=1))
    collector.collect(repo)
    after = stats.repository_stats(repo)
    assert after.snapshots == 1
    assert after.logical_bytes == repo.snapshots()[0][1].logical_bytes
    assert after.unique_bytes < before.unique_bytes
    assert after.pack_bytes < before.pack_bytes
    assert after.snapshots_added[0].added_bytes == after.stored_chunk_bytes + after.tree_bytes


def test_stats_cli(tmp_path: Path) -> None:
    repo, data, _ = build_history(tmp_path, 3)
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    code, out = run(*base, "stats", "--json")
    assert code == 0, out
    d = json.loads(out)
    for key in (
        "logical_bytes",
        "unique_bytes",
        "stored_bytes",
        "dedup_ratio",
        "compression_ratio",
        "snapshots_added",
    ):
        assert key in d
    assert len(d["snapshots_added"]) == 3
    code, out = run(*base, "stats")
    assert code == 0 and "dedup ratio" in out and "compression ratio" in out
    code, out = run(*base, "stats", "latest")
    assert code == 0 and "app.db" in out and "NEW" in out
    code, out = run(*base, "stats", "latest", "--json")
    assert json.loads(out)["files"][0]["new_bytes"] >= json.loads(out)["files"][-1]["new_bytes"]


def test_every_new_command_has_help() -> None:
    for name in ("gc", "prune", "forget", "verify", "repair-index", "stats"):
        cmd = cli.commands[name]
        assert cmd.help and len(cmd.help.strip()) > 20, name
        for param in cmd.params:
            if param.name not in ("snapshots", "snapshot"):
                assert getattr(param, "help", None), (name, param.name)
