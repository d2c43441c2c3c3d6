"""SIGTERM (a service manager stopping casnap, `timeout`, `kill`) ends a command the way Ctrl-C
does: it unwinds, releasing the repository's lock (on object storage another host would
otherwise wait for it to go stale), and prints one line; exit 143."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers_reliability import ROOT, casnap_env, run_casnap

CASNAP = [sys.executable, "-m", "casnap"]


def _casnap(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CASNAP, *map(str, args)], capture_output=True, text=True, timeout=120)


def _locks(repo: Path) -> list[str]:
    folder = repo / "locks"
    return os.listdir(folder) if folder.is_dir() else []


def _notes_repo(tmp_path: Path, commit: bool = True) -> tuple[Path, Path]:
    """A data dir holding notes.txt and an initialised repository (with its first snapshot);
    (data, repo)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("first\n")
    repo = tmp_path / "repo"
    assert _casnap("--repo", repo, "init").returncode == 0
    if commit:
        first = _casnap("--repo", repo, "--data", data, "commit", "-q")
        assert first.returncode == 0, first.stderr
    return data, repo


def _terminated_mid_way(
    repo: Path, *args: str | Path, signum: int = signal.SIGTERM
) -> tuple[int, str]:
    """Start casnap with args, and send it SIGTERM (or signum) once it holds the repository's
    lock; its exit code and stderr."""
    proc = subprocess.Popen(
        [*CASNAP, "--repo", str(repo), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not _locks(repo) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.parametrize(
    ("signum", "code", "said"),
    [(signal.SIGTERM, 143, "casnap: terminated\n"), (signal.SIGHUP, 129, "casnap: hung up\n")],
)
def test_a_terminated_commit_releases_its_lock_and_keeps_earlier_snapshots(
    tmp_path: Path, signum: int, code: int, said: str
) -> None:
    # SIGHUP: the terminal of an interactive commit closed (a dropped SSH session)
    data, repo = _notes_repo(tmp_path)
    # enough data that the commit is still reading it when the signal comes
    (data / "big.bin").write_bytes(np.random.default_rng(7).bytes(48 << 20))

    assert _terminated_mid_way(repo, "--data", data, "commit", signum=signum) == (code, said)
    assert _locks(repo) == []
    log = _casnap("--repo", repo, "log", "--json")
    assert log.returncode == 0 and log.stdout.count('"id"') == 1, log.stdout
    assert _casnap("--repo", repo, "verify").returncode == 0
    out = tmp_path / "out"
    assert _casnap("--repo", repo, "checkout", "latest", "--to", out).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_terminated_checkout_releases_its_lock_and_leaves_the_target_untouched(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "big.bin").write_bytes(np.random.default_rng(8).bytes(48 << 20))
    repo = tmp_path / "repo"
    assert _casnap("--repo", repo, "init").returncode == 0
    assert _casnap("--repo", repo, "--data", data, "commit", "-q").returncode == 0
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("mine\n")

    done = _terminated_mid_way(repo, "checkout", "latest", "--to", target, "--no-smoke")
    assert done == (143, "casnap: terminated\n")
    assert _locks(repo) == []
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_sigterm_while_the_lock_is_released_still_removes_it(tmp_path: Path) -> None:
    data, repo = _notes_repo(tmp_path, commit=False)
    # the signal comes just before the lock object is removed: the commit itself has landed
    args = ["--repo", str(repo), "--data", str(data), "commit", "-q"]
    done = run_casnap(args, faults="delete:term:1:locks/")
    assert _locks(repo) == []
    log = _casnap("--repo", repo, "log", "--json")
    assert log.returncode == 0 and log.stdout.count('"id"') == 1, log.stdout
    sid = json.loads(log.stdout)[0]["id"]  # the line names it (tests/test_late_signals.py)
    said = f"casnap: terminated; the commit completed: snapshot {sid} is stored\n"
    assert (done.returncode, done.stderr) == (143, said)


def test_sigterm_during_the_swap_places_every_file_of_the_snapshot(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    repo = tmp_path / "repo"
    assert _casnap("--repo", repo, "init").returncode == 0
    ids = []
    for version in (1, 2):
        for n in range(5):
            (data / f"f{n}.txt").write_text(f"file {n}, version {version}\n")
        assert _casnap("--repo", repo, "--data", data, "commit", "-q").returncode == 0
        ids.append(json.loads(_casnap("--repo", repo, "log", "--json").stdout)[0]["id"])
    newest = _files(data)
    target = tmp_path / "target"
    assert _casnap("--repo", repo, "checkout", ids[0], "--to", target).returncode == 0
    assert _files(target) != newest

    # SIGTERM just before the second of the five renames into the target
    args = ["--repo", str(repo), "checkout", "latest", "--to", str(target), "--no-smoke"]
    done = run_casnap(args, faults=f"replace:term:2:{target}/")
    said = f"casnap: terminated; the checkout completed: snapshot {ids[1][:8]} restored into"
    assert (done.returncode, done.stderr) == (143, f"{said} {target}\n")
    assert _files(target) == newest  # all five swapped in, never a mix of two snapshots
    assert _locks(repo) == []


def test_a_sigterm_swallowed_by_a_finalizer_is_delivered_again(tmp_path: Path) -> None:
    # Python prints and drops an exception raised in a finalizer (__del__, a weakref callback
    # such as importlib's module locks): the SIGTERM that raised it must still end the command
    script = """
import os, signal, sys, time
from casnap import signals
from casnap.errors import Terminated

signals.handle()

class Finalized:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            pass

try:
    Finalized()
    time.sleep(5)
    print("slept on")
except Terminated:
    print("terminated")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert (done.stdout, done.stderr) == ("terminated\n", "")


def _started(mark: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert mark.exists()


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize(
    ("smoke", "signums"),
    [
        ("exec sleep 60", [signal.SIGTERM]),
        # a background job that ignores SIGTERM: killed 2 s later, as the command itself
        ("(trap '' TERM; exec sleep 60) & wait", [signal.SIGTERM]),
        # the same, with Ctrl-C pressed while casnap waits for it to end
        ("trap '' TERM; sleep 60", [signal.SIGTERM, signal.SIGINT]),
    ],
)
def test_a_signal_ends_a_running_smoke_command_and_the_checkout(
    tmp_path: Path, smoke: str, signums: list[int]
) -> None:
    _data, repo = _notes_repo(tmp_path)
    mark = tmp_path / "smoke.pgid"
    target = tmp_path / "target"
    cmd = f"echo $$ > {mark}.tmp && mv {mark}.tmp {mark} && {smoke}"
    proc = subprocess.Popen(
        [*CASNAP, "--repo", str(repo), "checkout", "latest", "--to", str(target)]
        + ["--smoke-cmd", cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _started(mark, proc)
    time.sleep(0.2)  # the background job started
    for signum in signums:
        proc.send_signal(signum)
        time.sleep(0.3)
    _out, err = proc.communicate(timeout=30)  # not the smoke command's 60 s
    said = {signal.SIGTERM: "casnap: terminated\n", signal.SIGINT: "casnap: interrupted\n"}
    assert err.endswith(said[signums[0]]) and "Traceback" not in err, err  # the first counts
    group = int(mark.read_text())  # the shell's pid: its process group's id
    assert all(_gone(pid) for pid in _members(group)), _members(group)
    assert not target.exists() and _locks(repo) == []


def _members(pgid: int) -> list[int]:
    """The processes of a process group."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                found.append(int(name))
    return found


@pytest.mark.parametrize(
    "script",
    [
        "echo $$ > {mark}.tmp && mv {mark}.tmp {mark} && exec sleep 60",
        # what it started in the background goes with it (it holds casnap's stderr open)
        "sleep 60 & echo $! > {mark}.tmp && mv {mark}.tmp {mark}; wait",
    ],
)
def test_sigterm_ends_a_running_password_command(tmp_path: Path, script: str) -> None:
    repo = tmp_path / "repo"
    env = {**os.environ, "CASNAP_PASSWORD": "pw"}
    done = subprocess.run(
        [*CASNAP, "--repo", str(repo), "init", "--encryption", "repokey"], env=env, timeout=60
    )
    assert done.returncode == 0
    mark = tmp_path / "password.pid"
    cmd = "sh -c '" + script.format(mark=mark) + "'"
    env.pop("CASNAP_PASSWORD")
    proc = subprocess.Popen(
        [*CASNAP, "--repo", str(repo), "--password-command", cmd, "log"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    _started(mark, proc)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)  # not the password command's 60 s
    assert (proc.returncode, err) == (143, "casnap: terminated\n")
    assert _gone(int(mark.read_text()))


def test_an_error_raised_while_a_signal_unwound_the_command_is_the_signal() -> None:
    # a SIGTERM during an import fails the class being defined with a RuntimeError whose
    # cause is Terminated: that is the signal's exit, not an internal error
    import click
    import pytest

    from casnap.cli.main import CasnapGroup
    from casnap.errors import Terminated

    @click.group(cls=CasnapGroup)
    def group() -> None:
        pass

    @group.command()
    def stop() -> None:
        try:
            raise Terminated("terminated")
        except Terminated as exc:
            raise RuntimeError("Error calling __set_name__") from exc

    @group.command()
    def fail() -> None:
        raise RuntimeError("a bug")

    with pytest.raises(SystemExit) as stopped:
        group.main(["stop"])
    assert stopped.value.code == 143
    with pytest.raises(SystemExit) as failed:
        group.main(["fail"])
    assert failed.value.code == 70


def test_sigterm_during_an_encrypted_init_leaves_a_whole_repository(tmp_path: Path) -> None:
    # the signal comes after the key file, before the config: a key file alone would be an
    # init half done, which every later command refuses
    repo = tmp_path / "repo"
    env = {**os.environ, "CASNAP_PASSWORD": "pw"}
    args = ["--repo", str(repo), "init", "--encryption", "repokey"]
    done = run_casnap(args, env=env, faults="put:term:1:config")
    assert (done.returncode, done.stderr) == (143, "casnap: terminated\n")
    log = subprocess.run([*CASNAP, "--repo", str(repo), "log"], env=env, capture_output=True)
    assert log.returncode == 0, log.stderr


def test_a_signal_in_importlib_s_locking_is_sent_again_once_it_is_left(tmp_path: Path) -> None:
    # raised between importlib's taking of its import lock and the `try` that releases it, the
    # exception would leave the lock held: another thread importing then waits forever
    script = """
import os, signal, sys, time
from casnap import signals
from casnap.errors import Terminated

signals.handle()
code = compile(
    "def locking(done):\\n"
    "    os.kill(os.getpid(), signal.SIGTERM)\\n"
    "    for _ in range(1000):\\n"
    "        pass\\n"
    "    done.append(True)\\n",
    "<frozen importlib._bootstrap>",
    "exec",
)
space = {"os": os, "signal": signal}
exec(code, space)
done = []
try:
    space["locking"](done)
    time.sleep(5)
    print("slept on")
except Terminated:
    print("terminated after the step" if done else "terminated inside it")
"""
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert (run.stdout, run.stderr) == ("terminated after the step\n", "")


def test_a_signal_while_the_last_line_is_written_ends_casnap_at_once(tmp_path: Path) -> None:
    # the command is over: a SIGTERM while its error goes to a slow reader (`2>&1 | less`) ends
    # the process with the signal's code, not with a traceback of the write it interrupted
    script = """
import os, signal, sys
import click
from casnap import signals
from casnap.cli.main import CasnapGroup
from casnap.errors import SnapshotNotFound

cli_main = sys.modules["casnap.cli.main"]

signals.handle()
real = cli_main.say_error

def slow_say_error(message):
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):
        pass
    real(message)

cli_main.say_error = slow_say_error

@click.group(cls=CasnapGroup)
def group():
    pass

@group.command()
def show():
    raise SnapshotNotFound("no snapshot matches 'x'")

group.main(["show"])
"""
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert (run.returncode, run.stderr) == (143, "")


def test_a_second_signal_while_the_first_unwinds_the_command_is_ignored(tmp_path: Path) -> None:
    # SIGINT and SIGTERM at once: Python raises the second as the first unwinds, in the first
    # frame of the unwinding, which could be a context manager's exit before it resumed the
    # lock's block: the lock was never released
    data = tmp_path / "data"
    data.mkdir()
    (data / "big.bin").write_bytes(np.random.default_rng(9).bytes(4 << 20))
    repo = tmp_path / "repo"
    assert _casnap("--repo", repo, "init").returncode == 0
    args = ["--repo", str(repo), "--data", str(data), "commit", "-q"]
    done = run_casnap(args, faults="put:burst:1:packs/")
    assert done.returncode == 130 and done.stderr.endswith("casnap: interrupted\n"), done.stderr
    assert "Traceback" not in done.stderr and _locks(repo) == []


def test_a_lock_whose_block_never_ended_is_released_at_exit(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert _casnap("--repo", repo, "init").returncode == 0
    script = f"""
from casnap.repository import Repository
repo = Repository.open({str(repo)!r})
block = repo.lock("commit")
block.__enter__()  # never left: its generator stays suspended
print(len(list(repo.backend.list("locks/"))))
from casnap.cli.main import exit_now
exit_now(0)  # the command line's exit: no teardown that would close the generator
"""
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert (run.returncode, run.stdout) == (0, "1\n"), run.stderr
    assert _locks(repo) == []


def test_a_signal_while_output_waits_on_a_full_pipe_still_ends_casnap(tmp_path: Path) -> None:
    # `casnap ls latest 2>&1 | less` with less not reading: the SIGTERM unwinds the listing,
    # whose last line then waits on the same full pipe
    data = tmp_path / "data"
    (data / "extra").mkdir(parents=True)
    for n in range(18_000):
        (data / "extra" / f"file_with_a_rather_long_name_{n:06d}.txt").write_text(f"{n}")
    repo = tmp_path / "repo"
    assert _casnap("--repo", repo, "init").returncode == 0
    assert _casnap("--repo", repo, "--data", data, "commit", "-q").returncode == 0
    read, write = os.pipe()
    proc = subprocess.Popen(
        [*CASNAP, "--repo", str(repo), "ls", "latest"], stdout=write, stderr=write
    )
    os.close(write)
    try:
        time.sleep(3)  # the pipe (64 KiB) is full: casnap waits to write
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        proc.kill()
        os.close(read)
    assert code == 143


def _full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is full and that nobody reads: (read end, write end)."""
    read, write = os.pipe()
    os.set_blocking(write, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write, b"x" * 65536)
    os.set_blocking(write, True)
    return read, write


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_output_is_stuck_on_a_full_pipe_ends_casnap(
    tmp_path: Path, signum: int
) -> None:
    # `casnap log 2>&1 | reader` with the reader stuck: the signal's unwinding, and the last
    # line it says, must not wait on the pipe for ever (click's own Ctrl-C line did)
    _data, repo = _notes_repo(tmp_path)
    read, write = _full_pipe()
    proc = subprocess.Popen([*CASNAP, "--repo", str(repo), "log"], stdout=write, stderr=write)
    os.close(write)
    try:
        time.sleep(2)  # loaded, and stuck writing the listing
        proc.send_signal(signum)
        code = proc.wait(timeout=30)
    finally:
        proc.kill()
        os.close(read)
    assert code == 128 + signum


def test_a_signal_while_loading_with_stderr_stuck_ends_casnap(tmp_path: Path) -> None:
    script = """
import os, signal, time
from casnap import signals

signals.quiet_while_loading()
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(60)
"""
    read, write = _full_pipe()
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=write, cwd=ROOT)
    os.close(write)
    try:
        code = proc.wait(timeout=30)  # not the 60 s: its one line waits 2 s at most
    finally:
        proc.kill()
        os.close(read)
    assert code == 143


def test_the_first_signal_decides_the_exit_code() -> None:
    # a second signal once the command is done ends the process with the first one's code;
    # one that lands while the first, deferred out of importlib's locking, waits to be sent
    # again is ignored
    script = """
import os, signal, sys, time
from casnap import signals
from casnap.errors import Terminated

signals.handle()
locking = compile(
    "def locking():\\n"
    "    os.kill(os.getpid(), signal.SIGTERM)\\n"
    "    for _ in range(1000):\\n"
    "        pass\\n",
    "<frozen importlib._bootstrap>",
    "exec",
)
space = {"os": os, "signal": signal}
exec(locking, space)
try:
    space["locking"]()
    os.kill(os.getpid(), signal.SIGINT)  # before the deferred SIGTERM is sent again
    time.sleep(5)
except (Terminated, KeyboardInterrupt) as exc:
    print(type(exc).__name__, flush=True)
    signals.ending()
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
"""
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert (run.stdout, run.returncode) == ("Terminated\n", 143), run.stderr


def test_sigterm_while_a_lock_in_conflict_is_removed_leaves_none(tmp_path: Path) -> None:
    # a commit that finds gc's exclusive lock removes its own and waits: a signal there must
    # not leave it (on S3 another host's gc would wait 30 minutes for it to go stale)
    data, repo = _notes_repo(tmp_path)
    from casnap.repository import Repository

    with Repository.open(repo) as held, held.lock("gc"):
        gc_lock = _locks(repo)
        args = ["--repo", str(repo), "--data", str(data), "commit", "-q"]
        env = casnap_env(CASNAP_LOCK_WAIT="5")
        done = run_casnap(args, env=env, faults="delete:term:1:locks/")
        assert (done.returncode, done.stderr) == (143, "casnap: terminated\n")
        assert _locks(repo) == gc_lock


@pytest.mark.parametrize("command", ["commit", "copy"])
def test_a_stopped_first_commit_or_copy_takes_back_the_parent_folders_it_made(
    tmp_path: Path, command: str
) -> None:
    """`--repo /tmp/x/a/b/repo` with /tmp/x absent: a first commit (or a copy creating its
    destination) stopped by SIGTERM took back the repository folder it made and left x/a/b
    behind, empty. Each folder it made goes too, deepest first, while empty; one that was there
    before, or that holds something by then, stays."""
    data, src = _notes_repo(tmp_path)
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "a").mkdir()
    (tmp_path / "kept" / "a" / "mine.txt").write_text("mine\n")
    for top, new in ((tmp_path / "x", "x/a/b/repo"), (tmp_path / "kept" / "a", "kept/a/b/repo")):
        where = tmp_path / new
        if command == "commit":
            args = ["--repo", str(where), "--data", str(data), "commit", "-q"]
        else:
            args = ["--repo", str(src), "--data", str(data), "copy", "--to", str(where)]
        done = run_casnap(args, faults="put:term:1:packs/")
        assert (done.returncode, done.stderr) == (143, "casnap: terminated\n")
        if top.name == "x":
            assert not top.exists()
        else:
            assert sorted(p.name for p in top.iterdir()) == ["mine.txt"]
    assert _casnap("--repo", src, "verify").returncode == 0


@pytest.mark.parametrize(("action", "code"), [("int", 130), ("term", 143)])
@pytest.mark.parametrize("where", ["config", "keys/"])
def test_a_signal_while_a_first_commit_makes_its_repository_takes_it_back(
    tmp_path: Path, action: str, code: int, where: str
) -> None:
    """A signal while a first commit's init writes the config (or, encrypted, its key file)
    waits for that step, then lands before the commit has the new repository in hand: it was
    left there, config and tmp/ (a later commit then no longer said it created one, and a
    mistyped --repo passed unseen). It is taken back, as after any stopped first commit."""
    data, _ = _notes_repo(tmp_path, commit=False)
    repo = tmp_path / "new" / "repo"
    env = casnap_env()
    if where == "keys/":  # a password given: the first commit makes an encrypted repository
        env["CASNAP_PASSWORD"] = "pw"
    args = ["--repo", str(repo), "--data", str(data), "commit", "-q"]
    done = run_casnap(args, env=env, faults=f"put:{action}:1:{where}")
    assert done.returncode == code, done.stderr
    assert not (tmp_path / "new").exists(), sorted(p.name for p in repo.iterdir())


def test_a_signal_before_the_first_commit_begins_takes_its_repository_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the repository made and the commit started (a progress bar set up), a signal
    left the new repository behind: the command line takes it back too."""
    from click.testing import CliRunner

    from casnap import committer
    from casnap.cli import cli

    def stopped(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(committer, "commit", stopped)
    data, _ = _notes_repo(tmp_path, commit=False)
    repo = tmp_path / "new" / "repo"
    CliRunner().invoke(cli, ["--repo", str(repo), "--data", str(data), "commit", "-q"])
    assert not (tmp_path / "new").exists()
