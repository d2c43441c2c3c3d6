"""Several hosts on one S3 repository: commits of data dirs, each under a host name of its own,
racing a maintenance command, and the checks that every snapshot they leave reads back whole."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.test_s3 import run
from tests.util import snapshot_tree


def with_hostname(name: str, argv: list[str]) -> list[str]:
    """argv run under its own host name (a UTS namespace) when this machine allows it."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return argv
    probe = subprocess.run(
        [unshare, "-u", "sh", "-c", "hostname probe-host"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        return argv
    script = 'hostname "$0" && exec "$@"'
    return [unshare, "-u", "sh", "-c", script, name, *argv]


def race(url: str, env: dict[str, str], datas: Sequence[Path], maintenance: list[str]) -> list[str]:
    """`commit -q` of each data dir (host-0, host-1, ...) and `maintenance` (host-gc) started at
    once; each must succeed. Returns the snapshot ids the commits printed, in datas' order."""
    casnap = [sys.executable, "-m", "casnap", "--repo", url]
    argvs = [
        with_hostname(f"host-{n}", [*casnap, "--data", str(d), "commit", "-q"])
        for n, d in enumerate(datas)
    ]
    argvs.append(with_hostname("host-gc", [*casnap, *maintenance]))
    procs = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for argv in argvs
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        outs.append(out.decode().strip())
    return outs[: len(datas)]


def assert_whole(
    url: str, password: str, ids: Sequence[str], datas: Sequence[Path], tmp_path: Path
) -> set[str]:
    """verify --read-data passes and each snapshot in ids checks out equal to its data dir;
    returns the ids `log` lists."""
    code, out, err = run(url, datas[0], "log", "--json", password=password)
    assert code == 0, err
    listed = {r["id"] for r in json.loads(out)}
    code, _, err = run(url, datas[0], "verify", "--read-data", password=password)
    assert code == 0, err
    for sid, d in zip(ids, datas, strict=True):
        target = tmp_path / f"out-{sid[:8]}"
        code, _, err = run(url, d, "checkout", sid, "--to", str(target), "-q", password=password)
        assert code == 0, err
        assert snapshot_tree(target) == snapshot_tree(d)
    return listed
