"""Wrapping data keys with public keys, so a gateway holding only the public key can encrypt
uploads it can never read back (RSA-OAEP-SHA256 or ECDH on NIST curves + HKDF + AES-GCM).

Wrapped layouts (the AAD is the keyring's unambiguous encoding of key reference and context):

- RSA: ``RSAES-OAEP(SHA-256, MGF1-SHA-256, label = aad)`` of the 32-byte data key.
- EC: ``u16be(len(E)) ‖ E ‖ nonce(12) ‖ AES-256-GCM(k, nonce, data key, aad)`` where ``E`` is an
  ephemeral public point (X9.62 uncompressed) and ``k = HKDF-SHA256(ECDH(e, R), salt = none,
  info = "sealgate-ecdh-wrap/1" ‖ E ‖ R ‖ aad)`` with ``R`` the recipient's public point.
- RSA for AWS KMS (`wrap_for_kms`): ``RSAES-OAEP(SHA-256, MGF1-SHA-256, no label)`` of
  ``data key ‖ HMAC-SHA256(data key, "sealgate-kms-rsa/1" ‖ aad)[:16]`` (48 bytes). KMS Decrypt
  (RSAES_OAEP_SHA_256) takes neither a label nor an encryption context, so the tag binds the
  context instead: opened for another context, the tag does not match. As with the label, this
  stops moved objects, not forgery (anyone with the public key can wrap).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from proxy.kms.base import InvalidWrappedKey

TYPES = ("rsa-3072", "rsa-4096", "ec-p256", "ec-p384")
_CURVES: dict[str, ec.EllipticCurve] = {"ec-p256": ec.SECP256R1(), "ec-p384": ec.SECP384R1()}
_ECDH_INFO = b"sealgate-ecdh-wrap/1"
_KMS_TAG = b"sealgate-kms-rsa/1"
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def generate(key_type: str) -> bytes:
    """A new private key of `key_type`, as PKCS#8 DER."""
    if key_type.startswith("rsa-"):
        private: PrivateKey = rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    elif key_type in _CURVES:
        private = ec.generate_private_key(_CURVES[key_type])
    else:
        raise ValueError(f"unknown key type {key_type!r}; use one of {', '.join(TYPES)}")
    return private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private(der: bytes) -> PrivateKey | None:
    """The private key in `der`, or None when `der` holds only a public key."""
    try:
        key = serialization.load_der_private_key(der, None)
    except ValueError:
        return None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError("unsupported private key type")
    return key


def load_public(der: bytes) -> PublicKey:
    """The public key of `der` (private PKCS#8 or public SubjectPublicKeyInfo)."""
    private = load_private(der)
    if private is not None:
        return private.public_key()
    key = serialization.load_der_public_key(der)
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ValueError("unsupported public key type")
    return key


def key_type_of(der: bytes) -> str:
    """The sealgate key type of a DER key."""
    public = load_public(der)
    if isinstance(public, rsa.RSAPublicKey):
        kind = f"rsa-{public.key_size}"
    else:
        kind = {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}.get(public.curve.name, "")
    if kind not in TYPES:
        raise ValueError("unsupported key: use RSA 3072/4096 or EC P-256/P-384")
    return kind


def public_pem(der: bytes) -> bytes:
    """The public key as PEM (to hand to an encrypt-only gateway)."""
    return load_public(der).public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _oaep(label: bytes) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label)


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def _ecdh_key(shared: bytes, eph: bytes, recipient: bytes, aad: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, None, _ECDH_INFO + eph + recipient + aad).derive(shared)


def wrap(public: PublicKey, data_key: bytes, aad: bytes) -> bytes:
    """Wrap `data_key` for the holder of the private key, bound to `aad`."""
    if isinstance(public, rsa.RSAPublicKey):
        return public.encrypt(data_key, _oaep(aad))
    ephemeral = ec.generate_private_key(public.curve)
    eph = _point(ephemeral.public_key())
    key = _ecdh_key(ephemeral.exchange(ec.ECDH(), public), eph, _point(public), aad)
    nonce = os.urandom(12)
    return struct.pack(">H", len(eph)) + eph + nonce + AESGCM(key).encrypt(nonce, data_key, aad)


def unwrap(private: PrivateKey, wrapped: bytes, aad: bytes) -> bytes:
    """Inverse of `wrap`; InvalidWrappedKey when it does not open with this key and aad."""
    try:
        if isinstance(private, rsa.RSAPrivateKey):
            return private.decrypt(wrapped, _oaep(aad))
        (n,) = struct.unpack_from(">H", wrapped)
        eph = wrapped[2 : 2 + n]
        nonce, sealed = wrapped[2 + n : 14 + n], wrapped[14 + n :]
        peer = ec.EllipticCurvePublicKey.from_encoded_point(private.curve, eph)
        key = _ecdh_key(private.exchange(ec.ECDH(), peer), eph, _point(private.public_key()), aad)
        return AESGCM(key).decrypt(nonce, sealed, aad)
    except (ValueError, InvalidTag, struct.error) as exc:
        raise InvalidWrappedKey("wrapped data key does not open under this key and context") from exc


def _kms_tag(data_key: bytes, aad: bytes) -> bytes:
    return hmac.new(data_key, _KMS_TAG + aad, hashlib.sha256).digest()[:16]


def wrap_for_kms(public: rsa.RSAPublicKey, data_key: bytes, aad: bytes) -> bytes:
    """Wrap `data_key` so that AWS KMS Decrypt (RSAES_OAEP_SHA_256) opens it; `aad` is bound by
    a tag inside the encrypted message (see module doc), since KMS takes no OAEP label."""
    return public.encrypt(data_key + _kms_tag(data_key, aad), _oaep(b""))


def open_from_kms(plaintext: bytes, aad: bytes) -> bytes:
    """The data key in what KMS Decrypt returned for a `wrap_for_kms` blob; InvalidWrappedKey
    unless it was wrapped for exactly `aad`."""
    data_key, tag = plaintext[:32], plaintext[32:]
    if len(plaintext) != 48 or not hmac.compare_digest(tag, _kms_tag(data_key, aad)):
        raise InvalidWrappedKey("wrapped data key was not made for this key and context")
    return data_key
