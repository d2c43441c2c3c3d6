"""Where a repository lives: a local directory or an S3 URL (`s3://BUCKET/PREFIX`); the backend
of a local one.

One parser for the URL, used by the CLI and by Repository: the bucket must follow S3's naming
rules (3-63 characters of lowercase letters, digits, `.` and `-`, starting and ending with a
letter or digit, not an IP address, no `..`), and the prefix is a relative path of non-empty
components, none `.` or `..` (one trailing `/` is dropped: `s3://b/x/` is `s3://b/x`). Any other
scheme is refused.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from casnap.errors import (
    InitUnderWay,
    InvalidArgument,
    NotARepository,
    RepositoryError,
    RepositoryNotFound,
    from_oserror,
)

if TYPE_CHECKING:
    from casnap.backends.base import Backend

S3_SCHEME = "s3://"
# a URL scheme (RFC 3986) followed by `//`: `s3://bucket/x`, `sftp://host/dir`, `file://...`
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
PLACEHOLDER_NAMES = frozenset({"README.md", ".gitkeep"})
CONFIG_HEAD = 64 << 10  # bytes of a config read to tell it is casnap's


class S3Url(NamedTuple):
    """A repository in an S3 bucket, its objects under prefix ("" for the bucket's root)."""

    bucket: str
    prefix: str = ""

    @property
    def url(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def __str__(self) -> str:
        return self.url


Location = Path | S3Url


def _check_bucket(bucket: str, text: str) -> None:
    why = None
    if not _BUCKET.match(bucket):
        why = (
            "a bucket name is 3-63 lowercase letters, digits, '.' or '-', starting and ending "
            "with a letter or digit"
        )
    elif ".." in bucket or ".-" in bucket or "-." in bucket:
        why = "a bucket name has no '..', '.-' or '-.'"
    elif _IPV4.match(bucket):
        why = "a bucket name is not an IP address"
    if why:
        raise InvalidArgument(f"repository {text!r}: invalid bucket {bucket!r} ({why})")


def parse_s3_url(text: str) -> S3Url:
    """The bucket and prefix of `s3://BUCKET[/PREFIX]`; InvalidArgument naming the fault."""
    if not text.startswith(S3_SCHEME):
        raise InvalidArgument(f"repository {text!r} is not an s3:// URL")
    rest = text[len(S3_SCHEME) :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise InvalidArgument(f"repository {text!r} names no bucket (want s3://BUCKET/PREFIX)")
    _check_bucket(bucket, text)
    if prefix.endswith("/"):
        prefix = prefix[:-1]
    if prefix and any(p in ("", ".", "..") for p in prefix.split("/")):
        raise InvalidArgument(
            f"repository {text!r}: the prefix must be a path of non-empty components, none "
            "'.' or '..' (no leading or doubled '/'; one trailing '/' is dropped)"
        )
    if any(ord(ch) < 32 or ch in "\\\x7f" for ch in prefix):
        raise InvalidArgument(f"repository {text!r}: the prefix holds a control character or '\\'")
    return S3Url(bucket, prefix)


def parse_location(text: str) -> Location:
    """A repository location given by a user: an S3Url for `s3://...`, else a local Path. Other
    URL schemes are refused, checked on the raw text before any path conversion collapses `//`."""
    if text.startswith(S3_SCHEME):
        return parse_s3_url(text)
    if _URL.match(text):
        scheme = text.split(":", 1)[0]
        raise InvalidArgument(
            f"repository {text!r}: {scheme}:// repositories are not supported; give a local "
            "directory or an s3://BUCKET/PREFIX URL"
        )
    if not text:
        raise InvalidArgument("the repository location is empty; give a local directory")
    return Path(text)


def as_location(location: Path | str | S3Url) -> Location:
    """location as an S3Url (a string starting with s3:// is parsed as a URL), or as the folder
    of a local repository: absolute, its symbolic links followed (a link to a repository is
    followed once); RepositoryError when they make a loop."""
    if isinstance(location, S3Url):
        return location
    if isinstance(location, str) and location.startswith(S3_SCHEME):
        return parse_s3_url(location)
    from casnap.fsutil import resolved  # here: a light path that reads no folder does without

    return resolved(location, "repository", RepositoryError)


def describe(location: Location) -> str:
    """location for messages: the absolute directory, or the URL."""
    return location.url if isinstance(location, S3Url) else str(location.absolute())


def is_placeholder_dir(path: Path) -> bool:
    """True when path is missing or holds nothing but README.md / .gitkeep (a repository may be
    created there)."""
    if not path.exists():
        return True
    return path.is_dir() and all(p.name in PLACEHOLDER_NAMES for p in path.iterdir())


def init_under_way(root: Path) -> bool:
    """True when another process may be creating a repository in root: root holds its config,
    or no config and, besides placeholders, only what an init writes before it (its temp files,
    an encrypted init's keys/). A missing or empty root is not: nobody is making it."""
    from casnap.constants import TEMP_PREFIX

    try:
        names = os.listdir(root)
    except OSError:
        return False
    if "config" in names:
        return True
    made = [n for n in names if n not in PLACEHOLDER_NAMES]
    return bool(made) and all(n == "keys" or n.startswith(TEMP_PREFIX) for n in made)


def clear_killed_init(root: Path) -> None:
    """Remove the temp files an init killed before its config landed left in root (made on
    this host by a process no longer running), when root holds no config and nothing else
    besides placeholders and keys/: no init is under way there, and an init (or a first
    commit) may make the repository. A live process's temp file is left: its init goes on."""
    from casnap.fsutil import left_by_dead_process

    try:
        names = os.listdir(root)
    except OSError:
        return
    left = [n for n in names if n not in PLACEHOLDER_NAMES and n != "keys"]
    if "config" in names or not left or not all(left_by_dead_process(n) for n in left):
        return
    for name in left:
        try:
            os.unlink(root / name)
        except OSError:
            return  # gone meanwhile, or not a file: the folder is judged as it is


def stale_init(root: Path) -> list[Path] | None:
    """The key files an encrypted init left in root when it was killed between its key file and
    its config, once that init is surely over (keys/ and every file in it older than
    INIT_WAIT_SECONDS: an init writes its config right after its key file); None when root
    holds anything else (besides placeholders and temp files), a config, no keys/, or a key
    file or keys/ written lately. They seal a key that encrypts nothing: an init may replace
    them. An old keys/ left empty (an init stopped before its key file was in: a full disk, a
    kill) is taken over too: an empty list."""
    import time

    from casnap.constants import INIT_WAIT_SECONDS, TEMP_PREFIX

    try:
        names = os.listdir(root)
        if "config" in names or "keys" not in names:
            return None
        if any(n not in PLACEHOLDER_NAMES and n != "keys" and not n.startswith(TEMP_PREFIX)
               for n in names):  # fmt: skip
            return None
        listed = os.listdir(root / "keys")
        if not all(is_key_name(n) or n.startswith(TEMP_PREFIX) for n in listed):
            return None  # not a killed init's: a user's own keys/ folder
        found = [root / "keys" / n for n in listed]
        old = time.time() - INIT_WAIT_SECONDS
        for path in [root / "keys", *found]:
            st = os.lstat(path)
            if path != root / "keys" and not stat.S_ISREG(st.st_mode):
                return None
            if st.st_mtime > old:
                return None
    except OSError:
        return None
    return found


def is_key_name(name: str) -> bool:
    """Whether name (below keys/) is one a key file gets: its id, 32 lowercase hex digits
    (keys.ID_HEX). Anything else there is no killed init's, and no init takes it over."""
    return len(name) == 32 and all(c in "0123456789abcdef" for c in name)


def under_way_message(where: Path | S3Url) -> str:
    """Why an init refuses a location holding only key files younger than INIT_WAIT_SECONDS."""
    return (
        f"{where} holds key files but no config: an init is under way, or was stopped in the "
        "last seconds; try again in a few seconds"
    )


def _only_key_names(root: Path) -> bool:
    """Whether root, without a config, holds a keys/ folder of key file names only (one of
    them written lately, when stale_init refused it: an init may be under way), or of the
    temp files of one being written."""
    from casnap.constants import TEMP_PREFIX

    try:
        return not (root / "config").exists() and all(
            is_key_name(n) or n.startswith(TEMP_PREFIX) for n in os.listdir(root / "keys")
        )
    except OSError:
        return False


def init_folder(root: Path) -> Callable[[], None]:
    """Where an init may make a repository: root missing or holding only placeholders, or the
    key files an init killed before its config left (stale_init), never inside another
    repository (not_nested); NotARepository otherwise. Returns what to call once the new config
    is in: it removes those key files (they seal a key that encrypts nothing)."""
    stale: list[Path] = []
    clear_killed_init(root)
    if not is_placeholder_dir(root):
        found = stale_init(root)
        if found is None and _only_key_names(root):
            raise InitUnderWay(under_way_message(root))
        if found is None:
            raise NotARepository(
                f"{root} is not empty and not a casnap repository; not touching it"
            )
        stale = found
    not_nested(root)

    def finish() -> None:
        for path in stale:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    return finish


def require_config(root: Path) -> None:
    """RepositoryNotFound (an empty or missing folder) or NotARepository (anything else, key
    files left by an interrupted init said so) unless root holds a config."""
    if (root / "config").is_file():
        return
    if is_placeholder_dir(root):
        raise RepositoryNotFound(f"no casnap repository at {root} (run `casnap init`)")
    if (root / "keys").is_dir():
        raise NotARepository(
            f"{root} holds key files but no config (an encrypted init interrupted?): "
            "not a casnap repository yet; an init there takes it over in a few seconds"
        )
    raise NotARepository(f"{root} is not a casnap repository")


@contextlib.contextmanager
def keys_taken_back(root: Path) -> Iterator[None]:
    """An init in root that fails in the block takes the keys/ folder its key file did not
    land in (a full disk) with it: alone, that folder reads as an init under way."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            os.rmdir(root / "keys")
        raise


def make_scratch(tmp: Path, config: Path | None) -> None:
    """Make a new repository's scratch folder tmp (0700, for whatever uses scratch space);
    when it does not fit (a disk an inode short), config goes too (a plain repository's, whose
    tmp/ it is): the init is undone, not left with a config a retried init calls taken."""
    from casnap import fsutil

    try:
        fsutil.make_dirs(tmp)
    except OSError as exc:
        if config is not None:
            with contextlib.suppress(OSError):
                config.unlink()
        raise from_oserror(exc, f"creating {tmp}") from exc


def is_config(head: bytes) -> bool:
    """True when head, the first bytes of an object named config, is a casnap repository's
    config: plain JSON naming its format, or sealed (an encrypted repository's)."""
    from casnap.crypto import is_sealed

    return is_sealed(head) or b'"casnap_format"' in head


def holds_repository(folder: Path | str) -> bool:
    """True when folder holds a casnap repository (its config), whichever one. The config is
    opened without waiting and read only when a regular file (a FIFO named config never
    stalls this); a folder without one costs a single failed open (a scan asks of each)."""
    config = os.path.join(folder, "config")
    try:
        fd = os.open(config, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and is_config(os.read(fd, CONFIG_HEAD))
    except OSError:
        return False
    finally:
        os.close(fd)


def nested_message(where: Path | S3Url, outer: Path | S3Url) -> str:
    """Why no repository is made at where, inside the repository at outer."""
    return (
        f"{where} lies inside the casnap repository {outer}; a repository is never made "
        "inside another (the outer one would take its files for its own)"
    )


def not_nested(root: Path) -> None:
    """NotARepository when a folder above root holds a casnap repository: a repository is
    never made inside another, since the outer one lists every object below its folders as its
    own (a config under snapshots/ stops its listings, an index under index/ its commits); and
    when a file stands on the way, below which no folder can be made."""
    for folder in root.parents:
        if holds_repository(folder):
            raise NotARepository(nested_message(root, folder))
    above = next((p for p in root.parents if p.exists() or p.is_symlink()), None)
    if above is not None and not above.is_dir():  # a file on the way: no folder below it
        raise NotARepository(f"{root} cannot be made: {above} is not a directory")


# where a non-AWS store is, first found first (CASNAP_S3_ENDPOINT, then the standard AWS ones)
ENDPOINT_VARS = ("CASNAP_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def endpoint() -> str | None:
    """The endpoint URL of a non-AWS store, from the environment; None for AWS itself.

    InvalidArgument when it is not an http(s) URL with a host (`host:9000` without a scheme)."""
    for var in ENDPOINT_VARS:
        value = os.environ.get(var)
        if value:
            try:
                parts = urllib.parse.urlsplit(value)
                port_ok = parts.port is None or parts.port > 0  # ValueError when out of range
            except ValueError:  # `http://[::1` (an unclosed IPv6 address), `host:99999`
                parts, port_ok = urllib.parse.urlsplit(""), False
            if (
                parts.scheme not in ("http", "https")
                or not parts.hostname
                or not port_ok
                or value.split() != [value]
            ):
                raise InvalidArgument(
                    f"{var}={value!r} is not an endpoint URL: give http://HOST[:PORT] or "
                    "https://HOST[:PORT]"
                )
            return value
    return None


def local_backend(root: Path) -> Backend:
    """The backend of a repository directory.

    A root that group or others may enter (a repository made before casnap created everything
    private) is closed here, when we own it. Lock files half-written by a process that was killed
    are removed here: no gc may touch locks/ while other processes take locks, and the next
    casnap to open the repository can.
    """
    from casnap import fsutil  # here: reading a location (every command) needs neither
    from casnap.backends.local import LocalBackend

    fsutil.tighten_root(root)
    fsutil.remove_stale(root / "locks", recursive=False)
    return LocalBackend(root)
