"""S3EC data keys, pure: the V3 key derivation and key-commitment check, content materials
from an unwrapped data key, and the AES/GCM and RSA-OAEP-SHA1 key wrappings (whose keys are
raw bytes held by the caller; KMS unwrapping is the object layer's, proxy/store/s3ec.py).

A key that does not open, or opens to the wrong size, is `S3ecKeyError`; a V3 commitment that
does not match is `IntegrityError`."""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from proxy.crypto.format import IntegrityError
from proxy.crypto.s3ec import (
    CEK_ALG_V2,
    COMMITMENT_SIZE,
    DATA_KEY_SIZE,
    FORMAT_V1,
    FORMAT_V2,
    FORMAT_V3,
    IV_SIZE,
    MESSAGE_ID_SIZE,
    SUITE_V3,
    SUITE_V3_ID,
    TAG_SIZE,
    V3_IV,
    WRAP_AES_GCM,
    WRAP_RSA_OAEP_SHA1,
    S3ecEnvelope,
    S3ecFormatError,
    S3ecKeyError,
    S3ecMaterials,
    parse,
)

#: AAD for AES/GCM key wrapping: the content cipher name. Checked for V2 against the Java
#: client's AesKeyring design (IV(12) || AES-GCM(KEK, IV, data key, AAD) incl. tag); the
#: official Python client has no AES keyring, so this could not be verified against it. For
#: V3 sealgate writes "AES/GCM/NoPadding" (the Java JCE name of the suite-115 cipher) and on
#: read also accepts "115"; GCM makes trying a fixed list of AADs safe.
AES_WRAP_AAD_V2: Final = CEK_ALG_V2.encode()
AES_WRAP_AADS_V3: Final = (CEK_ALG_V2.encode(), SUITE_V3.encode())
AES_WRAPPED_SIZE: Final = IV_SIZE + DATA_KEY_SIZE + TAG_SIZE


def derive_v3_keys(data_key: bytes, message_id: bytes) -> tuple[bytes, bytes]:
    """(encryption key, commitment) for suite 115, exactly as the official client derives them."""
    if len(data_key) != DATA_KEY_SIZE:
        raise S3ecKeyError(f"S3EC data key is {len(data_key)} bytes, not {DATA_KEY_SIZE}")
    if len(message_id) != MESSAGE_ID_SIZE:
        raise S3ecFormatError(f"S3EC message id is {len(message_id)} bytes, not {MESSAGE_ID_SIZE}")
    prk = hmac.new(message_id, data_key, "sha512").digest()
    enc_key = HKDFExpand(hashes.SHA512(), DATA_KEY_SIZE, SUITE_V3_ID + b"DERIVEKEY").derive(prk)
    commitment = HKDFExpand(hashes.SHA512(), COMMITMENT_SIZE, SUITE_V3_ID + b"COMMITKEY").derive(prk)
    return enc_key, commitment


def materials(envelope: S3ecEnvelope, data_key: bytes) -> S3ecMaterials:
    """Content materials from an unwrapped data key; for V3 the key commitment is checked here,
    in constant time, before any content is decrypted (`IntegrityError` if it differs)."""
    if len(data_key) != DATA_KEY_SIZE:
        raise S3ecKeyError(f"S3EC data key is {len(data_key)} bytes, not {DATA_KEY_SIZE}")
    if envelope.version == FORMAT_V2:
        return S3ecMaterials(version=FORMAT_V2, content_key=data_key, iv=envelope.iv, aad=b"")
    enc_key, commitment = derive_v3_keys(data_key, envelope.message_id)
    if not hmac.compare_digest(commitment, envelope.commitment):
        raise IntegrityError("S3EC key commitment does not match the data key (tampered metadata)")
    return S3ecMaterials(
        version=FORMAT_V3,
        content_key=enc_key,
        iv=V3_IV,
        aad=SUITE_V3_ID,
        message_id=envelope.message_id,
        name_key=_name_key(data_key),
    )


# -- the name binding sealgate writes into a V3 message id ------------------------------------
#
# Where S3EC authenticates nothing of the name: AES/GCM wrapping's AAD is the fixed cipher name
# and RSA-OAEP's pseudo data key holds only the key and that name; x-amz-m is not authenticated.
# The V3 message id is (the key commitment covers it: commitment = HKDF(HMAC(message id, data
# key))), and readers treat it as an opaque 28-byte salt. So sealgate writes
#   message id = nonce (12 random bytes) || marker (8) || name tag (8)
#   marker     = HMAC-SHA256(N, "marker" || nonce)[:8]
#   name tag   = HMAC-SHA256(N, "name" || nonce || len(bucket) (2 bytes) || bucket || UTF-8 key)[:8]
#   N          = HMAC-SHA256(data key, "sealgate s3ec name binding v1")
# Only the holder of the data key makes either; a valid marker says sealgate bound a name, so a
# moved object (marker good, tag bad) is told apart from a foreign one (marker bad).

_NAME_NONCE: Final = 12
_NAME_TAG: Final = 8


def _name_key(data_key: bytes) -> bytes:
    return hmac.new(data_key, b"sealgate s3ec name binding v1", "sha256").digest()


def _name_tags(name_key: bytes, nonce: bytes, bucket: str, key: str) -> tuple[bytes, bytes]:
    marker = hmac.new(name_key, b"marker" + nonce, "sha256").digest()[:_NAME_TAG]
    raw_bucket = bucket.encode()
    name = b"name" + nonce + len(raw_bucket).to_bytes(2, "big") + raw_bucket + key.encode("utf-8", "surrogatepass")
    return marker, hmac.new(name_key, name, "sha256").digest()[:_NAME_TAG]


def bound_message_id(data_key: bytes, bucket: str, key: str) -> bytes:
    """A V3 message id (28 bytes, 12 of them random) that binds the object to `bucket`/`key`."""
    nonce = os.urandom(_NAME_NONCE)
    marker, tag = _name_tags(_name_key(data_key), nonce, bucket, key)
    return nonce + marker + tag


def name_binding(materials: S3ecMaterials, bucket: str, key: str) -> bool | None:
    """Whether a V3 object's message id binds it to `bucket`/`key` (`bound_message_id`): True
    if so, False if it binds another name, None if it binds none (not written by sealgate)."""
    if materials.version != FORMAT_V3 or len(materials.message_id) != MESSAGE_ID_SIZE:
        return None
    nonce = materials.message_id[:_NAME_NONCE]
    marker, tag = _name_tags(materials.name_key, nonce, bucket, key)
    if not hmac.compare_digest(marker, materials.message_id[_NAME_NONCE : _NAME_NONCE + _NAME_TAG]):
        return None
    return hmac.compare_digest(tag, materials.message_id[_NAME_NONCE + _NAME_TAG :])


def legacy_materials(envelope: S3ecEnvelope, data_key: bytes) -> S3ecMaterials:
    """Content materials for an AES-CBC object (`parse_legacy`) from its unwrapped data key."""
    if len(data_key) != DATA_KEY_SIZE:
        raise S3ecKeyError(f"S3EC data key is {len(data_key)} bytes, not {DATA_KEY_SIZE}")
    return S3ecMaterials(version=FORMAT_V1, content_key=data_key, iv=envelope.iv, aad=b"")


def wrap_aes_gcm(kek: bytes, data_key: bytes, *, version: str = FORMAT_V3) -> bytes:
    """AES/GCM key wrapping: IV(12) || AES-256-GCM(kek, IV, data key, AAD) || tag."""
    if len(kek) != DATA_KEY_SIZE or len(data_key) != DATA_KEY_SIZE:
        raise ValueError("AES/GCM wrapping needs a 32-byte key and a 32-byte data key")
    aad = AES_WRAP_AAD_V2 if version == FORMAT_V2 else AES_WRAP_AADS_V3[0]
    iv = os.urandom(IV_SIZE)
    return iv + AESGCM(kek).encrypt(iv, data_key, aad)


def unwrap_aes_gcm(envelope: S3ecEnvelope, kek: bytes) -> bytes:
    """The data key of an AES/GCM-wrapped envelope under the raw 32-byte key `kek`."""
    if envelope.wrap_alg != WRAP_AES_GCM:
        raise S3ecFormatError(f"S3EC data key is wrapped with {envelope.wrap_alg}, not {WRAP_AES_GCM}")
    if len(kek) != DATA_KEY_SIZE:
        raise ValueError("AES/GCM unwrapping needs a 32-byte key")
    wrapped = envelope.wrapped_key
    if len(wrapped) != AES_WRAPPED_SIZE:
        raise S3ecKeyError(f"S3EC AES/GCM wrapped key is {len(wrapped)} bytes, not {AES_WRAPPED_SIZE}")
    aads = (AES_WRAP_AAD_V2,) if envelope.version == FORMAT_V2 else AES_WRAP_AADS_V3
    for aad in aads:
        try:
            return AESGCM(kek).decrypt(wrapped[:IV_SIZE], wrapped[IV_SIZE:], aad)
        except InvalidTag:
            continue
    raise S3ecKeyError("S3EC AES/GCM wrapped key does not unwrap under this key")


def wrap_rsa_oaep_sha1(public_key: rsa.RSAPublicKey, data_key: bytes) -> bytes:
    """RSA-OAEP-SHA1 key wrapping as the Java client's RsaOaepKeyring does it: OAEP with SHA-1
    and MGF1-SHA1, no label, over a "pseudo data key" = key length (1 byte) || data key ||
    content cipher name ("AES/GCM/NoPadding", for V2 and V3 alike)."""
    pseudo = bytes([len(data_key)]) + data_key + CEK_ALG_V2.encode()
    return public_key.encrypt(pseudo, _OAEP_SHA1)


def unwrap_rsa_oaep_sha1(envelope: S3ecEnvelope, private_key: rsa.RSAPrivateKey) -> bytes:
    """The data key of an RSA-OAEP-SHA1-wrapped envelope (see `wrap_rsa_oaep_sha1`)."""
    if envelope.wrap_alg != WRAP_RSA_OAEP_SHA1:
        raise S3ecFormatError(f"S3EC data key is wrapped with {envelope.wrap_alg}, not {WRAP_RSA_OAEP_SHA1}")
    try:
        pseudo = private_key.decrypt(envelope.wrapped_key, _OAEP_SHA1)
    except ValueError:
        raise S3ecKeyError("S3EC RSA-OAEP-SHA1 wrapped key does not unwrap under this key") from None
    size = pseudo[0] if pseudo else 0
    if size != DATA_KEY_SIZE or pseudo[1 + size :] != CEK_ALG_V2.encode():
        raise S3ecKeyError("S3EC RSA-OAEP-SHA1 wrapped key names another key size or content cipher")
    return pseudo[1 : 1 + size]


_OAEP_SHA1: Final = rsa_padding.OAEP(mgf=rsa_padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


def unwrap_with_key(metadata: Mapping[str, str], kek: bytes) -> S3ecMaterials:
    """Materials for an AES/GCM-wrapped object, given the raw 256-bit wrapping key."""
    envelope = parse(metadata)
    return materials(envelope, unwrap_aes_gcm(envelope, kek))


def unwrap_with_rsa_key(metadata: Mapping[str, str], private_key: rsa.RSAPrivateKey) -> S3ecMaterials:
    """Materials for an RSA-OAEP-SHA1-wrapped object, given the RSA private key."""
    envelope = parse(metadata)
    return materials(envelope, unwrap_rsa_oaep_sha1(envelope, private_key))
