"""Commit checks each FAISS index against its header and its .meta.json sidecar, where it has one:
warnings (kept by -q when a checkout would refuse the data), or --strict errors."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path, PurePosixPath

import faiss
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from casnap.cli import cli
from casnap.committer import commit
from casnap.errors import InconsistentData
from casnap.formats.faiss import sidecar_of
from casnap.repository import Repository
from tests.helpers_smoke import CHECK_FAILED, make_app, write_index


def run(repo: Path, data: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--repo", str(repo), "--data", str(data), *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def app(tmp_path: Path) -> Path:
    return make_app(tmp_path / "data")


def test_consistent_data_gives_no_warnings(app: Path, tmp_path: Path) -> None:
    r = commit(Repository.init(tmp_path / "repo"), app, strict=True)
    assert r.warnings == []


def test_a_missing_sidecar_is_nothing_and_a_stale_one_warns(app: Path, tmp_path: Path) -> None:
    repo_dir = tmp_path / "repo"
    (app / "faiss" / "hnsw.meta.json").unlink()
    code, _, err = run(repo_dir, app, "commit", "--strict")
    assert code == 0 and "warning" not in err
    index = faiss.read_index(str(app / "faiss" / "ivf.index"))
    write_index(index, app / "faiss" / "ivf.index", ntotal=299)
    code, out, err = run(repo_dir, app, "commit", "--strict")
    assert code == CHECK_FAILED and "nothing committed" in err
    assert len(err.strip().splitlines()) == 1
    assert len(list((repo_dir / "snapshots").iterdir())) == 1
    code, out, err = run(repo_dir, app, "commit", "--json")
    assert code == 0
    warnings = json.loads(out)["warnings"]
    assert warnings == [
        "faiss/ivf.index: faiss/ivf.meta.json says ntotal 299 but the index holds 300"
    ]
    assert json.loads(out)["damage"] == []  # a checkout warns of it too, and restores it
    assert [line for line in err.splitlines() if "warning" in line] == [
        f"casnap: warning: {w}" for w in warnings
    ]


def test_quiet_keeps_only_the_warnings_of_data_a_checkout_refuses(
    app: Path, tmp_path: Path
) -> None:
    repo_dir = tmp_path / "repo"
    index = faiss.read_index(str(app / "faiss" / "ivf.index"))
    write_index(index, app / "faiss" / "ivf.index", ntotal=299)  # stale: a checkout warns
    flat = app / "faiss" / "flat.index"
    flat.write_bytes(flat.read_bytes()[:5000])  # truncated: a checkout refuses
    (app / "link").symlink_to("app.db")  # not stored: a remark
    code, out, err = run(repo_dir, app, "commit", "-q")
    assert code == 0 and len(out.strip()) == 64
    assert err.splitlines() == [
        "casnap: warning: faiss/flat.index: FAISS index is truncated: its header promises "
        "128045 bytes, the file holds 5000"
    ]
    code, out, err = run(repo_dir, app, "commit")
    assert len([line for line in err.splitlines() if "warning" in line]) == 3


def test_strict_checks_only_the_committed_paths(app: Path, tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    index = faiss.read_index(str(app / "faiss" / "hnsw.index"))
    write_index(index, app / "faiss" / "hnsw.index", ntotal=1)
    r = commit(repo, app, ["faiss/flat.index"], strict=True)  # its sidecar is outside the paths
    assert r.warnings == []
    with pytest.raises(InconsistentData, match="hnsw.index"):
        commit(repo, app, ["faiss"], strict=True)
    assert len(repo.snapshots()) == 1


def test_unreadable_index_header_is_a_warning(app: Path, tmp_path: Path) -> None:
    path = app / "faiss" / "flat.index"
    path.write_bytes(b"IxF2" + bytes(100))
    r = commit(Repository.init(tmp_path / "repo"), app)
    assert r.warnings == [
        "faiss/flat.index: cannot read the vector count from its header "
        "(faiss/flat.meta.json says ntotal 4000)"
    ]


@pytest.mark.parametrize("factory", ["PQ4x8", "LSH", "OPQ4,PQ4x8"])
def test_an_unchanged_index_of_a_layout_not_parsed_stays_clean_in_later_commits(
    tmp_path: Path, factory: str
) -> None:
    """An index chunked by content (a layout the FAISS chunker does not parse) whose sidecar
    agrees is clean in every commit, not only the one that read it: a later commit that reuses
    its entry reads its header again instead of taking it for no index at all."""
    import numpy as np

    data = tmp_path / "data"
    data.mkdir()
    x = np.random.default_rng(3).standard_normal((600, 16)).astype("float32")
    index = faiss.index_factory(16, factory)
    index.train(x)
    index.add(x)
    write_index(index, data / "pq.index")
    (data / "pq.meta.json").write_text(json.dumps({"ntotal": 600}))
    past = time.time() - 60  # written well before: the next commit reuses their entries
    for p in data.iterdir():
        os.utime(p, (past, past))
    repo = Repository.init(tmp_path / "repo")
    first = commit(repo, data)
    assert (first.warnings, first.damage) == ([], [])
    (data / "notes.txt").write_text("another file\n")
    later = commit(repo, data)
    assert later.files_unchanged == 2
    assert (later.warnings, later.damage) == ([], [])
    code, _, err = run(tmp_path / "repo", data, "commit", "--strict")
    assert code == 0, err


@pytest.mark.parametrize("wrapper", ["IndexIDMap", "IndexIDMap2"])
def test_an_id_map_index_with_bytes_after_its_ids_is_no_damage_but_a_wrong_id_count_is(
    tmp_path: Path, wrapper: str
) -> None:
    """FAISS reads an index and ignores bytes after it (a file rewritten in place over a longer
    one), as the checks do for Flat and IVF files; an id array whose count disagrees with the
    header is still damage."""
    import numpy as np

    data = tmp_path / "data"
    data.mkdir()
    x = np.random.default_rng(4).standard_normal((300, 16)).astype("float32")
    index = getattr(faiss, wrapper)(faiss.IndexFlatL2(16))
    index.add_with_ids(x, np.arange(1000, 1300, dtype="int64"))
    blob = faiss.serialize_index(index).tobytes()
    (data / "ids.index").write_bytes(blob + bytes(100))
    assert faiss.read_index(str(data / "ids.index")).ntotal == 300
    repo = Repository.init(tmp_path / "repo")
    assert commit(repo, data).damage == []
    at = len(blob) - 8 * 300 - 8  # the id array's count
    bad = blob[:at] + (299).to_bytes(8, "little") + blob[at + 8 :]
    (data / "ids.index").write_bytes(bad + bytes(100))
    assert [d for d in commit(repo, data).damage if "ids" in d]


@given(
    st.lists(
        st.text(st.characters(blacklist_characters="/\x00"), min_size=1, max_size=12).filter(
            lambda part: part not in (".", "..")
        ),
        min_size=1,
        max_size=4,
    )
)
def test_sidecar_of_replaces_the_suffix_as_pathlib_does(parts: list[str]) -> None:
    rel = "/".join(parts)
    assert sidecar_of(rel) == PurePosixPath(rel).with_suffix(".meta.json").as_posix()


def test_a_sidecar_is_found_through_a_link_and_a_folder_named_like_one_is_none(
    app: Path, tmp_path: Path
) -> None:
    """Sidecars are found from a listing of their folder: one that is a symbolic link to a file
    is read (a stale count warns), a folder with a sidecar's name is no sidecar, and a folder
    of many other files is listed once for all of them."""
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"ntotal": 299}))
    (app / "faiss" / "ivf.meta.json").unlink()
    (app / "faiss" / "ivf.meta.json").symlink_to(elsewhere)
    (app / "faiss" / "hnsw.meta.json").unlink()
    (app / "faiss" / "hnsw.meta.json").mkdir()
    for i in range(50):
        (app / "faiss" / f"note{i}.txt").write_text(f"{i}\n")
    r = commit(Repository.init(tmp_path / "repo"), app)
    assert sorted(r.warnings) == [
        "faiss/ivf.index: faiss/ivf.meta.json says ntotal 299 but the index holds 300",
        "faiss/ivf.meta.json: symbolic link not stored (casnap stores regular files)",
    ]
