"""An S3 prefix an encrypted init left half made (its key file, no config), on the test's own S3
server: taken over as a local folder in that state is (tests/test_copy.py), once the key file is
older than INIT_WAIT_SECONDS; refused while it is younger."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from casnap import constants
from casnap.errors import EXIT_CODES
from tests.conftest import make_app
from tests.s3server import make_bucket
from tests.test_s3 import bucket_objects, run

PW = "half made"


def killed_init(bucket: str, prefix: str, tmp_path: Path) -> str:
    """s3://bucket/prefix as an encrypted init killed between its key file and its config
    leaves it: its key file alone. The key file's object name."""
    from casnap.backends.s3 import make_client

    repo = f"s3://{bucket}/{prefix}"
    code, _, err = run(repo, tmp_path, "init", password=PW)
    assert code == 0, err
    client = make_client()
    client.delete_object(Bucket=bucket, Key=f"{prefix}/config")
    client.close()
    (stale,) = bucket_objects(bucket)
    assert stale.startswith(f"{prefix}/keys/"), stale
    return stale


def aged(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key files written so far count as old: INIT_WAIT_SECONDS cut to 1 s, and the wait
    past it (S3 gives an object's time in whole seconds)."""
    monkeypatch.setattr(constants, "INIT_WAIT_SECONDS", 1.0)
    time.sleep(2.1)


def test_a_young_key_file_alone_is_refused_as_in_a_folder(s3_bucket: str, tmp_path: Path) -> None:
    """An init may be under way: the same one line and exit code as a local folder's."""
    killed_init(s3_bucket, "x", tmp_path)
    before = bucket_objects(s3_bucket)
    code, _, err = run(f"s3://{s3_bucket}/x", tmp_path, "init", password=PW)
    assert code == EXIT_CODES["repository"], err
    assert "try again in a few seconds" in err and err.count("\n") == 1, err
    assert bucket_objects(s3_bucket) == before


def test_an_old_key_file_alone_is_taken_over_by_init(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key file of an init killed before its config seals a key that encrypts nothing: an
    init takes the prefix over (its own key file and config) and removes it, as in a folder;
    it was refused as 'not empty' for ever."""
    stale = killed_init(s3_bucket, "x", tmp_path)
    aged(monkeypatch)
    repo = f"s3://{s3_bucket}/x"
    code, _, err = run(repo, tmp_path, "init", password=PW)
    assert code == 0, err
    objects = bucket_objects(s3_bucket)
    assert stale not in objects and "x/config" in objects
    assert len([k for k in objects if k.startswith("x/keys/")]) == 1, sorted(objects)
    data = tmp_path / "data"
    make_app(data, rows=30, vectors=40)
    assert run(repo, data, "commit", "-q", password=PW)[0] == 0
    code, out, err = run(repo, data, "log", "--json", password=PW)
    assert code == 0 and len(json.loads(out)) == 1, err


def test_a_first_commit_takes_an_old_key_file_alone_over_too(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = killed_init(s3_bucket, "x", tmp_path)
    data = tmp_path / "data"
    make_app(data, rows=30, vectors=40)
    aged(monkeypatch)
    repo = f"s3://{s3_bucket}/x"
    code, _, err = run(repo, data, "log", password=PW)  # no repository yet: an init makes one
    assert code == EXIT_CODES["repository"] and err.count("\n") == 1, err
    assert "casnap init" in err, err
    code, _, err = run(repo, data, "commit", "-q", password=PW)
    assert code == 0, err
    assert stale not in bucket_objects(s3_bucket)
    code, out, err = run(repo, data, "verify", "--read-data", password=PW)
    assert code == 0, out + err


def test_a_first_commit_waits_for_an_init_under_way(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key file written in the last seconds may be another process's init about to write its
    config: a first commit waits for it, as for a local folder (then takes over the key file,
    once old, when no config came)."""
    stale = killed_init(s3_bucket, "x", tmp_path)
    monkeypatch.setattr(constants, "INIT_WAIT_SECONDS", 1.0)
    data = tmp_path / "data"
    make_app(data, rows=30, vectors=40)
    start = time.monotonic()
    code, _, err = run(f"s3://{s3_bucket}/x", data, "commit", "-q", password=PW)
    assert code == 0, err
    assert time.monotonic() - start >= 0.9
    assert stale not in bucket_objects(s3_bucket)


@pytest.mark.parametrize("name", ["deploy.pem", "0123456789abcdef0123456789abcdef/x"])
def test_a_prefix_holding_other_objects_under_keys_is_not_taken_over(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """A prefix whose only objects lie under keys/ but are no key file a casnap init writes
    (`keys/<32 hex digits>`), such as a user's own keys: not a killed init's, so an init
    refuses the prefix as not empty, and deletes nothing."""
    from casnap.backends.s3 import make_client

    make_bucket(s3_bucket)
    client = make_client()
    client.put_object(Bucket=s3_bucket, Key=f"x/keys/{name}", Body=b"mine\n")
    client.close()
    aged(monkeypatch)
    before = bucket_objects(s3_bucket)
    code, _, err = run(f"s3://{s3_bucket}/x", tmp_path, "init", password=PW)
    assert code == EXIT_CODES["repository"], err
    assert "not empty and not a casnap repository" in err, err
    assert bucket_objects(s3_bucket) == before


@pytest.mark.parametrize("where", ["inside", "holding", "not empty"])
def test_a_prefix_refused_whatever_the_password_is_said_before_it_is_asked_for(
    s3_bucket: str, tmp_path: Path, where: str
) -> None:
    """An encrypted init (the default on S3) asked for the password first: with none to give
    it stopped saying a password was needed (exit 10), and on a terminal it asked twice before
    saying that no repository could be made there (inside another, one already there, objects
    of something else). The refusal comes first; nothing is written."""
    from casnap.backends.s3 import make_client

    data = tmp_path / "data"
    outer = f"s3://{s3_bucket}/app"
    assert run(outer, data, "init", "--encryption", "none")[0] == 0
    if where == "not empty":
        client = make_client()
        client.put_object(Bucket=s3_bucket, Key="other/notes.txt", Body=b"mine")
        client.close()
    repo = {"inside": f"{outer}/sub", "holding": outer, "not empty": f"s3://{s3_bucket}/other"}
    before = bucket_objects(s3_bucket)
    code, _, err = run(repo[where], data, "init", password=None)
    assert code == EXIT_CODES["repository"], err
    said = {"inside": "inside the casnap repository", "holding": "already holds"}
    assert said.get(where, "is not empty and not a casnap repository") in err, err
    assert err.count("\n") == 1, err
    assert bucket_objects(s3_bucket) == before
