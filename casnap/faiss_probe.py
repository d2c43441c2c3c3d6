"""Read and search FAISS indexes in a child process: `python -P .../casnap/faiss_probe.py`.

casnap/faiss_child.py starts the child, feeds it and watches it; this is the script it runs.

Run as a script it imports nothing of casnap (only the standard library and FAISS), so the child
starts fast. A damaged index can make the FAISS reader crash or ask for absurd allocations; run
here, that fails one smoke check instead of the casnap process. Input on stdin: one JSON object
per line, {"path": str, "binary": bool, "limit": int (optional), "mmap": bool (optional)}, read
as it arrives (a checkout hands over each index as soon as it is restored) until end of input;
`limit` caps the child's address space in bytes while that index is read; `mmap` (for a file
nobody else writes: a truncation under a map would kill the child) maps the index's arrays
instead of copying them (FAISS's IO_FLAG_MMAP_IFC, where this FAISS has it: reading a large
Flat index then costs a fraction of the CPU, and the same header and size checks are made).
Output on stdout: one JSON object per line: {"ready": true} once FAISS is loaded, {"start": i}
before the i-th index (from 0) is read, then {"done": i, "ok": bool, "check": str, "detail":
str, "ntotal", "d", "type"}.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

# FAISS's check of each read: "'ret == (size)' failed: read error in NAME: GOT != WANTED (errno
# text)", NAME empty when the file is mapped; GOT and WANTED count values, not bytes
# OnDiskInvertedLists opening its lists file: "'f' failed: could not open PATH in mode r+"
_ONDISK_LISTS = re.compile(r"could not open (.+) in mode r\+")
_SHORT_READ = re.compile(r"'\w+ == \(\w+\)' failed: read error in .*: (\d+) != (\d+) \(([^)]*)\)")


def _short(exc: BaseException) -> str:
    """FAISS error text without the C++ function signature and source location; a read that
    came up short said in plain words (the end of the file, or the system's error)."""
    text = str(exc).strip() or type(exc).__name__
    if "Error: " in text:
        text = text.rsplit("Error: ", 1)[1]
    else:
        text = re.sub(r"^Error in .*? at \S+:\d+: ", "", text, flags=re.S)
    text = " ".join(text.split())
    short = _SHORT_READ.search(text)
    if short is not None:
        got, wanted, why = short.groups()
        if why in ("Success", ""):  # no error: the end of the file came first
            return f"the file ends early: FAISS read {got} of the {wanted} values it expected next"
        return f"a read failed ({why}): FAISS read {got} of the {wanted} values it expected next"
    return text[:300]


def _empty(path: str) -> bool:
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False  # the reader says why


def _without_lists(read: Any, path: str, faiss: Any) -> Any:
    """The index at path read without its inverted lists (FAISS's IO_FLAG_SKIP_IVF_DATA), or
    None when even that fails."""
    try:
        return read(path, getattr(faiss, "IO_FLAG_SKIP_IVF_DATA", 8))
    except (Exception, MemoryError):  # noqa: BLE001
        return None


def _query(index: Any, faiss: Any, np: Any, binary: bool) -> Any:
    """A query vector: a stored vector when the index can reconstruct one, else a centroid of a
    non-empty inverted list (IVF), else zeros."""
    try:
        return index.reconstruct(0).reshape(1, -1)
    except Exception:  # noqa: BLE001 - many index types cannot reconstruct
        pass
    if binary:
        return np.zeros((1, index.code_size), dtype="uint8")
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and ivf.d == index.d:
        for list_no in range(ivf.nlist):
            if ivf.invlists.list_size(list_no) > 0:
                try:
                    return ivf.quantizer.reconstruct(list_no).reshape(1, -1)
                except Exception:  # noqa: BLE001 - a quantizer that cannot reconstruct
                    break
    return np.zeros((1, index.d), dtype="float32")


def probe(path: str, binary: bool, mmap: bool = False) -> dict[str, Any]:
    """Read one index (its arrays mapped with mmap) and run one k=1 search on it; the outcome as
    a JSON-ready dict."""
    import faiss
    import numpy as np

    if _empty(path):  # FAISS would say it cannot map it, or that it read no header
        return {
            "ok": False,
            "check": "faiss-read",
            "detail": "cannot be read: the file is empty (0 bytes)",
        }
    read = faiss.read_index_binary if binary else faiss.read_index
    # inverted lists kept in a file of their own (OnDiskInvertedLists) are read from the one
    # beside this copy, never from the path the index names (the live data dir's)
    beside = getattr(faiss, "IO_FLAG_ONDISK_SAME_DIR", 0)
    flags = getattr(faiss, "IO_FLAG_MMAP_IFC", 0) if mmap else 0
    try:
        try:
            index = read(path, flags | beside)
        except RuntimeError as exc:
            if not (flags and "IO_FLAG_ONDISK_SAME_DIR" in str(exc)):
                raise
            index = read(path, beside)  # FAISS looks beside only a file it reads (no map)
    except (Exception, MemoryError) as exc:  # noqa: BLE001 - any reader failure is the answer
        lists = _ONDISK_LISTS.search(str(exc))
        bare = _without_lists(read, path, faiss) if lists is not None else None
        if lists is None or bare is None:
            return {"ok": False, "check": "faiss-read", "detail": f"cannot be read: {_short(exc)}"}
        name = lists[1].rsplit("/", 1)[-1]
        return {
            "ntotal": int(bare.ntotal),
            "d": int(bare.d),
            "type": type(bare).__name__,
            "ok": True,
            "warning": True,
            "check": "faiss-search",
            "detail": f"its inverted lists, kept in {name}, are not beside it: read without "
            "them, not searched",
        }
    out: dict[str, Any] = {"ntotal": int(index.ntotal), "d": int(index.d)}
    out["type"] = type(index).__name__
    if index.ntotal == 0:
        return {**out, "ok": True, "check": "faiss-search", "detail": "empty index (ntotal 0)"}
    try:
        query = _query(index, faiss, np, binary)
        _, ids = index.search(query, 1)
        if ids[0][0] < 0:
            ivf = faiss.try_extract_index_ivf(index)  # type: ignore[arg-type]  # float only
            if ivf is not None:  # the probed lists were empty: search them all
                ivf.nprobe = ivf.nlist
                _, ids = index.search(query, 1)
    except (Exception, MemoryError) as exc:  # noqa: BLE001
        return {**out, "ok": False, "check": "faiss-search", "detail": f"search: {_short(exc)}"}
    if ids[0][0] < 0:
        detail = f"a k=1 search over {index.ntotal} vectors returned no result"
        return {**out, "ok": False, "check": "faiss-search", "detail": detail}
    found = f"k=1 search found id {ids[0][0]}"
    return {**out, "ok": True, "check": "faiss-search", "detail": found}


def _limit_memory(limit: int) -> None:
    """Cap the address space, so a damaged size field fails an allocation instead of the machine."""
    try:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):
        pass  # no resource limits on this platform: the timeout still bounds the child


def main() -> None:
    """Probe every index named on stdin as it arrives, reporting progress line by line."""
    try:  # load FAISS while the first index is still being restored
        import faiss  # noqa: F401
    except ImportError:
        pass  # each probe then fails with the reason
    print(json.dumps({"ready": True}), flush=True)
    limit = 0
    i = 0
    while line := sys.stdin.buffer.readline():
        if not line.strip():
            continue
        item = json.loads(line)
        wanted = int(item.get("limit") or 0)
        if wanted and wanted != limit:
            _limit_memory(wanted)
            limit = wanted
        print(json.dumps({"start": i}), flush=True)
        result = probe(str(item["path"]), bool(item.get("binary")), bool(item.get("mmap")))
        print(json.dumps({"done": i, **result}), flush=True)
        i += 1


if __name__ == "__main__":
    main()
