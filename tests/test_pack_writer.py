"""PackWriter: a frame a worker found new is stored once, even when the same chunk went into a
pack that became durable between the worker's check and the frame's turn to be added."""

from __future__ import annotations

from pathlib import Path

from casnap import compression
from casnap.chunkindex import DATA
from casnap.ids import hash_bytes
from casnap.packwriter import PackWriter
from casnap.repository import Repository


def test_frame_checked_before_its_chunk_became_durable_is_not_stored_twice(
    tmp_path: Path,
) -> None:
    repo = Repository.init(tmp_path / "repo")
    repo.ensure_index()
    writer = PackWriter(repo.store)
    body = b"one chunk, framed by two workers at once" * 50
    cid = bytes(hash_bytes(body))
    encoded = compression.encode(body)
    checked = writer.generation  # both workers look the chunk up before either adds it
    assert not writer.known_many([cid])[0]
    assert writer.add_frame(DATA, encoded, 0, [(cid, 0, len(body))], checked=checked) == 1
    writer.flush()
    writer.new_entries()  # the pack is durable: the chunk moved to the written set
    assert writer.generation != checked
    # the second worker's frame: stale check, so the written set is asked, and it is dropped
    assert writer.add_frame(DATA, encoded, 0, [(cid, 0, len(body))], checked=checked) == 0
    # a check taken now is current: nothing moved since, the frame is still recognised as held
    assert writer.add_frame(DATA, encoded, 0, [(cid, 0, len(body))]) == 0
    writer.finish()
    repo = Repository.open(tmp_path / "repo")
    repo.ensure_index()
    assert len(repo.store.index) == 1
    assert writer.chunks_added == 1
