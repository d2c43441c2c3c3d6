"""Encrypted repositories end to end: every command, passwords, tampering, and no plaintext in
any stored byte."""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap import Repository
from casnap.cli import cli
from casnap.crypto import HEADER_SIZE, SALT_SIZE, is_sealed
from casnap.errors import EXIT_CODES, PasswordError
from casnap.ids import hash_bytes
from casnap.manifest import decompress_manifest
from tests.conftest import evolve_app, make_app
from tests.helpers_reliability import casnap_env
from tests.util import raw_tree, snapshot_tree

PW = "correct horse battery staple"
SECRET_NAME = "quarterly-secret-ledger.bin"
KEYS_LOCKS = ("keys/", "locks/")


def run(repo: Path, data: Path, *args: str, password: str | None = PW, **env: str):
    full_env = {"CASNAP_PASSWORD": password} if password is not None else {}
    full_env.update(env)
    for name in ("CASNAP_PASSWORD_FILE", "CASNAP_PASSWORD_COMMAND", "CASNAP_NEW_PASSWORD"):
        full_env.setdefault(name, None)  # type: ignore[arg-type]
    if password is None:
        full_env["CASNAP_PASSWORD"] = None  # type: ignore[assignment]
    result = CliRunner().invoke(
        cli, ["--repo", str(repo), "--data", str(data), *args], env=full_env
    )
    return result.exit_code, result.stdout, result.stderr


def stored_bytes(repo: Path) -> dict[str, bytes]:
    """Every byte of every file in the repository (nothing left out)."""
    return {p.relative_to(repo).as_posix(): p.read_bytes() for p in repo.rglob("*") if p.is_file()}


def common_blocks(secret: bytes, haystack: bytes) -> int:
    """How many 32-byte blocks of secret at offsets 0, 32, 64, ... occur in haystack: any
    64-byte window of secret found in haystack holds one of them."""
    blocks = {secret[i : i + 32] for i in range(0, len(secret) - 31, 32)}
    return sum(haystack[i : i + 32] in blocks for i in range(len(haystack) - 31))


@pytest.fixture
def secret_app(tmp_path: Path) -> tuple[Path, bytes]:
    data = tmp_path / "data"
    make_app(data, rows=120, vectors=200)
    secret = random.Random(7).randbytes(48 * 1024)
    (data / SECRET_NAME).write_bytes(secret)
    return data, secret


def test_three_commits_restore_and_leave_no_plaintext(
    secret_app: tuple[Path, bytes], tmp_path: Path
) -> None:
    data, secret = secret_app
    repo = tmp_path / "backups"
    code, _, err = run(repo, data, "init", "--encryption", "repokey")
    assert code == 0 and "encrypted" in err
    states, ids = [], []
    for step in range(3):
        if step:
            evolve_app(data, step)
            with open(data / SECRET_NAME, "ab") as f:
                f.write(random.Random(step).randbytes(4096))
        code, out, err = run(repo, data, "commit", "-m", f"msg-step-{step}", "--tag", "tagsecret")
        assert code == 0, err
        ids.append(out.strip())
        states.append(snapshot_tree(data))
    for sid, state in zip(ids, states, strict=True):
        target = tmp_path / f"out-{sid[:8]}"
        code, _, err = run(repo, data, "checkout", sid, "--to", str(target))
        assert code == 0, err
        assert snapshot_tree(target) == state
    everything = stored_bytes(repo)
    blob = b"".join(everything.values())
    final = (data / SECRET_NAME).read_bytes()
    assert common_blocks(final, blob) == 0
    plain_ids = [hash_bytes(final), hash_bytes(secret)]
    plain_ids += [hash_bytes(final[i : i + 4096]) for i in range(0, len(final), 4096)]
    for needle in [
        SECRET_NAME.encode(),
        b"msg-step-",
        b"tagsecret",
        b"shard_000",
        b"app.db",
        *[bytes(p) for p in plain_ids],
        *[p.hex().encode() for p in plain_ids],
    ]:
        assert needle not in blob, needle
        assert all(needle.decode("latin-1") not in name for name in everything)
    # every object but key files is sealed; key files hold no master key in the clear
    for name, body in everything.items():
        if not name.startswith("keys/"):
            assert is_sealed(body), name


def test_every_command_works_on_an_encrypted_repository(app: Path, tmp_path: Path) -> None:
    repo = tmp_path / "backups"
    code, first, err = run(repo, app, "commit", "-m", "one", "--tag", "a")
    assert code == 0, err
    assert "encrypted" in err  # commit's auto-init uses repokey when a password is set
    assert is_sealed((repo / "config").read_bytes())
    first = first.strip()
    evolve_app(app, 1)
    code, second, _ = run(repo, app, "commit", "-m", "two")
    second = second.strip()
    cases = [
        ("log", "--json"),
        ("show", first[:8]),
        ("diff", first[:8], second[:8]),
        ("ls", second[:8]),
        ("cat", second[:8], "app.db"),
        ("stats",),
        ("verify", "--read-data"),
        ("repair-index",),
        ("forget", first[:8]),
        ("gc",),
        ("prune", "--keep-last", "1"),
        ("verify", "--read-data"),
        ("unlock",),
    ]
    for args in cases:
        code, out, err = run(repo, app, *args)
        assert code == 0, (args, err)
    code, out, _ = run(repo, app, "log", "--json")
    assert [r["id"] for r in json.loads(out)] == [second]
    target = tmp_path / "restored"
    code, _, err = run(repo, app, "checkout", "latest", "--to", str(target))
    assert code == 0, err
    assert snapshot_tree(target) == snapshot_tree(app)


def test_wrong_and_missing_password_touch_nothing(app: Path, tmp_path: Path) -> None:
    repo = tmp_path / "backups"
    assert run(repo, app, "commit")[0] == 0
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    before = raw_tree(target)
    repo_before = raw_tree(repo)
    for password in ("wrong password", None):
        code, out, err = run(
            repo, app, "checkout", "latest", "--to", str(target), password=password
        )
        assert code == EXIT_CODES["password"] == 10
        assert out == "" and len(err.strip().splitlines()) == 1 and "password" in err
        assert "Traceback" not in err
        assert raw_tree(target) == before
    assert raw_tree(repo) == repo_before
    code, _, err = run(repo, app, "log", password=None)
    assert code == 10 and "--password-file" in err and "CASNAP_PASSWORD" in err
    with pytest.raises(PasswordError):
        Repository.open(repo)


def test_a_damaged_sealed_key_is_named_as_a_possible_cause(app: Path, tmp_path: Path) -> None:
    """A byte of the sealed key flipped fails exactly as a wrong password does (the AEAD tag
    cannot tell which): the line says the key file may be damaged and how to put it back."""
    repo = tmp_path / "backups"
    assert run(repo, app, "commit")[0] == 0
    (keyfile,) = (repo / "keys").iterdir()
    doc = json.loads(keyfile.read_text())
    sealed = bytearray(base64.b64decode(doc["sealed"]))
    sealed[3] ^= 0x01
    doc["sealed"] = base64.b64encode(bytes(sealed)).decode()
    keyfile.write_text(json.dumps(doc))
    code, out, err = run(repo, app, "log")
    assert code == EXIT_CODES["password"] == 10
    assert len(err.strip().splitlines()) == 1
    assert "wrong password" in err and "key file is damaged" in err and "key import" in err


def test_password_sources_in_order(app: Path, tmp_path: Path) -> None:
    repo = tmp_path / "backups"
    pwfile = tmp_path / "pw.txt"
    pwfile.write_text(PW + "\n")  # one trailing newline is not part of the password
    assert run(repo, app, "commit", password=None, CASNAP_PASSWORD_FILE=str(pwfile))[0] == 0
    assert run(repo, app, "log", password=None, CASNAP_PASSWORD_FILE=str(pwfile))[0] == 0
    code, _, _ = run(repo, app, "--password-file", str(pwfile), "log", password="wrong")
    assert code == 0  # --password-file comes before CASNAP_PASSWORD
    code, _, _ = run(repo, app, "log", password="wrong", CASNAP_PASSWORD_FILE=str(pwfile))
    assert code == 0  # the file comes before CASNAP_PASSWORD
    cmd = f"printf '%s' '{PW}'"
    cmd = f'sh -c "{cmd}"'
    assert run(repo, app, "log", password=None, CASNAP_PASSWORD_COMMAND=cmd)[0] == 0
    code, _, _ = run(repo, app, "--password-command", cmd, "log", password="wrong")
    assert code == 0  # a command comes before CASNAP_PASSWORD, as restic's does
    code, _, err = run(repo, app, "log", password=None, CASNAP_PASSWORD_COMMAND="false")
    assert code == 10 and "password command" in err
    assert "CASNAP_PASSWORD_COMMAND" in err  # a variable set long ago: named, so it is found
    code, _, err = run(repo, app, "log", password=None, CASNAP_PASSWORD_FILE=str(tmp_path / "no"))
    assert code == 10 and "password file" in err and "CASNAP_PASSWORD_FILE" in err
    code, _, err = run(repo, app, "--password-file", str(tmp_path / "no"), "log")
    assert code == 10 and "--password-file" in err
    other = tmp_path / "other"
    code, _, err = run(
        repo, app, "copy", "--to", str(other), CASNAP_TO_PASSWORD_FILE=str(tmp_path / "no")
    )
    assert code == 10 and "CASNAP_TO_PASSWORD_FILE" in err and str(other) in err, err


def test_a_password_command_that_hangs_is_stopped(app: Path, tmp_path: Path) -> None:
    """A password command that never ends (a pinentry with nobody there, a vault that does not
    answer) hung the command for ever: it is stopped, with what it started, after
    CASNAP_PASSWORD_TIMEOUT seconds, one line naming it, exit 10 as for a command that fails."""
    repo = tmp_path / "backups"
    assert run(repo, app, "init", "--encryption", "repokey")[0] == 0
    pid = tmp_path / "pid"
    command = f"sh -c 'echo $$ > {pid}; sleep 600 & wait'"
    env = casnap_env(CASNAP_PASSWORD_COMMAND=command, CASNAP_PASSWORD_TIMEOUT="1")
    done = subprocess.run(
        [sys.executable, "-m", "casnap", "--repo", str(repo), "log"],
        env={k: v for k, v in env.items() if k != "CASNAP_PASSWORD"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == EXIT_CODES["password"], done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "gave no password within 1 s" in done.stderr and "CASNAP_PASSWORD_TIMEOUT" in done.stderr
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid.read_text()), 0)
    bad = subprocess.run(
        [sys.executable, "-m", "casnap", "--repo", str(repo), "log"],
        env=env | {"CASNAP_PASSWORD_TIMEOUT": "soon"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == EXIT_CODES["usage"] and "CASNAP_PASSWORD_TIMEOUT" in bad.stderr


def test_a_password_timeout_past_what_select_takes_waits_for_the_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A CASNAP_PASSWORD_TIMEOUT of 1e10 s (no limit in practice) was passed to select() whole,
    which takes no wait past the platform's time_t: an internal error (exit 70), no password
    read. The command's password is read as under any other limit."""
    from casnap.cli.passwords import run_password_command

    for limit in ("1e10", "1e300"):
        monkeypatch.setenv("CASNAP_PASSWORD_TIMEOUT", limit)
        assert run_password_command("echo s3cret") == "s3cret"


def test_a_password_command_whose_output_a_started_process_holds_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A password command that prints the password and ends, leaving a process it started
    with its output (an agent it launched), was stopped past CASNAP_PASSWORD_TIMEOUT as one
    that 'gave no password': the line now says that the command ended and what held its
    output open, and how to start such a process."""
    from casnap.cli.passwords import run_password_command

    pid = tmp_path / "pid"
    monkeypatch.setenv("CASNAP_PASSWORD_TIMEOUT", "1")
    try:
        with pytest.raises(PasswordError) as caught:
            run_password_command(f"sh -c 'echo s3cret; sleep 600 & echo $! > {pid}'")
    finally:
        if pid.exists():
            os.kill(int(pid.read_text()), 9)
    said = str(caught.value)
    assert "ended" in said and "held its output open" in said and "gave no password" not in said


def test_a_password_option_beats_every_password_variable(app: Path, tmp_path: Path) -> None:
    """CASNAP_PASSWORD_FILE was taken before an explicit --password-command (exit 10, the
    option silently ignored), and --password-file with --password-command was accepted, the
    command ignored. An option given beats every variable; both options are refused."""
    repo = tmp_path / "backups"
    assert run(repo, app, "commit", "-q")[0] == 0
    good, wrong = tmp_path / "good.txt", tmp_path / "wrong.txt"
    good.write_text(PW)
    wrong.write_text("wrong")
    good_cmd = f"cat {good}"
    wrong_cmd = f"cat {wrong}"
    for args, env in [
        (["--password-command", good_cmd], {"CASNAP_PASSWORD_FILE": str(wrong)}),
        (["--password-command", good_cmd], {"CASNAP_PASSWORD_COMMAND": wrong_cmd}),
        (["--password-file", str(good)], {"CASNAP_PASSWORD_COMMAND": wrong_cmd}),
        (["--password-file", str(good)], {"CASNAP_PASSWORD_FILE": str(wrong)}),
    ]:
        code, out, err = run(repo, app, *args, "log", password="wrong", **env)
        assert code == 0, (args, env, err)
    # among the variables alone: the file, then the command, then the password itself
    env = {"CASNAP_PASSWORD_FILE": str(good), "CASNAP_PASSWORD_COMMAND": wrong_cmd}
    assert run(repo, app, "log", password="wrong", **env)[0] == 0
    env = {"CASNAP_PASSWORD_COMMAND": good_cmd}
    assert run(repo, app, "log", password="wrong", **env)[0] == 0
    both = ["--password-file", str(good), "--password-command", good_cmd]
    for password in (PW, None):
        code, out, err = run(repo, app, *both, "log", password=password)
        assert code == 2 and out == "", err
        assert len(err.strip().splitlines()) == 1, err
        assert "--password-file" in err and "--password-command" in err, err
    plain = tmp_path / "plain"  # refused before any repository is looked at
    code, _, err = run(plain, app, *both, "commit", password=None)
    assert code == 2 and not plain.exists(), err
    # an empty value (an unset variable) is given all the same: both refused, one alone said
    for empty in (["--password-file", str(good), "--password-command", ""],
                  ["--password-file", "", "--password-command", good_cmd]):  # fmt: skip
        code, out, err = run(repo, app, *empty, "log", password=None)
        assert code == 2 and out == "" and "both given" in err, (empty, err)
    for option in ("--password-file", "--password-command"):
        code, out, err = run(repo, app, option, "", "log", password=PW)
        assert code == 2 and out == "", err
        (line,) = err.strip().splitlines()
        assert line.startswith(f"casnap: error: {option} is empty: give a password source"), err


def test_a_password_command_that_prints_without_end_is_stopped(app: Path, tmp_path: Path) -> None:
    """A password file is read up to 4096 bytes; a password command's output was read whole, so
    a command that prints without end (`yes`, `cat /dev/zero`) made casnap hold gigabytes
    until it was killed. Past 4096 bytes the command is stopped and the command named."""
    repo = tmp_path / "backups"
    assert run(repo, app, "commit", "-q")[0] == 0
    big = f"{sys.executable} -c \"print('x' * (1 << 20))\""
    code, out, err = run(repo, app, "log", password=None, CASNAP_PASSWORD_COMMAND=big)
    assert code == 10 and out == ""
    assert "password command" in err and "4096 bytes" in err
    endless = subprocess.run(  # never ends by itself: without the limit this waits for ever
        [sys.executable, "-m", "casnap", "--repo", str(repo), "--password-command", "yes", "log"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("CASNAP_PASSWORD")},
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert endless.returncode == 10 and "4096 bytes" in endless.stderr


def test_key_passwd_add_remove_export_import(app: Path, tmp_path: Path) -> None:
    repo = tmp_path / "backups"
    assert run(repo, app, "commit")[0] == 0
    data_files = {
        k: v for k, v in stored_bytes(repo).items() if not k.startswith(("keys/", "locks/"))
    }
    code, _, err = run(repo, app, "key", "passwd", CASNAP_NEW_PASSWORD="second")
    assert code == 0, err
    assert run(repo, app, "log")[0] == 10  # the old password no longer opens it
    target = tmp_path / "out"
    code, _, err = run(repo, app, "checkout", "latest", "--to", str(target), password="second")
    assert code == 0, err
    assert snapshot_tree(target) == snapshot_tree(app)
    after = {k: v for k, v in stored_bytes(repo).items() if not k.startswith(KEYS_LOCKS)}
    assert after == data_files  # a new password rewrites only the key file
    code, out, _ = run(
        repo, app, "key", "add", "--json", password="second", CASNAP_NEW_PASSWORD="third"
    )
    added = json.loads(out)["added"]
    assert run(repo, app, "log", password="third")[0] == 0
    code, out, _ = run(repo, app, "key", "list", "--json", password="third")
    listed = json.loads(out)
    assert len(listed) == 2 and [k["current"] for k in listed if k["id"] == added] == [True]
    code, _, err = run(repo, app, "key", "remove", added[:8], password="third")
    assert code == 2 and "key passwd" in err  # never the key in use
    export = tmp_path / "key.json"
    assert run(repo, app, "key", "export", str(export), password="second")[0] == 0
    assert export.stat().st_mode & 0o777 == 0o600
    assert run(repo, app, "key", "export", str(export), password="second")[0] == 2  # no overwrite
    shutil.rmtree(repo / "keys")
    assert run(repo, app, "log", password="second")[0] == 10
    code, _, err = run(repo, app, "key", "import", str(export), password="third")
    assert code == 10  # the export opens only with its own password
    code, _, err = run(repo, app, "key", "import", str(export), password="second")
    assert code == 0, err
    assert run(repo, app, "log", password="second")[0] == 0
    other = tmp_path / "other"
    assert run(other, app, "commit", password="second")[0] == 0
    code, _, err = run(other, app, "key", "import", str(export), password="second")
    assert code == 10 and "not a key of repository" in err


def _packs(repo: Path) -> list[Path]:
    return sorted(p for p in (repo / "packs").rglob("*") if p.is_file())


def test_a_flipped_byte_fails_checkout_and_verify(app: Path, tmp_path: Path) -> None:
    repo = tmp_path / "backups"
    assert run(repo, app, "commit")[0] == 0
    pack = max(_packs(repo), key=lambda p: p.stat().st_size)
    raw = bytearray(pack.read_bytes())
    raw[HEADER_SIZE + 100] ^= 1
    pack.write_bytes(bytes(raw))
    target = tmp_path / "out"
    code, _, err = run(repo, app, "checkout", "latest", "--to", str(target))
    assert code == EXIT_CODES["integrity"] and "authentication" in err, err
    assert not target.exists()
    code, out, err = run(repo, app, "verify", "--read-data")
    assert code == EXIT_CODES["check-failed"], err
    assert "authentication" in out + err


def test_swapped_packs_and_replayed_manifest_are_detected(app: Path, tmp_path: Path) -> None:
    repo = tmp_path / "backups"
    for step in range(2):
        evolve_app(app, step + 1)
        assert run(repo, app, "commit")[0] == 0
    packs = _packs(repo)
    assert len(packs) >= 2
    a, b = packs[0], packs[1]
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    code, out, err = run(repo, app, "verify", "--read-data")
    assert code == EXIT_CODES["check-failed"] and "authentication" in out + err
    a.write_bytes(da)
    b.write_bytes(db)
    assert run(repo, app, "verify", "--read-data")[0] == 0
    snaps = sorted((repo / "snapshots").iterdir())
    replay = repo / "snapshots" / ("f" * 64)
    replay.write_bytes(snaps[0].read_bytes())
    code, _, err = run(repo, app, "gc")
    assert code == EXIT_CODES["integrity"] and "ffffffff" in err
    code, out, err = run(repo, app, "log")  # deletes nothing: lists the others, names it
    assert code == 0 and "ffffffff left out" in err and "ffffffff" not in out
    replay.unlink()
    old = snaps[0].read_bytes()
    snaps[0].write_bytes(snaps[1].read_bytes())  # one manifest's bytes under the other's name
    code, _, err = run(repo, app, "gc")
    assert code == EXIT_CODES["integrity"], err
    code, _, err = run(repo, app, "log")
    assert code == 0 and f"{snaps[0].name[:8]} left out" in err, err
    snaps[0].write_bytes(old)
    assert run(repo, app, "log")[0] == 0


def test_unknown_scheme_and_a_plain_config_beside_keys(app: Path, tmp_path: Path) -> None:
    repo = tmp_path / "backups"
    assert run(repo, app, "commit")[0] == 0
    config = repo / "config"
    sealed = config.read_bytes()
    raw = bytearray(sealed)
    raw[7] = 99  # the scheme byte
    config.write_bytes(bytes(raw))
    code, _, err = run(repo, app, "log")
    assert code == EXIT_CODES["repository"] and "scheme 99" in err
    plain = tmp_path / "plain"
    assert run(plain, app, "commit", password=None)[0] == 0
    config.write_bytes((plain / "config").read_bytes())  # a downgrade: a plain config
    code, _, err = run(repo, app, "log")
    assert code == EXIT_CODES["integrity"] and "tampered" in err
    config.write_bytes(sealed)
    assert run(repo, app, "log")[0] == 0


def test_salts_never_repeat_across_objects_and_concurrent_writers(tmp_path: Path) -> None:
    """Nonces are segment numbers under a per-object key drawn from a random salt: they repeat
    only if a salt does. Two commits run at once into one repository."""
    import subprocess
    import sys

    repo = tmp_path / "backups"
    datas = []
    for n in range(2):
        d = tmp_path / f"data{n}"
        make_app(d, seed=n, rows=60, vectors=120)
        (d / "noise.bin").write_bytes(os.urandom(300_000))
        datas.append(d)
    env = dict(os.environ, CASNAP_PASSWORD=PW)
    assert run(repo, datas[0], "init", "--encryption", "repokey")[0] == 0
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "casnap", "--repo", str(repo), "--data", str(d), "commit", "-q"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for d in datas
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    salts = []
    for name, body in stored_bytes(repo).items():
        if name.startswith("keys/"):
            continue
        assert is_sealed(body)
        salts.append(body[8 : 8 + SALT_SIZE])
    assert len(salts) >= 6 and len(set(salts)) == len(salts)
    assert len(json.loads(run(repo, datas[0], "log", "--json")[1])) == 2


def test_plain_repositories_keep_plain_ids(app: Path, tmp_path: Path) -> None:
    """--encryption none (the default) stores what it always did: a plain config, objects named
    by the plain BLAKE3 of what they hold."""
    repo = tmp_path / "plain"
    assert run(repo, app, "init", password=None)[0] == 0
    assert run(repo, app, "commit", password=None)[0] == 0
    assert (repo / "config").read_bytes().startswith(b"{")
    assert not (repo / "keys").exists()
    for pack in _packs(repo):
        assert hash_bytes(pack.read_bytes()).hex() == pack.name
    for snap in (repo / "snapshots").iterdir():
        assert hash_bytes(decompress_manifest(snap.read_bytes(), snap.name)).hex() == snap.name
    assert not Repository.open(repo).encrypted
    enc = tmp_path / "enc"
    assert run(enc, app, "commit")[0] == 0
    opened = Repository.open(enc, lambda: PW)
    for pack in _packs(enc):  # named by the keyed hash of the plaintext pack
        plain = opened.backend.get(f"packs/{pack.parent.name}/{pack.name}")
        assert hash_bytes(plain).hex() != pack.name == opened.ids(plain).hex()


def test_a_lock_that_fails_to_open_counts_as_held(app: Path, tmp_path: Path) -> None:
    """A lock file that does not open (damaged, or planted without the key) is a lock of an
    unknown holder, as a damaged plain lock is: gc waits for it, `unlock` removes it."""
    repo = tmp_path / "backups"
    assert run(repo, app, "commit")[0] == 0
    (repo / "locks").mkdir(exist_ok=True)
    (repo / "locks" / "planted").write_bytes(b'{"host": "x", "pid": 1, "exclusive": true}')
    code, _, err = run(repo, app, "gc", CASNAP_LOCK_WAIT="0")
    assert code == EXIT_CODES["locked"] and "cannot be read" in err, err
    code, out, err = run(repo, app, "unlock")
    assert code == 0 and "planted" in out, err
    assert run(repo, app, "gc")[0] == 0
