"""Content-defined cuts between the fixed-size elements of an array (vectors, codes, ids).

An array of equal-sized elements (a FAISS index's vectors, an id map) changes by whole elements:
appended at the end, removed with the rest moved down (`remove_ids`), rewritten in place. Cutting
only between elements, where the elements' own content says, keeps every piece of unchanged
elements byte-identical when a deletion shifts them: the cuts move with the content.

Each element gets a 64-bit hash in one numpy pass (its little-endian words multiplied by fixed odd
keys and summed modulo 2^64, one integer matrix-vector product, then a finaliser). A piece ends
after an element whose hash falls below a threshold, once it holds at least `low` elements, and
after `high` elements at the latest; the threshold makes the mean piece `avg` elements. The
keys, the finaliser and the threshold are part of the `faiss-cdc` chunker's definition: changing
them changes where every repository using it cuts.
"""

from __future__ import annotations

from bisect import bisect_left
from functools import lru_cache

import numpy as np

_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
# Elements hashed per numpy call: bounds the temporary arrays to about a MiB.
_BATCH_WORDS = 1 << 17


def _finalise(x: np.ndarray) -> np.ndarray:
    """splitmix64's output function, in place: every input bit reaches every output bit."""
    x ^= x >> np.uint64(30)
    x *= _MIX1
    x ^= x >> np.uint64(27)
    x *= _MIX2
    x ^= x >> np.uint64(31)
    return x


@lru_cache(maxsize=64)
def _keys(count: int) -> np.ndarray:
    """`count` fixed odd 64-bit keys, one per word position of an element (splitmix64 of 1..)."""
    with np.errstate(over="ignore"):
        keys = np.arange(1, count + 1, dtype=np.uint64) * np.uint64(_GOLDEN)
        keys = _finalise(keys) | np.uint64(1)
    keys.flags.writeable = False
    return keys


def element_hashes(view: memoryview, item: int) -> np.ndarray:
    """The 64-bit hash of each of the len(view) // item whole elements of `item` bytes in view."""
    word = 8 if item % 8 == 0 else 4 if item % 4 == 0 else 1
    per = item // word
    n = len(view) // item
    words = np.frombuffer(view, dtype={8: "<u8", 4: "<u4", 1: "u1"}[word], count=n * per)
    words = words.reshape(n, per)
    keys = _keys(per)
    out = np.empty(n, dtype=np.uint64)
    rows = max(1, _BATCH_WORDS // per)
    with np.errstate(over="ignore"):
        for i in range(0, n, rows):
            part = words[i : i + rows].astype(np.uint64, copy=False)
            # a product, not multiply-then-sum: no temporary, and no reduction along a short
            # axis (4-byte elements: 4x faster), the same sums modulo 2^64
            np.matmul(part, keys, out=out[i : i + rows])
        return _finalise(out)


class ElementCutter:
    """Where to cut an array of `item`-byte elements, given piece sizes in bytes.

    Sizes become whole elements: `low` = min, `avg` = avg and `high` = max bytes, rounded (the
    maximum down), at least one element each. When low == high the pieces are fixed blocks of
    `high` elements measured from the array's start, and no element is hashed. An element larger
    than max bytes is a piece boundary on both sides and is split inside into blocks of max bytes,
    so no piece exceeds max bytes.
    """

    def __init__(self, item: int, min_size: int, avg_size: int, max_size: int) -> None:
        if item <= 0:
            raise ValueError("element size must be positive")
        self.item = item
        self.split = max_size if item > max_size else 0
        self.high = max(1, max_size // item)
        self.avg = min(self.high, max(1, round(avg_size / item)))
        self.low = min(self.avg, max(1, round(min_size / item)))
        # an element ends a piece (past `low`) with probability 1 / (avg - low + 1), so pieces
        # hold avg elements on average (fewer when `high` cuts them short)
        self.threshold = np.uint64(((1 << 64) - 1) // (self.avg - self.low + 1))

    def lengths(self, view: memoryview, rel: int, complete: bool) -> list[int]:
        """Byte lengths of pieces covering view, which starts at a cut `rel` bytes into the array.

        `complete`: view reaches the array's end (or the stream's). Otherwise the last length is
        the undecided rest (fewer than `high` elements), which the caller carries into the next
        call starting there.
        """
        size = len(view)
        if self.split:
            return self._split_elements(size, rel)
        n = size // self.item
        if self.low == self.high:
            counts = [self.high] * (n // self.high)
        else:
            counts = self._cuts(element_hashes(view, self.item), complete)
        out = [c * self.item for c in counts]
        rest = size - sum(out)
        if rest and complete:
            whole = rest - rest % self.item
            out += [n for n in (whole, rest - whole) if n]
        elif rest:
            out.append(rest)
        return out

    def _cuts(self, hashes: np.ndarray, complete: bool) -> list[int]:
        """Element counts of the pieces whose end the hashes decide; the rest is left over."""
        low, high = self.low, self.high
        n = len(hashes)
        marks = np.flatnonzero(hashes < self.threshold).tolist()
        counts: list[int] = []
        start = 0
        while start + low <= n:
            i = bisect_left(marks, start + low - 1)
            last = marks[i] if i < len(marks) else n
            if last >= start + high:  # no mark in reach: cut at the maximum
                last = start + high - 1
            if last >= n:
                break
            counts.append(last - start + 1)
            start = last + 1
        return counts

    def _split_elements(self, size: int, rel: int) -> list[int]:
        """Blocks of `split` bytes measured from each element's start (elements over max)."""
        out = []
        pos = rel
        end = rel + size
        while pos < end:
            inside = pos % self.item
            step = min(self.split - inside % self.split, self.item - inside, end - pos)
            out.append(step)
            pos += step
        return out
