"""Objects another tool (or a hostile one) put in an S3 repository under names casnap never
writes: each command passes over them, and none stops gc, prune or forget for good."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_app
from tests.test_s3 import run
from tests.test_s3_copy import two_snapshots


def test_an_uppercase_snapshot_or_pack_name_is_no_object_of_the_repository(
    s3_bucket: str, tmp_path: Path
) -> None:
    """A manifest moved to its id in uppercase hex (S3 keys tell case apart) was taken for that
    snapshot and read under the lowercase key: gc, prune and forget stopped at it as 'missing
    from the repository' (exit 5), and the way out they named, `casnap forget ID`, answered 'no
    snapshot matches'. An object under an uppercase pack name was an unindexed pack each gc
    said it deleted (by its lowercase name, which no object has), freeing its bytes again each
    time, and verify named it by that lowercase name."""
    from casnap.backends.s3 import make_client

    data, repo = tmp_path / "data", f"s3://{s3_bucket}/up"
    assert run(repo, data, "init", "--encryption", "none")[0] == 0
    ids = two_snapshots(repo, data)
    client = make_client()
    old = f"up/snapshots/{ids[0]}"
    body = client.get_object(Bucket=s3_bucket, Key=old)["Body"].read()
    client.put_object(Bucket=s3_bucket, Key=f"up/snapshots/{ids[0].upper()}", Body=body)
    client.delete_object(Bucket=s3_bucket, Key=old)
    planted = "up/packs/AB/AB" + "C" * 62  # no index names it
    client.put_object(Bucket=s3_bucket, Key=planted, Body=b"not a pack")
    client.close()

    code, out, err = run(repo, data, "log", "--json")
    assert code == 0, err
    assert ids[1][:8] in out and ids[0][:8] not in out
    for again in (False, True):
        code, out, err = run(repo, data, "gc")
        assert code == 0, err
        assert not again or "delete 0 pack(s)" in out + err, out + err
    code, out, err = run(repo, data, "prune", "--keep-last", "1")
    assert code == 0, err
    code, out, err = run(repo, data, "verify", "--read-data")
    assert code == 9, err  # the planted manifest is named, and only it
    assert f"snapshots/{ids[0].upper()}: not a snapshot name" in out + err
    assert "missing" not in out + err and "abcccc" not in out + err


def test_a_lock_object_larger_than_any_lock_is_not_downloaded(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An object of megabytes under locks/ was downloaded whole by every command taking a lock
    (and by unlock), only to be found no lock; its listed size now tells it is none."""
    from casnap.backends import s3
    from casnap.backends.s3 import make_client

    data, repo = tmp_path / "data", f"s3://{s3_bucket}/big"
    make_app(data, rows=40, vectors=80)
    assert run(repo, data, "init", "--encryption", "none")[0] == 0
    client = make_client()
    client.put_object(Bucket=s3_bucket, Key="big/locks/planted", Body=b" " * (1 << 20))
    client.close()
    fetched: list[str] = []
    get = s3.S3Backend.get

    def counting(self: s3.S3Backend, key: str, *args: object, **kwargs: object) -> bytes:
        fetched.append(key)
        return get(self, key, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(s3.S3Backend, "get", counting)
    monkeypatch.setenv("CASNAP_LOCK_WAIT", "0")
    code, _, err = run(repo, data, "commit", "-q")
    assert code == 6, err
    assert "locks/planted cannot be read" in err
    code, out, err = run(repo, data, "unlock")
    assert code == 0, err
    assert "removed locks/planted" in out
    assert "locks/planted" not in fetched
    assert run(repo, data, "commit", "-q")[0] == 0


def test_a_checkout_stopped_by_an_index_file_names_repair_index(
    s3_bucket: str, tmp_path: Path
) -> None:
    """A garbage object under an index file's name stopped every checkout (exit 5) saying that
    `casnap verify --read-data` names what the damage spoils and that an older snapshot may
    hold the files intact, though no snapshot reads without the index: repair-index does."""
    from casnap.backends.s3 import make_client

    data, repo = tmp_path / "data", f"s3://{s3_bucket}/idx"
    make_app(data, rows=40, vectors=80)
    assert run(repo, data, "init", "--encryption", "none")[0] == 0
    code, out, err = run(repo, data, "commit", "-q")
    assert code == 0, err
    client = make_client()
    client.put_object(Bucket=s3_bucket, Key="idx/index/" + "b" * 64, Body=b"garbage")
    client.close()
    target = tmp_path / "out"
    code, _, err = run(repo, data, "checkout", out.strip(), "--to", str(target), "-q")
    assert code == 5, err
    assert "index/" + "b" * 64 in err and "`casnap repair-index` rebuilds it" in err
    assert "an older snapshot may hold" not in err
    assert run(repo, data, "repair-index")[0] == 0
    code, _, err = run(repo, data, "checkout", out.strip(), "--to", str(target), "-q")
    assert code == 0, err
