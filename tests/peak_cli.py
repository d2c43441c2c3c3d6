"""Run the casnap CLI and, at exit, write its peak resident memory to a file.

`python -m tests.peak_cli OUT ARGS...`: the peak is the process's own VmHWM (the high-water mark
of its address space since exec). A child's ru_maxrss from wait4 would not do: Linux carries the
peak of the address space a process had before exec into it, so a child forked from a large test
process reports that process's peak.
"""

from __future__ import annotations

import atexit
import sys


def _write_peak(path: str) -> None:
    with open("/proc/self/status", encoding="ascii") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    with open(path, "w", encoding="ascii") as out:
        out.write(str(kib * 1024))


if __name__ == "__main__":
    atexit.register(_write_peak, sys.argv[1])
    sys.argv = ["casnap", *sys.argv[2:]]
    from casnap.cli import main

    main()
