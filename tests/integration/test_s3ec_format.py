"""S3 Encryption Client formats against the official client (amazon-s3-encryption-client-python).

Real moto S3 + KMS on loopback, no mocks. Objects the official client writes are fetched raw
with plain boto3 and decrypted by proxy.crypto.s3ec; objects proxy.crypto.s3ec writes are put
raw with plain boto3 and read by the official client. The 70 MiB case of issue 4 (above the
verify-first limit) is left to the server tests: here the limit is exercised with a small
configured limit instead.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# The official client is a test dependency (PyPI amazon-s3-encryption-client-python); these
# tests must not skip silently when it is missing.
from s3_encryption import S3EncryptionClient, S3EncryptionClientConfig
from s3_encryption.exceptions import S3EncryptionClientError, S3EncryptionClientSecurityError
from s3_encryption.materials.keyring import S3Keyring
from s3_encryption.materials.kms_keyring import KmsKeyring
from s3_encryption.materials.materials import AlgorithmSuite, CommitmentPolicy

from proxy.crypto import s3ec, s3ec_keys, s3ec_streams
from proxy.crypto.format import IntegrityError
from proxy.kms.aws import AwsKmsKeyring
from proxy.kms.base import InvalidWrappedKey
from proxy.store import s3ec as store_s3ec
from tests.integration.s3ec_support import moto_client

REGION = "us-east-1"
SIZES = [0, 1, 16, 17, 1024 * 1024 + 1]
CONTEXTS: list[dict[str, str] | None] = [None, {"tenant": "acme", "purpose": "interop"}]


@pytest.fixture(scope="module")
def env(moto_url: str) -> Iterator[dict[str, str]]:
    bucket = f"s3ec-{uuid.uuid4().hex[:12]}"
    moto_client("s3", moto_url).create_bucket(Bucket=bucket)
    key_id = moto_client("kms", moto_url).create_key(Description="s3ec interop")["KeyMetadata"]["KeyId"]
    yield {"url": moto_url, "bucket": bucket, "key_id": key_id}


@pytest.fixture
async def keyring(env: dict[str, str]) -> AsyncIterator[AwsKmsKeyring]:
    kr = AwsKmsKeyring(region=REGION, endpoint_url=env["url"], access_key_id="testing", secret_access_key="testing")
    yield kr
    await kr.close()


def official(env: dict[str, str], *, v2: bool = False, keyring: Any = None, delayed: bool = False) -> Any:
    """The official client on its own boto3 S3 client (it hooks that client's events)."""
    kr = keyring or KmsKeyring(kms_client=moto_client("kms", env["url"]), kms_key_id=env["key_id"])
    if v2:
        config = S3EncryptionClientConfig(
            keyring=kr,
            encryption_algorithm=AlgorithmSuite.ALG_AES_256_GCM_IV12_TAG16_NO_KDF,
            commitment_policy=CommitmentPolicy.FORBID_ENCRYPT_ALLOW_DECRYPT,
            enable_delayed_authentication=delayed,
        )
    else:
        config = S3EncryptionClientConfig(keyring=kr, enable_delayed_authentication=delayed)
    return S3EncryptionClient(wrapped_s3_client=moto_client("s3", env["url"]), config=config)


def raw_get(env: dict[str, str], key: str) -> tuple[bytes, dict[str, str]]:
    resp = moto_client("s3", env["url"]).get_object(Bucket=env["bucket"], Key=key)
    return resp["Body"].read(), dict(resp["Metadata"])


def official_put(env: dict[str, str], key: str, data: bytes, ctx: dict[str, str] | None, *, v2: bool = False) -> None:
    kwargs: dict[str, Any] = {"Bucket": env["bucket"], "Key": key, "Body": data}
    if ctx is not None:
        kwargs["EncryptionContext"] = ctx
    official(env, v2=v2).put_object(**kwargs)


def official_get(env: dict[str, str], key: str, ctx: dict[str, str] | None, **kw: Any) -> bytes:
    kwargs: dict[str, Any] = {"Bucket": env["bucket"], "Key": key}
    if ctx is not None:
        kwargs["EncryptionContext"] = ctx
    body: bytes = official(env, **kw).get_object(**kwargs)["Body"].read()
    return body


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def stream_decrypt(mats: s3ec.S3ecMaterials, body: bytes, mode: s3ec_streams.Mode, piece: int) -> tuple[bytes, int]:
    """Plaintext and how many bytes came out before finish()."""
    dec = s3ec_streams.S3ecDecryptor(mats, len(body), mode=mode)
    early = b"".join(b"".join(dec.feed(p)) for p in pieces(body, piece))
    return early + b"".join(dec.finish()), len(early)


def payload(n: int) -> bytes:
    return os.urandom(n)


# -- official client writes, sealgate reads ----------------------------------------------------


@pytest.mark.parametrize("ctx", CONTEXTS, ids=["no-ctx", "ctx"])
@pytest.mark.parametrize("size", SIZES)
async def test_official_v3_read_by_sealgate(
    env: dict[str, str], keyring: AwsKmsKeyring, size: int, ctx: dict[str, str] | None
) -> None:
    key = f"v3/{uuid.uuid4().hex}"
    data = payload(size)
    official_put(env, key, data, ctx)
    body, meta = raw_get(env, key)
    assert len(body) == s3ec.ciphertext_length(size)
    assert s3ec.plaintext_length(len(body)) == size
    assert s3ec.detect(meta) == "v3"
    assert meta["x-amz-c"] == "115" and meta["x-amz-w"] == "12"
    assert "x-amz-m" not in meta and "x-amz-tag-len" not in meta
    assert json.loads(meta["x-amz-t"]) == {**(ctx or {}), "aws:x-amz-cek-alg": "115"}
    mats = await store_s3ec.unwrap_s3ec(meta, keyring=keyring, kms_key_id=env["key_id"], expected_context=ctx or {})
    out, early = stream_decrypt(mats, body, "verify_first", 7 if size < 100 else 65536)
    assert out == data and early == 0
    out, _ = stream_decrypt(mats, body, "delayed", 5 if size < 100 else 100_000)
    assert out == data


@pytest.mark.parametrize("ctx", CONTEXTS, ids=["no-ctx", "ctx"])
@pytest.mark.parametrize("size", SIZES)
async def test_official_v2_read_by_sealgate(
    env: dict[str, str], keyring: AwsKmsKeyring, size: int, ctx: dict[str, str] | None
) -> None:
    """The official client still writes V2 when configured with the non-committing suite and
    the FORBID_ENCRYPT_ALLOW_DECRYPT policy."""
    key = f"v2/{uuid.uuid4().hex}"
    data = payload(size)
    official_put(env, key, data, ctx, v2=True)
    body, meta = raw_get(env, key)
    assert s3ec.detect(meta) == "v2"
    assert meta["x-amz-wrap-alg"] == "kms+context" and meta["x-amz-cek-alg"] == "AES/GCM/NoPadding"
    assert meta["x-amz-tag-len"] == "128" and len(base64.b64decode(meta["x-amz-iv"])) == 12
    assert json.loads(meta["x-amz-matdesc"]) == {**(ctx or {}), "aws:x-amz-cek-alg": "AES/GCM/NoPadding"}
    mats = await store_s3ec.unwrap_kms(meta, keyring, env["key_id"], ctx)
    out, early = stream_decrypt(mats, body, "verify_first", 3 if size < 100 else 40_000)
    assert out == data and early == 0
    assert s3ec_streams.decrypt_body(mats, body, mode="delayed") == data


# -- sealgate writes, official client reads ----------------------------------------------------


async def sealgate_put_v3_kms(
    env: dict[str, str], keyring: AwsKmsKeyring, key: str, data: bytes, ctx: dict[str, str] | None, piece: int
) -> dict[str, str]:
    kctx = s3ec.kms_context(ctx)
    dk = await keyring.generate_data_key(env["key_id"], kctx)
    enc = s3ec_streams.S3ecV3Encryptor(dk.plaintext)
    body = b"".join(enc.update(p) for p in pieces(data, piece)) + enc.finish()
    assert len(body) == s3ec.ciphertext_length(len(data))
    meta = enc.metadata(dk.wrapped, s3ec.WRAP_KMS_CONTEXT, encryption_context=kctx)
    moto_client("s3", env["url"]).put_object(Bucket=env["bucket"], Key=key, Body=body, Metadata=meta)
    return meta


@pytest.mark.parametrize("ctx", CONTEXTS, ids=["no-ctx", "ctx"])
@pytest.mark.parametrize("size", SIZES)
async def test_sealgate_v3_read_by_official(
    env: dict[str, str], keyring: AwsKmsKeyring, size: int, ctx: dict[str, str] | None
) -> None:
    key = f"sg-v3/{uuid.uuid4().hex}"
    data = payload(size)
    meta = await sealgate_put_v3_kms(env, keyring, key, data, ctx, 1000 if size < 100_000 else 65536 + 3)
    assert official_get(env, key, ctx) == data
    assert official_get(env, key, ctx, delayed=True) == data
    # and sealgate reads its own object back
    body, stored = raw_get(env, key)
    assert stored == meta
    mats = await store_s3ec.unwrap_s3ec(stored, keyring=keyring, kms_key_id=env["key_id"])
    assert s3ec_streams.decrypt_body(mats, body) == data


async def test_sealgate_v3_wrong_context_refused_by_official(env: dict[str, str], keyring: AwsKmsKeyring) -> None:
    key = f"sg-v3/{uuid.uuid4().hex}"
    await sealgate_put_v3_kms(env, keyring, key, b"secret", {"tenant": "acme"}, 4)
    with pytest.raises(S3EncryptionClientError):
        official_get(env, key, {"tenant": "other"})
    with pytest.raises(S3EncryptionClientError):
        official_get(env, key, None)


class _TestAesKeyring(S3Keyring):  # type: ignore[misc]
    """Test-only: the official Python client ships no AES keyring, so this plugs the AES/GCM
    unwrapping S3EC's other clients document into the official decrypt pipeline. It checks
    the V3 metadata plumbing for x-amz-w = 02 / x-amz-m, not the wrapping itself."""

    def __init__(self, kek: bytes) -> None:
        self.kek = kek
        self.seen_context: dict[str, str] | None = None

    def on_encrypt(self, enc_materials: Any) -> Any:
        raise NotImplementedError

    def on_decrypt(self, dec_materials: Any, encrypted_data_keys: Any = None) -> Any:
        dec_materials = super().on_decrypt(dec_materials, encrypted_data_keys)
        edk = (encrypted_data_keys or dec_materials.encrypted_data_keys)[0]
        assert edk.key_provider_info == "AES/GCM"
        self.seen_context = dict(dec_materials.encryption_context_stored)
        w = edk.encrypted_data_key
        dec_materials.plaintext_data_key = AESGCM(self.kek).decrypt(w[:12], w[12:], b"AES/GCM/NoPadding")
        return dec_materials


@pytest.mark.parametrize("size", [0, 17, 1024 * 1024 + 1])
async def test_sealgate_v3_aes_gcm_wrapping(env: dict[str, str], size: int) -> None:
    kek = os.urandom(32)
    data_key = os.urandom(32)
    data = payload(size)
    enc = s3ec_streams.S3ecV3Encryptor(data_key)
    body = enc.update(data) + enc.finish()
    matdesc = {"sealgate-key": "local:default:1"}
    meta = enc.metadata(s3ec_keys.wrap_aes_gcm(kek, data_key), s3ec.WRAP_AES_GCM, material_description=matdesc)
    assert meta["x-amz-w"] == "02" and json.loads(meta["x-amz-m"]) == matdesc and "x-amz-t" not in meta
    key = f"sg-v3-aes/{uuid.uuid4().hex}"
    moto_client("s3", env["url"]).put_object(Bucket=env["bucket"], Key=key, Body=body, Metadata=meta)
    aes_keyring = _TestAesKeyring(kek)
    assert official_get(env, key, None, keyring=aes_keyring) == data
    assert aes_keyring.seen_context == matdesc  # the official reader takes x-amz-m for 02
    raw, stored = raw_get(env, key)
    assert s3ec_streams.decrypt_body(s3ec_keys.unwrap_with_key(stored, kek), raw) == data
    with pytest.raises(s3ec.S3ecKeyError):
        s3ec_keys.unwrap_with_key(stored, os.urandom(32))


def test_v2_aes_gcm_wrapping_vector() -> None:
    """V2 AES/GCM objects (the official Python client cannot write them): built by hand."""
    kek, data_key, iv, data = os.urandom(32), os.urandom(32), os.urandom(12), b"hello v2 aes/gcm"
    meta = {
        "x-amz-key-v2": base64.b64encode(s3ec_keys.wrap_aes_gcm(kek, data_key, version="v2")).decode(),
        "x-amz-wrap-alg": "AES/GCM",
        "x-amz-cek-alg": "AES/GCM/NoPadding",
        "x-amz-iv": base64.b64encode(iv).decode(),
        "x-amz-tag-len": "128",
        "x-amz-matdesc": "{}",
    }
    body = AESGCM(data_key).encrypt(iv, data, None)
    assert s3ec_streams.decrypt_body(s3ec_keys.unwrap_with_key(meta, kek), body) == data


# -- tampering ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def v3_object(env: dict[str, str]) -> tuple[bytes, bytes, dict[str, str]]:
    data = payload(100_003)
    key = f"tamper/{uuid.uuid4().hex}"
    official_put(env, key, data, {"tenant": "acme"})
    body, meta = raw_get(env, key)
    return data, body, meta


def _flip(b: bytes, i: int) -> bytes:
    return b[:i] + bytes([b[i] ^ 0x01]) + b[i + 1 :]


def _flip_b64(value: str, i: int = 0) -> str:
    return base64.b64encode(_flip(base64.b64decode(value), i)).decode()


def _refused_without_plaintext(mats: s3ec.S3ecMaterials, body: bytes) -> None:
    dec = s3ec_streams.S3ecDecryptor(mats, len(body), mode="verify_first")
    released = [out for p in pieces(body, 4096) for out in dec.feed(p)]
    assert released == []
    with pytest.raises(IntegrityError):
        dec.finish()


@pytest.mark.parametrize("where", ["first", "middle", "last-ciphertext", "tag-first", "tag-last"])
async def test_v3_tampered_body_refused(
    env: dict[str, str], keyring: AwsKmsKeyring, v3_object: tuple[bytes, bytes, dict[str, str]], where: str
) -> None:
    _, body, meta = v3_object
    n = len(body)
    i = {"first": 0, "middle": n // 2, "last-ciphertext": n - 17, "tag-first": n - 16, "tag-last": n - 1}[where]
    mats = await store_s3ec.unwrap_kms(meta, keyring, env["key_id"])
    _refused_without_plaintext(mats, _flip(body, i))
    # delayed mode releases plaintext but still fails at the end
    dec = s3ec_streams.S3ecDecryptor(mats, n, mode="delayed")
    [dec.feed(p) for p in pieces(_flip(body, i), 65536)]
    with pytest.raises(IntegrityError):
        dec.finish()


async def test_v3_truncated_or_extended_body_refused(
    env: dict[str, str], keyring: AwsKmsKeyring, v3_object: tuple[bytes, bytes, dict[str, str]]
) -> None:
    _, body, meta = v3_object
    mats = await store_s3ec.unwrap_kms(meta, keyring, env["key_id"])
    dec = s3ec_streams.S3ecDecryptor(mats, len(body))
    assert dec.feed(body[:-1]) == []
    with pytest.raises(IntegrityError):
        dec.finish()
    dec = s3ec_streams.S3ecDecryptor(mats, len(body))
    with pytest.raises(IntegrityError):
        dec.feed(body + b"x")
    # the stated length itself lies (the last 16 bytes are then not the tag)
    _refused_without_plaintext(mats, body[:-1])


@pytest.mark.parametrize("field", ["x-amz-d", "x-amz-i"])
async def test_v3_tampered_commitment_or_message_id_refused_before_decrypting(
    env: dict[str, str], keyring: AwsKmsKeyring, v3_object: tuple[bytes, bytes, dict[str, str]], field: str
) -> None:
    _, _, meta = v3_object
    bad = {**meta, field: _flip_b64(meta[field], 5)}
    with pytest.raises(IntegrityError, match="commitment"):
        await store_s3ec.unwrap_kms(bad, keyring, env["key_id"])
    # the official client agrees
    key = f"tamper/{uuid.uuid4().hex}"
    moto_client("s3", env["url"]).put_object(Bucket=env["bucket"], Key=key, Body=v3_object[1], Metadata=bad)
    with pytest.raises((S3EncryptionClientError, S3EncryptionClientSecurityError)):
        official_get(env, key, {"tenant": "acme"})


async def test_v3_tampered_context_or_wrapped_key_refused(
    env: dict[str, str], keyring: AwsKmsKeyring, v3_object: tuple[bytes, bytes, dict[str, str]]
) -> None:
    _, _, meta = v3_object
    other_ctx = {**meta, "x-amz-t": json.dumps({"tenant": "evil", "aws:x-amz-cek-alg": "115"})}
    with pytest.raises(InvalidWrappedKey):
        await store_s3ec.unwrap_kms(other_ctx, keyring, env["key_id"])
    with pytest.raises(InvalidWrappedKey):
        await store_s3ec.unwrap_kms(meta, keyring, env["key_id"], expected_context={"tenant": "evil"})
    with pytest.raises(InvalidWrappedKey):
        await store_s3ec.unwrap_kms({**meta, "x-amz-3": _flip_b64(meta["x-amz-3"], 40)}, keyring, env["key_id"])
    with pytest.raises(s3ec.S3ecFormatError):
        s3ec.parse({**meta, "x-amz-c": "114"})
    with pytest.raises(s3ec.S3ecFormatError):
        s3ec.parse({**meta, "x-amz-w": "99"})


async def test_v2_tampered_iv_and_body_refused(env: dict[str, str], keyring: AwsKmsKeyring) -> None:
    key = f"tamper-v2/{uuid.uuid4().hex}"
    data = payload(5000)
    official_put(env, key, data, None, v2=True)
    body, meta = raw_get(env, key)
    mats = await store_s3ec.unwrap_kms({**meta, "x-amz-iv": _flip_b64(meta["x-amz-iv"], 11)}, keyring, env["key_id"])
    _refused_without_plaintext(mats, body)
    mats = await store_s3ec.unwrap_kms(meta, keyring, env["key_id"])
    _refused_without_plaintext(mats, _flip(body, 100))
    _refused_without_plaintext(mats, _flip(body, len(body) - 1))
    assert s3ec_streams.decrypt_body(mats, body) == data


async def test_verify_first_limit_and_delayed_mode(
    env: dict[str, str], keyring: AwsKmsKeyring, v3_object: tuple[bytes, bytes, dict[str, str]]
) -> None:
    data, body, meta = v3_object
    mats = await store_s3ec.unwrap_kms(meta, keyring, env["key_id"])
    with pytest.raises(s3ec.S3ecTooLarge):
        s3ec_streams.S3ecDecryptor(mats, len(body), mode="verify_first", limit=len(data) - 1)
    assert s3ec_streams.decrypt_body(mats, body, limit=len(data)) == data
    out, early = stream_decrypt(mats, body, "delayed", 10_000)
    assert out == data and early >= len(data) - 10_000


# -- instruction files ----------------------------------------------------------------------------


async def test_v3_instruction_file_read_by_both(env: dict[str, str], keyring: AwsKmsKeyring) -> None:
    """A V3 object whose key material is in KEY.instruction, as the official reader expects it."""
    data = payload(3000)
    ctx = {"tenant": "acme"}
    kctx = s3ec.kms_context(ctx)
    dk = await keyring.generate_data_key(env["key_id"], kctx)
    enc = s3ec_streams.S3ecV3Encryptor(dk.plaintext)
    body = enc.update(data) + enc.finish()
    meta = enc.metadata(dk.wrapped, s3ec.WRAP_KMS_CONTEXT, encryption_context=kctx)
    obj_meta = {k: v for k, v in meta.items() if k in s3ec.V3_OBJECT_ONLY}
    instr = {k: v for k, v in meta.items() if k not in s3ec.V3_OBJECT_ONLY}
    key = f"instr/{uuid.uuid4().hex}"
    s3 = moto_client("s3", env["url"])
    s3.put_object(Bucket=env["bucket"], Key=key, Body=body, Metadata=obj_meta)
    s3.put_object(
        Bucket=env["bucket"],
        Key=key + s3ec.INSTRUCTION_SUFFIX,
        Body=json.dumps(instr).encode(),
        Metadata={"x-amz-crypto-instr-file": ""},
    )
    assert official_get(env, key, ctx) == data

    raw, stored = raw_get(env, key)
    assert s3ec.detect(stored) == "v3" and s3ec.needs_instruction_file(stored)
    instr_body, _ = raw_get(env, key + s3ec.INSTRUCTION_SUFFIX)
    parsed = s3ec.parse_instruction_file(instr_body)
    assert s3ec.detect(parsed) == "v3"
    merged = s3ec.merge_instruction_file(stored, parsed)
    mats = await store_s3ec.unwrap_s3ec(merged, keyring=keyring, kms_key_id=env["key_id"], expected_context=ctx)
    assert s3ec_streams.decrypt_body(mats, raw) == data
    with pytest.raises(s3ec.S3ecFormatError):
        s3ec.merge_instruction_file(stored, {**parsed, "x-amz-d": stored["x-amz-d"]})
    with pytest.raises(s3ec.S3ecFormatError):
        s3ec.parse_instruction_file(json.dumps({**parsed, "other": "x"}).encode())


def test_detect_and_parse_errors() -> None:
    assert s3ec.detect({}) is None
    assert s3ec.detect({"sg-v": "1"}) is None
    assert s3ec.detect({"x-amz-key": "AAAA", "x-amz-iv": "AAAA", "x-amz-matdesc": "{}"}) == "v1"
    assert s3ec.detect({"x-amz-key-v2": "AAAA"}) == "v2"
    assert s3ec.detect({"x-amz-c": "115"}) == "v3"
    with pytest.raises(s3ec.S3ecUnsupported):
        s3ec.parse({"x-amz-key": "AAAA", "x-amz-iv": "AAAA", "x-amz-matdesc": "{}"})
    with pytest.raises(s3ec.S3ecFormatError, match="mixes"):
        s3ec.parse({"x-amz-key-v2": "AAAA", "x-amz-3": "AAAA"})
    with pytest.raises(s3ec.S3ecFormatError):
        s3ec.plaintext_length(15)
    assert s3ec.plaintext_length(16) == 0
    with pytest.raises(ValueError):
        s3ec.kms_context({"aws:x-amz-cek-alg": "x"})


def test_official_client_refuses_ranges(env: dict[str, str]) -> None:
    """Documented in docs/INTEROP.md: the Python client has no ranged GET at all."""
    with pytest.raises(S3EncryptionClientError, match="Ranged"):
        official(env).get_object(Bucket=env["bucket"], Key="any", Range="bytes=0-1")
