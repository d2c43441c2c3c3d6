"""The passwords of an encrypted repository: list, add, change and remove key files, and keep a
copy of one apart from the repository (export, import).

Every operation here writes or removes key files only: the master key never changes, so no
other object is rewritten. A new key file is stored before an old one is removed, so a crash in
between leaves both passwords working, never none.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from casnap import crypto, fsutil, keys
from casnap.backends.base import Backend
from casnap.backends.local import LocalBackend
from casnap.config import now_iso, parse_time
from casnap.errors import (
    CasnapError,
    IntegrityError,
    InvalidArgument,
    PasswordError,
    RepositoryNotFound,
    from_oserror,
)
from casnap.keys import KeyFile, PasswordSource, Unlocked
from casnap.locations import S3Url, as_location
from casnap.opening import forget_key_file
from casnap.repository import Repository


@dataclass(frozen=True)
class KeyInfo:
    """One key file, as `key list` shows it."""

    id: str
    created: str
    kdf: str
    current: bool  # the key the password of this command opened

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "created": self.created, "kdf": self.kdf, "current": self.current}


def require_keys(repo: Repository) -> None:
    """InvalidArgument when repo is plain: checked before a new password is asked for."""
    _unlocked(repo)


def _unlocked(repo: Repository) -> Unlocked:
    if repo.unlocked is None:
        raise _not_encrypted(repo.backend.location)
    return repo.unlocked


def _not_encrypted(location: str) -> InvalidArgument:
    """What every key command says of a plain repository: a usage error (exit 2), the
    repository being fine, the command not one for it."""
    return InvalidArgument(
        f"repository {location} is not encrypted: it has no keys; `casnap copy --to NEW "
        "--to-encryption repokey` copies its snapshots into a new encrypted one"
    )


def list_keys(repo: Repository) -> list[KeyInfo]:
    """Every key file, oldest first; then those that cannot be used (damaged, or of a format
    this casnap does not know), with why in place of their KDF."""
    current = _unlocked(repo).keyfile.id
    usable, unusable = keys.scan_key_files(repo.raw_backend)
    out = []
    for kf in sorted(usable, key=lambda k: (k.created, k.id)):
        k = kf.kdf
        kdf = f"argon2id m={k.memory_kib} KiB t={k.iterations} p={k.lanes}"
        out.append(KeyInfo(kf.id, _time_or_none(kf.created), kdf, kf.id == current))
    for key_id, why in sorted(unusable):
        out.append(KeyInfo(key_id, "", f"unusable: {why}", False))
    return out


def _time_or_none(created: str) -> str:
    """A key file's `created` when it is a time casnap writes, else "": the field is not
    sealed, so an edited one is shown as no time rather than trusted or stopping `key list`."""
    try:
        parse_time(created).astimezone()  # as key list shows it: in local time
    except (ValueError, OverflowError):
        return ""
    return created


def add_key(repo: Repository, password: str) -> KeyFile:
    """A new key file sealing the master key with another password."""
    kf = keys.make_key_file(_unlocked(repo).master, password, now_iso())
    repo.raw_backend.put(kf.key, kf.encode())
    return kf


def change_password(
    repo: Repository, password: str, old_password: str | None = None
) -> tuple[str, KeyFile, list[str]]:
    """Replace the key file this command's password opened with one sealed by password: the
    new one is stored first, then the old one removed. With old_password (the password this
    command opened the repository with), every other key file it opens that seals this master
    key (a `key add` given the same password) is removed too, so the old password stops
    working. (old id, new key file, the ids of those others)."""
    u = _unlocked(repo)
    new = add_key(repo, password)
    forget_key_file(repo.raw_backend, u.keyfile.key)
    old = u.keyfile.id
    repo.unlocked = Unlocked(new, u.master)
    others = []
    if old_password is not None and old_password != password:
        for kf in _opened_by(repo, old_password, skip={old, new.id}):
            forget_key_file(repo.raw_backend, kf.key)
            others.append(kf.id)
    return old, new, others


def _opened_by(repo: Repository, password: str, skip: set[str]) -> list[KeyFile]:
    """The stored key files but skip that password opens and that seal this repository's
    master key, tried cheapest first within the KDF budget an open has."""
    master = _unlocked(repo).master
    usable, _ = keys.scan_key_files(repo.raw_backend)
    found = []
    for kf in keys.within_budget([k for k in usable if k.id not in skip]):
        try:
            if kf.unseal(password).raw == master.raw:
                found.append(kf)
        except PasswordError:
            continue
    return found


def remove_key(repo: Repository, ref: str) -> str:
    """Remove the key file whose id starts with ref; never the one in use (`key passwd`
    changes that one), never the last one stored (the one in use may be a copy this host
    kept of a key removed elsewhere). The removed id."""
    u = _unlocked(repo)
    names = [key.removeprefix(keys.KEYS) for key, _ in repo.raw_backend.list(keys.KEYS)]
    found = [n for n in names if n.startswith(ref.lower())]
    if not ref or not found:
        raise InvalidArgument(f"no key {ref!r} in repository {repo.backend.location}")
    if len(found) > 1:
        raise InvalidArgument(f"key prefix {ref!r} names {len(found)} keys; give more digits")
    key_id = found[0]
    if key_id == u.keyfile.id:
        raise InvalidArgument(
            f"key {key_id[:8]} is the one this password opens; `casnap key passwd` changes it, "
            "or remove it with another key's password"
        )
    if not repo.raw_backend.exists(u.keyfile.key):  # opened with a copy this host kept
        raise InvalidArgument(
            f"key {u.keyfile.id[:8]}, the one this password opens, is no longer stored in "
            f"{repo.backend.location} (removed elsewhere; this host kept a copy): removing "
            f"key {key_id[:8]} could leave the repository without any; `casnap key passwd` "
            "stores this password's key anew"
        )
    forget_key_file(repo.raw_backend, keys.KEYS + key_id)
    return key_id


def export_key(repo: Repository, dest: Path, force: bool = False) -> KeyFile:
    """Write the key file in use to dest (0600, atomically): still sealed by its password, so
    the master key can be kept apart from the repository (never inside it). An existing dest,
    or a symbolic link there (dangling or not), is kept unless force, which replaces it (a link
    itself: never the file it points to)."""
    u = _unlocked(repo)
    doc = json.loads(u.keyfile.encode())
    doc["id"] = u.keyfile.id
    doc["repository"] = repo.id
    body = json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
    if repo.holds_path(dest.parent):  # its config, or a file its listings take for an object
        raise InvalidArgument(
            f"{dest} lies inside the repository; keep the exported key apart from it"
        )
    link = dest.is_symlink()
    try:
        mode: int | None = dest.lstat().st_mode
    except OSError:
        mode = None  # nothing there (or nothing this user may see): the write says which
    if mode is not None and stat.S_IFMT(mode) not in (stat.S_IFREG, stat.S_IFLNK, stat.S_IFDIR):
        raise InvalidArgument(  # a FIFO, a socket, a device (`/dev/full`): never replaced
            f"{dest} is not a regular file (a device, a FIFO or a socket); not writing to it "
            "or replacing it, --force or not: give a file name"
        )
    if link and not force:
        raise InvalidArgument(
            f"{dest} is a symbolic link; not writing through it or replacing it (give --force "
            "to replace the link itself)"
        )
    if dest.is_dir() and not link:  # never replaced: said before --force is offered
        raise InvalidArgument(f"{dest} is a directory; give a file name")
    if dest.exists() and not force:
        raise InvalidArgument(f"{dest} exists; not overwriting it (give --force to replace it)")
    tmp = dest.parent / fsutil.temp_name()
    try:
        with open(tmp, "xb", opener=fsutil.opener) as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        fsutil.fsync_dir(dest.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise from_oserror(exc, f"writing {dest}") from exc
    return u.keyfile


def read_export(path: Path) -> KeyFile:
    """The key file an export wrote (IntegrityError when path holds none)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(keys.MAX_KEY_FILE + 1)  # a device or a large file by mistake: bounded
    except OSError as exc:
        raise from_oserror(exc, f"reading {path}") from exc
    if len(raw) > keys.MAX_KEY_FILE:
        raise IntegrityError(f"{path} is not a casnap key export (over {keys.MAX_KEY_FILE} bytes)")
    try:
        doc = json.loads(raw)
        key_id = str(doc["id"]) if "id" in doc else None
    except (ValueError, TypeError, RecursionError) as exc:
        raise IntegrityError(f"{path} is not a casnap key export") from exc
    if key_id is None:  # a key file copied out of keys/ names itself by its file name
        if not keys.is_key_id(path.name):
            raise IntegrityError(
                f"{path} is not a casnap key export: it holds no id (a key file copied from a "
                "repository's keys/ folder is named by it: give it its name there again)"
            )
        key_id = path.name
    return keys.parse_key_file(key_id, raw, str(path))


def import_key(
    location: Path | S3Url, path: Path, password: PasswordSource
) -> tuple[KeyFile, bool]:
    """Put an exported key file back into the encrypted repository at location (also when it
    has no key file left): it must open with password and its master key must open the
    repository's config. (key file, False when it was there already)."""
    root = as_location(location)  # a local folder's links followed
    if isinstance(root, S3Url):
        from casnap.backends.s3 import S3Backend

        with contextlib.closing(S3Backend(root)) as s3:
            return _import_key(s3, root.url, path, password)
    if not (root / "config").is_file():
        raise RepositoryNotFound(f"no casnap repository at {root}")
    return _import_key(LocalBackend(root), str(root), path, password)


def _import_key(
    backend: Backend, root: str, path: Path, password: PasswordSource
) -> tuple[KeyFile, bool]:
    if not backend.exists("config"):
        raise RepositoryNotFound(f"no casnap repository at {root}")
    raw = backend.get("config")
    if not crypto.is_sealed(raw):  # said before the export is read, as key add says it first
        raise _not_encrypted(root)
    kf = read_export(path)
    secret = keys.read_password(password)
    try:
        master = kf.unseal(secret)
    except PasswordError as exc:
        raise PasswordError(
            f"key {kf.id[:8]} in {path} does not open with this password (the password it was "
            "exported with; or the file was edited: its id is sealed with the key)"
        ) from exc
    try:
        crypto.Sealer(master.encryption_key).open("config", raw)
    except CasnapError as exc:
        raise PasswordError(f"key {kf.id[:8]} in {path} is not a key of repository {root}") from exc
    if backend.exists(kf.key):
        if backend.get(kf.key) == kf.encode():
            return kf, False
        backend.delete(kf.key)  # a damaged copy of the same key: the export replaces it
    backend.put(kf.key, kf.encode())
    return kf, True
