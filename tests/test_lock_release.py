"""A command whose work is done and whose lock then cannot be removed (the network to the store
lost right after a commit stored its snapshot, a locks/ folder made read-only meanwhile): its
output is printed, one warning line names the lock left behind, and it exits 0. The lock it
leaves goes stale (docs/FORMAT.md, "Locks")."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap.cli import cli
from casnap.constants import RETRY_ATTEMPTS
from tests import faults as F
from tests.conftest import evolve_app, make_app
from tests.helpers_reliability import casnap_env, run_casnap
from tests.s3server import make_bucket
from tests.tcpproxy import CuttingProxy
from tests.util import snapshot_tree

PW = "correct horse"
# the warning of a lock left: its key, and the operation that held it
LEFT = re.compile(
    r"^casnap: warning: could not remove lock (locks/[0-9a-f]{32}) of ([a-z -]+) on \S+ "
    r"\(.+\).*stale.*`casnap unlock` removes it",
    re.M,
)


def _cli(repo: str, data: Path, *args: str) -> tuple[int, str, str]:
    env = {"CASNAP_PASSWORD": PW, "CASNAP_PASSWORD_FILE": None, "CASNAP_PASSWORD_COMMAND": None}
    result = CliRunner().invoke(cli, ["--repo", repo, "--data", str(data), *args], env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.usefixtures("quick_retries")
@pytest.mark.parametrize("command", ["commit", "checkout"])
def test_a_network_lost_once_the_work_is_done_leaves_a_warning_not_a_failure(
    command: str,
    s3_server: str,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The network to S3 is cut at the release of the lock, after a commit stored its snapshot
    (or a checkout swapped its files in): the command prints what it did, warns once of the lock
    left, exits 0; the snapshot reads back whole, the data dir is the snapshot's."""
    make_bucket(s3_bucket)
    data = tmp_path / "data"
    make_app(data, rows=60, vectors=80)
    repo = f"s3://{s3_bucket}/app"
    with CuttingProxy(s3_server) as proxy:
        monkeypatch.setenv("CASNAP_S3_ENDPOINT", proxy.endpoint)
        code, out, err = _cli(repo, data, "commit", "-q", "-m", "first")  # an encrypted repo
        assert code == 0, err
        first = out.strip()
        evolve_app(data, 1)
        proxy.cut_at(rb"(?m)^(HEAD|DELETE) /\S*/locks/")
        if command == "commit":
            code, out, err = _cli(repo, data, "commit", "-m", "second")
        else:
            code, out, err = _cli(repo, data, "checkout", first, "--no-smoke")
        assert proxy.cut.is_set()  # the lock's release was the request cut
        assert proxy.refused >= RETRY_ATTEMPTS - 1  # and retried as the policy says
    assert code == 0, err
    (left,) = LEFT.findall(err)
    warnings = [x for x in err.splitlines() if x.startswith("casnap: warning")]
    assert len(warnings) == 1, err
    assert "error" not in err
    if command == "commit":
        sid = out.strip()
        assert re.fullmatch(r"[0-9a-f]{64}", sid), out
        assert f"snapshot {sid[:8]} saved" in err
    else:
        assert f"restored snapshot {first[:8]} into" in err
        assert "saved the replaced data as snapshot" in err
    # the work stands, read through the store itself
    monkeypatch.setenv("CASNAP_S3_ENDPOINT", s3_server)
    code, out, err = _cli(repo, data, "verify", "--read-data")
    assert code == 0, err
    code, out, err = _cli(repo, data, "unlock", "--json")
    assert code == 0, err
    kept = json.loads(out)["kept"]  # its holder (this test process) is alive: kept
    assert [k["key"] for k in kept] == [left[0]]
    check = tmp_path / "check"
    wanted = sid if command == "commit" else first  # what the data dir holds now
    code, _, err = _cli(repo, data, "checkout", wanted, "--to", str(check), "-q", "--no-smoke")
    assert code == 0, err
    assert snapshot_tree(check) == snapshot_tree(data)


# -- a local repository whose locks/ folder is made read-only once the lock is taken ----------

REPOS = ("repo", "secret", "copy")


def _sealing_works(tmp: Path) -> bool:
    probe = tmp / "seal-probe"
    probe.mkdir()
    (probe / "f").write_text("x")
    try:
        F.seal(probe)
    except (OSError, subprocess.CalledProcessError):
        return False
    try:
        (probe / "f").unlink()
    except OSError:
        return True
    finally:
        F.unseal(probe)
    return False


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[list[str], Path]]:
    """A plain repository with two snapshots of a small data dir, an encrypted one, an empty
    one to copy into, a folder of dated copies to import; each locks/ folder unsealed at the
    end."""
    if not _sealing_works(tmp_path):
        pytest.skip("cannot make a folder refuse removals here")
    data = tmp_path / "data"
    data.mkdir()
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    for i in range(2):
        (data / "notes.txt").write_text(f"version {i}\n" * 100)
        done = run_casnap([*base, "commit", "-q", "-m", f"v{i}"])
        assert done.returncode == 0, done.stderr
    (data / "notes.txt").write_text("version 2\n" * 100)
    done = run_casnap(
        ["--repo", str(tmp_path / "secret"), "init", "--encryption", "repokey"],
        env=casnap_env(CASNAP_PASSWORD=PW),
    )
    assert done.returncode == 0, done.stderr
    assert run_casnap(["--repo", str(tmp_path / "copy"), "init"]).returncode == 0
    old = tmp_path / "old"
    old.mkdir()
    (old / "notes_20250101_120000.txt").write_text("old\n")
    for repo in REPOS:
        (tmp_path / repo / "locks").mkdir(exist_ok=True)
    yield base, tmp_path
    for repo in REPOS:
        F.unseal(tmp_path / repo / "locks")


# every command that takes a lock (gc --dry-run: a shared one), and a phrase of its output
COMMANDS = {
    "commit": (["commit", "-m", "v2"], "saved:"),
    "checkout": (["checkout", "OLDEST", "--to", "TMP/out"], "restored snapshot"),
    "gc": (["gc"], "freed"),
    "gc --dry-run": (["gc", "--dry-run"], "would"),
    "prune": (["prune", "--keep-last", "1"], "removed 1 snapshot"),
    "forget": (["forget", "OLDEST"], "forgot 1 snapshot"),
    "copy": (["copy", "--to", "TMP/copy"], "copied"),
    "import": (["import", "TMP/old"], "imported"),
    "repair-index": (["repair-index"], "index"),
    "verify": (["verify"], "no problems"),
    "stats": (["stats"], "snapshots"),
    "cat": (["cat", "latest", "notes.txt"], "version 1"),
    "diff": (["diff", "OLDEST", "latest"], "notes.txt"),
    "key add": (["--repo", "TMP/secret", "key", "add"], "added"),
    "key passwd": (["--repo", "TMP/secret", "key", "passwd"], "changed"),
}


@pytest.mark.parametrize("case", sorted(COMMANDS))
def test_a_lock_that_cannot_be_removed_once_the_work_is_done_is_a_warning(
    world: tuple[list[str], Path], case: str
) -> None:
    """The locks/ folder turns read-only right after the command wrote its lock: the command's
    work and output are as ever, one warning per lock left, exit 0; once the command has ended
    its lock names a process that no longer runs, which `casnap unlock` removes."""
    base, tmp = world
    args, phrase = COMMANDS[case]
    listed = json.loads(run_casnap([*base, "log", "--json"]).stdout)
    oldest = min(listed, key=lambda s: s["time"])["id"]
    args = [a.replace("TMP", str(tmp)).replace("OLDEST", oldest) for a in args]
    secret = casnap_env(CASNAP_PASSWORD=PW, CASNAP_NEW_PASSWORD=PW + " too")
    env = secret if case.startswith("key") else casnap_env()
    done = run_casnap([*base, *args], env=env, faults="put:seal:1:locks/")
    assert done.returncode == 0, done.stderr
    said = LEFT.findall(done.stderr)
    warnings = [x for x in done.stderr.splitlines() if x.startswith("casnap: warning")]
    assert len(said) == len(warnings) == (2 if case == "copy" else 1), done.stderr
    assert phrase in done.stdout + done.stderr, done.stderr
    assert "error" not in done.stderr
    if case == "commit":
        assert len(json.loads(run_casnap([*base, "log", "--json"]).stdout)) == 3
    for repo in REPOS:
        F.unseal(tmp / repo / "locks")
    left = {p.name for repo in REPOS for p in (tmp / repo / "locks").iterdir()}
    assert left == {key.removeprefix("locks/") for key, _ in said}  # left, as said
    if case == "key passwd":
        secret = casnap_env(CASNAP_PASSWORD=PW + " too")
    for repo in REPOS:
        unlocked = run_casnap(["--repo", str(tmp / repo), "unlock"], env=secret)
        assert unlocked.returncode == 0, unlocked.stderr
        assert not list((tmp / repo / "locks").iterdir())


def test_a_lock_that_cannot_be_removed_counts_as_held_only_while_it_was_written_lately() -> None:
    """The release cannot tell whether the lock was still there. Written within the stale age,
    no other process can have judged it stale: a warning, and the block's end is no error. Not
    written for longer (its refreshes failing too), another process may have removed it and run
    a gc: the holder fails, as one whose lock was taken away."""
    import time

    from casnap import locks
    from casnap.backends import MemoryBackend
    from casnap.errors import LockError

    def store() -> F.FaultyBackend:  # the lock is written once, then nothing under locks/ works
        faults = [F.fail("put", 2, "locks/", None), F.fail("delete", 1, "locks/", None)]
        return F.FaultyBackend(MemoryBackend(), faults)

    said: list[str] = []
    backend = store()
    with locks.locked(backend, "commit", exclusive=False, warn=said.append):
        pass
    assert len(said) == 1 and LEFT.match("casnap: warning: " + said[0]), said
    assert len(locks.holders(backend)) == 1  # left, as said

    said.clear()
    with pytest.raises(LockError, match="finished, but its lock"):
        with locks.locked(
            store(), "commit", exclusive=False, warn=said.append, refresh=0.5, stale=0.6
        ):
            time.sleep(0.7)  # past the stale age, its one refresh failed, the next not yet due
    assert said == []
