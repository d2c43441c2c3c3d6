"""What an S3 prefix holds, for opening or making a repository there: a config (a repository),
nothing (a new one may be made), the key file alone an encrypted init killed before its config
left (taken over once old, as in a local folder: locations.stale_init), or anything else
(refused)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from casnap.backends.retrying import RetryingBackend
from casnap.backends.s3 import S3Backend
from casnap.errors import CasnapError, InitUnderWay, NotARepository, RepositoryNotFound
from casnap.locations import S3Url, is_key_name, nested_message, under_way_message

HOLDS_ONE = "already holds a casnap repository"
NOT_OURS = "is not empty and not a casnap repository; not touching it"
T = TypeVar("T")


class _Caller(Protocol):
    """How a request is made: retried (RetryingBackend.call), or once (_once)."""

    def __call__(self, fn: Callable[[], T]) -> T: ...


def _once(fn: Callable[[], T]) -> T:
    return fn()


def repository_backend(
    url: S3Url, create: bool, check: bool = True, first: Callable[[], object] | None = None
) -> S3Backend:
    """The backend of the repository at url: one holding a config (RepositoryNotFound when the
    bucket or the prefix holds nothing, or only an old key file; NotARepository when it holds
    something else); with create, one for a new repository: the bucket made when missing, the
    prefix holding nothing, or only the old key files of a killed init (`leftover`: removed
    once the new config is in, deferred.taken_over); NotARepository otherwise. A key file
    alone younger than INIT_WAIT_SECONDS is InitUnderWay (init_leftover). Without check (a
    config of url is cached), no request is made. Each request is retried as the repository's
    are (backends/retrying.py): on a host that keeps nothing of url they are its first. With
    create, first (asking for a password) is called before anything is made, once a prefix
    refused whatever it answers has been said (refuse_early)."""
    backend = S3Backend(url)
    if not check and not create:
        return backend
    retried = RetryingBackend(backend).call  # these requests may be a command's first
    try:
        if create:
            if first is not None:
                refuse_early(backend)
                first()
            retried(backend.ensure_bucket)
            backend.leftover = _new_prefix(backend, retried)
            return backend
        if retried(lambda: backend.exists("config")):
            return backend
        leftover = retried(lambda: init_leftover(backend))
        if leftover is None:
            raise NotARepository(f"{url} is not a casnap repository")
        what = ", which takes over the key file of an init stopped before its config"
        raise RepositoryNotFound(
            f"no casnap repository at {url} (run `casnap init`{what if leftover else ''})"
        )
    except BaseException:
        backend.close()
        raise


def refuse_early(backend: S3Backend) -> None:
    """NotARepository (InitUnderWay) when no repository can be made at the backend's prefix
    whatever the password: one is there, or above it, or other objects; said before the
    password is asked for, which the refusal would waste (asked twice on a terminal, or a
    missing one said instead). One attempt a request and nothing made: a bucket that does not
    exist, or a request that fails, leaves the checks to the init itself."""
    try:
        _new_prefix(backend, _once)
    except (NotARepository, InitUnderWay):
        raise
    except CasnapError:
        return


def _new_prefix(backend: S3Backend, call: _Caller) -> list[str]:
    """The old key files of a killed init that a new repository at the backend's prefix takes
    over (init_leftover); NotARepository when one is there, other objects are, or a repository
    above it holds its prefix. Each request made through call (retried, or once)."""
    url = backend.url
    if call(lambda: backend.exists("config")):
        raise NotARepository(f"{url} {HOLDS_ONE}")
    leftover = call(lambda: init_leftover(backend))
    if leftover is None:
        raise NotARepository(f"{url} {NOT_OURS}")
    outer = call(backend.enclosing_repository)
    if outer is not None:
        raise NotARepository(nested_message(url, outer))
    return leftover


def init_leftover(backend: S3Backend) -> list[str] | None:
    """What a prefix without a config holds, for an init: [] for nothing; the key files an
    encrypted init killed between its key file and its config left (keys/<id>), when it holds
    only those and each is older than INIT_WAIT_SECONDS (an init writes its config right after
    its key file; locations.stale_init for a folder); None when it holds anything else, such as
    another object under keys/. InitUnderWay when a key file is younger: its init may be about
    to write the config."""
    from casnap import constants  # read when called: tests shorten the wait

    found: list[str] = []
    young = False
    for key, age in backend.list_aged(""):
        if not key.startswith("keys/") or not is_key_name(key.removeprefix("keys/")):
            return None  # not a key file a casnap init writes (a user's own keys/ folder)
        found.append(key)
        young = young or age < constants.INIT_WAIT_SECONDS
    if young:
        raise InitUnderWay(under_way_message(backend.url))
    return found
