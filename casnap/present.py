"""What a checkout's target holds already: the content hash of each file there.

A file whose stat fingerprint (size, mtime, ctime, inode; a database's `-wal` too) equals one
recorded for that path is known without reading it: recorded by the last checkout into that dir
(restored.py) or by a commit of it (a snapshot entry's `source`, the stat cache; commit records
none for a file too fresh to vouch for). Any write to the file changes its fingerprint, so a
match means the content the record names. Any other file is read and hashed as a snapshot would
record it (a database: the image of its backup API). Files are reached only through directory
descriptors (fsdir.Dir), never by a path that could be redirected.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

from casnap import capture, chunklist, fsutil
from casnap import restored as restored_files
from casnap.constants import SNIFF_BYTES
from casnap.errors import CasnapError, IntegrityError, from_oserror
from casnap.formats.sqlite import check_side_files, is_sqlite_header
from casnap.fsdir import Dir, Tree
from casnap.ids import Hasher
from casnap.manifest import FileEntry, complete
from casnap.opening import with_way_out
from casnap.repository import Repository

Known = tuple[tuple[int, ...], str, str]  # fingerprint, content hash, kind ("sqlite", "file")


class Present:
    """The content of the files in one target dir, by relative path; counts the bytes read."""

    def __init__(self, repo: Repository, target: Path, strict: bool = True) -> None:
        self.repo = repo
        self.strict = strict  # held() checks a holder's data is there (off: nothing is saved)
        self.target = target
        self.bytes_read = 0
        self._known: dict[str, list[Known]] | None = None
        self._held: dict[str, list[tuple[str, FileEntry]]] | None = None
        self._packs: set[str] | None = None  # the stored packs' ids (hex), listed once
        self._whole = False  # the stored packs are exactly those the index names
        self._tainted: frozenset[str] = frozenset()  # snapshots repair-index found incomplete
        self._seen: dict[str, tuple[int, ...] | None] = {}  # the stat each hash was taken under

    def held(self, digest: str, rel: str) -> bool:
        """Whether some snapshot holds a file with this content (the one at rel in the target).
        IntegrityError when every entry that holds it names a blob that is not indexed or lies
        in a pack that is gone: replacing or removing the file would lose its last copy."""
        if self._held is None:
            self._held = {}
            for snap_id, snap in self.repo.snapshots():
                for f in snap.files:
                    self._held.setdefault(f.hash, []).append((snap_id.hex(), f))
        holders = self._held.get(digest, [])
        if not self.strict:
            return bool(holders)
        lost = ""
        for sid, entry in holders:
            lost = self._lost(sid, entry)
            if not lost:
                return True
        if holders:
            names = ", ".join(sorted({sid[:8] for sid, _ in holders}))
            raise IntegrityError(
                f"{rel}: the snapshots holding its content ({names}) lost part of it ({lost}), "
                "so this checkout would replace or remove its last copy; run `casnap verify`, "
                "then `casnap repair-index`, and commit the data dir again"
            )
        return False

    def _lost(self, sid: str, entry: FileEntry) -> str:
        """What of entry (of snapshot sid) is gone: "" when every blob it needs is indexed in a
        pack that exists. A repository that lost a pack still names it in its index and
        manifests; when the stored packs are exactly those the index names and no repair-index
        found sid incomplete, nothing can be gone and no chunk list is read."""
        from casnap.chunkindex import id_matrix
        from casnap.repair import repaired_snapshots

        index = self.repo.store.index
        if self._packs is None:
            self._packs = {key.rsplit("/", 1)[-1] for key, _ in self.repo.backend.list("packs/")}
            self._whole = self._packs == {p.hex() for p in index.packs}
            self._tainted = repaired_snapshots(self.repo)
        if self._whole and sid not in self._tainted:
            return ""
        try:
            refs = self.repo.file_refs(entry)  # its chunk-list blobs read and verified
        except IntegrityError as exc:
            return str(exc)
        rows = index.lookup(id_matrix(chunklist.ids_packed(refs)))
        if (rows < 0).any():
            return "a chunk is not in the index"
        for n in sorted(set(index.fields(rows)["pack"].tolist())):
            pack = index.packs[n].hex()
            if pack not in self._packs:
                return f"pack {pack[:12]} is gone"
        return ""

    def known(self, rel: str) -> list[Known]:
        """The fingerprints recorded for rel, with the content each vouches for."""
        if self._known is None:
            self._known = self._load()
        return self._known.get(rel, [])

    def _load(self) -> dict[str, list[Known]]:
        source = str(self.target)
        snaps = self.repo.snapshots()
        out: dict[str, list[Known]] = {}
        for snap_id, snap in snaps:
            if snap.source == source:
                try:
                    complete(snap)
                except IntegrityError as exc:
                    raise with_way_out(exc, snap_id.short, "a snapshot of this target") from exc
                for f in snap.files:
                    if f.source is not None:
                        out.setdefault(f.path, []).append((f.source, f.hash, f.kind))
        record = restored_files.load(self.repo.id, source)
        if record is not None:
            by_id = {sid.hex(): snap for sid, snap in snaps}
            paths: dict[str, dict[str, FileEntry]] = {}  # each snapshot's entries by path, once
            for path, (fp, sid) in record.files.items():
                held = by_id.get(sid)
                if held is not None and sid not in paths:
                    paths[sid] = {f.path: f for f in held.files}
                entry = paths[sid].get(path) if held is not None else None
                if entry is not None:
                    out.setdefault(path, []).append((fp, entry.hash, entry.kind))
        return out

    def hash_of(self, parent: Dir, name: str, rel: str) -> str:
        """The content hash of the file name in parent (at rel in the target): known by its
        fingerprint when one recorded for rel matches, else read and hashed."""
        now = fingerprint(parent, name, "sqlite")  # one stat of the file and its -wal serves all
        self._seen[rel] = _stamp(now)  # before the read: a later write shows
        for fp, digest, kind in self.known(rel):
            if (now if kind == "sqlite" or now is None else now[:4]) == fp:
                return digest
        return self._read_hash(parent, name)

    def hash_at(self, tree: Tree, rel: str) -> str | None:
        """hash_of the file at rel in the target; None when there is none."""
        parent, name = tree.parent_of(rel)
        if parent is None or parent.lstat(name) is None:
            return None
        return self.hash_of(parent, name, rel)

    def written_since(self, tree: Tree, rels: Iterable[str]) -> list[str]:
        """Those of rels whose file is not as hash_of, or the last call, found it (written, or
        made where there was none): a process wrote it meanwhile, so what it holds now may be
        held nowhere. Each is stamped as it is now, for the next call."""
        out = []
        missing: set[str] = set()  # folders found missing (a checkout into an empty dir: all)
        for rel in rels:
            folder = rel.rpartition("/")[0]
            parent, name = (None, "") if folder in missing else tree.parent_of(rel)
            if parent is None:
                missing.add(folder)
            now = _stamp(fingerprint(parent, name, "sqlite")) if parent is not None else None
            if now != self._seen.get(rel):
                out.append(rel)
            self._seen[rel] = now
        return out

    def _read_hash(self, parent: Dir, name: str) -> str:
        """Hash of a target file as a snapshot would record it (a database: its backup image)."""
        fd = parent.open_file(name)
        with os.fdopen(fd, "rb") as f:
            try:
                self.bytes_read += os.fstat(f.fileno()).st_size
                if is_sqlite_header(f.read(SNIFF_BYTES)):
                    check_side_files(parent.proc(name), parent.path / name)  # never hashed raw
                    with contextlib.suppress(CasnapError):  # unreadable as a database: raw bytes
                        with capture.sqlite_image(
                            parent.proc(name), self.repo.tmp_dir, self.repo.notify
                        ) as image:
                            return fsutil.hash_file(image).hex()
                f.seek(0)
                h = Hasher()
                while block := f.read(1 << 20):
                    h.update(block)
            except OSError as exc:
                raise from_oserror(exc, f"reading {parent.path / name}") from exc
        return h.digest().hex()


def fingerprint(parent: Dir, name: str, kind: str) -> tuple[int, ...] | None:
    """capture.fingerprint of name in parent, through the descriptor (no link followed)."""
    st = parent.lstat(name)
    if st is None:
        return None
    fp: tuple[int, ...] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if kind == "sqlite":
        w = parent.lstat(name + "-wal")
        fp += (w.st_size, w.st_mtime_ns, w.st_ctime_ns, w.st_ino) if w is not None else (0,) * 4
    return fp


def _stamp(fp: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """Of a "sqlite" fingerprint, the size, mtime and inode of the file and of its -wal: what a
    write changes. Not the ctimes: SQLite run as root chowns a -wal it opens, as reading a
    database's image here does."""
    return None if fp is None else fp[:2] + fp[3:6] + fp[7:]
