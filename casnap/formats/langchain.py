"""LangChain's FAISS store, as `FAISS.save_local(folder, index_name)` writes it.

Two files in one folder: `<name>.faiss`, a FAISS index (`faiss.write_index`), and `<name>.pkl`,
a pickle of the pair (docstore, index_to_docstore_id): an InMemoryDocstore whose `_dict` maps
each document id to a Document, and a dict from each vector's position in the index (0, 1, ...)
to its document id. LangChain keeps the three in step: every vector has a position, every
position a document. The pickle is read by walking its opcodes (formats/pickles.py), never
loaded. Outside the documents' metadata it may name only LangChain's docstore and document
classes: that is what tells it from another pickle. A document's metadata hold whatever values
the application gave LangChain (dates, numpy scalars, UUIDs, its own classes), so any class may
be named inside them; they are listed, never imported or called.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from casnap.formats import Finding, StoreLayout
from casnap.formats.faiss import read_faiss_header
from casnap.formats.pickles import Global, Obj, PickleProblem, state_of, walk

# The classes a LangChain docstore pickle names outside its documents' metadata (in whichever
# LangChain package defines them), and what Python's own pickling of plain objects adds.
_CLASSES = frozenset({"InMemoryDocstore", "Document"})
_PACKAGES = frozenset({"langchain", "langchain_core", "langchain_community"})
_PLAIN = frozenset(
    Global(module, name)
    for module, name in (
        ("copyreg", "_reconstructor"),
        ("builtins", "object"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("collections", "OrderedDict"),
        # the same as protocols 0-2 name them (Python 2's modules; pickle maps them back on load)
        ("copy_reg", "_reconstructor"),
        ("__builtin__", "object"),
        ("__builtin__", "set"),
        ("__builtin__", "frozenset"),
    )
)
# the types of the containers a walk builds (exactly these: their subclasses are Obj)
_CONTAINERS = frozenset({tuple, list, dict, set, frozenset, Obj})
#: How many of the names its metadata hold a passing check lists.
SHOW_NAMES = 8


def expected_global(g: Global) -> bool:
    """Whether a docstore pickle may name g outside its documents' metadata: LangChain's
    docstore or document class, or what pickling a plain object adds."""
    return g in _PLAIN or (g.module.split(".")[0] in _PACKAGES and g.name in _CLASSES)


@dataclass(frozen=True)
class Docstore:
    """What a LangChain `.pkl` holds: the document ids of its docstore, the map from vector
    positions to document ids, the LangChain classes the pickle names, and the other classes
    and functions its documents' metadata name (`module.name`, sorted)."""

    documents: frozenset[str]
    positions: dict[int, str]
    classes: tuple[str, ...]
    metadata_names: tuple[str, ...] = ()


def read_docstore(data: bytes) -> Docstore:
    """The docstore and position map of a `.pkl`, from its opcodes alone; PickleProblem when it
    is not a well-formed pickle of that pair, or names anything but LangChain's classes outside
    its documents' metadata."""
    found = walk(data, lambda _: True, "a LangChain docstore pickle")
    value = found.value
    others = [g for g in found.globals if not expected_global(g)]
    if others:  # where they are: only metadata may hold them (not a call whose result is dropped)
        outside, inside = _globals_by_place(value)
        for g in others:
            if g in outside or g not in inside:
                raise PickleProblem(
                    f"names {g} outside its documents' metadata, where a LangChain docstore "
                    "pickle names only LangChain's classes (nothing was run)"
                )
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
    classes = tuple(g.name for g in found.globals if expected_global(g) and g not in _PLAIN)
    return Docstore(ids, positions, classes, tuple(sorted(str(g) for g in others)))


def _globals_by_place(root: Any) -> tuple[set[Global], set[Global]]:
    """The globals a walked pickle's value holds outside its documents' metadata, and those
    only their metadata hold."""
    outside: set[Global] = set()
    metadata: list[Any] = []
    _reach([root], outside, metadata)
    inside: set[Global] = set()
    _reach(metadata, inside, None)
    return outside, inside


def _reach(roots: list[Any], found: set[Global], metadata: list[Any] | None) -> None:
    """Add to found every global roots hold. metadata: where to put the metadata of each
    LangChain document met, instead of looking into them (None: look into them too)."""
    stack: list[Any] = [*roots]
    seen: set[int] = set()
    skip: dict[int, str] = {}  # id of a document's fields -> the key of its metadata
    while stack:
        v = stack.pop()
        kind = type(v)
        if kind is Global:
            found.add(v)
            continue
        if kind not in _CONTAINERS or id(v) in seen:
            continue
        seen.add(id(v))
        items: Iterable[Any]
        if kind is Obj:
            fields = _document_fields(v) if metadata is not None else None
            if metadata is not None and fields is not None and "metadata" in fields:
                metadata.append(fields["metadata"])
                skip[id(fields)] = "metadata"
            items = (v.callable, v.args, v.state, v.items, v.listitems)
        elif kind is dict:
            left_out = skip.get(id(v))
            items = [*v, *(v.values() if left_out is None else _but(v, left_out))]
        else:
            items = v
        for x in items:  # only what may hold a global: most of a docstore is texts
            if type(x) is Global:
                found.add(x)
            elif type(x) in _CONTAINERS and (x or type(x) is Obj):
                stack.append(x)


def _but(fields: dict[Any, Any], key: str) -> Iterator[Any]:
    """The values of fields but the one at key."""
    return (x for k, x in fields.items() if k != key)


def _document_fields(obj: Obj) -> dict[Any, Any] | None:
    """The fields of a LangChain Document (pydantic's `__dict__` in its pickled state), or None
    when obj is not one."""
    cls = obj.callable
    if not isinstance(cls, Global) or cls.name != "Document":
        return None
    if cls.module.split(".")[0] not in _PACKAGES:
        return None
    state = state_of(obj)
    fields = state.get("__dict__", state) if isinstance(state, dict) else None
    return fields if isinstance(fields, dict) else None


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
    if len(store.files) == 1:
        return _without_index(store.files[0], view)
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
    names = ", ".join(docs.classes) or "no class"
    if docs.metadata_names:
        more = len(docs.metadata_names) - SHOW_NAMES
        shown = ", ".join(docs.metadata_names[:SHOW_NAMES]) + (
            f" and {more} more" if more > 0 else ""
        )
        names += f"; its documents' metadata name {shown}"
    detail = (
        f"pickle read without running it (it names {names}): "
        f"{len(docs.documents)} documents, {len(docs.positions)} positions"
    )
    found = [Finding("langchain-docstore", pkl_rel, True, detail, info)]
    header = read_faiss_header(view[index_rel])
    name = os.path.basename(index_rel)
    if header is None:  # no FAISS check reads a file without a FAISS header: this one must
        size = _size(view[index_rel])
        detail = f"{name} ({size}) holds no FAISS index: LangChain's load_local cannot read it"
        found.append(Finding("langchain-counts", index_rel, False, detail, info))
        return found
    if header.ntotal is None:
        return found  # the FAISS checks report an index whose header is damaged
    problems = count_problems(header.ntotal, docs, name)
    counts = {**info, "ntotal": header.ntotal}
    if problems:
        found.append(Finding("langchain-counts", index_rel, False, "; ".join(problems), counts))
    else:
        agree = f"{header.ntotal} vectors, positions and documents agree"
        found.append(Finding("langchain-counts", index_rel, True, agree, counts))
    return found


def _size(path: str | os.PathLike[str]) -> str:
    """A file's size, for a message: `0 bytes`, or `unreadable` when it cannot be stat'ed."""
    try:
        return f"{os.stat(path).st_size} bytes"
    except OSError:
        return "unreadable"


#: The first bytes of a pickle LangChain's save_local writes name its docstore's module here.
_SNIFF = 256


def _without_index(pkl_rel: str, view: Mapping[str, Path]) -> list[Finding]:
    """A `<name>.pkl` without its `<name>.faiss`: nothing when it is not a LangChain docstore
    pickle (any other pickle; only one whose first bytes name LangChain's docstore is walked),
    else a failed langchain-counts: load_local cannot open the store without its index."""
    try:
        with open(view[pkl_rel], "rb") as f:
            head = f.read(_SNIFF)
            if b"langchain" not in head or b"docstore" not in head:
                return []
            data = head + f.read()
        docs = read_docstore(data)
    except (OSError, PickleProblem):
        return []
    index_rel = pkl_rel[: -len(".pkl")] + ".faiss"  # the file missing, as a commit of some
    # paths tells it apart from one it leaves where it is (consistency._left_where_it_is)
    detail = (
        f"{os.path.basename(index_rel)} is missing beside the LangChain docstore pickle "
        f"{os.path.basename(pkl_rel)} ({len(docs.documents)} documents, "
        f"{len(docs.positions)} positions): load_local cannot open the store"
    )
    info = {"documents": len(docs.documents), "positions": len(docs.positions)}
    return [Finding("langchain-counts", index_rel, False, detail, info)]
