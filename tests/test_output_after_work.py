"""The commands that change a repository before they print (gc, prune, forget, copy, import,
key, init, repair-index, unlock, demo): a stdout closed from the start (`>&-`) or one whose write
fails (a full disk) fails them in one line that says what was already done, as it does for
commit and checkout."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from casnap.errors import EXIT_CODES, CheckFailed
from tests.helpers_reliability import ROOT, casnap_command, casnap_env, run_casnap

PW = "correct horse"
FULL = Path("/dev/full")


def _world(tmp_path: Path) -> tuple[list[str], Path]:
    """A plain repository with two snapshots of a small data dir, and an encrypted one."""
    data = tmp_path / "data"
    data.mkdir()
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    for i in range(2):
        (data / "notes.txt").write_text(f"version {i}\n" * 100)
        assert run_casnap([*base, "commit", "-q", "-m", f"v{i}"]).returncode == 0
    secret = ["--repo", str(tmp_path / "secret"), "--data", str(data)]
    done = run_casnap(
        [*secret, "init", "--encryption", "repokey"], env=casnap_env(CASNAP_PASSWORD=PW)
    )
    assert done.returncode == 0, done.stderr
    old = tmp_path / "old"
    old.mkdir()
    (old / "notes_20250101_120000.txt").write_text("old\n")
    return base, tmp_path


def _snapshots(repo: Path) -> list[str]:
    return sorted(p.name for p in (repo / "snapshots").iterdir())


# each command, and what the error line must end with once its work is done
CASES = {
    "gc": (["gc"], "gc is done: freed"),
    "prune": (["prune", "--keep-last", "1"], "1 snapshot(s) forgotten, gc is done: freed"),
    "forget": (["forget", "OLDEST"], "1 snapshot(s) forgotten"),
    "copy": (["copy", "--to", "TMP/copy"], "2 snapshot(s) copied into TMP/copy"),
    "import": (["import", "TMP/old"], "1 snapshot(s) imported"),
    "init": (["--repo", "TMP/fresh", "init", "--json"], "is created at TMP/fresh"),
    "key add": (["--repo", "TMP/secret", "key", "add", "--json"], "is added"),
    "key passwd": (["--repo", "TMP/secret", "key", "passwd", "--json"], "the password is changed"),
    "repair-index": (["repair-index", "--json"], "the index is rebuilt"),
    "unlock": (["unlock"], "1 lock(s) removed"),
    "demo": (["--data", "TMP/sample", "--repo", "TMP/demo", "demo", "--size-mb", "1"], "stored"),
}


def _args(case: str, tmp: Path, base: list[str]) -> tuple[list[str], str]:
    """The command line of a case and the phrase its error must hold, TMP and OLDEST filled in."""
    args, done = CASES[case]
    listed = json.loads(run_casnap([*base, "log", "--json"]).stdout)
    oldest = min(listed, key=lambda s: s["time"])["id"]

    def fill(text: str) -> str:
        return text.replace("TMP", str(tmp)).replace("OLDEST", oldest)

    return [*base, *(fill(a) for a in args)], fill(done)


def _run(args: list[str], how: str) -> subprocess.CompletedProcess[bytes]:
    env = casnap_env(CASNAP_PASSWORD=PW, CASNAP_NEW_PASSWORD=PW + " too")
    if how == "closed":
        return subprocess.run(
            casnap_command(args),
            env=env,
            cwd=ROOT,
            stderr=subprocess.PIPE,
            preexec_fn=lambda: os.close(1),  # noqa: PLW1509 - the child only closes a descriptor
            timeout=120,
        )
    with FULL.open("wb") as full:
        return subprocess.run(
            casnap_command(args),
            env=env,
            cwd=ROOT,
            stdout=full,
            stderr=subprocess.PIPE,
            timeout=120,
        )


@pytest.mark.skipif(not FULL.exists(), reason="no /dev/full")
@pytest.mark.parametrize("how", ["closed", "full"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_failed_output_says_the_work_is_done(tmp_path: Path, case: str, how: str) -> None:
    base, tmp = _world(tmp_path)
    args, done_phrase = _args(case, tmp, base)
    if case == "gc":  # something for gc to free
        forgot = run_casnap(_args("forget", tmp, base)[0])
        assert forgot.returncode == 0, forgot.stderr
    if case == "unlock":  # a lock file no casnap wrote, for unlock to remove
        (tmp / "repo" / "locks" / "0badc0de").write_text("not a lock\n")
    done = _run(args, how)
    expected = "usage" if how == "closed" else "storage"
    assert done.returncode == EXIT_CODES[expected], done.stderr
    lines = done.stderr.decode().splitlines()
    errors = [x for x in lines if x.startswith("casnap: error:")]
    assert errors == lines[-1:], lines
    start = "standard output is closed" if how == "closed" else "writing the output"
    assert errors[0].startswith(f"casnap: error: {start}"), errors
    assert done_phrase in errors[0].split("; ", 1)[-1], errors
    held = {"prune": ("repo", 1), "forget": ("repo", 1), "copy": ("copy", 2), "import": ("repo", 3)}
    if case in held:  # the work the line reports is done
        where, count = held[case]
        assert len(_snapshots(tmp / where)) == count
    assert not list((tmp / "repo" / "locks").iterdir())


@pytest.mark.parametrize("closed", [True, False])
def test_verify_of_a_damaged_repository_keeps_its_exit_code_when_the_report_cannot_be_written(
    tmp_path: Path, closed: bool
) -> None:
    """verify's exit code says whether the repository is whole: a stdout it cannot write its
    report to (closed, or a full disk) must not turn damage found into a usage error."""
    base, _ = _world(tmp_path)
    packs = [p for p in (tmp_path / "repo" / "packs").rglob("*") if p.is_file()]
    pack = max(packs, key=lambda p: p.stat().st_size)
    blob = bytearray(pack.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    pack.write_bytes(bytes(blob))
    args = [*base, "verify", "--read-data"]
    with FULL.open("wb") as full:
        done = subprocess.run(
            casnap_command(args),
            env=casnap_env(),
            cwd=ROOT,
            stdout=subprocess.DEVNULL if closed else full,
            stderr=subprocess.PIPE,
            preexec_fn=(lambda: os.close(1)) if closed else None,
            timeout=120,
        )
    err = done.stderr.decode()
    assert done.returncode == CheckFailed.exit_code == 9, err
    assert "verify:" in err and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("casnap: error: verify:"), err


@pytest.mark.parametrize("closed", [True, False])
def test_repair_index_that_finds_blobs_lost_keeps_its_exit_code_when_the_report_cannot_be_written(
    tmp_path: Path, closed: bool
) -> None:
    """repair-index exits 9 when blobs the snapshots need are in no pack, with --json too: a
    stdout it cannot write its report to must not turn that into a usage or disk error, and the
    line says the index was rebuilt all the same (as verify's keeps its exit code)."""
    base, _ = _world(tmp_path)
    packs = [p for p in (tmp_path / "repo" / "packs").rglob("*") if p.is_file()]
    max(packs, key=lambda p: p.stat().st_size).unlink()
    args = [*base, "repair-index", "--json"]
    with FULL.open("wb") as full:
        done = subprocess.run(
            casnap_command(args),
            env=casnap_env(),
            cwd=ROOT,
            stdout=subprocess.DEVNULL if closed else full,
            stderr=subprocess.PIPE,
            preexec_fn=(lambda: os.close(1)) if closed else None,
            timeout=120,
        )
    err = done.stderr.decode()
    assert done.returncode == CheckFailed.exit_code == 9, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("casnap: error: repair-index:") and "no intact pack" in last, err
    assert "the index is rebuilt" in last and "Traceback" not in err, err
