"""What the command line draws and prints: a progress bar that fits the terminal, names with
control characters escaped (JSON exact)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from casnap.backends import LocalBackend
from casnap.cli import ProgressBar, cli
from casnap.cli.output import printable
from casnap.ids import hash_bytes
from casnap.manifest import compress_manifest, decompress_manifest
from tests.helpers_smoke import make_app

MIB = 1024 * 1024


def draw(bar: ProgressBar, total: int = 300 * MIB, steps: int = 7) -> list[str]:
    """Feed a bar a run and return the lines it drew (each redraw, as the terminal shows it)."""
    for i in range(steps + 1):
        bar(total * i // steps, total)
        bar.drawn_at = 0.0  # every call redraws
    bar.close()
    return [seg.rstrip("\n") for seg in bar.file.getvalue().split("\r") if seg]


@pytest.mark.parametrize("columns", [12, 20, 40, 60, 80, 100, 200])
def test_the_bar_fits_the_terminal(columns: int) -> None:
    lines = draw(ProgressBar("restore", width=columns, file=io.StringIO()))
    assert len(lines) == 8
    assert all(len(line) <= columns - 1 for line in lines), (columns, lines)
    assert all("%" in line for line in lines)
    if columns >= 80:
        assert "restore" in lines[3] and "MiB / 300.0 MiB" in lines[3] and "/s" in lines[3]
        assert "ETA" in lines[3] and "[" in lines[3]
    if columns >= 40:
        assert "[" in lines[3]
    assert "100%" in lines[-1]


def test_the_bar_reads_the_width_from_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "50")
    lines = draw(ProgressBar("restore", file=io.StringIO()))
    assert max(len(line) for line in lines) == 49


def test_a_new_run_starts_a_new_line_with_the_next_label() -> None:
    bar = ProgressBar("verify", "read data", width=80, file=io.StringIO())
    bar(0, 10)
    bar(10, 10)
    bar(0, 20)
    bar(20, 20)
    bar.close()
    lines = bar.file.getvalue().split("\n")
    assert lines[0].lstrip("\r").startswith("verify") and "100%" in lines[0]
    assert lines[1].split("\r")[-1].startswith("read data") and "100%" in lines[1]


NAMES = {
    "two\nlines.db": "two\\nlines.db",
    "tab\there.txt": "tab\\there.txt",
    "esc\x1b[2J.txt": "esc\\x1b[2J.txt",
    "ünïcode.txt": "ünïcode.txt",
}


def test_printable_escapes_what_would_break_a_line() -> None:
    for name, shown in NAMES.items():
        assert printable(name) == shown
    assert printable("back\\slash") == "back\\\\slash"  # unambiguous, as ls -b
    assert printable("bad\udcff") == "bad\\xff"
    assert printable("rtl\u202eevil") == "rtl\\u202eevil"


def test_show_escapes_names_and_json_keeps_them(tmp_path: Path) -> None:
    data = make_app(tmp_path / "data")
    for name in NAMES:
        (data / name).write_bytes(b"x")
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    result = CliRunner().invoke(cli, [*base, "commit", "-m", "multi\nline"])
    assert result.exit_code == 0, result.stderr
    result = CliRunner().invoke(cli, [*base, "show", "latest"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    for shown in NAMES.values():
        assert sum(line.endswith("  " + shown) for line in lines) == 1, shown
    assert "\x1b" not in result.stdout and "\t" not in result.stdout
    assert "message  multi\\nline" in result.stdout
    table = lines[lines.index("") + 2 :]
    assert len(table) == 7 + len(NAMES)  # one line per file
    out = json.loads(CliRunner().invoke(cli, [*base, "show", "latest", "--json"]).stdout)
    assert set(NAMES) <= {f["path"] for f in out["files"]}
    result = CliRunner().invoke(cli, [*base, "log"])
    assert len(result.stdout.splitlines()) == 2 and "multi\\nline" in result.stdout


def _craft(repo_dir: Path, **fields: object) -> str:
    """Store a copy of the repository's one manifest with fields replaced (as another program
    could write it); its id."""
    backend = LocalBackend(repo_dir)
    (key, _size), *_ = backend.list("snapshots/")
    d = json.loads(decompress_manifest(backend.get(key), key))
    d.update(fields)
    raw = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    new = hash_bytes(raw).hex()
    backend.put(f"snapshots/{new}", compress_manifest(raw))
    return new


def test_show_and_prune_escape_a_snapshot_s_host_user_and_tags(tmp_path: Path) -> None:
    """Fields of a manifest casnap did not write (a bell, a carriage return, a lone surrogate
    no terminal can print) are shown escaped, as its names are, not written raw or failing."""
    data = make_app(tmp_path / "data")
    base = ["--repo", str(tmp_path / "repo"), "--data", str(data)]
    assert CliRunner().invoke(cli, [*base, "commit"]).exit_code == 0
    sid = _craft(tmp_path / "repo", host="h\a\r\ud800", user="u\a", tags=["t\a\ud800"])
    result = CliRunner().invoke(cli, [*base, "show", sid[:8]])
    assert result.exit_code == 0, result.output
    assert "(u\\x07@h\\x07\\r\\ud800)" in result.stdout and "\a" not in result.stdout
    result = CliRunner().invoke(cli, [*base, "prune", "--keep-last", "1", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "[t\\x07\\ud800]" in result.stdout and "\a" not in result.stdout


ODD = "we\nird\x1b[2J"  # a newline and a terminal's clear-screen in a folder's name
SHOWN = "we\\nird\\x1b[2J"


def _one_line_each(text: str) -> list[str]:
    """The lines of some output, none of them the torn-off half of a name, none moving the
    cursor."""
    assert "\x1b" not in text and "\r" not in text, text
    lines = text.splitlines()
    assert not [line for line in lines if line.startswith("ird")], text
    return lines


def test_success_and_info_lines_escape_paths_as_error_lines_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`created repository at <path>` and `restored snapshot ... into <path>` wrote a newline
    in the path as it is (and a terminal's escape sequences), where an error line escapes
    them: every line that names a path or a string from a repository escapes it the same way."""
    monkeypatch.chdir(tmp_path)
    data = make_app(tmp_path / f"data{ODD}")
    (data / f"faiss/odd{ODD}.index").write_bytes((data / "faiss" / "ivf.index").read_bytes())
    repo, out, copy = (tmp_path / f"{name}{ODD}" for name in ("repo", "out", "copy"))
    base = ["--repo", str(repo), "--data", str(data)]
    runner = CliRunner()

    def run(*args: str, at: list[str] = base) -> tuple[list[str], list[str]]:
        result = runner.invoke(cli, [*at, *args])
        assert result.exit_code == 0, result.output
        return _one_line_each(result.stdout), _one_line_each(result.stderr)

    _, err = run("init")
    assert err[0].endswith(f" at {tmp_path}/repo{SHOWN}"), err
    _, err = run("commit", at=["--repo", str(tmp_path / f"first{ODD}"), "--data", str(data)])
    assert err[0] == f"created repository at {tmp_path}/first{SHOWN}", err
    run("commit")
    _, err = run("checkout", "latest", "--to", str(out))
    assert any(f" into {tmp_path}/out{SHOWN}: " in line for line in err), err
    _, err = run("copy", "latest", "--to", str(copy))
    assert err[0] == f"created repository at {tmp_path}/copy{SHOWN}", err
    lines, _ = run("copy", "latest", "--to", str(copy))
    assert any(f" already in {tmp_path}/copy{SHOWN} as " in line for line in lines), lines
    lines, _ = run("verify", "--smoke")
    assert any(f"odd{SHOWN}.index" in line for line in lines), lines
    stale = {"host": f"host{ODD}", "pid": 1, "exclusive": False, "operation": f"op{ODD}"}
    (repo / "locks" / ("ab" * 32)).write_text(json.dumps(stale))
    lines, err = run("unlock")
    assert any(f"on host{SHOWN}" in line for line in lines + err), (lines, err)


def test_copy_escapes_the_file_a_damaged_snapshot_names(tmp_path: Path) -> None:
    """The `not copied ID: damaged in the source: FILE: ...` line names a file of the source's
    snapshot: escaped, so a newline in its name cannot start a line of its own."""
    data = tmp_path / "data"
    data.mkdir()
    (data / f"b{ODD}.bin").write_bytes(bytes(range(256)) * 400)
    src = tmp_path / "src"
    base = ["--repo", str(src), "--data", str(data)]
    assert CliRunner().invoke(cli, [*base, "commit"]).exit_code == 0
    for pack in (src / "packs").rglob("*"):
        if pack.is_file():
            pack.unlink()
    result = CliRunner().invoke(cli, [*base, "copy", "latest", "--to", str(tmp_path / "dst")])
    assert result.exit_code != 0
    lines = _one_line_each(result.stdout)
    assert any(line.startswith("not copied ") and f"b{SHOWN}.bin" in line for line in lines), lines
    assert len(_one_line_each(result.stderr)) == 1, result.stderr


def test_the_smoke_summary_counts_in_words_that_agree() -> None:
    """One check on one file is said so ("1 checks on 1 files" before)."""
    from casnap.cli.restoring import _smoke_summary

    one = {"ok": True, "checks": [{"check": "faiss-read", "path": "a.index"}]}
    assert _smoke_summary(one) == "smoke checks passed: 1 check on 1 file"
    two = {"ok": True, "checks": [{"check": "sqlite-integrity", "path": "a.db"}] * 2}
    assert _smoke_summary(two) == "smoke checks passed: 2 checks on 1 file"
    cmd = {"ok": False, "checks": [{"check": "smoke-cmd", "path": ""}]}
    assert _smoke_summary(cmd) == "smoke checks FAILED: 1 check on 0 files, smoke command included"


def test_a_terminal_that_cannot_show_a_name_gets_it_escaped(tmp_path: Path) -> None:
    """Under a locale whose encoding lacks a name's characters (latin-1, PYTHONIOENCODING),
    `ls` and `log` stopped with "internal error: UnicodeEncodeError" (exit 70): what the
    output's encoding cannot hold is written as a Python escape instead, as stderr does."""
    import os
    import subprocess
    import sys

    data = tmp_path / "data"
    data.mkdir()
    (data / "caf\u00e9 \U0001f600.txt").write_text("x")
    base = [sys.executable, "-m", "casnap", "--repo", str(tmp_path / "r"), "--data", str(data)]
    env = {**os.environ, "PYTHONIOENCODING": "latin-1"}
    done = subprocess.run([*base, "commit", "-m", "\U0001f600"], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr
    for args in (["ls", "latest"], ["log"]):
        done = subprocess.run([*base, *args], env=env, capture_output=True)
        assert done.returncode == 0, done.stderr
        assert b"\\U0001f600" in done.stdout
    assert (
        "caf\u00e9".encode("latin-1")
        in subprocess.run([*base, "ls", "latest"], env=env, capture_output=True).stdout
    )
