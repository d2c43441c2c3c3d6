"""LangChain's FAISS store, as `FAISS.save_local(folder, index_name)` writes it.

Two files in one folder: `<name>.faiss`, a FAISS index (`faiss.write_index`), and `<name>.pkl`,
a pickle of the pair (docstore, index_to_docstore_id): an InMemoryDocstore whose `_dict` maps
each document id to a Document, and a dict from each vector's position in the index (0, 1, ...)
to its document id. LangChain keeps the three in step: every vector has a position, every
position a document. The pickle is read by walking its opcodes (formats/pickles.py), never
loaded: it may name only LangChain's docstore and document classes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from casnap.formats import Finding, StoreLayout
from casnap.formats.faiss import read_faiss_header
from casnap.formats.pickles import Global, PickleProblem, state_of, walk

# The classes a LangChain docstore pickle names (in whichever LangChain package defines them),
# and what Python's own pickling of plain objects adds; nothing else is expected.
_CLASSES = frozenset({"InMemoryDocstore", "Document"})
_PACKAGES = frozenset({"langchain", "langchain_core", "langchain_community"})
_PLAIN = frozenset(
    {
        Global("copyreg", "_reconstructor"),
        Global("builtins", "object"),
        Global("builtins", "set"),
        Global("builtins", "frozenset"),
        Global("collections", "OrderedDict"),
    }
)


def expected_global(g: Global) -> bool:
    """Whether a docstore pickle may name g: LangChain's docstore or document class, or what
    pickling a plain object adds."""
    return g in _PLAIN or (g.module.split(".")[0] in _PACKAGES and g.name in _CLASSES)


@dataclass(frozen=True)
class Docstore:
    """What a LangChain `.pkl` holds: the document ids of its docstore, the map from vector
    positions to document ids, and the classes the pickle names."""

    documents: frozenset[str]
    positions: dict[int, str]
    classes: tuple[str, ...]


def read_docstore(data: bytes) -> Docstore:
    """The docstore and position map of a `.pkl`, from its opcodes alone; PickleProblem when it
    is not a well-formed pickle of that pair, or names anything but LangChain's classes."""
    found = walk(data, expected_global, "a LangChain docstore pickle")
    value = found.value
    if not isinstance(value, tuple) or len(value) != 2:
        raise PickleProblem("not a LangChain FAISS pickle: not a (docstore, index map) pair")
    state = state_of(value[0])
    docs = state.get("_dict") if isinstance(state, dict) else None
    if not isinstance(docs, dict):
        raise PickleProblem("not a LangChain FAISS pickle: its docstore holds no `_dict`")
    positions = value[1]
    if not isinstance(positions, dict) or not all(
        isinstance(k, int) and isinstance(v, str) for k, v in positions.items()
    ):
        raise PickleProblem("not a LangChain FAISS pickle: its index map is not int -> str")
    ids = frozenset(k for k in docs if isinstance(k, str))
    classes = tuple(g.name for g in found.globals if g not in _PLAIN)
    return Docstore(ids, positions, classes)


def count_problems(ntotal: int, store: Docstore, index_name: str) -> list[str]:
    """How the index's vector count, the position map and the docstore disagree ([] when they
    agree as LangChain keeps them: positions 0..ntotal-1, each naming a stored document)."""
    problems = []
    n = len(store.positions)
    if n != ntotal:
        problems.append(f"{index_name} holds {ntotal} vectors but the pickle maps {n} positions")
    elif set(store.positions) != set(range(n)):
        problems.append(f"the pickle's positions are not 0..{n - 1}")
    missing = sum(1 for v in store.positions.values() if v not in store.documents)
    if missing:
        problems.append(f"{missing} position(s) name a document the docstore does not hold")
    return problems


def check(store: StoreLayout, view: Mapping[str, Path]) -> list[Finding]:
    """The pickle read without running it (langchain-docstore) and the counts of the index,
    the position map and the docstore compared (langchain-counts)."""
    index_rel, pkl_rel = store.files
    try:
        data = Path(view[pkl_rel]).read_bytes()
    except OSError as exc:
        return [Finding("langchain-docstore", pkl_rel, False, f"cannot be read: {exc}")]
    try:
        docs = read_docstore(data)
    except PickleProblem as exc:
        return [Finding("langchain-docstore", pkl_rel, False, str(exc))]
    info = {"documents": len(docs.documents), "positions": len(docs.positions)}
    detail = (
        f"pickle read without running it (it names {', '.join(docs.classes) or 'no class'}): "
        f"{len(docs.documents)} documents, {len(docs.positions)} positions"
    )
    found = [Finding("langchain-docstore", pkl_rel, True, detail, info)]
    header = read_faiss_header(view[index_rel])
    if header is None or header.ntotal is None:
        return found  # the FAISS checks report an unreadable index
    name = os.path.basename(index_rel)
    problems = count_problems(header.ntotal, docs, name)
    counts = {**info, "ntotal": header.ntotal}
    if problems:
        found.append(Finding("langchain-counts", index_rel, False, "; ".join(problems), counts))
    else:
        agree = f"{header.ntotal} vectors, positions and documents agree"
        found.append(Finding("langchain-counts", index_rel, True, agree, counts))
    return found
