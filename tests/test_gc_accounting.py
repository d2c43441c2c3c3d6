"""gc reports exactly what it deleted and wrote, and its dry run predicts exactly that.

Each scenario measures the repository as files on disk: bytes_freed must equal the sum of file
sizes under the repository dir before gc minus after it, and a dry run on the same repository
must report the same numbers as the real gc that follows.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from casnap import checker, collector, retention
from casnap.backends.local import LocalBackend
from casnap.cli import cli, human
from casnap.committer import commit
from casnap.constants import TEMP_PREFIX
from casnap.packwriter import PackWriter
from casnap.repository import Repository
from tests.helpers_gc import Crash, CrashingBackend, build_history
from tests.helpers_reliability import casnap_env, small_config


def disk_bytes(root: Path) -> int:
    """Sum of the sizes of every file under the repository dir."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def counters(report: collector.GcReport) -> dict[str, object]:
    """Everything a gc report says about bytes and files (not whether it was a dry run, nor how
    long it took)."""
    out = report.to_json()
    for key in ("dry_run", "seconds"):
        del out[key]
    return out


def forget(repo: Repository, *positions: int) -> None:
    snaps = repo.snapshots()
    retention.forget(repo, [snaps[i][0].hex() for i in positions])


def _forget_oldest(repo: Repository, root: Path) -> float:
    forget(repo, 0)
    return collector.DEFAULT_MAX_UNUSED


def _forget_middle(repo: Repository, root: Path) -> float:
    forget(repo, 2)
    return collector.DEFAULT_MAX_UNUSED


def _forget_all(repo: Repository, root: Path) -> float:
    forget(repo, *range(len(repo.snapshots())))
    return collector.DEFAULT_MAX_UNUSED


def _repack_everything(repo: Repository, root: Path) -> float:
    forget(repo, 0, 1, 3)
    return 0.0  # every pack with any unused byte is rewritten


def _leftovers(repo: Repository, root: Path) -> float:
    """Temp files of interrupted writes, and a pack a killed commit wrote but never indexed."""
    forget(repo, 1)
    writer = PackWriter(repo.store)
    writer.add(b"\x01" * 32, 0, b"\x00" + b"x" * 5000, 5000)
    writer.close()
    (root / "tmp").mkdir(exist_ok=True)
    (root / "tmp" / f"{TEMP_PREFIX}99999-abcd-x.db").write_bytes(b"half a database" * 300)
    (root / "index" / f"{TEMP_PREFIX}99999-abcd-y").write_bytes(b"torn index" * 70)
    sub = next(p for p in (root / "packs").iterdir() if p.is_dir())
    (sub / f"{TEMP_PREFIX}99999-abcd-z").write_bytes(b"torn pack" * 1234)
    return collector.DEFAULT_MAX_UNUSED


def _crashed_after_new_index(repo: Repository, root: Path) -> float:
    """A gc killed after it wrote its new index, before it deleted the old ones: the next gc's
    index may be the very file already there."""
    forget(repo, 0, 2)
    probe = root.parent / "probe"
    shutil.copytree(root, probe)
    written = collector.collect(Repository.open(probe), max_unused=0.0).packs_written
    backend = CrashingBackend(LocalBackend(root), written + 1)  # new packs, new index, then die
    with pytest.raises(Crash):
        collector.collect(Repository.open_backend(backend, root / "tmp"), max_unused=0.0)
    return 0.0


def _crashed_before_new_index(repo: Repository, root: Path) -> float:
    """A gc killed after writing its new packs, before its index: the next gc writes the same
    packs again, which are there already (and must neither count as written nor as deleted)."""
    forget(repo, 0, 2)
    probe = root.parent / "probe"
    shutil.copytree(root, probe)
    written = collector.collect(Repository.open(probe), max_unused=0.0).packs_written
    assert written
    backend = CrashingBackend(LocalBackend(root), written)
    with pytest.raises(Crash):
        collector.collect(Repository.open_backend(backend, root / "tmp"), max_unused=0.0)
    return 0.0


def _nothing_to_do(repo: Repository, root: Path) -> float:
    collector.collect(repo)
    return collector.DEFAULT_MAX_UNUSED


SCENARIOS: dict[str, Callable[[Repository, Path], float]] = {
    "forget-oldest": _forget_oldest,
    "forget-middle": _forget_middle,
    "forget-all": _forget_all,
    "repack-everything": _repack_everything,
    "leftovers": _leftovers,
    "crashed-after-new-index": _crashed_after_new_index,
    "crashed-before-new-index": _crashed_before_new_index,
    "nothing-to-do": _nothing_to_do,
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_gc_reports_exactly_what_it_freed_and_the_dry_run_predicts_it(
    name: str, tmp_path: Path
) -> None:
    repo, _, _ = build_history(tmp_path, 5)
    root = tmp_path / "repo"
    max_unused = SCENARIOS[name](repo, root)
    dry = collector.collect(Repository.open(root), dry_run=True, max_unused=max_unused)
    before = disk_bytes(root)
    real = collector.collect(Repository.open(root), max_unused=max_unused)
    after = disk_bytes(root)
    assert dry.dry_run and not real.dry_run
    assert real.bytes_freed == before - after
    d = real.to_json()
    assert d["bytes_freed"] == d["bytes_deleted"] - d["bytes_written"]
    assert d["bytes_deleted"] == (
        d["pack_bytes_removed"] + d["index_bytes_removed"] + d["temp_bytes_removed"]
    )
    assert d["bytes_written"] == d["pack_bytes_written"] + d["index_bytes_written"]
    assert counters(dry) == counters(real)
    assert not list(root.rglob(f"{TEMP_PREFIX}*"))
    assert checker.verify(Repository.open(root), read_data=True).ok
    again = collector.collect(Repository.open(root), dry_run=True)
    assert again.bytes_freed == again.bytes_deleted == 0


def _cli(root: Path, data: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--repo", str(root), "--data", str(data), *args])
    return result.exit_code, result.stdout if "--json" in args else result.output


@pytest.mark.parametrize(
    "command",
    [
        ("prune", "--keep-last", "2"),
        ("prune", "--keep-last", "4", "--max-unused", "0"),
        ("forget", "--prune", "latest"),
        ("forget", "--prune", "--max-unused", "0", "latest"),
    ],
)
def test_prune_and_forget_count_the_manifests_they_delete(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    """The freed bytes of prune and forget --prune include the snapshot manifests, so they match
    what the repository shrank by; their dry runs predict the same numbers."""
    _, data, _ = build_history(tmp_path, 5)
    root = tmp_path / "repo"
    code, out = _cli(root, data, *command, "--dry-run", "--json")
    assert code == 0, out
    dry = json.loads(out)
    before = disk_bytes(root)
    code, out = _cli(root, data, *command, "--json")
    assert code == 0, out
    real = json.loads(out)
    shrank = before - disk_bytes(root)
    assert real["manifest_bytes_removed"] > 0
    assert real["bytes_freed"] == shrank
    assert real["bytes_freed"] == real["manifest_bytes_removed"] + real["gc"]["bytes_freed"]
    assert dry["bytes_freed"] == shrank
    assert dry["manifest_bytes_removed"] == real["manifest_bytes_removed"]
    assert counters_json(dry["gc"]) == counters_json(real["gc"])


def counters_json(d: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in d.items() if k not in ("dry_run", "seconds")}


def test_human_output_names_the_bytes_freed(tmp_path: Path) -> None:
    repo, data, _ = build_history(tmp_path, 5)
    root = tmp_path / "repo"
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    before = disk_bytes(root)
    code, out = _cli(root, data, "prune", "--keep-last", "2", "--dry-run")
    assert code == 0 and f"would free {human(0)}" not in out
    predicted = out
    code, out = _cli(root, data, "prune", "--keep-last", "2")
    assert code == 0, out
    freed = human(before - disk_bytes(root))
    assert f"freed {freed} " in out and f"would free {freed} " in predicted
    before = disk_bytes(copy)
    forget(Repository.open(copy), 0)
    manifests = before - disk_bytes(copy)
    code, out = _cli(copy, data, "gc")
    assert code == 0 and f"freed {human(before - manifests - disk_bytes(copy))} " in out


def peak_rss_kib(args: list[str]) -> tuple[int, str]:
    """Peak RSS (KiB) and stdout of the real CLI run in a subprocess of its own."""
    probe = (
        "import resource, subprocess, sys\n"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "print(r.returncode)\n"
        "print(r.stderr.strip().replace(chr(10), ' '))\n"
        "print(r.stdout.strip().replace(chr(10), ' '))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, sys.executable, "-m", "casnap", *args],
        env=casnap_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    assert out[1] == "0", out[2]
    return int(out[0]), out[3]


def test_dry_run_holds_no_more_memory_than_gc(tmp_path: Path) -> None:
    """The dry run compresses repacked frames in memory, one pack at a time: its peak RSS stays
    within a few packs of the real gc's (allocator noise), far below holding the nine or more
    packs it repacks."""
    pack = 4 << 20
    rng = np.random.default_rng(5)
    data = tmp_path / "data"
    data.mkdir()
    blob = bytearray(rng.integers(0, 256, 40 << 20, dtype=np.uint8).tobytes())
    (data / "blob.bin").write_bytes(blob)
    repo = Repository.init(tmp_path / "repo", small_config(pack))
    commit(repo, data)
    for i in range(0, len(blob), 64 << 10):  # every pack loses a tenth of its chunks
        blob[i : i + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    (data / "blob.bin").write_bytes(blob)
    commit(repo, data)
    forget(repo, 0)
    shutil.copytree(tmp_path / "repo", tmp_path / "copy")
    dry_peak, out = peak_rss_kib(["--repo", str(tmp_path / "copy"), "gc", "--dry-run", "--json"])
    dry = json.loads(out)
    real_peak, out = peak_rss_kib(["--repo", str(tmp_path / "repo"), "gc", "--json"])
    real = json.loads(out)
    assert dry["packs_repacked"] >= 9 and counters_json(dry) == counters_json(real)
    assert dry_peak <= real_peak + 3 * pack // 1024, (dry_peak, real_peak)


def test_a_gc_that_grows_the_repository_says_so() -> None:
    """gc may write an index file larger than those it replaces (nothing else to delete): the
    repository then grew, and the report says by how much instead of "freed -13 B"."""
    from casnap.cli.maintenance import freed_phrase

    assert freed_phrase(48, dry_run=False) == f"freed {human(48)}"
    assert freed_phrase(-13, dry_run=False) == f"grew by {human(13)}"
    assert freed_phrase(-13, dry_run=True) == f"would grow by {human(13)}"
    assert freed_phrase(0, dry_run=True) == f"would free {human(0)}"
