"""The restore's fast paths read exactly what the slow ones read: grouped float frames put back
range by range, and ranged reads of pack files through os.pread."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from casnap import compression
from casnap.backends.local import LocalBackend
from casnap.errors import IntegrityError, ObjectMissing


@pytest.mark.parametrize("size", [0, 3, 4, 5, 64, 1001, 4096, 65539])
def test_ranges_of_a_grouped_frame_match_the_ungrouped_frame(size: int) -> None:
    rng = np.random.default_rng(size)
    plain = rng.standard_normal(size // 4 + 1).astype("float32").tobytes()[:size]
    encoded = compression.encode(plain, 1, grouped=True)
    frame = compression.decode_frame(encoded, size)
    assert frame.grouped == (size >= 64 and encoded[0] == compression.ZSTD_GROUPED4)
    assert frame.read(0, size) == plain == compression.decode(encoded, size)
    starts = rng.integers(0, size + 1, 40) if size else [0]
    for start in starts:
        start = int(start)
        n = int(rng.integers(0, size - start + 1))
        out = np.full(n, 0xAB, dtype=np.uint8)
        frame.into(start, out)
        assert out.tobytes() == plain[start : start + n], (start, n)
        assert frame.read(start, n) == plain[start : start + n]


def test_plain_frames_read_ranges_too() -> None:
    plain = bytes(range(256)) * 40
    frame = compression.decode_frame(compression.encode(plain, 3), len(plain))
    assert not frame.grouped and len(frame) == len(plain)
    out = np.empty(300, dtype=np.uint8)
    frame.into(1000, out)
    assert out.tobytes() == plain[1000:1300] == frame.read(1000, 300)


def test_local_reads_ranges_whole_objects_and_refuses_short_ones(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    data = np.random.default_rng(1).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    assert backend.put("packs/ab/abcd", data)
    assert backend.get("packs/ab/abcd") == data
    assert backend.get("packs/ab/abcd", 1000) == data[1000:]
    assert backend.get("packs/ab/abcd", 123_456, 7) == data[123_456:123_463]
    assert backend.get("packs/ab/abcd", 0, 0) == b""
    with pytest.raises(IntegrityError, match="truncated"):
        backend.get("packs/ab/abcd", 299_990, 20)
    with pytest.raises(ObjectMissing):
        backend.get("packs/ab/none")
    (tmp_path / "packs" / "ab" / "dir").mkdir()
    with pytest.raises(IntegrityError, match="directory"):
        backend.get("packs/ab/dir", 0, 10)
    with pytest.raises(ValueError):
        backend.get("../outside")
