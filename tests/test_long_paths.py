"""A data dir holding a path longer than the system lets a program name (PATH_MAX, 4096 bytes on
Linux), each of its names short: the commit is refused with one short line, as for a file it may
not read, and `--skip-unreadable` leaves the folder out."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from casnap.errors import EXIT_CODES
from casnap.repository import Repository
from tests.helpers_reliability import run_casnap, verify_repository
from tests.test_hostile import one_line

PATH_MAX = 4096
NAME = "d" * 200  # each name well under NAME_MAX (255)


def deep_tree(data: Path) -> str:
    """Folders named NAME nested below data until the path of the deepest passes PATH_MAX, a
    file in it; made through descriptors (no path that long can be given). The relative path of
    the first folder whose full path is too long."""
    fd = os.open(data, os.O_RDONLY | os.O_DIRECTORY)
    length = len(os.fsencode(data))
    first = ""
    rel: list[str] = []
    try:
        while length < PATH_MAX + 400:
            os.mkdir(NAME, dir_fd=fd)
            inner = os.open(NAME, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
            length += 1 + len(NAME)
            rel.append(NAME)
            if length >= PATH_MAX and not first:
                first = "/".join(rel)
        out = os.open("deep.txt", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd)
        os.write(out, b"far down\n")
        os.close(out)
    finally:
        os.close(fd)
    return first


def world(tmp_path: Path) -> tuple[list[str], Path, Path, str]:
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("kept\n")
    (data / "sub").mkdir()
    (data / "sub" / "more.txt").write_text("kept too\n")
    repo = tmp_path / "repo"
    base = ["--repo", str(repo), "--data", str(data)]
    first = run_casnap([*base, "commit"])
    assert first.returncode == 0, first.stderr
    too_long = deep_tree(data / "sub")
    return base, repo, data, f"sub/{too_long}"


def test_a_path_past_path_max_refuses_the_commit_in_one_short_line(tmp_path: Path) -> None:
    base, repo, data, _too_long = world(tmp_path)
    snapshots = {sid for sid, _ in Repository.open(repo).snapshots()}
    line = one_line(run_casnap([*base, "commit"]), EXIT_CODES["source"], "longer than")
    assert len(line) < 300, line
    assert line.startswith(f"casnap: error: {str(data)[:40]}") and "…" in line
    assert "--exclude" in line and "--skip-unreadable" in line
    assert {sid for sid, _ in Repository.open(repo).snapshots()} == snapshots  # nothing written
    verify_repository(Repository.open(repo))
    assert not list((repo / "locks").iterdir())


def test_skip_unreadable_leaves_out_the_folder_too_long_to_name(tmp_path: Path) -> None:
    base, repo, data, too_long = world(tmp_path)
    done = run_casnap([*base, "commit", "--skip-unreadable", "--json"])
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["skipped"] == [too_long]
    warnings = [x for x in done.stderr.splitlines() if x.startswith("casnap: warning:")]
    assert len(warnings) == 1 and len(warnings[0]) < 300, done.stderr
    assert "…" in warnings[0] and "longer than" in warnings[0]
    repo_ = Repository.open(repo)
    snap = repo_.load_snapshot(repo_.resolve(out["id"]))
    assert {f.path for f in snap.files} == {"notes.txt", "sub/more.txt"}
    assert snap.skipped == (too_long,)
    verify_repository(Repository.open(repo))


def test_a_name_whose_sidecar_name_would_be_too_long_commits_again(tmp_path: Path) -> None:
    """A 250-byte name: the `.meta.json` sidecar name its FAISS check looks for would pass
    NAME_MAX (255), and asking for it raised ENAMETOOLONG, so every commit after the first
    (whose check runs on the reused entry) failed with exit 1. Such a sidecar cannot exist."""
    data = tmp_path / "data"
    data.mkdir()
    long_name = "x" * 250
    (data / long_name).write_text("hi\n")
    (data / ("y" * 246 + ".index")).write_bytes(b"not an index\n")
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    for _ in range(2):
        proc = run_casnap([*base, "commit", "-q"])
        assert proc.returncode == 0, proc.stderr
    verify_repository(Repository.open(tmp_path / "repo"))


def _file_at_path_length(data: Path, length: int) -> str:
    """A file below data whose absolute path is `length` bytes (names under NAME_MAX, made
    through descriptors); its relative path."""
    fd = os.open(data, os.O_RDONLY | os.O_DIRECTORY)
    cur = len(os.fsencode(data))
    rel: list[str] = []
    try:
        while length - cur > 260:
            os.mkdir(NAME, dir_fd=fd)
            inner = os.open(NAME, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd, cur = inner, cur + 1 + len(NAME)
            rel.append(NAME)
        name = "f" * (length - cur - 1)
        out = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, b"v1\n")
        os.close(out)
    finally:
        os.close(fd)
    return "/".join([*rel, name])


def _folder_of(root: Path, rel: str) -> int:
    """A descriptor of the folder holding root/rel, opened folder by folder (its path may be
    longer than one call can name)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for part in rel.split("/")[:-1]:
        inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = inner
    return fd


def _committed_near_path_max(tmp_path: Path) -> tuple[Path, str, Path]:
    """A data dir holding a file whose path is just under PATH_MAX and a short one, committed:
    the data dir, the long file's relative path and the repository."""
    data = tmp_path / "data"
    data.mkdir()
    rel = _file_at_path_length(data, PATH_MAX - 1)
    (data / "short.txt").write_text("short\n")
    repo = tmp_path / "repo"
    done = run_casnap(["--repo", str(repo), "--data", str(data), "commit", "-q"])
    assert done.returncode == 0, done.stderr
    return data, rel, repo


def test_a_checkout_whose_target_path_passes_path_max_ends_as_it_swapped(tmp_path: Path) -> None:
    """A file whose path in the data dir is just under PATH_MAX commits; checked out into a
    target with a longer path, every file is swapped in through descriptors, and the record
    of what was placed (taken by path) failed after the swap: exit 1 for a complete checkout.
    Such a file is left out of the record (the next commit reads it); the checkout exits 0."""
    data, rel, repo = _committed_near_path_max(tmp_path)
    target = tmp_path / "a_longer_target"
    done = run_casnap(["--repo", str(repo), "checkout", "latest", "--to", str(target)])
    assert done.returncode == 0, done.stderr
    assert (target / "short.txt").read_text() == "short\n"
    fd = _folder_of(target, rel)
    try:
        last = os.open(rel.split("/")[-1], os.O_RDONLY, dir_fd=fd)
        assert os.read(last, 10) == b"v1\n"
        os.close(last)
    finally:
        os.close(fd)


def test_a_checkout_of_a_file_near_path_max_passes_its_own_checks(tmp_path: Path) -> None:
    """Staged beside the data dir, a file whose path there is just under PATH_MAX lies past it
    in the stage: the check that nothing changed the staged files since they were verified
    stat'ed it by path, failed, and took it for modified (exit 9, "the smoke command modified",
    with no smoke command). It is stat'ed folder by folder. The data dir's own path is short,
    shorter than /proc/<pid>/fd/<n> through which the stage is reached."""
    data = Path(tempfile.mkdtemp(prefix="c", dir="/tmp"))  # 14 bytes
    try:
        _check_out_near_path_max(data, tmp_path)
    finally:
        shutil.rmtree(data)  # by descriptors: the tree is deeper than PATH_MAX


def _check_out_near_path_max(data: Path, tmp_path: Path) -> None:
    rel = _file_at_path_length(data, PATH_MAX - 1)
    repo = tmp_path / "repo"
    done = run_casnap(["--repo", str(repo), "--data", str(data), "commit", "-q"])
    assert done.returncode == 0, done.stderr
    fd = _folder_of(data, rel)
    try:
        out = os.open(rel.split("/")[-1], os.O_WRONLY | os.O_TRUNC, dir_fd=fd)
        os.write(out, b"v2\n")
        os.close(out)
        done = run_casnap(["--repo", str(repo), "--data", str(data), "checkout", "latest"])
        assert done.returncode == 0, done.stderr
        back = os.open(rel.split("/")[-1], os.O_RDONLY, dir_fd=fd)
        assert os.read(back, 10) == b"v1\n"
        os.close(back)
    finally:
        os.close(fd)


def test_any_path_too_long_for_the_system_is_one_short_line() -> None:
    """A data dir, repository or target whose own path passes PATH_MAX (a run from deep inside
    a tree): whatever call meets ENAMETOOLONG, its line names the path shortened, exit 7."""
    from casnap.errors import PathTooLong, from_oserror

    path = "/" + "/".join(["d" * 200] * 25)
    err = from_oserror(OSError(errno.ENAMETOOLONG, "File name too long", path), f"reading {path}")
    assert isinstance(err, PathTooLong) and err.exit_code == EXIT_CODES["source"] == 7
    assert len(str(err)) < 300 and "PATH_MAX" in str(err)


def test_a_checkout_of_some_paths_passes_over_a_path_too_long_elsewhere(tmp_path: Path) -> None:
    """One path past PATH_MAX anywhere in the data dir made even `checkout ID notes.txt` fail
    (exit 7): the smoke checks' view of the data dir and the pre-checkout snapshot read the
    whole dir by path, and the line advised `--exclude`, which checkout does not have. A
    checkout of some paths touches nothing else: it restores them, and the pre-checkout
    snapshot saves what it replaced."""
    base, repo, data, too_long = world(tmp_path)
    sid = Repository.open(repo).snapshots()[-1][0].hex()
    for n, smoke in enumerate((["--no-smoke"], [])):
        (data / "notes.txt").write_text(f"changed {n}\n")
        done = run_casnap([*base, "checkout", sid, "notes.txt", *smoke, "--json"])
        assert done.returncode == 0, done.stderr
        assert (data / "notes.txt").read_text() == "kept\n"
        saved = json.loads(done.stdout)["safety_snapshot"]
        repo_ = Repository.open(repo)
        snap = repo_.load_snapshot(repo_.resolve(saved))
        assert {f.path for f in snap.files} >= {"notes.txt", "sub/more.txt"}
        assert snap.skipped == (too_long,)
    verify_repository(Repository.open(repo))


def test_a_full_checkout_refused_for_a_path_too_long_names_only_its_own_options(
    tmp_path: Path,
) -> None:
    """A full checkout removes what the snapshot lacks, the deep file too, which no
    pre-checkout snapshot can read by its path: refused (exit 7), naming no option of commit's
    (`--exclude`, `--skip-unreadable`), and nothing changed."""
    base, _repo, data, _too_long = world(tmp_path)
    (data / "notes.txt").write_text("changed\n")
    line = one_line(run_casnap([*base, "checkout", "latest"]), EXIT_CODES["source"], "longer than")
    assert "--exclude" not in line and "--skip-unreadable" not in line, line
    assert "--no-safety-snapshot" in line, line
    assert (data / "notes.txt").read_text() == "changed\n"


def test_a_diff_with_the_data_dir_leaves_out_a_path_too_long_with_one_warning(
    tmp_path: Path,
) -> None:
    """`diff latest` (against the data dir) refused the whole diff, exit 7, for one path past
    PATH_MAX anywhere in the data dir. As commit with `--skip-unreadable` does, it warns in one
    line and leaves that path out; the rest of the diff is printed."""
    base, _repo, data, too_long = world(tmp_path)
    (data / "notes.txt").write_text("changed\n")
    (data / "new.txt").write_text("added\n")
    done = run_casnap([*base, "diff", "latest"])
    assert done.returncode == 0, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("casnap: warning: ") and len(line) < 300, line
    assert "longer than" in line and "…" in line and "left out of the diff" in line, line
    assert "--skip-unreadable" not in line and "--exclude" not in line, line
    listed = [x.split()[:2] for x in done.stdout.splitlines() if x.startswith("  ")]
    assert listed == [["A", "new.txt"], ["M", "notes.txt"]], done.stdout
    assert "1 changed, 1 added, 0 removed, 1 unchanged" in done.stdout, done.stdout
    done = run_casnap([*base, "diff", "latest", "--json"])
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["skipped"] == [too_long]
    assert {f["path"]: f["status"] for f in out["files"]} == {
        "new.txt": "added",
        "notes.txt": "changed",
        "sub/more.txt": "unchanged",
    }


def test_a_file_the_snapshot_holds_at_a_path_now_too_long_is_not_called_removed(
    tmp_path: Path,
) -> None:
    """A data dir moved to a longer path: a file just under PATH_MAX before is past it now. The
    diff leaves it out with its warning, on both sides: it is not reported as removed."""
    data, rel, repo = _committed_near_path_max(tmp_path)
    moved = tmp_path / "data-moved-a-little-further"
    os.rename(data, moved)
    done = run_casnap(["--repo", str(repo), "--data", str(moved), "diff", "latest", "--json"])
    assert done.returncode == 0, done.stderr
    (line,) = done.stderr.splitlines()
    assert "longer than" in line and "left out of the diff" in line, line
    out = json.loads(done.stdout)
    assert [f["path"] for f in out["files"]] == ["short.txt"]
    assert out["skipped"] == [rel]
