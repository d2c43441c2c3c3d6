"""Sealed objects: what an encrypted repository stores, and the keys that open them.

A sealed object is a 40-byte header and the plaintext in 64 KiB segments, each sealed with
AES-256-GCM (16-byte tag). The header holds a magic, the scheme, a 24-byte random salt and the
plaintext length. Each object gets its own AES key (keyed BLAKE3 of the salt under the
repository's encryption key), so segment nonces are simply the segment numbers: a nonce repeats
under one key only if two objects drew the same 192-bit salt. Every segment authenticates the
header and the object's name (associated data): a byte flipped, a segment cut off or moved, a
length changed, or an object stored under another object's name fails to open. Segments let a
ranged read open only the segments it needs.

The master key is 32 random bytes; the encryption key and the id key are derived from it with
BLAKE3's key derivation, each under its own context string, so neither reveals the other.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import blake3

from casnap.errors import IntegrityError, SealedUnderPlainConfig, UnsupportedFormat

if TYPE_CHECKING:  # cryptography is imported where objects are sealed or opened
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"casnapE"  # 7 bytes; then the scheme byte
SCHEME_AES256GCM = 1
SCHEMES = {SCHEME_AES256GCM: "aes-256-gcm, 64 KiB segments, keyed-BLAKE3 object keys"}
SALT_SIZE = 24
_HEADER = struct.Struct(f">7sB{SALT_SIZE}sQ")
HEADER_SIZE = _HEADER.size  # 40
SEGMENT = 64 * 1024  # plaintext bytes per segment (the last one may be shorter)
TAG = 16
SEALED_SEGMENT = SEGMENT + TAG
KEY_SIZE = 32
ENCRYPTION_CONTEXT = "casnap 2026-12-01 object encryption key"
ID_CONTEXT = "casnap 2026-12-01 content id key"


def derive(master: bytes, context: str) -> bytes:
    """A 32-byte subkey of master for one purpose (BLAKE3 in key derivation mode)."""
    return blake3.blake3(master, derive_key_context=context).digest()


@dataclass(frozen=True)
class MasterKey:
    """The repository's master key and the two keys derived from it."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != KEY_SIZE:
            raise ValueError(f"a master key has {KEY_SIZE} bytes")

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(KEY_SIZE))

    @property
    def encryption_key(self) -> bytes:
        return derive(self.raw, ENCRYPTION_CONTEXT)

    @property
    def id_key(self) -> bytes:
        return derive(self.raw, ID_CONTEXT)

    def __repr__(self) -> str:  # never print key bytes
        return "MasterKey(…)"


def is_sealed(data: bytes) -> bool:
    """True when data starts like a sealed object (whatever its scheme)."""
    return data[: len(MAGIC)] == MAGIC


def refuse_sealed(data: bytes | memoryview, what: str) -> None:
    """SealedUnderPlainConfig when data, read as a plain object, is a sealed one."""
    if is_sealed(bytes(data[: len(MAGIC)])):
        raise SealedUnderPlainConfig(
            f"{what}: the object is encrypted, but the repository's config is plain (the config "
            "was replaced, or objects were copied in from an encrypted repository): put the "
            "repository's own config and keys/ back"
        )


def sealed_size(plain: int) -> int:
    """Stored size of a sealed object holding plain bytes."""
    return HEADER_SIZE + plain + TAG * _segments(plain)


def plain_size(stored: int) -> int:
    """Plaintext size of a sealed object of stored bytes (0 for a size no object can have)."""
    body = stored - HEADER_SIZE
    if body < TAG:
        return 0
    count = -(-body // SEALED_SEGMENT)
    plain = body - TAG * count
    return plain if plain >= 0 and sealed_size(plain) == stored else 0


def _segments(plain: int) -> int:
    return max(1, -(-plain // SEGMENT))


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


@dataclass(frozen=True)
class Header:
    """The parsed header of a sealed object."""

    raw: bytes
    salt: bytes
    length: int

    @property
    def segments(self) -> int:
        return _segments(self.length)


def parse_header(name: str, data: bytes) -> Header:
    """The header of the repository's config: IntegrityError when it is not one,
    UnsupportedFormat for a scheme this casnap does not know (the config's scheme decides
    whether this casnap can read the repository)."""
    magic, scheme, salt, length = _unpack(name, data)
    if scheme not in SCHEMES:
        raise UnsupportedFormat(
            f"{name} is encrypted with scheme {scheme}, which this casnap does not know: "
            "upgrade casnap"
        )
    return Header(bytes(data[:HEADER_SIZE]), salt, length)


def object_header(name: str, data: bytes) -> Header:
    """The header of any object but the config: its config opened, so the repository's scheme
    is known, and another scheme byte is damage (IntegrityError naming the object)."""
    magic, scheme, salt, length = _unpack(name, data)
    if scheme != SCHEME_AES256GCM:
        raise IntegrityError(
            f"{name} has scheme byte {scheme} where the repository's objects have "
            f"{SCHEME_AES256GCM} (damaged)"
        )
    return Header(bytes(data[:HEADER_SIZE]), salt, length)


def _unpack(name: str, data: bytes) -> tuple[bytes, int, bytes, int]:
    if len(data) < HEADER_SIZE or not is_sealed(data):
        raise IntegrityError(
            f"{name} is not an encrypted object (damaged or written by another tool)"
        )
    magic, scheme, salt, length = _HEADER.unpack_from(data)
    return magic, scheme, salt, length


class Sealer:
    """Seals and opens the objects of one repository (its encryption key)."""

    def __init__(self, encryption_key: bytes) -> None:
        self._key = encryption_key

    def _cipher(self, salt: bytes) -> AESGCM:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        return AESGCM(blake3.blake3(salt, key=self._key).digest())

    def seal(self, name: str, data: bytes | memoryview) -> bytes:
        """The sealed form of data stored under name."""
        view = memoryview(data).cast("B")
        salt = os.urandom(SALT_SIZE)
        header = _HEADER.pack(MAGIC, SCHEME_AES256GCM, salt, len(view))
        ad = header + name.encode()
        cipher = self._cipher(salt)
        parts = [header]
        for i in range(_segments(len(view))):
            parts.append(cipher.encrypt(_nonce(i), view[i * SEGMENT : (i + 1) * SEGMENT], ad))
        return b"".join(parts)

    def open_segments(
        self, name: str, header: Header, first: int, sealed: bytes | memoryview
    ) -> bytearray:
        """The plaintext of consecutive sealed segments starting with segment first, each
        decrypted straight into one buffer (no piece copied or joined afterwards)."""
        from cryptography.exceptions import InvalidTag

        view = memoryview(sealed)
        cipher = self._cipher(header.salt)
        ad = header.raw + name.encode()
        plain: list[int] = []  # plaintext size of each segment, as the header says
        pos = 0
        while pos < len(view):
            plain.append(max(0, min(SEGMENT, header.length - (first + len(plain)) * SEGMENT)))
            pos += plain[-1] + TAG
        out = bytearray(sum(plain))
        into = memoryview(out)
        at = pos = 0
        for i, n in enumerate(plain):
            piece = view[pos : pos + n + TAG]
            if len(piece) != n + TAG:
                raise IntegrityError(f"{name} is truncated (damaged)")
            try:
                cipher.decrypt_into(_nonce(first + i), piece, ad, into[at : at + n])
            except InvalidTag as exc:
                raise IntegrityError(
                    f"{name} fails authentication: damaged, tampered with, or stored under "
                    "another object's name"
                ) from exc
            pos += n + TAG
            at += n
        return out

    def open(self, name: str, data: bytes) -> bytes:
        """The plaintext of a whole sealed object stored under name, authenticated."""
        header = object_header(name, data)
        body = memoryview(data)[HEADER_SIZE:]
        if len(body) != sealed_size(header.length) - HEADER_SIZE:
            raise IntegrityError(
                f"{name} has {len(data)} bytes where its header promises "
                f"{sealed_size(header.length)} (damaged)"
            )
        return bytes(self.open_segments(name, header, 0, body))

    def salvage(self, name: str, data: bytes) -> tuple[bytes, list[tuple[int, int]]]:
        """What can be read of a damaged sealed object: its plaintext with every segment that
        fails authentication replaced by zeros, and the [start, end) plaintext ranges of those
        segments (adjacent ones merged). IntegrityError when the header is unusable or the
        object holds fewer bytes than its header promises (a cut-off object, or a damaged
        length, which fails every segment anyway)."""
        from cryptography.exceptions import InvalidTag

        header = object_header(name, data)
        if len(data) < sealed_size(header.length):
            raise IntegrityError(
                f"{name} has {len(data)} bytes where its header promises "
                f"{sealed_size(header.length)}: nothing to salvage segment by segment"
            )
        view = memoryview(data)
        cipher = self._cipher(header.salt)
        ad = header.raw + name.encode()
        out = bytearray(header.length)
        failed: list[tuple[int, int]] = []
        for i in range(header.segments):
            start = i * SEGMENT
            size = min(SEGMENT, header.length - start)
            at = HEADER_SIZE + i * SEALED_SEGMENT
            try:
                out[start : start + size] = cipher.decrypt(
                    _nonce(i), view[at : at + size + TAG], ad
                )
            except InvalidTag:
                if failed and failed[-1][1] == start:
                    failed[-1] = (failed[-1][0], start + size)
                else:
                    failed.append((start, start + size))
        return bytes(out), failed


def segment_span(header: Header, offset: int, length: int) -> tuple[int, int, int]:
    """(first segment, stored offset, stored length) of the sealed segments holding plaintext
    bytes [offset, offset + length) of an object (length > 0, within the object)."""
    first = offset // SEGMENT
    last = (offset + length - 1) // SEGMENT
    start = HEADER_SIZE + first * SEALED_SEGMENT
    end_plain = min(header.length, (last + 1) * SEGMENT)
    end = HEADER_SIZE + end_plain + TAG * (last + 1)
    return first, start, end - start
