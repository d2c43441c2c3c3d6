"""s3:// repositories end to end, through the CLI, against a real S3 HTTP server (moto on
127.0.0.1, tests/s3server.py): commit, checkout, gc, prune, forget, verify, stats and log, plain
and encrypted; no plaintext in any stored object; one line for a missing bucket or endpoint."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap.cli import cli
from casnap.errors import EXIT_CODES
from tests.conftest import evolve_app, make_app
from tests.s3server import make_bucket
from tests.util import snapshot_tree

PW = "correct horse battery staple"
SECRET_NAME = "quarterly-secret-ledger.bin"


def run(repo: str, data: Path, *args: str, password: str | None = None) -> tuple[int, str, str]:
    env: dict[str, str | None] = {
        "CASNAP_PASSWORD": password,
        "CASNAP_PASSWORD_FILE": None,
        "CASNAP_PASSWORD_COMMAND": None,
    }
    result = CliRunner().invoke(cli, ["--repo", repo, "--data", str(data), *args], env=env)
    return result.exit_code, result.stdout, result.stderr


def bucket_objects(bucket: str) -> dict[str, bytes]:
    """Every object in the bucket, whole (the s3_env fixture points the client at the server)."""
    from casnap.backends.s3 import make_client

    client = make_client()
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", ()):
            out[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    client.close()
    return out


def common_blocks(secret: bytes, haystack: bytes) -> int:
    """How many 32-byte blocks of secret at offsets 0, 32, 64, ... occur in haystack."""
    blocks = {secret[i : i + 32] for i in range(0, len(secret) - 31, 32)}
    return sum(haystack[i : i + 32] in blocks for i in range(len(haystack) - 31))


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_s3_repository_end_to_end(encrypted: bool, s3_bucket: str, tmp_path: Path) -> None:
    """Commits of an evolving SQLite + FAISS data dir into s3://bucket/x, every snapshot checked
    out byte-identical, then forget, prune, gc, verify --read-data, stats and log on S3."""
    data = tmp_path / "data"
    make_app(data, rows=150, vectors=240)
    secret = random.Random(7).randbytes(40 * 1024)
    (data / SECRET_NAME).write_bytes(secret)
    repo = f"s3://{s3_bucket}/x"
    pw = PW if encrypted else None
    init = ["init", "--json"] + ([] if encrypted else ["--encryption", "none"])
    code, out, err = run(repo, data, *init, password=pw)
    assert code == 0, err
    made = json.loads(out)
    assert made["path"] == repo
    assert made["encryption"] == ("repokey" if encrypted else "none")

    ids, states = [], []
    for step in range(3):
        if step:
            evolve_app(data, step)
            with open(data / SECRET_NAME, "ab") as f:
                f.write(random.Random(step).randbytes(4096))
        code, out, err = run(repo, data, "commit", "-q", "-m", f"step {step}", password=pw)
        assert code == 0, err
        ids.append(out.strip())
        states.append(snapshot_tree(data))

    for i, (sid, state) in enumerate(zip(ids, states, strict=True)):
        target = tmp_path / f"out{i}"
        code, _, err = run(repo, data, "checkout", sid, "--to", str(target), "-q", password=pw)
        assert code == 0, err
        assert snapshot_tree(target) == state

    objects = bucket_objects(s3_bucket)
    assert objects and all(k.startswith("x/") for k in objects)  # under the URL's prefix
    assert "x/config" in objects
    if encrypted:
        assert any(k.startswith("x/keys/") for k in objects)
        for key, body in objects.items():
            assert SECRET_NAME.encode() not in body, key
            assert b"app.db" not in body and b"shard_000" not in body, key
            assert common_blocks(secret, body) == 0, key
    else:
        # the same scan finds the random file's blocks in a plain repository's packs
        assert any(common_blocks(secret, b) for k, b in objects.items() if "/packs/" in k)

    code, out, err = run(repo, data, "log", "--json", password=pw)
    assert code == 0, err
    assert sorted(s["id"] for s in json.loads(out)) == sorted(ids)
    code, out, err = run(repo, data, "stats", "--json", password=pw)
    assert code == 0, err
    assert json.loads(out)["snapshots"] == 3

    code, _, err = run(repo, data, "forget", ids[0], password=pw)
    assert code == 0, err
    code, _, err = run(repo, data, "gc", "-q", password=pw)
    assert code == 0, err
    code, _, err = run(repo, data, "prune", "--keep-last", "1", "-q", password=pw)
    assert code == 0, err
    code, out, err = run(repo, data, "log", "--json", password=pw)
    assert [s["id"] for s in json.loads(out)] == ids[2:]
    code, out, err = run(repo, data, "verify", "--read-data", "--json", password=pw)
    assert code == 0, (out, err)
    target = tmp_path / "after-gc"
    code, _, err = run(repo, data, "checkout", "latest", "--to", str(target), "-q", password=pw)
    assert code == 0, err
    assert snapshot_tree(target) == states[-1]
    assert len(bucket_objects(s3_bucket)) < len(objects)  # gc deleted what nothing used


def test_commit_creates_an_encrypted_s3_repository(s3_bucket: str, tmp_path: Path) -> None:
    """A first commit into a missing bucket creates bucket and repository, encrypted (repokey)
    by default on S3; without a password it stops (exit 10) having created nothing."""
    data = tmp_path / "data"
    make_app(data, rows=40, vectors=60)
    repo = f"s3://{s3_bucket}/app"
    code, _, err = run(repo, data, "commit")
    assert code == EXIT_CODES["password"], err
    assert err.count("\n") == 1 and "password" in err
    assert "a new encrypted repository" in err  # there is none yet, to be "encrypted"
    code, out, err = run(repo, data, "commit", "-m", "first", password=PW)
    assert code == 0, err
    assert "created encrypted repository (repokey) at " + repo in err
    code, _, err = run(repo, data, "log")
    assert code == EXIT_CODES["password"] and "encrypted" in err
    target = tmp_path / "back"
    code, _, err = run(repo, data, "checkout", out.strip(), "--to", str(target), password=PW)
    assert code == 0, err
    assert snapshot_tree(target) == snapshot_tree(data)


@pytest.mark.usefixtures("quick_retries")
def test_missing_bucket_and_unreachable_endpoint_are_one_line(
    s3_bucket: str, s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bucket that does not exist is "no casnap repository" (exit 3); an endpoint nothing
    answers on is one line naming it (exit 1), once its requests were retried, never a
    traceback."""
    data = tmp_path / "data"
    data.mkdir()
    code, _, err = run(f"s3://{s3_bucket}/x", data, "log")
    assert code == EXIT_CODES["repository"], err
    assert err.count("\n") == 1 and "no casnap repository at s3://" in err
    assert f"bucket {s3_bucket} does not exist" in err, err
    code, _, err = run(str(tmp_path / "dest"), data, "copy", "--from", f"s3://{s3_bucket}/y")
    assert code != 0 and err.count("\n") == 1 and "  " not in err, err
    make_bucket(s3_bucket)  # the bucket there, the prefix empty: no word of the bucket
    code, _, err = run(f"s3://{s3_bucket}/x", data, "log")
    assert code == EXIT_CODES["repository"] and "does not exist" not in err, err

    monkeypatch.setenv("CASNAP_S3_ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused
    code, _, err = run(f"s3://{s3_bucket}/x", data, "log")
    assert code == EXIT_CODES["error"], err
    assert err.count("\n") == 1, err
    assert "127.0.0.1:9" in err and "gave up after 8 attempts" in err, err


def test_an_s3_prefix_holding_other_objects_is_not_touched(s3_bucket: str, tmp_path: Path) -> None:
    make_bucket(s3_bucket)
    from casnap.backends.s3 import make_client

    client = make_client()
    client.put_object(Bucket=s3_bucket, Key="x/notes.txt", Body=b"mine")
    client.close()
    code, _, err = run(f"s3://{s3_bucket}/x", tmp_path, "init", "--encryption", "none")
    assert code == EXIT_CODES["repository"], err
    assert "not empty" in err
    assert bucket_objects(s3_bucket) == {"x/notes.txt": b"mine"}


def test_without_the_client_s3_fails_in_one_line(tmp_path: Path) -> None:
    """When botocore cannot be imported, an s3:// repository says which extra to install."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "botocore.py").write_text("raise ImportError('botocore is not installed')\n")
    env = {"PYTHONPATH": f"{blocker}:{Path(__file__).parents[1]}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "casnap", "--repo", "s3://some-bucket/x", "log"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == EXIT_CODES["repository"], done.stderr
    assert done.stderr.count("\n") == 1 and "casnap[s3]" in done.stderr


def delete_repository(bucket: str, prefix: str, what: str) -> None:
    """Delete the objects under prefix/ and, when what is "bucket", the bucket too."""
    from casnap.backends.s3 import make_client

    client = make_client()
    for key in bucket_objects(bucket):
        if key.startswith(f"{prefix}/"):
            client.delete_object(Bucket=bucket, Key=key)
    if what == "bucket":
        client.delete_bucket(Bucket=bucket)
    client.close()


@pytest.mark.parametrize("what", ["prefix", "bucket"])
def test_a_repository_deleted_after_its_config_was_cached_is_made_anew(
    s3_bucket: str, tmp_path: Path, what: str
) -> None:
    """The config kept in the cache from an earlier open does not make a deleted repository
    look present: a first commit (or a copy) there creates it again, its bucket too when that
    was deleted (as on a host that keeps nothing of it), and a log says there is none."""
    data = tmp_path / "data"
    make_app(data, rows=40, vectors=30)
    repo = f"s3://{s3_bucket}/gone"
    code, _, err = run(repo, data, "commit", "-q", password=PW)
    assert code == 0, err
    code, _, err = run(repo, data, "log", password=PW)  # the config and key are cached now
    assert code == 0, err
    delete_repository(s3_bucket, "gone", what)
    code, out, err = run(repo, data, "log", password=PW)
    assert code == EXIT_CODES["repository"], out + err
    code, out, err = run(repo, data, "commit", "-q", password=PW)
    assert code == 0, err
    code, out, err = run(repo, data, "log", "--json", password=PW)
    assert code == 0, err
    assert len(json.loads(out)) == 1


@pytest.mark.parametrize("what", ["prefix", "bucket"])
def test_a_copy_into_a_repository_deleted_after_its_config_was_cached_makes_it_anew(
    s3_bucket: str, tmp_path: Path, what: str
) -> None:
    data, local = tmp_path / "data", tmp_path / "local"
    make_app(data, rows=40, vectors=30)
    assert run(str(local), data, "commit", "-q")[0] == 0
    dest = f"s3://{s3_bucket}/copygone"
    secret = tmp_path / "pw"
    secret.write_text(PW)
    copy = ("copy", "--to", dest, "--to-password-file", str(secret))
    for _ in range(2):  # the first copy creates it; the second finds it through the cache
        code, _, err = run(str(local), data, *copy)
        assert code == 0, err
    delete_repository(s3_bucket, "copygone", what)
    code, out, err = run(str(local), data, *copy)
    assert code == 0, err
    code, out, err = run(dest, data, "log", "--json", password=PW)
    assert code == 0, err
    assert len(json.loads(out)) == 1


def test_a_repository_inside_another_s3_repository_is_never_made(
    s3_bucket: str, tmp_path: Path
) -> None:
    """init, a first commit and a copy aimed at a prefix inside a repository's prefix
    (`s3://b/app/snapshots/old`) are refused, nothing written: the outer repository would list
    the inner one's objects as its own (its gc and every listing stopped)."""
    data = tmp_path / "data"
    make_app(data, rows=60, vectors=100)
    outer = f"s3://{s3_bucket}/app"
    assert run(outer, data, "init", "--encryption", "none")[0] == 0
    assert run(outer, data, "commit", "-q")[0] == 0
    before = bucket_objects(s3_bucket)
    local = tmp_path / "local"
    assert run(str(local), data, "commit", "-q")[0] == 0
    for inner in (f"{outer}/snapshots/old", f"{outer}/packs/old"):
        for repo, args in (
            (inner, ["init", "--encryption", "none"]),
            (inner, ["commit", "-q"]),
            (str(local), ["copy", "--to", inner, "--to-encryption", "none"]),
        ):
            password = None if args[0] == "copy" else PW
            code, out, err = run(repo, data, *args, password=password)
            assert code == EXIT_CODES["repository"], (args, out, err)
            assert len(err.strip().splitlines()) == 1, err
            assert "inside the casnap repository" in err, err
            assert bucket_objects(s3_bucket) == before
    code, _, err = run(outer, data, "gc")
    assert code == 0, err


@pytest.mark.parametrize("how", ["remove", "passwd"])
def test_a_password_removed_on_this_host_stops_opening_it(
    s3_bucket: str, tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key file an open used is kept in the local cache; `key remove` (and `key passwd`)
    on this very host deleted it from the bucket but kept the copy, so the old password still
    opened the repository here."""
    data = tmp_path / "data"
    make_app(data, rows=40, vectors=80)
    repo = f"s3://{s3_bucket}/k"
    assert run(repo, data, "commit", "-q", password=PW)[0] == 0
    monkeypatch.setenv("CASNAP_NEW_PASSWORD", "second password")
    if how == "remove":
        assert run(repo, data, "key", "add", password=PW)[0] == 0
        code, out, err = run(repo, data, "key", "list", "--json", password=PW)
        old = next(k["id"] for k in json.loads(out) if k["current"])
        code, _, err = run(repo, data, "key", "remove", old, password="second password")
    else:
        code, _, err = run(repo, data, "key", "passwd", password=PW)
    assert code == 0, err
    code, _, err = run(repo, data, "log", password=PW)
    assert code == EXIT_CODES["password"], err
    assert run(repo, data, "log", password="second password")[0] == 0


def test_keys_no_object_can_have_are_passed_over(s3_bucket: str, tmp_path: Path) -> None:
    """Keys with an empty, `.` or `..` component (S3 takes any key; another tool, or a hostile
    one, wrote them) made verify and gc an internal error (exit 70) at `index/../x`, and a
    `locks/..` locked the repository for good: unlock failed on it with exit 70 too. They are
    no objects of the repository, as a folder marker is none."""
    from casnap.backends.s3 import make_client

    data = tmp_path / "data"
    make_app(data, rows=40, vectors=80)
    repo = f"s3://{s3_bucket}/odd"
    assert run(repo, data, "init", "--encryption", "none")[0] == 0
    assert run(repo, data, "commit", "-q")[0] == 0
    client = make_client()
    for key in ("index/../x", "locks/..", "packs/./y", "snapshots/a//b", "tmp/.."):
        client.put_object(Bucket=s3_bucket, Key=f"odd/{key}", Body=b"planted")
    client.close()
    for args in (["log"], ["verify"], ["gc"], ["unlock"], ["prune", "--keep-last", "1"]):
        code, out, err = run(repo, data, *args)
        assert code == 0, (args, out, err)
    assert run(repo, data, "checkout", "latest", "--to", str(tmp_path / "out"))[0] == 0


def test_key_remove_never_leaves_the_repository_without_a_key(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Host 1 keeps the key file of password A (opening.py); host 2 removes it with password
    B; host 1, still opening with its kept copy of A, removed B: the last key file stored, so
    no host that had not kept one could open the repository any more."""
    data = tmp_path / "data"
    make_app(data, rows=40, vectors=80)
    repo = f"s3://{s3_bucket}/keys"
    host1, host2 = str(tmp_path / "cache1"), str(tmp_path / "cache2")
    monkeypatch.setenv("CASNAP_CACHE_DIR", host1)
    assert run(repo, data, "commit", "-q", password="A")[0] == 0
    monkeypatch.setenv("CASNAP_NEW_PASSWORD", "B")
    assert run(repo, data, "key", "add", password="A")[0] == 0
    ids = {}
    for pw in ("A", "B"):
        out = run(repo, data, "key", "list", "--json", password=pw)[1]
        ids[pw] = next(k["id"] for k in json.loads(out) if k["current"])
    monkeypatch.setenv("CASNAP_CACHE_DIR", host2)
    assert run(repo, data, "key", "remove", ids["A"], password="B")[0] == 0
    monkeypatch.setenv("CASNAP_CACHE_DIR", host1)
    assert run(repo, data, "log", password="A")[0] == 0  # the kept copy still opens it here
    code, _, err = run(repo, data, "key", "remove", ids["B"], password="A")
    assert code == EXIT_CODES["usage"], err
    assert "no longer" in err and len(err.strip().splitlines()) == 1, err
    monkeypatch.setenv("CASNAP_CACHE_DIR", str(tmp_path / "cache3"))  # a host keeping nothing
    assert run(repo, data, "log", password="B")[0] == 0


def test_a_changed_or_removed_password_stops_working_on_the_host_that_changed_it(
    s3_bucket: str, tmp_path: Path
) -> None:
    """The key file an open used is kept in the cache so the next open needs no request; `key
    passwd` and `key remove` must not leave the old key there to open the repository still."""
    data = tmp_path / "data"
    make_app(data, rows=40, vectors=30)
    repo = f"s3://{s3_bucket}/keys"
    assert run(repo, data, "commit", "-q", password=PW)[0] == 0
    new_pw = tmp_path / "new"
    new_pw.write_text("a new password")
    code, _, err = run(repo, data, "key", "passwd", "--new-password-file", str(new_pw), password=PW)
    assert code == 0, err
    code, _, err = run(repo, data, "log", password=PW)
    assert code == EXIT_CODES["password"], err
    assert run(repo, data, "log", password="a new password")[0] == 0

    second = tmp_path / "second"
    second.write_text("a colleague's password")
    code, out, err = run(
        repo, data, "key", "add", "--new-password-file", str(second), "--json",
        password="a new password",
    )  # fmt: skip
    assert code == 0, err
    assert run(repo, data, "log", password="a colleague's password")[0] == 0  # cached now
    added = json.loads(out)["added"]
    code, _, err = run(repo, data, "key", "remove", added, password="a new password")
    assert code == 0, err
    code, _, err = run(repo, data, "log", password="a colleague's password")
    assert code == EXIT_CODES["password"], err


@pytest.mark.parametrize(
    ("args", "plain"),
    [
        (["init"], "`--encryption none` makes a plain one"),
        (["commit"], "`casnap init --encryption none` first makes a plain one"),
        (["import", "copies"], "`casnap init --encryption none` first makes a plain one"),
        (["copy", "--to", "DEST"], "`--to-encryption none` makes a plain one"),
        (["--repo", "DEST", "copy", "--from", "SRC"], "`--to-encryption none` makes a plain one"),
    ],
)
def test_a_new_s3_repository_without_a_password_names_the_plain_choice(
    s3_bucket: str, tmp_path: Path, args: list[str], plain: str
) -> None:
    """S3 repositories are encrypted by default; a user without a password was told only to give
    one, not that the option making a plain one exists."""
    data = tmp_path / "data"
    make_app(data, rows=20, vectors=20)
    make_app(tmp_path / "copies" / "data_20250101", rows=20, vectors=20)
    src = tmp_path / "src"
    assert run(str(src), data, "commit", "-q")[0] == 0
    dest = f"s3://{s3_bucket}/dest"
    args = [
        {"DEST": dest, "SRC": str(src), "copies": str(tmp_path / "copies")}.get(a, a) for a in args
    ]
    repo = str(src) if args[0] == "copy" else dest
    code, _, err = run(repo, data, *args)
    assert code == EXIT_CODES["password"], err
    assert err.count("\n") == 1 and "a new encrypted repository" in err and plain in err


def test_an_import_into_a_new_s3_prefix_without_a_password_names_the_new_repository(
    s3_bucket: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    copies = tmp_path / "copies"
    make_app(copies / "data_20250101", rows=40, vectors=30)
    code, _, err = run(f"s3://{s3_bucket}/imported", data, "import", str(copies))
    assert code == EXIT_CODES["password"], err
    assert "a new encrypted repository" in err
    code, _, err = run(f"s3://{s3_bucket}/imported", data, "log")
    assert code == EXIT_CODES["repository"], err  # nothing was made


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("CASNAP_S3_ENDPOINT", "127.0.0.1:9000", "CASNAP_S3_ENDPOINT"),
        ("CASNAP_S3_ENDPOINT", "ftp://127.0.0.1:9000", "CASNAP_S3_ENDPOINT"),
        ("CASNAP_S3_ENDPOINT", "http://bad host:9000", "CASNAP_S3_ENDPOINT"),
        ("CASNAP_S3_ENDPOINT", "http://[::1", "CASNAP_S3_ENDPOINT"),
        ("CASNAP_S3_ENDPOINT", "http://127.0.0.1:99999", "CASNAP_S3_ENDPOINT"),
        ("AWS_PROFILE", "no-such-profile", "no-such-profile"),
        ("AWS_DEFAULT_REGION", "bad region!", "bad region!"),
        ("AWS_CONFIG_FILE", "{unparsable}", "config"),
    ],
    ids=[
        "endpoint-no-scheme",
        "endpoint-ftp",
        "endpoint-space",
        "endpoint-ipv6-unclosed",
        "endpoint-port-out-of-range",
        "profile",
        "region",
        "config",
    ],
)
def test_a_misconfigured_s3_client_is_a_usage_error(
    variable: str,
    value: str,
    named: str,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """An endpoint that is not an http(s) URL, an unknown profile, a malformed region or an AWS
    config file that cannot be parsed is the user's setting to fix: one line naming it, exit 2,
    not an internal error."""
    if value == "{unparsable}":
        config = tmp_path / "aws-config"
        config.write_text("[default\nregion = us-east-1\n")
        value = str(config)
    monkeypatch.setenv(variable, value)
    data = tmp_path / "data"
    data.mkdir()
    code, _, err = run(f"s3://{s3_bucket}/x", data, "log")
    assert code == EXIT_CODES["usage"], err
    assert err.count("\n") == 1 and err.startswith("casnap: error: "), err
    assert named in err and "internal error" not in err, err


@pytest.mark.parametrize("password", ["right", "wrong"])
def test_a_misconfigured_client_is_the_error_also_when_this_host_keeps_the_config(
    password: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With the config and key file kept here, the client is made while the key is derived;
    a client that cannot be made is still the command's one error (exit 2 naming the
    setting), before a wrong password, and a good one opens the repository as before."""
    url, data = f"s3://{s3_bucket}/kept", tmp_path / "data"
    make_app(data, rows=20, vectors=40)
    assert run(url, data, "commit", "-q", password="right")[0] == 0
    code, out, err = run(url, data, "log", password=password)
    assert code == (0 if password == "right" else EXIT_CODES["password"]), err
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    code, _, err = run(url, data, "log", password=password)
    assert code == EXIT_CODES["usage"], err
    assert err.count("\n") == 1 and "no-such-profile" in err, err


SPY_IMPORTS = """
import sys, threading, importlib.abc
first = {}
class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        first.setdefault(name, threading.current_thread().name)
sys.meta_path.insert(0, Spy())
from casnap.repository import Repository
Repository.open(sys.argv[1], password=lambda: "pw").close()
print(first.get("botocore"))
"""


def test_with_the_config_kept_here_the_client_is_made_off_the_main_thread(
    s3_bucket: str, tmp_path: Path
) -> None:
    """Importing botocore and making the client (~0.2 s) runs on the open's own thread while
    the key is derived; nothing on the main thread imports the client first."""
    url, data = f"s3://{s3_bucket}/spy", tmp_path / "data"
    make_app(data, rows=10, vectors=20)
    assert run(url, data, "commit", "-q", password="pw")[0] == 0
    assert run(url, data, "log", password="pw")[0] == 0  # an open keeps config and key here
    done = subprocess.run(
        [sys.executable, "-c", SPY_IMPORTS, url],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "casnap-open", done.stdout


def test_an_endpoint_that_answers_404_to_everything_is_not_called_damage(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A URL that is no S3 store (a web server answering 404): `log` says the bucket is not
    there, or the endpoint is no S3 store (exit 3), and `init` cannot make the bucket (exit 1);
    it was exit 5, 'is missing from the repository' with an empty name."""
    import http.server
    import threading

    class NotFound(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setenv("CASNAP_S3_ENDPOINT", url)
        data = tmp_path / "data"
        data.mkdir()
        code, _, err = run(f"s3://{s3_bucket}/x", data, "log")
        assert code == EXIT_CODES["repository"], err
        assert err.count("\n") == 1 and "not an S3 store" in err and url in err, err
        code, _, err = run(f"s3://{s3_bucket}/x", data, "init", "--encryption", "none")
        assert code == EXIT_CODES["error"], err
        assert err.count("\n") == 1 and "S3 store" in err, err
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "model",
    [
        "[]",
        '"model"',
        '{"metadata": 5}',
        "{}",
        '{"metadata": {"serviceId": "S3"}}',
        '{"metadata": {"serviceId": "S3", "endpointPrefix": "s3", "protocol": "rest-xml",'
        ' "signatureVersion": "s3"}, "operations": {}, "shapes": {}}',
        '{"metadata": ',
    ],
    ids=["array", "string", "metadata-number", "empty", "no-prefix", "no-operations", "cut"],
)
def test_a_malformed_s3_model_in_aws_data_path_is_a_usage_error(
    model: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """AWS_DATA_PATH names folders of models botocore reads before its own: an S3 model there
    that is no model (or lacks what casnap asks of the store) is the user's setting to fix,
    one line naming it, exit 2, never an internal error at the client's setup or first use."""
    folder = tmp_path / "models" / "s3" / "2006-03-01"
    folder.mkdir(parents=True)
    (folder / "service-2.json").write_text(model)
    monkeypatch.setenv("AWS_DATA_PATH", str(tmp_path / "models"))
    data = tmp_path / "data"
    data.mkdir()
    code, _, err = run(f"s3://{s3_bucket}/x", data, "log")
    assert code == EXIT_CODES["usage"], err
    assert err.count("\n") == 1 and err.startswith("casnap: error: "), err
    assert "AWS_DATA_PATH" in err and "internal error" not in err, err
