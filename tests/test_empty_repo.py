"""A repository without snapshots: every maintenance command works on it, and gc frees everything
(packs an interrupted first commit left, and what forgetting the last snapshot leaves)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from casnap.chunkindex import FIELD_DTYPE, decode_index, encode_index
from casnap.cli import cli
from casnap.committer import commit
from casnap.repository import Repository
from tests.conftest import evolve_app
from tests.helpers_reliability import small_app, small_config


def run(root: Path, data: Path, *args: str) -> tuple[int, str]:
    """Exit code and output (stdout alone with --json) of the real CLI."""
    result = CliRunner().invoke(cli, ["--repo", str(root), "--data", str(data), *args])
    return result.exit_code, result.stdout if "--json" in args else result.output


def files_under(root: Path, folder: str) -> list[Path]:
    return sorted(p for p in (root / folder).rglob("*") if p.is_file())


def repo_size(root: Path) -> int:
    """Bytes of every file under the repository dir."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _make(kind: str, tmp_path: Path) -> tuple[Path, Path]:
    """A repository of the given kind (two snapshots for "history", none for the others) and
    its data dir."""
    root = tmp_path / "repo"
    data = small_app(tmp_path / "data")
    repo = Repository.init(root, small_config())
    if kind == "fresh":
        return root, data
    commit(repo, data)
    evolve_app(data, 1)
    commit(repo, data)
    if kind == "orphan-packs":  # a first commit killed after its packs, before its index
        for folder in ("index", "snapshots"):
            for p in files_under(root, folder):
                p.unlink()
    elif kind == "forgotten":  # every snapshot forgotten, no gc yet: packs and index remain
        for p in files_under(root, "snapshots"):
            p.unlink()
    return root, data


KINDS = ("fresh", "orphan-packs", "forgotten")


@pytest.mark.parametrize("kind", KINDS)
def test_every_maintenance_command_works_without_snapshots(kind: str, tmp_path: Path) -> None:
    root, data = _make(kind, tmp_path)
    for args in (
        ["stats"],
        ["stats", "--json"],
        ["verify"],
        ["verify", "--read-data"],
        ["verify", "--read-data-subset", "50"],
        ["gc", "--dry-run"],
        ["prune", "--keep-last", "1", "--dry-run"],
        ["repair-index"],
        ["verify", "--read-data"],
        ["stats"],
    ):
        code, out = run(root, data, *args)
        assert code == 0, (args, out)


@pytest.mark.parametrize("kind", KINDS)
def test_gc_without_snapshots_frees_everything(kind: str, tmp_path: Path) -> None:
    root, data = _make(kind, tmp_path)
    had_packs = bool(files_under(root, "packs"))
    code, out = run(root, data, "gc", "--dry-run", "--json")
    assert code == 0, out
    dry = json.loads(out)
    before = repo_size(root)
    code, out = run(root, data, "gc", "--json")
    assert code == 0, out
    real = json.loads(out)
    assert files_under(root, "packs") == [] and files_under(root, "index") == []
    assert real["bytes_freed"] == before - repo_size(root) == dry["bytes_freed"]
    assert real["index_files_written"] == 0 and real["packs_written"] == 0
    assert (real["bytes_freed"] > 0) == had_packs
    code, out = run(root, data, "gc", "--json")
    assert code == 0 and json.loads(out)["bytes_freed"] == 0, out
    code, out = run(root, data, "verify", "--read-data")
    assert code == 0, out
    code, out = run(root, data, "commit")
    assert code == 0, out


def test_forget_latest_prune_of_the_last_snapshot(tmp_path: Path) -> None:
    """Forgetting snapshots one by one with --prune ends in an empty repository: no pack and no
    index file left, and a commit afterwards works."""
    root, data = _make("history", tmp_path)
    while list((root / "snapshots").iterdir()):
        code, out = run(root, data, "forget", "latest", "--prune")
        assert code == 0, out
    assert files_under(root, "packs") == [] and files_under(root, "index") == []
    assert {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} == {"config"}
    code, out = run(root, data, "forget", "--prune", "--json", "latest")
    assert code == 4, out  # nothing left to forget
    code, out = run(root, data, "commit")
    assert code == 0, out


def test_an_index_without_entries_encodes_and_decodes() -> None:
    packs, ids, fields = decode_index("index/x", encode_index([], *_empty()))
    assert packs == [] and ids.shape == (0, 32) and len(fields) == 0


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 32), np.uint8), np.zeros(0, FIELD_DTYPE)
