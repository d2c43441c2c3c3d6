"""The command line's entry point (the console script and `python -m casnap`): Ctrl-C, SIGTERM
or SIGHUP while its modules load, before it has done anything, is one line and the signal's exit
code, not a traceback of the import that was running. Importing casnap as a library changes no
signal handling."""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # C, loaded already; `signal` takes ~10 ms
import os
from types import FrameType


def _early(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C while the entry point loads its own signal handling (signals.py): one line."""
    os.write(2, b"casnap: interrupted\n")
    os._exit(128 + signum)


if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:  # an ignored one stays so
    _signal.signal(_signal.SIGINT, _early)

from casnap import signals  # noqa: E402 - after the handler above, which covers its loading


def main() -> None:
    """Run the command line, quiet on a signal until it has loaded (cli.main.main then makes
    signals unwind the command: signals.handle)."""
    signals.quiet_while_loading(_early)
    from casnap.cli.main import main as run  # the modules the handler covers

    run()
