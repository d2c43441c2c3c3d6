"""What smoke checks report: one Check per file and question, and the SmokeReport over them all.

The checks of databases (smoke_sqlite), FAISS indexes (smoke_faiss) and the user's command
(smoke_cmd) each produce Checks; smoke.SmokeSession gathers them into a report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from casnap.errors import SmokeCheckFailed


@dataclass(frozen=True)
class Check:
    """One smoke check of one file (path "" for the user command)."""

    check: str  # sqlite-integrity, sqlite-tables, faiss-read, faiss-ntotal, faiss-search, ...
    path: str
    ok: bool
    detail: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    # passed, but the detail names a disagreement a checkout does not refuse (a stale sidecar)
    warning: bool = False

    def describe(self) -> str:
        """`check on path: detail`, as error messages name a failed check."""
        where = f" on {self.path}" if self.path else ""
        return f"{self.check}{where}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "path": self.path,
            "ok": self.ok,
            "detail": self.detail,
            "info": self.info,
            "warning": self.warning,
        }


@dataclass(frozen=True)
class SmokeReport:
    """Every check run over a set of restored files."""

    checks: tuple[Check, ...] = ()

    @property
    def ok(self) -> bool:
        """Every check passed."""
        return all(c.ok for c in self.checks)

    @property
    def warnings(self) -> list[Check]:
        """The checks that passed with a warning, in the order run."""
        return [c for c in self.checks if c.warning]

    @property
    def failures(self) -> list[Check]:
        """The checks that failed, in the order run."""
        return [c for c in self.checks if not c.ok]

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.to_json() for c in self.checks]}

    def raise_if_failed(self, what: str) -> None:
        """SmokeCheckFailed naming each failed check and file, when any failed."""
        bad = self.failures
        if not bad:
            return
        listed = "; ".join(c.describe() for c in bad[:3])
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise SmokeCheckFailed(
            f"smoke check failed, {what}: {listed}{more}", [c.to_json() for c in bad]
        )
