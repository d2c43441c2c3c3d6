"""Requests a warm `log` and a commit that finds nothing changed send to S3, counted.

Used by ``s3.py`` once its commits have warmed this host's cache: each is run in this process
over the repository's own boto3 client, with a botocore event hook (registered here, on that
client: casnap itself registers none) counting every API call by operation. The target is one
listing and no download for either; a commit adds the writes its safety needs (its lock put and
removed, its manifest put).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """This process's environment set to env for the block (the endpoint, fake credentials)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _client(repo: Any) -> Any:
    layer = repo.raw_backend
    while layer is not None and not hasattr(layer, "_client"):
        layer = getattr(layer, "inner", None)
    if layer is None:
        raise SystemExit(f"{repo.backend.location} is not an S3 repository")
    return layer._client


def warm_requests(url: str, data: Path, password: str) -> dict[str, Any]:
    """{"commit": {operation: count}, "log": {...}, "commit_bytes_read": ...} of one commit of
    data (unchanged since the last one) and one `log`, each a fresh open of url."""
    from casnap.committer import commit
    from casnap.repository import Repository
    from casnap.stats import log_rows

    out: dict[str, Any] = {}
    for what in ("commit", "log"):
        repo = Repository.open(url, password=lambda: password)
        sent: Counter[str] = Counter()

        def note(model: Any, sent: Counter[str] = sent, **_: Any) -> None:
            sent[model.name] += 1

        _client(repo).meta.events.register("provide-client-params.s3", note)
        try:
            if what == "commit":
                out["commit_bytes_read"] = commit(repo, data, message="no change").bytes_read
            else:
                log_rows(repo)
        finally:
            repo.close()
        out[what] = dict(sorted(sent.items()))
    return out


def describe(counts: dict[str, int]) -> str:
    """ "1 ListObjectsV2, 2 PutObject, ..." (every request by operation), and the total."""
    parts = [f"{n} {op}" for op, n in counts.items()]
    total = sum(counts.values())
    return f"{total} request{'' if total == 1 else 's'}: {', '.join(parts) or 'none'}"
