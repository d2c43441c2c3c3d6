"""PackWriter: a frame a worker found new is stored once, even when the same chunk went into a
pack that became durable between the worker's check and the frame's turn to be added."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from casnap import compression
from casnap.chunkindex import DATA
from casnap.ids import hash_bytes
from casnap.packs import pack_key
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


@pytest.mark.parametrize("later_packs", [3, 12])
def test_a_frame_checked_several_packs_ago_is_not_stored_again(
    tmp_path: Path, later_packs: int
) -> None:
    """The chunk went into the first of several packs made durable after the frame's check:
    found among the last packs' ids while few have (3), in the written set past that (12)."""
    repo = Repository.init(tmp_path / "repo")
    repo.ensure_index()
    writer = PackWriter(repo.store)
    body = b"a chunk framed twice, checked long ago" * 50
    cid = bytes(hash_bytes(body))
    checked = writer.generation
    assert writer.add_frame(DATA, compression.encode_parts(body), 0, [(cid, 0, len(body))]) == 1
    writer.flush()
    for i in range(later_packs):
        other = b"another chunk %d" % i * 40
        writer.add_frame(
            DATA, compression.encode(other), 0, [(bytes(hash_bytes(other)), 0, len(other))]
        )
        writer.flush()
    writer.new_entries()
    assert writer.generation - checked == later_packs + 1
    assert writer.add_frame(DATA, compression.encode(body), 0, [(cid, 0, len(body))], checked) == 0
    writer.finish()
    assert writer.chunks_added == later_packs + 1
    repo = Repository.open(tmp_path / "repo")
    repo.ensure_index()
    assert len(repo.store.index) == later_packs + 1


def test_a_signal_while_a_pack_s_thread_starts_still_has_abort_wait_for_that_pack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM (or Ctrl-C) handled while `flush` hands a pack to the writing thread, as that
    thread starts: the pack was on its way, but the writer had not noted it, so `abort` neither
    waited for it nor listed it, and a first commit stopped then had its rollback race the
    pack's put (the repository it made, and the pack, stayed behind). abort now waits for it
    and lists it, as every pack put."""
    from concurrent.futures import ThreadPoolExecutor

    from casnap import signals
    from casnap.errors import Terminated

    repo = Repository.init(tmp_path / "repo")
    repo.ensure_index()
    writer = PackWriter(repo.store)
    body = b"a pack on its way when the signal comes" * 50
    cid = bytes(hash_bytes(body))
    writer.add_frame(DATA, compression.encode(body), 0, [(cid, 0, len(body))])

    starting = ThreadPoolExecutor._adjust_thread_count

    def signalled(pool: ThreadPoolExecutor) -> None:
        starting(pool)  # the thread runs; the signal is handled before submit returns
        os.kill(os.getpid(), signal.SIGTERM)

    # as at the start of a command line's command (a command run in this process before may
    # have ended: a signal then would end the process at once), restored afterwards
    fresh = {"_stopping": False, "_first": 0, "_deferred": 0, "_ended": False, "_depth": 0}
    for name, value in {**fresh, "_held_back": None, "_exit_code": None}.items():
        monkeypatch.setattr(signals, name, value)
    monkeypatch.setattr(ThreadPoolExecutor, "_adjust_thread_count", signalled)
    previous = signal.signal(signal.SIGTERM, signals._terminated)
    try:
        with pytest.raises(Terminated):
            writer.flush()
            time.sleep(1)  # a signal not raised inside flush is raised here at the latest
    finally:
        signal.signal(signal.SIGTERM, previous)
    made = writer.abort()
    assert len(made) == 1, "abort did not wait for the pack on its way"
    assert (tmp_path / "repo" / pack_key(made[0])).is_file()
