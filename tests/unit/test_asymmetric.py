"""Public-key wrapping of data keys: round trips, context binding, tampering."""

from __future__ import annotations

import os

import pytest

from proxy.kms import asymmetric
from proxy.kms.base import InvalidWrappedKey


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
    with pytest.raises(InvalidWrappedKey):
        asymmetric.unwrap(private, wrapped, b"aad-2")
    bad = bytearray(wrapped)
    bad[-1] ^= 1
    with pytest.raises(InvalidWrappedKey):
        asymmetric.unwrap(private, bytes(bad), b"aad-1")
    other = asymmetric.load_private(asymmetric.generate(key_type))
    assert other is not None
    with pytest.raises(InvalidWrappedKey):
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
