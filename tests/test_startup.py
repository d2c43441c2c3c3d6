"""What starting a command loads: `import casnap`, `--help`, `log` of a local plain repository and
a commit that finds nothing changed import none of the libraries they do not use (numpy and
FAISS, the crypto and S3 libraries; zstandard too, but for `log`, which decompresses the
manifests). Each runs the real command line in a child process and reads its sys.modules."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from casnap.committer import commit
from casnap.repository import Repository
from tests.conftest import evolve_app

HEAVY = {"numpy", "zstandard", "faiss", "boto3", "botocore", "cryptography"}
ROOT = Path(__file__).resolve().parent.parent

# runs the console script's main() with ARGS, then writes the top-level modules loaded to OUT
CHILD = """
import atexit, json, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv = ["casnap", *sys.argv[2:]]
from casnap.cli import main
main()
"""


def run_cli(
    tmp_path: Path, *args: str, top: bool = True
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """The command's result and the top-level packages it imported (all modules: top=False)."""
    out = tmp_path / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(out), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    names = json.loads(out.read_text())
    return proc, {name.split(".")[0] for name in names} if top else set(names)


def test_importing_the_package_loads_no_operation() -> None:
    code = "import json, sys, casnap; print(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(proc.stdout)
    assert HEAVY & {name.split(".")[0] for name in loaded} == set()
    assert [m for m in loaded if m.startswith("casnap")] == ["casnap"]


def test_help_loads_no_heavy_library(tmp_path: Path) -> None:
    proc, loaded = run_cli(tmp_path, "--help")
    assert proc.returncode == 0 and "commit" in proc.stdout and "checkout" in proc.stdout
    assert HEAVY & loaded == set()


def test_log_of_a_local_plain_repository_loads_no_heavy_library(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("hello\n")
    repo = Repository.init(tmp_path / "repo")
    sid = commit(repo, data, message="first").id
    proc, loaded = run_cli(tmp_path, "--repo", str(tmp_path / "repo"), "log")
    assert proc.returncode == 0 and sid[:8] in proc.stdout and "first" in proc.stdout
    assert (HEAVY - {"zstandard"}) & loaded == set()  # manifests are stored zstd-compressed


def test_a_commit_that_finds_nothing_changed_loads_no_heavy_library(
    app: Path, tmp_path: Path
) -> None:
    """The data dir of the fixture (a database, FAISS indexes with sidecars) and a WAL database
    an application holds open: every entry comes from the parent snapshot, so neither the
    index nor the data path (numpy) is loaded. zstandard writes the manifest."""
    with contextlib.closing(sqlite3.connect(app / "live.db", isolation_level=None)) as live:
        live.execute("PRAGMA journal_mode=WAL")
        live.execute("CREATE TABLE t(x)")
        live.execute("INSERT INTO t VALUES (1)")
        past = time.time() - 60
        for p in app.rglob("*"):
            os.utime(p, (past, past))
        repo_dir = tmp_path / "repo"
        first = commit(Repository.init(repo_dir), app)
        assert first.files_new == 8
        proc, loaded = run_cli(
            tmp_path, "--repo", str(repo_dir), "--data", str(app), "commit", "--json"
        )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["files_unchanged"], result["bytes_read"]) == (8, 0)
    assert result["id"] != first.id  # a new snapshot all the same, as always
    assert (HEAVY - {"zstandard"}) & loaded == set()


# what a later commit of a database, FAISS indexes and small files needs none of: the parsers of
# framework stores (there is none), FastCDC (each piece it would cut here is under its minimum),
# strptime's module, subprocess (no password command), unicodedata (nothing unprintable shown),
# socket (the host name is uname's)
UNNEEDED = {
    "casnap.formats.chroma",
    "casnap.formats.langchain",
    "casnap.formats.llamaindex",
    "casnap.formats.pickles",
    "pyfastcdc",
    "_strptime",
    "socket",
    "subprocess",
    "unicodedata",
}


def test_a_later_commit_loads_only_what_its_files_need(app: Path, tmp_path: Path) -> None:
    """A commit after the database, the indexes and a small JSON file changed reads them all
    (numpy and the data path load), yet imports nothing those files do not call for."""
    (app / "notes.json").write_text('{"n": 1}')
    repo_dir = tmp_path / "repo"
    commit(Repository.init(repo_dir), app)
    evolve_app(app, 1)
    (app / "notes.json").write_text('{"n": 22}')
    args = ("--repo", str(repo_dir), "--data", str(app), "commit", "--json")
    proc, loaded = run_cli(tmp_path, *args, top=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["files_changed"] >= 4 and result["bytes_read"] > 0
    assert "numpy" in loaded
    assert UNNEEDED & loaded == set()


def test_a_command_on_s3_loads_botocore_but_not_boto3(
    s3_bucket: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    """An s3:// command talks to the store through botocore's client alone: boto3's session
    layer and its transfer manager (s3transfer) cost ~0.1 s of imports and serve no request."""
    init, _ = run_cli(tmp_path, "--repo", f"s3://{s3_bucket}/x", "init", "--encryption", "none")
    assert init.returncode == 0, init.stderr
    proc, loaded = run_cli(tmp_path, "--repo", f"s3://{s3_bucket}/x", "log")
    assert proc.returncode == 0, proc.stderr
    assert "botocore" in loaded and {"boto3", "s3transfer"} & loaded == set()


def test_repair_index_is_exported_as_the_other_operations(tmp_path: Path) -> None:
    """`from casnap import repair_index` works as for commit or verify, and rebuilds an index
    whose files were deleted."""
    from casnap import repair_index, verify

    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("hello\n")
    repo = Repository.init(tmp_path / "repo")
    commit(repo, data)
    for p in (tmp_path / "repo" / "index").iterdir():
        p.unlink()
    repo = Repository.open(tmp_path / "repo")
    assert repair_index(repo).chunks_indexed > 0
    assert verify(Repository.open(tmp_path / "repo"), read_data=True).ok


# runs main() with ARGS; writes OPENBLAS_NUM_THREADS as it was when numpy was first imported
BLAS_CHILD = """
import os, sys
out = sys.argv[1]
def seen(event, args):
    if event == "import" and args[0] == "numpy" and not os.path.exists(out):
        open(out, "w").write(os.environ.get("OPENBLAS_NUM_THREADS", "unset"))
sys.addaudithook(seen)
sys.argv = ["casnap", *sys.argv[2:]]
from casnap.cli import main
main()
"""


def _run_without_blas_setting(
    argv: list[str], blas: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run argv with OPENBLAS_NUM_THREADS unset in its environment, or set to blas."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if blas is not None:
        env["OPENBLAS_NUM_THREADS"] = blas
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_a_commit_loads_numpy_with_one_blas_thread(app: Path, tmp_path: Path) -> None:
    """OpenBLAS starts one thread per core when numpy is loaded, each spinning ~0.1 s of CPU that
    a commit on a small machine needs for hashing and compression (casnap does no linear
    algebra): every command loads it with one."""
    out = tmp_path / "blas.txt"
    args = ["--repo", str(tmp_path / "repo"), "--data", str(app), "commit", "-q"]
    proc = _run_without_blas_setting([sys.executable, "-c", BLAS_CHILD, str(out), *args])
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == "1"


def test_commands_casnap_runs_for_the_user_see_the_users_blas_setting(
    app: Path, tmp_path: Path
) -> None:
    """The one-thread setting is casnap's own: a smoke command sees the environment the user
    gave, with OPENBLAS_NUM_THREADS unset (or as set)."""
    repo = tmp_path / "repo"
    sid = commit(Repository.init(repo), app).id
    seen = tmp_path / "seen.txt"
    cmd = f'echo "${{OPENBLAS_NUM_THREADS-unset}}" > {seen}'
    for given, expected in ((None, "unset"), ("3", "3")):
        out = str(tmp_path / f"out{expected}")
        argv = [sys.executable, "-m", "casnap", "--repo", str(repo), "checkout", sid, "--to", out]
        proc = _run_without_blas_setting([*argv, "--smoke-cmd", cmd, "-q"], given)
        assert proc.returncode == 0, proc.stderr
        assert seen.read_text().strip() == expected


def _child(
    argv: list[str], cwd: Path, sigint: Any = signal.SIG_DFL
) -> subprocess.CompletedProcess[str]:
    """Run argv with SIGINT as given, by default as a terminal gives it, whatever the suite was
    started with (a background job of a script ignores SIGINT, and its children inherit that)."""
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),
    )


# Ctrl-C arrives as click, the first module of the command line, is looked for; then RUN
INTERRUPT_AT_CLICK = """
import os, runpy, signal, sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == 'click':
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, Interrupt())
"""


def _assert_interrupted_while_loading(run: str, tmp_path: Path) -> None:
    """Ctrl-C while the command line loads (nothing written yet): exit 130 with one line, not a
    traceback of the import that was running."""
    code = INTERRUPT_AT_CLICK + run + "\nprint('not reached')\n"
    proc = _child([sys.executable, "-c", code], tmp_path)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "casnap: interrupted\n" and proc.stdout == ""


def test_an_interrupt_while_the_command_line_loads_is_one_line(tmp_path: Path) -> None:
    """The console script's entry point, in the first tens of milliseconds."""
    run = "sys.argv = ['casnap', 'log']\nfrom casnap.start import main\nmain()"
    _assert_interrupted_while_loading(run, tmp_path)


def test_importing_casnap_elsewhere_leaves_interrupts_alone(tmp_path: Path) -> None:
    """A program that imports casnap keeps Python's own KeyboardInterrupt."""
    code = (
        "import os, signal, casnap\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "except KeyboardInterrupt:\n"
        "    print('caught')\n"
    )
    proc = _child([sys.executable, "-c", code], tmp_path)
    assert proc.stdout == "caught\n", proc.stderr


def test_the_console_script_keeps_interrupts_ignored_when_started_so(tmp_path: Path) -> None:
    """A command started with SIGINT ignored (a script's `casnap commit &`, whose shell ignores
    it for background jobs) keeps ignoring it, while it loads and once it runs, as Python does."""
    code = (
        "import signal, sys\n"
        "sys.argv = ['casnap', '--help']\n"
        "from casnap import signals\n"
        "signals.quiet_while_loading()\n"  # what the entry point does first
        "loading = signal.getsignal(signal.SIGINT)\n"
        "import atexit\n"
        "ignored = lambda h: h == signal.SIG_IGN\n"
        "atexit.register(lambda: print(ignored(loading), ignored(signal.getsignal(2))))\n"
        "from casnap.start import main\n"
        "main()\n"  # ends the process once its exit handlers ran
    )
    proc = _child([sys.executable, "-c", code], tmp_path, signal.SIG_IGN)
    assert proc.stdout.splitlines()[-1] == "True True", proc.stderr


def test_a_program_named_casnap_using_the_library_keeps_its_keyboard_interrupt(
    tmp_path: Path,
) -> None:
    """A user's own script named `casnap` (a wrapper calling the library) is not the command
    line: once casnap is imported, Ctrl-C is its KeyboardInterrupt, not an exit mid-operation
    that skips the release of the repository's lock."""
    script = tmp_path / "casnap"
    script.write_text(
        "import os, signal, casnap\n"
        "casnap.Repository\n"  # an operation's module loads: the wrapper is past loading
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "except KeyboardInterrupt:\n"
        "    print('caught')\n"
    )
    proc = _child([sys.executable, str(script)], ROOT)
    assert proc.stdout == "caught\n", (proc.returncode, proc.stderr)


def test_an_interrupt_while_python_m_casnap_loads_is_one_line(tmp_path: Path) -> None:
    """`python -m casnap` is the command line too."""
    run = "sys.argv = ['-m', 'log']\nrunpy._run_module_as_main('casnap')"  # python -m casnap log
    _assert_interrupted_while_loading(run, tmp_path)


# Ctrl-C arrives as ctypes, which the entry point loads for mallopt once the command line's
# modules are in, is looked for; then RUN
INTERRUPT_AT_CTYPES = INTERRUPT_AT_CLICK.replace("'click'", "'ctypes'")


def test_an_interrupt_while_the_entry_point_sets_up_malloc_is_one_line(tmp_path: Path) -> None:
    """Ctrl-C between the loading of the command line and the start of the command (as the
    entry point loads ctypes for glibc's mallopt): exit 130 with one line, not a traceback."""
    run = "sys.argv = ['casnap', 'log']\nfrom casnap.start import main\nmain()"
    code = INTERRUPT_AT_CTYPES + run + "\nprint('not reached')\n"
    proc = _child([sys.executable, "-c", code], tmp_path)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "casnap: interrupted\n" and proc.stdout == ""


@pytest.mark.parametrize("module", ["typing", "casnap.signals"])
def test_an_interrupt_while_the_entry_point_loads_its_signal_handling_is_one_line(
    tmp_path: Path, module: str
) -> None:
    """Ctrl-C in the first milliseconds, as `typing` (~5 ms) or the module that makes signals
    one line (its `import signal` takes ~10 ms) is looked for: exit 130 with one line, not a
    traceback of that import. The entry point sets its handler before either loads."""
    run = "sys.argv = ['casnap', 'log']\nfrom casnap.start import main\nmain()"
    code = INTERRUPT_AT_CLICK.replace("'click'", repr(module)) + run + "\nprint('not reached')\n"
    proc = _child([sys.executable, "-c", code], tmp_path)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "casnap: interrupted\n" and proc.stdout == ""


# runs main() with ARGS (or, with "-", nothing casnap), then frees a 16 MiB block it filled and
# writes how much of it the process still holds (KiB of VmRSS gained over before the block)
FREED_CHILD = """
import atexit, sys
out = sys.argv[1]
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
def held():
    before = rss()
    block = bytearray(16 << 20)  # filled with zeros: every page touched
    del block
    open(out, "w").write(str(rss() - before))
atexit.register(held)
if sys.argv[2:] != ["-"]:
    sys.argv = ["casnap", *sys.argv[2:]]
    from casnap.cli import main
    main()
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/self/status")
def test_the_command_line_keeps_freed_memory_for_its_next_blocks(tmp_path: Path) -> None:
    """A restore receives and decrypts each span of a pack into a new block of some MiB: glibc
    gives such a block a mapping of its own and hands it back when it is freed, so every span
    cost a page fault and the zeroing of a fresh page per 4 KiB. The command line has malloc
    keep what it frees for the next block; a Python process left as it is does not."""
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's malloc only")
    results = {}
    for name, args in (("python", ["-"]), ("casnap", ["--version"])):
        out = tmp_path / f"{name}.txt"
        proc = subprocess.run(
            [sys.executable, "-c", FREED_CHILD, str(out), *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        results[name] = int(out.read_text())
    assert results["python"] < 4 << 10  # handed back at once
    assert results["casnap"] > 12 << 10  # kept for the next block
