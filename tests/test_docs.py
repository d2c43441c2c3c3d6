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


def readme_rows() -> dict[str, str]:
    """The command cell of each row of README's command table, by command name."""
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        match = re.match(r"\| `casnap ([a-z-]+)[^`]*` \|", line)
        if match:
            rows[match.group(1)] = match.group(0)
    return rows


def test_the_readme_table_lists_every_command_and_option() -> None:
    rows = readme_rows()
    for name, command in cli.commands.items():
        assert name in rows, f"README's command table has no row for {name}"
        for param in command.params:
            if isinstance(param, click.Option):
                if param.name == "quiet":
                    continue  # a global option, also taken after the command
                found = any(re.search(rf"{re.escape(o)}(?![\w-])", rows[name]) for o in param.opts)
                assert found, f"README's row for {name} does not list {'/'.join(param.opts)}"
            elif isinstance(param, click.Argument):
                assert param.name.upper() in rows[name], f"{name} {param.name.upper()}"
    readme = (ROOT / "README.md").read_text()
    globals_text = readme[readme.index("Global options") :][:1200]
    for param in cli.params:
        if isinstance(param, click.Option) and param.name not in ("help", "version"):
            assert param.opts[-1] in globals_text, f"global option {param.opts[-1]}"


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
    "init": ["--repo", "NEWREPO", "init"],
    "commit": ["commit"],
    "checkout": ["checkout", "FIRST", "--to", "OUT"],
    "verify": ["verify", "--smoke"],
    "check": ["check", "--read-data"],
    "unlock": ["unlock"],
    "diff": ["diff", "FIRST"],
    "log": ["log"],
    "show": ["show", "FIRST"],
    "ls": ["ls", "FIRST"],
    "import": ["import", "COPIES"],
    "copy": ["copy", "--to", "NEWREPO"],
    "gc": ["gc", "--dry-run"],
    "prune": ["prune", "--keep-last", "1"],
    "forget": ["forget", "FIRST", "--prune"],
    "repair-index": ["repair-index"],
    "stats": ["stats"],
    "stats-one": ["stats", "FIRST"],
}


@pytest.mark.parametrize("run", sorted(JSON_RUNS))
def test_every_json_field_is_documented(run: str, tmp_path: Path) -> None:
    command = next(a for a in JSON_RUNS[run] if a[0].isalpha() and a.islower())
    data = make_app(tmp_path / "data")
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    first = CliRunner().invoke(cli, [*base, "commit"]).stdout.strip()
    evolve_app(data)
    CliRunner().invoke(cli, [*base, "commit"])
    copies = tmp_path / "copies"
    copies.mkdir()
    (copies / "app_20250101_120000.db").write_bytes((data / "app.db").read_bytes())
    swap = {
        "FIRST": first,
        "OUT": str(tmp_path / "out"),
        "NEWREPO": str(tmp_path / "new"),
        "COPIES": str(copies),
    }
    args = [swap.get(a, a) for a in JSON_RUNS[run]]
    result = CliRunner().invoke(cli, [*base, *args, "--json"])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    section = json_section(command)
    rows = out if isinstance(out, list) else [out]
    for key in rows[0]:
        assert f"`{key}`" in section, f"{command} --json field {key} is not in docs/JSON.md"


def option_help(command: click.Command, name: str) -> str:
    return " ".join(next(p.help for p in command.params if p.name == name).split())


def test_strict_help_names_a_database_cut_short_which_it_refuses_too() -> None:
    """commit --strict refuses a SQLite database cut short (exit 9), as README's exit codes
    say; its help listed only the index, framework store and sidecar problems."""
    text = option_help(cli.commands["commit"], "strict")
    for problem in ("FAISS index is shorter", "framework store", "sidecar", "database cut short"):
        assert problem in text, problem


def test_no_lock_help_names_the_commands_that_take_it() -> None:
    """The global --no-lock's help lists the commands its refusal names (check among them)."""
    text = option_help(cli, "no_lock")
    refusal = CliRunner().invoke(cli, ["--no-lock", "--repo", "/nonexistent", "gc"]).stderr
    names = re.search(r"\(([a-z, -]+)\)", refusal)
    assert names is not None, refusal
    for name in names.group(1).split(", "):
        assert re.search(rf"\b{name}\b", text), name


def test_naming_snapshots_lists_every_command_that_takes_the_filters() -> None:
    """USAGE's "Naming snapshots" lists the commands that take --path, --tag and --host with a
    SNAPSHOT; it left out ls, cat and copy, which take them too."""
    text = (Path(__file__).parent.parent / "docs" / "USAGE.md").read_text()
    found = re.search(r"Every command that takes one \(([a-z, \n]+)\)", text)
    assert found is not None
    listed = {name.strip() for name in found.group(1).split(",")}
    taking = {
        name
        for name, command in cli.commands.items()
        if {"filter_paths", "filter_tags", "host"} <= {p.name for p in command.params}
        and any(isinstance(p, click.Argument) for p in command.params)
    }
    assert taking - {"log"} <= listed, sorted(taking - listed)


def test_the_docs_name_only_files_and_tests_that_exist() -> None:
    """Every `casnap/...py`, `tests/...py` and `benchmarks/...py` the README and docs/ name is
    there, and so is every test function they name (`tests/test_gc.py::test_...`); FORMAT.md
    sent gc's reader to `casnap/collect.py`, which never existed (the module is collector.py)."""
    pages = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *(ROOT / "docs").glob("*.md")]
    stale = []
    for page in pages:
        for ref in re.findall(
            r"\b((?:casnap|tests|benchmarks)/[\w/]+\.py)(?:::(\w+))?", page.read_text()
        ):
            path, function = ref
            if not (ROOT / path).is_file():
                stale.append(f"{page.name}: {path}")
            elif function and f"def {function}(" not in (ROOT / path).read_text():
                stale.append(f"{page.name}: {path}::{function}")
    assert not stale, stale


def test_readme_exit_code_4_names_a_keep_tag_no_snapshot_carries() -> None:
    """prune exits 4 when a `--keep-tag` names a tag no snapshot carries (docs/USAGE.md,
    "casnap prune"); README's table of exit codes listed only its `--path` filter there."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| 4 |"))
    assert "--keep-tag" in row, row
