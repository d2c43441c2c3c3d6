"""The FAISS chunkers inside arrays: cuts between elements by content (`faiss-cdc`, new
repositories) and fixed blocks (`faiss`, repositories made before it)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import blake3
import faiss
import numpy as np
import pytest
from pyfastcdc import FastCDC

from casnap.chunking import choose_chunker, make_chunker
from casnap.chunking.elements import element_hashes
from casnap.committer import commit
from casnap.config import default_config, encode_config, fixed_faiss_chunker, parse_config
from casnap.errors import IntegrityError
from casnap.formats.faiss import GRAPH, IDS, LIST_IDS, LISTS, VECTORS, layout_sections
from casnap.repository import Repository
from casnap.restorer import checkout
from casnap.smoke import may_be_faiss
from tests import helpers_chunking as h

CONFIG = default_config()["chunker"]


def pieces(data: bytes, config: dict = CONFIG, block: int = 1 << 22) -> list[bytes]:
    """The pieces the chunker `config` gives a FAISS file, read `block` bytes at a time."""
    chunker = choose_chunker(data[:100], config)
    return [bytes(p) for p in chunker.split(io.BytesIO(data), block)]


def new_pieces(before: bytes, after: bytes, config: dict = CONFIG) -> list[bytes]:
    old = set(pieces(before, config))
    return [p for p in pieces(after, config) if p not in old]


def cut_points(parts: list[bytes]) -> list[int]:
    return np.cumsum([len(p) for p in parts]).tolist()


def flat(n: int, d: int = h.DIM, seed: int = 0) -> faiss.Index:
    index = faiss.IndexFlatL2(d)
    index.add(np.random.default_rng(seed).standard_normal((n, d)).astype("float32"))
    return index


def idmap2(n: int, seed: int = 0) -> faiss.Index:
    index = faiss.IndexIDMap2(faiss.IndexFlatL2(h.DIM))
    index.add_with_ids(h.vectors(n, seed), np.arange(n, dtype="int64") * 7 + 3)
    return index


def ids_of(index: faiss.Index, n: int) -> np.ndarray:
    """The ids remove_ids takes for the vectors at positions 0..n-1 (positions for a Flat)."""
    if isinstance(index, faiss.IndexIDMap2):
        return faiss.vector_to_array(index.id_map)[:n]
    return np.arange(n, dtype="int64")


BUILD = {"flat": lambda n: flat(n), "idmap2": idmap2, "ivf": lambda n: h.ivf_flat(n, nlist=8)}


# -- deletions and appends ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(BUILD))
def test_a_deletion_in_the_middle_changes_few_chunks(kind: str) -> None:
    index = BUILD[kind](20_000)  # 1.3 MB of vectors
    before = h.index_bytes(index)
    total = len(pieces(before))
    index.remove_ids(ids_of(index, 20_000)[[10_000]])  # remove_ids compacts a Flat's arrays
    after = h.index_bytes(index)
    new = new_pieces(before, after)
    # the piece that held the vector (and its id), and the header that counts vectors
    assert len(new) <= 8, (len(new), total)
    assert sum(map(len, new)) < 0.03 * len(after)


@pytest.mark.parametrize("kind", ["flat", "idmap2"])
def test_scattered_deletions_cost_a_piece_or_two_each(kind: str) -> None:
    index = BUILD[kind](20_000)
    before = h.index_bytes(index)
    gone = np.random.default_rng(4).choice(20_000, size=20, replace=False)
    index.remove_ids(ids_of(index, 20_000)[gone])
    new = new_pieces(before, h.index_bytes(index))
    assert len(new) <= 2 * 2 * len(gone) + 4  # vectors and ids, a neighbour now and then
    assert sum(map(len, new)) < 0.15 * len(before)


@pytest.mark.parametrize("kind", sorted(BUILD))
def test_appends_cost_only_the_tail(kind: str) -> None:
    index = BUILD[kind](20_000)
    before = h.index_bytes(index)
    added = h.vectors(200, seed=9)
    if isinstance(index, faiss.IndexIDMap2):
        index.add_with_ids(added, np.arange(200, dtype="int64") + 10**6)
    else:
        index.add(added)
    after = h.index_bytes(index)
    new = new_pieces(before, after)
    appended = len(after) - len(before)
    # per array: what was added and the piece it continues (at most the largest piece); for an
    # IVF index each inverted list is an array that grows at its end
    spec = CONFIG["faiss"]
    largest = max(spec["vectors"][2], spec["ids"][2], spec["max"])
    arrays = 2 * 8 if kind == "ivf" else 2
    assert sum(map(len, new)) <= appended + arrays * largest + spec["max"]
    assert sum(map(len, new)) < 0.25 * len(after)


# -- where the cuts fall -----------------------------------------------------------------------


def ivf_sq(n: int, d: int) -> faiss.Index:
    index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatL2(d), d, 4, faiss.ScalarQuantizer.QT_8bit)
    x = np.random.default_rng(1).standard_normal((max(n, 300), d)).astype("float32")
    index.train(x)
    index.add(x[:n])
    return index


def hnsw(n: int, d: int) -> faiss.Index:
    index = faiss.IndexHNSWFlat(d, 8)
    index.add(np.random.default_rng(2).standard_normal((n, d)).astype("float32"))
    return index


ELEMENT_CASES = {  # name -> index, the size of a vector, of an inverted list's code
    "flat-d15": (lambda: flat(3000, d=15), 60, None),
    "flat-d96": (lambda: flat(3000, d=96), 384, None),
    "idmap2": (lambda: idmap2(3000), 4 * h.DIM, None),
    "ivf-flat": (lambda: h.ivf_flat(3000), 4 * h.DIM, 4 * h.DIM),
    "ivf-sq-d13": (lambda: ivf_sq(3000, 13), 52, 13),
    "ivf-pq": (lambda: h.ivf_pq(3000), 4 * h.DIM, None),
    "hnsw-d20": (lambda: hnsw(2000, 20), 80, None),
}
FIRST_DEFAULT = {  # the first default faiss-cdc config
    "name": "faiss-cdc",
    "vectors": [4096, 8192, 32768],
    "lists": [2048, 2048, 2048],
    "ids": [512, 1024, 4096],
    "graph": [1024, 1024, 1024],
    "min": 2048,
    "avg": 8192,
    "max": 65536,
}
SMALL_CDC = {
    "name": "faiss-cdc",
    "vectors": [512, 1024, 4096],
    "lists": [512, 1024, 2048],
    "ids": [512, 1024, 2048],
    "graph": [512, 512, 512],
    "min": 512,
    "avg": 1024,
    "max": 4096,
}


@pytest.mark.parametrize("spec", [CONFIG["faiss"], SMALL_CDC], ids=["default", "small"])
@pytest.mark.parametrize("name", sorted(ELEMENT_CASES))
def test_every_cut_inside_an_array_falls_between_elements(name: str, spec: dict) -> None:
    build, vector, code = ELEMENT_CASES[name]
    index = build()
    data = h.index_bytes(index)
    if code is None and isinstance(index, faiss.IndexIVF):
        code = index.code_size
    item = {VECTORS: vector, LISTS: code, LIST_IDS: 8, IDS: 8, GRAPH: 4}
    sections, complete = layout_sections(data)
    assert complete
    parts = pieces(data, {**CONFIG, "faiss": spec}, block=10_007)
    assert b"".join(parts) == data
    cuts = cut_points(parts)
    inside = 0
    for start, stop, kind in sections:
        for cut in cuts:
            if start < cut < stop:
                inside += 1
                assert (cut - start) % item[kind] == 0, (kind, cut - start, item[kind])
    assert inside > 10


def test_the_same_cuts_whatever_the_read_sizes() -> None:
    for index in (flat(6000), idmap2(6000), h.ivf_flat(6000), h.hnsw(1500)):
        data = h.index_bytes(index)
        whole = pieces(data, block=len(data) + 1)
        assert b"".join(whole) == data
        for block in (7, 1000, 4096, 65_537, 1 << 20):
            assert pieces(data, block=block) == whole, block
        for spec in (SMALL_CDC,):
            config = {**CONFIG, "faiss": spec}
            assert pieces(data, config, 333) == pieces(data, config, len(data) + 1)


def test_faiss_cdc_cuts_never_change() -> None:
    # The hash and the cut rule are part of the faiss-cdc chunker's definition: repositories that
    # use it only keep deduplicating if the same bytes are always cut at the same places.
    raw = blake3.blake3(b"faiss-cdc").digest(length=1 << 16)
    assert element_hashes(memoryview(raw), 64)[:3].tolist() == [
        16726629146330270348,
        2129500013055907577,
        8765981898628358117,
    ]
    # an empty Flat index of d=64 (header fields, a zero word count), made to hold raw: 256
    # vectors of 256 bytes
    head = bytearray(h.index_bytes(flat(0, d=64)))
    head[-8:] = (len(raw) // 4).to_bytes(8, "little")
    data = bytes(head) + raw
    for spec, digest in ((FIRST_DEFAULT, "97ca870f521e74c2"), (SMALL_CDC, "d94e856ca09605a2")):
        cuts = cut_points(pieces(data, {**CONFIG, "faiss": spec}))
        assert blake3.blake3(json.dumps(cuts).encode()).hexdigest()[:16] == digest, cuts


# -- the fixed-block chunker of older repositories ---------------------------------------------


def fixed_expected(data: bytes, spec: dict) -> list[int]:
    """Cut points of the fixed-block chunker, rebuilt from its description: every array in
    blocks from its start, FastCDC between arrays."""
    block = {
        VECTORS: spec["vectors"],
        LISTS: spec["lists"],
        LIST_IDS: spec["lists"],
        GRAPH: spec["graph"],
        IDS: spec["ids"],
    }
    cdc = FastCDC(spec["avg"], min_size=spec["min"], max_size=spec["max"])
    sections, _ = layout_sections(data)
    cuts: list[int] = []
    pos = 0

    def gap(end: int) -> None:
        nonlocal pos
        for c in cdc.cut_buf(data[pos:end]):
            cuts.append(pos + c.offset + c.length)
        pos = end

    for start, stop, kind in sections:
        gap(start)
        cuts += list(range(start + block[kind], stop, block[kind])) + [stop]
        pos = stop
    gap(len(data))
    return cuts


@pytest.mark.parametrize("name", sorted(h.BUILDERS))
def test_old_repositories_keep_their_fixed_blocks(name: str) -> None:
    data = h.index_bytes(h.BUILDERS[name][1](3000))
    old = {"default": CONFIG["default"], "sqlite": {"name": "sqlite"}}
    for spec in (fixed_faiss_chunker(), {**fixed_faiss_chunker(), "vectors": 4096, "lists": 512}):
        config = {**old, "faiss": spec}
        assert choose_chunker(data[:100], config).describe() == spec
        expected = fixed_expected(data, spec)
        for block in (1000, 4096, 1 << 22):
            assert cut_points(pieces(data, config, block)) == expected, block


def test_a_repository_made_before_faiss_cdc_keeps_cutting_in_fixed_blocks(tmp_path: Path) -> None:
    cfg = default_config()
    cfg["chunker"]["faiss"] = fixed_faiss_chunker()
    repo = Repository.init(tmp_path / "repo", cfg)
    data = tmp_path / "data"
    data.mkdir()
    index = flat(20_000)
    h.write(index, data / "a.index")
    commit(repo, data)
    index.add(h.vectors(100, seed=3))
    h.write(index, data / "a.index")
    res = commit(repo, data)
    entry = repo.load_snapshot(repo.resolve("latest")).files[0]
    assert entry.chunker == fixed_faiss_chunker()
    assert res.bytes_added < 100 * 4 * h.DIM + 2 * 65536 + 8192
    reopened = Repository.open(tmp_path / "repo")
    assert reopened.config["chunker"]["faiss"] == fixed_faiss_chunker()


# -- round trips, config checks ----------------------------------------------------------------


def test_evolving_indexes_restore_byte_identical(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(5)
    indexes = {"flat.index": flat(3000), "ids.bin": idmap2(3000), "ivf.index": h.ivf_flat(3000)}
    versions = []
    for step in range(4):
        for name, index in indexes.items():
            if step:
                n = index.ntotal
                index.remove_ids(ids_of(index, n)[rng.choice(n, size=15, replace=False)])
                more = h.vectors(90, seed=step)
                if isinstance(index, faiss.IndexIDMap2):
                    index.add_with_ids(more, np.arange(90, dtype="int64") + 10**6 * step)
                else:
                    index.add(more)
            h.write(index, data / name)
        commit(repo, data, message=str(step))
        versions.append({p.name: p.read_bytes() for p in data.iterdir()})
    snaps = sorted(repo.snapshots(), key=lambda s: s[1].time)
    assert {f.chunker["name"] for f in snaps[-1][1].files} == {"faiss-cdc"}
    for (sid, _), files in zip(snaps, versions, strict=True):
        out = tmp_path / f"out-{sid.hex()[:8]}"
        checkout(repo, sid.hex(), out, safety_snapshot=False)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == files


@pytest.mark.parametrize(
    "change",
    [
        {"vectors": [256, 8192, 32768]},  # below the smallest chunker size
        {"vectors": [4096, 8192, 1 << 25]},  # above the largest chunk
        {"vectors": [8192, 4096, 32768]},  # out of order
        {"ids": [512, 1024, 4100]},  # max not a multiple of 8
        {"lists": 2048},  # not [min, avg, max]
        {"graph": [1024, 1024]},
        {"vectors": None},  # missing
        {"name": "fastcdc"},  # the faiss entry must name a FAISS chunker
    ],
)
def test_faiss_cdc_parameters_past_the_limits_damage_the_config(change: dict) -> None:
    cfg = default_config()
    spec = {**cfg["chunker"]["faiss"], **change}
    cfg["chunker"]["faiss"] = {k: v for k, v in spec.items() if v is not None}
    with pytest.raises(IntegrityError, match="config is damaged"):
        parse_config(encode_config(cfg), "repo")
    parse_config(encode_config(default_config()), "repo")


def test_a_faiss_cdc_file_is_expected_to_be_a_faiss_index() -> None:
    assert may_be_faiss("storage/default__vector_store.json", {"name": "faiss-cdc"})
    assert may_be_faiss("x.bin", {"name": "faiss"})
    assert not may_be_faiss("x.bin", {"name": "fastcdc"})


def test_the_default_chunker_describes_itself_as_configured() -> None:
    spec = CONFIG["faiss"]
    assert spec["name"] == "faiss-cdc"
    assert make_chunker(spec).describe() == spec
    assert json.loads(json.dumps(spec)) == spec


def _reference_hash(element: bytes) -> int:
    """The element hash as chunking/elements.py defines it, one element in plain Python."""
    mask = (1 << 64) - 1

    def finalise(x: int) -> int:
        x ^= x >> 30
        x = (x * 0xBF58476D1CE4E5B9) & mask
        x ^= x >> 27
        x = (x * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    size = len(element)
    word = 8 if size % 8 == 0 else 4 if size % 4 == 0 else 1
    total = 0
    for j in range(size // word):
        key = finalise(((j + 1) * 0x9E3779B97F4A7C15) & mask) | 1
        value = int.from_bytes(element[j * word : (j + 1) * word], "little")
        total = (total + value * key) & mask
    return finalise(total)


@pytest.mark.parametrize("item", [1, 3, 4, 8, 12, 64, 1536])
def test_element_hashes_are_the_defined_function(item: int) -> None:
    """Where faiss-cdc cuts is part of its definition: the numpy pass gives each element the
    hash defined word by word (a faster way to compute it must not move a single cut)."""
    rng = np.random.default_rng(item)
    count = 300_000 // item + 7  # more than one batch of words for the small elements
    data = rng.bytes(item * count + item // 2)  # a partial element at the end is left out
    got = element_hashes(memoryview(data), item)
    assert len(got) == count
    for i in [0, 1, count // 2, count - 1]:
        assert int(got[i]) == _reference_hash(data[i * item : (i + 1) * item]), i
