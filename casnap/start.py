"""The command line's entry point (the console script and `python -m casnap`): Ctrl-C, SIGTERM
or SIGHUP while its modules load, before it has done anything, is one line and the signal's exit
code, not a traceback of the import that was running. Importing casnap as a library changes no
signal handling."""

from __future__ import annotations

from casnap import signals


def main() -> None:
    """Run the command line, quiet on a signal until it has loaded (cli.main.main then makes
    signals unwind the command: signals.handle)."""
    signals.quiet_while_loading()
    from casnap.cli.main import main as run  # the modules the handler covers

    run()
