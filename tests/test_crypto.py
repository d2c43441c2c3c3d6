"""Sealed objects and key files: round trips, ranged reads, tampering, nonce uniqueness, prompts."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casnap.backends.encrypted import EncryptedBackend
from casnap.backends.memory import MemoryBackend
from casnap.crypto import (
    HEADER_SIZE,
    SALT_SIZE,
    SEGMENT,
    MasterKey,
    Sealer,
    plain_size,
    sealed_size,
)
from casnap.errors import IntegrityError, PasswordError, UnsupportedFormat
from casnap.ids import IdHasher, hash_bytes
from casnap.keys import Kdf, make_key_file, parse_key_file, unlock

SEALER = Sealer(bytes(32))
FAST_KDF = Kdf(b"0123456789abcdef", memory_kib=64, iterations=1, lanes=1)


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(0, 3 * SEGMENT + 5),
    cut=st.tuples(st.integers(0, 3 * SEGMENT + 5), st.integers(0, 3 * SEGMENT + 5)),
    seed=st.integers(0, 2**32 - 1),
)
def test_ranged_reads_open_only_what_they_cover(size: int, cut: tuple[int, int], seed: int) -> None:
    data = os.urandom(size) if seed % 2 else bytes(size)
    b = EncryptedBackend(MemoryBackend(), SEALER)
    b.put("packs/00/x", data)
    assert b.get("packs/00/x") == data
    assert dict(b.list("packs/")) == {"packs/00/x": size}
    offset, length = min(cut), max(cut) - min(cut)
    if offset + length <= size:
        assert b.get("packs/00/x", offset, length) == data[offset : offset + length]
        assert b.get("packs/00/x", offset) == data[offset:]
    else:
        with pytest.raises(IntegrityError):
            b.get("packs/00/x", offset, length)


@settings(max_examples=40, deadline=None)
@given(size=st.integers(0, 2 * SEGMENT + 100), where=st.integers(0, 10**9), bit=st.integers(0, 7))
def test_any_flipped_bit_fails_to_open(size: int, where: int, bit: int) -> None:
    sealed = bytearray(SEALER.seal("index/a", os.urandom(size)))
    sealed[where % len(sealed)] ^= 1 << bit
    with pytest.raises((IntegrityError, UnsupportedFormat)):
        SEALER.open("index/a", bytes(sealed))


def test_sizes_and_names_are_bound() -> None:
    for n in (0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 5 * SEGMENT):
        sealed = SEALER.seal("snapshots/a", b"x" * n)
        assert len(sealed) == sealed_size(n) and plain_size(len(sealed)) == n
        with pytest.raises(IntegrityError, match="another object's name"):
            SEALER.open("snapshots/b", sealed)  # the same bytes under another name
        if n > SEGMENT:
            with pytest.raises(IntegrityError):  # cut at a segment boundary
                SEALER.open("snapshots/a", sealed[: HEADER_SIZE + SEGMENT + 16])
    with pytest.raises(IntegrityError):
        Sealer(bytes(range(32))).open("snapshots/a", SEALER.seal("snapshots/a", b"data"))


def test_salts_never_repeat_across_many_objects_and_threads() -> None:
    """A nonce is a segment number under a per-object key: unique salts mean unique nonces."""
    backend = MemoryBackend()
    enc = EncryptedBackend(backend, SEALER)

    def writer(t: int) -> None:
        for i in range(300):
            enc.put(f"packs/{t:02x}/{i}", b"same plaintext every time")

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    salts = [bytes(v[8 : 8 + SALT_SIZE]) for v in backend.objects.values()]
    assert len(salts) == 2400 and len(set(salts)) == 2400
    assert len({bytes(v) for v in backend.objects.values()}) == 2400  # equal plaintext, new bytes


def test_keyed_ids_differ_from_plain_and_between_repositories() -> None:
    a, b = MasterKey.generate(), MasterKey.generate()
    data = b"a known file"
    ids_a, ids_b = IdHasher(a.id_key), IdHasher(b.id_key)
    assert ids_a(data) == ids_a(data)  # dedup within a repository
    assert len({ids_a(data), ids_b(data), hash_bytes(data)}) == 3
    assert a.id_key != a.encryption_key


def test_key_files_open_only_with_their_password_and_name() -> None:
    master = MasterKey.generate()
    kf = make_key_file(master, "pw", "2026-12-05T00:00:00.000000Z", FAST_KDF)
    backend = MemoryBackend()
    backend.put(kf.key, kf.encode())
    found, got = unlock(backend, "pw")
    assert got == master and found.id == kf.id
    with pytest.raises(PasswordError, match="wrong password"):
        unlock(backend, "other")
    renamed = MemoryBackend()
    renamed.put("keys/" + "0" * 32, kf.encode())
    with pytest.raises(PasswordError):
        unlock(renamed, "pw")  # the id is bound as associated data


@pytest.mark.parametrize(
    "field, value",
    [("memory_kib", 1 << 30), ("iterations", 10**6), ("lanes", 0), ("salt", "AA==")],
)
def test_hostile_kdf_parameters_are_refused_before_the_kdf_runs(field: str, value: object) -> None:
    kf = make_key_file(MasterKey.generate(), "pw", "2026-12-05T00:00:00.000000Z", FAST_KDF)
    doc = json.loads(kf.encode())
    doc["kdf"][field] = value
    with pytest.raises(IntegrityError, match="damaged"):
        parse_key_file(kf.id, json.dumps(doc).encode(), "keys/x")


def _run_on_terminal(args: list[str], inputs: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run casnap with a pseudo-terminal as stdin, typing each input after a prompt."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "casnap", *args],
        stdin=slave,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 60
    pending = list(inputs)
    while proc.poll() is None and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 1024)
            except OSError:
                break
            seen += chunk
            if pending and chunk.rstrip().endswith(b":"):
                os.write(master, pending.pop(0).encode() + b"\n")
    proc.wait(timeout=60)
    os.close(master)
    return proc.returncode, seen.decode(errors="replace")


def test_a_terminal_is_asked_without_echo(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASNAP_PASSWORD")}
    repo = str(tmp_path / "repo")
    code, seen = _run_on_terminal(
        ["--repo", repo, "init", "--encryption", "repokey"], ["typed-pw", "typed-pw"], env
    )
    assert code == 0, seen
    assert "typed-pw" not in seen and seen.lower().count("password") >= 2  # asked twice
    code, seen = _run_on_terminal(["--repo", repo, "log"], ["typed-pw"], env)
    assert code == 0 and "typed-pw" not in seen, seen
    code, seen = _run_on_terminal(["--repo", repo, "log"], ["wrong"], env)
    assert code == 10 and "wrong password" in seen


def test_a_read_retried_past_a_stale_header_fetches_the_header_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An object stored again under its name (a new salt) fails the first read with the header
    this backend remembered; the retry must take the header from the storage, not from the
    memory another reading thread may have filled again with the old one meanwhile (a checkout
    reading one pack from several threads failed so, now and then)."""
    from casnap.backends import encrypted
    from casnap.backends.base import Backend

    storage = MemoryBackend()
    reader = EncryptedBackend(storage, SEALER)
    key = "packs/ab/" + "ab" * 32
    body = bytes(range(256)) * 1024
    reader.put(key, body)
    assert reader.get(key, 100, 1000) == body[100:1100]  # its header remembered
    old = reader._headers[key]
    writer = EncryptedBackend(storage, SEALER)  # another host stores it again: a new salt
    writer.delete(key)
    writer.put(key, body)
    real = encrypted.drop_kept

    def another_thread_remembers_the_old_header(backend: Backend, name: str) -> bool:
        dropped = real(backend, name)
        reader._headers[name] = old
        return dropped

    monkeypatch.setattr(encrypted, "drop_kept", another_thread_remembers_the_old_header)
    assert reader.get(key, 5000, 3000) == body[5000:8000]


def test_end_of_input_at_the_password_prompt_is_no_password_not_an_interrupt(
    tmp_path: Path,
) -> None:
    """Ctrl-D at the prompt gives no password (exit 10), as no terminal does; exit 130 says a
    Ctrl-C the user never pressed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASNAP_PASSWORD")}
    repo = str(tmp_path / "repo")
    code, seen = _run_on_terminal(
        ["--repo", repo, "init", "--encryption", "repokey"], ["typed-pw", "typed-pw"], env
    )
    assert code == 0, seen
    code, seen = _run_on_terminal(["--repo", repo, "log"], ["\x04"], env)
    assert code == 10 and "interrupted" not in seen, seen
    assert "no password" in seen
