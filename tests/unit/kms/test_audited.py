"""The auditing keyring: a record per keyring call and per cached key use, none with key material."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.audit import AuditContext, AuditLog, audit_context, verify_file
from proxy.crypto.format import encryption_context
from proxy.kms.audited import AuditingKeyring
from proxy.kms.base import InvalidWrappedKey, KeyAccessDenied, KeyUnavailable
from proxy.kms.keystore import LocalKeyStore
from proxy.kms.local import LocalKeyring

HMAC_KEY = b"audit-hmac-key-0123456789abcdef"


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


PASSPHRASE = b"audit-test-passphrase"


@pytest.fixture
def store(tmp_path: Path) -> LocalKeyStore:
    s = LocalKeyStore.create(tmp_path / "kr", PASSPHRASE)
    s.create_key("default")
    s.save()
    return s


@pytest.fixture
def request_context() -> Iterator[AuditContext]:
    ctx = AuditContext(identity="alice", source="198.51.100.4:4433", request_id="RID-42", bucket="b1", object_key="k1")
    token = audit_context.set(ctx)
    yield ctx
    audit_context.reset(token)


def spellings(secret: bytes) -> list[bytes]:
    return [
        secret,
        secret.hex().encode(),
        secret.hex().upper().encode(),
        base64.b64encode(secret),
        base64.b64encode(secret).rstrip(b"="),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
    ]


async def test_auditing_keyring_records_allowed_and_denied(
    store: LocalKeyStore, log_path: Path, request_context: AuditContext
) -> None:
    log = AuditLog(log_path, hmac_key=HMAC_KEY)
    keyring = AuditingKeyring(LocalKeyring(store), log)
    ctx = encryption_context("photos", "cat.jpg")

    key = await keyring.generate_data_key("default", ctx)
    assert await keyring.decrypt_data_key(key.key_ref, key.wrapped, ctx) == key.plaintext
    copy = await keyring.wrap_data_key("default", key.plaintext, encryption_context("photos", "copy.jpg"))
    with pytest.raises(KeyAccessDenied, match="no master key 'nope'"):
        await keyring.generate_data_key("nope", ctx)
    with pytest.raises(KeyAccessDenied, match="no version 1 of master key 'nope'"):
        await keyring.decrypt_data_key("local:nope:1", key.wrapped, ctx)
    with pytest.raises(InvalidWrappedKey, match="with this encryption context"):
        await keyring.decrypt_data_key(key.key_ref, key.wrapped, encryption_context("photos", "dog.jpg"))
    await keyring.ready("default")
    await keyring.close()
    log.close()

    assert verify_file(log_path, HMAC_KEY).ok
    docs = [json.loads(line) for line in read_lines(log_path)]
    summary = [(d["operation"], d["outcome"], d["reason"], d["key_id"], d["key_version"]) for d in docs]
    assert summary == [
        ("generate", "allowed", None, "default", "local:default:1"),
        ("decrypt", "allowed", None, "default", "local:default:1"),
        ("wrap", "allowed", None, "default", "local:default:1"),
        ("generate", "denied", "AccessDenied", "nope", None),
        ("decrypt", "denied", "AccessDenied", "nope", "local:nope:1"),
        ("decrypt", "error", "ObjectIntegrityError", "default", "local:default:1"),
    ]
    for d in docs:
        assert (d["identity"], d["source"], d["request_id"]) == ("alice", "198.51.100.4:4433", "RID-42")
        assert d["bucket"] == "photos"  # what the key is bound to, not the request's bucket
    assert [d["object_key"] for d in docs] == ["cat.jpg", "cat.jpg", "copy.jpg", "cat.jpg", "cat.jpg", "dog.jpg"]

    data = log_path.read_bytes()
    secrets = [key.plaintext, copy.plaintext, PASSPHRASE]
    material = store.material("default", 1)
    assert material is not None
    secrets.append(material)
    for secret in secrets:
        for spelled in spellings(secret):
            assert spelled not in data


async def test_bucket_scoped_context_takes_object_key_from_request(
    store: LocalKeyStore, log_path: Path, request_context: AuditContext
) -> None:
    with AuditLog(log_path) as log:
        keyring = AuditingKeyring(LocalKeyring(store), log)
        await keyring.generate_data_key("default", {"sealgate:bucket": "b1"})
    doc = json.loads(read_lines(log_path)[0])
    assert (doc["bucket"], doc["object_key"]) == ("b1", "k1")


async def test_unauditable_key_use_is_refused(store: LocalKeyStore, log_path: Path) -> None:
    log = AuditLog(log_path)
    keyring = AuditingKeyring(LocalKeyring(store), log)
    log.close()
    with pytest.raises(KeyUnavailable, match="the audit log cannot be written"):
        await keyring.generate_data_key("default", encryption_context("b", "k"))
    # A failed call whose record cannot be written still raises the call's own error.
    with pytest.raises(KeyAccessDenied, match="no master key 'nope'"):
        await keyring.generate_data_key("nope", encryption_context("b", "k"))
