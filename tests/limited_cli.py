"""Run the casnap CLI with little address space left: `python -m tests.limited_cli MIB ARGS...`.

casnap and what a command imports are loaded first, then the process's address space limit
(RLIMIT_AS, `ulimit -v`) is set to what it then maps plus MIB MiB, so the command's own
allocations (a buffer, a thread's stack) fail, not the imports.
"""

from __future__ import annotations

import resource
import sys

if __name__ == "__main__":
    extra = int(sys.argv[1]) << 20
    sys.argv = ["casnap", *sys.argv[2:]]
    import numpy  # noqa: F401

    import casnap.committer
    import casnap.restorer  # noqa: F401
    from casnap.cli import main

    with open("/proc/self/status", encoding="ascii") as f:
        mapped = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mapped + extra, mapped + extra))
    main()
