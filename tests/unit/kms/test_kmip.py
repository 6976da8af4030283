"""The kmip keyring against a real PyKMIP server over mutual TLS: wrapping by the key manager
with AES-GCM and the context as AAD, versions, permissions, and failing closed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.kms.base import InvalidWrappedKey, KeyAccessDenied, KeyUnavailable
from tests.unit.kms.hsm_support import KmipServer, free_port, kmip_server, needs_pykmip, start_kmip_server

pytestmark = needs_pykmip
__all__ = ["kmip_server"]  # the fixture, shared

CTX = {"bucket": "b", "key": "k"}


def _ring(server: KmipServer, *, cert: Path | None = None, key: Path | None = None, endpoint: str = "") -> object:
    from proxy.kms.kmip import KmipKeyring, KmipSettings

    return KmipKeyring(
        KmipSettings(
            endpoint=endpoint or server.endpoint,
            ca=server.ca,
            client_cert=cert or server.client_cert,
            client_key=key or server.client_key,
            timeout=5,
            connections=2,
        )
    )


@pytest.fixture
def keyring(kmip_server: KmipServer) -> Iterator[object]:
    ring = _ring(kmip_server)
    yield ring
    from proxy.kms.kmip import KmipKeyring

    assert isinstance(ring, KmipKeyring)
    asyncio.run(ring.close())


def _name() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


def test_wrap_unwrap_by_the_key_manager_bound_to_the_context(keyring: object) -> None:
    from proxy.kms.kmip import WRAPPED_SIZE, KmipKeyring

    assert isinstance(keyring, KmipKeyring)
    name = _name()
    created = keyring.create_key(name)
    assert created.active and created.encrypts and created.decrypts

    async def go() -> None:
        dk = await keyring.generate_data_key(name, CTX)
        assert dk.key_ref == f"kmip:{name}:{created.uid}"
        assert len(dk.wrapped) == WRAPPED_SIZE and dk.plaintext not in dk.wrapped
        assert await keyring.decrypt_data_key(dk.key_ref, dk.wrapped, CTX) == dk.plaintext
        for ctx in ({"bucket": "b", "key": "other"}, {**CTX, "x": "y"}, {}):
            with pytest.raises(InvalidWrappedKey):
                await keyring.decrypt_data_key(dk.key_ref, dk.wrapped, ctx)
        for i in (0, 20, 59):  # IV, ciphertext, tag
            tampered = dk.wrapped[:i] + bytes([dk.wrapped[i] ^ 1]) + dk.wrapped[i + 1 :]
            with pytest.raises(InvalidWrappedKey):
                await keyring.decrypt_data_key(dk.key_ref, tampered, CTX)
        with pytest.raises(InvalidWrappedKey):
            await keyring.decrypt_data_key(f"kmip:other-name:{created.uid}", dk.wrapped, CTX)
        with pytest.raises(InvalidWrappedKey):
            await keyring.decrypt_data_key(dk.key_ref, dk.wrapped[:-1], CTX)
        # By unique identifier, too (default_key may name one).
        by_uid = await keyring.wrap_data_key(created.uid, dk.plaintext, CTX)
        assert by_uid.key_ref == f"kmip:{created.uid}:{created.uid}"
        assert await keyring.decrypt_data_key(by_uid.key_ref, by_uid.wrapped, CTX) == dk.plaintext
        await keyring.ready(name)

    asyncio.run(go())


def test_rotation_creates_a_new_object_and_old_ones_still_unwrap(keyring: object) -> None:
    from proxy.kms.kmip import KmipKeyring

    assert isinstance(keyring, KmipKeyring)
    name = _name()
    first = keyring.create_key(name)

    async def go() -> None:
        old = await keyring.generate_data_key(name, CTX)
        second = await asyncio.to_thread(keyring.create_key, name, rotate=True)
        assert second.uid != first.uid
        new = await keyring.generate_data_key(name, CTX)
        assert new.key_ref == f"kmip:{name}:{second.uid}"
        assert await keyring.decrypt_data_key(old.key_ref, old.wrapped, CTX) == old.plaintext
        with pytest.raises(InvalidWrappedKey):  # the object is bound: relabelled, it does not unwrap
            await keyring.decrypt_data_key(new.key_ref, old.wrapped, CTX)

    asyncio.run(go())
    assert [v.uid for v in keyring.versions(name)] == [second_uid(keyring, name), first.uid]
    with pytest.raises(KeyAccessDenied):
        keyring.create_key(name)
    with pytest.raises(KeyAccessDenied):
        keyring.create_key(_name(), rotate=True)


def second_uid(keyring: object, name: str) -> str:
    from proxy.kms.kmip import KmipKeyring

    assert isinstance(keyring, KmipKeyring)
    return keyring.versions(name)[0].uid


def test_unknown_key_and_another_clients_key_are_denied(kmip_server: KmipServer, keyring: object) -> None:
    from proxy.kms.kmip import KmipKeyring

    assert isinstance(keyring, KmipKeyring)
    name = _name()
    keyring.create_key(name)
    other = _ring(kmip_server, cert=kmip_server.other_cert, key=kmip_server.other_key)
    assert isinstance(other, KmipKeyring)

    async def go() -> None:
        with pytest.raises(KeyAccessDenied):
            await keyring.ready("no-such-key")
        with pytest.raises(KeyAccessDenied):
            await keyring.generate_data_key("no-such-key", CTX)
        dk = await keyring.generate_data_key(name, CTX)
        # PyKMIP's server lets only the owner (the creating client's identity) use an object.
        with pytest.raises(KeyAccessDenied):
            await other.generate_data_key(name, CTX)
        with pytest.raises(KeyAccessDenied):
            await other.decrypt_data_key(dk.key_ref, dk.wrapped, CTX)
        await other.close()

    asyncio.run(go())


def test_server_down_is_unavailable(tmp_path: Path) -> None:
    from proxy.kms.kmip import KmipKeyring

    server = start_kmip_server(tmp_path / "kmip")
    ring = _ring(server)
    assert isinstance(ring, KmipKeyring)
    name = _name()

    async def go() -> None:
        dk = await ring.generate_data_key(name, CTX)
        server.stop()
        with pytest.raises(KeyUnavailable):
            await ring.decrypt_data_key(dk.key_ref, dk.wrapped, CTX)
        with pytest.raises(KeyUnavailable):
            await ring.ready(name)
        await ring.close()

    try:
        ring.create_key(name)
        asyncio.run(go())
    finally:
        server.stop()


def test_nothing_listening_and_wrong_ca_are_unavailable(kmip_server: KmipServer, tmp_path: Path) -> None:
    import trustme

    from proxy.kms.kmip import KmipKeyring, KmipSettings

    async def go() -> None:
        ring = _ring(kmip_server, endpoint=f"127.0.0.1:{free_port()}")
        assert isinstance(ring, KmipKeyring)
        with pytest.raises(KeyUnavailable, match="unreachable"):
            await ring.ready("k")
        await ring.close()
        other_ca = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(other_ca))
        ring = KmipKeyring(
            KmipSettings(kmip_server.endpoint, other_ca, kmip_server.client_cert, kmip_server.client_key, 5, 1)
        )
        with pytest.raises(KeyUnavailable, match="SSL"):
            await ring.ready("k")
        await ring.close()
        # The server's certificate names 127.0.0.1 and localhost, not this name.
        ring = _ring(kmip_server, endpoint=kmip_server.endpoint.replace("127.0.0.1", "127.0.0.2"))
        assert isinstance(ring, KmipKeyring)
        with pytest.raises(KeyUnavailable):
            await ring.ready("k")
        await ring.close()

    asyncio.run(go())


def _pykmip_client(server: KmipServer) -> object:
    from kmip import enums
    from kmip.pie.client import ProxyKmipClient

    host, port = server.endpoint.split(":")
    return ProxyKmipClient(
        hostname=host,
        port=int(port),
        cert=str(server.client_cert),
        key=str(server.client_key),
        ca=str(server.ca),
        kmip_version=enums.KMIPVersion.KMIP_1_4,
    )


def test_encrypt_only_and_revoked_keys_are_refused(kmip_server: KmipServer, keyring: object) -> None:
    from kmip import enums

    from proxy.kms.kmip import KmipKeyring

    assert isinstance(keyring, KmipKeyring)
    sealing, revoked = _name(), _name()
    admin: Any = _pykmip_client(kmip_server)
    with admin:  # a key as a key manager's administrator would make it, with the same identity
        # PyKMIP's ProxyKmipClient.create always adds Decrypt to the usage mask: go one level down.
        from kmip.core import objects

        make = admin.attribute_factory.create_attribute
        template = objects.TemplateAttribute(
            attributes=[
                make(enums.AttributeType.CRYPTOGRAPHIC_ALGORITHM, enums.CryptographicAlgorithm.AES),
                make(enums.AttributeType.CRYPTOGRAPHIC_LENGTH, 256),
                make(enums.AttributeType.CRYPTOGRAPHIC_USAGE_MASK, [enums.CryptographicUsageMask.ENCRYPT]),
                make(enums.AttributeType.NAME, sealing),
            ]
        )
        uid = admin.proxy.create(enums.ObjectType.SYMMETRIC_KEY, template).uuid
        admin.activate(uid)
    keyring.create_key(revoked)

    async def go() -> None:
        dk = await keyring.generate_data_key(sealing, CTX)
        with pytest.raises(KeyAccessDenied, match="PERMISSION_DENIED"):
            await keyring.decrypt_data_key(dk.key_ref, dk.wrapped, CTX)
        old = await keyring.generate_data_key(revoked, CTX)
        with admin:
            admin.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, old.key_ref.rsplit(":", 1)[1])
        with pytest.raises(KeyAccessDenied, match="Active"):
            await keyring.generate_data_key(revoked, CTX)
        with pytest.raises(KeyAccessDenied):
            await keyring.ready(revoked)
        with pytest.raises(KeyAccessDenied):
            await keyring.decrypt_data_key(old.key_ref, old.wrapped, CTX)

    asyncio.run(go())
