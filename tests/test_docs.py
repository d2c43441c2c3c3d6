"""Every command has help and a usage section; every --json field is documented."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from casnap.cli import cli
from tests.helpers_smoke import evolve_app, make_app

ROOT = Path(__file__).resolve().parent.parent


def test_every_command_has_help_and_a_usage_section() -> None:
    docs = (ROOT / "README.md").read_text() + (ROOT / "docs" / "USAGE.md").read_text()
    for name, command in cli.commands.items():
        assert command.help and len(command.help) > 40, name
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.stdout, name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} --{param.name} has no help"
        assert f"casnap {name}" in docs, f"{name} is not described in README.md or docs/USAGE.md"


def json_section(command: str) -> str:
    text = (ROOT / "docs" / "JSON.md").read_text()
    match = re.search(rf"## [^\n]*`casnap {command} --json`[^\n]*\n(.*?)(?=\n## |\Z)", text, re.S)
    assert match, f"docs/JSON.md has no section for {command}"
    return match.group(1)


def test_every_command_with_json_has_a_section() -> None:
    for name, command in cli.commands.items():
        if any(p.name == "as_json" for p in command.params):
            json_section(name)


JSON_RUNS = {
    "commit": ["commit"],
    "checkout": ["checkout", "FIRST", "--to", "OUT"],
    "verify": ["verify", "--smoke"],
    "diff": ["diff", "FIRST"],
    "log": ["log"],
    "show": ["show", "FIRST"],
    "gc": ["gc", "--dry-run"],
    "prune": ["prune", "--keep-last", "1"],
    "forget": ["forget", "FIRST", "--prune"],
    "repair-index": ["repair-index"],
    "stats": ["stats"],
    "stats-one": ["stats", "FIRST"],
}


@pytest.mark.parametrize("run", sorted(JSON_RUNS))
def test_every_json_field_is_documented(run: str, tmp_path: Path) -> None:
    command = JSON_RUNS[run][0]
    data = make_app(tmp_path / "data")
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    first = CliRunner().invoke(cli, [*base, "commit"]).stdout.strip()
    evolve_app(data)
    CliRunner().invoke(cli, [*base, "commit"])
    swap = {"FIRST": first, "OUT": str(tmp_path / "out")}
    args = [swap.get(a, a) for a in JSON_RUNS[run]]
    result = CliRunner().invoke(cli, [*base, *args, "--json"])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    section = json_section(command)
    rows = out if isinstance(out, list) else [out]
    for key in rows[0]:
        assert f"`{key}`" in section, f"{command} --json field {key} is not in docs/JSON.md"
