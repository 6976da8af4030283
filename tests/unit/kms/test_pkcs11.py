"""The pkcs11 keyring against a real SoftHSM2 token: wrapping inside the token, versions,
context binding, and failing closed (wrong PIN, no token, no key, no module)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.kms.base import InvalidWrappedKey, KeyAccessDenied, KeyUnavailable
from tests.unit.kms.hsm_support import SoftHsm, needs_softhsm, softhsm

pytestmark = needs_softhsm

CTX = {"bucket": "b", "key": "k"}


@pytest.fixture
def hsm() -> SoftHsm:
    return softhsm()


@pytest.fixture
def keyring(hsm: SoftHsm) -> Iterator[object]:
    from proxy.kms.pkcs11 import Pkcs11Keyring

    ring = Pkcs11Keyring(hsm.module, "sg-main", hsm.pin, sessions=2)
    yield ring
    asyncio.run(ring.close())


def _admin_session(hsm: SoftHsm) -> Any:
    """A read-write session on sg-main as another tool would open it."""
    import pkcs11

    token = pkcs11.lib(hsm.module).get_token(token_label="sg-main")
    try:
        return token.open(rw=True, user_pin=hsm.pin)
    except pkcs11.UserAlreadyLoggedIn:  # this process is logged in already (login is per process)
        return token.open(rw=True)


def _label() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


def test_wrap_unwrap_in_the_token_and_bound_to_the_context(keyring: object) -> None:
    from proxy.kms.pkcs11 import WRAPPED_SIZE, Pkcs11Keyring

    assert isinstance(keyring, Pkcs11Keyring)
    label = _label()
    keyring.create_key(label)

    async def go() -> None:
        dk = await keyring.generate_data_key(label, CTX)
        assert dk.key_ref == f"pkcs11:{label}:1"
        assert len(dk.plaintext) == 32 and len(dk.wrapped) == WRAPPED_SIZE
        assert dk.plaintext not in dk.wrapped
        assert await keyring.decrypt_data_key(dk.key_ref, dk.wrapped, CTX) == dk.plaintext
        # Another object's context, an added entry, a changed wrapped key: refused by the token.
        for ctx in ({"bucket": "b", "key": "other"}, {**CTX, "x": "y"}, {}):
            with pytest.raises(InvalidWrappedKey):
                await keyring.decrypt_data_key(dk.key_ref, dk.wrapped, ctx)
        tampered = dk.wrapped[:20] + bytes([dk.wrapped[20] ^ 1]) + dk.wrapped[21:]
        with pytest.raises(InvalidWrappedKey):
            await keyring.decrypt_data_key(dk.key_ref, tampered, CTX)
        with pytest.raises(InvalidWrappedKey):
            await keyring.decrypt_data_key(dk.key_ref, dk.wrapped[:-1], CTX)
        with pytest.raises(InvalidWrappedKey):
            await keyring.decrypt_data_key(f"local:{label}:1", dk.wrapped, CTX)
        copied = await keyring.wrap_data_key(label, dk.plaintext, CTX)
        assert copied.wrapped != dk.wrapped  # a fresh IV each time
        assert await keyring.decrypt_data_key(copied.key_ref, copied.wrapped, CTX) == dk.plaintext
        await keyring.ready(label)

    asyncio.run(go())


def test_rotation_adds_a_version_and_old_versions_still_unwrap(keyring: object) -> None:
    from proxy.kms.pkcs11 import Pkcs11Keyring

    assert isinstance(keyring, Pkcs11Keyring)
    label = _label()
    keyring.create_key(label)

    async def go() -> None:
        old = await keyring.generate_data_key(label, CTX)
        info = await asyncio.to_thread(keyring.create_key, label, rotate=True)
        assert (info.versions, info.current) == ((1, 2), 2)
        new = await keyring.generate_data_key(label, CTX)
        assert (old.key_ref, new.key_ref) == (f"pkcs11:{label}:1", f"pkcs11:{label}:2")
        assert await keyring.decrypt_data_key(old.key_ref, old.wrapped, CTX) == old.plaintext
        # The version is bound: a wrapped key relabelled as another version does not unwrap.
        with pytest.raises(InvalidWrappedKey):
            await keyring.decrypt_data_key(new.key_ref, old.wrapped, CTX)
        with pytest.raises(KeyAccessDenied):
            await keyring.decrypt_data_key(f"pkcs11:{label}:3", old.wrapped, CTX)

    asyncio.run(go())
    listed = {k.label: k for k in keyring.list_keys()}
    assert listed[label].versions == (1, 2)
    with pytest.raises(KeyAccessDenied):
        keyring.create_key(label)  # exists
    with pytest.raises(KeyAccessDenied):
        keyring.create_key(_label(), rotate=True)  # nothing to rotate


def test_missing_key_label_is_access_denied(keyring: object) -> None:
    from proxy.kms.pkcs11 import Pkcs11Keyring

    assert isinstance(keyring, Pkcs11Keyring)

    async def go() -> None:
        with pytest.raises(KeyAccessDenied, match="no AES-256 key labelled"):
            await keyring.generate_data_key("no-such-key", CTX)
        with pytest.raises(KeyAccessDenied):
            await keyring.ready("no-such-key")
        with pytest.raises(KeyAccessDenied):
            await keyring.generate_data_key("a:b", CTX)

    asyncio.run(go())


def test_a_key_made_by_other_tools_without_an_id_is_version_1(hsm: SoftHsm, keyring: object) -> None:
    from pkcs11 import Attribute, KeyType

    from proxy.kms.pkcs11 import Pkcs11Keyring

    assert isinstance(keyring, Pkcs11Keyring)
    label = _label()
    with _admin_session(hsm) as session:
        session.generate_key(
            KeyType.AES, 256, label=label, store=True, template={Attribute.ENCRYPT: True, Attribute.DECRYPT: True}
        )
        # Not an AES-256 key, and not a version: neither is used.
        session.generate_key(KeyType.AES, 128, label=label + "-short", id=b"1", store=True)

    async def go() -> None:
        dk = await keyring.generate_data_key(label, CTX)
        assert dk.key_ref == f"pkcs11:{label}:1"
        assert await keyring.decrypt_data_key(dk.key_ref, dk.wrapped, CTX) == dk.plaintext
        with pytest.raises(KeyAccessDenied):
            await keyring.ready(label + "-short")

    asyncio.run(go())


def test_an_encrypt_only_key_wraps_but_does_not_unwrap(hsm: SoftHsm, keyring: object) -> None:
    from pkcs11 import Attribute, KeyType

    from proxy.kms.pkcs11 import Pkcs11Keyring

    assert isinstance(keyring, Pkcs11Keyring)
    label = _label()

    async def go() -> None:
        with pytest.raises(KeyAccessDenied):
            await keyring.ready(label)
        with _admin_session(hsm) as session:
            template = {Attribute.ENCRYPT: True, Attribute.DECRYPT: False}
            session.generate_key(KeyType.AES, 256, label=label, id=b"1", store=True, template=template)
        dk = await keyring.generate_data_key(label, CTX)
        with pytest.raises(KeyAccessDenied, match="may not decrypt"):
            await keyring.decrypt_data_key(dk.key_ref, dk.wrapped, CTX)

    asyncio.run(go())


def test_wrong_pin_fails_closed_and_is_not_tried_again(hsm: SoftHsm) -> None:
    from proxy.kms.pkcs11 import Pkcs11Keyring

    ring = Pkcs11Keyring(hsm.module, "sg-pin", "not-the-pin")

    async def go() -> None:
        for _ in range(3):
            with pytest.raises(KeyAccessDenied, match="refused the PIN") as info:
                await ring.ready("k")
            assert "not-the-pin" not in str(info.value)
        await ring.close()

    asyncio.run(go())


def test_missing_token_and_missing_module_are_unavailable(hsm: SoftHsm, tmp_path: object) -> None:
    from proxy.kms.pkcs11 import Pkcs11Keyring

    async def go() -> None:
        ring = Pkcs11Keyring(hsm.module, "no-such-token", hsm.pin)
        with pytest.raises(KeyUnavailable, match="no PKCS#11 token labelled 'no-such-token'"):
            await ring.generate_data_key("k", CTX)
        await ring.close()
        ring = Pkcs11Keyring("/nonexistent/libpkcs11.so", "sg-main", hsm.pin)
        with pytest.raises(KeyUnavailable, match="does not load"):
            await ring.ready("k")
        await ring.close()
        with pytest.raises(KeyUnavailable, match="closed"):
            await ring.ready("k")

    asyncio.run(go())


def test_concurrent_calls_share_a_bounded_pool(keyring: object) -> None:
    from proxy.kms.pkcs11 import Pkcs11Keyring

    assert isinstance(keyring, Pkcs11Keyring)
    label = _label()
    keyring.create_key(label)

    async def go() -> None:
        keys = await asyncio.gather(*(keyring.generate_data_key(label, {"n": str(i)}) for i in range(40)))
        plain = await asyncio.gather(
            *(keyring.decrypt_data_key(k.key_ref, k.wrapped, {"n": str(i)}) for i, k in enumerate(keys))
        )
        assert plain == [k.plaintext for k in keys]

    asyncio.run(go())
    assert len(keyring._sessions) <= 2  # noqa: SLF001 - the bound is the point of this test


def test_audited_uses_name_the_label_and_version_never_the_key(keyring: object, tmp_path: Any) -> None:
    import base64
    import json

    from proxy.audit import AuditLog
    from proxy.kms.audited import AuditingKeyring
    from proxy.kms.pkcs11 import Pkcs11Keyring

    assert isinstance(keyring, Pkcs11Keyring)
    label = _label()
    keyring.create_key(label)
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    audited = AuditingKeyring(keyring, log)

    async def go() -> bytes:
        dk = await audited.generate_data_key(label, CTX)
        await audited.decrypt_data_key(dk.key_ref, dk.wrapped, CTX)
        with pytest.raises(InvalidWrappedKey):
            await audited.decrypt_data_key(dk.key_ref, dk.wrapped, {"bucket": "b", "key": "other"})
        return dk.plaintext

    plaintext = asyncio.run(go())
    log.close()
    text = path.read_bytes()
    docs = [json.loads(line) for line in text.splitlines()]
    assert [(d["operation"], d["outcome"]) for d in docs] == [
        ("generate", "allowed"),
        ("decrypt", "allowed"),
        ("decrypt", "error"),
    ]
    assert {d["key_id"] for d in docs} == {label}
    assert docs[1]["key_version"] == f"pkcs11:{label}:1"
    assert docs[2]["reason"] == "ObjectIntegrityError"
    for spelling in (plaintext, plaintext.hex().encode(), base64.b64encode(plaintext)):
        assert spelling not in text


def test_routing_reads_both_keyrings_and_writes_the_main_one(keyring: object, tmp_path: Any) -> None:
    from proxy.kms.keystore import LocalKeyStore
    from proxy.kms.local import LocalKeyring
    from proxy.kms.pkcs11 import Pkcs11Keyring
    from proxy.kms.routing import RoutingKeyring, provider_of

    assert isinstance(keyring, Pkcs11Keyring)
    label = _label()
    keyring.create_key(label)
    store = LocalKeyStore.create(tmp_path / "kr", b"routing-test-passphrase")
    store.create_key("old")
    store.save()
    local = LocalKeyring(store)
    routed = RoutingKeyring(keyring, local, "local", "old")
    assert [provider_of(r) for r in ("local:a:1", "pkcs11:a:1", "kmip:a:u", "arn:aws:kms:x", "kms-rsa:arn:x")] == [
        "local",
        "pkcs11",
        "kmip",
        "aws-kms",
        "aws-kms",
    ]

    async def go() -> None:
        old = await local.generate_data_key("old", CTX)
        assert await routed.decrypt_data_key(old.key_ref, old.wrapped, CTX) == old.plaintext
        moved = await routed.wrap_data_key(label, old.plaintext, CTX)
        assert moved.key_ref == f"pkcs11:{label}:1"
        assert await routed.decrypt_data_key(moved.key_ref, moved.wrapped, CTX) == old.plaintext
        assert (await routed.generate_data_key(label, CTX)).key_ref.startswith("pkcs11:")
        with pytest.raises(KeyAccessDenied):
            await routed.wrap_data_key("old", old.plaintext, CTX)  # the previous keyring writes nothing
        await routed.ready(label)
        # Readiness asks the previous keyring too, for its own default key.
        without = RoutingKeyring(keyring, local, "local", "gone")
        with pytest.raises(KeyAccessDenied, match=r"^previous keyring \(local\): no usable key 'gone'"):
            await without.ready(label)

    asyncio.run(go())


def test_a_token_that_does_not_answer_fails_closed_in_time(hsm: SoftHsm) -> None:
    import time

    from proxy.kms.pkcs11 import Pkcs11Keyring, module_lock

    ring = Pkcs11Keyring(hsm.module, "sg-main", hsm.pin, timeout=0.5)

    async def go() -> float:
        start = time.monotonic()
        with pytest.raises(KeyUnavailable, match="did not answer within 0.5s"):
            await ring.generate_data_key("k", CTX)
        return time.monotonic() - start

    # A call stuck inside the module holds its lock, as this test does: later calls queue behind it.
    with module_lock(hsm.module):
        took = asyncio.run(go())
    assert took < 5
    asyncio.run(ring.close())
