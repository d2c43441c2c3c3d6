"""Repository: open or create one, its config, its locks, its snapshot list and id resolution.

The core every operation works over: commit (committer.py), checkout (restorer.py), gc
(collector.py), verify, retention, stats and diff are functions taking a Repository. The core
imports none of them.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Collection, Mapping, Sequence
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from casnap import capture, chunklist, crypto, fsutil, keys, locks, placement, rollback, selection
from casnap import opening as op
from casnap.backends.base import Backend
from casnap.backends.cached import CachingBackend, cache_dir_for, opened_cache, opened_cache_dir
from casnap.backends.deferred import DeferredBackend, made_for, s3_backend, taken_over, unmade
from casnap.backends.encrypted import EncryptedBackend
from casnap.backends.retrying import RetryingBackend
from casnap.config import encode_config, new_config, now_iso, parse_config
from casnap.constants import ENCRYPTIONS
from casnap.errors import CasnapError, IntegrityError, InvalidArgument, NotARepository
from casnap.heads import Damage, read_heads_checked, stopping, way_out
from casnap.ids import PLAIN_IDS, IdHasher, ObjectId, is_hex_prefix
from casnap.keys import PasswordSource, Unlocked
from casnap.listcache import ListCache, list_blobs
from casnap.locations import (
    S3Url,
    as_location,
    init_folder,
    keys_taken_back,
    local_backend,
    make_scratch,
    require_config,
)
from casnap.manifest import FileEntry, Snapshot, chronological, complete, read_manifest
from casnap.phases import opening
from casnap.signals import uninterrupted
from casnap.spans import ListsAhead

if TYPE_CHECKING:  # the store (numpy) is made on first use
    from casnap.store import Store


class Repository:
    """A casnap repository on a backend."""

    def __init__(
        self,
        backend: Backend,
        config: dict[str, Any],
        tmp_dir: Path | None,
        root: Path | None = None,
        unlocked: Unlocked | None = None,
    ) -> None:
        # an encrypted repository: backend seals every object, raw_backend is what lies below
        self.raw_backend = backend
        self.unlocked = unlocked
        sealer = None if unlocked is None else crypto.Sealer(unlocked.master.encryption_key)
        self.ids: IdHasher = PLAIN_IDS if unlocked is None else IdHasher(unlocked.master.id_key)
        self.backend = backend if sealer is None else EncryptedBackend(backend, sealer)
        self.lists = ListCache.of(self.raw_backend, sealer)  # chunk lists kept on this host
        self.listed = locks.Listed(self.backend)  # folders listed with the lock held (lock)
        self.root = root  # the repository's directory, for a local repository
        self.config = config
        self.tmp_dir = tmp_dir or fsutil.system_tmp()  # database images, verify --smoke restores
        self._ahead = ListsAhead()  # chunk lists read ahead from a remote backend
        self._sizes: dict[str, int] | None = None  # manifest sizes, from the last listing
        self.kept_config: CachingBackend | None = None  # set when the config came from the cache
        # told of waits (a locked database or lock), warn of locks left or found stale; or None
        self.notify: Callable[[str], None] | None = None
        self.warn: Callable[[str], None] | None = None
        self.created: rollback.NewRepository | None = None  # set by open_or_init when it made it
        # reading a repository that cannot be written: shared locks are skipped with no_lock, or
        # when on_unwritable is set and a lock cannot be written (it is told why, in one line)
        self.no_lock = False
        self.on_unwritable: Callable[[str], None] | None = None
        self._snapshots: dict[ObjectId, Snapshot] | None = None
        # manifests whose head does not read: they stop a listing, or unless skip_damaged
        self.damaged: dict[ObjectId, Damage] = {}
        self.skip_damaged = False
        self._index_loaded = False
        self.opened_at: float | None = None  # perf_counter() when opening began (phases.py)

    # -- opening -------------------------------------------------------------------------------

    @cached_property
    def store(self) -> Store:
        """The chunk store, made on first use: a command reading no chunk (log) skips numpy."""
        from casnap.store import Store

        return Store(self.backend, int(self.config["pack_target"]), self.ids)

    @property
    def encrypted(self) -> bool:
        return self.unlocked is not None

    @classmethod
    def init(
        cls,
        location: Path | str | S3Url,
        config: dict[str, Any] | None = None,
        password: PasswordSource | None = None,
    ) -> Repository:
        """Create a repository in an empty or missing directory, or under an S3 URL's prefix
        holding nothing (the bucket is created when missing); encrypted (repokey) when a
        password is given."""
        where = as_location(location)
        if isinstance(where, S3Url):
            return cls._on_s3(where, password, create=True, config=config)
        root = where  # resolved: a symbolic link to the repository is followed once
        if (root / "config").exists():
            raise NotARepository(f"{root} already holds a casnap repository")
        if root.exists() and not root.is_dir():
            raise NotARepository(f"{root} is not a directory")
        finish = init_folder(root)  # may take over what an init killed before its config left
        with fsutil.new_folder(root), keys_taken_back(root):  # both go, when the init fails
            # _local_backend makes an existing empty root private too
            tmp = root / "tmp" if password is None else fsutil.private_scratch()
            repo = cls.init_backend(local_backend(root), config, tmp, root=root, password=password)
            finish()  # the config is in: that init's key files go
            make_scratch(repo.tmp_dir, root / "config" if password is None else None)
        return repo

    @classmethod
    @opening
    def init_backend(
        cls,
        backend: Backend,
        config: dict[str, Any] | None = None,
        tmp_dir: Path | None = None,
        root: Path | None = None,
        password: PasswordSource | None = None,
    ) -> Repository:
        """Create a repository on any backend; with a password, encrypted (repokey): key file, then
        config, one step a SIGTERM or Ctrl-C waits for (a key file alone is an init half done)."""
        cfg = new_config(config)  # checked: never a repository that no open would take
        if password is None:
            if not backend.put("config", encode_config(cfg)):
                raise NotARepository(f"{backend.location} already holds a casnap repository")
            return cls(backend, cfg, tmp_dir, root)
        if backend.exists("config"):
            raise NotARepository(f"{backend.location} already holds a casnap repository")
        master = crypto.MasterKey.generate()
        keyfile = keys.make_key_file(master, keys.read_password(password), now_iso())
        with uninterrupted():
            backend.put(keyfile.key, keyfile.encode())
            repo = cls(backend, cfg, tmp_dir, root, Unlocked(keyfile, master))
            try:
                written = repo.backend.put("config", encode_config(cfg))
            except BaseException:  # a full disk: alone, the key file reads as an init under way
                with contextlib.suppress(CasnapError, OSError):
                    backend.delete(keyfile.key)
                raise
            if not written:
                backend.delete(keyfile.key)
                raise NotARepository(f"{backend.location} already holds a casnap repository")
        return repo

    @classmethod
    def open(
        cls,
        location: Path | str | S3Url,
        password: PasswordSource | None = None,
        cache: bool = True,
    ) -> Repository:
        """Open the repository in a folder or at an S3 URL (a password asked only if encrypted)."""
        where = as_location(location)
        if isinstance(where, S3Url):
            return cls._on_s3(where, password, cache=cache)
        root = where  # resolved: a symbolic link to the repository is followed once
        require_config(root)
        return cls.open_backend(local_backend(root), root / "tmp", root=root, password=password)

    @classmethod
    @opening
    def _on_s3(
        cls,
        url: S3Url,
        password: PasswordSource | None,
        create: bool = False,
        config: dict[str, Any] | None = None,
        cache: bool = True,
    ) -> Repository:
        """Open (or with create, make) the repository at an S3 URL, scratch space private; transient
        failures retried; metadata cached unless cache is False (verify reads the bucket). With
        its config kept here, the client is made while the key is derived (deferred.py)."""
        # the password asked for (or missing) before anything is made, a refused prefix first
        ask = partial(keys.read_password, password) if create and password is not None else None
        kept = cache and not create and fsutil.is_cached(opened_cache_dir(url.url) / "config")
        made = partial(s3_backend, url, create, check=not kept, first=ask)
        backend: Backend = RetryingBackend(DeferredBackend(url.url, made) if kept else made())
        try:
            if create:  # what was cached of an earlier repository at url is not this one's
                shutil.rmtree(opened_cache_dir(url.url), ignore_errors=True)
                repo = cls.init_backend(backend, config, fsutil.private_scratch(), None, password)
                return taken_over(backend, repo)  # a killed init's key files it took over
            scratch = fsutil.private_scratch()
            return made_for(backend, cls.open_backend(backend, scratch, None, password, cache))
        except BaseException as exc:
            backend.close()
            raise unmade(backend) or exc  # noqa: B904 - a client that cannot be made comes first

    @classmethod
    @opening
    def open_backend(
        cls,
        backend: Backend,
        tmp_dir: Path | None = None,
        root: Path | None = None,
        password: PasswordSource | None = None,
        cache: bool = False,
    ) -> Repository:
        """Open a repository on any backend; its config is checked first (config.py). An
        encrypted one is opened with the first key file the password opens (PasswordError when
        none does, or when it has no password); a plain config beside key files is tampering.

        With cache, index files, manifests and pack directories are kept in the user's cache
        dir (backends/cached.py), for a backend where each request costs: sealed, below the
        encryption; so are the config and the key file that opened it (opening.py)."""
        kept = opened_cache(backend) if cache else None
        plain, opened, from_kept = op.read_config(backend, password, kept)
        cfg = parse_config(plain, backend.location)
        if cache:  # below the EncryptedBackend Repository puts on top: it keeps sealed bytes
            backend = CachingBackend(backend, cache_dir_for(str(cfg["id"])))
        if opened is not None and root is not None and tmp_dir == root / "tmp":
            tmp_dir = fsutil.private_scratch()  # no plaintext scratch file inside the repository
        repo = cls(backend, cfg, tmp_dir, root, Unlocked(*opened) if opened else None)
        repo.kept_config = kept if from_kept else None
        return repo

    @classmethod
    def open_or_init(
        cls,
        location: Path | str | S3Url,
        data_dir: Path | str | None = None,
        password: PasswordSource | None = None,
        encryption: str = "none",
    ) -> Repository:
        """Open the repository, creating it when the directory (or the S3 prefix) is missing or
        empty (`created` then says so, for a failed first commit to take it back); a new one is
        encrypted when encryption is "repokey" (with password). With data_dir, a missing data
        dir is reported first, so a failing first commit creates no repository."""
        if encryption not in ENCRYPTIONS:
            raise InvalidArgument(f"unknown encryption {encryption!r} (want none or repokey)")
        if encryption == "repokey" and password is None:
            raise InvalidArgument("repokey encryption needs a password")
        if data_dir is not None:
            capture.require_data_dir(Path(data_dir))
        where = as_location(location)
        key = password if encryption == "repokey" else None  # what the new one is made with
        if isinstance(where, S3Url):

            def make_s3() -> Repository:  # an init under way there is waited for (opening.py)
                init = partial(cls._on_s3, where, create=True)  # given the password read
                return rollback.made_for_commit(init, key, rollback.NewRepository(None, False))

            # a cached config is confirmed by the first listing (snapshots): RepositoryGone
            return op.open_or_make_remote(partial(cls._on_s3, where, password), make_s3)
        root = where  # resolved (as_location)

        def make() -> Repository:  # another process's init is waited for (opening.py)
            made = fsutil.missing(root)  # root and the folders above it init makes
            found = frozenset(p.name for p in root.iterdir()) if not made else frozenset()
            created = rollback.NewRepository(root, bool(made), found, tuple(made[1:]))
            return rollback.made_for_commit(lambda pw: cls.init(root, password=pw), key, created)

        return op.open_or_make(root, make, partial(cls.open, root, password))

    @property
    def id(self) -> str:
        """The repository's random id (from its config)."""
        return str(self.config["id"])

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state ---------------------------------------------------------------------------------

    def lock(
        self, operation: str, dry_run: bool = False, folder: Path | None = None
    ) -> contextlib.AbstractContextManager[locks.Held | None]:
        """The lock an operation needs (locks.MODES; shared for a dry run; none for a read-only one
        with no_lock) for a block; folder: what a commit reads or a checkout writes (clashes)."""
        exclusive = locks.exclusive(operation) and not dry_run
        if self.no_lock and operation in locks.READ_ONLY_OPERATIONS:
            return contextlib.nullcontext()
        held = locks.locked(
            self.backend,
            operation + (" --dry-run" if dry_run else ""),
            exclusive,
            unwritable=self.on_unwritable,
            notify=self.notify,
            listed=self.listed,
            folder=None if folder is None else str(fsutil.resolved(folder, "folder")),
            warn=self.warn,
        )
        return op.entered_or_gone(held, self.kept_config)  # its bucket deleted since it was kept

    def ensure_index(self, skip_damaged: bool = False) -> None:
        """Load the index files once (refresh drops them); skip_damaged: see Store.load_index."""
        if not self._index_loaded:
            self.store.load_index(skip_damaged)
            self._index_loaded = True

    def refresh(self, *, only_if_changed: bool = False) -> None:
        """Drop the cached snapshot list and index so they are read again from the backend.

        With only_if_changed, drop each only when another process changed it (an index file or a
        snapshot added or removed, as gc and prune do): a long-lived Repository then never trusts
        an index entry whose pack gc has deleted. Call it while holding a lock.
        """
        if not only_if_changed:
            self._index_loaded = False
            self._snapshots = None
            return
        if self._index_loaded:
            present = {k for k, _ in self.backend.list("index/")}
            if present != set(self.store.index_files):
                self._index_loaded = False
        if self._snapshots is not None:
            names = (k.rsplit("/", 1)[-1] for k, _ in self.listed("snapshots/"))
            present = {n for n in names if len(n) == 64 and is_hex_prefix(n)}
            if present != {sid.hex() for sid in [*self._snapshots, *self.damaged]}:
                self._snapshots = None

    def clean_scratch(self) -> None:
        """Remove what a killed casnap left in tmp/: database images, verify --smoke restores."""
        fsutil.remove_stale(self.tmp_dir, recursive=False)
        fsutil.remove_stale_stages(self.tmp_dir)

    def folder_ids(self) -> frozenset[tuple[int, int]]:
        """(device, inode) of the repository's folders (placement.py)."""
        return placement.folder_ids(self.root)

    def holds_path(self, path: Path) -> bool:
        """True when path is one of the repository's folders or lies below one."""
        return placement.holds_path(self.root, path)

    def nested_in(self, data_dir: Path) -> list[Path]:
        """The repository, when it lies inside data_dir (SourceError when the reverse holds)."""
        return placement.nested_in(self.root, data_dir)

    # -- snapshots -----------------------------------------------------------------------------

    def remember_snapshot(self, sid: ObjectId, snap: Snapshot) -> None:
        """A snapshot this process just stored joins the cached list (damaged no more: a copy)."""
        self.damaged.pop(sid, None)
        if self._snapshots is not None:
            self._snapshots[sid] = snap
        self.listed.forget("snapshots/")  # no longer what the folder holds

    def remove_snapshot(self, sid: ObjectId) -> None:
        """Delete one snapshot manifest; its data stays until gc. Hold the exclusive lock."""
        self.backend.delete(f"snapshots/{sid.hex()}")
        self.damaged.pop(sid, None)
        if self._snapshots is not None:
            self._snapshots.pop(sid, None)

    def load_snapshot(self, sid: ObjectId, files: bool = True) -> Snapshot:
        """Read, verify and parse one manifest (without files: its file list when first used)."""
        key = f"snapshots/{sid.hex()}"
        snap = read_manifest(lambda: self.backend.get(key), self.ids, sid, key, lazy=not files)
        return self._ahead.noted(snap)

    def snapshot(self, sid: ObjectId) -> Snapshot:
        """One snapshot: from the list when loaded (a big manifest is parsed once), else read."""
        return (self._snapshots or {}).get(sid) or self.load_snapshot(sid)

    def snapshots(
        self, files: bool = False, but: Collection[ObjectId] = (), skip_damaged: bool = False
    ) -> list[tuple[ObjectId, Snapshot]]:
        """Every snapshot, oldest first; with files, every file list read too but those of `but`
        (gc, prune, forget). A manifest that does not read (heads.py) stops the listing unless
        it is in `but`, or skip_damaged (or the repository's) and not files: then it is left
        out, and kept in `damaged` (the command warns of it once it is done)."""
        if self._snapshots is None:
            with op.gone_when_missing(self.kept_config):  # its bucket deleted since it was kept
                self._sizes = dict(self.listed("snapshots/"))
            load = partial(self.load_snapshot, files=False)  # a file list is decoded when used
            self._snapshots, self.damaged = read_heads_checked(
                self.raw_backend, self.kept_config, self._sizes, load, files, self.backend.location
            )
        stops = stopping(self.damaged, but)
        if stops and (files or not (skip_damaged or self.skip_damaged)):
            exc, where = self.damaged[stops[0]]
            out = way_out(self.damaged)  # a forget of one alone stops at the others
            raise op.listing_stopped(exc, self.raw_backend, self.kept_config, where, out) from exc
        listed = chronological(self._snapshots.items())
        for sid, snap in [(s, n) for s, n in listed if s not in but] if files else ():
            try:
                complete(snap)
            except IntegrityError as exc:
                where = f"{self.backend.location}/snapshots/{sid.hex()}"
                raise op.listing_stopped(exc, self.raw_backend, self.kept_config, where) from exc
        return listed

    def manifest_sizes(self) -> dict[str, int]:
        """Stored size of every manifest, by snapshot id (hex)."""
        sizes = self._sizes if self._sizes is not None else self.backend.list("snapshots/")
        return {k.rsplit("/", 1)[-1]: s for k, s in dict(sizes).items()}

    def resolve(
        self, ref: str, paths: Sequence[str] | None = None, tags: Sequence[str] = ()
    ) -> ObjectId:
        """A full id, a unique prefix of >= 4 hex digits, `latest`, or a tag (its newest); with
        paths (data-dir relative, normalised) or tags (`a,b`: both), only among the snapshots
        committed with those paths and carrying those tags (see selection.py)."""
        flt = selection.SnapshotFilter(
            None if paths is None else tuple(paths), selection.parse_tags(tags)
        )
        return selection.resolve(self.snapshots(), ref, flt, self.damaged).id

    # -- chunk lists ---------------------------------------------------------------------------

    def chunk_refs(self, entry: FileEntry) -> list[tuple[ObjectId, int]]:
        """The (chunk id, length) list of a file entry, read from its TREE blobs."""
        return chunklist.unpack_refs(self.file_refs(entry))

    def file_refs(self, entry: FileEntry) -> bytes:
        """A file entry's chunk list as packed refs (see chunklist.py), verified."""
        return self.resolve_lists(entry)[0]

    def resolve_lists(self, entry: FileEntry) -> tuple[bytes, int, int]:
        """Packed refs of an entry, the number of deltas in its list chain and their bytes. On a
        remote backend the lists of the files after it in its snapshot are read with it."""
        self.ensure_index()
        read: Mapping[ObjectId, bytes] = {}
        if self.backend.remote:
            newest = [s for _, s in self.snapshots(skip_damaged=True)] if self._snapshots else []
            read = self._ahead.bodies(self.store, entry, newest, self.lists)
        bodies = list_blobs(self.store, self.lists, entry.lists, read, entry.path)
        refs, deltas = chunklist.resolve(bodies, f"chunk list of {entry.path}")
        if chunklist.ref_count(refs) != entry.chunks:
            raise IntegrityError(f"chunk list of {entry.path} does not hold {entry.chunks} chunks")
        chunklist.check_size(refs, entry.size, entry.path)
        delta_bytes = sum(len(b) for b in bodies if chunklist.is_delta(b))
        return refs, deltas, delta_bytes
