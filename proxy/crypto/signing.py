"""Sender signatures (``sg-sig``): an Ed25519 signature by the writing gateway over what commits a
stored object, so that readers of a key whose objects anyone with its public key can produce
(encrypt-only gateways) accept only objects a trusted gateway wrote.

Pure: bytes and values in and out. docs/FORMAT.md §3a is the prose specification::

    signed = "sealgate/1/signature" ‖ 00
             ‖ lp(bucket) ‖ lp(key) ‖ lp(sg-layout) ‖ lp(scope) ‖ salt(32) ‖ commitment(32)
             ‖ u32be(segment size) ‖ lp(sealed metadata) ‖ lp(name tag)
             ‖ single:    u64be(plaintext length)
               multipart: SHA-256(the sealed manifest, as stored)
    lp(x)  = u32be(len(x)) ‖ x                     (names and values in UTF-8)

The key reference and the wrapped data key are not signed: the commitment already binds the data
key, and `sealgate rewrap` re-wraps it under another master key without re-signing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Iterable
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from proxy.crypto.format import Envelope, IntegrityError

#: The keyring type of a signing key; its material is the 32-byte Ed25519 private key (seed).
KEY_TYPE: Final = "ed25519-signing"
#: How a public signing key is written in config (``trusted_signers``) and printed by the CLI.
PUBLIC_PREFIX: Final = "ed25519:"
SEED_SIZE: Final = 32
PUBLIC_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64
_DOMAIN: Final = b"sealgate/1/signature\x00"


def _lp(raw: bytes) -> bytes:
    return struct.pack(">I", len(raw)) + raw


def signed_bytes(env: Envelope, bucket: str, key: str, body: bytes) -> bytes:
    """The exact message signed for `env` stored as `bucket`/`key`; `body` is `single_body` or
    `multipart_body`."""
    return b"".join(
        (
            _DOMAIN,
            _lp(bucket.encode()),
            _lp(key.encode()),
            _lp(env.layout.encode()),
            _lp(env.scope.encode()),
            env.salt,
            env.commitment,
            struct.pack(">I", env.segment_size),
            _lp(env.sealed),
            _lp(env.name_tag),
            body,
        )
    )


def single_body(plaintext_length: int) -> bytes:
    """What commits a single-stream object's body: its plaintext length (the stream's segments
    are authenticated under the committed data key, and the last one is flagged)."""
    return struct.pack(">Q", plaintext_length)


def multipart_body(sealed_manifest: bytes) -> bytes:
    """What commits a multipart object's body: its sealed manifest (parts, lengths, backend ETag)."""
    return hashlib.sha256(sealed_manifest).digest()


def generate_seed() -> bytes:
    """A new Ed25519 private key (its 32-byte seed)."""
    return Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def public_key(seed: bytes) -> bytes:
    """The 32-byte public key of a seed."""
    return _private(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def public_text(public: bytes) -> str:
    """``ed25519:<b64>``: the form config and the CLI use."""
    return PUBLIC_PREFIX + base64.b64encode(public).decode("ascii")


def parse_public(text: str) -> bytes:
    """The 32 bytes of an ``ed25519:<b64>`` public key; ValueError naming what is wrong."""
    if not text.startswith(PUBLIC_PREFIX):
        raise ValueError(f'a signer key is "{PUBLIC_PREFIX}<base64 of 32 bytes>", got {text[:40]!r}')
    try:
        raw = base64.b64decode(text[len(PUBLIC_PREFIX) :].encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("the signer key is not valid base64") from None
    if len(raw) != PUBLIC_SIZE:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_SIZE} bytes, this one {len(raw)}")
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise ValueError(f"not an Ed25519 public key: {exc}") from None
    return raw


def _private(seed: bytes) -> Ed25519PrivateKey:
    if len(seed) != SEED_SIZE:
        raise ValueError(f"an Ed25519 signing key is {SEED_SIZE} bytes")
    return Ed25519PrivateKey.from_private_bytes(seed)


def encode_signature(signature: bytes) -> str:
    """A signature as metadata holds it (b64)."""
    return base64.b64encode(signature).decode("ascii")


def decode_signature(text: str) -> bytes:
    """Inverse of `encode_signature` (b"" for ""); ValueError when it is not base64."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("the sender signature is not valid base64") from None


def sign(seed: bytes, message: bytes) -> bytes:
    """The 64-byte Ed25519 signature of `message` (deterministic, RFC 8032)."""
    return _private(seed).sign(message)


def check(signature: bytes, message: bytes, trusted: Iterable[bytes]) -> bytes:
    """The trusted public key that signed `message`; IntegrityError when none did (or the
    object carries no signature)."""
    if not signature:
        raise IntegrityError("object carries no sender signature, and its key trusts only signed objects")
    if len(signature) == SIGNATURE_SIZE:
        for public in trusted:
            try:
                Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
            except InvalidSignature:
                continue
            return public
    raise IntegrityError("object's sender signature is not by a trusted signer of its key")
