"""casnap: a content-addressed, deduplicating snapshot store for a SQLite + FAISS data directory.

The Python API: open or create a `Repository`, then call the operations on it, as the CLI does:

    repo = Repository.open_or_init("backups")
    result = commit(repo, "data", message="nightly", tags=["nightly"])
    checkout(repo, result.id, "restore-test", safety_snapshot=False)

Each name is imported from its module when first used, so `import casnap` (and every command
line run) loads only what it needs: numpy, zstandard, FAISS and the crypto libraries cost more
than a command like `casnap log` takes.
"""

from __future__ import annotations

import importlib

# typing.TYPE_CHECKING without importing typing (~5 ms): the command line's entry point makes
# Ctrl-C one line only once this package has loaded (start.py)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from casnap.changes import diff
    from casnap.checker import verify
    from casnap.collector import collect
    from casnap.committer import CommitResult, commit
    from casnap.contents import dump
    from casnap.copier import CopyResult, copy_snapshots
    from casnap.errors import CasnapError
    from casnap.importer import import_copies
    from casnap.repair import repair_index
    from casnap.repository import Repository
    from casnap.restorer import CheckoutResult, checkout
    from casnap.retention import Policy, forget, prune
    from casnap.staging import smoke_verify
    from casnap.stats import repository_stats, snapshot_stats

# every exported name and the module that defines it
_EXPORTS = {
    "CasnapError": "casnap.errors",
    "CheckoutResult": "casnap.restorer",
    "CommitResult": "casnap.committer",
    "CopyResult": "casnap.copier",
    "Policy": "casnap.retention",
    "Repository": "casnap.repository",
    "checkout": "casnap.restorer",
    "collect": "casnap.collector",
    "commit": "casnap.committer",
    "copy_snapshots": "casnap.copier",
    "diff": "casnap.changes",
    "dump": "casnap.contents",
    "forget": "casnap.retention",
    "import_copies": "casnap.importer",
    "prune": "casnap.retention",
    "repair_index": "casnap.repair",
    "repository_stats": "casnap.stats",
    "smoke_verify": "casnap.staging",
    "snapshot_stats": "casnap.stats",
    "verify": "casnap.checker",
}

__all__ = [
    "CasnapError",
    "CheckoutResult",
    "CommitResult",
    "CopyResult",
    "Policy",
    "Repository",
    "checkout",
    "collect",
    "commit",
    "copy_snapshots",
    "diff",
    "dump",
    "forget",
    "import_copies",
    "prune",
    "repair_index",
    "repository_stats",
    "smoke_verify",
    "snapshot_stats",
    "verify",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """An exported name, imported from its module on first use (then kept here)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'casnap' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
