"""The command line through click's CliRunner: output, JSON, errors and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap.cli import cli
from casnap.errors import EXIT_CODES
from tests.conftest import evolve_app
from tests.util import snapshot_tree


def run(repo: Path, data: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--repo", str(repo), "--data", str(data), *args])
    return result.exit_code, result.stdout, result.stderr


def test_commit_log_show_checkout(app: Path, tmp_path: Path) -> None:
    repo = tmp_path / "backups"
    code, out, err = run(repo, app, "commit", "-m", "first", "--tag", "t1")
    assert code == 0 and "saved" in err
    first = out.strip()
    assert len(first) == 64
    state = snapshot_tree(app)
    evolve_app(app, 1)
    code, out, _ = run(repo, app, "commit", "--json")
    assert code == 0
    info = json.loads(out)
    for key in ("id", "files_new", "files_changed", "files_unchanged", "bytes_read", "bytes_added"):
        assert key in info
    assert info["files_changed"] >= 2
    code, out, _ = run(repo, app, "log", "--json")
    rows = json.loads(out)
    assert [r["id"] for r in rows] == [info["id"], first]  # newest first
    assert rows[1]["message"] == "first" and rows[1]["tags"] == ["t1"] and rows[1]["files"] == 7
    code, out, _ = run(repo, app, "log")
    assert code == 0 and first[:8] in out and "[t1] first" in out
    code, out, _ = run(repo, app, "show", first[:8])
    assert code == 0 and "faiss/ivf.index" in out and "sqlite" in out
    code, out, _ = run(repo, app, "show", "latest", "--json")
    assert json.loads(out)["id"] == info["id"]
    code, out, err = run(repo, app, "checkout", "t1", "--to", str(tmp_path / "out"))
    assert code == 0 and "verified" in err
    assert snapshot_tree(tmp_path / "out") == state


def test_commit_creates_repository_in_placeholder_dir(app: Path, tmp_path: Path) -> None:
    repo = tmp_path / "backups"
    repo.mkdir()
    (repo / "README.md").write_text("backups live here")
    code, _, _ = run(repo, app, "commit")
    assert code == 0 and (repo / "config").is_file()


@pytest.mark.parametrize(
    ("setup", "args", "code", "message"),
    [
        ("none", ["log"], EXIT_CODES["repository"], "no casnap repository"),
        ("junk", ["commit"], EXIT_CODES["repository"], "not a casnap repository"),
        ("repo", ["checkout", "abcd1234"], EXIT_CODES["not-found"], "no snapshot"),
        ("repo", ["show", "latest"], EXIT_CODES["not-found"], "no snapshots"),
        ("newer", ["log"], EXIT_CODES["repository"], "upgrade casnap"),
        ("badconfig", ["log"], EXIT_CODES["integrity"], "config is damaged"),
        ("repo", ["init"], EXIT_CODES["repository"], "already holds"),
    ],
)
def test_errors_are_one_line_with_documented_exit_code(
    app: Path, tmp_path: Path, setup: str, args: list[str], code: int, message: str
) -> None:
    repo = tmp_path / "backups"
    if setup == "junk":
        repo.mkdir()
        (repo / "precious.txt").write_text("do not overwrite")
    elif setup != "none":
        assert run(repo, app, "init")[0] == 0
    if setup == "newer":
        cfg = json.loads((repo / "config").read_text())
        cfg["casnap_format"] = 99
        (repo / "config").write_text(json.dumps(cfg))
    if setup == "badconfig":
        (repo / "config").write_text("{not json")
    got, out, err = run(repo, app, *args)
    assert got == code
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    if setup == "junk":
        assert sorted(p.name for p in repo.iterdir()) == ["precious.txt"]


def test_missing_data_dir_is_a_source_error(tmp_path: Path) -> None:
    code, _, err = run(tmp_path / "repo", tmp_path / "nope", "commit")
    assert code == EXIT_CODES["source"] and "does not exist" in err
    assert not (tmp_path / "repo").exists()  # a failed first commit creates no repository


def test_every_command_has_help() -> None:
    for name, command in cli.commands.items():
        assert command.help and len(command.help) > 20, name
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["frobnicate"],
        ["commit", "--no-such-option"],
        ["checkout"],
        ["gc", "--max-unused", "150"],
        ["demo", "--size-mb", "-3"],
        ["verify", "--read-data", "--read-data-subset", "10"],
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(tmp_path: Path, args: list[str]) -> None:
    code, _, err = run(tmp_path / "repo", tmp_path / "data", *args)
    assert code == EXIT_CODES["usage"]
    assert len(err.strip().splitlines()) == 1 and err.startswith("casnap: error: ")
    assert not (tmp_path / "data").exists()


def test_demo_on_its_own_sample_says_size_mb_is_not_used(tmp_path: Path) -> None:
    """A second demo changes the sample already there (its seed drives the change); a --size-mb
    given then makes nothing of that size, and demo says so rather than passing over it."""
    repo, data = tmp_path / "backups", tmp_path / "data"
    code, _, err = run(repo, data, "demo", "--size-mb", "1")
    assert code == 0, err
    code, _, err = run(repo, data, "demo", "--size-mb", "2")
    assert code == 0, err
    assert "--size-mb 2 is not used" in err
    code, _, err = run(repo, data, "demo")
    assert code == 0 and "not used" not in err


def test_a_checkout_stopped_by_damage_says_what_to_do_next(app: Path, tmp_path: Path) -> None:
    """A damaged pack stops a checkout (exit 5, the target untouched); the one line names the
    damage and the way on: verify --read-data to see what it spoils, an older snapshot."""
    repo = tmp_path / "backups"
    assert run(repo, app, "commit", "-q")[0] == 0
    for pack in (repo / "packs").rglob("*"):
        if pack.is_file():
            blob = bytearray(pack.read_bytes())
            blob[len(blob) // 2] ^= 0xFF
            pack.write_bytes(bytes(blob))
    code, _, err = run(repo, app, "checkout", "latest", "--to", str(tmp_path / "out"))
    assert code == EXIT_CODES["integrity"], err
    assert len(err.strip().splitlines()) == 1, err
    assert "verify --read-data" in err and "older snapshot" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
