"""The keyring's ``ed25519-signing`` key: created once, rotated, its public half exported, and
never used to wrap data keys."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy.crypto import signing
from proxy.kms.base import KeyAccessDenied
from proxy.kms.keystore import KeyringFileError, LocalKeyStore
from proxy.kms.local import LocalKeyring


def test_signing_key_life(tmp_path: Path) -> None:
    store = LocalKeyStore.create(tmp_path / "ring", b"passphrase")
    ring = LocalKeyring(store)
    assert ring.signer() is None
    info = store.create_asymmetric_key("sign", signing.KEY_TYPE)
    assert info.type == signing.KEY_TYPE and store.signing_key_id() == "sign"
    with pytest.raises(KeyringFileError, match="already has signing key"):
        store.create_asymmetric_key("sign2", signing.KEY_TYPE)
    store.save()
    reopened = LocalKeyStore.open(tmp_path / "ring", b"passphrase")
    first = reopened.public_key_pem("sign").decode().strip()
    seed = LocalKeyring(reopened).signer()
    assert seed is not None and seed[0] == "local:sign:1"
    assert signing.public_text(signing.public_key(seed[1])) == first
    reopened.rotate_key("sign")
    rotated = LocalKeyring(reopened).signer()
    assert rotated is not None and rotated[0] == "local:sign:2" and rotated[1] != seed[1]
    assert reopened.public_key_pem("sign").decode().strip() != first
    signing.parse_public(reopened.public_key_pem("sign").decode().strip())
    reopened.set_enabled("sign", False)
    assert LocalKeyring(reopened).signer() is None


def test_signing_key_wraps_nothing(tmp_path: Path) -> None:
    store = LocalKeyStore.create(tmp_path / "ring", b"passphrase")
    store.create_asymmetric_key("sign", signing.KEY_TYPE)
    ring = LocalKeyring(store)
    with pytest.raises(KeyAccessDenied, match="signing key"):
        asyncio.run(ring.generate_data_key("sign", {}))
    with pytest.raises(KeyAccessDenied, match="signing key"):
        asyncio.run(ring.decrypt_data_key("local:sign:1", b"x" * 60, {}))
