"""hnswlib's persisted index (Chroma's fork), as four files in one folder.

`header.bin` (100 bytes: format version 1, then the graph's sizes: element count and capacity,
bytes per element, where the label and the vector sit in an element, levels and fan-outs),
`data_level0.bin` (one record per element: a u32 whose low 16 bits count its level-0
neighbours and whose third byte holds the deleted mark, the neighbour ids, the float32 vector,
then the u64 label), `length.bin` (4 bytes per element) and `link_lists.bin` (per element, in
order: a u32 byte count, then its upper-level neighbour lists). hnswlib writes the files in
place as elements change, so a file may be longer than its elements need, never shorter; its
loader does not check that (a short file loads as garbage), which is why these checks exist.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # numpy is imported by the scans of a segment's records, where they run
    import numpy as np


HEADER = "header.bin"
DATA = "data_level0.bin"
LENGTH = "length.bin"
LINKS = "link_lists.bin"
FILES = (HEADER, DATA, LENGTH, LINKS)

VERSION = 1
_HEADER = struct.Struct("<iQQQQQQiiQQQdQ")
_DELETED = 0x01  # the deleted mark, in the third byte of an element's level-0 list header
_SCAN_ELEMENTS = 8192  # elements read at a time when scanning data_level0.bin
_MAX_COUNT = 0xFFFF  # a neighbour list's count is 16 bits: no list holds more


class HnswHeader(NamedTuple):
    """The fields of header.bin."""

    version: int
    offset_level0: int
    capacity: int
    elements: int
    element_size: int
    label_offset: int
    data_offset: int
    max_level: int
    entry_point: int
    max_m: int
    max_m0: int
    m: int
    mult: float
    ef_construction: int

    @property
    def dim(self) -> int:
        """The vector dimension (float32 vectors sit between the neighbour ids and the label)."""
        return (self.label_offset - self.data_offset) // 4

    @property
    def links_size(self) -> int:
        """Bytes of one upper-level neighbour list (a count, then max_m ids)."""
        return self.max_m * 4 + 4

    def describe(self) -> str:
        return (
            f"hnswlib index: {self.elements} elements (room for {self.capacity}), d={self.dim}, "
            f"M={self.m}, ef_construction={self.ef_construction}, {self.max_level + 1} levels"
        )


def parse_header(data: bytes) -> HnswHeader:
    """header.bin's fields; ValueError naming the first one that cannot be right."""
    if len(data) != _HEADER.size:
        raise ValueError(f"header.bin holds {len(data)} bytes, not {_HEADER.size}")
    h = HnswHeader(*_HEADER.unpack(data))
    if h.version != VERSION:
        raise ValueError(f"header.bin: persistence version {h.version}, not {VERSION}")
    problems = []
    if h.offset_level0 != 0:
        problems.append(f"level-0 offset {h.offset_level0}")
    if not 0 < h.max_m0 <= _MAX_COUNT or h.data_offset != h.max_m0 * 4 + 4:
        problems.append(f"vector offset {h.data_offset} for {h.max_m0} level-0 neighbours")
    if h.label_offset <= h.data_offset or (h.label_offset - h.data_offset) % 4:
        problems.append(f"label offset {h.label_offset}")
    if h.element_size != h.label_offset + 8:
        problems.append(f"element size {h.element_size}")
    if h.max_m > _MAX_COUNT:
        problems.append(f"{h.max_m} upper-level neighbours")
    if h.elements > h.capacity:
        problems.append(f"{h.elements} elements in room for {h.capacity}")
    if h.elements and not (0 <= h.entry_point < h.elements and h.max_level >= 0):
        problems.append(f"entry point {h.entry_point} at level {h.max_level}")
    if problems:
        raise ValueError("header.bin: impossible " + ", ".join(problems))
    return h


def level0_records(data: bytes) -> tuple[int, int] | None:
    """(bytes per element, bytes of its level-0 neighbour list) of the data_level0.bin that a
    header.bin holding `data` describes; None when `data` is no header.bin."""
    try:
        h = parse_header(data)
    except (ValueError, struct.error):
        return None
    return h.element_size, h.data_offset


#: Bytes of a header.bin (format version 1).
HEADER_SIZE = _HEADER.size
#: Records like those of a 384-dimension index with M=16: lets a repository's config be checked.
HNSW_SAMPLE_RECORDS = (16 * 2 * 4 + 4 + 384 * 4 + 8, 16 * 2 * 4 + 4)


def read_header(path: Path) -> HnswHeader:
    """parse_header of a header.bin file; ValueError (also when it cannot be read)."""
    try:
        return parse_header(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"header.bin cannot be read: {exc}") from exc


def size_problems(header: HnswHeader, sizes: dict[str, int | None]) -> list[str]:
    """How the sizes of data_level0.bin and length.bin fall short of what the header's element
    count needs (None: the file is missing)."""
    need = {
        DATA: header.elements * header.element_size,
        LENGTH: header.elements * 4,
    }
    problems = []
    for name, want in need.items():
        have = sizes.get(name)
        if have is None:
            problems.append(f"{name} is missing")
        elif have < want:
            problems.append(
                f"{name} holds {have} bytes, its {header.elements} elements need {want}"
            )
    return problems


def walk_links(header: HnswHeader, data: bytes, deep: bool = False) -> tuple[int, int]:
    """Walk link_lists.bin (a u32 byte count per element, then its lists): the bytes it uses and
    the highest level found. ValueError when it ends early, a count is not a whole number of
    lists, or (deep) a list names an element that does not exist."""
    pos = 0
    top = 0 if header.elements else -1
    size = len(data)
    for i in range(header.elements):
        if pos + 4 > size:
            raise ValueError(f"link_lists.bin ends at element {i} of {header.elements}")
        n = int.from_bytes(data[pos : pos + 4], "little")
        pos += 4
        if n % header.links_size or n // header.links_size > header.max_level:
            raise ValueError(f"link_lists.bin: element {i} has {n} bytes of upper-level lists")
        if pos + n > size:
            raise ValueError(f"link_lists.bin ends inside element {i}'s lists")
        if n and deep:
            _check_lists(data[pos : pos + n], header, i)
        top = max(top, n // header.links_size)
        pos += n
    return pos, top


def _check_lists(raw: bytes, header: HnswHeader, element: int) -> None:
    """The upper-level lists of one element: counts within max_m, ids of existing elements."""
    import numpy as np

    lists = np.frombuffer(raw, dtype="<u4").reshape(-1, header.max_m + 1)
    counts = lists[:, 0] & 0xFFFF
    if (counts > header.max_m).any():
        raise ValueError(f"link_lists.bin: element {element} has a list of over {header.max_m}")
    used = np.arange(header.max_m)[None, :] < counts[:, None]
    if (lists[:, 1:][used] >= header.elements).any():
        raise ValueError(f"link_lists.bin: element {element} links to an element that is not")


class Level0(NamedTuple):
    """What data_level0.bin's records hold: the deleted count and the labels of live elements."""

    deleted: int
    live_labels: np.ndarray  # sorted, distinct uint64 (8 bytes a label, however many)


def scan_level0(path: Path, header: HnswHeader) -> Level0:
    """Read each element's record (in blocks): its deleted mark, its label, and that its
    neighbour count and ids are possible. ValueError naming the first record that is not."""
    import numpy as np

    size = header.element_size
    deleted = 0
    labels: list[np.ndarray] = []
    cols = np.arange(header.max_m0)[None, :]
    with open(path, "rb") as f:
        done = 0
        while done < header.elements:
            n = min(_SCAN_ELEMENTS, header.elements - done)
            raw = f.read(n * size)
            if len(raw) < n * size:
                raise ValueError(f"{DATA} ends at element {done + len(raw) // size}")
            rec = np.frombuffer(raw, dtype=np.uint8).reshape(n, size)
            counts = rec[:, 0:2].copy().view("<u2").ravel()
            if (counts > header.max_m0).any():
                bad = done + int(np.argmax(counts > header.max_m0))
                raise ValueError(f"{DATA}: element {bad} counts over {header.max_m0} neighbours")
            ids = rec[:, 4 : header.data_offset].copy().view("<u4")
            if (ids[cols < counts[:, None]] >= header.elements).any():
                raise ValueError(f"{DATA}: a neighbour id names an element that does not exist")
            gone = (rec[:, 2] & _DELETED).astype(bool)
            deleted += int(gone.sum())
            lab = rec[:, header.label_offset : header.label_offset + 8].copy().view("<u8").ravel()
            labels.append(np.unique(lab[~gone]))
            done += n
    return Level0(deleted, np.unique(np.concatenate(labels)) if labels else np.zeros(0, "<u8"))


def file_sizes(paths: dict[str, Path | None]) -> dict[str, int | None]:
    """The size of each file of a segment, by name (None when missing)."""
    out: dict[str, int | None] = {}
    for name in FILES:
        path = paths.get(name)
        try:
            out[name] = os.stat(path).st_size if path is not None else None
        except OSError:
            out[name] = None
    return out
