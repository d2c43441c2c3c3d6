"""Edges a user reaches by accident: empty and non-numeric values, misplaced options, odd tags."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from casnap.committer import commit
from casnap.errors import EXIT_CODES
from casnap.repository import Repository
from tests.helpers_gc import flip_byte
from tests.helpers_reliability import casnap_command, casnap_env, run_casnap, small_app
from tests.test_hostile import one_line


@pytest.fixture
def world(tmp_path: Path) -> tuple[list[str], Path]:
    data = small_app(tmp_path / "data")
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    assert run_casnap([*base, "commit"]).returncode == 0
    return base, tmp_path


def test_an_empty_data_dir_option_is_a_usage_error(world: tuple[list[str], Path]) -> None:
    base, _ = world
    one_line(run_casnap([base[0], base[1], "--data", "", "commit"]), 2, "--data is empty")


@pytest.mark.parametrize("variable", ["CASNAP_REPO", "CASNAP_DATA"])
def test_an_empty_repo_or_data_variable_is_a_usage_error(tmp_path: Path, variable: str) -> None:
    """`export CASNAP_REPO="$BACKUP_REPO"` with the variable unset committed into ./backups of
    the working dir (a repository made there, the real one left without the night's snapshot),
    and an empty CASNAP_DATA took ./data: an empty variable names no place, as an empty --repo
    or --data does not; the default is for a variable that is not set."""
    data = small_app(tmp_path / "cwd" / "data")
    cwd = data.parent
    env = casnap_env() | {"CASNAP_REPO": str(tmp_path / "repo"), "CASNAP_DATA": str(data)}
    env[variable] = ""
    proc = subprocess.run(
        casnap_command(["commit"], ""),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    one_line(proc, EXIT_CODES["usage"], f"{variable} is set but empty")
    assert sorted(p.name for p in cwd.iterdir()) == ["data"]
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(
    ("env", "args"),
    [
        ({"CASNAP_REPO": ""}, ["log", "--help"]),
        ({"CASNAP_DATA": ""}, ["commit", "-h"]),
        ({}, ["--repo", "ftp://host/x", "key", "list", "--help"]),
        ({}, ["--password-file", "f", "--password-command", "c", "checkout", "--help"]),
    ],
)
def test_a_bad_global_value_does_not_block_a_commands_help(
    tmp_path: Path, env: dict[str, str], args: list[str]
) -> None:
    """`casnap log --help` prints the help whatever CASNAP_REPO holds, as restic's does: the
    help reads no repository, and the bad value is said by the command that would use it."""
    proc = subprocess.run(
        casnap_command(args, ""),
        env=casnap_env() | env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: casnap "), proc.stdout
    assert proc.stderr == ""
    bad = subprocess.run(
        casnap_command([a for a in args if a not in ("--help", "-h")], ""),
        env=casnap_env() | env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert bad.returncode == EXIT_CODES["usage"], bad.stderr


@pytest.mark.parametrize("args", [[], ["key"], ["-q"], ["--repo=x"]])
def test_a_group_without_its_command_prints_its_help(args: list[str]) -> None:
    """`casnap` or `casnap key` alone printed the whole help folded into one error line, each
    newline written as a literal backslash-n: the help, readable, on stderr, exit 2 (usage)."""
    proc = run_casnap(args)
    assert proc.returncode == EXIT_CODES["usage"]
    assert proc.stdout == ""
    assert "\\n" not in proc.stderr
    lines = proc.stderr.splitlines()
    group = "casnap key" if args == ["key"] else "casnap"
    assert lines[0] == f"Usage: {group} [OPTIONS] COMMAND [ARGS]...", lines[0]
    assert "Commands:" in lines
    assert any(line.split()[:1] == ["list" if args == ["key"] else "commit"] for line in lines)


def test_an_empty_checkout_target_is_a_usage_error(world: tuple[list[str], Path]) -> None:
    """`checkout X --to "$RESTORE_DIR"` with the variable unset restored into the working dir:
    a full checkout, which removed every file there (saved first, but the working dir was
    never meant)."""
    base, tmp = world
    cwd = tmp / "cwd"
    cwd.mkdir()
    (cwd / "notes.txt").write_text("not data")
    proc = subprocess.run(
        casnap_command([*base, "checkout", "latest", "--to", "", "--no-smoke"], ""),
        env=casnap_env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    one_line(proc, EXIT_CODES["usage"], "--to is empty")
    assert [p.name for p in cwd.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    "args",
    [
        ["import", ""],
        ["checkout", "latest", "--to", "out", "--smoke-cmd", ""],
        ["verify", "--smoke-cmd", ""],
        ["key", "export", ""],
        ["key", "import", ""],
        ["key", "add", "--new-password-file", ""],
        ["import", "old", "--data-name", ""],
        ["prune", "--keep-within", "", "--keep-last", "1"],
    ],
    ids=[
        "import",
        "checkout-smoke-cmd",
        "verify-smoke-cmd",
        "key-export",
        "key-import",
        "key-add",
        "import-data-name",
        "prune-keep-within",
    ],
)
def test_an_empty_path_or_command_is_a_usage_error(
    world: tuple[list[str], Path], args: list[str]
) -> None:
    """`casnap import "$OLD"` with OLD unset imported every folder of the working dir as a copy
    of the data dir; `--smoke-cmd "$CHECK"` ran nothing and passed; `key export ""` and `key
    import ""` named the working dir. An empty one is refused, as `--to ""` is, before anything
    is read or written."""
    base, tmp = world
    cwd = tmp / "cwd"
    (cwd / "faiss_20250101").mkdir(parents=True)
    (cwd / "faiss_20250101" / "x.index").write_text("not a copy meant")
    before = sorted(p.name for p in (tmp / "repo" / "snapshots").iterdir())
    proc = subprocess.run(
        casnap_command([*base, *args], ""),
        env=casnap_env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    one_line(proc, EXIT_CODES["usage"], "is empty")
    assert sorted(p.name for p in (tmp / "repo" / "snapshots").iterdir()) == before
    assert [p.name for p in cwd.iterdir()] == ["faiss_20250101"]


@pytest.mark.parametrize(
    "args",
    [
        ["checkout", "", "--to", "out"],
        ["diff", "latest", ""],
        ["diff", ""],
        ["cat", "", "app.db"],
        ["ls", ""],
        ["show", ""],
        ["stats", ""],
        ["verify", ""],
        ["forget", ""],
        ["copy", "", "--to", "other"],
    ],
    ids=["checkout", "diff-b", "diff-a", "cat", "ls", "show", "stats", "verify", "forget", "copy"],
)
def test_an_empty_snapshot_argument_is_a_usage_error(
    world: tuple[list[str], Path], args: list[str]
) -> None:
    """`casnap checkout "$ID"` with ID unset said "no snapshot matches ''" (exit 4, the code of
    an id that is simply not there): an empty argument is a usage error, as an empty option is."""
    base, tmp = world
    proc = run_casnap([*base, *args])
    one_line(proc, EXIT_CODES["usage"], "is empty")
    assert not (tmp / "other").exists()


@pytest.mark.parametrize(
    "args", [["gc", "--max-unused", "nan"], ["verify", "--read-data-subset", "nan"]]
)
def test_nan_is_not_a_percentage(world: tuple[list[str], Path], args: list[str]) -> None:
    base, _ = world
    one_line(run_casnap([*base, *args]), EXIT_CODES["usage"], "not a finite number")


@pytest.mark.parametrize(
    "args",
    [
        ["gc", "--dry-run", "--max-unused", "10%", "--json"],
        ["verify", "--read-data-subset", "50%", "--json"],
    ],
)
def test_a_percentage_may_carry_its_sign(world: tuple[list[str], Path], args: list[str]) -> None:
    """restic takes `--read-data-subset 10%` and `--max-unused 5%`; so does casnap."""
    base, _ = world
    proc = run_casnap([*base, *args])
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out.get("max_unused", 10.0) == 10.0 and out.get("read_data", True)


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["restore", "latest"], "casnap checkout"),
        (["backup"], "casnap commit"),
        (["snapshots"], "casnap log"),
        (["dump", "latest", "app.db"], "casnap cat"),
        (["compact"], "casnap gc"),
        (["forget", "--keep-last", "3"], "casnap prune --keep-last"),
    ],
)
def test_a_restic_or_borg_habit_is_pointed_to_casnap_s_way(
    world: tuple[list[str], Path], args: list[str], hint: str
) -> None:
    """What restic and borg call these is a usage error that names casnap's command."""
    base, tmp = world
    one_line(run_casnap([*base, *args]), EXIT_CODES["usage"], re.escape(hint))
    assert len(list((tmp / "repo" / "snapshots").iterdir())) == 1


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["prune", "--keep-within-daily", "7d"], "prune's keep rules are --keep-last, "),
        (["forget", "--keep-secondly", "3"], "prune's keep rules are --keep-last, "),
        (["checkout", "latest", "--target", "x"], r"casnap checkout SNAPSHOT --to DIR"),
        (["prune", "--keep-last", "1", "--group-by", "host"], "groups by host, data dir and paths"),
        (["prune", "--keep-last", "1", "--prune"], "prune always runs gc afterwards"),
        (["commit", "--exclude-file", "x"], "give each pattern with --exclude GLOB"),
        (["commit", "--dry-run"], "`casnap diff latest` shows what a commit would store"),
        (["checkout", "latest", "--dry-run"], "`casnap diff SNAPSHOT` lists"),
        (["checkout", "latest", "--delete"], "a full checkout removes the files"),
        (["checkout", "latest", "--exclude", "x"], r"casnap checkout SNAPSHOT PATH\.\.\."),
        (["checkout", "latest", "--include", "app.db"], r"casnap checkout SNAPSHOT PATH\.\.\."),
    ],
)
def test_a_restic_option_casnap_lacks_is_not_pointed_to_another_missing_one(
    world: tuple[list[str], Path], args: list[str], hint: str
) -> None:
    """restic's --keep-within-daily was pointed to `casnap prune --keep-within-daily N`, which
    does not exist either, and restore's --target drew click's `Did you mean '--tag'?`."""
    base, _ = world
    line = one_line(run_casnap([*base, *args]), EXIT_CODES["usage"], hint)
    assert "Did you mean" not in line and f"prune {args[1]}" not in line


def test_max_unused_takes_restic_s_unlimited(world: tuple[list[str], Path]) -> None:
    """restic's `prune --max-unused unlimited` repacks nothing for unused space (only wholly
    unused packs go): casnap's 100; it was a usage error ("not a valid float range")."""
    base, _ = world
    proc = run_casnap([*base, "gc", "--dry-run", "--max-unused", "unlimited", "--json"])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["max_unused"] == 100.0
    proc = run_casnap([*base, "verify", "--read-data-subset", "unlimited"])
    one_line(proc, EXIT_CODES["usage"], "not a percentage")


@pytest.mark.parametrize("value", ["1/5", "ten"])
def test_a_subset_that_is_no_percentage_says_how_to_write_one(
    world: tuple[list[str], Path], value: str
) -> None:
    """restic's `--read-data-subset 1/5` drew click's "'1/5' is not a valid float range"."""
    base, _ = world
    line = one_line(
        run_casnap([*base, "verify", "--read-data-subset", value]), EXIT_CODES["usage"], value
    )
    assert "give a percentage such as 10 or 10%" in line and "float range" not in line


def test_restic_s_short_repo_option_names_the_repository(world: tuple[list[str], Path]) -> None:
    """`restic -r REPO snapshots` is the habit of every restic user; `casnap -r` was a usage
    error ("No such option '-r'")."""
    base, _ = world
    proc = run_casnap(["-r", base[1], "--data", base[3], "log", "--json"])
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == 1
    line = one_line(run_casnap([*base, "log", "-r", base[1]]), EXIT_CODES["usage"], "before")
    assert "casnap -r ... log" in line


@pytest.mark.parametrize("option", ["--repo", "--data", "--password-file", "--no-lock"])
def test_a_global_option_after_the_command_says_where_it_goes(
    world: tuple[list[str], Path], option: str
) -> None:
    """restic takes its global flags anywhere; casnap's go before the command, and says so
    (click alone suggested `--help` for `--repo`)."""
    base, _ = world
    args = ["log", option] if option == "--no-lock" else ["log", option, "x"]
    line = one_line(run_casnap([*base, *args]), EXIT_CODES["usage"], "before the command")
    assert f"casnap {option}" in line and "Did you mean" not in line


@pytest.mark.parametrize("value", ["abc", "inf", "nan"])
def test_a_wait_that_is_not_a_number_is_a_usage_error(
    world: tuple[list[str], Path], value: str
) -> None:
    base, tmp = world
    (tmp / "data" / "app.db").touch()  # the database is read again: the busy wait is set up
    for var in ("CASNAP_BUSY_TIMEOUT", "CASNAP_LOCK_WAIT"):
        proc = run_casnap([*base, "commit"], env=casnap_env(**{var: value}))
        one_line(proc, EXIT_CODES["usage"], var)


@pytest.mark.parametrize("tag", ["", "a,b", "bell\x07", " ", " nightly", "nightly "])
def test_a_tag_no_filter_could_select_is_refused(world: tuple[list[str], Path], tag: str) -> None:
    """Blanks at either end too: a filter strips them (`log --tag " nightly"` looks for
    nightly, `--tag " "` names no tag), so such a tag was stored and never selected."""
    base, tmp = world
    one_line(run_casnap([*base, "commit", "--tag", tag]), EXIT_CODES["usage"], "tag")
    assert len(list((tmp / "repo" / "snapshots").iterdir())) == 1


def test_no_lock_is_refused_for_commit(world: tuple[list[str], Path]) -> None:
    base, _ = world
    one_line(run_casnap(["--no-lock", *base, "commit"]), EXIT_CODES["usage"], "--no-lock")


def test_the_unreadable_hint_is_only_for_data(world: tuple[list[str], Path]) -> None:
    """A repository casnap may not write is not something --skip-unreadable would help with."""
    from tests.test_hostile import cli_unprivileged

    base, tmp = world
    repo_dir = tmp / "repo"
    (repo_dir / "locks").chmod(0o500)
    try:
        proc = cli_unprivileged(repo_dir, tmp / "data", "commit")
    finally:
        (repo_dir / "locks").chmod(0o700)
    one_line(proc, EXIT_CODES["storage"], "Permission denied")
    assert "skip-unreadable" not in proc.stderr


def test_verify_smoke_of_a_snapshot_that_does_not_restore_is_a_failed_check(
    world: tuple[list[str], Path],
) -> None:
    base, tmp = world
    repo = Repository.open(tmp / "repo")
    sid = commit(repo, tmp / "data").id
    pack = max((tmp / "repo" / "packs").rglob("*"), key=lambda p: p.stat().st_size)
    flip_byte(pack, pack.stat().st_size // 3)
    proc = run_casnap([*base, "verify", "--smoke", sid])
    assert proc.returncode == EXIT_CODES["check-failed"], proc.stderr


def test_a_hostile_manifest_is_named(world: tuple[list[str], Path]) -> None:
    from casnap.ids import hash_bytes
    from casnap.manifest import Snapshot, compress_manifest

    base, tmp = world
    repo = Repository.open(tmp / "repo")
    sid, snap = repo.snapshots()[0]
    d = json.loads(snap.encode())
    d["files"][0]["path"] = "../escape.txt"
    raw = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    bad = hash_bytes(raw).hex()
    (tmp / "repo" / "snapshots" / bad).write_bytes(compress_manifest(raw))
    # log reads no file list (docs/FORMAT.md): it lists the snapshot; gc, which reads them all,
    # refuses it, naming it
    assert bad[:8] in run_casnap([*base, "log"]).stdout
    line = one_line(run_casnap([*base, "gc"]), EXIT_CODES["integrity"], "unsafe path")
    assert bad in line
    assert Snapshot  # the type read back above
    os.unlink(tmp / "repo" / "snapshots" / bad)


def test_a_damaged_manifest_says_how_to_go_on(world: tuple[list[str], Path]) -> None:
    base, tmp = world
    bad = tmp / "repo" / "snapshots" / ("ab" * 32)
    bad.write_bytes(b"not a manifest")
    line = one_line(run_casnap([*base, "gc"]), EXIT_CODES["integrity"], "removes that snapshot")
    assert f"snapshots/{'ab' * 32}" in line and "casnap verify" in line
    assert "casnap forget abababab" in line
    listed = run_casnap([*base, "log"])  # deletes nothing: lists the others, and says why not it
    assert listed.returncode == 0, listed.stderr
    assert "casnap forget abababab" in listed.stderr and "casnap verify" in listed.stderr
    proc = run_casnap([*base, "verify"])
    assert proc.stdout.count(f"snapshots/{'ab' * 32}") == 1  # named once per problem line


def test_a_failed_safety_snapshot_names_the_option_that_skips_it(
    world: tuple[list[str], Path],
) -> None:
    from tests.test_hostile import cli_unprivileged

    base, tmp = world
    data = tmp / "data"
    (data / "notes.txt").write_text("no snapshot holds this")
    packs = tmp / "repo" / "packs"
    folders = [packs, *(p for p in packs.iterdir())]
    for p in folders:
        p.chmod(0o500)
    try:
        proc = cli_unprivileged(tmp / "repo", data, "checkout", "latest")
    finally:
        for p in folders:
            p.chmod(0o700)
    assert proc.returncode == EXIT_CODES["storage"], proc.stderr
    assert "--no-safety-snapshot" in proc.stderr


def test_the_api_exports_the_policy() -> None:
    import casnap

    assert casnap.Policy(last=1).last == 1


def test_output_reaches_a_pipe_whole_and_the_exit_code_is_the_command_s(tmp_path: Path) -> None:
    """The command line ends without the interpreter's teardown (cli.main.exit_now): output
    larger than a pipe holds still arrives whole, the restored files are there, and a failing
    command still ends with its own code and one line."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(1500):
        (data / f"note-with-a-long-name-to-make-the-listing-large-{i:05d}.txt").write_text(f"{i}\n")
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    assert run_casnap([*base, "commit"]).returncode == 0
    listing = run_casnap([*base, "ls", "latest", "--json"])
    assert listing.returncode == 0, listing.stderr
    assert len(listing.stdout) > 200_000  # past the pipe's 64 KiB and any stdout buffer
    assert len(json.loads(listing.stdout)["files"]) == 1500
    out = tmp_path / "out"
    done = run_casnap([*base, "checkout", "latest", "--to", str(out), "--no-smoke", "--json"])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["files_written"] == 1500
    assert (
        out / "note-with-a-long-name-to-make-the-listing-large-01499.txt"
    ).read_text() == "1499\n"
    missing = run_casnap([*base, "checkout", "deadbeef", "--to", str(tmp_path / "none")])
    one_line(missing, EXIT_CODES["not-found"], "deadbeef")
    closed = subprocess.run(  # started without a stdout at all: no output to flush, no traceback
        casnap_command([*base, "log"]),
        env=casnap_env(),
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.close(1),  # noqa: PLW1509 - the child only closes a descriptor
    )
    assert "Traceback" not in closed.stderr, closed.stderr


def test_commands_started_without_a_stderr_run_as_with_one(tmp_path: Path) -> None:
    """`casnap commit 2>&-` (cron jobs with closed descriptors): the progress bar asked the
    missing stderr whether it was a terminal and the command died (exit 70)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("hello\n")
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    for args in (["commit"], ["verify"], ["checkout", "latest", "--to", str(tmp_path / "out")]):
        done = subprocess.run(
            casnap_command([*base, *args]),
            env=casnap_env(),
            stdout=subprocess.PIPE,
            text=True,
            timeout=120,
            preexec_fn=lambda: os.close(2),  # noqa: PLW1509 - the child only closes a descriptor
        )
        assert done.returncode == 0, (args, done.stdout)
    assert (tmp_path / "out" / "notes.txt").read_text() == "hello\n"


def test_an_encrypted_repository_without_a_stdin_asks_for_a_password_source(
    tmp_path: Path,
) -> None:
    """`casnap log 0<&-` on an encrypted repository with no password given: one line naming the
    password sources (exit 10); the missing stdin was asked whether it was a terminal (exit 70)."""
    data = tmp_path / "data"
    data.mkdir()
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    env = casnap_env()
    made = subprocess.run(
        casnap_command([*base, "init", "--encryption", "repokey"]),
        env={**env, "CASNAP_PASSWORD": "pw"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    env.pop("CASNAP_PASSWORD", None)
    done = subprocess.run(
        casnap_command([*base, "log"]),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.close(0),  # noqa: PLW1509 - the child only closes a descriptor
    )
    assert done.returncode == EXIT_CODES["password"], done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (["checkout", "latest", "--to"], "casnap checkout"),
        (["prune", "--keep-daily"], "casnap prune"),
        (["commit", "-m"], "casnap commit"),
        (["key", "passwd", "--new-password-file"], "casnap key passwd"),
        (["-r"], "casnap"),
    ],
)
def test_an_option_missing_its_value_points_to_its_command_s_help(
    world: tuple[list[str], Path], args: list[str], where: str
) -> None:
    """`casnap checkout latest --to` said "Option '--to' requires an argument. (see 'casnap
    --help')": the top-level help, which does not describe --to, as a misspelt option of the
    command points to the command's."""
    base, _ = world
    line = one_line(run_casnap([*base, *args]), EXIT_CODES["usage"], "requires an argument")
    assert line.endswith(f"(see '{where} --help')"), line


def test_a_tag_named_twice_is_noted_once(world: tuple[list[str], Path]) -> None:
    """`forget t1 t1` printed its note that more snapshots carry the tag twice."""
    base, _ = world
    for _ in range(2):
        assert run_casnap([*base, "commit", "--tag", "t1", "--allow-empty"]).returncode == 0
    proc = run_casnap([*base, "forget", "t1", "t1"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("snapshots carry the tag t1") == 1, proc.stderr
