"""Pickles are read by walking their opcodes: nothing a pickle names is imported or called."""

from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path

import pytest

from casnap.formats.langchain import read_docstore
from casnap.formats.pickles import Global, Obj, PickleProblem, Text, walk
from tests.helpers_rag import Runs


def anything(_: Global) -> bool:
    return True


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_values_come_back_as_they_were(protocol: int) -> None:
    value = {
        "ids": {"a": 1, "b": 2},
        "list": [1, 2.5, None, True, "x"],
        "tuple": (1, (2, 3)),
        "big": 2**70,
        "shared": [[1]] * 2,
    }
    assert walk(pickle.dumps(value, protocol=protocol), anything).value == value
    if protocol >= 4:  # older protocols build these through globals (codecs.encode, set)
        extra = {"set": {1, 2}, "frozen": frozenset({3}), "raw": b"\x00\x01"}
        assert walk(pickle.dumps(extra, protocol=protocol), anything).value == extra


def test_objects_are_described_never_made() -> None:
    data = pickle.dumps(OrderedDict(a=1), protocol=2)
    found = walk(data, anything)
    assert isinstance(found.value, Obj) and found.value.callable == Global(
        "collections", "OrderedDict"
    )
    assert found.value.items == {"a": 1}  # what a dict subclass would have been given
    assert found.globals == [Global("collections", "OrderedDict")]
    long = walk(pickle.dumps("x" * 5000), anything).value
    assert long == Text(5000)


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    data = pickle.dumps((Runs(marker), {0: "a"}))
    with pytest.raises(PickleProblem, match=r"names posix\.system.*nothing was run"):
        walk(data, lambda g: g.module.startswith("langchain"), "a LangChain docstore pickle")
    with pytest.raises(PickleProblem, match="posix.system"):
        read_docstore(data)
    assert not marker.exists()


@pytest.mark.parametrize(
    "data, why",
    [
        (pickle.dumps({"a": [1, 2, 3]})[:-5], "well-formed"),  # cut short
        (b"\x80\x04}q\x00.garbage", "well-formed"),  # trailing bytes are fine, this is not
        (b"\x80\x02\x82\x01.", "extension registry"),  # EXT1
        (b"\x80\x02K\x01Q.", "persistent id"),  # BINPERSID
        (b"\x80\x02K\x01K\x02b.", "well-formed"),  # BUILD on an int
        (b"\x80\x02K\x01)R.", "not a global"),  # REDUCE calling an int
        (b"\x80\x02]q\x00]q\x01K\x01s.", "well-formed"),  # SETITEM on a list
        (b"", "well-formed"),
    ],
)
def test_malformed_pickles_are_named(data: bytes, why: str) -> None:
    if data.startswith(b"\x80\x04}q\x00."):  # a whole pickle followed by junk: the pickle stands
        assert walk(data, anything).value == {}
        return
    with pytest.raises(PickleProblem, match=why):
        walk(data, anything)
