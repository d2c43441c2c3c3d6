"""Scale benchmark: what the index and the manifests cost in memory, up to 10M chunks.

What: a repository whose index names 10M distinct chunks (~40 GB of unique 4 KiB pages), and
the commands that must stay cheap in it:

(a) a commit of a small change to a real data dir against that index: peak RSS and seconds, and
    the index load it pays (the commit looks every new chunk up in the full index);
(b) `log`: peak RSS and seconds, run with every index file replaced by an empty file of the
    same name, so a `log` that read the index would fail;
(c) the memory per file: a data dir of many small files (50k) committed, then the peak RSS of a
    no-change commit, of `log` and of `ls`, against the same commands on a data dir of one file,
    and the bytes each file costs in a decoded manifest (tracemalloc) and on disk;
(d) the slope: the index loaded and looked up in a fresh process at several sizes (1M, 3M and
    the full size by default): seconds, peak RSS, bytes per entry.

How: writing 40 GB of real packs is not practical on a test machine, so the synthetic part of
the repository is its index only: index files in casnap's on-disk format, written by casnap's
own encoder (`chunkindex.encode_index`, stored under their BLAKE3 names with the store's
verified put), naming random 32-byte chunk ids spread over packs of ~10k chunks each with
realistic frame offsets and lengths (frames of 128 pages of 4 KiB, ~200 KB stored, ~80 frames
to a 16 MiB pack). By default they form one index file, as gc and repair-index leave it (the
largest a single read has to handle); `--index-files K` splits them. Beside them lies a real
data dir (`casnap.sample`: a SQLite database and FAISS indexes) committed normally into the same
repository, so the commit measured in (a) is a real commit whose chunks are looked up among the
10M synthetic entries. The packs the synthetic entries name are files of a pack's least size
holding nothing (a commit checks that every pack the index names is there): `verify` reports
them damaged and `checkout`/`cat` of anything that used them could not work, and gc would
refuse (no snapshot needs them, it would drop them); only the real snapshots' chunks can be
read back.

Run:

    .venv/bin/python benchmarks/scale.py                   # 10M chunks, 50k files: ~2 minutes
    .venv/bin/python benchmarks/scale.py --chunks 1000000  # a quick run
    .venv/bin/python benchmarks/scale.py --only commit,files   # (a) and (b), then (c)

Results: a table on stdout and `benchmarks/results/scale.json`; docs/TUNING.md ("Scale: 10M
chunks") has the numbers of the development machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools import compile_casnap  # noqa: E402

from casnap.chunkindex import FIELD_DTYPE, encode_index  # noqa: E402
from casnap.ids import ID_SIZE, ObjectId  # noqa: E402
from casnap.manifest import Snapshot, decompress_manifest  # noqa: E402
from casnap.packs import MIN_PACK_SIZE, index_key, pack_key  # noqa: E402
from casnap.repository import Repository  # noqa: E402
from casnap.sample import evolve, generate  # noqa: E402

MB = 1_000_000
MIB = 1 << 20
PAGE = 4096
PAGES_PER_FRAME = 128  # FRAME_TARGET (512 KiB) of 4 KiB pages
FRAMES_PER_PACK = 80  # ~200 KB stored per frame, ~16 MiB packs
PARTS = ("commit", "files", "slope")  # (a) and (b); (c); (d)

# Runs a casnap command and prints its peak RSS (VmHWM: the process's own high-water mark) on
# stderr's last line after it exits.
_PEAK_RUNNER = """
import atexit, sys
def _peak():
    with open("/proc/self/status") as f:
        kib = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    sys.stderr.write(f"\\nPEAK {kib * 1024}\\n")
atexit.register(_peak)
sys.argv = ["casnap", *sys.argv[1:]]
from casnap.cli import main
main()
"""

# Loads a repository's index in a fresh process and looks ids up; prints JSON.
_LOAD_RUNNER = """
import json, sys, time
import numpy as np
from casnap.repository import Repository
def vmhwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) * 1024
repo = Repository.open(sys.argv[1])
before = vmhwm()
t0 = time.perf_counter()
repo.ensure_index()
index = repo.store.index
index.contains_many(np.zeros((1, 32), np.uint8))  # the first lookup sorts what was loaded
load = time.perf_counter() - t0
after = vmhwm()
rng = np.random.default_rng(1)
absent = rng.integers(0, 256, size=(10000, 32), dtype=np.uint8)
present = np.stack([np.frombuffer(index.id_at(int(r)), np.uint8)
                    for r in rng.integers(0, len(index), 2000)])
t0 = time.perf_counter()
hits = int(index.contains_many(present).sum()) + int(index.contains_many(absent).sum())
look = time.perf_counter() - t0
with open("/proc/self/status") as f:
    peak = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) * 1024
print(json.dumps({"entries": len(index), "load_s": load, "lookup_us_per_id": look / 12000 * 1e6,
                  "present_found": hits, "rss_before": before, "rss_after": after,
                  "peak": peak, "held_bytes": index.nbytes}))
"""


def env() -> dict[str, str]:
    """The environment of the casnap child processes: this checkout first on the path."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("CASNAP_REPO", None)
    e.pop("CASNAP_DATA", None)
    e["XDG_CACHE_HOME"] = e.get("XDG_CACHE_HOME", str(Path(tempfile.gettempdir()) / "scale-cache"))
    return e


def run_peak(args: Sequence[str]) -> tuple[dict[str, Any] | str, float, int]:
    """Run `casnap ARGS` in a fresh process: (its stdout, parsed when JSON, seconds, peak RSS)."""
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-c", _PEAK_RUNNER, *args], env=env(), capture_output=True, text=True
    )
    secs = time.perf_counter() - t0
    lines = res.stderr.strip().splitlines()
    if res.returncode != 0 or not lines or not lines[-1].startswith("PEAK "):
        raise SystemExit(f"casnap {' '.join(args)} failed ({res.returncode}): {res.stderr}")
    peak = int(lines[-1].split()[1])
    try:
        out: dict[str, Any] | str = json.loads(res.stdout)
    except json.JSONDecodeError:
        out = res.stdout
    return out, secs, peak


def synthetic_entries(n: int, seed: int) -> tuple[list[ObjectId], np.ndarray, np.ndarray]:
    """(pack table, ids, fields) of n distinct random chunks laid out as commits write 4 KiB
    pages: 128 pages to a frame, 80 frames (~16 MiB stored) to a pack, in pack order."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 256, size=(n, ID_SIZE), dtype=np.uint8)
    frame = np.arange(n, dtype=np.int64) // PAGES_PER_FRAME
    nframes = int(frame[-1]) + 1 if n else 0
    lengths = rng.integers(150_000, 260_000, size=nframes, dtype=np.int64)
    frame_pack = np.arange(nframes, dtype=np.int64) // FRAMES_PER_PACK
    starts = np.cumsum(lengths) - lengths  # offset of each frame from the first one
    pack_start = starts[frame_pack * FRAMES_PER_PACK]
    offsets = 16 + starts - pack_start  # after the 16-byte pack header
    npacks = int(frame_pack[-1]) + 1 if n else 0
    packs = [ObjectId(rng.bytes(ID_SIZE)) for _ in range(npacks)]
    fields = np.zeros(n, dtype=FIELD_DTYPE)
    fields["pack"] = frame_pack[frame]
    fields["type"] = 0
    fields["offset"] = offsets[frame]
    fields["length"] = lengths[frame]
    fields["plain"] = PAGE
    fields["inner"] = (np.arange(n, dtype=np.int64) % PAGES_PER_FRAME) * PAGE
    fields["frame_plain"] = PAGE * PAGES_PER_FRAME
    return packs, ids, fields


def write_synthetic_index(repo: Repository, n: int, files: int, seed: int) -> list[str]:
    """Store index files naming n synthetic chunks (split into `files` files at pack
    boundaries); returns their keys."""
    keys = []
    done = 0
    per = -(-n // files)
    for k in range(files):
        m = min(per, n - done)
        if m <= 0:
            break
        packs, ids, fields = synthetic_entries(m, seed * 1000 + k)
        blob = encode_index(packs, ids, fields)
        del ids, fields
        key = index_key(repo.ids(blob))
        repo.store.put_verified(key, blob)
        for pack in packs:  # of a pack's least size: there, as a commit checks, holding nothing
            repo.raw_backend.put(pack_key(pack), bytes(MIN_PACK_SIZE))
        keys.append(key)
        done += m
    return keys


def hidden_index(repo_dir: Path) -> Any:
    """Context: every index file replaced by an empty file of the same name, put back after.

    An empty index file is damage to anything that reads it, so a command that succeeds in this
    state read no index file."""

    class _Hidden:
        def __enter__(self) -> list[str]:
            self.aside = repo_dir / "index.aside"
            (repo_dir / "index").rename(self.aside)
            (repo_dir / "index").mkdir(mode=0o700)
            names = sorted(p.name for p in self.aside.iterdir())
            for name in names:
                (repo_dir / "index" / name).touch(mode=0o600)
            return names

        def __exit__(self, *exc: object) -> None:
            shutil.rmtree(repo_dir / "index")
            self.aside.rename(repo_dir / "index")

    return _Hidden()


def cli(repo: Path, data: Path, *args: str) -> list[str]:
    return ["--repo", str(repo), "--data", str(data), *args]


# -- (a) and (b) -------------------------------------------------------------------------------


def big_repository(work: Path, args: argparse.Namespace, out: dict[str, Any]) -> None:
    """(a) a small change committed against the big index, (b) `log` of the big repository."""
    repo_dir, data = work / "big-repo", work / "big-data"
    t0 = time.perf_counter()
    generate(data, size_mb=args.size_mb, seed=args.seed)
    first, first_s, first_peak = run_peak(cli(repo_dir, data, "-q", "commit", "--json"))
    assert isinstance(first, dict)
    with Repository.open(repo_dir) as repo:
        t1 = time.perf_counter()
        keys = write_synthetic_index(repo, args.chunks, args.index_files, args.seed)
        synth_s = time.perf_counter() - t1
    index_bytes = sum((repo_dir / k).stat().st_size for k in keys)
    print(
        f"built: sample data dir {args.size_mb} MiB committed ({first_s:.1f} s); "
        f"{args.chunks:,} synthetic entries in {len(keys)} index file(s), "
        f"{index_bytes / MB:.1f} MB ({synth_s:.1f} s); {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    evolve(data, 1, seed=args.seed)
    res, secs, peak = run_peak(cli(repo_dir, data, "-q", "commit", "--json", "-m", "small"))
    assert isinstance(res, dict)
    phases = res.get("phases", {})
    with Repository.open(repo_dir) as repo:
        entries = sum(1 for _ in repo.backend.list("index/"))
    out["commit"] = {
        "chunks": args.chunks,
        "index_files": len(keys) + entries - len(keys),
        "index_bytes_synthetic": index_bytes,
        "seconds": secs,
        "peak_rss": peak,
        "index_load_s": phases.get("index"),
        "phases": phases,
        "bytes_read": res.get("bytes_read"),
        "chunks_new": res.get("chunks_new"),
        "result": {k: v for k, v in res.items() if k != "phases"},
        "first_commit": {"seconds": first_s, "peak_rss": first_peak},
    }
    with hidden_index(repo_dir) as names:
        log, log_s, log_peak = run_peak(cli(repo_dir, data, "log", "--json"))
    assert isinstance(log, list)
    out["log"] = {
        "snapshots": len(log),
        "seconds": log_s,
        "peak_rss": log_peak,
        "index_files_emptied": len(names),
        "succeeded_without_index": True,
    }
    # the same commit's index load, repeated in a fresh process: bytes per entry
    out["load_full"] = load_in_child(repo_dir)


# -- (c) -----------------------------------------------------------------------------------------


def many_files(work: Path, args: argparse.Namespace, out: dict[str, Any]) -> None:
    """(c) memory per file: a data dir of many small files against one of a single file."""
    rows = {}
    for label, count in (("one", 1), ("many", args.files)):
        repo_dir, data = work / f"files-{label}-repo", work / f"files-{label}-data"
        rng = np.random.default_rng(args.seed)
        for i in range(count):
            d = data / f"d{i // 1000:03d}"
            if i % 1000 == 0:
                d.mkdir(parents=True)
            (d / f"f{i:06d}.txt").write_bytes(rng.bytes(int(rng.integers(100, 2000))))
        _, first_s, first_peak = run_peak(cli(repo_dir, data, "-q", "commit", "--json"))
        _, again_s, again_peak = run_peak(cli(repo_dir, data, "-q", "commit", "--json"))
        _, log_s, log_peak = run_peak(cli(repo_dir, data, "log", "--json"))
        _, ls_s, ls_peak = run_peak(cli(repo_dir, data, "ls", "latest"))
        sizes = [p.stat().st_size for p in (repo_dir / "snapshots").iterdir()]
        rows[label] = {
            "files": count,
            "snapshots": len(sizes),
            "first_commit": {"seconds": first_s, "peak_rss": first_peak},
            "no_change_commit": {"seconds": again_s, "peak_rss": again_peak},
            "log": {"seconds": log_s, "peak_rss": log_peak},
            "ls": {"seconds": ls_s, "peak_rss": ls_peak},
            "manifest_bytes": max(sizes),
        }
        if label == "many":
            manifest = max((repo_dir / "snapshots").iterdir(), key=lambda p: p.stat().st_size)
            raw = decompress_manifest(manifest.read_bytes(), manifest.name)
            tracemalloc.start()
            snap = Snapshot.decode(raw, manifest.name)
            held, _ = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            rows[label]["decoded_bytes_per_file"] = held / len(snap.files)
            rows[label]["manifest_plain_bytes"] = len(raw)
            del snap
    n = args.files - 1
    per = {
        key: (rows["many"][key]["peak_rss"] - rows["one"][key]["peak_rss"]) / n
        for key in ("first_commit", "no_change_commit", "log", "ls")
    }
    out["files"] = {
        **rows,
        "rss_bytes_per_file": per,
        "manifest_bytes_per_file": (rows["many"]["manifest_bytes"] - rows["one"]["manifest_bytes"])
        / n,
    }


# -- (d) -----------------------------------------------------------------------------------------


def load_in_child(repo_dir: Path) -> dict[str, Any]:
    """The index of repo_dir loaded and looked up in a fresh process."""
    res = subprocess.run(
        [sys.executable, "-c", _LOAD_RUNNER, str(repo_dir)],
        env=env(),
        capture_output=True,
        text=True,
    )
    if res.returncode:
        raise SystemExit(f"index load failed: {res.stderr}")
    got: dict[str, Any] = json.loads(res.stdout)
    got["bytes_per_entry_rss"] = (got["rss_after"] - got["rss_before"]) / max(got["entries"], 1)
    got["bytes_per_entry_peak"] = (got["peak"] - got["rss_before"]) / max(got["entries"], 1)
    got["bytes_per_entry_held"] = got["held_bytes"] / max(got["entries"], 1)
    return got


def slope(work: Path, args: argparse.Namespace, out: dict[str, Any]) -> None:
    """(d) the index alone at several sizes, loaded in a fresh process each."""
    rows = []
    for n in args.sizes:
        repo_dir = work / f"slope-{n}"
        with Repository.init(repo_dir) as repo:
            write_synthetic_index(repo, n, args.index_files, args.seed + n)
        rows.append({"chunks": n, **load_in_child(repo_dir)})
        shutil.rmtree(repo_dir)
        r = rows[-1]
        print(
            f"  index of {n:>11,}: load {r['load_s']:6.2f} s, peak {r['peak'] / MIB:7.1f} MiB, "
            f"{r['bytes_per_entry_held']:.1f} B/entry held, "
            f"{r['bytes_per_entry_peak']:.1f} B/entry at peak",
            flush=True,
        )
    out["slope"] = rows


# -- report --------------------------------------------------------------------------------------


def report(out: dict[str, Any]) -> None:
    """The table."""
    print()
    if "commit" in out:
        c, lf = out["commit"], out["load_full"]
        print(f"index: {c['chunks']:,} synthetic chunks (~{c['chunks'] * PAGE / 1e9:.0f} GB)")
        print(
            f"  (a) commit of a small change: {c['seconds']:.2f} s, "
            f"peak RSS {c['peak_rss'] / MIB:.1f} MiB "
            f"(index load {c['index_load_s'] or 0:.2f} s)"
        )
        print(
            f"      index alone: {lf['entries']:,} entries, {lf['bytes_per_entry_held']:.1f} "
            f"B/entry held, {lf['bytes_per_entry_peak']:.1f} B/entry at load peak, "
            f"load {lf['load_s']:.2f} s, lookup {lf['lookup_us_per_id']:.2f} us/id"
        )
        lg = out["log"]
        print(
            f"  (b) log ({lg['snapshots']} snapshots, all {lg['index_files_emptied']} index "
            f"files emptied): {lg['seconds']:.2f} s, peak RSS {lg['peak_rss'] / MIB:.1f} MiB"
        )
    if "files" in out:
        f = out["files"]
        print(f"  (c) {f['many']['files']:,} small files against 1:")
        print("      command              1 file MiB  many MiB  bytes/file")
        for key in ("first_commit", "no_change_commit", "log", "ls"):
            print(
                f"      {key:<20} {f['one'][key]['peak_rss'] / MIB:10.1f} "
                f"{f['many'][key]['peak_rss'] / MIB:9.1f} {f['rss_bytes_per_file'][key]:11.0f}"
            )
        print(
            f"      (log and ls read all {f['many']['snapshots']} snapshots: "
            f"{f['rss_bytes_per_file']['log'] / f['many']['snapshots']:.0f} bytes per file of "
            "each snapshot)"
        )
        print(
            f"      manifest: {f['manifest_bytes_per_file']:.1f} stored bytes/file, "
            f"{f['many']['decoded_bytes_per_file']:.0f} bytes/file decoded (tracemalloc)"
        )
    if "slope" in out:
        print("  (d) chunks        load s   peak MiB  B/entry held  B/entry peak  lookup us/id")
        for r in out["slope"]:
            print(
                f"      {r['chunks']:>11,} {r['load_s']:8.2f} {r['peak'] / MIB:10.1f} "
                f"{r['bytes_per_entry_held']:13.1f} {r['bytes_per_entry_peak']:13.1f} "
                f"{r['lookup_us_per_id']:13.2f}"
            )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chunks", type=int, default=10_000_000, help="synthetic index entries")
    p.add_argument("--index-files", type=int, default=1, help="index files they are split into")
    p.add_argument("--files", type=int, default=50_000, help="small files for (c)")
    p.add_argument("--size-mb", type=float, default=40.0, help="size of the real sample data dir")
    p.add_argument("--sizes", default=None, help="index sizes for (d), comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default=",".join(PARTS), help="parts: " + ",".join(PARTS))
    p.add_argument("--work", type=Path, default=None, help="parent of the scratch dir")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    if args.sizes is None:
        args.sizes = sorted({n for n in (1_000_000, 3_000_000, args.chunks) if n <= args.chunks})
    else:
        args.sizes = [int(s) for s in args.sizes.split(",")]
    args.only = {part for part in args.only.split(",") if part}
    unknown = args.only - set(PARTS)
    if unknown:
        p.error(f"--only: unknown part(s) {', '.join(sorted(unknown))}; parts: {', '.join(PARTS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    compile_casnap()
    out: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "args": {k: sorted(v) if isinstance(v, set) else v for k, v in vars(args).items()},
    }
    out["args"]["work"] = str(args.work)
    out["args"]["out"] = str(args.out)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="casnap-scale-", dir=args.work) as tmp:
        work = Path(tmp)
        if "commit" in args.only:
            big_repository(work, args, out)
        if "files" in args.only:
            many_files(work, args, out)
        if "slope" in args.only:
            slope(work, args, out)
    out["seconds"] = time.perf_counter() - t0
    report(out)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\n{out['seconds']:.0f} s; results in {args.out / 'scale.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
