"""The repository config read by one parser: every field of the JSON type casnap writes, no field
format 2 does not have, one limit per size, and an id of the form init writes (it names folders
of the user's cache dir, so a hostile one must not climb out of it)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from casnap.backends import MemoryBackend
from casnap.cli import cli
from casnap.config import default_config, encode_config, fixed_faiss_chunker, parse_config
from casnap.errors import EXIT_CODES, IntegrityError, InvalidArgument, UnsupportedFormat
from casnap.repository import Repository


def refused(cfg: Any) -> str:
    """The line a config is refused with (IntegrityError, `config is damaged`)."""
    with pytest.raises(IntegrityError, match=r"^repo/config is damaged: ") as info:
        parse_config(json.dumps(cfg).encode(), "repo")
    return str(info.value)


def changed(path: str, value: Any) -> dict[str, Any]:
    """The default config with the field at path (`a.b.c`) set to value."""
    cfg = default_config()
    *outer, last = path.split(".")
    inner = cfg
    for key in outer:
        inner = inner[key]
    inner[last] = value
    return cfg


def test_the_default_config_and_one_of_each_chunker_parse() -> None:
    cfg = default_config()
    assert re.fullmatch(r"[0-9a-f]{32}", cfg["id"])
    assert parse_config(encode_config(cfg), "repo") == cfg
    fixed = fixed_faiss_chunker()
    del fixed["name"]  # an entry without a name is `faiss`: fixed blocks, before `faiss-cdc`
    older = changed("chunker.faiss", fixed)
    assert parse_config(encode_config(older), "repo") == older
    for optional in ("float_level", "frame_target", "group_floats"):
        cfg = default_config()
        del cfg[optional]
        assert parse_config(encode_config(cfg), "repo") == cfg
    cfg = default_config()
    cfg["chunker"] = {"default": {"name": "fixed", "size": 4096}}
    assert parse_config(encode_config(cfg), "repo") == cfg


# -- the repository id -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rid",
    [
        "../../../tmp/idtrav",
        "",
        ".",
        "..",
        "a/b",
        "0" * 31,
        "0" * 33,
        "0" * 64,
        "0123456789ABCDEF0123456789ABCDEF",
        "g" * 32,
        "0" * 31 + "\n",
        12345,
        None,
        ["0" * 32],
    ],
)
def test_an_id_not_as_init_writes_it_damages_the_config(rid: Any) -> None:
    line = refused(changed("id", rid))
    assert "repository id (id)" in line and "\n" not in line


def test_a_config_without_an_id_is_damaged() -> None:
    cfg = default_config()
    del cfg["id"]
    assert "the repository id (id) is missing" in refused(cfg)


def test_an_id_that_climbs_out_of_the_cache_dir_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config whose id was `../../../tmp/idtrav` had commit and checkout write the record of
    restored files and the page groups of databases outside the user's cache dir; an empty id
    had every such repository share the cache dir's root."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CASNAP_CACHE_DIR", str(tmp_path / "home" / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a")
    runner = CliRunner()
    base = ["--repo", "repo", "--data", "data"]
    assert runner.invoke(cli, [*base, "commit"]).exit_code == 0
    config = tmp_path / "repo" / "config"
    for rid in ("../../idtrav", ""):
        cfg = json.loads(config.read_text())
        cfg["id"] = rid
        config.write_text(json.dumps(cfg))
        for args in (["commit"], ["checkout", "latest"], ["log"]):
            result = runner.invoke(cli, [*base, *args])
            assert result.exit_code == EXIT_CODES["integrity"], (args, result.stderr)
            (line,) = result.stderr.splitlines()
            assert re.match(r"casnap: error: .*config is damaged: .*repository id \(id\)", line)
    assert not (tmp_path / "idtrav").exists()
    cache = tmp_path / "home" / "cache"
    assert not (cache / "restored").exists() and not (cache / "groups").exists()


def test_init_refuses_a_config_no_casnap_could_open(tmp_path: Path) -> None:
    """The config a caller hands to init passes the same parser, so a repository is never made
    with an id (or any field) that every later open refuses."""
    with pytest.raises(InvalidArgument, match=r"repository id \(id\)"):
        Repository.init(tmp_path / "repo", changed("id", "../x"))
    assert not (tmp_path / "repo").exists()
    backend = MemoryBackend()
    with pytest.raises(InvalidArgument, match=r"pack_target"):
        Repository.init_backend(backend, changed("pack_target", 1.5))
    assert not backend.exists("config")


# -- types, exactly as JSON gives them ---------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("zstd_level", True),
        ("zstd_level", 3.0),
        ("zstd_level", "3"),
        ("float_level", False),
        ("pack_target", 1.5),
        ("pack_target", True),
        ("pack_target", "16777216"),
        ("pack_target", None),
        ("frame_target", 524288.0),
        ("frame_target", [524288]),
        ("group_floats", "yes"),
        ("group_floats", 1),
        ("group_floats", None),
        ("created", 0),
        ("created", "yesterday"),
        ("chunker.default.min", True),
        ("chunker.default.avg", 8192.0),
        ("chunker.default.max", "65536"),
        ("chunker.faiss.vectors", [4096, 8192.0, 32768]),
        ("chunker.faiss.ids", [512, True, 4096]),
        ("chunker.hnsw.max", 65536.5),
        ("chunker.default.name", 1),
    ],
)
def test_a_value_of_another_type_damages_the_config(path: str, value: Any) -> None:
    """`zstd_level: true`, `pack_target: 1.5`, `group_floats: "yes"` were taken (true as 1, 1.5
    as 1, any text as true): JSON's true is no integer and 1.5 no size."""
    line = refused(changed(path, value))
    assert path.split(".")[-1] in line, line


def test_the_format_version_is_an_integer_too() -> None:
    with pytest.raises(IntegrityError, match=r"format version \(casnap_format\)"):
        parse_config(json.dumps(changed("casnap_format", True)).encode(), "repo")
    with pytest.raises(IntegrityError, match=r"format version \(casnap_format\)"):
        parse_config(json.dumps(changed("casnap_format", 2.0)).encode(), "repo")


# -- fields format 2 does not have -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("extra", 1),
        ("encryption", "none"),
        ("chunker.text", {"name": "fastcdc", "min": 2048, "avg": 8192, "max": 65536}),
        ("chunker.default.size", 4096),
        ("chunker.sqlite.page_size", 4096),
        ("chunker.faiss.block", 8),
        ("chunker.hnsw.size", 1024),
    ],
)
def test_a_field_format_2_does_not_have_damages_the_config(path: str, value: Any) -> None:
    line = refused(changed(path, value))
    assert f'"{path.split(".")[-1]}"' in line, line


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("chunker.default", {"name": "fastcdc", "min": 2048, "avg": 8192}),
        ("chunker.default", {"name": "sqlite"}),
        ("chunker.default", {"min": 2048, "avg": 8192, "max": 65536}),
        ("chunker.sqlite", {"name": "fastcdc", "min": 2048, "avg": 8192, "max": 65536}),
        ("chunker.sqlite", {}),
        ("chunker.hnsw", {"max": 65536}),
        ("chunker.faiss", {"name": "faiss-cdc"}),
        ("chunker.default", "fastcdc"),
    ],
)
def test_a_chunker_entry_not_as_casnap_writes_it_damages_the_config(path: str, value: Any) -> None:
    assert "chunker" in refused(changed(path, value))


def test_a_newer_format_is_refused_by_its_number_whatever_fields_it_has() -> None:
    """New fields come with a new format version: a config of a later format is `upgrade
    casnap` (exit 3), never `damaged`, however many fields this casnap does not know."""
    cfg = default_config()
    cfg.update(casnap_format=3, extra={"x": 1}, pack_target="big")
    with pytest.raises(UnsupportedFormat, match="upgrade casnap"):
        parse_config(json.dumps(cfg).encode(), "repo")


# -- one limit per field -----------------------------------------------------------------------


def limits_of(path: str, value: int) -> tuple[int, int]:
    found = re.search(r"outside the limits \[(-?\d+), (-?\d+)\]", refused(changed(path, value)))
    assert found, refused(changed(path, value))
    return int(found[1]), int(found[2])


@pytest.mark.parametrize(
    ("path", "low", "high"),
    [
        ("chunker.default.min", 1, 1 << 24),
        ("chunker.default.avg", 1, 1 << 24),
        ("chunker.default.max", 512, 1 << 30),
        ("chunker.faiss.min", 1, 1 << 24),
        ("chunker.faiss.max", 512, 1 << 30),
        ("pack_target", 0, 1 << 30),
        ("frame_target", -1, 1 << 30),
        ("zstd_level", -(1 << 20), 23),
        ("float_level", -(1 << 20), 23),
    ],
)
def test_each_field_states_one_limit_on_either_side(path: str, low: int, high: int) -> None:
    """FastCDC's min of 1 said "outside the limits [512, 16777216]" and its min of 16777216
    "outside [64, 1048576]": each field has one range, said the same way past either end."""
    below, above = limits_of(path, low), limits_of(path, high)
    assert below == above, (below, above)
    lo, hi = below
    assert lo <= hi
    for value in (lo, hi):  # each limit itself is taken
        cfg = changed(path, value)
        if path.startswith("chunker."):  # with min <= avg <= max kept
            _, entry, name = path.split(".")
            spec = cfg["chunker"][entry]
            spec[name] = value
            spec["min"] = value if name == "min" else min(spec["min"], value)
            spec["max"] = value if name == "max" else max(spec["max"], value)
            if name != "avg":
                spec["avg"] = min(max(spec["avg"], spec["min"]), spec["max"])
        parse_config(encode_config(cfg), "repo")


def test_the_limits_said_are_the_limits_documented() -> None:
    """FORMAT.md's table of limits gives the FastCDC ranges the parser states."""
    doc = (Path(__file__).parent.parent / "docs" / "FORMAT.md").read_text()
    row = next(line for line in doc.splitlines() if line.startswith("| chunker sizes in config"))
    for path in ("chunker.default.min", "chunker.default.avg", "chunker.default.max"):
        lo, hi = limits_of(path, 1 << 30)
        name = path.split(".")[-1]
        assert f"`{name}` {_size(lo)} .. {_size(hi)}" in row, (name, row)


def _size(n: int) -> str:
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def test_casnap_itself_takes_what_it_writes() -> None:
    """The checks above refuse nothing init writes (nor the chunker entries of older
    repositories), on this host's defaults."""
    for _ in range(3):
        cfg = default_config()
        assert parse_config(encode_config(cfg), os.devnull) == cfg


def test_the_records_chunker_s_max_is_said_as_the_config_gives_it() -> None:
    """An hnsw max of 513 was refused with the sizes of a sample record casnap checks it on
    (`records chunker needs 0 < split < size ... (size 1676, split 132, max 513)`), which no
    config holds: the line says what is wrong with the field itself."""
    line = refused(changed("chunker.hnsw.max", 513))
    assert "max 513 is not a multiple of 4" in line and "split" not in line, line
    parse_config(encode_config(changed("chunker.hnsw.max", 516)), "repo")
