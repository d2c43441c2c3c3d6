"""casnap copy: snapshots between repositories, plain and encrypted, only missing chunks sent,
idempotent, resumable after a kill, verified on the way."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap import Repository, copier, copy_snapshots, selection
from casnap.cli import cli
from casnap.errors import InternalError, InvalidArgument, SnapshotNotFound
from casnap.manifest import Snapshot
from tests.conftest import evolve_app, make_app
from tests.util import raw_tree, snapshot_tree

ROOT = Path(__file__).resolve().parent.parent
PW_SRC = "source password"
PW_DST = "destination password"
PASSWORD_VARS = [
    f"CASNAP_{role}PASSWORD{tail}"
    for role in ("", "FROM_", "TO_")
    for tail in ("", "_FILE", "_COMMAND")
]


def run(repo: Path, data: Path, *args: str, **env: str) -> tuple[int, str, str]:
    full: dict[str, str | None] = dict.fromkeys(PASSWORD_VARS)
    full.update(env)
    result = CliRunner().invoke(cli, ["--repo", str(repo), "--data", str(data), *args], env=full)
    return result.exit_code, result.stdout, result.stderr


def objects(repo: Path) -> dict[str, bytes]:
    """Every stored object but locks: packs, index files, manifests, config, keys."""
    return {
        p.relative_to(repo).as_posix(): p.read_bytes()
        for p in repo.rglob("*")
        if p.is_file() and p.relative_to(repo).parts[0] not in ("locks", "tmp")
    }


def log_ids(repo: Path, data: Path, **env: str) -> list[str]:
    code, out, err = run(repo, data, "log", "--json", **env)
    assert code == 0, err
    return [row["id"] for row in json.loads(out)]


@pytest.fixture
def history(tmp_path: Path) -> tuple[Path, Path, list[str], list[dict[str, bytes]]]:
    """A plain repository with three snapshots of an evolving app (the second tagged), and the
    data dir's files at each."""
    data, repo = tmp_path / "data", tmp_path / "src"
    make_app(data, rows=150, vectors=300)
    ids, trees = [], []
    for step in range(3):
        if step:
            evolve_app(data, step)
        tags = ["--tag", "nightly"] if step == 1 else []
        code, out, err = run(repo, data, "commit", "-q", *tags)
        assert code == 0, err
        ids.append(out.strip())
        trees.append(snapshot_tree(data))
    return data, repo, ids, trees


def check_restores(
    repo: Path, data: Path, tmp: Path, pairs: list[tuple[str, dict[str, bytes]]], **env: str
) -> None:
    """Each snapshot checks out of repo byte-identical to the data it was taken of, and
    verify --read-data passes."""
    for n, (sid, tree) in enumerate(pairs):
        out = tmp / f"out-{repo.name}-{n}"
        code, _, err = run(repo, data, "checkout", sid, "--to", str(out), "--no-smoke", **env)
        assert code == 0, err
        assert snapshot_tree(out) == tree
    code, out_text, err = run(repo, data, "verify", "--read-data", **env)
    assert code == 0, out_text + err


def test_plain_to_plain_keeps_ids_and_a_second_copy_writes_nothing(tmp_path, history) -> None:
    data, src, ids, trees = history
    dst = tmp_path / "dst"  # missing: the copy creates it
    code, out, err = run(src, data, "copy", "--to", str(dst))
    assert code == 0, err
    assert "created repository" in err
    assert sorted(log_ids(dst, data)) == sorted(ids)
    for sid in ids:
        assert (dst / "snapshots" / sid).read_bytes() == (src / "snapshots" / sid).read_bytes()
        assert f"copied {sid[:8]} -> {sid[:8]}" in out
    # the bytes are what was written (packs, index file, manifest), not the chunks' size: a
    # snapshot sending 0 chunks read "0 chunks sent (2.4 KiB)"
    assert re.search(r": \d+ chunks sent, [\d.]+ [KM]?i?B written, \d+ already there", out), out
    before = objects(dst)
    code, out, err = run(src, data, "copy", "--to", str(dst))
    assert code == 0, err
    assert objects(dst) == before  # no pack, index file or manifest
    for sid in ids:
        assert f"{sid[:8]} already in" in out
    assert "0 snapshot(s) copied, 3 already there" in out
    check_restores(dst, data, tmp_path, list(zip(ids, trees, strict=True)))


def test_plain_to_encrypted_and_back(tmp_path, history) -> None:
    data, src, ids, trees = history
    enc = tmp_path / "enc"
    code, out, err = run(src, data, "copy", "--to", str(enc), CASNAP_TO_PASSWORD=PW_DST)
    assert code == 0, err
    assert "created encrypted repository" in err
    assert Repository.open(enc, lambda: PW_DST).encrypted
    copied = json.loads(
        run(src, data, "copy", "--to", str(enc), "--json", CASNAP_TO_PASSWORD=PW_DST)[1]
    )
    assert copied["copied"] == 0 and copied["present"] == 3
    mapping = {s["source"]: s["destination"] for s in copied["snapshots"]}
    assert set(mapping) == set(ids) and not set(mapping.values()) & set(ids)
    before = objects(enc)
    run(src, data, "copy", "--to", str(enc), CASNAP_TO_PASSWORD=PW_DST)
    assert objects(enc) == before
    pairs = [(mapping[sid], tree) for sid, tree in zip(ids, trees, strict=True)]
    check_restores(enc, data, tmp_path, pairs, CASNAP_PASSWORD=PW_DST)

    # encrypted -> plain: --repo is the destination, the encrypted source has --from passwords
    back = tmp_path / "back"
    code, out, err = run(back, data, "copy", "--from", str(enc), CASNAP_FROM_PASSWORD=PW_DST)
    assert code == 0, err
    assert not Repository.open(back).encrypted
    assert "into a new plain one" in err  # said, since the copy leaves the protection behind
    # and how to avoid it: the destination is --repo, whose password is the global one
    assert "--to-password" not in err and "--password-file" in err
    back_ids = log_ids(back, data)
    assert len(back_ids) == 3
    found = json.loads(
        run(back, data, "copy", "--from", str(enc), "--json", CASNAP_FROM_PASSWORD=PW_DST)[1]
    )
    assert found["copied"] == 0
    back_of = {s["source"]: s["destination"] for s in found["snapshots"]}
    pairs = [(back_of[mapping[sid]], tree) for sid, tree in zip(ids, trees, strict=True)]
    check_restores(back, data, tmp_path, pairs)
    # copied back into the source, the snapshots are recognised as the ones they came from
    code, out, err = run(src, data, "copy", "--from", str(back))
    assert code == 0, err
    assert "0 snapshot(s) copied, 3 already there" in out


def test_a_pre_checkout_copy_names_the_snapshot_by_its_id_in_the_destination(
    tmp_path, history
) -> None:
    """A pre-checkout snapshot's message names the snapshot checked out ("before checkout of
    1a2b3c4d"). A copy that gives every snapshot another id (into an encrypted repository)
    kept the source's id there, which names nothing in the destination: it names the
    destination's copy now, as the copy's `parent` does."""
    data, src, ids, _ = history
    (data / "stray.txt").write_text("no snapshot holds this")
    code, _, err = run(src, data, "checkout", ids[1], "--no-smoke", "-q")
    assert code == 0, err
    enc = tmp_path / "enc"
    copied = run(src, data, "copy", "--to", str(enc), "--json", CASNAP_TO_PASSWORD=PW_DST)
    assert copied[0] == 0, copied[2]
    mapping = {s["source"]: s["destination"] for s in json.loads(copied[1])["snapshots"]}
    code, out, err = run(
        enc, data, "log", "--json", "--tag", "pre-checkout", CASNAP_PASSWORD=PW_DST
    )
    assert code == 0, err
    (saved,) = json.loads(out)
    assert saved["message"] == f"before checkout of {mapping[ids[1]][:8]} (saved 1 file(s))"


def test_a_plain_destination_asked_for_is_not_told_a_password_would_encrypt_it(
    tmp_path, history
) -> None:
    """With `--to-encryption none` a password set for the destination encrypts nothing: the
    warning of a plain copy of an encrypted source says the option chose it, and does not
    suggest giving a password."""
    data, src, _ids, _trees = history
    enc = tmp_path / "enc"
    code, _, err = run(src, data, "copy", "--to", str(enc), CASNAP_TO_PASSWORD=PW_DST)
    assert code == 0, err
    plain = tmp_path / "plain"
    code, _, err = run(
        enc,
        data,
        "copy",
        "--to",
        str(plain),
        "--to-encryption",
        "none",
        CASNAP_PASSWORD=PW_DST,
        CASNAP_TO_PASSWORD=PW_DST,
    )
    assert code == 0, err
    assert not Repository.open(plain).encrypted
    (warning,) = [line for line in err.splitlines() if "warning" in line]
    assert "into a new plain one" in warning and "--to-encryption none" in warning, err
    assert "password" not in warning, err


def test_encrypted_to_encrypted_with_another_key(tmp_path, history) -> None:
    data, src, ids, trees = history
    one, two = tmp_path / "one", tmp_path / "two"
    assert run(one, data, "copy", "--from", str(src), CASNAP_PASSWORD=PW_SRC)[0] == 0
    code, out, err = run(
        one, data, "copy", "--to", str(two), CASNAP_PASSWORD=PW_SRC, CASNAP_TO_PASSWORD=PW_DST
    )
    assert code == 0, err
    assert len(log_ids(two, data, CASNAP_PASSWORD=PW_DST)) == 3
    code, _, err = run(two, data, "verify", "--read-data", CASNAP_PASSWORD=PW_DST)
    assert code == 0, err


def test_only_missing_chunks_are_sent(tmp_path, history) -> None:
    """Copy snapshot 1, then all: the second copy sends what snapshots 2-3 added in the source,
    exactly as many blobs as their commits stored, far fewer bytes than their data."""
    data, src, ids, _trees = history
    with Repository.open(src) as repo:
        later = [repo.load_snapshot(repo.resolve(sid)) for sid in ids[1:]]
    logical = sum(s.logical_bytes for s in later)
    new_blobs = sum(s.stats["chunks_new"] for s in later)
    sent = {}
    for name, env in (("plain", {}), ("enc", {"CASNAP_TO_PASSWORD": PW_DST})):
        dst = tmp_path / name
        code, out, err = run(src, data, "copy", ids[0], "--to", str(dst), "--json", **env)
        assert code == 0, err
        assert [s["source"] for s in json.loads(out)["snapshots"]] == [ids[0]]
        code, out, err = run(src, data, "copy", "--to", str(dst), "--json", **env)
        assert code == 0, err
        second = json.loads(out)
        assert [s["copied"] for s in second["snapshots"]] == [False, True, True]
        assert 0 < second["bytes_sent"] < logical / 2
        assert 0 < second["bytes_written"] < logical / 2
        assert all(s["chunks_present"] > 0 for s in second["snapshots"][1:])
        sent[name] = second["chunks_sent"]
        if name == "plain":
            blobs = sum(s["chunks_sent"] + s["lists_sent"] for s in second["snapshots"])
            assert blobs == new_blobs
    assert sent["enc"] == sent["plain"]


def test_selecting_by_id_prefix_tag_and_filter(tmp_path, history) -> None:
    data, src, ids, _trees = history
    dst = tmp_path / "dst"
    code, out, err = run(src, data, "copy", "nightly", ids[2][:10], "--to", str(dst))
    assert code == 0, err
    assert sorted(log_ids(dst, data)) == sorted([ids[1], ids[2]])
    dst2 = tmp_path / "dst2"
    code, out, err = run(src, data, "copy", "--tag", "nightly", "--to", str(dst2))
    assert code == 0, err
    assert log_ids(dst2, data) == [ids[1]]
    code, _, err = run(src, data, "copy", "nosuchtag", "--to", str(tmp_path / "dst3"))
    assert code == 4, err
    assert not (tmp_path / "dst3").exists()  # a destination made for nothing is taken back


@pytest.mark.parametrize("spec", ["put:kill:1:packs/", "put:kill:2:packs/", "put:kill:2:index/"])
def test_a_killed_copy_leaves_the_destination_intact_and_a_rerun_completes(
    tmp_path, history, spec
) -> None:
    data, src, ids, trees = history
    dst = tmp_path / "dst"
    args = ["--repo", str(src), "--data", str(data), "copy", "--to", str(dst)]
    env = {k: v for k, v in os.environ.items() if k not in PASSWORD_VARS}
    env["CASNAP_TO_PASSWORD"] = PW_DST
    done = subprocess.run(
        [sys.executable, "-m", "tests.faulty_cli", spec, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    kept = log_ids(dst, data, CASNAP_PASSWORD=PW_DST)
    assert len(kept) < 3
    code, out, err = run(dst, data, "verify", "--read-data", CASNAP_PASSWORD=PW_DST)
    assert code == 0, out + err
    code, out, err = run(src, data, "copy", "--to", str(dst), "--json", CASNAP_TO_PASSWORD=PW_DST)
    assert code == 0, err
    result = json.loads(out)
    assert result["present"] == len(kept) and result["copied"] == 3 - len(kept)
    mapping = {s["source"]: s["destination"] for s in result["snapshots"]}
    pairs = [(mapping[sid], tree) for sid, tree in zip(ids, trees, strict=True)]
    check_restores(dst, data, tmp_path, pairs, CASNAP_PASSWORD=PW_DST)


def test_a_failed_copy_takes_back_its_packs(tmp_path, history) -> None:
    """A storage failure writing the second snapshot's manifest: the first snapshot stays (and
    is said to), the second one's packs and index file are taken back, and a rerun completes."""
    data, src, ids, _trees = history
    dst = tmp_path / "dst"
    env = {k: v for k, v in os.environ.items() if k not in PASSWORD_VARS}
    args = ["--repo", str(src), "--data", str(data), "copy", "--to", str(dst)]
    done = subprocess.run(
        [sys.executable, "-m", "tests.faulty_cli", "put:enospc:2:snapshots/", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        check=False,
        text=True,
    )
    assert done.returncode not in (0, 70) and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert log_ids(dst, data) == [ids[0]]
    # what stays is said (it printed nothing of it: the stored snapshot looked lost too)
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith(f"copied {ids[0][:8]} -> {ids[0][:8]}: "), done.stdout
    assert lines[1].startswith(f"1 snapshot(s) copied into {dst} before the copy stopped"), lines
    with Repository.open(dst) as repo:
        repo.ensure_index()
        assert len(repo.store.index_files) == 1  # the first snapshot's
    assert len(list((dst / "packs").rglob("*"))) - len(list((dst / "packs").glob("*"))) == 1
    code, out, err = run(src, data, "copy", "--to", str(dst))
    assert code == 0, err
    assert sorted(log_ids(dst, data)) == sorted(ids)
    code, out, err = run(dst, data, "verify", "--read-data")
    assert code == 0, out + err


def test_wrong_destination_password_writes_nothing(tmp_path, history) -> None:
    data, src, _ids, _trees = history
    enc = tmp_path / "enc"
    assert run(enc, data, "init", "--encryption", "repokey", CASNAP_PASSWORD=PW_DST)[0] == 0
    before = raw_tree(enc)
    code, out, err = run(src, data, "copy", "--to", str(enc), CASNAP_TO_PASSWORD="wrong")
    assert code == 10, err
    assert len(err.strip().splitlines()) == 1
    assert raw_tree(enc) == before
    code, out, err = run(src, data, "copy", "--to", str(enc))  # no password source at all
    assert code == 10 and "--to-password-file" in err, err
    assert raw_tree(enc) == before


def test_the_other_repository_s_password_options_beat_its_variables(tmp_path, history) -> None:
    """As for --repo: an option given (--to-password-command) beats CASNAP_TO_PASSWORD_FILE,
    which was taken before it; a file and a command both given are refused (exit 2)."""
    data, src, ids, _trees = history
    enc = tmp_path / "enc"
    assert run(enc, data, "init", "--encryption", "repokey", CASNAP_PASSWORD=PW_DST)[0] == 0
    good, wrong = tmp_path / "good.txt", tmp_path / "wrong.txt"
    good.write_text(PW_DST)
    wrong.write_text("wrong")
    to = ["copy", "--to", str(enc), ids[0]]
    code, _, err = run(
        src, data, *to, "--to-password-command", f"cat {good}", CASNAP_TO_PASSWORD_FILE=str(wrong)
    )
    assert code == 0, err
    back = ["copy", "--from", str(enc), "latest"]
    code, _, err = run(
        tmp_path / "back", data, *back, "--from-password-command", f"cat {good}",
        CASNAP_FROM_PASSWORD_FILE=str(wrong),
    )  # fmt: skip
    assert code == 0, err
    # the variables of the role not in use are not options given: a copy --to is not refused
    code, _, err = run(
        src, data, "copy", "--to", str(enc), ids[1], CASNAP_TO_PASSWORD=PW_DST,
        CASNAP_FROM_PASSWORD_FILE=str(wrong),
    )  # fmt: skip
    assert code == 0, err
    before = raw_tree(enc)
    for role, args in (("to", to), ("from", back)):
        both = [f"--{role}-password-file", str(good), f"--{role}-password-command", f"cat {good}"]
        code, out, err = run(tmp_path / "other", data, *args, *both)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        assert f"--{role}-password-file" in err and f"--{role}-password-command" in err, err
    assert raw_tree(enc) == before and not (tmp_path / "other").exists()


def test_to_encryption_an_existing_destination_does_not_have_is_said(tmp_path, history) -> None:
    """`--to-encryption repokey` into an existing plain repository copied into it in plain, and
    said nothing; it notes now that the destination keeps its own encryption."""
    data, src, ids, _trees = history
    plain = tmp_path / "plain"
    assert run(plain, data, "init")[0] == 0
    code, _, err = run(src, data, "copy", "--to", str(plain), "--to-encryption", "repokey", ids[0])
    assert code == 0, err
    assert "--to-encryption repokey: the existing repository" in err and "is not encrypted" in err
    code, _, err = run(src, data, "copy", "--to", str(plain), "--to-encryption", "none", ids[1])
    assert code == 0 and "--to-encryption" not in err, err


def test_python_api_and_usage_errors(tmp_path, history) -> None:
    data, src, ids, _trees = history
    with Repository.open(src) as a, Repository.open_or_init(tmp_path / "b") as b:
        result = copy_snapshots(a, b, [ids[0]])
        assert [s.destination for s in result.snapshots] == [ids[0]]
        with pytest.raises(InvalidArgument, match="share the repository id"):
            copy_snapshots(a, a)
    assert run(src, data, "copy")[0] == 2
    assert run(src, data, "copy", "--to", "x", "--from", "y")[0] == 2
    assert run(src, data, "copy", "--to", str(src))[0] == 2
    assert run(src, data, "copy", "--to", "gs://bucket/x")[0] == 2
    shutil.copytree(src, tmp_path / "clone")  # two folders, one id: told as such
    code, _, err = run(src, data, "copy", "--to", str(tmp_path / "clone"))
    assert code == 2 and "copied from the other outside casnap" in err, err


def test_a_copied_snapshot_s_parent_is_found_by_its_origin(tmp_path, history) -> None:
    """FORMAT.md, "Copies": `parent` names the destination's copy of the parent when there is
    one. A snapshot committed into an encrypted copy, copied back, had parent null, though the
    first repository holds the snapshot its parent was copied from."""
    data, src, ids, _trees = history
    enc = tmp_path / "enc"
    assert run(src, data, "copy", "--to", str(enc), CASNAP_TO_PASSWORD=PW_DST)[0] == 0
    evolve_app(data, 3)
    code, out, err = run(enc, data, "commit", "-q", CASNAP_PASSWORD=PW_DST)
    assert code == 0, err
    new = out.strip()
    with Repository.open(enc, password=PW_DST) as repo:
        parent = repo.load_snapshot(repo.resolve(new)).parent
        assert parent is not None and parent != ids[2]  # the copy of ids[2] there
    code, out, err = run(
        src, data, "copy", "--from", str(enc), "--json", CASNAP_FROM_PASSWORD=PW_DST
    )
    assert code == 0, err
    (back,) = [s["destination"] for s in json.loads(out)["snapshots"] if s["copied"]]
    with Repository.open(src) as repo:
        assert repo.load_snapshot(repo.resolve(back)).parent == ids[2]


def test_origin_is_written_only_when_present(tmp_path, history) -> None:
    """A manifest without `origin` encodes as before (its id unchanged); one with it
    round-trips, and a copy into a plain repository records it."""
    data, src, ids, _trees = history
    with Repository.open(src) as repo:
        snap = repo.load_snapshot(repo.resolve(ids[0]))
        assert snap.origin is None and b'"origin":' not in snap.encode()
        assert repo.ids(snap.encode()).hex() == ids[0]
    enc, back = tmp_path / "enc", tmp_path / "back"
    assert run(src, data, "copy", "--to", str(enc), CASNAP_TO_PASSWORD=PW_DST)[0] == 0
    code, out, err = run(
        back, data, "copy", "--from", str(enc), "--to-encryption", "none",
        CASNAP_FROM_PASSWORD=PW_DST, CASNAP_PASSWORD=PW_SRC,
    )  # fmt: skip
    assert code == 0, err
    assert "not encrypted; no password used" in err
    with Repository.open(back) as repo, Repository.open(src) as first:
        origins = {s.origin for _sid, s in repo.snapshots()}
        assert origins == {(first.id, sid) for sid in ids}
        again = Snapshot.decode(next(iter(repo.snapshots()))[1].encode())
        assert again.origin in origins


@pytest.mark.parametrize("to", ["plain", "encrypted"])
def test_chunks_looked_up_and_named_in_many_small_batches_copy_the_same(
    tmp_path, history, monkeypatch, to
) -> None:
    """A copy looks up the source's chunks a batch at a time and names them with the
    destination's ids a few MiB at a time: with batches of a few chunks (every boundary inside
    a file, chunks repeated across batches) it sends exactly what one batch per file sends,
    and every snapshot restores whole."""
    data, src, ids, trees = history
    env = {} if to == "plain" else {"CASNAP_TO_PASSWORD": PW_DST}
    sent = []
    for name, batch, part in (("one", 1 << 16, 8 << 20), ("many", 7, 10_000)):
        monkeypatch.setattr(copier, "LOOKUP_BATCH", batch)
        monkeypatch.setattr(copier, "MAP_BYTES", part)
        dst = tmp_path / f"{to}-{name}"
        code, out, err = run(src, data, "copy", ids[0], "--to", str(dst), "--json", **env)
        assert code == 0, err
        code, out, err = run(src, data, "copy", "--to", str(dst), "--json", **env)
        assert code == 0, err
        second = json.loads(out)
        sent.append([(s["chunks_sent"], s["chunks_present"]) for s in second["snapshots"]])
        assert len(log_ids(dst, data, **({"CASNAP_PASSWORD": PW_DST} if env else {}))) == 3
    assert sent[0] == sent[1] and all(p > 0 for _s, p in sent[1][1:])
    pw = {"CASNAP_PASSWORD": PW_DST} if env else {}
    again = json.loads(run(src, data, "copy", "--to", str(dst), "--json", **env)[1])
    assert again["copied"] == 0
    mapping = {s["source"]: s["destination"] for s in again["snapshots"]}
    pairs = [(mapping[sid], tree) for sid, tree in zip(ids, trees, strict=True)]
    check_restores(dst, data, tmp_path, pairs, **pw)


@pytest.mark.parametrize("inner", ["snapshots/old", "index/old", "packs/old", "offsite"])
def test_a_repository_inside_another_is_never_made(tmp_path, history, inner) -> None:
    """A copy, an init or a first commit aimed at a folder inside a repository (`--to
    backups/snapshots/old`) is refused before anything is written: the outer repository's
    listings would take the inner one's files for its own (gc and every listing stopped on a
    `snapshots/old/index/<id>` taken for a manifest)."""
    data, src, ids, _trees = history
    before = raw_tree(src)
    nested = src / inner
    for args in (["copy", "--to", str(nested)], ["init"], ["commit", "-q"]):
        repo = src if args[0] == "copy" else nested
        code, out, err = run(repo, data, *args)
        assert code == 3, (args, out, err)
        assert len(err.strip().splitlines()) == 1 and "inside the casnap repository" in err, err
        assert raw_tree(src) == before
    code, out, err = run(src, data, "gc")
    assert code == 0, err
    assert sorted(log_ids(src, data)) == sorted(ids)


def _copy_stopped_while_creating(
    tmp_path: Path, data: Path, src: Path, dst: Path, signum: int
) -> int:
    """Run `copy --to dst` whose destination password command waits: the copy is reading the
    new destination's password (read before anything is made there) when signum reaches it."""
    ready = tmp_path / "asked"
    ready.unlink(missing_ok=True)
    waiter = tmp_path / "password.py"
    waiter.write_text(  # waits until casnap is gone (at most 2 min)
        f"import os, pathlib, time\nparent = os.getppid()\npathlib.Path({str(ready)!r}).touch()\n"
        "for _ in range(1200):\n    if os.getppid() != parent:\n        break\n"
        "    time.sleep(0.1)\nprint('pw')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in PASSWORD_VARS}
    env["PYTHONPATH"] = str(ROOT)
    args = ["--repo", str(src), "--data", str(data), "copy", "--to", str(dst)]
    command = f"{sys.executable} {waiter}"
    with subprocess.Popen(
        [sys.executable, "-m", "casnap", *args, "--to-password-command", command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as proc:
        from tests.helpers_reliability import wait_for

        wait_for(ready.exists, timeout=60)
        assert not dst.exists()  # nothing made before its password is read
        proc.send_signal(signum)
        return proc.wait(timeout=60)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_copy_interrupted_before_the_destination_s_config_takes_its_directory_back(
    tmp_path, history, signum
) -> None:
    data, src, ids, _trees = history
    dst = tmp_path / "new" / "dst"  # its parent is made too
    code = _copy_stopped_while_creating(tmp_path, data, src, dst, signum)
    assert code == 128 + signum
    assert not (tmp_path / "new").exists()
    code, _, err = run(src, data, "copy", "--to", str(dst), CASNAP_TO_PASSWORD=PW_DST)
    assert code == 0, err
    assert len(log_ids(dst, data, CASNAP_PASSWORD=PW_DST)) == 3


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_copy_whose_destination_s_config_does_not_fit_takes_it_back(
    tmp_path, history, encrypted
) -> None:
    """A full disk as the new destination's config is written (its key file fitted): the copy
    took back the folders it made but for the key file, which stood alone in keys/, read as an
    init under way by the next commands."""
    from tests.faults import faulty_local_backends

    data, src, _ids, _trees = history
    dst = tmp_path / "new" / "dst"
    env = {"CASNAP_TO_PASSWORD": PW_DST} if encrypted else {}
    with faulty_local_backends("put:enospc:1:config"):
        code, out, err = run(src, data, "copy", "--to", str(dst), **env)
    assert code == 8 and "no space left on device" in err, out + err
    assert not (tmp_path / "new").exists(), list((tmp_path / "new").rglob("*"))
    code, _, err = run(src, data, "copy", "--to", str(dst), **env)
    assert code == 0, err
    assert len(log_ids(dst, data, CASNAP_PASSWORD=PW_DST)) == 3


def test_a_copy_killed_before_the_destination_s_config_can_be_run_again(tmp_path, history) -> None:
    """A SIGKILL while the password is read leaves nothing: a rerun of the copy, or an init
    there, proceeds."""
    data, src, ids, _trees = history
    dst = tmp_path / "dst"
    assert _copy_stopped_while_creating(tmp_path, data, src, dst, signal.SIGKILL) == -9
    assert not dst.exists()
    code, _, err = run(src, data, "copy", "--to", str(dst), CASNAP_TO_PASSWORD=PW_DST)
    assert code == 0, err
    assert len(log_ids(dst, data, CASNAP_PASSWORD=PW_DST)) == 3
    again = tmp_path / "again"
    assert _copy_stopped_while_creating(tmp_path, data, src, again, signal.SIGKILL) == -9
    assert run(again, data, "init")[0] == 0


def test_a_copy_refused_after_its_destination_was_made_takes_it_back(tmp_path, history) -> None:
    """A usage error found once the destination was created (a --path outside the data dir)."""
    data, src, _ids, _trees = history
    dst = tmp_path / "dst"
    code, _, err = run(src, data, "copy", "--to", str(dst), "--path", str(tmp_path / "elsewhere"))
    assert code == 2, err
    assert not dst.exists()


def test_a_filter_that_selects_no_snapshot_copies_nothing_and_creates_nothing(
    tmp_path, history
) -> None:
    """As forget and prune: exit code 4 and one line; no destination, not even its parent."""
    data, src, _ids, _trees = history
    for args in (
        ["--tag", "none", "--to", str(tmp_path / "new" / "dst")],
        ["--path", "faiss", "--to", str(tmp_path / "new" / "dst")],  # no snapshot of it alone
        ["nosuchtag", "--to", str(tmp_path / "new" / "dst")],
    ):
        code, out, err = run(src, data, "copy", *args)
        assert (code, out) == (4, ""), err
        assert err.count("\n") == 1 and "no snapshot" in err, err
        assert not (tmp_path / "new").exists()
    code, _, err = run(tmp_path / "new" / "here", data, "copy", "--from", str(src), "--tag", "x")
    assert code == 4 and err.count("\n") == 1, err
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    assert run(existing, data, "init")[0] == 0
    before = objects(existing)
    code, _, err = run(src, data, "copy", "--tag", "none", "--to", str(existing))
    assert code == 4 and "nothing copied" in err, err
    assert objects(existing) == before
    with Repository.open(src) as a, Repository.open(existing) as b:
        with pytest.raises(SnapshotNotFound, match="tagged none"):
            copy_snapshots(a, b, select=selection.SnapshotFilter(tags=(("none",),)))


def test_an_encrypted_copy_killed_between_key_file_and_config_can_be_run_again(
    tmp_path, history
) -> None:
    """A SIGKILL after the new destination's key file, before its config: while that key file is
    fresh an init there is refused in one line (the init may be under way); once it is surely
    over, a rerun of the copy takes the folder over (its own key and config; the killed init's
    key file, which encrypts nothing, removed), and so does an init."""
    data, src, ids, _trees = history
    env = {k: v for k, v in os.environ.items() if k not in PASSWORD_VARS}
    env["CASNAP_TO_PASSWORD"] = PW_DST

    def killed(dst: Path) -> Path:
        args = ["--repo", str(src), "--data", str(data), "copy", "--to", str(dst)]
        done = subprocess.run(
            [sys.executable, "-m", "tests.faulty_cli", "put:kill:1", *args, "--to-encryption",
             "repokey"],
            cwd=ROOT, env=env, capture_output=True, check=False,
        )  # fmt: skip
        assert done.returncode == -signal.SIGKILL, done.stderr
        assert not (dst / "config").exists()
        (stale,) = (dst / "keys").iterdir()
        return stale

    def aged(stale: Path) -> None:  # as an init killed a minute ago left it
        then = time.time() - 60
        os.utime(stale, (then, then))
        os.utime(stale.parent, (then, then))

    dst = tmp_path / "dst"
    stale = killed(dst)
    code, _, err = run(dst, data, "init", "--encryption", "repokey", CASNAP_PASSWORD=PW_DST)
    assert code == 3 and "try again in a few seconds" in err and err.count("\n") == 1, err
    aged(stale)
    code, _, err = run(src, data, "copy", "--to", str(dst), CASNAP_TO_PASSWORD=PW_DST)
    assert code == 0, err
    assert len(log_ids(dst, data, CASNAP_PASSWORD=PW_DST)) == len(ids)  # keyed ids: new ones
    assert not stale.exists() and len(list((dst / "keys").iterdir())) == 1
    code, out, err = run(dst, data, "verify", "--read-data", CASNAP_PASSWORD=PW_DST)
    assert code == 0, out + err
    again = tmp_path / "again"
    aged(killed(again))
    code, _, err = run(again, data, "init", "--encryption", "repokey", CASNAP_PASSWORD=PW_DST)
    assert code == 0, err
    assert len(list((again / "keys").iterdir())) == 1


@pytest.mark.parametrize("fresh", [False, True])
def test_a_folder_holding_other_files_under_keys_is_not_taken_over(
    tmp_path: Path, fresh: bool
) -> None:
    """A folder whose only content is keys/ with files no casnap init writes (`keys/<32 hex
    digits>`), such as a user's own keys: no killed init's, so an init refuses it as not empty
    (not "under way", even while fresh) and removes nothing."""
    dst = tmp_path / "secrets"
    (dst / "keys").mkdir(parents=True)
    mine = dst / "keys" / "deploy.pem"
    mine.write_text("mine\n")
    if not fresh:
        then = time.time() - 60
        os.utime(mine, (then, then))
        os.utime(mine.parent, (then, then))
    code, _, err = run(dst, tmp_path, "init", "--encryption", "repokey", CASNAP_PASSWORD=PW_DST)
    assert code == 3 and "not empty and not a casnap repository" in err, err
    assert mine.read_text() == "mine\n" and sorted(os.listdir(dst)) == ["keys"]


def test_a_copy_stores_no_manifest_casnap_would_refuse(tmp_path, history, monkeypatch) -> None:
    """A manifest made anew (another repository's ids) that its readers would refuse, here by
    an injected fault naming no snapshot as its parent, is a fault of casnap's own: refused
    before it is stored, its packs taken back, the snapshots copied before it kept."""
    data, src, ids, _trees = history
    dst = tmp_path / "enc"
    Repository.init(dst, password=PW_DST).close()
    monkeypatch.setattr(copier._CopyRun, "_parent", lambda self, sid: "no id" if sid else None)
    with Repository.open(src) as a, Repository.open(dst, PW_DST) as b:
        with pytest.raises(InternalError, match=f"{ids[1][:8]} not copied.*not an object id"):
            copy_snapshots(a, b)
    monkeypatch.undo()
    with Repository.open(dst, PW_DST) as b:
        assert len(b.snapshots(files=True)) == 1
        b.ensure_index()
        assert len(b.store.index_files) == 1  # the first snapshot's
    code, _, err = run(src, data, "copy", "--to", str(dst), CASNAP_TO_PASSWORD=PW_DST)
    assert code == 0, err
    assert len(log_ids(dst, data, CASNAP_PASSWORD=PW_DST)) == 3
