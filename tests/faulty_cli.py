"""`python -m tests.faulty_cli SPEC ARGS...`: the casnap CLI, with the faults of SPEC injected.

For the crash tests that run the real CLI as a subprocess: SPEC lists faults as
`op:action:nth[:prefix]` items (see tests.faults.parse_spec; `put:kill:7` SIGKILLs the process
after its 7th backend put), the backend the command opens on its repository gets them, and
casnap.cli.main() runs ARGS exactly as `python -m casnap ARGS` would.
"""

from __future__ import annotations

import sys

from casnap.cli import main
from tests.faults import faulty_local_backends


def run(argv: list[str]) -> None:
    """Run the CLI on argv[1:] under the faults of argv[0]; exits with the CLI's code."""
    if not argv:
        sys.exit("usage: python -m tests.faulty_cli SPEC [casnap arguments...]")
    spec, *args = argv
    sys.argv = [sys.argv[0], *args]
    with faulty_local_backends(spec):
        main()


if __name__ == "__main__":
    run(sys.argv[1:])
