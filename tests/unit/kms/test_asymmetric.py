"""Public-key wrapping of data keys: round trips, context binding, tampering."""

from __future__ import annotations

import os

import pytest

from proxy.kms import asymmetric
from proxy.kms.base import InvalidWrappedKey

NOT_OPEN = "wrapped data key does not open under this key and context"


@pytest.mark.parametrize("key_type", asymmetric.TYPES)
def test_round_trip_and_binding(key_type: str) -> None:
    der = asymmetric.generate(key_type)
    assert asymmetric.key_type_of(der) == key_type
    private = asymmetric.load_private(der)
    assert private is not None
    public = asymmetric.load_public(der)
    dk = os.urandom(32)
    wrapped = asymmetric.wrap(public, dk, b"aad-1")
    assert asymmetric.unwrap(private, wrapped, b"aad-1") == dk
    with pytest.raises(InvalidWrappedKey, match=NOT_OPEN):
        asymmetric.unwrap(private, wrapped, b"aad-2")
    bad = bytearray(wrapped)
    bad[-1] ^= 1
    with pytest.raises(InvalidWrappedKey, match=NOT_OPEN):
        asymmetric.unwrap(private, bytes(bad), b"aad-1")
    other = asymmetric.load_private(asymmetric.generate(key_type))
    assert other is not None
    with pytest.raises(InvalidWrappedKey, match=NOT_OPEN):
        asymmetric.unwrap(other, wrapped, b"aad-1")
    assert asymmetric.wrap(public, dk, b"aad-1") != wrapped  # randomized


def test_public_only_material_has_no_private_key() -> None:
    from cryptography.hazmat.primitives import serialization

    der = asymmetric.generate("ec-p256")
    pem = asymmetric.public_pem(der)
    pub_der = serialization.load_pem_public_key(pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert asymmetric.load_private(pub_der) is None
    assert asymmetric.key_type_of(pub_der) == "ec-p256"


@pytest.mark.parametrize("bits", [3072, 4096])
def test_kms_layout_opens_with_plain_oaep_sha256(bits: int) -> None:
    """What AWS KMS Decrypt (RSAES_OAEP_SHA_256: MGF1-SHA-256, no label) returns opens the key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    dk = os.urandom(32)
    wrapped = asymmetric.wrap_for_kms(private.public_key(), dk, b"aad-1")
    assert len(wrapped) == bits // 8
    kms_plaintext = private.decrypt(
        wrapped, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    )
    assert len(kms_plaintext) == 48 and kms_plaintext[:32] == dk
    assert asymmetric.open_from_kms(kms_plaintext, b"aad-1") == dk
    for bad_aad, bad_plain in ((b"aad-2", kms_plaintext), (b"aad-1", kms_plaintext[:32]), (b"aad-1", dk + bytes(16))):
        with pytest.raises(InvalidWrappedKey, match="was not made for this key and context"):
            asymmetric.open_from_kms(bad_plain, bad_aad)
