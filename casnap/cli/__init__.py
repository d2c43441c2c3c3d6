"""The casnap command line: parse, call the Repository API, print. Errors are mapped in one place
(main.CasnapGroup.main); each of the other modules holds one group of commands, or what they
share (options.py, output.py, passwords.py, pipes.py)."""

from __future__ import annotations

from casnap.cli import (  # noqa: F401 - registers the commands
    browse,
    copying,
    forgetting,
    importing,
    keys,
    maintenance,
    restoring,
    snapshots,
)
from casnap.cli.main import CasnapGroup, Context, cli, main
from casnap.cli.output import ProgressBar, human, progress_bar

__all__ = ["CasnapGroup", "Context", "ProgressBar", "cli", "human", "main", "progress_bar"]
