"""A checkout that would take a framework store apart (the smoke check `store-whole`).

A checkout of some paths (`checkout ID faiss_index/index.faiss`, or of a snapshot committed with
some of a store's files) writes those files and leaves the store's others as they are. When
those others are not the snapshot's, the store then holds files of two moments: a LangChain
index whose positions the docstore maps to other documents, a Chroma database beside a segment
whose vectors moved since. The count checks of each layout cannot always tell (as many vectors,
the same ids), and the framework opens such a store and answers wrongly. So for each store the
checkout writes some files of but not all, each file of the snapshot's store it leaves must be
in place with the snapshot's content (a damaged file restored beside the snapshot's own others
passes). Files the snapshot does not hold at all though it was taken of their place (a segment
of a collection made since), and files of the snapshot's store the target lacks (a checkout of
one file into an empty folder), are the layout checks' to judge: they mix nothing. A file of the
store outside what the snapshot was taken of (one committed with `faiss_index/index.faiss`
alone, or with the rest excluded) is of a moment the snapshot cannot vouch for: it counts as
left as it is.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from casnap.formats import StoreLayout, layouts
from casnap.smoke_report import Check

if TYPE_CHECKING:
    from casnap.selection import Selection


def checks(
    present: Collection[str],
    selected: Collection[str],
    written: Collection[str],
    held: Mapping[str, str],
    current: Callable[[str], str | None],
    snapshot: str,
    covers: Callable[[str], bool] = lambda _rel: True,
) -> list[Check]:
    """store-whole of each store among present (the target's files as the checkout leaves
    them) with some files written and some not selected (selected: the files the checkout
    restores, those already in place included; written: those of them it writes). held maps
    each path of the snapshot to its content hash, current gives the content hash of a target
    file left in place (None: none there), snapshot names the snapshot in the detail, covers
    whether the snapshot was taken of a path's place."""
    out = []
    snapshots = {_key(s): s for s in layouts.find_stores(list(held))}
    for store in layouts.find_stores(list(present)):
        wrote = [f for f in store.files if f in written]
        if not wrote:
            continue
        theirs = snapshots.get(_key(store))
        left = [f for f in theirs.files if f not in selected and f in present] if theirs else []
        unknown = [f for f in store.files if f not in selected and f not in held and not covers(f)]
        if not left and not unknown:
            continue
        stale = unknown + [f for f in left if current(f) != held[f]]
        where = store.root or "."
        if stale:
            whole = f"`checkout {snapshot} {store.root}`" if store.root else "a full checkout"
            if unknown:  # no checkout of this snapshot restores the store whole
                how, way = f"which snapshot {snapshot} was not taken of", ""
            else:
                how, way = (
                    f"not as snapshot {snapshot} holds it",
                    f"restore it whole ({whole}), or ",
                )
            detail = (
                f"writes {wrote[0]}{_more(wrote)} but leaves {stale[0]}{_more(stale)} as it is, "
                f"{how}: the store would mix two moments; {way}--no-smoke to write only these files"
            )
            out.append(Check("store-whole", where, False, detail, {"stale": stale}))
        else:
            detail = f"writes {len(wrote)} of its files, the other {len(left)} are the snapshot's"
            out.append(Check("store-whole", where, True, detail))
    return out


def _key(store: StoreLayout) -> tuple[str, str]:
    """One store of a data dir: a folder holds one Chroma or LlamaIndex store, and a LangChain
    store per `<name>` (its `<name>.faiss` and `<name>.pkl`, or the pickle alone)."""
    return store.kind, os.path.splitext(store.files[0])[
        0
    ] if store.kind == "langchain" else store.root


def _more(files: list[str]) -> str:
    return f" (and {len(files) - 1} more)" if len(files) > 1 else ""


def whole_stores(
    sel: Selection,
    view: Mapping[str, Path],
    selected: Collection[str],
    kept: Collection[str],
    current: Callable[[str], str | None],
) -> list[Check]:
    """checks for a checkout of the files `selected` of sel (a checkout of some paths): view
    maps the target's files as it leaves them, kept names the selected files already in place
    (not written), current gives a left file's content hash."""
    held = {path: entry.hash for path, (entry, _) in sel.entries.items()}
    written = set(selected) - set(kept)
    snapshot = sel.sources[-1][0].short
    return checks(view, selected, written, held, current, snapshot, sel.covers)
