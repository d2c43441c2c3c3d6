"""ObjectId: the BLAKE3-256 name of every stored object, and the hashing helpers around it."""

from __future__ import annotations

from collections.abc import Sequence

import blake3

ID_SIZE = 32


class ObjectId(bytes):
    """32 raw bytes of BLAKE3; prints as 64 lowercase hex digits."""

    __slots__ = ()

    def __new__(cls, raw: bytes) -> ObjectId:
        if len(raw) != ID_SIZE:
            raise ValueError(f"an object id has {ID_SIZE} bytes, not {len(raw)}")
        return super().__new__(cls, raw)

    @classmethod
    def from_hex(cls, text: str) -> ObjectId:
        """Parse 64 hex digits; ValueError otherwise."""
        if len(text) != 2 * ID_SIZE:
            raise ValueError(f"not an object id: {text!r}")
        return cls(bytes.fromhex(text))

    def __str__(self) -> str:
        return self.hex()

    def __repr__(self) -> str:
        return f"ObjectId({self.hex()[:12]}…)"

    @property
    def short(self) -> str:
        """The first 8 hex digits, as shown in listings."""
        return self.hex()[:8]


def hash_bytes(data: bytes | bytearray | memoryview) -> ObjectId:
    """BLAKE3 of data; releases the GIL for large inputs."""
    return ObjectId(blake3.blake3(data, max_threads=1).digest())


class IdHasher:
    """Names objects by their content: plain BLAKE3 in a plain repository, keyed BLAKE3 (a key
    derived from the master key) in an encrypted one, so an id there reveals nothing of the
    content while equal content still gets equal ids (dedup inside the repository is unchanged).
    """

    __slots__ = ("key",)

    def __init__(self, key: bytes | None = None) -> None:
        if key is not None and len(key) != 32:
            raise ValueError("a BLAKE3 key has 32 bytes")
        self.key = key

    @property
    def keyed(self) -> bool:
        return self.key is not None

    def __call__(self, data: bytes | bytearray | memoryview) -> ObjectId:
        """The id of data; releases the GIL for large inputs."""
        return ObjectId(self.digest(data))

    def digest(self, data: bytes | bytearray | memoryview) -> bytes:
        """The 32 raw bytes of data's id (the hot path of chunking: no ObjectId made)."""
        if self.key is None:
            return blake3.blake3(data, max_threads=1).digest()
        return blake3.blake3(data, key=self.key, max_threads=1).digest()

    def digests(self, data: memoryview, lengths: Sequence[int]) -> list[bytes]:
        """The raw ids of consecutive pieces of data (their lengths given), one hasher reset
        between them: the hot path of chunking a database, one piece per page, where making a
        hasher per piece costs more than hashing the page."""
        h = blake3.blake3() if self.key is None else blake3.blake3(key=self.key)
        update, digest, reset = h.update, h.digest, h.reset
        out: list[bytes] = []
        append = out.append
        pos = 0
        for n in lengths:
            update(data[pos : pos + n])
            append(digest())
            reset()
            pos += n
        return out

    def stream(self) -> Hasher:
        """An incremental hasher giving the id of the pieces fed to it (an object read piece by
        piece, never whole)."""
        return Hasher(self.key)


PLAIN_IDS = IdHasher()


class Hasher:
    """Incremental BLAKE3 over a stream of pieces (whole-file hashes)."""

    __slots__ = ("_h",)

    def __init__(self, key: bytes | None = None) -> None:
        self._h = blake3.blake3(max_threads=1) if key is None else blake3.blake3(key=key)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)

    def digest(self) -> ObjectId:
        return ObjectId(self._h.digest())


def named_id(key: str) -> ObjectId | None:
    """The id a key's last part names (`snapshots/<hex>`), or None for any other name. Only
    lowercase hex names an object, as casnap writes it: `<HEX>` is another key (S3 keys and
    most filesystems tell case apart), which reads and deletes by the id's name would miss."""
    name = key.rsplit("/", 1)[-1]
    if len(name) != 2 * ID_SIZE or not is_hex_prefix(name):
        return None
    return ObjectId.from_hex(name)


def is_hex_prefix(text: str) -> bool:
    """True when text could be (a prefix of) an object id."""
    return 0 < len(text) <= 2 * ID_SIZE and all(c in "0123456789abcdef" for c in text)
