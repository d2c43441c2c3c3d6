"""What an S3 prefix holds, for opening or making a repository there: a config (a repository),
nothing (a new one may be made), the key file alone an encrypted init killed before its config
left (taken over once old, as in a local folder: locations.stale_init), or anything else
(refused)."""

from __future__ import annotations

from casnap.backends.retrying import RetryingBackend
from casnap.backends.s3 import S3Backend
from casnap.errors import InitUnderWay, NotARepository, RepositoryNotFound
from casnap.locations import S3Url, is_key_name, nested_message, under_way_message


def repository_backend(url: S3Url, create: bool, check: bool = True) -> S3Backend:
    """The backend of the repository at url: one holding a config (RepositoryNotFound when the
    bucket or the prefix holds nothing, or only an old key file; NotARepository when it holds
    something else); with create, one for a new repository: the bucket made when missing, the
    prefix holding nothing, or only the old key files of a killed init (`leftover`: removed
    once the new config is in, deferred.taken_over); NotARepository otherwise. A key file
    alone younger than INIT_WAIT_SECONDS is InitUnderWay (init_leftover). Without check (a
    config of url is cached), no request is made. Each request is retried as the repository's
    are (backends/retrying.py): on a host that keeps nothing of url they are its first."""
    backend = S3Backend(url)
    if not check and not create:
        return backend
    retried = RetryingBackend(backend).call  # these requests may be a command's first
    try:
        if create:
            retried(backend.ensure_bucket)
        if retried(lambda: backend.exists("config")):
            if create:
                raise NotARepository(f"{url} already holds a casnap repository")
            return backend
        backend.leftover = leftover = retried(lambda: init_leftover(backend))
        if leftover is None:
            what = "is not empty and not a casnap repository; not touching it"
            raise NotARepository(f"{url} {what if create else 'is not a casnap repository'}")
        if not create:
            what = ", which takes over the key file of an init stopped before its config"
            raise RepositoryNotFound(
                f"no casnap repository at {url} (run `casnap init`{what if leftover else ''})"
            )
        outer = retried(backend.enclosing_repository)
        if outer is not None:
            raise NotARepository(nested_message(url, outer))
        return backend
    except BaseException:
        backend.close()
        raise


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
