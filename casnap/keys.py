"""Key files: the master key of an encrypted repository, sealed by a password.

A key file `keys/<id>` is JSON: when it was made, the KDF and its parameters (argon2id: memory,
iterations, lanes, a random salt), and the master key sealed with AES-256-GCM under the key the
KDF derives from the password (a random nonce; the key file's id bound as associated data, so a
key file renamed is refused). Several key files may seal the same master key: each is one
password. Changing a password writes a new key file and removes the old one; no other object
changes. A key file's parameters are checked against limits before the KDF runs, so a hostile
one cannot make casnap allocate gigabytes.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from casnap.backends.base import Backend
from casnap.crypto import KEY_SIZE, MasterKey, Sealer, is_sealed, parse_header
from casnap.errors import IntegrityError, PasswordError, UnsupportedFormat

KEY_FORMAT = 1
KEYS = "keys/"
ID_HEX = 32  # a key file's id: 16 random bytes
# argon2id as OWASP recommends it (19 MiB, 2 passes, 1 lane): about 0.02 s here, paid once per
# command, so a commit every few minutes stays within a few per cent of a plain one; the
# parameters are recorded per key file (docs/FORMAT.md)
KDF_MEMORY_KIB = 19 * 1024
KDF_ITERATIONS = 2
KDF_LANES = 1
# limits a key file's parameters must keep: up to 1 GiB and 16 passes
MAX_MEMORY_KIB = 1 << 20
MAX_ITERATIONS = 16
MAX_LANES = 16
SALT_BYTES = 16
# the total KDF work (memory KiB x passes) one open may spend trying key files: 32 key files of
# the default cost (~2.5 s); key files are tried cheapest first, so planted costly ones are
# tried last, if at all (a storage attacker can still deny service, never read or forge)
KDF_BUDGET = 32 * KDF_MEMORY_KIB * KDF_ITERATIONS
NONCE_BYTES = 12
# a key file casnap writes is ~350 bytes: one listed larger is no key file and is not read (a
# planted one of gigabytes would otherwise be read whole by every open)
MAX_KEY_FILE = 64 * 1024

# A password, or a function asked for it only when a repository turns out to be encrypted.
PasswordSource = Callable[[], str] | str


def read_password(source: PasswordSource) -> str:
    """The password a source gives (a function is called; bytes are taken as UTF-8, undecodable
    bytes kept as they are); PasswordError for anything else or an empty one."""
    value: object = source() if callable(source) else source
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    if not isinstance(value, str):
        raise PasswordError(f"a password is text, not {type(value).__name__}")
    if not value:
        raise PasswordError("the password is empty")
    return value


class Kdf(NamedTuple):
    """argon2id parameters of one key file."""

    salt: bytes
    memory_kib: int = KDF_MEMORY_KIB
    iterations: int = KDF_ITERATIONS
    lanes: int = KDF_LANES

    @property
    def cost(self) -> int:
        """The work of one derivation, in KiB x passes (what the KDF budget counts)."""
        return self.memory_kib * self.iterations

    def derive(self, password: str) -> bytes:
        from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

        if not password:
            raise PasswordError("the password is empty")
        return Argon2id(
            salt=self.salt,
            length=KEY_SIZE,
            iterations=self.iterations,
            lanes=self.lanes,
            memory_cost=self.memory_kib,
        ).derive(password.encode("utf-8", "surrogateescape"))  # bytes as the environment gave

    def to_json(self) -> dict[str, Any]:
        return {
            "name": "argon2id",
            "memory_kib": self.memory_kib,
            "iterations": self.iterations,
            "lanes": self.lanes,
            "salt": _b64(self.salt),
        }


class KeyFile(NamedTuple):
    """A parsed key file (its master key still sealed)."""

    id: str
    created: str
    kdf: Kdf
    nonce: bytes
    sealed: bytes

    @property
    def key(self) -> str:
        return KEYS + self.id

    def encode(self) -> bytes:
        doc = {
            "casnap_key": KEY_FORMAT,
            "created": self.created,
            "kdf": self.kdf.to_json(),
            "cipher": "aes-256-gcm",
            "nonce": _b64(self.nonce),
            "sealed": _b64(self.sealed),
        }
        return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"

    def unseal(self, password: str) -> MasterKey:
        """The master key; PasswordError when the password does not open this key file."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            raw = AESGCM(self.kdf.derive(password)).decrypt(self.nonce, self.sealed, self._ad())
        except InvalidTag as exc:
            raise PasswordError(f"key {self.id[:8]}: wrong password") from exc
        return MasterKey(raw)

    def _ad(self) -> bytes:
        return f"casnap key {self.id}".encode()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise TypeError("not a base64 string")
    return base64.b64decode(text, validate=True)


def make_key_file(
    master: MasterKey, password: str, created: str, kdf: Kdf | None = None
) -> KeyFile:
    """A new key file (a fresh id, salt and nonce) sealing master with password."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    kdf = kdf or Kdf(os.urandom(SALT_BYTES))
    key_id = os.urandom(ID_HEX // 2).hex()
    nonce = os.urandom(NONCE_BYTES)
    proto = KeyFile(key_id, created, kdf, nonce, b"")
    sealed = AESGCM(kdf.derive(password)).encrypt(nonce, master.raw, proto._ad())
    return KeyFile(key_id, created, kdf, nonce, sealed)


def is_key_id(name: str) -> bool:
    """Whether name is a key file's id (its name in keys/): ID_HEX lowercase hex digits."""
    return len(name) == ID_HEX and all(c in "0123456789abcdef" for c in name)


def parse_key_file(key_id: str, raw: bytes, where: str) -> KeyFile:
    """A key file's fields, checked against the limits; IntegrityError when damaged,
    UnsupportedFormat for a newer key format or another KDF."""
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise TypeError("not a JSON object")
        if doc.get("casnap_key") != KEY_FORMAT:
            raise UnsupportedFormat(
                f"{where}: key format {doc.get('casnap_key')!r} is not known to this casnap"
            )
        k = doc["kdf"]
        if k.get("name") != "argon2id" or doc.get("cipher") != "aes-256-gcm":
            raise UnsupportedFormat(
                f"{where}: key sealed with {k.get('name')!r} / {doc.get('cipher')!r}, "
                "which this casnap does not know"
            )
        kdf = Kdf(_unb64(k["salt"]), int(k["memory_kib"]), int(k["iterations"]), int(k["lanes"]))
        if not (
            8 * kdf.lanes <= kdf.memory_kib <= MAX_MEMORY_KIB
            and 1 <= kdf.iterations <= MAX_ITERATIONS
            and 1 <= kdf.lanes <= MAX_LANES
            and 8 <= len(kdf.salt) <= 64
        ):
            raise ValueError("KDF parameters outside the limits")
        nonce, sealed = _unb64(doc["nonce"]), _unb64(doc["sealed"])
        if len(nonce) != NONCE_BYTES or len(sealed) != KEY_SIZE + 16:
            raise ValueError("sealed key of the wrong size")
        created = str(doc["created"])
    except (UnsupportedFormat, IntegrityError):
        raise
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, OverflowError) as exc:
        raise IntegrityError(f"{where} is damaged: {exc}") from exc
    if not is_key_id(key_id):
        raise IntegrityError(f"{where}: not a key file name")
    return KeyFile(key_id, created, kdf, nonce, sealed)


def scan_key_files(backend: Backend) -> tuple[list[KeyFile], list[tuple[str, str]]]:
    """The usable key files (cheapest KDF first, then by id) and the unusable ones as (id,
    why): damaged, or of a format or KDF this casnap does not know. One unusable key file
    never stops the others from being used."""
    files: list[KeyFile] = []
    unusable: list[tuple[str, str]] = []
    for key, size in backend.list(KEYS):
        key_id = key.removeprefix(KEYS)
        if size > MAX_KEY_FILE:
            unusable.append((key_id, f"{size} bytes: larger than any key file ({MAX_KEY_FILE})"))
            continue
        try:
            raw = backend.get(key)
            files.append(parse_key_file(key_id, raw, f"{backend.location}/{key}"))
        except (IntegrityError, UnsupportedFormat) as exc:
            unusable.append((key_id, str(exc)))
    # the order is the cost, never a field a key file states (its `created` is not trusted)
    files.sort(key=lambda k: (k.kdf.cost, k.id))
    return files, unusable


class Unlocked(NamedTuple):
    """What opening an encrypted repository yields: the key file the password opened and the
    master key it sealed."""

    keyfile: KeyFile
    master: MasterKey


def within_budget(files: Sequence[KeyFile]) -> list[KeyFile]:
    """The key files an open tries, in their order (cheapest KDF first), as many as KDF_BUDGET
    allows in all: key files planted with costly parameters cannot stall a command for long."""
    tried, spent = [], 0
    for kf in files:
        if spent + kf.kdf.cost <= KDF_BUDGET:
            spent += kf.kdf.cost
            tried.append(kf)
    return tried


def unlock(
    backend: Backend, password: str, opens: Callable[[KeyFile, MasterKey], object] | None = None
) -> tuple[KeyFile, MasterKey]:
    """The key file the password opens and the master key it seals; PasswordError when none
    does. Key files are tried cheapest first within a total KDF budget, so key files planted
    with costly parameters cannot stall a command for long. With opens (raising IntegrityError
    for a master key that does not open the repository), a key file the password opens whose
    master key is another repository's is passed over; when no other one opens, the first
    such one's IntegrityError is raised."""
    files, unusable = scan_key_files(backend)
    if not files and not unusable:
        raise PasswordError(
            f"repository {backend.location} is encrypted but holds no key file; "
            "`casnap key import FILE` puts back an exported one"
        )
    tried = within_budget(files)
    skipped = len(files) - len(tried)
    foreign: IntegrityError | None = None
    for kf in tried:
        try:
            master = kf.unseal(password)
        except PasswordError:
            continue
        if opens is None:
            return kf, master
        try:
            opens(kf, master)
        except IntegrityError as exc:
            foreign = foreign or exc  # another repository's key sealed by the same password
            continue
        return kf, master
    if foreign is not None:
        raise foreign
    if not files:  # every key file is unusable: the password was never tried
        raise PasswordError(_none_usable(backend.location, unusable))
    passed = [f"{len(unusable)} unusable key file(s)"] if unusable else []
    passed += [f"{skipped} key file(s) too costly to try within the KDF budget"] if skipped else []
    extra = f"; passed over: {' and '.join(passed)}" if passed else ""
    raise PasswordError(  # a sealed key whose bytes were damaged fails as a wrong password does
        f"wrong password: no key of repository {backend.location} opens with it (or the key "
        f"file is damaged: `casnap key import FILE` puts back an exported copy){extra}"
    )


def _none_usable(location: str, unusable: list[tuple[str, str]]) -> str:
    """Why no key file of the repository at location can be used, in one line: the first
    unusable one and what is wrong with it (its own path left out), how many more there are,
    and how to put an exported key back."""
    key_id, why = min(unusable)
    what = why.removeprefix(f"{location}/{KEYS}{key_id}").lstrip(": ")
    named = (
        f"key file {key_id[:8]} {what}"
        if what.startswith("is ")
        else f"key file {key_id[:8]}: {what}"
    )
    more = f" (and {len(unusable) - 1} more unusable key file(s))" if len(unusable) > 1 else ""
    return (
        f"no key file of repository {location} can be used, so the password was not tried: "
        f"{named}{more}; `casnap key import FILE` puts back an exported copy"
    )


def _open_kept(
    kept: Sequence[KeyFile],
    password: str,
    raw: bytes,
    stale: Callable[[KeyFile], None] | None,
) -> tuple[bytes, tuple[KeyFile, MasterKey]] | None:
    """The plaintext of the sealed config raw and the first of kept that the password opens and
    whose master key opens raw; one the password opens that does not open raw (another
    repository's, sealed by the same password) goes to stale."""
    for kf in kept:
        try:
            master = kf.unseal(password)
        except PasswordError:
            continue
        try:
            return Sealer(master.encryption_key).open("config", raw), (kf, master)
        except IntegrityError:
            if stale is not None:
                stale(kf)
    return None


def open_config(
    backend: Backend,
    raw: bytes,
    password: PasswordSource | None,
    trusted: bool = False,
    kept: Sequence[KeyFile] = (),
    stale: Callable[[KeyFile], None] | None = None,
) -> tuple[bytes, tuple[KeyFile, MasterKey] | None]:
    """The plaintext of a repository's stored config, and for an encrypted one the key file the
    password opened with its master key. A plain config beside key files is tampering (a
    downgrade) unless trusted (one this host opened before); an unknown scheme is
    UnsupportedFormat; no password is PasswordError. Key files in kept are tried first; one
    that does not open the config goes to stale, and the stored key files are tried."""
    if not is_sealed(raw):
        if not trusted and next(iter(backend.list(KEYS)), None) is not None:
            raise IntegrityError(
                f"{backend.location}/config is not encrypted but the repository holds key "
                "files: the config was replaced (tampered with); not using it"
            )
        return raw, None
    parse_header(f"{backend.location}/config", raw)  # an unknown scheme: stop here
    if password is None:
        raise PasswordError(f"repository {backend.location} is encrypted: it needs a password")
    secret = read_password(password)
    found = _open_kept(kept, secret, raw, stale)
    if found is not None:
        return found
    opened: dict[str, bytes] = {}

    def opens(keyfile: KeyFile, master: MasterKey) -> None:
        try:
            opened["config"] = Sealer(master.encryption_key).open("config", raw)
        except IntegrityError as exc:
            raise IntegrityError(
                f"{backend.location}/config does not open with key {keyfile.id[:8]}: the config "
                "is damaged or tampered with, or the key file is another repository's"
            ) from exc

    keyfile, master = unlock(backend, secret, opens)
    return opened["config"], (keyfile, master)
