"""The mistakes users really make with their data dir and repository: nothing may be lost.

A repository inside the data dir, a checkout into the repository, a data dir reached through a
symbolic link, an empty commit after such a mistake, and a checkout racing the owner of the target.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from casnap.backends.local import LocalBackend
from casnap.committer import commit
from casnap.errors import EXIT_CODES
from casnap.repository import Repository
from casnap.restorer import checkout
from tests.conftest import evolve_app
from tests.faults import FaultyBackend, call_after
from tests.helpers_reliability import (
    Ledger,
    casnap_env,
    run_casnap,
    small_app,
    verify_repository,
)
from tests.test_hostile import one_line
from tests.util import raw_tree, snapshot_tree


def repo_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI run from cwd, with no --repo/--data given unless args hold them."""
    return subprocess.run(
        [os.environ.get("PYTHON", os.sys.executable), "-m", "casnap", *args],
        cwd=cwd,
        env=casnap_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("layout", ["data-dot", "repo-in-data"])
def test_a_repository_inside_the_data_dir_is_never_stored_or_touched(
    tmp_path: Path, layout: str
) -> None:
    # data-dot: `casnap --data . commit` in a dir holding ./backups; repo-in-data: --repo data/.b
    if layout == "data-dot":
        home = small_app(tmp_path / "app")
        args = ["--data", "."]
        repo_dir = home / "backups"
    else:
        home = tmp_path
        small_app(home / "data")
        args = ["--repo", "data/.backups"]
        repo_dir = home / "data" / ".backups"
    data = home if layout == "data-dot" else home / "data"
    first = run(home, *args, "commit")
    assert first.returncode == 0, first.stderr
    assert "inside the data dir" in first.stderr
    size = repo_size(repo_dir)
    second = run(home, *args, "commit", "--json")
    assert second.returncode == 0, second.stderr
    logical = sum(
        p.stat().st_size for p in data.rglob("*") if p.is_file() and repo_dir not in p.parents
    )
    import json

    assert json.loads(second.stdout)["bytes_added"] < 0.01 * logical
    assert repo_size(repo_dir) - size < 0.01 * logical
    repo = Repository.open(repo_dir)
    for _sid, snap in repo.snapshots():
        assert not [f.path for f in snap.files if "backups" in f.path], "repository stored"
    evolve_app(data, 1)
    before_repo = {p.relative_to(repo_dir) for p in repo_dir.rglob("*")}
    out = run(home, *args, "checkout", first.stdout.strip())
    assert out.returncode == 0, out.stderr
    after_repo = {p.relative_to(repo_dir) for p in repo_dir.rglob("*")}
    assert before_repo <= after_repo  # nothing of the repository removed
    repo = Repository.open(repo_dir)
    verify_repository(repo)
    for sid, _snap in repo.snapshots():
        restored = tmp_path / f"check-{sid.short}"
        checkout(repo, sid.hex(), restored, safety_snapshot=False)
        assert not (restored / "backups").exists() and not (restored / ".backups").exists()


@pytest.mark.parametrize("which", ["own", "other"])
@pytest.mark.parametrize("where", [".", "packs", "snapshots", "deeper/new"])
def test_checkout_into_a_repository_is_refused(tmp_path: Path, where: str, which: str) -> None:
    """A target that is (or lies inside) the repository read, or another casnap repository: a
    checkout would save its config, packs and snapshots in a pre-checkout snapshot and then
    remove them."""
    data = small_app(tmp_path / "data")
    repo_dir = tmp_path / "backups"
    sid = commit(Repository.init(repo_dir), data).id
    hit = repo_dir
    if which == "other":
        hit = tmp_path / "other"
        commit(Repository.init(hit), data)
    before = raw_tree(hit)
    target = hit if where == "." else hit / where
    proc = run_casnap(
        ["--repo", str(repo_dir), "--data", str(data), "checkout", sid, "--to", str(target)]
    )
    one_line(proc, EXIT_CODES["usage"], "casnap repository" if which == "other" else "repository")
    assert raw_tree(hit) == before
    verify_repository(Repository.open(hit))


def test_a_checkout_into_a_folder_holding_the_repository_leaves_it_alone(tmp_path: Path) -> None:
    data = small_app(tmp_path / "data")
    repo_dir = tmp_path / "backups"
    sid = commit(Repository.init(repo_dir), data).id
    before = raw_tree(repo_dir)
    # forced: the data dir's files there, which this full checkout removes, are no reason to stop
    to = ["--to", str(tmp_path), "--force"]
    proc = run_casnap(["--repo", str(repo_dir), "checkout", sid, *to])
    assert proc.returncode == 0, proc.stderr
    assert raw_tree(repo_dir) == before  # not "removed" as absent from the snapshot
    assert (tmp_path / "app.db").is_file()
    verify_repository(Repository.open(repo_dir))


def test_a_symlinked_data_dir_is_stored(tmp_path: Path) -> None:
    real = small_app(tmp_path / "realdata")
    (tmp_path / "data").symlink_to(real)
    proc = run(tmp_path, "commit", "--json")
    assert proc.returncode == 0, proc.stderr
    import json

    assert json.loads(proc.stdout)["files_new"] == 7
    assert "symbolic link" not in proc.stderr


def test_an_empty_commit_after_the_files_vanished_is_refused(tmp_path: Path) -> None:
    data = small_app(tmp_path / "data")
    repo_dir = tmp_path / "repo"
    base = ["--repo", str(repo_dir), "--data", str(data)]
    assert run_casnap([*base, "commit"]).returncode == 0
    for p in sorted(data.rglob("*"), reverse=True):
        if p.is_file():
            p.unlink()
    snaps = sorted((repo_dir / "snapshots").iterdir())
    one_line(run_casnap([*base, "commit"]), EXIT_CODES["source"], "allow-empty")
    assert sorted((repo_dir / "snapshots").iterdir()) == snaps
    assert run_casnap([*base, "commit", "--allow-empty"]).returncode == 0
    assert len(list((repo_dir / "snapshots").iterdir())) == 2


def test_the_target_swapped_for_a_link_while_staging_redirects_nothing(tmp_path: Path) -> None:
    """The owner of the target swaps a folder for a symbolic link to a folder of root's once the
    checkout has planned: no write, rename or removal may land outside the target."""
    data = small_app(tmp_path / "data")
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data).id
    target = tmp_path / "target"
    shutil.copytree(data, target)
    evolve_app(target, 3)  # faiss/ivf.index and shard_000.index now differ: they are replaced
    (target / "faiss" / "extra.txt").write_text("not in the snapshot: removed")
    victims = tmp_path / "root-owned"
    victims.mkdir()
    for name in ("ivf.index", "shard_000.index", "extra.txt", "ivf.meta.json"):
        (victims / name).write_text(f"{name} must stay")
    before = raw_tree(victims)

    def swap(_key: str) -> None:  # runs while the files are staged
        (target / "faiss").rename(target / "faiss.moved")
        (target / "faiss").symlink_to(victims)

    backend = FaultyBackend(LocalBackend(tmp_path / "repo"), [call_after("get", 1, swap, "packs/")])
    attacked = Repository.open_backend(backend, tmp_path / "repo" / "tmp", root=tmp_path / "repo")
    try:
        checkout(attacked, sid, target, safety_snapshot=False, force=True)  # extra.txt goes
    except Exception:  # noqa: BLE001 - refusing is fine; writing outside is not
        pass
    assert raw_tree(victims) == before
    assert sorted(p.name for p in victims.iterdir()) == sorted(before)
    assert (target / "faiss").is_symlink()


def test_the_staging_dir_is_private(tmp_path: Path) -> None:
    data = small_app(tmp_path / "data")
    repo_dir = tmp_path / "repo"
    sid = commit(Repository.init(repo_dir), data).id
    seen = tmp_path / "mode.txt"
    cmd = f'stat -L -c %a "$CASNAP_STAGED_DIR" > {seen}'
    proc = run_casnap(
        [
            "--repo",
            str(repo_dir),
            "checkout",
            sid,
            "--to",
            str(tmp_path / "out"),
            "--smoke-cmd",
            cmd,
        ]
    )
    assert proc.returncode == 0, proc.stderr
    assert seen.read_text().strip() == "700"


def test_checkout_never_widens_a_folder_mode(tmp_path: Path) -> None:
    data = small_app(tmp_path / "data")
    data.chmod(0o700)
    (data / "faiss").chmod(0o750)
    sid = commit(Repository.init(tmp_path / "repo"), data).id
    old = os.umask(0o022)
    try:
        out = tmp_path / "out"
        checkout(Repository.open(tmp_path / "repo"), sid, out, safety_snapshot=False)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o700
    assert (out / "faiss").stat().st_mode & 0o777 == 0o750


def test_the_commit_after_a_checkout_reads_nothing(tmp_path: Path) -> None:
    data = small_app(tmp_path / "data")
    repo = Repository.init(tmp_path / "repo")
    ledger = Ledger()
    first = ledger.commit(repo, data)
    evolve_app(data, 1)
    ledger.commit(repo, data)
    checkout(repo, first, data)  # a safety snapshot is not needed: all data is held
    again = commit(repo, data)
    assert again.bytes_read == 0 and again.files_new == 0
    assert {f.hash for f in again_files(repo, again.id)} == {
        f.hash for f in again_files(repo, first)
    }


def again_files(repo: Repository, sid: str) -> list:
    return list(repo.load_snapshot(repo.resolve(sid)).files)


def test_hard_links_are_restored_as_links(tmp_path: Path) -> None:
    data = small_app(tmp_path / "data")
    os.link(data / "faiss" / "ivf.index", data / "ivf-link.index")
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data).id
    snap = repo.load_snapshot(repo.resolve(sid))
    linked = {f.path: f.link for f in snap.files if f.link}
    assert linked == {"ivf-link.index": "faiss/ivf.index"}
    out = tmp_path / "out"
    checkout(repo, sid, out, safety_snapshot=False)
    assert (out / "ivf-link.index").stat().st_ino == (out / "faiss" / "ivf.index").stat().st_ino
    assert (out / "ivf-link.index").read_bytes() == (data / "ivf-link.index").read_bytes()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files to other owners")
def test_owners_are_stored_and_restored_as_root(tmp_path: Path) -> None:
    data = small_app(tmp_path / "data")
    os.chown(data / "app.db", 1234, 5678)
    os.chown(data / "faiss", 4321, 8765)
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data).id
    out = tmp_path / "out"
    checkout(repo, sid, out, safety_snapshot=False)
    st = (out / "app.db").stat()
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    st = (out / "faiss").stat()
    assert (st.st_uid, st.st_gid) == (4321, 8765)
    assert (out / "faiss" / "ivf.index").stat().st_uid == 0


def test_a_directory_fsync_error_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from casnap.errors import CasnapError

    data = small_app(tmp_path / "data")
    repo = Repository.init(tmp_path / "repo")
    real = os.fsync

    def failing(fd: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(CasnapError, match="Input/output error"):
        commit(repo, data)


def test_checkout_all_paths_restores_the_newest_of_each_path_group(tmp_path: Path) -> None:
    data = small_app(tmp_path / "data")
    repo_dir = tmp_path / "repo"
    base = ["--repo", str(repo_dir), "--data", str(data)]
    assert run_casnap([*base, "commit", "app.db"]).returncode == 0
    assert run_casnap([*base, "commit", "faiss"]).returncode == 0
    wanted = snapshot_tree(data)
    evolve_app(data, 2)  # both groups change
    (data / "notes.txt").write_text("in neither group: stays")
    proc = run_casnap([*base, "checkout", "latest", "--all-paths"])
    assert proc.returncode == 0, proc.stderr
    assert (
        "plan: app.db from snapshot" in proc.stderr and "plan: faiss from snapshot" in proc.stderr
    )
    plans = [x for x in proc.stderr.splitlines() if x.startswith("plan: ")]
    ids = {x.split("from snapshot ")[1].split()[0].strip(":,") for x in plans}
    line = next(x for x in proc.stderr.splitlines() if x.startswith("restored "))
    assert len(ids) == 2 and line.startswith("restored snapshots "), (plans, line)
    assert all(i in line for i in ids), (ids, line)
    restored = snapshot_tree(data)
    assert {k: v for k, v in restored.items() if k != "notes.txt"} == wanted
    assert (data / "notes.txt").read_text() == "in neither group: stays"
    # `latest --path faiss` restores only that group: the database stays as it is now
    evolve_app(data, 3)
    db_now = (data / "app.db").read_bytes()
    assert run_casnap([*base, "checkout", "latest", "--path", "faiss"]).returncode == 0
    assert (data / "app.db").read_bytes() == db_now


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None, reason="needs setpriv")
def test_skip_unreadable_leaves_out_what_cannot_be_read(tmp_path: Path) -> None:
    from tests.test_hostile import unprivileged

    prefix = unprivileged()
    data = small_app(tmp_path / "data")
    secret = data / "faiss" / "secret.bin"
    secret.write_bytes(b"for root only")
    secret.chmod(0)
    repo_dir = tmp_path / "repo"
    cmd = [*prefix, os.sys.executable, "-m", "casnap", "--repo", str(repo_dir), "--data", str(data)]

    def run_as_user(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cmd, *args], env=casnap_env(), capture_output=True, text=True, timeout=120
        )

    one_line(run_as_user("commit"), EXIT_CODES["storage"], "skip-unreadable")
    proc = run_as_user("commit", "--skip-unreadable", "--json")
    assert proc.returncode == 0, proc.stderr
    import json

    out = json.loads(proc.stdout)
    assert out["skipped"] == ["faiss/secret.bin"]
    assert "faiss/secret.bin" in proc.stderr
    snap = Repository.open(repo_dir).load_snapshot(Repository.open(repo_dir).resolve(out["id"]))
    assert snap.skipped == ("faiss/secret.bin",)
    assert "faiss/secret.bin" not in {f.path for f in snap.files}
    assert len(snap.files) == 7


def test_a_commit_right_after_writing_caches_what_it_read(tmp_path: Path) -> None:
    """The racy window of a filesystem with fine timestamps is short: data written a moment before
    a commit is not read again by the next one."""
    import time

    data = small_app(tmp_path / "data")
    time.sleep(0.3)  # longer than the fine racy window, far shorter than whole-second timestamps
    repo = Repository.init(tmp_path / "repo")
    commit(repo, data)
    again = commit(repo, data)
    assert again.bytes_read == 0 and again.files_unchanged == 7


def test_a_file_with_many_hard_links_checks_out(tmp_path: Path) -> None:
    data = small_app(tmp_path / "data")
    (data / "a.txt").write_text("one file, four names")
    for name in ("b.txt", "c.txt", "faiss/d.txt"):
        os.link(data / "a.txt", data / name)
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data).id
    out = tmp_path / "out"
    checkout(repo, sid, out, safety_snapshot=False)  # smoke checks on
    inodes = {(out / n).stat().st_ino for n in ("a.txt", "b.txt", "c.txt", "faiss/d.txt")}
    assert len(inodes) == 1
    assert (out / "c.txt").read_text() == "one file, four names"


def test_naming_the_repository_as_a_commit_path_is_refused(tmp_path: Path) -> None:
    home = tmp_path
    small_app(home / "data")
    base = ["--repo", "data/.backups"]
    assert run(home, *base, "commit").returncode == 0
    for inside in ("data/.backups", "data/.backups/packs", "data/.backups/config"):
        one_line(run(home, *base, "commit", inside), EXIT_CODES["usage"], "inside the repository")
    assert len(list((home / "data" / ".backups" / "snapshots").iterdir())) == 1


def test_a_data_dir_inside_the_repository_is_a_usage_error(tmp_path: Path) -> None:
    """`--data backups` (the repository given twice) is a mistake in the arguments, as naming
    the repository as a commit path is: exit 2, nothing stored."""
    home = tmp_path
    small_app(home / "data")
    assert run(home, "commit").returncode == 0
    for data in ("backups", "backups/packs"):
        one_line(run(home, "--data", data, "commit"), EXIT_CODES["usage"], "inside the repository")
    assert len(list((home / "backups" / "snapshots").iterdir())) == 1


def bind_mount_available() -> bool:
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        return False
    probe = subprocess.run([unshare, "-m", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not bind_mount_available(), reason="needs root and unshare for a bind mount")
def test_the_repository_reached_through_a_bind_mount_is_never_a_target(tmp_path: Path) -> None:
    data = small_app(tmp_path / "data")
    repo_dir = tmp_path / "backups"
    sid = commit(Repository.init(repo_dir), data).id
    view = tmp_path / "view"
    view.mkdir()
    (tmp_path / "outer").mkdir()
    before = raw_tree(repo_dir)
    casnap = [os.sys.executable, "-m", "casnap", "--repo", str(repo_dir), "--data", str(data)]
    for target, inner in ((view, ""), (view / "packs", ""), (tmp_path / "outer", "view")):
        script = (
            f"mount --bind {repo_dir} {view} && "
            + (
                f"mkdir -p {target}/{inner} && mount --bind {repo_dir} {target}/{inner} && "
                if inner
                else ""
            )
            + " ".join(f"'{a}'" for a in [*casnap, "checkout", sid, "--to", str(target)])
        )
        proc = subprocess.run(
            ["unshare", "-m", "sh", "-c", script], env=casnap_env(), capture_output=True, text=True
        )
        if inner:  # the repository inside the target: left alone, the rest restored
            assert proc.returncode == 0, proc.stderr
        else:
            one_line(proc, EXIT_CODES["usage"], "repository")
        assert raw_tree(repo_dir) == before
    verify_repository(Repository.open(repo_dir))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a link owned by another user")
def test_a_target_behind_another_users_link_is_refused(tmp_path: Path) -> None:
    """The owner of the target's parent swaps the target for a link to a folder of root's: a
    checkout run as root follows no link that user made."""
    data = small_app(tmp_path / "data")
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data).id
    victim = tmp_path / "root-owned"
    victim.mkdir()
    (victim / "keep.txt").write_text("must stay")
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    (home / "target").symlink_to(victim)
    os.lchown(home / "target", 65534, 65534)
    before = raw_tree(victim)
    proc = run_casnap(
        ["--repo", str(tmp_path / "repo"), "checkout", sid, "--to", str(home / "target")]
    )
    one_line(proc, EXIT_CODES["integrity"], "symbolic link owned by another user")
    assert raw_tree(victim) == before
    os.lchown(home / "target", 0, 0)  # root's own link is followed, as a user expects
    done = checkout(repo, sid, home / "target", safety_snapshot=False, force=True)
    assert done.files_written == 7 and done.removed == ["keep.txt"]


@pytest.mark.parametrize("length", [247, 251, 255])
def test_names_near_the_file_name_limit_check_out(tmp_path: Path, length: int) -> None:
    """A side file of such a name (`-journal`, `-wal`) would be past NAME_MAX: it cannot exist."""
    data = small_app(tmp_path / "data")
    (data / ("b" * length)).write_text("a long name")
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data).id
    out = tmp_path / "out"
    checkout(repo, sid, out, safety_snapshot=False)
    assert (out / ("b" * length)).read_text() == "a long name"
    (data / ("b" * length)).write_text("changed")
    checkout(repo, sid, data)  # in place, where the long name exists already
    assert (data / ("b" * length)).read_text() == "a long name"


def test_a_file_where_the_snapshot_has_a_folder_is_a_source_problem(tmp_path: Path) -> None:
    data = small_app(tmp_path / "data")
    sid = commit(Repository.init(tmp_path / "repo"), data).id
    target = tmp_path / "target"
    target.mkdir()
    (target / "faiss").write_text("a file in the way")
    proc = run_casnap(["--repo", str(tmp_path / "repo"), "checkout", sid, "--to", str(target)])
    one_line(proc, EXIT_CODES["source"], "exists and is not a folder.*move it away.*--to")
    assert (target / "faiss").read_text() == "a file in the way"
    (target / "faiss").unlink()
    (target / "app.db").mkdir()  # a folder where the snapshot has a file
    proc = run_casnap(["--repo", str(tmp_path / "repo"), "checkout", sid, "--to", str(target)])
    one_line(proc, EXIT_CODES["source"], "app.db exists and is not a file: move it away.*--to")
    assert sorted(p.name for p in target.iterdir()) == ["app.db"]


def test_a_full_checkout_puts_a_folder_back_where_a_file_stands_now(tmp_path: Path) -> None:
    """A store's folder replaced by a file since (an app that changed its layout): a full
    checkout of the older snapshot into the data dir removes that file, as it removes every
    file the snapshot lacks (saved first, no snapshot holding it), and puts the folder back.
    Into a folder not known to hold this data it is still refused (above)."""
    data = small_app(tmp_path / "data")
    repo = Repository.init(tmp_path / "repo")
    old = commit(repo, data).id
    before = snapshot_tree(data)
    shutil.rmtree(data / "faiss")
    (data / "faiss").write_text("a file now")
    result = checkout(repo, old, data)
    assert snapshot_tree(data) == before
    assert result.files_removed == 1 and result.safety_snapshot is not None
    out = tmp_path / "out"
    checkout(repo, result.safety_snapshot, out, paths=["faiss"], smoke=False)
    assert (out / "faiss").read_text() == "a file now"  # the file it replaced, saved first


def test_a_file_moved_aside_for_a_folder_takes_no_excluded_file_beside_it(tmp_path: Path) -> None:
    """The file a full checkout moves aside for a folder (removed anyway) is no database: a
    file beside it named like its -shm or -wal, which the snapshot excluded (so no snapshot
    says what it should hold), stays, as it stays beside a file the checkout only removes."""
    data = small_app(tmp_path / "data")
    repo = Repository.init(tmp_path / "repo")
    old = commit(repo, data, excludes=["faiss-shm", "faiss-wal"]).id
    shutil.rmtree(data / "faiss")
    (data / "faiss").write_text("a file now")
    (data / "faiss-shm").write_text("the app's own, excluded")
    (data / "faiss-wal").write_text("excluded too")
    result = checkout(repo, old, data, safety_snapshot=False)
    assert (data / "faiss").is_dir()
    assert (data / "faiss-shm").read_text() == "the app's own, excluded"
    assert (data / "faiss-wal").read_text() == "excluded too"
    assert result.removed == ["faiss"]


def test_a_full_checkout_puts_a_file_back_where_a_folder_stands_now(tmp_path: Path) -> None:
    """The other way round: a folder where the snapshot has a file, holding only files the
    checkout removes (saved first), is moved aside whole for the file; one holding anything
    else (a symbolic link, which no snapshot could save) is refused with nothing changed."""
    data = small_app(tmp_path / "data")
    (data / "store").write_text("a file, once")
    repo = Repository.init(tmp_path / "repo")
    old = commit(repo, data).id
    before = snapshot_tree(data)
    (data / "store").unlink()
    (data / "store" / "sub").mkdir(parents=True)
    (data / "store" / "a.json").write_text("{}")
    (data / "store" / "sub" / "b.json").write_text("[]")
    os.symlink("a.json", data / "store" / "link")
    proc = run_casnap(["--repo", str(tmp_path / "repo"), "--data", str(data), "checkout", old])
    one_line(proc, EXIT_CODES["source"], "store exists and is not a file: move it away")
    assert (data / "store" / "sub" / "b.json").read_text() == "[]"
    (data / "store" / "link").unlink()
    result = checkout(repo, old, data)
    assert snapshot_tree(data) == before
    assert sorted(result.removed) == ["store/a.json", "store/sub/b.json"]
    assert result.safety_snapshot is not None
    out = tmp_path / "out"
    checkout(repo, result.safety_snapshot, out, paths=["store"], smoke=False)
    assert (out / "store" / "sub" / "b.json").read_text() == "[]"


@pytest.mark.skipif(not bind_mount_available(), reason="needs root and unshare for a bind mount")
def test_a_target_across_mount_points_checks_out(tmp_path: Path) -> None:
    """A bind-mounted target, and a filesystem mounted on a folder of the target: a rename
    across them fails (EXDEV), so those files are copied in and renamed where they land."""
    data = small_app(tmp_path / "data")
    repo_dir = tmp_path / "repo"
    sid = commit(Repository.init(repo_dir), data).id
    real, view = tmp_path / "real", tmp_path / "view"
    real.mkdir()
    view.mkdir()
    (real / "faiss").mkdir()
    casnap = [os.sys.executable, "-m", "casnap", "--repo", str(repo_dir)]
    script = (
        f"mount --bind {real} {view} && mount -t tmpfs tmpfs {view}/faiss && "
        + " ".join(f"'{a}'" for a in [*casnap, "checkout", sid, "--to", str(view)])
        + f" && cmp {view}/faiss/ivf.index {data}/faiss/ivf.index"
    )
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], env=casnap_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert (real / "app.db").is_file()  # through the bind mount, into the real folder


def test_a_folder_replaced_by_a_link_says_how_to_go_on(tmp_path: Path) -> None:
    """A store's folder moved elsewhere and linked back: the checkout refuses to write through
    the link (exit 5) and says what to do, leaving what the link points to alone."""
    (tmp_path / "data" / "store").mkdir(parents=True)
    (tmp_path / "data" / "store" / "x").write_text("a")
    assert run(tmp_path, "commit").returncode == 0
    (tmp_path / "data" / "store").rename(tmp_path / "moved")
    (tmp_path / "data" / "store").symlink_to(tmp_path / "moved")
    (tmp_path / "moved" / "x").write_text("changed")
    line = one_line(run(tmp_path, "checkout", "latest"), 5, "store is a symbolic link")
    assert "move it away, or check out into another folder (--to)" in line
    assert (tmp_path / "moved" / "x").read_text() == "changed"


@pytest.mark.parametrize("to", ["afile", "afile/sub"])
def test_a_target_that_is_or_lies_below_a_file_is_one_source_problem(
    tmp_path: Path, to: str
) -> None:
    """`--to afile` said the target is not a directory (exit 7); `--to afile/sub` failed as
    `reading afile/sub: Not a directory`, an error of no kind (exit 1). Both are the same
    mistake: the line names the file in the way, exit 7, nothing made."""
    small_app(tmp_path / "data")
    assert run(tmp_path, "commit", "-q").returncode == 0
    (tmp_path / "afile").write_text("mine\n")
    done = run(tmp_path, "checkout", "latest", "--to", to)
    assert done.returncode == EXIT_CODES["source"], done.stderr
    (line,) = done.stderr.splitlines()
    assert "not a directory" in line and "afile" in line and "reading" not in line, line
    assert (tmp_path / "afile").read_text() == "mine\n"


@pytest.mark.parametrize("command", [["init"], ["commit", "-q"], ["copy", "--from", "backups"]])
def test_a_repository_below_a_file_is_refused_as_one_on_a_file(
    tmp_path: Path, command: list[str]
) -> None:
    """`--repo afile` is "not a directory" (exit 3) for init; `--repo afile/sub` failed as
    `creating afile/sub: Not a directory`, exit 1, for init, a first commit and a copy that
    creates its destination. The same refusal now, naming the file in the way."""
    small_app(tmp_path / "data")
    assert run(tmp_path, "commit", "-q").returncode == 0
    (tmp_path / "afile").write_text("mine\n")
    done = run(tmp_path, "--repo", "afile/sub", *command)
    assert done.returncode == EXIT_CODES["repository"], done.stderr
    (line,) = done.stderr.splitlines()
    assert "afile is not a directory" in line and "creating" not in line, line
    assert (tmp_path / "afile").read_text() == "mine\n"
