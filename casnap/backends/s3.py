"""A backend on an S3-compatible object store (AWS S3, MinIO, Ceph RGW, R2, ...), through botocore.

Objects live in one bucket under the repository's prefix: key `packs/ab/ab12…` of
`s3://bucket/x` is the object `x/packs/ab/ab12…`. A PUT is atomic on S3 (an interrupted upload
leaves no object), so no temp objects are ever written.

put-if-absent is a conditional write, `PutObject` with `If-None-Match: *`: the store answers
412 when the key exists (put returns False) and 409 while another conditional write of the key
is under way (retried a few times, then decided by whether the key is there). A store that
answers 501 (conditional writes not implemented) gets a HEAD then a PUT instead, for the rest of
the backend's life: two writers racing for one key may then both get True. casnap stores
content-addressed objects, where both writers put the same bytes, so only a lock file race (one
lock taken twice) is lost; use a store with conditional writes when several hosts write.

Credentials, region and endpoint come the standard AWS way (environment, ~/.aws/config and
credentials, AWS_PROFILE); CASNAP_S3_ENDPOINT (else AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL) names
a non-AWS endpoint, which is then addressed path-style (`http://host:9000/bucket/key`).

Errors: a missing key is ObjectMissing, a range past the end IntegrityError, no permission (or no
credentials) AccessDenied, a missing bucket RepositoryNotFound; a timeout, a refused or reset
connection, a 5xx answer or throttling is TransientError (botocore's own retries are off: the
retrying wrapper decides); anything else a CasnapError naming the key and the bucket.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from casnap.backends.base import (
    Backend,
    check_key,
    check_prefix,
    check_range,
    checked_prefixes,
)
from casnap.errors import (
    AccessDenied,
    CasnapError,
    IntegrityError,
    InvalidArgument,
    ObjectMissing,
    RepositoryError,
    RepositoryNotFound,
    TransientError,
    from_oserror,
)
from casnap.locations import CONFIG_HEAD, S3Url, endpoint, is_config

try:  # botocore's client alone: boto3's session layer and transfer manager cost ~0.1 s to import
    import botocore.config
    import botocore.exceptions
    import botocore.loaders
    import botocore.session
except ImportError:  # the s3 extra is not installed: S3Backend says so when made
    botocore = None

CONNECT_TIMEOUT = 10.0  # seconds to open a connection
READ_TIMEOUT = 60.0  # seconds without a byte from the store
POOL_SIZE = 64  # connections: the restore pipeline reads ranges from many threads at once
CONFLICT_TRIES = 5  # 409 ConditionalRequestConflict: another write of the key is under way
# The folder holding most of a repository's objects: a listing of the folders around it rolls it
# up into one entry instead of paging through every pack (list_several).
BULK_FOLDER = "packs/"
ETAG_MAX_SIZE = 64 * 1024  # the ETags of objects put up to this size are kept (locks: ~200 B)
ETAGS_KEPT = 1024

_MISSING = {"NoSuchKey", "NotFound", "404"}
_DENIED = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidToken",
    "ExpiredToken",
}
# answers of a store that does not list a range with a delimiter of several characters
_UNSUPPORTED = {"InvalidArgument", "NotImplemented", "InvalidRequest"}
_TRANSIENT = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "TooManyRequests",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
}


def require_client() -> None:
    """RepositoryError (one line) when botocore is not installed."""
    if botocore is None:
        raise RepositoryError(
            "s3:// repositories need the S3 client: pip install 'casnap[s3]' (installs botocore)"
        )


def make_client() -> Any:
    """An S3 client configured the standard AWS way, with timeouts, a connection pool for
    parallel ranged reads, and no retries of its own."""
    require_client()
    from casnap.backends import s3models  # botocore's: imported with it

    session = botocore.session.get_session()  # reads AWS_PROFILE, ~/.aws/config, credentials
    url = endpoint()
    config = botocore.config.Config(
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        max_pool_connections=POOL_SIZE,
        retries={"total_max_attempts": 1, "mode": "standard"},
        # No SHA-256 of a body for its signature (SigV4 hashes it over plain HTTP, ~0.75 ms of
        # CPU per MiB sent): the CRC32 sent with every put (below) is what the store checks
        # the body against, and casnap checks each object's hash when it reads it; the
        # request's headers are still signed.
        s3={"addressing_style": "path" if url else "auto", "payload_signing_enabled": False},
        # the CRC32 of every upload is sent (and checked by the store); a download's is
        # checked when the store sends one (whole objects)
        request_checksum_calculation="when_supported",
        response_checksum_validation="when_supported",
    )
    try:  # an unknown profile, a malformed region or AWS config file: the user's to fix
        region = session.get_config_variable("region") or "us-east-1"
        paths = list(session.get_component("data_loader").search_paths)  # AWS_DATA_PATH's too
        loader = s3models.S3Loader(extra_search_paths=paths, include_default_search_paths=False)
        session.register_component("data_loader", loader)
        client = session.create_client("s3", endpoint_url=url, region_name=region, config=config)
        lacking = sorted(s3models.OPERATIONS - set(client.meta.service_model.operation_names))
    except (botocore.exceptions.BotoCoreError, ValueError) as exc:
        raise InvalidArgument(f"the S3 client cannot be set up: {exc}{s3models.hint(exc)}") from exc
    except (
        TypeError,
        AttributeError,
        KeyError,
        botocore.exceptions.UndefinedModelAttributeError,
    ) as exc:
        # from the structure of a model file read whole: one of AWS_DATA_PATH's, as a rule
        raise InvalidArgument(
            f"the S3 client cannot be set up: the S3 model it read is malformed "
            f"({type(exc).__name__}: {exc}){s3models.hint(exc, True)}"
        ) from exc
    if lacking:
        client.close()
        raise InvalidArgument(
            f"the S3 client cannot be set up: the S3 model it read lacks the operation "
            f"{lacking[0]}{s3models.hint(None, True)}"
        )
    return client


def is_object_key(key: str) -> bool:
    """True for a key a repository object can have (check_key passes it). S3 takes any key:
    a folder marker another tool made (`packs/`) or a key with an empty, `.` or `..`
    component (`index/../x`) is no object of the repository, and listings pass it over."""
    return bool(key) and not any(part in ("", ".", "..") for part in key.split("/"))


def _code(exc: Any) -> tuple[str, int]:
    """The error code and HTTP status of a botocore ClientError."""
    err = exc.response.get("Error", {})
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return str(err.get("Code") or status), status


def _local_cause(exc: BaseException) -> OSError | None:
    """The OSError of this process's own limits (no descriptor left for a socket) behind a
    connection error, or None."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        cause = todo.pop()
        if cause is None or id(cause) in seen:
            continue
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in (errno.EMFILE, errno.ENFILE):
            return cause
        kwargs = getattr(cause, "kwargs", None)  # botocore keeps urllib3's error there
        todo += [cause.__cause__, cause.__context__]
        if isinstance(kwargs, dict) and isinstance(kwargs.get("error"), BaseException):
            todo.append(kwargs["error"])
    return None


class S3Backend(Backend):
    """Objects in an S3 bucket under a prefix (see the module docstring)."""

    def __init__(self, url: S3Url, client: Any | None = None) -> None:
        require_client()
        self.url = url
        self.bucket = url.bucket
        self._root = f"{url.prefix}/" if url.prefix else ""
        self._client = client if client is not None else make_client()
        self._conditional = True  # False once the store said it has no conditional writes
        self._ranged = True  # False once the store refused a listing of several folders
        # ETags of the small objects (locks) this backend put, for a conditional delete
        self._etags: OrderedDict[str, str] = OrderedDict()
        self._etag_lock = threading.Lock()
        # whether the store honours If-Match on a delete (None: not known yet; remove learns
        # it and tells learnt, which may keep it for the next process)
        self.conditional_deletes: bool | None = None
        self.learnt: Callable[[bool], None] | None = None
        # the key files of a killed init a new repository takes over (s3prefix.py)
        self.leftover: list[str] | None = []

    remote = True
    checked_puts = True  # the checksum of every upload is checked by the store (make_client)

    @property
    def location(self) -> str:
        return self.url.url

    def _key(self, key: str) -> str:
        return self._root + check_key(key)

    # -- errors --------------------------------------------------------------------------------

    def _error(self, exc: Exception, what: str) -> CasnapError:
        """The CasnapError for a failed request; what is "reading packs/00/x" and the like."""
        where = f"{what} in {self.location}"
        if isinstance(exc, botocore.exceptions.ClientError):
            code, status = _code(exc)
            message = exc.response.get("Error", {}).get("Message") or code
            if code == "NoSuchBucket" or status == 404 and what.startswith("listing"):
                # a listing in a bucket that exists answers, if with nothing
                why = f"bucket {self.bucket} does not exist" + (
                    f" at {endpoint()}" if endpoint() else ""
                )
                if code != "NoSuchBucket":
                    why += " (or that endpoint is not an S3 store)"
                return RepositoryNotFound(f"{where}: {why}", why)
            if status == 404 and what.endswith("the bucket"):
                return CasnapError(
                    f"{where}: HTTP 404 (is {endpoint() or 'the endpoint'} an S3 store?)"
                )
            if code in _MISSING or status == 404:
                return ObjectMissing(f"{what.split(' ', 1)[1]} is missing from the repository")
            if code in _DENIED or status == 403:
                return AccessDenied(f"{where}: access denied ({code}: {message})")
            if code in ("InvalidRange", "416") or status == 416:
                return IntegrityError(f"{where}: the object does not hold the range ({message})")
            if code in _TRANSIENT or status >= 500 or status == 429:
                return TransientError(f"{where}: {code} (HTTP {status}): {message}")
            return CasnapError(f"{where}: {code} (HTTP {status}): {message}")
        if isinstance(exc, (botocore.exceptions.NoCredentialsError, *NoRegionErrors)):
            return AccessDenied(f"{where}: {exc} (set AWS_PROFILE or AWS_ACCESS_KEY_ID)")
        local = _local_cause(exc)
        if local is not None:  # a socket not made: this process's limits, not the store
            return from_oserror(local, where)
        if isinstance(exc, TransientErrors):
            err = TransientError(f"{where}: {exc}")
            err.silent = isinstance(exc, botocore.exceptions.ReadTimeoutError)
            return err
        return CasnapError(f"{where}: {type(exc).__name__}: {exc}")

    @contextlib.contextmanager
    def _mapped(self, what: str) -> Iterator[None]:
        """The client's errors raised in the block become the CasnapError `_error` gives."""
        try:
            yield
        except Exception as exc:
            if isinstance(exc, ClientErrors):
                raise self._error(exc, what) from exc
            raise

    # -- the contract --------------------------------------------------------------------------

    def put(self, key: str, data: bytes | memoryview) -> bool:
        name = self._key(key)
        body = bytes(data)  # our own copy: the caller may reuse its buffer
        with self._mapped(f"writing {key}"):
            if not self._conditional:
                return self._put_unconditional(name, body)
            for attempt in range(CONFLICT_TRIES):
                try:
                    answer = self._client.put_object(
                        Bucket=self.bucket, Key=name, Body=body, IfNoneMatch="*"
                    )
                    self._note_etag(name, body, answer)
                    return True
                except botocore.exceptions.ClientError as exc:
                    code, status = _code(exc)
                    if code == "PreconditionFailed" or status == 412:
                        return False
                    if code == "NotImplemented" or status == 501:
                        self._conditional = False
                        return self._put_unconditional(name, body)
                    if code != "ConditionalRequestConflict":
                        raise
                    time.sleep(0.05 * (attempt + 1))
            if self._head(name) is not None:
                return False
            raise TransientError(
                f"writing {key} in {self.location}: another write of it kept conflicting"
            )

    def _put_unconditional(self, name: str, body: bytes) -> bool:
        """HEAD then PUT, for a store without conditional writes (racy: see the docstring)."""
        if self._head(name) is not None:
            return False
        answer = self._client.put_object(Bucket=self.bucket, Key=name, Body=body)
        self._note_etag(name, body, answer)
        return True

    def _note_etag(self, name: str, body: bytes, answer: Any) -> None:
        """Keep the ETag of a small object just put (a lock), for remove's conditional delete."""
        etag = answer.get("ETag") if isinstance(answer, dict) else None
        if etag and len(body) <= ETAG_MAX_SIZE:
            with self._etag_lock:
                self._etags[name] = str(etag)
                if len(self._etags) > ETAGS_KEPT:
                    self._etags.popitem(last=False)

    def _head(self, name: str) -> int | None:
        """The size of an object, None when absent."""
        try:
            answer = self._client.head_object(Bucket=self.bucket, Key=name)
        except botocore.exceptions.ClientError as exc:
            code, status = _code(exc)
            if code in _MISSING or status == 404:
                if code == "NoSuchBucket":
                    raise
                return None
            raise
        return int(answer["ContentLength"])

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        name = self._key(key)
        check_range(offset, length)
        with self._mapped(f"reading {key}"):
            return self._get(key, name, offset, length)

    def _get(self, key: str, name: str, offset: int, length: int | None) -> bytes:
        if length == 0 or (length is None and offset > 0):
            size = self._head(name)  # no Range header asks for nothing, or for the end exactly
            if size is None:
                raise ObjectMissing(f"{key} is missing from the repository")
            if offset > size:
                raise IntegrityError(
                    f"{key} is truncated: wanted bytes from offset {offset}, it holds {size}"
                )
            if length == 0 or offset == size:
                return b""
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": name}
        if length is not None:
            args["Range"] = f"bytes={offset}-{offset + length - 1}"
        elif offset:
            args["Range"] = f"bytes={offset}-"
        try:
            answer = self._client.get_object(**args)
        except botocore.exceptions.ClientError as exc:
            code, status = _code(exc)
            if code == "InvalidRange" or status == 416:
                raise IntegrityError(
                    f"{key} is truncated: wanted {length} bytes at offset {offset} "
                    f"({self.location})"
                ) from exc
            raise
        body = answer["Body"]
        try:
            data = body.read()
        finally:
            body.close()
        if "Range" in args and not answer.get("ContentRange"):
            # 200, not 206: the store (or a proxy before it) ignored the Range header, as HTTP
            # allows, and sent the whole object, which holds the part asked for
            data = data[offset : None if length is None else offset + length]
        if length is not None and len(data) != length:
            what = "is truncated" if len(data) < length else "was answered with more bytes"
            raise IntegrityError(
                f"{key} {what}: wanted {length} bytes at offset {offset}, got {len(data)}"
            )
        return bytes(data)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        check_prefix(prefix)
        cut = len(self._root)
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._root + prefix, PaginationConfig={"PageSize": 1000}
        )
        with self._mapped(f"listing {prefix or 'the repository'}"):
            for page in pages:  # one page (<= 1000 keys) in memory at a time
                for item in page.get("Contents", ()):
                    key = item["Key"][cut:]
                    if is_object_key(key):
                        yield key, int(item["Size"])

    def list_aged(self, prefix: str) -> Iterator[tuple[str, float]]:
        """(key, age in seconds) of the objects list gives, the age by the store's clock: the
        Date of its answer less the object's LastModified, both in whole seconds, so one second
        is taken off (an age is never more than it is); by this host's clock without a Date."""
        check_prefix(prefix)
        cut = len(self._root)
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._root + prefix, PaginationConfig={"PageSize": 1000}
        )
        with self._mapped(f"listing {prefix or 'the repository'}"):
            for page in pages:
                date = page.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
                try:
                    now = email.utils.parsedate_to_datetime(date).timestamp()
                except (TypeError, ValueError):  # no Date, or one that does not parse
                    now = time.time()
                for item in page.get("Contents", ()):
                    key = item["Key"][cut:]
                    if is_object_key(key):
                        yield key, now - item["LastModified"].timestamp() - 1

    def list_several(self, prefixes: Sequence[str]) -> Iterator[tuple[str, int]]:
        """One listing of the key range from the first folder to the end of the last, in place
        of one per folder: `StartAfter` skips what lies before, the listing stops once past the
        last folder, and the pack folder lying between (locks/ and snapshots/ around packs/)
        is rolled up into one entry by naming it as the delimiter. Another key in the range is
        passed over; a store that refuses such a listing gets one per folder from then on."""
        folders = checked_prefixes(prefixes)
        if not self._ranged:
            yield from super().list_several(folders)
            return
        cut, last = len(self._root), folders[-1]
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": self._root,
            "StartAfter": self._root + folders[0],
            "PaginationConfig": {"PageSize": 1000},
        }
        if folders[0] < BULK_FOLDER < last and BULK_FOLDER not in folders:
            args["Delimiter"] = BULK_FOLDER
        pages = self._client.get_paginator("list_objects_v2").paginate(**args)
        listed = False
        with self._mapped(f"listing {', '.join(folders)}"):
            try:
                for page in pages:
                    listed = True
                    for item in page.get("CommonPrefixes", ()):
                        rolled = item["Prefix"][cut:]  # a key naming the delimiter inside a folder
                        if rolled != BULK_FOLDER and rolled.startswith(tuple(folders)):
                            yield from self.list(rolled)
                    for item in page.get("Contents", ()):
                        key = item["Key"][cut:]
                        if key > last and not key.startswith(last):
                            return  # past the last folder: keys come in order
                        if key.startswith(tuple(folders)) and is_object_key(key):
                            yield key, int(item["Size"])
            except botocore.exceptions.ClientError as exc:
                code, status = _code(exc)
                if listed or not (code in _UNSUPPORTED or status in (400, 501)):
                    raise
                self._ranged = False  # this store lists no ranges that way: folder by folder
        if not self._ranged:
            yield from super().list_several(folders)

    def delete(self, key: str) -> None:
        name = self._key(key)
        try:
            with self._mapped(f"deleting {key}"):
                self._client.delete_object(Bucket=self.bucket, Key=name)
        except ObjectMissing:
            return  # deleting an absent key is no error

    def remove(self, key: str) -> bool:
        """A delete that says whether the object was there, in one request where it can: a
        conditional delete (`If-Match` with the ETag of this backend's own put) answers 404
        when the object is gone. Else (an object put elsewhere, a store that does not honour
        the condition) a HEAD first."""
        name = self._key(key)
        with self._etag_lock:
            etag = self._etags.pop(name, None)
        with self._mapped(f"deleting {key}"):
            if etag is None or not self._deletes_report():
                return super().remove(key)
            try:
                self._client.delete_object(Bucket=self.bucket, Key=name, IfMatch=etag)
                return True
            except botocore.exceptions.ClientError as exc:
                code, status = _code(exc)
                if code in _MISSING or status == 412:
                    return False  # gone (412: another object under the key now, not ours)
                raise

    def _deletes_report(self) -> bool:
        """Whether the store honours `If-Match` on a delete, learnt once by deleting an absent
        key on a condition: a store that honours it answers 404 (or 412), one that ignores
        it 204. `learnt` hears the answer (kept with the config: opening.py)."""
        if self.conditional_deletes is None:
            probe = f"{self._root}locks/{uuid.uuid4().hex}"
            try:
                self._client.delete_object(Bucket=self.bucket, Key=probe, IfMatch=f'"{"0" * 32}"')
                honours = False
            except botocore.exceptions.ClientError as exc:
                code, status = _code(exc)
                if code == "NoSuchBucket" or not (code in _MISSING or status in (404, 412, 501)):
                    raise
                honours = status != 501
            self.conditional_deletes = honours
            if self.learnt is not None:
                self.learnt(honours)
        return self.conditional_deletes

    def exists(self, key: str) -> bool:
        name = self._key(key)
        with self._mapped(f"reading {key}"):
            return self._head(name) is not None

    def close(self) -> None:
        client, self._client = self._client, _Closed(self.location)
        if not isinstance(client, _Closed):
            client.close()

    def enclosing_repository(self) -> S3Url | None:
        """The repository whose prefix holds this one's (the nearest prefix above it holding a
        casnap config), or None: a repository made there would have its objects listed as the
        outer one's (see locations.not_nested). A prefix this user may not read (credentials
        granted one prefix only) is passed over."""
        parts = self.url.prefix.split("/") if self.url.prefix else []
        for n in range(len(parts) - 1, -1, -1):
            outer = S3Url(self.bucket, "/".join(parts[:n]))
            name = f"{outer.prefix}/config" if outer.prefix else "config"
            with contextlib.suppress(AccessDenied), self._mapped(f"reading {name}"):
                size = self._head(name)
                if size and is_config(self._get(name, name, 0, min(size, CONFIG_HEAD))):
                    return outer
        return None

    # -- the bucket ----------------------------------------------------------------------------

    def ensure_bucket(self) -> bool:
        """Create the bucket when it is missing (in the client's region); True when made."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return False
        except Exception as exc:
            if not isinstance(exc, ClientErrors):
                raise
            if isinstance(exc, botocore.exceptions.ClientError):
                code, status = _code(exc)
                if not (code in ("NoSuchBucket", "NotFound", "404") or status == 404):
                    raise self._error(exc, "reading the bucket") from exc
            else:
                raise self._error(exc, "reading the bucket") from exc
        args: dict[str, Any] = {"Bucket": self.bucket}
        region = self._client.meta.region_name
        if region and region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._client.create_bucket(**args)
        except Exception as exc:
            if isinstance(exc, botocore.exceptions.ClientError):
                if _code(exc)[0] in ("BucketAlreadyOwnedByYou",):
                    return False
            if isinstance(exc, ClientErrors):
                raise self._error(exc, "creating the bucket") from exc
            raise
        return True


class _Closed:
    """The client of a closed backend: every call is a caller's bug."""

    def __init__(self, location: str) -> None:
        self.location = location

    def __getattr__(self, name: str) -> Any:
        raise CasnapError(f"the S3 backend of {self.location} is closed")


if botocore is not None:
    ClientErrors: tuple[type[Exception], ...] = (botocore.exceptions.BotoCoreError,)
    ClientErrors += (botocore.exceptions.ClientError,)
    TransientErrors: tuple[type[Exception], ...] = (
        botocore.exceptions.ConnectionError,  # refused, unreachable, connect timeout
        botocore.exceptions.HTTPClientError,  # read timeout, reset, closed
        botocore.exceptions.IncompleteReadError,
        botocore.exceptions.ResponseStreamingError,
    )
    NoRegionErrors: tuple[type[Exception], ...] = (botocore.exceptions.NoRegionError,)
else:
    ClientErrors = TransientErrors = NoRegionErrors = ()
