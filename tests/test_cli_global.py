"""Global behaviour of the command line: the repository location, messages about it, -q anywhere,
the `check` alias, init --json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap.cli import cli
from casnap.errors import EXIT_CODES
from tests.helpers_smoke import make_app


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("location", ["gs://bucket/x", "sftp://host/backups", "file:///srv/b"])
def test_a_repository_url_other_than_s3_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, location: str
) -> None:
    monkeypatch.chdir(tmp_path)
    for args, env in (
        (["--repo", location, "init"], None),
        (["init"], {"CASNAP_REPO": location}),
        (["--data", "data", "--repo", location, "commit"], None),
    ):
        code, _, err = invoke(*args, env=env)
        assert code == EXIT_CODES["usage"], err
        assert len(err.strip().splitlines()) == 1 and location in err
        assert "not supported" in err
        if env:
            assert "CASNAP_REPO" in err
    assert list(tmp_path.iterdir()) == []  # no local directory was made of the URL


def test_commit_says_when_it_creates_the_repository(tmp_path: Path) -> None:
    data = make_app(tmp_path / "data")
    repo = tmp_path / "backpus"  # a typo
    base = ["--repo", str(repo), "--data", str(data)]
    code, _, err = invoke(*base, "commit")
    assert code == 0
    assert f"created repository at {repo}" in err
    code, _, err = invoke(*base, "commit")
    assert code == 0 and "created" not in err
    code, _, err = invoke("-q", "--repo", str(tmp_path / "quiet"), "--data", str(data), "commit")
    assert code == 0 and err == ""  # a message: -q silences it (documented)


def test_a_missing_repository_names_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for command in (["log"], ["show", "latest"], ["verify"], ["stats"], ["diff", "latest"]):
        code, _, err = invoke(*command)
        assert code == EXIT_CODES["repository"], err
        assert err.strip() == (
            f"casnap: error: no casnap repository at {elsewhere / 'backups'}; give --repo DIR or "
            "set CASNAP_REPO (casnap init creates one)"
        )
    assert not (elsewhere / "backups").exists()


def test_quiet_is_accepted_after_the_command(tmp_path: Path) -> None:
    data = make_app(tmp_path / "data")
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    code, out, err = invoke(*base, "commit", "-q")
    assert code == 0 and err == "" and len(out.strip()) == 64
    code, out, err = invoke(*base, "checkout", "latest", "--to", str(tmp_path / "o"), "--quiet")
    assert code == 0 and err == "" and out == ""
    code, out, err = invoke(*base, "log", "--json", "-q")
    assert code == 0 and err == "" and len(json.loads(out)) == 1
    code, out, err = invoke(*base, "gc", "-q")
    assert code == 0 and err == "" and "freed" in out  # results still print


def test_check_is_an_alias_of_verify(tmp_path: Path) -> None:
    data = make_app(tmp_path / "data")
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    assert invoke(*base, "commit")[0] == 0
    code, out, err = invoke(*base, "check", "--json")
    assert code == 0, err
    assert json.loads(out)["ok"] is True
    code, out, _ = invoke(*base, "check")
    assert code == 0 and out.startswith("verify: no problems found")
    code, out, _ = invoke("--help")
    assert "  check " in out and "  verify " in out


def test_init_json(tmp_path: Path) -> None:
    code, out, err = invoke("--repo", str(tmp_path / "r"), "init", "--json")
    assert code == 0, err
    info = json.loads(out)
    config = json.loads((tmp_path / "r" / "config").read_text())
    assert info == {
        "id": config["id"],
        "path": str(tmp_path / "r"),
        "format": config["casnap_format"],
        "encryption": "none",
    }
    assert os.path.isabs(info["path"])


def test_log_and_stats_agree_on_bytes_added(tmp_path: Path) -> None:
    """One definition: what the snapshot's commit added to the repository, manifest included."""
    from tests.helpers_smoke import evolve_app

    data = make_app(tmp_path / "data")
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    committed = {}
    for step in range(3):
        info = json.loads(invoke(*base, "commit", "--json")[1])
        committed[info["id"]] = info["bytes_added"]
        evolve_app(data, step + 1)
    first = next(iter(committed))
    assert invoke(*base, "forget", first)[0] == 0  # later figures must not move
    del committed[first]
    log = {r["id"]: r["bytes_added"] for r in json.loads(invoke(*base, "log", "--json")[1])}
    stats = json.loads(invoke(*base, "stats", "--json")[1])["snapshots_added"]
    assert log == committed
    assert {s["id"]: s["bytes_added"] for s in stats} == committed
    text = invoke(*base, "stats")[1]
    for sid in committed:
        row = next(line for line in text.splitlines() if line.startswith(sid[:8]))
        log_row = next(line for line in invoke(*base, "log")[1].splitlines() if sid[:8] in line)
        assert row.split()[5:7] == log_row.split()[6:8]  # the same ADDED column


def test_json_paths_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_app(tmp_path / "data")
    base = ["--repo", "repo", "--data", "data"]
    assert invoke(*base, "commit")[0] == 0
    code, out, err = invoke(*base, "checkout", "latest", "--to", "out", "--json")
    assert code == 0, err
    assert json.loads(out)["target"] == str(tmp_path / "out")
    code, out, err = invoke(*base, "diff", "latest", "--json")
    assert code == 0 and json.loads(out)["b"]["data_dir"] == str(tmp_path / "data")


def test_an_error_stays_on_one_line(tmp_path: Path) -> None:
    data = make_app(tmp_path / "data")
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    assert invoke(*base, "commit")[0] == 0
    code, _, err = invoke(*base, "checkout", "latest", "no\nsuch\x07", "--to", str(tmp_path))
    assert code == EXIT_CODES["not-found"]
    assert err.count("\n") == 1 and "\x07" not in err and "no\\nsuch\\x07" in err


def test_quiet_is_accepted_after_a_key_subcommand(tmp_path: Path) -> None:
    """`-q` after the command works for `key list` as for every other command (README)."""
    env = {"CASNAP_PASSWORD": "pw of the keys test"}
    repo = ["--repo", str(tmp_path / "repo")]
    assert invoke(*repo, "init", "--encryption", "repokey", env=env)[0] == 0
    for args in (["key", "list", "-q"], ["key", "list", "--quiet", "--json"]):
        code, out, err = invoke(*repo, *args, env=env)
        assert code == 0, err
        assert out.startswith(("* ", "[")) and err == ""


def test_check_help_reads_as_verify_help() -> None:
    """`check --help` is verify's text under one line naming the alias: the same lines, none
    indented by the docstring's own indentation."""
    code, check_help, _ = invoke("check", "--help")
    assert code == 0
    code, verify_help, _ = invoke("verify", "--help")
    assert code == 0
    body = verify_help.split("\n\n", 1)[1]  # after the usage line
    assert "restic's name for it" in check_help
    assert body in check_help
    assert not any(line.startswith("      Without") for line in check_help.splitlines())


def test_a_checkout_path_not_in_the_snapshot_names_the_snapshot(tmp_path: Path) -> None:
    data = make_app(tmp_path / "data")
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    code, out, _ = invoke(*base, "commit")
    assert code == 0
    sid = out.strip()
    code, _, err = invoke(*base, "checkout", "latest", "nothing-here", "--to", str(tmp_path / "o"))
    assert code == EXIT_CODES["not-found"]
    assert err.strip() == f"casnap: error: nothing-here is not in snapshot {sid[:8]}"
