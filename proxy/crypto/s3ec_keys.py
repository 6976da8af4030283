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
    return S3ecMaterials(version=FORMAT_V3, content_key=enc_key, iv=V3_IV, aad=SUITE_V3_ID)


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
