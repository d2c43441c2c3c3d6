"""docs/RELIABILITY.md states what the reliability suites establish: its figures must be the ones
their parametrization gives, so the document cannot drift from the tests."""

from __future__ import annotations

import re
from collections import Counter

from tests import test_concurrency, test_faults, test_hostile, test_kills
from tests.helpers_reliability import ROOT


def _params(fn: object) -> int:
    """How many test cases a (possibly stacked) parametrize produces for fn."""
    n = 1
    for mark in getattr(fn, "pytestmark", []):
        if mark.name == "parametrize":
            n *= len(mark.args[1])
    return n


def _figures() -> dict[str, int]:
    kinds = Counter(case.values[2].fault.action for case in test_faults.CASES)
    kills = sum(
        _params(getattr(test_kills, name)) for name in dir(test_kills) if "_killed_" in name
    )
    fuzzers = [getattr(test_hostile, n) for n in dir(test_hostile) if n.startswith("test_fuzz_")]
    hostile = (
        len(test_hostile.HOSTILE_PATHS)
        + _params(test_hostile.test_ambiguous_manifests_are_refused)
        + _params(test_hostile.test_out_of_range_entry_values_are_rejected)
        + _params(test_hostile.test_set_id_bits_of_a_manifest_are_not_restored)
    )
    return {
        "fault runs (faults x operations x backends)": len(test_faults.CASES),
        "distinct faults": len(test_faults.SCENARIOS),
        "operations run under faults": len(test_faults.OPS),
        "I/O errors injected (put, get, list, delete)": kinds["fail"],
        "full-disk (ENOSPC) runs": kinds["enospc"],
        "truncated writes": kinds["truncate"],
        "bytes flipped on read": kinds["flip"],
        "SIGKILL points of the real CLI": kills,
        "killed lock holders recovered": len(test_concurrency.KILLED_HOLDERS),
        "damaged repositories read through the CLI": len(test_hostile.DAMAGE),
        "hostile manifests refused or defused": hostile,
        "symlink tricks in the target": _params(
            test_hostile.test_symlinks_in_the_target_are_never_followed
        ),
        "fuzzed parser inputs (hypothesis examples)": len(fuzzers) * test_hostile.FUZZ.max_examples,
        "snapshots lost": 0,
        "torn files restored or stored": 0,
        "tracebacks printed": 0,
    }


def test_reliability_figures_match_the_suites() -> None:
    text = (ROOT / "docs" / "RELIABILITY.md").read_text()
    table = dict(re.findall(r"^\| ([^|]+?) \| (\d+) \|$", text, re.M))
    assert {k: int(v) for k, v in table.items()} == _figures()


def test_readme_reliability_section_states_the_same_figures() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Reliability") :]
    section = section[: section.index("\n## ", 1)]
    table = dict(re.findall(r"^\| ([^|]+?) \| (\d+) \|$", section, re.M))
    assert {k: int(v) for k, v in table.items()} == _figures()


def test_kill_points_per_operation_match_the_text() -> None:
    per_op: Counter[str] = Counter()
    for name in dir(test_kills):
        if "_killed_" in name:
            per_op[name.split("_")[1]] += _params(getattr(test_kills, name))
    text = (ROOT / "docs" / "RELIABILITY.md").read_text()
    stated = re.search(
        r"commit (\d+) points,\s+checkout (\d+), gc (\d+), prune (\d+), verify --smoke (\d+)",
        text,
    )
    assert stated is not None
    assert [int(x) for x in stated.groups()] == [
        per_op["commit"],
        per_op["checkout"],
        per_op["gc"],
        per_op["prune"],
        per_op["smoke"],
    ]
