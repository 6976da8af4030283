"""The embedded keyring: data keys wrapped under the master keys of a local keyring file
(proxy/kms/keystore.py describes the file).

Wrapped data key
----------------
``key_ref`` is ``local:<key_id>:<version>`` (version in decimal, no leading zeros). ::

    wrapped = nonce (12 bytes, random) || AES-256-GCM(material of that version, nonce,
                                                      data key (32 bytes), aad)
            = 12 + 32 + 16 (tag) = 60 bytes

    aad     = b"SGWK1"
              || lp(key_ref)
              || u32(number of context entries)
              || for each (k, v) in context, sorted by k: lp(k) || lp(v)
    lp(s)   = u32(len(utf8(s))) || utf8(s)
    u32(n)  = 4-byte unsigned big-endian

Sorting by key makes the encoding independent of mapping order; length prefixes make it
injective, so no two (key_ref, context) pairs share an AAD. Unwrapping under a different
key_ref or context, or a changed wrapped key, fails the GCM tag check.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import time
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from proxy.crypto import signing
from proxy.kms import asymmetric
from proxy.kms.base import DataKey, InvalidWrappedKey, KeyAccessDenied, KeyUnavailable
from proxy.kms.keyring_handover import KeyringCopy
from proxy.kms.keyring_object import KeyringObject, ObjectLocation
from proxy.kms.keyring_watch import KeyringWatch
from proxy.kms.keystore import KEY_SIZE, NONCE_SIZE, TAG_SIZE, KeyringFileError, LocalKeyStore

WRAP_MAGIC = b"SGWK1"
WRAPPED_SIZE = NONCE_SIZE + KEY_SIZE + TAG_SIZE

_KEY_REF = re.compile(r"local:([A-Za-z0-9_.-]{1,64}):([1-9][0-9]{0,8})")

log = logging.getLogger(__name__)


def _lp(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack(">I", len(raw)) + raw


def parse_key_ref(key_ref: str) -> tuple[str, int] | None:
    """(key id, version) of a local keyring reference ``local:<key_id>:<version>``, else None."""
    m = _KEY_REF.fullmatch(key_ref)
    return (m.group(1), int(m.group(2))) if m else None


def wrap_aad(key_ref: str, context: Mapping[str, str]) -> bytes:
    """The associated data binding a wrapped key to `key_ref` and `context` (see module doc)."""
    parts = [WRAP_MAGIC, _lp(key_ref), struct.pack(">I", len(context))]
    # Code-point order equals UTF-8 byte order, so this sort is the documented one.
    for k in sorted(context):
        parts += (_lp(k), _lp(context[k]))
    return b"".join(parts)


class LocalKeyring:
    """A `Keyring` over the master keys of a `LocalKeyStore`."""

    def __init__(
        self,
        store: LocalKeyStore,
        *,
        reload_seconds: float = 1.0,
        poll_seconds: float = 5.0,
        failing: str | None = None,
        failing_since: float | None = None,
    ) -> None:
        """Serve data keys from `store`'s master keys, picking up changes to its file (new key
        versions from `sealgate keys rotate`) at most every `reload_seconds`; of a keyring
        object, every `poll_seconds` and when an object names a version it lacks. `failing`:
        why a keyring object could not be read at the start (`store` is a handed-over copy), and
        `failing_since` since when (``time.monotonic()``) the process that handed it over saw that."""
        self._store = store
        self._reload_seconds = reload_seconds
        self._checked = time.monotonic()
        self._seen = self._stat()
        self._watch: KeyringWatch | None = None
        if isinstance(store.path, KeyringObject):
            self._watch = KeyringWatch(lambda: self._store, self._adopt, poll_seconds, failing, failing_since)

    def _adopt(self, store: LocalKeyStore) -> None:
        self._store = store  # one assignment: a request sees the old keys or the new, whole

    def _stat(self) -> tuple[int, int, int] | None:
        # Every save replaces the file, so a new inode tells a change even when two saves fall
        # within one tick of the filesystem's clock (same mtime).
        if not isinstance(self._store.path, Path):
            return None
        try:
            st = self._store.path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _refresh(self, force: bool = False) -> None:
        if self._watch is not None:
            self._watch.ensure_running()
            if force:
                self._watch.look()
            return
        now = time.monotonic()
        if not force and now - self._checked < self._reload_seconds:
            return
        self._checked = now
        seen = self._stat()
        if seen is not None and seen != self._seen:
            self._seen = seen
            try:
                self._store.reload()
            except KeyringFileError as exc:
                log.error("keeping the loaded keyring: %s", exc)

    def __repr__(self) -> str:
        return f"LocalKeyring({self._store!r})"

    @property
    def path(self) -> Path | KeyringObject:
        """The keyring file, or object."""
        return self._store.path

    @property
    def location(self) -> Path | ObjectLocation:
        """The keyring file, or where the keyring object is (as ``kms.keyring`` names it)."""
        where = self._store.path
        return where.location if isinstance(where, KeyringObject) else where

    def sealed_copy(self) -> KeyringCopy | None:
        """The keyring object as this process holds it, for a replacement worker
        (proxy/kms/keyring_handover.py); None for a keyring file."""
        store = self._store
        if not isinstance(store.path, KeyringObject) or store.sealed is None:
            return None
        since = self._watch.failing_since if self._watch is not None else None
        return KeyringCopy(str(store.path.location), store.sealed, store.etag, since)

    def reopen_store(self) -> LocalKeyStore:
        """The keyring file as it is now, as a store of its own (see `LocalKeyStore.reopen`):
        key administration reads and changes the file without deriving its key again."""
        return self._store.reopen()

    def refresh(self) -> None:
        """Look at the file (or object: a request, so not on the event loop) now rather than
        within `reload_seconds` (after this process changed it)."""
        self._refresh(force=True)

    async def ready(self, key_id: str) -> None:
        """KeyAccessDenied unless `key_id` is in the keyring and enabled (readiness);
        KeyUnavailable while a keyring object cannot be read or opened (the loaded copy still
        serves, but a rotation or a disabled key elsewhere would not reach this host)."""
        self._refresh()
        if self._store.current(key_id) is None:
            raise KeyAccessDenied(f"no usable key {key_id!r} in the local keyring")
        failing = self._watch.failing if self._watch is not None else None
        if failing is not None:
            raise KeyUnavailable(f"the keyring object cannot be read, serving the copy loaded before: {failing}")

    async def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        """A fresh data key wrapped under the newest version of master key `key_id`."""
        self._refresh()
        current = self._store.current(key_id)
        if current is None:
            raise KeyAccessDenied(f"no master key {key_id!r} in the local keyring")
        return self._wrap(key_id, current, os.urandom(KEY_SIZE), context)

    def _wrap(self, key_id: str, current: tuple[int, bytes], plaintext: bytes, context: Mapping[str, str]) -> DataKey:
        version, material = current
        key_ref = f"local:{key_id}:{version}"
        aad = wrap_aad(key_ref, context)
        if self._store.key_type(key_id) == signing.KEY_TYPE:
            raise KeyAccessDenied(f"key {key_id!r} is a signing key: it wraps no data keys")
        if self._store.key_type(key_id) != "aes-256":
            # Public-key wrapping: only the private key's holder can unwrap it.
            return DataKey(plaintext, asymmetric.wrap(asymmetric.load_public(material), plaintext, aad), key_ref)
        nonce = os.urandom(NONCE_SIZE)
        sealed = AESGCM(material).encrypt(nonce, plaintext, aad)
        return DataKey(plaintext=plaintext, wrapped=nonce + sealed, key_ref=key_ref)

    async def wrap_data_key(self, key_id: str, plaintext: bytes, context: Mapping[str, str]) -> DataKey:
        """Wrap an existing data key under the newest version of `key_id` (copies, rewrap)."""
        self._refresh()
        current = self._store.current(key_id)
        if current is None:
            raise KeyAccessDenied(f"no master key {key_id!r} in the local keyring")
        return self._wrap(key_id, current, plaintext, context)

    async def decrypt_data_key(self, key_ref: str, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        """Unwrap `wrapped` with the master key version named by `key_ref` and `context`."""
        parsed = parse_key_ref(key_ref)
        if parsed is None:
            raise InvalidWrappedKey(f"{key_ref[:100]!r} is not a local keyring reference")
        key_id, version = parsed
        self._refresh()
        material = self._store.material(key_id, version)
        if material is None:
            # Another process (or host) may just have added this version: look at the keyring now.
            if self._watch is not None:
                await self._watch.look_for_miss()
            else:
                self._refresh(force=True)
            material = self._store.material(key_id, version)
        if material is None:
            newest = self._store.current(key_id)
            if newest is not None and newest[0] < version:
                # Written by a replica whose keyring is newer: one keyring file per host is not enough.
                log.error(
                    "an object names version %s of master key %r, but this keyring %s has only up to %s: "
                    "every replica must read the same keyring file (copy it after `sealgate keys rotate`), "
                    'or keep one keyring object for all: kms.keyring = "s3://bucket/key"',
                    version,
                    key_id,
                    self._store.path,
                    newest[0],
                )
            raise KeyAccessDenied(f"no version {version} of master key {key_id!r} in the local keyring")
        if self._store.key_type(key_id) == signing.KEY_TYPE:
            raise KeyAccessDenied(f"key {key_id!r} is a signing key: it wraps no data keys")
        if self._store.key_type(key_id) != "aes-256":
            private = asymmetric.load_private(material)
            if private is None:
                raise KeyAccessDenied(
                    f"key {key_id!r} is encrypt-only here: this keyring holds only its public key, so objects "
                    "sealed under it can be read only where the private key is"
                )
            return asymmetric.unwrap(private, wrapped, wrap_aad(key_ref, context))
        if len(wrapped) != WRAPPED_SIZE:
            raise InvalidWrappedKey(f"wrapped key under {key_ref} has the wrong length")
        try:
            return AESGCM(material).decrypt(wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], wrap_aad(key_ref, context))
        except InvalidTag:
            raise InvalidWrappedKey(
                f"wrapped key does not unwrap under {key_ref} with this encryption context"
            ) from None

    def signer(self) -> tuple[str, bytes] | None:
        """(key reference, Ed25519 seed) of the newest version of this keyring's signing key,
        which signs every object this gateway writes; None without one (or when it is disabled)."""
        self._refresh()
        key_id = self._store.signing_key_id()
        current = self._store.current(key_id) if key_id is not None else None
        if key_id is None or current is None:
            return None
        return f"local:{key_id}:{current[0]}", current[1]

    def s3ec_wrapping_key(self, key_id: str) -> tuple[str, bytes]:
        """(key reference, raw 256-bit material) of the newest version of symmetric key `key_id`,
        for the AWS S3 Encryption Client's AES/GCM key wrapping, which needs the raw key."""
        self._refresh()
        current = self._store.current(key_id)
        if current is None:
            raise KeyAccessDenied(f"no master key {key_id!r} in the local keyring")
        if self._store.key_type(key_id) != "aes-256":
            raise KeyAccessDenied(f"key {key_id!r} is not an AES-256 key: S3EC AES/GCM wrapping needs one")
        version, material = current
        return f"local:{key_id}:{version}", material

    def s3ec_unwrapping_keys(self, key_id: str) -> list[tuple[str, bytes | rsa.RSAPrivateKey]]:
        """Every version of `key_id`, newest first, as S3EC unwraps with it: raw material of an
        AES-256 key (AES/GCM), or the private key of an RSA key (RSA-OAEP-SHA1). S3EC objects
        record no key id or version, so a reader tries each."""
        self._refresh()
        versions = self._store.versions(key_id)
        if versions is None:
            raise KeyAccessDenied(f"no usable master key {key_id!r} in the local keyring")
        symmetric = self._store.key_type(key_id) == "aes-256"
        out: list[tuple[str, bytes | rsa.RSAPrivateKey]] = []
        for version, material in versions:
            ref = f"local:{key_id}:{version}"
            if symmetric:
                out.append((ref, material))
                continue
            private = asymmetric.load_private(material)
            if isinstance(private, rsa.RSAPrivateKey):
                out.append((ref, private))
        return out

    async def close(self) -> None:
        """Stop watching a keyring object; the keys live in memory."""
        if self._watch is not None:
            self._watch.close()
