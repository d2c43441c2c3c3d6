"""Load a Chroma HNSW segment with hnswlib in a child process: `python -P .../hnsw_probe.py`.

casnap/hnsw_child.py starts it. Run as a script it imports nothing of casnap (only the standard
library, numpy and hnswlib, Chroma's fork: `chroma-hnswlib`), so it starts fast. hnswlib's
loader trusts the files' sizes and the graph's ids: a damaged segment can make it crash or ask
for absurd allocations, which here fails one smoke check instead of the casnap process. Input
on stdin: one JSON object {"path": folder, "dim": int, "elements": int, "limit": bytes}. Output
on stdout: one JSON object {"ok": bool or null (no hnswlib that reads Chroma's format),
"detail": str, "elements": int}.
"""

from __future__ import annotations

import json
import sys
from typing import Any

_TRIES = 100  # labels tried for a live element to query with


def _limit_memory(limit: int) -> None:
    """Cap the address space, so a damaged size fails an allocation instead of the machine."""
    try:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):
        pass  # no resource limits here: the timeout still bounds the child


def probe(path: str, dim: int, elements: int) -> dict[str, Any]:
    """Load one segment folder and query it with one of its own vectors (k=1)."""
    try:
        import hnswlib  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        return {"ok": None, "detail": "hnswlib (chroma-hnswlib) is not installed"}
    index = hnswlib.Index(space="l2", dim=dim)
    try:
        index.load_index(path, is_persistent_index=True, max_elements=max(elements, 1))
    except TypeError:
        return {"ok": None, "detail": "this hnswlib does not read Chroma's persisted format"}
    except (Exception, MemoryError) as exc:  # noqa: BLE001 - any loader failure is the answer
        return {"ok": False, "detail": f"hnswlib cannot load it: {exc}"[:300]}
    count = int(index.element_count)
    out: dict[str, Any] = {"elements": count}
    if count != elements:
        detail = f"hnswlib loaded {count} elements, header.bin says {elements}"
        return {**out, "ok": False, "detail": detail}
    for label in list(index.get_ids_list())[:_TRIES]:
        try:
            vector = index.get_items([label])
        except (Exception, MemoryError):  # noqa: BLE001 - a deleted element: try the next
            continue
        try:
            found, _ = index.knn_query(vector, k=1)
        except (Exception, MemoryError) as exc:  # noqa: BLE001
            return {**out, "ok": False, "detail": f"a k=1 query failed: {exc}"[:300]}
        detail = f"loaded by hnswlib: {count} elements; a k=1 query found label {found[0][0]}"
        return {**out, "ok": True, "detail": detail}
    return {**out, "ok": True, "detail": f"loaded by hnswlib: {count} elements, none live"}


def main() -> None:
    item = json.loads(sys.stdin.buffer.read())
    if item.get("limit"):
        _limit_memory(int(item["limit"]))
    result = probe(str(item["path"]), int(item["dim"]), int(item["elements"]))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
