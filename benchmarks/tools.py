"""What the benchmarks measure with: each backup tool behind one interface, commands run and
measured (seconds, peak RSS of the command's own process), and trees compared byte for byte.

Used by ``storage.py`` (the SQLite + FAISS sample) and ``rag.py`` (the stores RAG frameworks
write). ``python benchmarks/tools.py --tarzstd-helper MODE SRC DST`` is the Python fallback for
tar+zstd, run as a subprocess so it is measured like the other tools.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
CHUNK = MIB
# SQLite header fields that the online backup API rewrites in the destination database:
# file change counter (24-27), schema cookie (40-43), version-valid-for and
# SQLITE_VERSION_NUMBER (92-99). Byte ranges are half-open.
SQLITE_VOLATILE = ((24, 28), (40, 44), (92, 100))
SQLITE_FILES = frozenset({"app.db"})
RESTIC_PASSWORD = "casnap-benchmark"
TAIL_CHARS = 2000


def compile_casnap() -> None:
    """casnap's modules compiled to bytecode first, as installing a package compiles them: a
    source tree never imported before (or PYTHONDONTWRITEBYTECODE set, which stops Python
    writing what it compiles) would make every casnap command compile each module it imports
    (~0.15 s), and the benchmark would time that, which restic and borg do not pay."""
    import compileall

    compileall.compile_dir(str(ROOT / "casnap"), quiet=1)


# --------------------------------------------------------------------------------------------
# Measuring subprocesses
# --------------------------------------------------------------------------------------------


class ToolError(RuntimeError):
    """A tool's command exited with a non-zero status."""


@dataclass
class Measured:
    """Wall-clock seconds, peak RSS (bytes), stdout and stderr of one or more commands, and the
    CPU seconds (user + system) they used."""

    seconds: float
    rss: int
    stdout: str = ""
    stderr: str = ""
    cpu: float = 0.0

    def then(self, other: Measured) -> Measured:
        """Combine with a command that ran after this one: times add, peak RSS is the max."""
        rss = max(self.rss, other.rss)
        out, err = other.stdout, self.stderr + other.stderr
        return Measured(self.seconds + other.seconds, rss, out, err, self.cpu + other.cpu)


# Each measured command runs under this minimal launcher (a bare ``python -I -S``, started
# afresh), which spawns the command, reaps it with ``os.wait4`` and writes the seconds and the
# peak RSS of that one process to a report file. Spawning the command straight from this script
# would not do: the kernel carries the RSS high-water mark of the forking process over into the
# child's ``ru_maxrss``, and this script has numpy and FAISS loaded (~80 MiB). The launcher's own
# footprint (a few MiB) is the floor of what can be measured; ``rss_floor`` reports it.
LAUNCHER = """
import os, sys, time
report, argv = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
try:
    pid = os.posix_spawnp(argv[0], argv, os.environ)
except OSError as exc:
    sys.stderr.write(f"cannot run {argv[0]}: {exc}\\n")
    sys.exit(127)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
with open(report, "w") as fh:
    fh.write(f"{seconds!r} {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime!r}\\n")
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run(
    *pipeline: Sequence[str | Path],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> Measured:
    """Run one command, or several joined by pipes, and measure it.

    Seconds run from spawning to reaping the command (for a pipeline: its slowest process).
    Peak RSS is the ``ru_maxrss`` of the command's own process; the processes of a pipeline run
    concurrently, so their peaks are summed, as are their CPU seconds (those of any processes
    the command waited for included).
    """
    argvs = [[str(a) for a in argv] for argv in pipeline]
    with (
        tempfile.TemporaryDirectory(prefix="casnap-bench-run-") as tmp,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        reports = [Path(tmp) / f"stage{i}" for i in range(len(argvs))]
        launched = [
            [sys.executable, "-I", "-S", "-c", LAUNCHER, str(report), *argv]
            for report, argv in zip(reports, argvs, strict=True)
        ]
        procs = _spawn_pipeline(launched, out, err, cwd, env)
        codes = [proc.wait() for proc in procs]
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
        if any(codes):
            shown = " | ".join(" ".join(a) for a in argvs)
            raise ToolError(f"{shown} exited with {codes}: {stderr[-TAIL_CHARS:].strip()}")
        stages = [report.read_text().split() for report in reports]
    seconds = max(float(sec) for sec, _, _ in stages)
    rss = sum(int(kib) * 1024 for _, kib, _ in stages)  # ru_maxrss is in KiB on Linux
    cpu = sum(float(used) for _, _, used in stages)  # the processes of a pipeline add up
    return Measured(seconds, rss, stdout, stderr, cpu)


def _spawn_pipeline(
    argvs: list[list[str]],
    out: Any,
    err: Any,
    cwd: Path | None,
    env: dict[str, str] | None,
) -> list[subprocess.Popen[bytes]]:
    procs: list[subprocess.Popen[bytes]] = []
    stdin: Any = subprocess.DEVNULL
    for i, argv in enumerate(argvs):
        last = i == len(argvs) - 1
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=stdin,
            stdout=out if last else subprocess.PIPE,
            stderr=err,
        )
        if procs and procs[-1].stdout is not None:
            procs[-1].stdout.close()  # the next process owns the read end now
        stdin = proc.stdout
        procs.append(proc)
    return procs


def rss_floor() -> int:
    """Peak RSS the launcher reports for a command that does nothing (``true``)."""
    return run(["true"]).rss


def capture(argv: Sequence[str | Path]) -> str:
    """First line of a command's output, or an empty string if it fails (for versions)."""
    try:
        done = subprocess.run(
            [str(a) for a in argv], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError:
        return ""
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else ""


# --------------------------------------------------------------------------------------------
# File-tree helpers
# --------------------------------------------------------------------------------------------


SAMPLE_MARKER = ".casnap-sample.json"  # casnap.sample.SAMPLE_MARKER (checked at start-up)


def walk_files(root: Path) -> Iterator[Path]:
    """Every regular file and symlink below ``root``, as paths relative to it."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            yield (Path(dirpath) / name).relative_to(root)


def evict(root: Path) -> None:
    """Drop the files below root from the page cache (after an os.sync they are clean: each is
    advised DONTNEED), so the next restore reads its repository from the disk, as a restore
    after the backup's pages left memory does. casnap writes its packs past the cache, the
    other tools through it: without this, casnap alone would read from the disk."""
    if not hasattr(os, "posix_fadvise"):
        return
    for rel in walk_files(root):
        try:
            fd = os.open(root / rel, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def free_memory_alike(scratch: Path, nbytes: int) -> None:
    """Write nbytes to a scratch file under scratch and delete it, untimed, so the next command
    finds that much memory freed a moment ago, as every restore but the first of a run does
    (the one before it deleted its restored tree). On this virtual machine filling memory the
    kernel has not used lately costs several times more than filling memory just freed
    (docs/TUNING.md, "Packs past the page cache"): without this the first restore of a run,
    casnap's, paid that alone."""
    block = bytes(4 << 20)
    path = scratch / ".memory-scratch"
    with open(path, "wb") as f:
        for _ in range(max(1, nbytes // len(block))):
            f.write(block)
    path.unlink()
    os.sync()  # no write-back of it left running into the timed command


def start_restore_alike(repo: Path, scratch: Path, data: Path) -> None:
    """What every timed restore starts from (benchmarks/README.md, "Clean start for each
    tool"): nothing left to write back, the repository out of the page cache, and twice the
    data dir's size of memory freed a moment ago."""
    os.sync()
    evict(repo)
    free_memory_alike(scratch, 2 * tree_size(data))


def tree_size(root: Path) -> int:
    """Sum of the sizes of the files below ``root`` (0 if it does not exist)."""
    if not root.exists():
        return 0
    return sum((root / rel).lstat().st_size for rel in walk_files(root))


def _mask(buf: bytes, offset: int) -> bytes:
    """``buf`` (which starts at file ``offset``) with the volatile SQLite header bytes zeroed."""
    out = bytearray(buf)
    for lo, hi in SQLITE_VOLATILE:
        a, b = max(lo - offset, 0), min(hi - offset, len(out))
        if a < b:
            out[a:b] = bytes(b - a)
    return bytes(out)


def compare_file(expected: Path, actual: Path, *, sqlite: bool) -> str | None:
    """``None`` if equal, ``"masked"`` if equal only outside the SQLite header, else a reason."""
    if expected.is_symlink() or actual.is_symlink():
        same = os.readlink(expected) == os.readlink(actual) if actual.is_symlink() else False
        return None if same else "symlink differs"
    if expected.stat().st_size != actual.stat().st_size:
        return f"size {actual.stat().st_size} != {expected.stat().st_size}"
    masked = False
    offset = 0
    with expected.open("rb") as fe, actual.open("rb") as fa:
        while chunk_e := fe.read(CHUNK):
            chunk_a = fa.read(CHUNK)
            if chunk_e != chunk_a:
                if not sqlite or _mask(chunk_e, offset) != _mask(chunk_a, offset):
                    return f"content differs in bytes {offset}..{offset + len(chunk_e)}"
                masked = True
            offset += len(chunk_e)
    return "masked" if masked else None


@dataclass
class Comparison:
    ok: bool
    exact: bool
    problems: list[str] = field(default_factory=list)


def compare_trees(expected: Path, actual: Path) -> Comparison:
    """Compare every file below two directories: same names, same bytes.

    Files named in ``SQLITE_FILES`` at the top level may differ in the volatile header bytes
    only; ``exact`` tells whether that allowance was needed.
    """
    # the sample generator's marker is not application data: the seed procedure (app.db and
    # faiss/) does not copy it, so no tool is asked to restore it
    marker = Path(SAMPLE_MARKER)
    want = set(walk_files(expected)) - {marker}
    have = (set(walk_files(actual)) if actual.is_dir() else set()) - {marker}
    problems = [f"missing: {p}" for p in sorted(want - have)]
    problems += [f"unexpected: {p}" for p in sorted(have - want)]
    exact = True
    for rel in sorted(want & have):
        verdict = compare_file(expected / rel, actual / rel, sqlite=str(rel) in SQLITE_FILES)
        if verdict == "masked":
            exact = False
        elif verdict is not None:
            problems.append(f"{rel}: {verdict}")
    return Comparison(ok=not problems, exact=exact and not problems, problems=problems)


def empty_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# --------------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------------


class Tool(ABC):
    """One way of snapshotting the data dir, with its own repository under the work dir."""

    name: str = ""
    binaries: tuple[str, ...] = ()

    def __init__(self, work: Path) -> None:
        self.repo = work / "repos" / self.name
        self.home = work / "home" / self.name

    def missing(self) -> str | None:
        """Why the tool cannot run here, or ``None``."""
        absent = [b for b in self.binaries if self.locate(b) is None]
        return f"{', '.join(absent)} not found" if absent else None

    def locate(self, binary: str) -> str | None:
        return shutil.which(binary)

    def version(self) -> str:
        return capture([self.binaries[0], "--version"]) if self.binaries else ""

    def init(self) -> Measured:
        """Create an empty repository (not counted as snapshot time)."""
        self.repo.mkdir(parents=True)
        return Measured(0.0, 0)

    @abstractmethod
    def snapshot(self, data: Path, step: int) -> Measured:
        """Store the data dir as snapshot number ``step``."""

    @abstractmethod
    def restore(self, data: Path, step: int, target: Path) -> Measured:
        """Restore snapshot ``step`` into the existing empty directory ``target``."""

    def stored_bytes(self) -> int:
        return tree_size(self.repo)

    def cache_bytes(self) -> int:
        """Bytes the tool keeps outside its repository (local caches); not counted as stored."""
        return tree_size(self.home)

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def details(self, measured: Measured) -> dict[str, Any] | None:
        """Tool-specific facts about a snapshot, kept in the JSON rows."""
        return None


class CopyTool(Tool):
    """The seed procedure: ``cp app.db`` plus ``rsync -a faiss/`` into stamped names."""

    name = "copy"
    binaries = ("cp",)

    @staticmethod
    def stamp(step: int) -> str:
        return f"step{step:03d}"

    def _copy_dir(self, src: Path, dst: Path) -> Measured:
        if shutil.which("rsync"):
            return run(["rsync", "-a", f"{src}/", f"{dst}/"])
        return run(["cp", "-a", src, dst])  # same result as rsync -a into a new directory

    def snapshot(self, data: Path, step: int) -> Measured:
        stamp = self.stamp(step)
        db = run(["cp", data / "app.db", self.repo / f"app_{stamp}.db"])
        return db.then(self._copy_dir(data / "faiss", self.repo / f"faiss_{stamp}"))

    def restore(self, data: Path, step: int, target: Path) -> Measured:
        stamp = self.stamp(step)
        db = run(["cp", self.repo / f"app_{stamp}.db", target / "app.db"])
        return db.then(self._copy_dir(self.repo / f"faiss_{stamp}", target / "faiss"))

    def version(self) -> str:
        cp = capture(["cp", "--version"])
        rsync = capture(["rsync", "--version"]) if shutil.which("rsync") else "rsync absent, cp -a"
        return f"{cp}; {rsync}"


class TarZstdTool(Tool):
    """One ``tar | zstd -3`` archive per snapshot (python tarfile+zstandard without the CLI)."""

    name = "tarzstd"
    binaries = ("tar",)

    def archive(self, step: int) -> Path:
        return self.repo / f"step{step:03d}.tar.zst"

    def missing(self) -> str | None:
        if shutil.which("tar") and shutil.which("zstd"):
            return None
        try:
            import zstandard  # noqa: F401
        except ImportError:
            return "neither tar+zstd nor the zstandard module found"
        return None

    def version(self) -> str:
        if shutil.which("tar") and shutil.which("zstd"):
            return f"{capture(['tar', '--version'])}; {capture(['zstd', '--version'])}"
        import zstandard

        return f"python tarfile + zstandard {zstandard.__version__}"

    def snapshot(self, data: Path, step: int) -> Measured:
        archive = self.archive(step)
        if shutil.which("tar") and shutil.which("zstd"):
            return run(
                ["tar", "-cf", "-", "-C", data, "."],
                ["zstd", "-3", "-q", "-f", "-o", archive],
            )
        return run(helper_argv("create", data, archive))

    def restore(self, data: Path, step: int, target: Path) -> Measured:
        archive = self.archive(step)
        if shutil.which("tar") and shutil.which("zstd"):
            return run(["zstd", "-d", "-q", "-c", archive], ["tar", "-xf", "-", "-C", target])
        return run(helper_argv("extract", archive, target))


class ResticTool(Tool):
    """restic with a local repository (format v2, compression ``auto``)."""

    name = "restic"
    binaries = ("restic",)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RESTIC_PASSWORD": RESTIC_PASSWORD,
            "RESTIC_CACHE_DIR": str(self.home / "cache"),
        }

    def version(self) -> str:
        return capture(["restic", "version"])

    def init(self) -> Measured:
        self.repo.parent.mkdir(parents=True, exist_ok=True)
        return run(["restic", "-r", self.repo, "init", "-q"], env=self.env())

    def snapshot(self, data: Path, step: int) -> Measured:
        argv = ["restic", "-r", self.repo, "backup", "-q", "--host", "bench"]
        return run([*argv, "--tag", f"step{step}", "."], cwd=data, env=self.env())

    def restore(self, data: Path, step: int, target: Path) -> Measured:
        argv = ["restic", "-r", self.repo, "restore", "latest", "-q", "--target", target]
        return run(argv, env=self.env())


class BorgTool(Tool):
    """borg 1.x, unencrypted local repository, ``zstd,3`` compression, default chunker."""

    name = "borg"
    binaries = ("borg",)
    chunker_params: tuple[str, ...] = ()

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "BORG_BASE_DIR": str(self.home),
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        }

    def init(self) -> Measured:
        self.repo.parent.mkdir(parents=True, exist_ok=True)
        return run(["borg", "init", "--encryption=none", self.repo], env=self.env())

    def snapshot(self, data: Path, step: int) -> Measured:
        argv = ["borg", "create", "--compression", "zstd,3", *self.chunker_params]
        return run([*argv, f"{self.repo}::step{step}", "."], cwd=data, env=self.env())

    def restore(self, data: Path, step: int, target: Path) -> Measured:
        return run(["borg", "extract", f"{self.repo}::step{step}"], cwd=target, env=self.env())


class BorgFineTool(BorgTool):
    """borg with smaller chunks: buzhash, 16 KiB min, 1 MiB max, 64 KiB average target."""

    name = "borg-fine"
    chunker_params = ("--chunker-params", "buzhash,14,20,16,4095")


class CasnapTool(Tool):
    """casnap itself: ``commit --json`` and ``checkout --json`` (their reports carry the seconds
    of each phase, see phase_report.py)."""

    name = "casnap"
    binaries = ("casnap",)

    def locate(self, binary: str) -> str | None:
        for candidate in (Path(sys.executable).parent / binary, ROOT / ".venv" / "bin" / binary):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
        return shutil.which(binary)

    @property
    def exe(self) -> str:
        found = self.locate("casnap")
        if found is None:
            raise ToolError("casnap not found")
        return found

    def version(self) -> str:
        return capture([self.exe, "--version"])

    def init(self) -> Measured:
        self.repo.parent.mkdir(parents=True, exist_ok=True)  # commit creates the repository
        return Measured(0.0, 0)

    def snapshot(self, data: Path, step: int) -> Measured:
        argv = [self.exe, "--repo", self.repo, "--data", data, "commit", "--json"]
        return run(argv, env=self.env())

    def restore(self, data: Path, step: int, target: Path, ref: str = "latest") -> Measured:
        argv = [self.exe, "--repo", self.repo, "--data", data, "checkout", ref]
        return run([*argv, "--to", target, "--no-safety-snapshot", "--json"], env=self.env())

    def listing(self, data: Path, ref: str) -> list[dict[str, Any]]:
        """`ls --json` of a snapshot: its entries."""
        argv = [self.exe, "--repo", self.repo, "--data", data, "ls", ref, "--json"]
        found: list[dict[str, Any]] = json.loads(run(argv, env=self.env()).stdout)["files"]
        return found

    def cat_hash(self, data: Path, ref: str, path: str) -> str:
        """BLAKE3 of what `cat` streams for one file of a snapshot."""
        import blake3

        argv = [self.exe, "--repo", self.repo, "--data", data, "cat", ref, path]
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env()
        )
        assert proc.stdout is not None
        hasher = blake3.blake3()
        for block in iter(lambda: proc.stdout.read(1 << 20), b""):  # type: ignore[union-attr]
            hasher.update(block)
        _, err = proc.communicate()
        if proc.returncode:
            raise ToolError(f"casnap cat {ref} {path} exited {proc.returncode}: {err!r}")
        return hasher.hexdigest()

    def restore_unchecked(self, data: Path, step: int, target: Path) -> Measured:
        """The restore without casnap's smoke checks (every hash is still verified): what
        restic and borg do, which check nothing."""
        argv = [self.exe, "--repo", self.repo, "--data", data, "checkout", "latest"]
        extra = ["--no-safety-snapshot", "--no-smoke", "--json"]
        return run([*argv, "--to", target, *extra], env=self.env())

    def details(self, measured: Measured) -> dict[str, Any] | None:
        try:
            report = json.loads(measured.stdout)
        except json.JSONDecodeError:
            return {"unparsed_stdout": measured.stdout[-TAIL_CHARS:]}
        keys = (
            "id",
            "files_new",
            "files_changed",
            "files_unchanged",
            "bytes_read",
            "bytes_added",
            "phases",
        )
        return {k: report[k] for k in keys if k in report}


class CasnapEncryptedTool(CasnapTool):
    """casnap on an encrypted (repokey) repository: the first commit creates it, because a
    password is set (a fixed one, as for restic)."""

    name = "casnap-enc"

    def env(self) -> dict[str, str]:
        return dict(os.environ, CASNAP_PASSWORD="bench-password")


TOOLS: dict[str, type[Tool]] = {
    cls.name: cls
    for cls in (
        CasnapTool,
        CasnapEncryptedTool,
        CopyTool,
        TarZstdTool,
        ResticTool,
        BorgTool,
        BorgFineTool,
    )
}


# --------------------------------------------------------------------------------------------
# Python fallback for tar+zstd (runs as a subprocess of this script so it is measured the same)
# --------------------------------------------------------------------------------------------

HELPER_FLAG = "--tarzstd-helper"


def helper_argv(mode: str, src: Path, dst: Path) -> list[str | Path]:
    return [sys.executable, Path(__file__).resolve(), HELPER_FLAG, mode, src, dst]


def tarzstd_helper(mode: str, src: Path, dst: Path) -> None:
    import zstandard

    if mode == "create":
        compressor = zstandard.ZstdCompressor(level=3)
        with (
            dst.open("wb") as raw,
            compressor.stream_writer(raw) as zfh,
            tarfile.open(fileobj=zfh, mode="w|") as tar,
        ):
            tar.add(src, arcname=".")
    elif mode == "extract":
        decompressor = zstandard.ZstdDecompressor()
        with (
            src.open("rb") as raw,
            decompressor.stream_reader(raw) as zfh,
            tarfile.open(fileobj=zfh, mode="r|") as tar,
        ):
            tar.extractall(dst, filter="data")
    else:
        raise SystemExit(f"unknown helper mode {mode!r}")


if __name__ == "__main__" and sys.argv[1:2] == [HELPER_FLAG]:
    tarzstd_helper(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
