"""Key files and passwords under attack: unusable or costly planted key files, odd passwords."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from casnap import Repository
from casnap.crypto import MasterKey
from casnap.errors import EXIT_CODES, PasswordError
from casnap.keys import Kdf, make_key_file
from tests.conftest import make_app
from tests.test_encryption import PW, run


@pytest.fixture
def enc_repo(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    make_app(data, rows=40, vectors=80)
    repo = tmp_path / "backups"
    assert run(repo, data, "commit", "-q")[0] == 0
    return repo, data


def _plant(repo: Path, name: str, body: bytes) -> None:
    (repo / "keys" / name).write_bytes(body)


def _planted_key(memory_kib: int, iterations: int, created: str = "0000") -> tuple[str, bytes]:
    kf = make_key_file(MasterKey.generate(), "attacker", created, Kdf(os.urandom(16), 8, 1, 1))
    doc = json.loads(kf.encode())
    doc["kdf"].update(memory_kib=memory_kib, iterations=iterations)
    return kf.id, json.dumps(doc).encode()


def test_unusable_key_files_are_passed_over_listed_and_removable(
    enc_repo: tuple[Path, Path],
) -> None:
    repo, data = enc_repo
    real = json.loads((next((repo / "keys").iterdir())).read_text())
    planted = {
        "a" * 32: b'{"casnap_key": 2}',
        "b" * 32: json.dumps(real | {"kdf": real["kdf"] | {"name": "scrypt"}}).encode(),
        "c" * 32: json.dumps(real | {"kdf": real["kdf"] | {"memory_kib": "INF"}})
        .replace('"INF"', "1e400")
        .encode(),
        "d" * 32: b"garbage",
    }
    for name, body in planted.items():
        _plant(repo, name, body)
    code, _, err = run(repo, data, "log")
    assert code == 0, err
    code, out, err = run(repo, data, "key", "list", "--json")
    assert code == 0, err
    listed = {k["id"]: k for k in json.loads(out)}
    for name in planted:
        assert listed[name]["kdf"].startswith("unusable"), listed[name]
    code, _, err = run(repo, data, "key", "remove", "dddd")
    assert code == 0, err
    assert not (repo / "keys" / ("d" * 32)).exists()


def test_costly_or_many_planted_keys_do_not_lock_the_real_one_out(
    enc_repo: tuple[Path, Path],
) -> None:
    repo, data = enc_repo
    name, body = _planted_key(1 << 20, 16)  # the most a key file may ask for: ~1 min to try
    _plant(repo, name, body)
    for _ in range(40):  # cheap ones, dated before the real one
        name, body = _planted_key(8, 1)
        _plant(repo, name, body)
    env = dict(os.environ, CASNAP_PASSWORD=PW)
    done = subprocess.run(
        [sys.executable, "-m", "casnap", "--repo", str(repo), "--data", str(data), "log"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_odd_passwords(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_app(data, rows=40, vectors=80)
    repo = tmp_path / "r"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASNAP_PASSWORD")}
    argv = [sys.executable, "-m", "casnap", "--repo", str(repo), "--data", str(data)]
    raw_env = {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
    raw_env[b"CASNAP_PASSWORD"] = b"\xff\xfe not utf-8"
    for args in (["commit", "-q"], ["log"]):
        done = subprocess.run([*argv, *args], env=raw_env, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr
    done = subprocess.run(
        [*argv, "--password-file", "/dev/zero", "log"], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 10 and b"more than" in done.stderr
    with pytest.raises(PasswordError):
        Repository.init(tmp_path / "empty", password="")
    made = Repository.init(tmp_path / "text", password="plain string")  # a str, not a function
    assert made.encrypted
    assert Repository.open(tmp_path / "text", password=lambda: b"plain string").encrypted  # type: ignore[arg-type,return-value]


def test_init_says_when_a_password_is_set_but_nothing_is_encrypted(tmp_path: Path) -> None:
    code, _, err = run(tmp_path / "r", tmp_path, "init")
    assert code == 0 and "not encrypted" in err


def test_an_interrupted_encrypted_init_is_named(enc_repo: tuple[Path, Path]) -> None:
    repo, data = enc_repo
    (repo / "config").unlink()
    for sub in ("packs", "index", "snapshots", "locks"):
        for p in sorted((repo / sub).rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        (repo / sub).rmdir()
    code, _, err = run(repo, data, "log")
    assert code == 3 and "key files but no config" in err


def test_an_empty_keys_folder_an_init_left_is_taken_over_once_old(tmp_path: Path) -> None:
    """An encrypted init stopped after it made keys/ and before its key file was in (a full
    disk, a kill) leaves keys/ empty. Once older than INIT_WAIT_SECONDS no init is under way
    there: an init, and a first commit, make the repository in that folder. Every init refused
    it for ever as "an init is under way ... try again in a few seconds"."""
    from casnap.constants import INIT_WAIT_SECONDS

    data = tmp_path / "data"
    make_app(data, rows=40, vectors=80)
    old = time.time() - INIT_WAIT_SECONDS - 5
    for name, command in (("inited", ["init", "--encryption", "repokey"]), ("repo", ["commit"])):
        repo = tmp_path / name
        (repo / "keys").mkdir(parents=True, mode=0o700)
        os.utime(repo / "keys", (old, old))
        code, _, err = run(repo, data, *command)
        assert code == 0, err
        assert run(repo, data, "log")[0] == 0
        assert len(list((repo / "keys").iterdir())) == 1


def test_a_fresh_empty_keys_folder_is_an_init_under_way(tmp_path: Path) -> None:
    """keys/ just made, still empty: another init may be about to write its key file."""
    repo = tmp_path / "repo"
    (repo / "keys").mkdir(parents=True, mode=0o700)
    code, _, err = run(repo, tmp_path, "init", "--encryption", "repokey")
    assert code == EXIT_CODES["repository"] and "init is under way" in err, err
    assert not any((repo / "keys").iterdir())


def test_key_list_and_export_take_no_lock(enc_repo: tuple[Path, Path], tmp_path: Path) -> None:
    """So they work on a read-only copy: a lock held exclusively by another host does not
    stop them."""
    repo, data = enc_repo
    assert run(repo, data, "key", "list")[0] == 0
    assert run(repo, data, "key", "export", str(tmp_path / "k.json"))[0] == 0
    assert not any((repo / "locks").iterdir())


def test_key_list_and_export_take_no_lock_option(
    enc_repo: tuple[Path, Path], tmp_path: Path
) -> None:
    """They only read key files, as restic's `key list` does under --no-lock: the option is
    taken, not refused as for a command that writes; `key add` still refuses it."""
    repo, data = enc_repo
    code, out, err = run(repo, data, "--no-lock", "key", "list")
    assert code == 0 and out.startswith("*"), err
    code, _, err = run(repo, data, "--no-lock", "key", "export", str(tmp_path / "k.json"))
    assert code == 0, err
    code, _, err = run(repo, data, "--no-lock", "key", "add")
    assert code == EXIT_CODES["usage"] and "--no-lock" in err, err
    assert not any((repo / "locks").iterdir())


def test_key_add_and_passwd_on_a_plain_repository_say_so_before_asking(tmp_path: Path) -> None:
    """A plain repository has no keys: `key add` and `key passwd` say that (usage, exit 2) rather
    than ask for a new password first (which, without one, was an exit-10 password error), and
    how to have an encrypted copy (it said nothing of what to do next)."""
    repo = tmp_path / "plain"
    assert run(repo, tmp_path, "init", password=None)[0] == 0
    for command in (["key", "add"], ["key", "passwd"]):
        code, _, err = run(repo, tmp_path, *command, password=None)
        assert code == EXIT_CODES["usage"], err
        assert err.strip() == (
            f"casnap: error: repository {repo} is not encrypted: it has no keys; `casnap copy "
            "--to NEW --to-encryption repokey` copies its snapshots into a new encrypted one"
        )
    assert not (repo / "keys").exists()


@pytest.mark.parametrize("name", ["config", "index/key.json", "snapshots/key.json", "key.json"])
def test_a_key_export_into_the_repository_is_refused(
    enc_repo: tuple[Path, Path], name: str
) -> None:
    """`key export backups/config --force` replaced the repository's config with the export
    (every command then refused it as tampered with); an export under index/ or snapshots/
    was taken for one of the repository's objects. The export belongs apart from it."""
    repo, data = enc_repo
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file() and "locks" not in p.parts}
    code, _, err = run(repo, data, "key", "export", str(repo / name), "--force")
    assert code == EXIT_CODES["usage"], err
    assert len(err.strip().splitlines()) == 1 and "inside the repository" in err, err
    after = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file() and "locks" not in p.parts}
    assert after == before
    assert run(repo, data, "verify")[0] == 0


def test_a_planted_huge_key_file_is_passed_over_unread(enc_repo: tuple[Path, Path]) -> None:
    """A key file is a few hundred bytes, but every one listed was read whole: a 1 GB file
    planted in keys/ made every command of the repository take over a gigabyte (a larger one
    had it killed for memory). One past the key-file limit is passed over unread and listed as
    unusable, as a damaged one is."""
    from tests.helpers_memory import MB, run_measured

    repo, data = enc_repo
    huge = repo / "keys" / ("e" * 32)
    with open(huge, "wb") as f:
        f.truncate(1000 * MB)  # sparse: no disk needed
    pw = repo.parent / "pw.txt"
    pw.write_text(PW)
    args = ["--repo", str(repo), "--data", str(data), "--password-file", str(pw), "log"]
    proc, peak = run_measured(args)
    assert proc.returncode == 0, proc.stderr
    assert peak < 300 * MB, f"log peaked at {peak / MB:.0f} MB"
    code, out, err = run(repo, data, "key", "list", "--json")
    assert code == 0, err
    listed = {k["id"]: k for k in json.loads(out)}
    assert listed["e" * 32]["kdf"].startswith("unusable"), listed["e" * 32]
    code, _, err = run(repo, data, "key", "import", "/dev/zero")  # read up to the limit only
    assert code == EXIT_CODES["integrity"] and "not a casnap key export" in err, err


def test_a_key_export_onto_a_symbolic_link_is_refused_as_onto_a_file(
    enc_repo: tuple[Path, Path], tmp_path: Path
) -> None:
    """`key export FILE` where FILE was a dangling symbolic link replaced the link with the
    export (a link to a file that exists was refused, as any existing FILE is). A link, dangling
    or not, is refused the same way, and --force replaces the link itself, never writing
    through it."""
    repo, data = enc_repo
    dangling = tmp_path / "dangling.json"
    pointed = tmp_path / "elsewhere" / "key.json"
    dangling.symlink_to(pointed)
    code, _, err = run(repo, data, "key", "export", str(dangling))
    assert code == EXIT_CODES["usage"], err
    assert len(err.strip().splitlines()) == 1 and "symbolic link" in err and "--force" in err, err
    assert dangling.is_symlink() and os.readlink(dangling) == str(pointed)
    assert not pointed.parent.exists()
    live = tmp_path / "live.json"
    kept = tmp_path / "kept.txt"
    kept.write_text("someone's file\n")
    live.symlink_to(kept)
    code, _, err = run(repo, data, "key", "export", str(live))
    assert code == EXIT_CODES["usage"] and "symbolic link" in err, err
    assert live.is_symlink() and kept.read_text() == "someone's file\n"
    for link in (dangling, live):
        code, _, err = run(repo, data, "key", "export", str(link), "--force")
        assert code == 0, err
        assert not link.is_symlink() and json.loads(link.read_text())["repository"]
    assert kept.read_text() == "someone's file\n" and not pointed.parent.exists()


def test_a_key_export_never_replaces_a_special_file_even_with_force(
    enc_repo: tuple[Path, Path], tmp_path: Path
) -> None:
    """`key export /dev/full --force`, run as root to see a write to a full disk fail, renamed
    the export over the device node: --force replaced whatever stood at FILE. It replaces a
    file or a symbolic link; a FIFO, a socket or a device is refused, --force or not, and left
    in place (no temp file either)."""
    repo, data = enc_repo
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    for force in ([], ["--force"]):
        code, _, err = run(repo, data, "key", "export", str(fifo), *force)
        assert code == EXIT_CODES["usage"], err
        assert len(err.strip().splitlines()) == 1 and "not a regular file" in err, err
        assert fifo.exists() and not fifo.is_file() and fifo.lstat().st_mode & 0o170000 == 0o010000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".casnap-tmp-")]


def test_a_key_export_onto_a_folder_says_so_without_offering_force(
    enc_repo: tuple[Path, Path], tmp_path: Path
) -> None:
    """`key export DIR` said 'DIR exists; not overwriting it (give --force to replace it)', and
    with --force, that DIR is a directory: a folder is never replaced, so both say that."""
    repo, data = enc_repo
    folder = tmp_path / "keys-out"
    folder.mkdir()
    (folder / "kept.txt").write_text("kept")
    for force in ([], ["--force"]):
        code, _, err = run(repo, data, "key", "export", str(folder), *force)
        assert code == EXIT_CODES["usage"], err
        assert "is a directory" in err and "--force" not in err, err
    assert (folder / "kept.txt").read_text() == "kept"


@pytest.mark.parametrize("body", [b"garbage{", b'{"casnap_key": 1}'], ids=["not-json", "no-fields"])
def test_a_key_file_that_does_not_parse_is_one_clear_line(
    enc_repo: tuple[Path, Path], body: bytes
) -> None:
    """The repository's only key file damaged past parsing: the line said "wrong password",
    that an unusable key file was passed over, and that the key file might be damaged, all at
    once, though the password was never tried. It now says which key file cannot be used and
    why, that the password was not tried, and how to put the key back."""
    repo, data = enc_repo
    (keyfile,) = (repo / "keys").iterdir()
    keyfile.write_bytes(body)
    code, out, err = run(repo, data, "log")
    assert code == EXIT_CODES["password"], err
    (line,) = err.splitlines()
    assert "wrong password" not in line and "passed over" not in line, line
    assert f"key file {keyfile.name[:8]}" in line and "damaged" in line, line
    assert "password was not tried" in line and "`casnap key import FILE`" in line, line
    assert out == ""


def test_key_export_and_import_on_a_plain_repository_are_the_same_usage_error(
    enc_repo: tuple[Path, Path], tmp_path: Path
) -> None:
    """`key export` on a plain repository exited 2 (usage, as every other key command there)
    and `key import` 3 ("not a casnap repository", which it is). Both are asked of a repository
    that has no keys: exit 2, with the same line."""
    repo, data = enc_repo
    exported = tmp_path / "k.json"
    assert run(repo, data, "key", "export", str(exported))[0] == 0
    plain = tmp_path / "plain"
    assert run(plain, data, "init", password=None)[0] == 0
    lines = []
    for command in (["export", str(tmp_path / "out.json")], ["import", str(exported)]):
        code, _, err = run(plain, data, "key", *command, password=None)
        assert code == EXIT_CODES["usage"], (command, err)
        (line,) = err.splitlines()
        lines.append(line)
    said = (
        f"casnap: error: repository {plain} is not encrypted: it has no keys; `casnap copy "
        "--to NEW --to-encryption repokey` copies its snapshots into a new encrypted one"
    )
    assert lines == [said, said]
    assert not (plain / "keys").exists() and not (tmp_path / "out.json").exists()


FULL_INIT = r"""
import json, os, subprocess, sys
from pathlib import Path
small = Path(sys.argv[1])
fd = os.open(small / "filler", os.O_WRONLY | os.O_CREAT)
try:  # every block of the filesystem taken
    while os.write(fd, b"x" * 4096):
        pass
except OSError:
    pass
os.close(fd)
env = dict(os.environ, CASNAP_PASSWORD="pw")
res = []
for name in ("made", "empty"):
    if name == "empty":
        (small / name).mkdir()  # an empty folder the user made for it
    p = subprocess.run([sys.executable, "-m", "casnap", "--repo", str(small / name), "init",
                        "--encryption", "repokey"], capture_output=True, text=True, env=env)
    left = sorted(str(q.relative_to(small)) for q in small.rglob("*") if q.name != "filler")
    res.append([name, p.returncode, p.stderr, left])
print(json.dumps(res))
"""


def test_an_encrypted_init_on_a_full_disk_takes_back_its_keys_folder(tmp_path: Path) -> None:
    """An encrypted init whose key file does not fit fails with exit 8 and leaves nothing it made:
    no keys/ (which then stood alone in the folder: every command called it an interrupted init),
    and no folder it created."""
    from tests.test_hostile import in_small_tmpfs

    small = tmp_path / "small"
    made, empty = in_small_tmpfs(small, FULL_INIT, str(small))
    assert made[1] == empty[1] == EXIT_CODES["storage"], (made, empty)
    assert "no space left on device" in made[2] and made[2].count("\n") == 1, made
    assert made[3] == [] and empty[3] == ["empty"], (made, empty)


def test_a_key_file_of_another_repository_with_the_same_password_is_passed_over(
    enc_repo: tuple[Path, Path],
) -> None:
    """Two repositories' keys/ merged by mistake: the other's key file opens with this password
    (tried first: cheaper), yet its master key opens nothing here; the repository's own key
    file still opens it, and the stray one can be listed and removed."""
    repo, data = enc_repo
    stray = make_key_file(MasterKey.generate(), PW, "0000", Kdf(os.urandom(16), 8, 1, 1))
    _plant(repo, stray.id, stray.encode())
    code, out, err = run(repo, data, "log")
    assert code == 0, err
    code, out, err = run(repo, data, "key", "list", "--json")
    assert code == 0, err
    assert stray.id in {k["id"] for k in json.loads(out)}
    code, _, err = run(repo, data, "key", "remove", stray.id[:8])
    assert code == 0, err
    assert not (repo / "keys" / stray.id).exists()


def test_a_repository_whose_only_key_file_is_another_repositorys_says_so(
    enc_repo: tuple[Path, Path],
) -> None:
    repo, data = enc_repo
    for old in (repo / "keys").iterdir():
        old.unlink()
    stray = make_key_file(MasterKey.generate(), PW, "0000", Kdf(os.urandom(16), 8, 1, 1))
    _plant(repo, stray.id, stray.encode())
    code, _, err = run(repo, data, "log")
    assert code == 5, err
    assert "another repository's" in err and stray.id[:8] in err


def test_key_passwd_stops_the_old_password_where_two_key_files_hold_it(
    enc_repo: tuple[Path, Path],
) -> None:
    """`key add` given the password in use by mistake makes a second key file sealed by it: a
    later `key passwd` must not leave the old password opening the repository through it."""
    repo, data = enc_repo
    code, _, err = run(repo, data, "key", "add", CASNAP_NEW_PASSWORD=PW)
    assert code == 0, err
    code, out, err = run(repo, data, "key", "passwd", "--json", CASNAP_NEW_PASSWORD="fresh")
    assert code == 0, err
    done = json.loads(out)
    assert len(done["also_removed"]) == 1
    code, _, err = run(repo, data, "log")
    assert code == 10, err  # the old password no longer opens it
    assert run(repo, data, "log", password="fresh")[0] == 0
    assert len(list((repo / "keys").iterdir())) == 1


def test_a_key_file_whose_time_was_edited_still_opens_and_is_listed(
    enc_repo: tuple[Path, Path],
) -> None:
    """`created` is not sealed: an edited one (a hand edit, a planted key file) changes nothing
    the key opens, and key list shows the key without a time rather than stopping."""
    repo, data = enc_repo
    path = next((repo / "keys").iterdir())
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(doc | {"created": "9999-12-31T23:59:59.999999Z"}))
    env = dict(os.environ, CASNAP_PASSWORD=PW, TZ="Asia/Tokyo")  # past year 9999 in local time
    argv = [sys.executable, "-m", "casnap", "--repo", str(repo), "--data", str(data)]
    done = subprocess.run([*argv, "key", "list"], env=env, capture_output=True, timeout=60)
    assert done.returncode == 0 and path.name[:8].encode() in done.stdout, done.stderr
    path.write_text(json.dumps(doc | {"created": "yesterday"}))
    assert run(repo, data, "log")[0] == 0
    code, out, err = run(repo, data, "key", "list")
    assert code == 0, err
    assert path.name[:8] in out and "yesterday" not in out
    code, out, err = run(repo, data, "key", "list", "--json")
    assert code == 0, err
    assert [k["created"] for k in json.loads(out)] == [""]


def test_key_import_of_a_wrong_password_or_an_edited_export_names_the_file(
    enc_repo: tuple[Path, Path], tmp_path: Path
) -> None:
    repo, data = enc_repo
    export = tmp_path / "key.json"
    assert run(repo, data, "key", "export", str(export))[0] == 0
    code, _, err = run(repo, data, "key", "import", str(export), password="not it")
    assert code == 10 and str(export) in err, err
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(json.loads(export.read_text()) | {"id": "0" * 32}))
    code, _, err = run(repo, data, "key", "import", str(edited))
    assert code == 10 and str(edited) in err, err


def test_key_import_of_a_key_file_copied_from_keys(
    enc_repo: tuple[Path, Path], tmp_path: Path
) -> None:
    """A key file copied out of the repository's keys/ folder (`cp backups/keys/* safe/`, the
    way one keeps a key apart without `key export`) has no id inside: its name is its id. Put
    back under its name it opens the repository again; renamed, the refusal says what is
    missing (it said "not a casnap key export" and nothing more)."""
    repo, data = enc_repo
    (kept,) = (repo / "keys").iterdir()
    safe = tmp_path / "safe"
    safe.mkdir()
    copy = safe / kept.name
    copy.write_bytes(kept.read_bytes())
    renamed = safe / "my-key.json"
    renamed.write_bytes(kept.read_bytes())
    kept.unlink()  # the keys/ folder lost
    assert run(repo, data, "log")[0] == EXIT_CODES["password"]
    code, _, err = run(repo, data, "key", "import", str(renamed))
    assert code == EXIT_CODES["integrity"] and "keys/" in err and "its name" in err, err
    code, _, err = run(repo, data, "key", "import", str(copy))
    assert code == 0, err
    assert (repo / "keys" / kept.name).read_bytes() == copy.read_bytes()
    assert run(repo, data, "log")[0] == 0
