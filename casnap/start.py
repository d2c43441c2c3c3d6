"""The command line's entry point (the console script and `python -m casnap`): Ctrl-C while
its modules load, before it has done anything, is one line and exit 130, not a traceback of the
import that was running. Importing casnap as a library changes no signal handling."""

from __future__ import annotations

from casnap import procs


def main() -> None:
    """Run the command line, Ctrl-C quiet until it has loaded (cli.main.main then puts Python's
    own handler back)."""
    procs.quiet_interrupts_while_loading()
    from casnap.cli.main import main as run  # the modules the handler covers

    run()
