"""casnap: a content-addressed, deduplicating snapshot store for a SQLite + FAISS data directory.

The Python API: open or create a `Repository`, then call the operations on it, as the CLI does:

    repo = Repository.open_or_init("backups")
    result = commit(repo, "data", message="nightly", tags=["nightly"])
    checkout(repo, result.id, "restore-test", safety_snapshot=False)
"""

from __future__ import annotations

from casnap.changes import diff
from casnap.checker import verify
from casnap.collector import collect
from casnap.committer import CommitResult, commit
from casnap.contents import dump
from casnap.copier import CopyResult, copy_snapshots
from casnap.errors import CasnapError
from casnap.importer import import_copies
from casnap.repository import Repository
from casnap.restorer import CheckoutResult, checkout
from casnap.retention import Policy, forget, prune
from casnap.staging import smoke_verify
from casnap.stats import repository_stats, snapshot_stats

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
    "repository_stats",
    "smoke_verify",
    "snapshot_stats",
    "verify",
]
__version__ = "0.1.0"
