"""Whose process a lock names: a lock is this machine's, whose pid can be checked here, only when
it was written on this host name, in this PID namespace and under this running kernel (its boot
id). Two machines of one name (cloned VMs, default names) have the same PID namespace inode
outside containers, and each would otherwise find the other's live lock stale because its pid
does not run here. A command that removes a stale lock says so (docs/FORMAT.md, "Locks")."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap import locks
from casnap.cli import cli
from casnap.procs import boot_id, pid_namespace
from casnap.repository import Repository
from tests.helpers_reliability import dead_pid

KEY = "locks/" + "ab" * 16


def _lock(boot: str | None, age: float = 0.0, exclusive: bool = False) -> bytes:
    """A lock of a commit naming this host, this PID namespace and a pid that does not run here,
    written `age` seconds ago, with the boot id given (None: a lock of an older casnap)."""
    import socket

    now = time.time() - age
    body: dict[str, object] = {
        "host": socket.gethostname(),
        "pid": dead_pid(),
        "start": None,
        "pidns": pid_namespace(),
        "exclusive": exclusive,
        "operation": "commit",
        "taken": now,
        "time": now,
    }
    if boot is not None:
        body["boot"] = boot
    return json.dumps(body).encode()


def _cli(repo: str, *args: str) -> tuple[int, str, str]:
    env = {"CASNAP_LOCK_WAIT": "0", "CASNAP_PASSWORD": None, "CASNAP_PASSWORD_FILE": None}
    result = CliRunner().invoke(cli, ["--repo", repo, *args], env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(params=["local", "s3"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A plain repository holding one snapshot, on a local directory or on the S3 test
    server."""
    if request.param == "s3":
        from tests.s3server import make_bucket

        bucket = request.getfixturevalue("s3_bucket")
        make_bucket(bucket)
        where = f"s3://{bucket}/app"
    else:
        where = str(tmp_path / "repo")
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a\n")
    code, _, err = _cli(where, "--data", str(data), "init", "--encryption", "none")
    assert code == 0, err
    code, _, err = _cli(where, "--data", str(data), "commit", "-q")
    assert code == 0, err
    return where


def _put(location: str, body: bytes) -> Repository:
    repo = Repository.open(location)
    repo.backend.put(KEY, body)
    return repo


def test_a_lock_records_the_boot_of_the_kernel_it_was_taken_under() -> None:
    from casnap.backends import MemoryBackend

    here = boot_id()
    assert here is not None and re.fullmatch(r"[0-9a-f-]{36}", here)  # Linux
    backend = MemoryBackend()
    with locks.locked(backend, "commit", exclusive=False, wait=0):
        (mine,) = locks.holders(backend)
        assert json.loads(backend.get(mine.key))["boot"] == here
        assert mine.boot == here and mine.local()


def test_a_fresh_lock_of_another_machine_of_this_name_is_live_whatever_its_pid(
    location: str,
) -> None:
    """Another machine of this host name (a cloned VM, or this one before a reboot) holds a
    lock: its pid cannot be checked from here, so gc waits for it and fails naming it, and
    `unlock` keeps it (the reproduction: a running commit elsewhere lost its lock to gc)."""
    repo = _put(location, _lock(boot=str(uuid.uuid4())))
    code, _, err = _cli(location, "gc")
    assert code == 6, err
    assert "shared lock held by commit" in err and "unlock --force" in err
    assert repo.backend.exists(KEY)
    code, out, err = _cli(location, "unlock")
    assert code == 0, err
    assert out == "" and f"kept {KEY}" in err
    assert repo.backend.exists(KEY)


def _removed(err: str, why: str, where: str = "") -> None:
    """err holds one warning, naming the lock removed, its holder's host (and where: under
    another boot) and why it was stale."""
    import socket

    warnings = [x for x in err.splitlines() if x.startswith("casnap: warning")]
    pattern = (
        rf"casnap: warning: removed stale lock {KEY}: shared lock held by commit \(pid \d+ on "
        rf"{re.escape(socket.gethostname() + where)}, since [0-9 :-]+\) \({why}\)"
    )
    assert len(warnings) == 1 and re.fullmatch(pattern, warnings[0]), err


@pytest.mark.parametrize("boot", ["this", None], ids=["this-boot", "older-casnap"])
def test_a_lock_of_this_machine_whose_process_is_gone_is_removed_and_said(
    location: str, boot: str | None
) -> None:
    """A lock written under this kernel (or by an older casnap, which recorded no boot: judged
    by host name and PID namespace as it was) whose process no longer runs is stale at once:
    gc removes it and says so in one line."""
    repo = _put(location, _lock(boot=boot_id() if boot == "this" else None))
    code, _, err = _cli(location, "gc")
    assert code == 0, err
    _removed(err, "its process no longer runs")
    assert not repo.backend.exists(KEY)


def test_a_lock_of_another_machine_of_this_name_goes_stale_when_not_refreshed(
    location: str,
) -> None:
    """As any other host's lock: stale once not refreshed for the stale age, and said so."""
    from casnap.constants import LOCK_STALE_SECONDS

    repo = _put(location, _lock(boot=str(uuid.uuid4()), age=2 * LOCK_STALE_SECONDS))
    code, _, err = _cli(location, "gc")
    assert code == 0, err
    _removed(err, "not refreshed for 60 min", " under another boot")
    assert not repo.backend.exists(KEY)


def test_this_machine_is_its_host_name_pid_namespace_and_boot() -> None:
    import socket

    here = dict(host=socket.gethostname(), pidns=pid_namespace())
    info = locks.LockInfo(
        KEY,
        pid=dead_pid(),
        start=None,
        exclusive=False,
        operation="checkout",
        time=time.time(),
        folder="/d",
        **here,
    )
    assert info.local() and info.stale_reason() == "its process no longer runs"
    assert info.clashes("commit", "/d")  # a checkout of /d in another process here
    assert info._replace(boot=boot_id()).local()
    other = info._replace(boot=str(uuid.uuid4()))
    assert not other.local() and other.stale_reason() is None
    assert not other.clashes("commit", "/d")  # its pid says nothing here
    assert not info._replace(pidns=(pid_namespace() or 0) + 1).local()
    assert not info._replace(host="elsewhere").local()
