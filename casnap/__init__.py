"""casnap: a content-addressed, deduplicating snapshot store for a SQLite + FAISS data directory."""

from __future__ import annotations

from casnap.checkout import CheckoutResult
from casnap.errors import CasnapError
from casnap.repository import CommitResult, Repository

__all__ = ["CasnapError", "CheckoutResult", "CommitResult", "Repository"]
__version__ = "0.1.0"
