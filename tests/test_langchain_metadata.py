"""LangChain FAISS stores whose documents' metadata hold values of common types (dates, numpy
scalars and arrays, UUIDs, decimals, paths, an app's own enum...): LangChain saves and reloads
them, so casnap commits and restores them; their pickles are still only walked, never loaded."""

from __future__ import annotations

import collections
import datetime
import decimal
import enum
import fractions
import ipaddress
import pathlib
import pickle
import pickletools
import uuid
import zoneinfo
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from casnap.formats import langchain, layouts
from casnap.formats.pickles import PickleProblem
from tests.helpers_rag import DIM, LANGCHAIN_DIR, Runs, quiet
from tests.test_rag_layouts import committed_and_restored, run


class Colour(enum.Enum):
    """An application's own class in metadata: LangChain pickles it like any value."""

    RED = 1


def _zone() -> datetime.tzinfo:
    try:
        return zoneinfo.ZoneInfo("Europe/Paris")
    except zoneinfo.ZoneInfoNotFoundError:  # no time zone database: a fixed offset instead
        return datetime.timezone(datetime.timedelta(hours=2))


METADATA: dict[str, Any] = {
    "datetime": datetime.datetime(2024, 5, 1, 12, 0),
    "aware-datetime": datetime.datetime(2024, 5, 1, tzinfo=datetime.UTC),
    "zoneinfo-datetime": datetime.datetime(2024, 5, 1, 9, 30, tzinfo=_zone()),
    "date": datetime.date(2024, 1, 31),
    "time": datetime.time(23, 59, 1),
    "timedelta": datetime.timedelta(days=3, seconds=5),
    "timezone": datetime.timezone(datetime.timedelta(hours=-5), "EST"),
    "numpy-float32": np.float32(0.87),
    "numpy-int64": np.int64(-3),
    "numpy-bool": np.bool_(True),
    "numpy-datetime64": np.datetime64("2024-01-01T10:00"),
    "numpy-array": np.arange(6, dtype=np.int64).reshape(2, 3),
    "numpy-strings": np.array(["a", "bc"]),
    "uuid": uuid.UUID(int=7),
    "decimal": decimal.Decimal("12.50"),
    "path": pathlib.Path("/srv/docs/a.pdf"),
    "windows-path": pathlib.PureWindowsPath("C:/docs/a.pdf"),
    "complex": 1 + 2j,
    "bytearray": bytearray(b"\x00\x01"),
    "bytes": b"\xff",
    "slice": slice(1, 9, 2),
    "range": range(3, 7),
    "set": {"x", "y"},
    "frozenset": frozenset({1, 2}),
    "ordered-dict": collections.OrderedDict(b=1, a=2),
    "defaultdict": collections.defaultdict(list, {"k": [1]}),
    "deque": collections.deque([1, 2]),
    "counter": collections.Counter("abca"),
    "fraction": fractions.Fraction(1, 3),
    "ip-address": ipaddress.ip_address("192.0.2.1"),
    "enum": Colour.RED,
}


def same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return type(a) is type(b) and a == b


def save_store(folder: Path, metadatas: list[dict[str, Any]]) -> None:
    """A real LangChain FAISS store, one document per metadata dict (seeded vectors)."""
    vectors = np.random.default_rng(11).standard_normal((len(metadatas), DIM)).astype("float32")
    with quiet():
        from langchain_community.vectorstores import FAISS
        from langchain_core.embeddings import DeterministicFakeEmbedding

        store = FAISS.from_embeddings(
            [(f"document {i}", v.tolist()) for i, v in enumerate(vectors)],
            DeterministicFakeEmbedding(size=DIM),
            metadatas=metadatas,
            ids=[f"d{i}" for i in range(len(metadatas))],
        )
        store.save_local(str(folder))


def load_metadata(folder: Path) -> dict[str, dict[str, Any]]:
    """Each document's metadata, as LangChain reloads the store."""
    with quiet():
        from langchain_community.vectorstores import FAISS
        from langchain_core.embeddings import DeterministicFakeEmbedding

        store = FAISS.load_local(
            str(folder), DeterministicFakeEmbedding(size=DIM), allow_dangerous_deserialization=True
        )
        return {i: store.docstore.search(i).metadata for i in store.index_to_docstore_id.values()}


def check_folder(folder: Path) -> dict[str, Any]:
    view = {p.relative_to(folder).as_posix(): p for p in folder.iterdir()}
    (store,) = layouts.find_stores(list(view))
    return {f.check: f for f in langchain.check(store, view)}


@pytest.mark.parametrize("kind", sorted(METADATA))
def test_a_docstore_whose_metadata_holds_a_common_value_is_read(kind: str, tmp_path: Path) -> None:
    value = METADATA[kind]
    save_store(tmp_path, [{"v": value, "n": 1}, {"v": [value], "nested": {"v": value}}, {}])
    found = check_folder(tmp_path)
    assert found["langchain-docstore"].ok, found["langchain-docstore"].detail
    assert found["langchain-counts"].ok
    assert found["langchain-docstore"].info == {"documents": 3, "positions": 3}
    assert same(load_metadata(tmp_path)["d0"]["v"], value)  # LangChain itself reloads it
    raw = (tmp_path / "index.pkl").read_bytes()
    for protocol in (3, 5):  # the defaults of other Pythons (3.0-3.7, 3.14)
        docstore = pickle.loads(raw)  # the test's own copy, to pickle it again
        store = langchain.read_docstore(pickle.dumps(docstore, protocol=protocol))
        assert store.documents == frozenset({"d0", "d1", "d2"}), protocol


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_a_docstore_pickled_with_any_protocol_langchain_reads_is_read(
    protocol: int, tmp_path: Path
) -> None:
    """Protocol 2 names builtins as Python 2 did (`__builtin__.set`, `copy_reg._reconstructor`,
    mapped back by pickle on load): a store saved so reloads in LangChain and passes the check."""
    save_store(tmp_path, [{"n": 1}, {"when": METADATA["datetime"]}])
    docstore = pickle.loads((tmp_path / "index.pkl").read_bytes())
    (tmp_path / "index.pkl").write_bytes(pickle.dumps(docstore, protocol=protocol))
    assert load_metadata(tmp_path)["d0"] == {"n": 1}
    found = check_folder(tmp_path)
    assert found["langchain-docstore"].ok, found["langchain-docstore"].detail
    assert found["langchain-docstore"].info == {"documents": 2, "positions": 2}


def test_a_store_with_every_kind_of_metadata_commits_and_restores(tmp_path: Path) -> None:
    data, repo = tmp_path / "data", tmp_path / "repo"
    metadatas = [{"kind": k, "value": v} for k, v in sorted(METADATA.items())]
    save_store(data / LANGCHAIN_DIR, [*metadatas, dict(METADATA)])
    target = tmp_path / "restored"
    found = committed_and_restored(repo, data, target)
    (docstore,) = found["langchain-docstore"]
    assert "metadata name" in str(docstore["detail"])  # the classes metadata hold are told
    restored = load_metadata(target / LANGCHAIN_DIR)
    for i, meta in enumerate(metadatas):
        assert same(restored[f"d{i}"]["value"], meta["value"]), meta["kind"]
    code, _, err = run(repo, data, "verify", "--smoke", "latest")
    assert code == 0, err


def _docstore_pickle(metadata: dict[str, Any]) -> bytes:
    with quiet():
        from langchain_community.docstore.in_memory import InMemoryDocstore
        from langchain_core.documents import Document

    docstore = InMemoryDocstore({"d0": Document(page_content="x", metadata=metadata, id="d0")})
    return pickle.dumps((docstore, {0: "d0"}), protocol=4)


def test_outside_the_metadata_only_langchain_classes_may_be_named(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    raw = _docstore_pickle({"when": datetime.date(2024, 1, 1)})
    # the docstore and its map as LangChain pickles them, with one more item in the pair
    bad = pickle.dumps((*pickle.loads(raw), Runs(marker)), protocol=4)
    with pytest.raises(PickleProblem, match=r"names posix\.system.*outside.*nothing was run"):
        langchain.read_docstore(bad)
    # a call whose result is dropped (POP) is named outside the metadata too
    dropped = raw[:2] + b"cposix\nsystem\n(X\x05\x00\x00\x00touch" + b"tR0" + raw[2:]
    assert [op.name for op, _, _ in pickletools.genops(dropped)][1:7] == [
        "GLOBAL", "MARK", "BINUNICODE", "TUPLE", "REDUCE", "POP",
    ]  # fmt: skip
    with pytest.raises(PickleProblem, match=r"names posix\.system"):
        langchain.read_docstore(dropped)
    # a Document holding its text or its id as an object of another class is no LangChain one
    with quiet():
        from langchain_core.documents import Document
    with pytest.raises(PickleProblem, match=r"names datetime\.date"):
        doc = Document.model_construct(page_content=datetime.date(2024, 1, 1), metadata={})
        langchain.read_docstore(pickle.dumps(({"_dict": {"d0": doc}}, {0: "d0"})))
    assert not marker.exists()


def test_metadata_may_name_any_class_and_nothing_of_it_runs(tmp_path: Path) -> None:
    """Metadata hold whatever values the application gave LangChain: the check names the
    classes they are made with, and neither imports nor calls them."""
    marker = tmp_path / "ran"
    store = langchain.read_docstore(_docstore_pickle({"v": Runs(marker), "u": uuid.UUID(int=1)}))
    assert store.documents == frozenset({"d0"})
    assert store.metadata_names == ("posix.system", "uuid.UUID")
    assert not marker.exists()
