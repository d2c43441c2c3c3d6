"""A FAISS index shorter than its header promises: commit warns naming it, --strict refuses (exit 9,
nothing stored), diff against the data dir gives it no vector count; an intact index passes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap.cli import cli
from casnap.committer import commit
from casnap.formats.faiss import expected_end, shortfall
from casnap.repository import Repository
from tests.helpers_chunking import BUILDERS, index_bytes
from tests.helpers_smoke import CHECK_FAILED, make_app


def run(repo: Path, data: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--repo", str(repo), "--data", str(data), *args])
    return result.exit_code, result.stdout, result.stderr


def reader(data: bytes):
    return lambda offset, n: data[offset : offset + n]


def stored_files(repo: Path) -> list[str]:
    return sorted(
        p.relative_to(repo).as_posix()
        for sub in ("packs", "index", "snapshots")
        for p in (repo / sub).rglob("*")
        if p.is_file()
    )


@pytest.fixture
def app(tmp_path: Path) -> Path:
    return make_app(tmp_path / "data")


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_prefix_of_an_index_is_shorter_than_its_header_promises(name: str) -> None:
    data = index_bytes(BUILDERS[name][1](60))
    end = expected_end(reader(data), len(data))
    assert end is not None and end.end == len(data) and end.exact
    assert shortfall(reader(data), len(data)) is None
    for cut in range(4, len(data)):
        short = expected_end(reader(data[:cut]), cut)
        assert short is not None and short.end > cut, cut
        assert shortfall(reader(data[:cut]), cut) is not None, cut


def test_the_reason_gives_the_promised_and_the_actual_size() -> None:
    data = index_bytes(BUILDERS["flat-l2"][1](60))
    cut = len(data) - 10
    assert shortfall(reader(data[:cut]), cut) == (
        f"truncated: its header promises {len(data)} bytes, the file holds {cut}"
    )
    cut = 30  # inside the header: what follows is unknown
    assert "promises at least" in (shortfall(reader(data[:cut]), cut) or "")


def test_an_unknown_layout_is_not_judged() -> None:
    data = b"IxXX" + bytes(100)
    assert expected_end(reader(data), len(data)) is None
    assert shortfall(reader(data), len(data)) is None


@pytest.mark.parametrize("index", ["flat", "ivf", "hnsw"])
@pytest.mark.parametrize("cut", ["some", "half"])
def test_commit_warns_about_a_truncated_index_and_strict_refuses(
    app: Path, tmp_path: Path, index: str, cut: str
) -> None:
    path = app / "faiss" / f"{index}.index"
    data = path.read_bytes()
    keep = len(data) - 13 if cut == "some" else len(data) // 2
    path.write_bytes(data[:keep])
    repo = tmp_path / "repo"
    code, _, err = run(repo, app, "commit", "--strict")
    assert code == CHECK_FAILED, err
    assert "nothing committed" in err and f"faiss/{index}.index" in err and "truncated" in err
    assert len(err.strip().splitlines()) == 1
    assert stored_files(repo) == []
    code, out, err = run(repo, app, "commit", "--json")
    assert code == 0, err
    (warning,) = json.loads(out)["warnings"]
    assert warning.startswith(f"faiss/{index}.index: FAISS index is truncated: its header promises")
    assert warning.endswith(f"the file holds {keep}")
    assert f"casnap: warning: {warning}" in err.splitlines()


def test_intact_indexes_give_no_truncation_warning(app: Path, tmp_path: Path) -> None:
    r = commit(Repository.init(tmp_path / "repo"), app, strict=True)
    assert r.warnings == []


def test_diff_gives_a_truncated_index_no_vector_count(app: Path, tmp_path: Path) -> None:
    repo_dir = tmp_path / "repo"
    assert run(repo_dir, app, "commit")[0] == 0
    path = app / "faiss" / "ivf.index"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    code, out, err = run(repo_dir, app, "diff", "latest", "--json")
    assert code == 0, err
    (ivf,) = [f for f in json.loads(out)["files"] if f["path"] == "faiss/ivf.index"]
    ix = ivf["index"]
    assert ix["type_a"] == ix["type_b"] == "IndexIVFFlat"
    assert ix["ntotal_a"] == 300 and ix["ntotal_b"] is None and ix["ntotal_delta"] is None
    assert ix["problem_a"] is None and "truncated" in ix["problem_b"]
    code, out, err = run(repo_dir, app, "diff", "latest")
    assert code == 0, err
    assert "index IndexIVFFlat: ntotal 300 -> - (?)" in out
    assert f"truncated: its header promises {len(data)} bytes" in out
    # the truncated file committed anyway: the snapshot side is judged the same way
    assert run(repo_dir, app, "commit")[0] == 0
    path.write_bytes(data)
    code, out, err = run(repo_dir, app, "diff", "latest", "--json")
    (ivf,) = [f for f in json.loads(out)["files"] if f["path"] == "faiss/ivf.index"]
    assert ivf["index"]["ntotal_a"] is None and ivf["index"]["ntotal_b"] == 300
    assert "truncated" in ivf["index"]["problem_a"] and ivf["index"]["problem_b"] is None
