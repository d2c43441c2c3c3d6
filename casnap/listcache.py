"""Chunk lists kept on this host: the TREE frames a commit stores or a checkout reads, in the
repository's local cache (backends/cached.py), so that planning a checkout of snapshots committed
or read here makes no request.

A checkout needs every file's chunk list before it can plan a single read of its data; on object
storage those frames lie scattered over the packs of every commit, so reading them cost a round
trip per pack before any data moved. Each is kept under `lists/<ab>/<blob id>` as stored in its
pack (the encoded frame), sealed under the repository's key when it is encrypted (the cache holds
sealed bytes only). A copy is used only when it opens, decodes and hashes to its blob's id;
otherwise it is dropped and the blob read from the storage, so the copies are safe to delete.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from casnap.backends.base import Backend
from casnap.backends.cached import CachingBackend
from casnap.crypto import Sealer
from casnap.errors import CasnapError, IntegrityError
from casnap.ids import ObjectId

if TYPE_CHECKING:  # the store (numpy) is loaded by whoever reads chunks
    from casnap.store import Store

PREFIX = "lists/"


def _key(cid: ObjectId) -> str:
    h = cid.hex()
    return f"{PREFIX}{h[:2]}/{h}"


class ListCache:
    """The chunk-list frames kept in a repository's cache folder (see the module docstring)."""

    def __init__(self, cache: CachingBackend, sealer: Sealer | None) -> None:
        self.cache = cache
        self.sealer = sealer

    @classmethod
    def of(cls, backend: Backend, sealer: Sealer | None) -> ListCache | None:
        """The lists kept in backend's cache folder; None when backend keeps no cache."""
        return cls(backend, sealer) if isinstance(backend, CachingBackend) else None

    def keep(self, cid: ObjectId, encoded: bytes | memoryview) -> None:
        """Keep the frame stored for the list blob cid (a cache that cannot be written only
        costs a fetch later)."""
        key = _key(cid)
        data = bytes(encoded) if self.sealer is None else self.sealer.seal(key, encoded)
        self.cache.keep(key, data)

    def read(self, store: Store, cid: ObjectId) -> bytes | None:
        """The plain bytes of the list blob cid from its kept frame, verified against its id;
        None when none is kept, or the copy does not open or verify (it is then dropped)."""
        key = _key(cid)
        data = self.cache.kept(key)
        if data is None:
            return None
        try:
            e = store.entry(cid)
            if self.sealer is not None:
                data = self.sealer.open(key, data)
            return store.decode_verified(cid, e, data)
        except CasnapError:
            self.drop(cid)
            return None

    def read_many(self, store: Store, ids: Iterable[ObjectId]) -> dict[ObjectId, bytes]:
        """The blobs of ids that read (see read) from their kept frames."""
        found = {}
        for cid in ids:
            if cid not in found:
                body = self.read(store, cid)
                if body is not None:
                    found[cid] = body
        return found

    def has(self, cid: ObjectId) -> bool:
        """Whether a frame of cid is kept (not checked: read checks it)."""
        return self.cache.has_kept(_key(cid))

    def drop(self, cid: ObjectId) -> None:
        self.cache.drop(_key(cid))


def list_blobs(
    store: Store,
    kept: ListCache | None,
    ids: Iterable[str],
    read: Mapping[ObjectId, bytes],
    path: str,
) -> list[bytes]:
    """The chunk-list blobs ids (hex) names, the list of the file at path, each verified: from
    read (read ahead), else from its copy in kept, else from the storage (and then kept). A
    blob that cannot be read names the file it spoils."""
    try:
        return [read.get(cid) or _blob(store, kept, cid) for cid in map(ObjectId.from_hex, ids)]
    except IntegrityError as exc:
        raise IntegrityError(f"{path}: its chunk list: {exc}") from exc


def _blob(store: Store, kept: ListCache | None, cid: ObjectId) -> bytes:
    if kept is None:
        return store.get(cid)
    body = kept.read(store, cid)
    if body is None:
        body, encoded = store.get_encoded(cid)
        kept.keep(cid, encoded)
    return body
