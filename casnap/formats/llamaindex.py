"""LlamaIndex's persist dir, as `StorageContext.persist(folder)` writes it.

JSON files in one folder: `docstore.json` (the nodes, under `docstore/data`), `index_store.json`
(each index's struct: a vector index's `nodes_dict` maps vector-store ids to node ids),
`graph_store.json`, and a vector store per namespace, `<namespace>__vector_store.json`. With a
FAISS vector store that file is not JSON but a FAISS index; `FaissMapVectorStore` (an
IndexIDMap2) writes `id_map.json` beside it: `faiss_id_to_node_id_map` holds exactly the ids the
index holds, `node_id_to_faiss_id_map` one entry per node. LlamaIndex reuses a FAISS id after a
deletion (the new id is the index's ntotal), so ntotal may exceed the distinct ids, and the
node map may name ids the index no longer holds. What must agree are the ids the index holds
and those `faiss_id_to_node_id_map` maps (a search answers ids, each looked up there), and each
node of the index struct must be in the docstore. The id map's nodes and the index struct's
need not: `delete_nodes` takes nodes from the vector store alone (unless given
delete_from_docstore=True), `delete_ref_doc` and `refresh_ref_docs` take a document's nodes
from the index struct and leave their vectors (this vector store deletes by node id only);
LlamaIndex writes and reopens each of these states. What it cannot open is a persist dir
missing a file it reads: the docstore of an index struct that names nodes, the index store
beside a vector store, the FAISS index an id map maps into; and without the id map beside an
IndexIDMap holding vectors, it opens a store whose queries find nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from casnap.formats import LLAMAINDEX_DOCSTORE, LLAMAINDEX_INDEX_STORE, Finding, StoreLayout
from casnap.formats.faiss import IDMAP_FOURCCS, FaissHeader, read_faiss_header

if TYPE_CHECKING:  # numpy is imported where ids are compared: finding a store needs none
    import numpy as np

ID_MAP = "id_map.json"
VECTOR_STORE_SUFFIX = "__vector_store.json"  # <namespace>__vector_store.json


def parse_json(text: str | bytes) -> Any:
    """A JSON text's value; ValueError naming why it is not one that can be read (not JSON, a
    number of more digits than Python converts, arrays or objects nested too deep)."""
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise ValueError("is not valid JSON (nested too deep)") from exc
    except ValueError as exc:  # also UnicodeDecodeError, JSONDecodeError and too many digits
        raise ValueError(f"is not valid JSON ({exc})") from exc


def _load(path: Path) -> Any:
    """A JSON file's value; ValueError naming why it is not JSON."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot be read: {exc}") from exc
    return parse_json(raw)


def _describe(value: Any) -> str:
    """What a parsed file holds, in a few words: its nodes, indexes or ids where it has them."""
    if not isinstance(value, dict):
        return f"valid JSON ({type(value).__name__})"
    nodes = _docstore_ids(value) or set()
    structs = sum(
        len(v) for k, v in value.items() if str(k).endswith("/data") and isinstance(v, dict)
    )
    if "index_store/data" in value:
        return f"valid JSON: {structs} index struct(s)"
    if nodes:
        return f"valid JSON: {len(nodes)} nodes"
    ids = value.get("faiss_id_to_node_id_map")
    if isinstance(ids, dict):
        return f"valid JSON: {len(ids)} FAISS ids mapped to nodes"
    return f"valid JSON: {len(value)} keys"


def _docstore_ids(value: Any) -> set[str] | None:
    """The node ids a docstore holds (its `<namespace>/data` objects)."""
    if not isinstance(value, dict):
        return None
    ids: set[str] = set()
    for key, entries in value.items():
        if str(key).endswith("/data") and isinstance(entries, dict):
            ids.update(entries)
    return ids


def _vector_nodes(value: Any) -> list[dict[str, str]]:
    """The `nodes_dict` of each vector index in an index store (each struct's `__data__` is
    itself a JSON text): vector-store id -> node id. ValueError when one is not JSON or maps
    to anything but node ids."""
    out: list[dict[str, str]] = []
    if not isinstance(value, dict):
        return out
    for key, structs in value.items():
        if not str(key).endswith("/data") or not isinstance(structs, dict):
            continue
        for struct in structs.values():
            if not isinstance(struct, dict) or struct.get("__type__") != "vector_store":
                continue
            data = struct.get("__data__")
            try:
                parsed = parse_json(data) if isinstance(data, str) else data
            except ValueError as exc:
                raise ValueError(f"a vector index's __data__ {exc}") from exc
            nodes = parsed.get("nodes_dict") if isinstance(parsed, dict) else None
            if nodes is None:
                nodes = {}
            if not isinstance(nodes, dict) or not all(isinstance(n, str) for n in nodes.values()):
                raise ValueError("a vector index's nodes_dict maps to something but node ids")
            out.append(nodes)
    return out


def idmap_ids(path: Path, header: FaissHeader) -> np.ndarray | None:
    """The ids an IndexIDMap/IndexIDMap2 holds, sorted, as an int64 array (8 bytes an id): its
    last array (a u64 count, then the ids); None when the file does not end that way."""
    import numpy as np

    if header.fourcc.encode() not in IDMAP_FOURCCS or header.ntotal is None:
        return None
    n = header.ntotal
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            start = size - 8 * n - 8
            if start < 0:
                return None
            f.seek(start)
            if int.from_bytes(f.read(8), "little") != n:
                return None
            ids = np.empty(n, dtype="<i8")
            if f.readinto(ids.view(np.uint8)) != 8 * n:  # type: ignore[arg-type]
                return None
    except OSError:
        return None
    ids.sort()
    return ids


def _mapped_ids(keys: Collection[str]) -> np.ndarray | None:
    """The FAISS ids id_map.json maps, as a sorted int64 array of distinct ids; None when one
    is not an int64 id (LlamaIndex reads each key with int())."""
    import numpy as np

    try:
        return np.unique(np.fromiter((int(k) for k in keys), dtype=np.int64, count=len(keys)))
    except (ValueError, OverflowError):
        return None


def _not_ids(values: Collection[Any]) -> int:
    """How many of values LlamaIndex cannot read as a FAISS id (it reads each with int())."""
    bad = 0
    for v in values:
        try:
            int(v)
        except (TypeError, ValueError, OverflowError):
            bad += 1
    return bad


def _compare_ids(held: np.ndarray, mapped: np.ndarray) -> tuple[int, int, int]:
    """(distinct ids held, held but not mapped, mapped but not held) of a sorted array of the
    ids an index holds and a sorted array of distinct mapped ids; in place of sets of Python
    ints, a few bytes an id."""
    import numpy as np

    distinct = int(np.count_nonzero(held[1:] != held[:-1])) + 1 if held.size else 0
    if held.size:
        at = np.minimum(np.searchsorted(held, mapped), held.size - 1)
        found = int(np.count_nonzero(held[at] == mapped))
    else:
        found = 0
    return distinct, distinct - found, mapped.size - found


def check(store: StoreLayout, view: Mapping[str, Path]) -> list[Finding]:
    """Each JSON file parsed (llamaindex-json), then the FAISS vector store's ids against the
    id map, and the index struct's nodes against the docstore (llamaindex-counts)."""
    found: list[Finding] = []
    values: dict[str, Any] = {}
    faiss_stores: list[tuple[str, FaissHeader]] = []
    for rel in store.files:
        header = read_faiss_header(view[rel])
        if header is not None:  # a FAISS vector store: the FAISS checks read it
            faiss_stores.append((rel, header))
            continue
        try:
            values[PurePosixPath(rel).name] = value = _load(Path(view[rel]))
        except ValueError as exc:
            found.append(Finding("llamaindex-json", rel, False, f"{PurePosixPath(rel).name} {exc}"))
            continue
        found.append(Finding("llamaindex-json", rel, True, _describe(value)))
    if any(not f.ok for f in found):
        return found
    try:
        structs = _vector_nodes(values.get(LLAMAINDEX_INDEX_STORE))
    except ValueError as exc:
        return [
            *found,
            Finding(
                "llamaindex-json",
                store.rel(LLAMAINDEX_INDEX_STORE),
                False,
                f"{LLAMAINDEX_INDEX_STORE}: {exc}",
            ),
        ]
    missing = _missing(store, values, structs, faiss_stores)
    if missing is not None:
        return [*found, missing]
    counts = _counts(store, view, values, structs, faiss_stores)
    if counts is not None:
        found.append(counts)
    return found


def _missing(
    store: StoreLayout,
    values: Mapping[str, Any],
    structs: list[dict[str, str]],
    faiss_stores: list[tuple[str, FaissHeader]],
) -> Finding | None:
    """A failed llamaindex-counts finding when a file LlamaIndex needs to open the store is
    not there (excluded at commit, deleted, a persist cut short): the docstore of an index
    struct naming nodes, the index store beside a vector store, the FAISS index an id map maps
    into. None when nothing is missing. A docstore alone (an ingestion pipeline's) needs none."""
    nodes = sum(len(s) for s in structs)
    vector_stores = [r for r in store.files if r.endswith(VECTOR_STORE_SUFFIX)]
    if nodes and LLAMAINDEX_DOCSTORE not in values:
        detail = (
            f"{LLAMAINDEX_DOCSTORE} is missing, yet {LLAMAINDEX_INDEX_STORE} names {nodes} "
            "node(s): LlamaIndex cannot open the index without it"
        )
        return Finding("llamaindex-counts", store.rel(LLAMAINDEX_DOCSTORE), False, detail)
    if vector_stores and LLAMAINDEX_INDEX_STORE not in values:
        detail = (
            f"{LLAMAINDEX_INDEX_STORE} is missing beside {PurePosixPath(vector_stores[0]).name}: "
            "LlamaIndex cannot open the store without it"
        )
        return Finding("llamaindex-counts", store.rel(LLAMAINDEX_INDEX_STORE), False, detail)
    id_map = values.get(ID_MAP)
    mapped = [(r, h) for r, h in faiss_stores if h.fourcc.encode() in IDMAP_FOURCCS]
    if id_map is None and any(h.ntotal for _, h in mapped):
        rel, header = next((r, h) for r, h in mapped if h.ntotal)
        detail = (
            f"{ID_MAP} is missing beside {PurePosixPath(rel).name}, an IndexIDMap of "
            f"{header.ntotal} vector(s) (FaissMapVectorStore's): without it no FAISS id maps "
            "to a node, and LlamaIndex's queries find nothing"
        )
        return Finding("llamaindex-counts", store.rel(ID_MAP), False, detail)
    if id_map is not None and not faiss_stores:
        f2n = id_map.get("faiss_id_to_node_id_map") if isinstance(id_map, dict) else None
        ids = len(f2n) if isinstance(f2n, dict) else 0
        detail = (
            f"{ID_MAP} maps {ids} FAISS id(s), yet the folder holds no FAISS vector store "
            f"(default{VECTOR_STORE_SUFFIX}): LlamaIndex cannot open the store without it"
        )
        faiss_rel = store.rel(f"default{VECTOR_STORE_SUFFIX}")  # the file missing
        return Finding("llamaindex-counts", faiss_rel, False, detail)
    return None


def _counts(
    store: StoreLayout,
    view: Mapping[str, Path],
    values: Mapping[str, Any],
    structs: list[dict[str, str]],
    faiss_stores: list[tuple[str, FaissHeader]],
) -> Finding | None:
    """The llamaindex-counts finding of a persist dir with one FAISS vector store; None when
    there is nothing to compare."""
    if len(faiss_stores) != 1:
        return None
    rel, header = faiss_stores[0]
    problems: list[str] = []
    said: list[str] = []
    info: dict[str, Any] = {"ntotal": header.ntotal}
    f2n: dict[str, Any] | None = None
    id_map = values.get(ID_MAP)
    if id_map is not None:
        f2n = id_map.get("faiss_id_to_node_id_map") if isinstance(id_map, dict) else None
        n2f = id_map.get("node_id_to_faiss_id_map") if isinstance(id_map, dict) else None
        if not isinstance(f2n, dict) or not isinstance(n2f, dict):
            return Finding(
                "llamaindex-counts", store.rel(ID_MAP), False, "id_map.json holds no id maps"
            )
        info.update(ids=len(f2n), nodes=len(n2f))
        _compare_id_map(Path(view[rel]), header, f2n, n2f, problems, said)
    if len(structs) == 1:
        in_index = structs[0]
        info["index_nodes"] = len(in_index)
        if f2n is None and header.ntotal is not None and len(in_index) != header.ntotal:
            problems.append(
                f"the index holds {header.ntotal} vectors, index_store.json {len(in_index)}"
            )
        else:
            said.append(f"{len(in_index)} nodes in index_store.json")
        stored = _docstore_ids(values.get(LLAMAINDEX_DOCSTORE))
        if stored is not None and LLAMAINDEX_DOCSTORE in values:
            missing = sum(1 for n in in_index.values() if n not in stored)
            info["documents"] = len(stored)
            if missing:
                problems.append(f"{missing} node(s) of index_store.json missing from docstore.json")
            else:
                said.append("each in docstore.json")
        if f2n is not None and not problems:
            said += _apart(f2n, in_index)
    if problems:
        return Finding("llamaindex-counts", rel, False, "; ".join(problems), info)
    if not said:
        return None
    return Finding("llamaindex-counts", rel, True, ", ".join(said), info)


def _compare_id_map(
    path: Path,
    header: FaissHeader,
    f2n: dict[str, Any],
    n2f: dict[str, Any],
    problems: list[str],
    said: list[str],
) -> None:
    """The ids the index holds against those id_map.json maps (the two sets LlamaIndex keeps
    equal: a search answers ids, each looked up in the map), and each id and node of the maps
    one LlamaIndex reads."""
    name = path.name
    bad_nodes = sum(1 for n in f2n.values() if not isinstance(n, str))
    if bad_nodes:
        problems.append(f"id_map.json maps {bad_nodes} FAISS id(s) to something but a node id")
    bad_ids = _not_ids(n2f.values())
    if bad_ids:
        problems.append(f"id_map.json maps {bad_ids} node(s) to something that is not a FAISS id")
    ids = idmap_ids(path, header)
    mapped = _mapped_ids(f2n)
    if ids is None:
        problems.append(f"{name} is not an IndexIDMap ending in its ids")
    elif mapped is None:
        problems.append("id_map.json maps something that is not a FAISS id")
    else:
        distinct, unmapped, absent = _compare_ids(ids, mapped)
        if unmapped or absent:
            problems.append(
                f"the index holds {distinct} distinct ids, id_map.json maps {mapped.size} "
                f"({unmapped} unmapped, {absent} not in the index)"
            )
        else:
            said.append(f"{distinct} ids match id_map.json")


def _apart(f2n: dict[str, Any], in_index: dict[str, str]) -> list[str]:
    """Where the id map's nodes and the index struct's part, as LlamaIndex's own operations
    leave them: delete_nodes (by default) takes nodes from the vector store alone,
    delete_ref_doc and refresh_ref_docs take a document's nodes from the index struct alone
    (this vector store deletes by node id only), so their vectors stay."""
    found = []
    answered = set(f2n.values())
    kept = sum(1 for n in in_index if n not in answered)
    if kept:
        found.append(f"{kept} of them not answered by the vector store (deleted from it alone)")
    stale = sum(1 for n in answered if n not in in_index)
    if stale:
        found.append(
            f"{stale} node(s) the vector store answers not in index_store.json (their vectors "
            "left by delete_ref_doc or refresh_ref_docs: a LlamaIndex query reaching one fails)"
        )
    return found
