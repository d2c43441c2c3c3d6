"""Opening a repository: its config read, its key file found, and both kept for the next open.

On object storage each request is a round trip, and every command opens the repository: a
config, a listing of keys/ and a key file before any work. The config and the key file an open
used are kept in the user's cache dir by location (backends/cached.py, `opened_cache`; checked
on every read like every cache file), so the next open at that location makes no request. The
cached config is the one this host opened before; should the repository at that location have
been made anew (another config, another master key), the first sign is a snapshot listing that
is empty or a manifest that does not open (or is encrypted under a kept plain config): `confirm`
then reads the stored config, and when it differs drops the cached copies and says so. A kept
config that does not open (no password, or none that opens it: made anew plain or with another
password) has `read_config` read the stored one before anything is done: when it differs the
cached copies are dropped and the stored one is opened. Should
its bucket have been deleted, the first request (the lock, the listing) finds it missing:
`gone_when_missing` drops them too.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TypeVar

from casnap import constants, keys
from casnap.backends.base import Backend, Wrapper
from casnap.backends.cached import CachingBackend, opened_cache
from casnap.constants import INIT_POLL_REMOTE_SECONDS, INIT_POLL_SECONDS, INIT_WAIT_SECONDS
from casnap.crypto import MasterKey
from casnap.errors import (
    CasnapError,
    InitUnderWay,
    IntegrityError,
    NotARepository,
    ObjectMissing,
    PasswordError,
    RepositoryGone,
    RepositoryNotFound,
    UnsupportedFormat,
)
from casnap.keys import KEYS, KeyFile, PasswordSource
from casnap.locations import clear_killed_init, init_under_way, is_placeholder_dir, stale_init

R = TypeVar("R")

# whether the store at a location honours a conditional delete (b"yes" / b"no"), kept with its
# config so that each process does not ask it again
DELETES = "store/conditional-deletes"


def read_config(
    backend: Backend, password: PasswordSource | None, kept: CachingBackend | None
) -> tuple[bytes, tuple[KeyFile, MasterKey] | None, bool]:
    """(plain config, the key file that opened it with its master key, whether the config came
    from kept). With kept, the config and key files an earlier open kept there are tried first,
    and what this open used is kept."""
    raw = kept.kept("config") if kept is not None else None
    if raw is not None and kept is not None:
        try:
            return _open_config(backend, password, kept, raw, trusted=True)
        except (PasswordError, IntegrityError) as exc:
            # a password missing or opening nothing, a config no key file opens: of the kept
            # config, which may be of a repository deleted and made anew at this location
            # (plain, or with another password); read the stored one, as a host keeping
            # nothing would, when it differs
            try:
                stored = _stored_config(backend)
            except CasnapError:  # the store cannot say: the error stands as it was
                raise exc from None
            if stored == raw:
                raise
            kept.forget()
            if stored is None:
                raise RepositoryGone(f"no casnap repository at {backend.location}") from None
            raw = stored
    if raw is None:
        try:
            raw = backend.get("config")
        except IntegrityError as exc:
            raise RepositoryNotFound(f"no casnap repository at {backend.location}") from exc
    return _open_config(backend, password, kept, raw, trusted=False)


def _stored_config(backend: Backend) -> bytes | None:
    """The stored config's bytes, None when there is none (or it does not read)."""
    try:
        return backend.get("config")
    except (ObjectMissing, IntegrityError):
        return None


def _open_config(
    backend: Backend,
    password: PasswordSource | None,
    kept: CachingBackend | None,
    raw: bytes,
    trusted: bool,
) -> tuple[bytes, tuple[KeyFile, MasterKey] | None, bool]:
    """read_config of raw, the kept config (trusted) or the stored one."""
    files: list[KeyFile] = []
    for key in sorted(kept.kept_keys(KEYS)) if kept is not None and trusted else ():
        blob = kept.kept(key) if kept is not None else None
        with contextlib.suppress(IntegrityError, UnsupportedFormat):
            if blob is not None:
                files.append(keys.parse_key_file(key.removeprefix(KEYS), blob, key))

    def stale(kf: KeyFile) -> None:  # a kept key file of another repository: tried no more
        if kept is not None:
            kept.drop(kf.key)

    plain, opened = keys.open_config(
        backend, raw, password, trusted=trusted, kept=files, stale=stale
    )
    if kept is not None:
        remember_deletes(backend, kept)
        if not trusted:
            kept.keep("config", raw)
        if opened is not None and opened[0].id not in {f.id for f in files}:
            kept.keep(opened[0].key, opened[0].encode())
    return plain, opened, trusted


def confirm(backend: Backend, kept: CachingBackend) -> None:
    """Check that the config kept from an earlier open is still the stored one: RepositoryGone
    when none is stored, NotARepository (the kept copies dropped) when it differs."""
    try:
        stored = backend.get("config")
    except (ObjectMissing, IntegrityError) as exc:
        kept.forget()
        raise RepositoryGone(f"no casnap repository at {backend.location}") from exc
    if stored != kept.kept("config"):
        kept.forget()
        raise NotARepository(
            f"the repository at {backend.location} is not the one this host opened there before "
            "(made anew?): its cached config was dropped; run the command again"
        )


@contextlib.contextmanager
def gone_when_missing(kept: CachingBackend | None) -> Iterator[None]:
    """The block's RepositoryNotFound (a bucket missing) as RepositoryGone, the kept copies
    dropped, when the config came from the cache (kept): the repository this host opened
    there is gone, and commit and copy make it anew, once, as on a host that kept nothing."""
    try:
        yield
    except RepositoryGone:
        raise
    except RepositoryNotFound as exc:
        if kept is None:
            raise
        kept.forget()
        raise RepositoryGone(str(exc), exc.why) from exc


@contextlib.contextmanager
def entered_or_gone(held: AbstractContextManager[R], kept: CachingBackend | None) -> Iterator[R]:
    """held (a lock) for the block, its entry (the first request of most commands) under
    gone_when_missing; what the block raises passes as it is."""
    with contextlib.ExitStack() as stack:
        with gone_when_missing(kept):
            entered = stack.enter_context(held)
        yield entered


def listing_stopped(
    exc: IntegrityError,
    backend: Backend,
    kept: CachingBackend | None,
    location: str,
    way_out: str | None = None,
) -> IntegrityError:
    """The error a listing of snapshots stops with at the manifest at location that does not
    open (after confirm, when the config came from the cache: a repository made anew is then
    the likelier cause). forget takes such a snapshot by its id (heads.py, retention.forget);
    way_out, the forget that removes every damaged one, when several are."""
    if kept is not None:
        confirm(backend, kept)
    short = location.rsplit("/", 1)[-1][:8]
    out = way_out or f"`casnap forget {short}` removes that snapshot"
    return type(exc)(
        f"{exc} (gc, prune and forget stop here, so that gc never takes it for a forgotten "
        f"one: {out}; `casnap verify` lists the files it held)"
    )


def with_way_out(exc: IntegrityError, short: str, what: str) -> IntegrityError:
    """exc, of the file list of snapshot short (what it is to the command) that does not read,
    saying the way out: forget takes a snapshot whose head reads."""
    return type(exc)(
        f"{exc} ({what}: `casnap forget {short}` removes that snapshot, `casnap verify` lists "
        "the files it held)"
    )


def forget_key_file(backend: Backend, key: str) -> None:
    """Remove the key file key from backend and from the copies kept for the next open at its
    location, so a password whose key was removed or replaced opens nothing here any more."""
    backend.delete(key)
    opened_cache(backend).drop(key)


def remember_deletes(backend: Backend, kept: CachingBackend) -> None:
    """On S3, tell the backend what an earlier process learnt of its store's conditional
    deletes, and keep what it learns (S3Backend.remove: a lock released in one request)."""
    s3 = backend
    while isinstance(s3, Wrapper):
        s3 = s3.inner
    module = sys.modules.get("casnap.backends.s3")  # not imported: no S3 backend exists
    if module is None or not isinstance(s3, module.S3Backend):
        return
    known = kept.kept(DELETES)
    if known in (b"yes", b"no"):
        s3.conditional_deletes = known == b"yes"
    s3.learnt = lambda honours: kept.keep(DELETES, b"yes" if honours else b"no")


def open_or_make(root: Path, make: Callable[[], R], open_: Callable[[], R]) -> R:
    """The repository in a local folder: made (make) when the folder is missing or empty, else
    opened (open_). A folder another process is making (locations.init_under_way) is waited for,
    at most INIT_WAIT_SECONDS, and so is the config of an init that made finds got there first:
    racing first commits all open the one repository whose config landed (put-if-absent)."""
    deadline = time.monotonic() + INIT_WAIT_SECONDS
    while True:
        clear_killed_init(root)  # the temp file of an init killed before its config
        if not (root / "config").exists() and (
            is_placeholder_dir(root) or stale_init(root) is not None
        ):
            try:
                return make()
            except NotARepository:  # another init's config or files landed meanwhile
                if not init_under_way(root) or time.monotonic() > deadline:
                    raise
        elif not init_under_way(root) or (root / "config").exists():
            return open_()
        elif time.monotonic() > deadline:
            return open_()  # what a killed init left: refused as before
        time.sleep(INIT_POLL_SECONDS)


def open_or_make_remote(open_: Callable[[], R], make: Callable[[], R]) -> R:
    """The repository at an S3 URL: opened (open_), else made (make) when the prefix holds
    nothing, or only the old key file of a killed init (s3prefix.py). A key file written in the
    last INIT_WAIT_SECONDS (InitUnderWay: an init may be about to write its config) is waited
    for, as open_or_make waits for a folder: until the config lands or the key file is old
    enough to take over, at most INIT_WAIT_SECONDS and the second S3's times are rounded to."""
    deadline = time.monotonic() + constants.INIT_WAIT_SECONDS + 1
    while True:
        try:
            try:
                return open_()
            except RepositoryNotFound:
                return make()
        except InitUnderWay:
            if time.monotonic() > deadline:
                raise
        time.sleep(INIT_POLL_REMOTE_SECONDS)
