"""The local keyring file: named master keys, sealed under a passphrase (load, change, save).

The keyring that serves data keys from these master keys is `proxy.kms.local.LocalKeyring`.

Keyring file (``SGKR1``)
------------------------
All integers are unsigned big-endian::

    offset  size  field
    0       5     magic  b"SGKR1"
    5       1     log2(scrypt N)          (15 when written by this version)
    6       4     scrypt r                (8)
    10      4     scrypt p                (1)
    14      16    scrypt salt             (random, fresh per file)
    --- the 30 bytes above are the header; they are the AES-GCM associated data ---
    30      12    AES-GCM nonce           (random, fresh per save)
    42      ...   AES-256-GCM(KEK, nonce, JSON document, aad=header) incl. 16-byte tag

    KEK = scrypt(passphrase, salt, N, r, p, length=32)

The JSON document (UTF-8)::

    {"format": 1,
     "keys": [{"id": "default", "type": "aes-256", "origin": "generated"|"imported",
               "created": "2025-01-01T00:00:00Z", "rotation_period_days": null,
               "versions": [{"version": 1, "material": "<base64 of 32 bytes>",
                             "created": "2025-01-01T00:00:00Z"}]}]}

Unknown fields on a key are kept as they are, so a newer writer's additions survive a save.
The newest version of a key wraps new data keys; every version still unwraps.

The same bytes may live as an object on the S3 backend instead of a file, for several hosts to
share (proxy/kms/keyring_object.py); proxy/kms/keyring_edits.py changes either kind without
losing a concurrent change.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from proxy.crypto import signing
from proxy.kms import asymmetric
from proxy.kms.keyring_object import KeyringObject
from proxy.kms.secret_files import KeyringFileError as KeyringFileError
from proxy.kms.secret_files import passphrase_from as passphrase_from
from proxy.kms.secret_files import read_private, write_atomic

FORMAT_VERSION = 1
MAGIC = b"SGKR1"
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
SALT_SIZE = 16
SCRYPT_LOG2_N = 15
SCRYPT_R = 8
SCRYPT_P = 1

_HEADER = struct.Struct(">5sBII16s")
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Bounds on scrypt parameters read from a file: a corrupt or hostile header must not make
# opening the file take minutes or gigabytes.
_MAX_LOG2_N = 20
_MAX_R = 32
_MAX_P = 16

#: Where a keyring lives: a file, or an object on the backend.
Where = Path | KeyringObject


#: Generated keys rotate yearly unless told otherwise (as AWS KMS does).
DEFAULT_ROTATION_DAYS = 365


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown about a master key: never its material."""

    id: str
    versions: int
    current_version: int
    created: datetime
    origin: str
    type: str = "aes-256"
    #: Days between automatic rotations; None for keys that rotate only by hand (imported ones).
    rotation_period_days: int | None = None
    last_rotated: datetime | None = None


@dataclass
class _Version:
    version: int
    material: bytes = field(repr=False)
    created: str


@dataclass
class _MasterKey:
    id: str
    created: str
    origin: str
    versions: list[_Version]
    # Fields this version does not interpret (type, rotation period, later additions).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def current(self) -> _Version:
        return max(self.versions, key=lambda v: v.version)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


#: scrypt runs in this process so far: each costs tens of milliseconds of CPU (by design), so
#: nothing a client can trigger at will may cause one; tests watch this count.
derivations = 0


def _derive_kek(passphrase: bytes, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    global derivations
    derivations += 1
    return Scrypt(salt=salt, length=KEY_SIZE, n=1 << log2_n, r=r, p=p).derive(passphrase)


def _malformed(path: Where, why: str) -> KeyringFileError:
    return KeyringFileError(f"malformed {_kind(path)} {path}: {why}")


def _load_keys(path: Where, doc: Any) -> dict[str, _MasterKey]:
    if not isinstance(doc, dict):
        raise _malformed(path, "not a JSON object")
    if doc.get("format") != FORMAT_VERSION:
        raise KeyringFileError(
            f"{_kind(path)} {path} has format {doc.get('format')!r}; this version reads format {FORMAT_VERSION}"
        )
    raw_keys = doc.get("keys")
    if not isinstance(raw_keys, list):
        raise _malformed(path, "'keys' is not a list")
    keys: dict[str, _MasterKey] = {}
    for raw in raw_keys:
        if not isinstance(raw, dict):
            raise _malformed(path, "a key entry is not an object")
        extra = dict(raw)
        try:
            key_id = extra.pop("id")
            created = extra.pop("created")
            origin = extra.pop("origin")
            raw_versions = extra.pop("versions")
        except KeyError as e:
            raise _malformed(path, f"a key lacks {e.args[0]!r}") from None
        if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
            raise _malformed(path, f"invalid key id {key_id!r}")
        if key_id in keys:
            raise _malformed(path, f"key {key_id!r} appears twice")
        if not isinstance(created, str) or not isinstance(origin, str):
            raise _malformed(path, f"key {key_id!r}: 'created' and 'origin' must be strings")
        if not isinstance(raw_versions, list) or not raw_versions:
            raise _malformed(path, f"key {key_id!r} has no versions")
        versions: list[_Version] = []
        for rv in raw_versions:
            try:
                number, material_b64, v_created = rv["version"], rv["material"], rv["created"]
                material = base64.b64decode(material_b64, validate=True)
            except (TypeError, KeyError, binascii.Error):
                raise _malformed(path, f"key {key_id!r} has a malformed version") from None
            if (
                not isinstance(number, int)
                or isinstance(number, bool)
                or not 1 <= number < 10**9
                or not isinstance(v_created, str)
                or (extra.get("type", "aes-256") == "aes-256" and len(material) != KEY_SIZE)
            ):
                raise _malformed(path, f"key {key_id!r} has a malformed version")
            if any(v.version == number for v in versions):
                raise _malformed(path, f"key {key_id!r} has version {number} twice")
            versions.append(_Version(number, material, v_created))
        keys[key_id] = _MasterKey(key_id, created, origin, versions, extra)
    return keys


@contextlib.contextmanager
def keyring_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for a read-modify-write of the keyring file at `path`.

    Two rotations that each read the file and write it back would both create "version N+1"
    with different material; a process that picked up the first one in between would seal
    objects under material the second write erases. The lock (``flock`` on a sibling file, so
    atomic replacement of the keyring does not drop it) serialises them across threads and
    processes that take it."""
    try:
        fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:
        yield  # no such directory, so no keyring: opening it reports that
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _kind(where: Where) -> str:
    return "keyring file" if isinstance(where, Path) else "keyring object"


def _read_blob(where: Where) -> tuple[bytes, str | None]:
    """The sealed keyring and, for an object, its ETag."""
    if isinstance(where, Path):
        return read_private(where, "keyring file"), None
    got = where.get()
    assert got is not None  # no If-None-Match asked
    return got


class LocalKeyStore:
    """The keyring file: load, change and save named master keys. Synchronous."""

    def __init__(
        self,
        path: Where,
        kek: bytes,
        salt: bytes,
        params: tuple[int, int, int],
        keys: dict[str, _MasterKey],
        etag: str | None = None,
        sealed: bytes | None = None,
    ) -> None:
        """Use `create` or `open`; this takes an already derived KEK."""
        self.path = path
        #: The ETag of the keyring object as it was read (None for a file): `save` replaces
        #: only that one, and a watcher asks for the object only if it has changed since.
        self.etag = etag
        #: The keyring as read or saved, still sealed under the passphrase's key (a keyring
        #: object's copy for a worker that starts while the object cannot be read).
        self.sealed = sealed
        # The KEK, not the passphrase, is kept so `save` needs no second scrypt run; each
        # save draws a fresh random nonce, so reusing the KEK across saves is safe.
        self._kek = kek
        self._salt = salt
        self._params = params
        self._keys = keys

    def __repr__(self) -> str:
        return f"LocalKeyStore({str(self.path)!r}, keys={len(self._keys)})"

    @classmethod
    def create(cls, path: Where, passphrase: bytes) -> LocalKeyStore:
        """Create a new, empty keyring at `path`; fails if it already exists."""
        if not isinstance(path, KeyringObject):
            path = Path(path)
        if not passphrase:
            raise KeyringFileError("refusing an empty keyring passphrase")
        if isinstance(path, Path) and path.exists():
            raise KeyringFileError(f"keyring file {path} already exists")
        salt = os.urandom(SALT_SIZE)
        params = (SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P)
        store = cls(path, _derive_kek(passphrase, salt, *params), salt, params, {})
        store._write(exclusive=True)
        return store

    @classmethod
    def open(cls, path: Where, passphrase: bytes, *, copy: tuple[bytes, str | None] | None = None) -> LocalKeyStore:
        """Open and decrypt the keyring file (or object) at `path`; given `copy` (the sealed
        bytes and ETag of the object as another process read it), that instead of reading."""
        if not isinstance(path, KeyringObject):
            path = Path(path)
        blob, etag = copy if copy is not None else _read_blob(path)
        if len(blob) < _HEADER.size + NONCE_SIZE + TAG_SIZE or not blob.startswith(MAGIC):
            raise KeyringFileError(f"{path} is not a sealgate keyring{' file' if isinstance(path, Path) else ''}")
        header = blob[: _HEADER.size]
        _, log2_n, r, p, salt = _HEADER.unpack(header)
        if not (1 <= log2_n <= _MAX_LOG2_N and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
            raise KeyringFileError(
                f"{_kind(path)} {path} has unsupported scrypt parameters (N=2**{log2_n}, r={r}, p={p})"
            )
        kek = _derive_kek(passphrase, salt, log2_n, r, p)
        nonce = blob[_HEADER.size : _HEADER.size + NONCE_SIZE]
        try:
            plain = AESGCM(kek).decrypt(nonce, blob[_HEADER.size + NONCE_SIZE :], header)
        except InvalidTag:
            raise KeyringFileError(
                f"cannot open {_kind(path)} {path}: wrong passphrase or corrupted {_kind(path)}"
            ) from None
        try:
            doc = json.loads(plain)
        except ValueError:
            raise _malformed(path, "not valid JSON") from None
        return cls(path, kek, salt, (log2_n, r, p), _load_keys(path, doc), etag, blob)

    def reload(self) -> bool:
        """Re-read the file if another process changed it (e.g. `sealgate keys rotate`); True
        when keys were reloaded. The file must still be sealed under the same passphrase."""
        blob, etag = _read_blob(self.path)
        self._keys, self.etag, self.sealed = self._read_keys(blob), etag, blob
        return True

    def reopen(self, fetched: tuple[bytes, str | None] | None = None) -> LocalKeyStore:
        """A separate store holding the keyring as it is now (or as `fetched`: bytes and ETag),
        decrypted with this store's KEK: no scrypt run. For a read-modify-write (`edit`) that
        must not touch the keys this store serves until it is saved. KeyringFileError as for `reload`."""
        blob, etag = fetched if fetched is not None else _read_blob(self.path)
        return LocalKeyStore(self.path, self._kek, self._salt, self._params, self._read_keys(blob), etag, blob)

    def _read_keys(self, blob: bytes) -> dict[str, _MasterKey]:
        header = blob[: _HEADER.size]
        if header != _HEADER.pack(MAGIC, *self._params, self._salt):
            raise KeyringFileError(f"{_kind(self.path)} {self.path} was re-keyed; restart sealgate to open it")
        nonce = blob[_HEADER.size : _HEADER.size + NONCE_SIZE]
        try:
            plain = AESGCM(self._kek).decrypt(nonce, blob[_HEADER.size + NONCE_SIZE :], header)
        except InvalidTag:
            raise KeyringFileError(f"{_kind(self.path)} {self.path} is corrupted") from None
        try:
            doc = json.loads(plain)
        except ValueError:
            raise _malformed(self.path, "not valid JSON") from None
        return _load_keys(self.path, doc)

    def create_key(self, key_id: str) -> KeyInfo:
        """Add master key `key_id` with fresh random material as version 1 (not yet saved)."""
        if not _KEY_ID.fullmatch(key_id):
            raise KeyringFileError(f"invalid key id {key_id!r}: use 1-64 of the characters A-Z a-z 0-9 _ . -")
        if key_id in self._keys:
            raise KeyringFileError(f"key {key_id!r} already exists in {self.path}")
        now = _now()
        key = _MasterKey(
            key_id,
            now,
            "generated",
            [_Version(1, os.urandom(KEY_SIZE), now)],
            {"type": "aes-256", "rotation_period_days": DEFAULT_ROTATION_DAYS},
        )
        self._keys[key_id] = key
        return self._info(key)

    def key_type(self, key_id: str) -> str:
        """aes-256, rsa-3072, rsa-4096, ec-p256, ec-p384 or ed25519-signing."""
        key = self._keys.get(key_id)
        return str(key.extra.get("type", "aes-256")) if key is not None else "aes-256"

    def create_asymmetric_key(self, key_id: str, key_type: str) -> KeyInfo:
        """A generated RSA or EC key pair (private key kept; `public_key_pem` gives the public), or the
        keyring's one ``ed25519-signing`` key (its seed), which signs what its gateway writes."""
        if not _KEY_ID.fullmatch(key_id):
            raise KeyringFileError(f"invalid key id {key_id!r}: use 1-64 of the characters A-Z a-z 0-9 _ . -")
        if key_id in self._keys:
            raise KeyringFileError(f"key {key_id!r} already exists in {self.path}")
        if key_type == signing.KEY_TYPE and self.signing_key_id() is not None:
            raise KeyringFileError(f"{self.path} already has signing key {self.signing_key_id()!r}: rotate it")
        try:
            der = signing.generate_seed() if key_type == signing.KEY_TYPE else asymmetric.generate(key_type)
        except ValueError as exc:
            raise KeyringFileError(str(exc)) from None
        now = _now()
        self._keys[key_id] = _MasterKey(
            key_id, now, "generated", [_Version(1, der, now)], {"type": key_type, "rotation_period_days": None}
        )
        return self._info(self._keys[key_id])

    def import_asymmetric_key(self, key_id: str, pem: bytes) -> KeyInfo:
        """Import a PEM key pair, or only a public key: then this keyring can encrypt, never decrypt."""
        from cryptography.hazmat.primitives import serialization

        if key_id in self._keys:
            raise KeyringFileError(f"key {key_id!r} already exists in {self.path}")
        try:
            try:
                loaded: Any = serialization.load_pem_private_key(pem, None)
                der = loaded.private_bytes(
                    serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            except ValueError:
                loaded = serialization.load_pem_public_key(pem)
                der = loaded.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            key_type = asymmetric.key_type_of(der)
        except (ValueError, TypeError) as exc:
            raise KeyringFileError(f"not a usable PEM key: {exc}") from None
        now = _now()
        self._keys[key_id] = _MasterKey(
            key_id, now, "imported", [_Version(1, der, now)], {"type": key_type, "rotation_period_days": None}
        )
        return self._info(self._keys[key_id])

    def public_key_pem(self, key_id: str) -> bytes:
        """The current public key of an asymmetric key, PEM; of a signing key, the line
        ``ed25519:<b64>`` that readers list in ``trusted_signers``."""
        key = self._keys.get(key_id)
        if key is None or self.key_type(key_id) == "aes-256":
            raise KeyringFileError(f"{key_id!r} is not an asymmetric key in {self.path}")
        if self.key_type(key_id) == signing.KEY_TYPE:
            return (signing.public_text(signing.public_key(key.current.material)) + "\n").encode()
        return asymmetric.public_pem(key.current.material)

    def signing_key_id(self) -> str | None:
        """The id of this keyring's ``ed25519-signing`` key, if it has one (enabled or not)."""
        return next((k for k in sorted(self._keys) if self.key_type(k) == signing.KEY_TYPE), None)

    def import_key(self, key_id: str, material: bytes) -> KeyInfo:
        """Add master key `key_id` with given 256-bit material; imported keys rotate only by hand."""
        if not _KEY_ID.fullmatch(key_id):
            raise KeyringFileError(f"invalid key id {key_id!r}: use 1-64 of the characters A-Z a-z 0-9 _ . -")
        if key_id in self._keys:
            raise KeyringFileError(f"key {key_id!r} already exists in {self.path}")
        if len(material) != KEY_SIZE:
            raise KeyringFileError(f"imported key material must be {KEY_SIZE} bytes, got {len(material)}")
        now = _now()
        key = _MasterKey(
            key_id, now, "imported", [_Version(1, material, now)], {"type": "aes-256", "rotation_period_days": None}
        )
        self._keys[key_id] = key
        return self._info(key)

    def rotate_key(self, key_id: str, material: bytes | None = None) -> KeyInfo:
        """A new current version (fresh material, or given material for imported keys); older
        versions stay, so objects sealed under them still decrypt. Not yet saved."""
        key = self._keys.get(key_id)
        if key is None:
            raise KeyringFileError(f"no key {key_id!r} in {self.path}")
        if key.origin == "imported" and material is None:
            raise KeyringFileError(f"key {key_id!r} is imported: rotate it with new material (keys import --rotate)")
        if material is not None and len(material) != KEY_SIZE:
            raise KeyringFileError(f"key material must be {KEY_SIZE} bytes, got {len(material)}")
        kind = self.key_type(key_id)
        if kind == "aes-256":
            fresh = material or os.urandom(KEY_SIZE)
        else:
            fresh = material or (signing.generate_seed() if kind == signing.KEY_TYPE else asymmetric.generate(kind))
        key.versions.append(_Version(key.current.version + 1, fresh, _now()))
        return self._info(key)

    def due_for_rotation(self, now: datetime | None = None) -> list[str]:
        """Generated keys whose rotation period has passed since their current version."""
        now = now or datetime.now(UTC)
        due = []
        for key in self._keys.values():
            days = key.extra.get("rotation_period_days")
            if key.origin != "generated" or not isinstance(days, int) or days <= 0:
                continue
            if (now - _parse_time(key.current.created)).total_seconds() >= days * 86400:
                due.append(key.id)
        return sorted(due)

    def list_keys(self) -> list[KeyInfo]:
        """All master keys, sorted by id, without material."""
        return [self._info(self._keys[k]) for k in sorted(self._keys)]

    def save(self) -> None:
        """Encrypt and write the keyring atomically, mode 0600."""
        self._write(exclusive=False)

    @staticmethod
    def _info(key: _MasterKey) -> KeyInfo:
        days = key.extra.get("rotation_period_days")
        return KeyInfo(
            id=key.id,
            versions=len(key.versions),
            current_version=key.current.version,
            created=_parse_time(key.created),
            origin=key.origin,
            type=str(key.extra.get("type", "aes-256")),
            rotation_period_days=days if isinstance(days, int) else None,
            last_rotated=_parse_time(key.current.created) if len(key.versions) > 1 else None,
        )

    def set_enabled(self, key_id: str, enabled: bool) -> None:
        """Disable (or re-enable) a key: a disabled key neither wraps nor unwraps. Not yet saved."""
        key = self._keys.get(key_id)
        if key is None:
            raise KeyringFileError(f"no key {key_id!r} in {self.path}")
        key.extra["enabled"] = enabled

    def _usable(self, key_id: str) -> _MasterKey | None:
        key = self._keys.get(key_id)
        if key is None or key.extra.get("enabled") is False:
            return None
        return key

    def current(self, key_id: str) -> tuple[int, bytes] | None:
        """(version, material) of the newest version of `key_id`; None unless it exists and is enabled."""
        key = self._usable(key_id)
        if key is None:
            return None
        current = key.current
        return current.version, current.material

    def versions(self, key_id: str) -> list[tuple[int, bytes]] | None:
        """(version, material) of every version of `key_id`, newest first; None unless it exists
        and is enabled."""
        key = self._usable(key_id)
        if key is None:
            return None
        return [(v.version, v.material) for v in sorted(key.versions, key=lambda v: v.version, reverse=True)]

    def material(self, key_id: str, version: int) -> bytes | None:
        """The material of version `version` of `key_id`; None unless both exist and the key is enabled."""
        key = self._usable(key_id)
        if key is None:
            return None
        for v in key.versions:
            if v.version == version:
                return v.material
        return None

    def _document(self) -> bytes:
        keys = []
        for key_id in sorted(self._keys):
            key = self._keys[key_id]
            entry: dict[str, Any] = {"id": key.id, **key.extra}
            entry.update(
                created=key.created,
                origin=key.origin,
                versions=[
                    {
                        "version": v.version,
                        "material": base64.b64encode(v.material).decode(),
                        "created": v.created,
                    }
                    for v in sorted(key.versions, key=lambda v: v.version)
                ],
            )
            keys.append(entry)
        return json.dumps({"format": FORMAT_VERSION, "keys": keys}, indent=1).encode()

    def _write(self, *, exclusive: bool) -> None:
        header = _HEADER.pack(MAGIC, *self._params, self._salt)
        nonce = os.urandom(NONCE_SIZE)
        blob = header + nonce + AESGCM(self._kek).encrypt(nonce, self._document(), header)
        if isinstance(self.path, KeyringObject):
            self.etag = self.path.put(blob, None if exclusive else self.etag)
        else:
            write_atomic(self.path, blob, exclusive=exclusive)
        self.sealed = blob
