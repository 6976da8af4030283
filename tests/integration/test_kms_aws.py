"""The AWS KMS keyring against a real KMS-compatible server (moto) and real failing sockets."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from aiohttp import web

from proxy.kms.aws import AwsKmsKeyring
from proxy.kms.base import InvalidWrappedKey, KeyAccessDenied, KeyUnavailable
from proxy.store.errors import keyring_error
from tests.conftest import backend_client, free_port, multipart_put, start_stack
from tests.integration.test_key_cache import CountingKms

REGION = "us-east-1"
CTX = {"bucket": "b1", "key": "photos/cat.jpg"}


@pytest.fixture(scope="module")
def kms_url(moto_url: str) -> str:
    """moto serves KMS on the same port as S3 (the session fixture in tests/conftest.py)."""
    return moto_url


def _admin(url: str) -> Any:
    return boto3.client(
        "kms",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(scope="module")
def key_arn(kms_url: str) -> str:
    return str(_admin(kms_url).create_key(Description="sealgate test")["KeyMetadata"]["Arn"])


@pytest.fixture
async def keyring(kms_url: str) -> AsyncIterator[AwsKmsKeyring]:
    kr = AwsKmsKeyring(
        region=REGION,
        endpoint_url=kms_url,
        access_key_id="testing",
        secret_access_key="testing",
    )
    yield kr
    await kr.close()


def _dead_endpoint_keyring(url: str, **kw: Any) -> AwsKmsKeyring:
    return AwsKmsKeyring(
        region=REGION,
        endpoint_url=url,
        access_key_id="testing",
        secret_access_key="testing",
        connect_timeout=0.5,
        read_timeout=0.5,
        max_attempts=1,
        **kw,
    )


# --- against moto ----------------------------------------------------------------------


async def test_round_trip(keyring: AwsKmsKeyring, key_arn: str) -> None:
    key_id = key_arn.rsplit("/", 1)[1]
    dk = await keyring.generate_data_key(key_id, CTX)
    assert dk.key_ref == key_arn
    assert len(dk.plaintext) == 32
    assert dk.plaintext not in dk.wrapped
    assert await keyring.decrypt_data_key(dk.key_ref, dk.wrapped, CTX) == dk.plaintext
    assert dk.plaintext.hex() not in repr(dk)


async def test_data_keys_are_distinct(keyring: AwsKmsKeyring, key_arn: str) -> None:
    keys = [await keyring.generate_data_key(key_arn, CTX) for _ in range(5)]
    assert len({k.plaintext for k in keys}) == 5


async def test_empty_context_round_trip(keyring: AwsKmsKeyring, key_arn: str) -> None:
    dk = await keyring.generate_data_key(key_arn, {})
    assert await keyring.decrypt_data_key(dk.key_ref, dk.wrapped, {}) == dk.plaintext
    with pytest.raises(InvalidWrappedKey, match="does not decrypt .InvalidCiphertextException"):
        await keyring.decrypt_data_key(dk.key_ref, dk.wrapped, CTX)


@pytest.mark.parametrize(
    "context",
    [
        {"bucket": "b1", "key": "photos/dog.jpg"},
        {"bucket": "b1", "key": "photos/cat.jpg", "extra": "x"},
        {"bucket": "b1"},
        {},
    ],
)
async def test_wrong_context(keyring: AwsKmsKeyring, key_arn: str, context: dict[str, str]) -> None:
    dk = await keyring.generate_data_key(key_arn, CTX)
    with pytest.raises(InvalidWrappedKey) as err:
        await keyring.decrypt_data_key(dk.key_ref, dk.wrapped, context)
    assert keyring_error(err.value).status == 500
    assert dk.plaintext.hex() not in str(err.value)


async def test_tampered_wrapped(keyring: AwsKmsKeyring, key_arn: str) -> None:
    dk = await keyring.generate_data_key(key_arn, CTX)
    bad = bytearray(dk.wrapped)
    bad[-1] ^= 0x01
    with pytest.raises(InvalidWrappedKey, match="does not decrypt .InvalidCiphertextException"):
        await keyring.decrypt_data_key(dk.key_ref, bytes(bad), CTX)
    with pytest.raises(InvalidWrappedKey, match="KMS Decrypt with key"):
        await keyring.decrypt_data_key(dk.key_ref, b"", CTX)


async def test_unknown_key(keyring: AwsKmsKeyring, key_arn: str) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(KeyAccessDenied, match=missing) as err:
        await keyring.generate_data_key(missing, CTX)
    assert keyring_error(err.value).status == 403


async def test_decrypt_pinned_to_key_ref(keyring: AwsKmsKeyring, key_arn: str, kms_url: str) -> None:
    other = str(_admin(kms_url).create_key()["KeyMetadata"]["Arn"])
    dk = await keyring.generate_data_key(key_arn, CTX)
    # Refused for the key asked for (AWS KMS answers IncorrectKeyException, moto AccessDeniedException).
    refused = f"KMS Decrypt with key {re.escape(repr(other))}: (refused|request rejected)"
    with pytest.raises(KeyAccessDenied, match=refused):
        await keyring.decrypt_data_key(other, dk.wrapped, CTX)


async def test_no_credentials(kms_url: str, key_arn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    kr = AwsKmsKeyring(region=REGION, endpoint_url=kms_url)
    try:
        with pytest.raises(KeyAccessDenied, match="credentials"):
            await kr.generate_data_key(key_arn, CTX)
    finally:
        await kr.close()


async def test_default_credential_chain(kms_url: str, key_arn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    kr = AwsKmsKeyring(region=REGION, endpoint_url=kms_url)
    try:
        dk = await kr.generate_data_key(key_arn, CTX)
        assert await kr.decrypt_data_key(dk.key_ref, dk.wrapped, CTX) == dk.plaintext
    finally:
        await kr.close()


async def test_closed_keyring(kms_url: str, key_arn: str) -> None:
    kr = _dead_endpoint_keyring(kms_url)
    await kr.close()
    await kr.close()
    with pytest.raises(KeyUnavailable, match="closed"):
        await kr.generate_data_key(key_arn, CTX)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="both"):
        AwsKmsKeyring(region=REGION, endpoint_url=None, access_key_id="x")
    with pytest.raises(ValueError, match="max_attempts"):
        AwsKmsKeyring(region=REGION, endpoint_url=None, max_attempts=0)


# --- unreachable and failing endpoints -------------------------------------------------


async def test_unreachable() -> None:
    port = free_port()  # bound then released: nothing listens there
    kr = _dead_endpoint_keyring(f"http://127.0.0.1:{port}")
    try:
        start = time.monotonic()
        with pytest.raises(KeyUnavailable) as err:
            await kr.generate_data_key("alias/anything", CTX)
        assert time.monotonic() - start < 3
        assert keyring_error(err.value).status == 503
        with pytest.raises(KeyUnavailable, match="KMS Decrypt .*: key service unreachable"):
            await kr.decrypt_data_key("arn:aws:kms:us-east-1:1:key/x", b"\x01" * 64, CTX)
    finally:
        await kr.close()


async def test_read_timeout() -> None:
    # A listener that never accepts: connections complete in the backlog, then nothing.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        kr = _dead_endpoint_keyring(f"http://127.0.0.1:{silent.getsockname()[1]}")
        try:
            start = time.monotonic()
            with pytest.raises(KeyUnavailable, match="unreachable"):
                await kr.generate_data_key("alias/anything", CTX)
            assert time.monotonic() - start < 3
        finally:
            await kr.close()


class _ErrorServer(ThreadingHTTPServer):
    """Answers every request with one configured KMS JSON error."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ErrorHandler)
        self.status = 500
        self.code = "KMSInternalException"


class _ErrorHandler(BaseHTTPRequestHandler):
    server: _ErrorServer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = json.dumps({"__type": self.server.code, "message": "simulated"}).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def error_server() -> Iterator[_ErrorServer]:
    server = _ErrorServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "ThrottlingException", KeyUnavailable),
        (500, "KMSInternalException", KeyUnavailable),
        (500, "DependencyTimeoutException", KeyUnavailable),
        (500, "KeyUnavailableException", KeyUnavailable),
        (503, "ServiceUnavailable", KeyUnavailable),
        (502, "", KeyUnavailable),
        (400, "NotFoundException", KeyAccessDenied),
        (400, "DisabledException", KeyAccessDenied),
        (400, "AccessDeniedException", KeyAccessDenied),
        (400, "KMSInvalidStateException", KeyAccessDenied),
        (400, "InvalidKeyUsageException", KeyAccessDenied),
        (400, "IncorrectKeyException", KeyAccessDenied),
        (400, "UnrecognizedClientException", KeyAccessDenied),
        (400, "ValidationException", KeyAccessDenied),
        (400, "InvalidCiphertextException", InvalidWrappedKey),
    ],
)
async def test_error_mapping(error_server: _ErrorServer, status: int, code: str, expected: type[Exception]) -> None:
    error_server.status, error_server.code = status, code
    kr = _dead_endpoint_keyring(f"http://127.0.0.1:{error_server.server_address[1]}")
    try:
        with pytest.raises(expected) as err:
            await kr.decrypt_data_key("arn:aws:kms:us-east-1:1:key/x", b"\x01" * 64, CTX)
        assert "Decrypt" in str(err.value)
        if code:
            assert code in str(err.value)
    finally:
        await kr.close()


# --- asymmetric (RSA) KMS keys -----------------------------------------------------------
#
# moto 5.2 creates RSA ENCRYPT_DECRYPT keys and serves their public keys, but its Decrypt
# ignores EncryptionAlgorithm and reads every ciphertext as its own symmetric blob: data keys
# wrapped with an RSA public key do not decrypt there (AccessDeniedException). So: uploads,
# refused reads and the GetPublicKey count are tested against moto; the KMS Decrypt path is
# tested against `RsaKms`, a loopback stand-in that answers GetPublicKey and Decrypt for one RSA
# key pair the test holds, as AWS documents them (OAEP-SHA-256 without label, no context).


class RsaKms(CountingKms):
    """A counting relay to moto that itself serves one RSA_3072 KMS key (GetPublicKey, Decrypt)."""

    def __init__(self, upstream: str) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.private = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        self.key_id = str(uuid.uuid4())
        self.arn = f"arn:aws:kms:{REGION}:123456789012:key/{self.key_id}"
        super().__init__(upstream)

    async def _relay(self, request: web.Request) -> web.Response:
        import base64

        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding

        body = await request.read()
        doc = json.loads(body or b"{}")
        operation = request.headers.get("X-Amz-Target", "").rsplit(".", 1)[-1]
        if doc.get("KeyId") not in (self.key_id, self.arn):
            return await self._forward(request, operation, body)
        self.calls[operation] += 1
        answer: dict[str, Any]
        if operation == "GetPublicKey":
            der = self.private.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            answer = {
                "KeyId": self.arn,
                "KeySpec": "RSA_3072",
                "KeyUsage": "ENCRYPT_DECRYPT",
                "EncryptionAlgorithms": ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"],
                "PublicKey": base64.b64encode(der).decode(),
            }
        elif operation == "Decrypt":
            if doc.get("EncryptionAlgorithm") != "RSAES_OAEP_SHA_256" or doc.get("EncryptionContext"):
                return _kms_error("ValidationException")
            oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
            try:
                plain = self.private.decrypt(base64.b64decode(doc["CiphertextBlob"]), oaep)
            except ValueError:
                return _kms_error("InvalidCiphertextException")
            answer = {"KeyId": self.arn, "Plaintext": base64.b64encode(plain).decode()}
            answer["EncryptionAlgorithm"] = "RSAES_OAEP_SHA_256"
        else:
            return _kms_error("UnsupportedOperationException")
        return web.json_response(answer, content_type="application/x-amz-json-1.1")

    async def _forward(self, request: web.Request, operation: str, body: bytes) -> web.Response:
        self.calls[operation] += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with aiohttp.ClientSession() as s, s.post(self.upstream + "/", data=body, headers=headers) as r:
            return web.Response(status=r.status, body=await r.read(), content_type=r.content_type)


def _kms_error(code: str) -> web.Response:
    return web.json_response(
        {"__type": code, "message": "refused"}, status=400, content_type="application/x-amz-json-1.1"
    )


@pytest.fixture(scope="module")
def rsa_kms(moto_url: str) -> Iterator[RsaKms]:
    relay = RsaKms(moto_url)
    yield relay
    relay.loop.call_soon_threadsafe(relay.loop.stop)


@pytest.fixture(scope="module")
def moto_rsa_key(kms_url: str) -> str:
    meta = _admin(kms_url).create_key(KeySpec="RSA_3072", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]
    return str(meta["KeyId"])


def _keyring_at(url: str, rsa_keys: tuple[str, ...]) -> AwsKmsKeyring:
    return AwsKmsKeyring(
        region=REGION, endpoint_url=url, access_key_id="testing", secret_access_key="testing", rsa_keys=rsa_keys
    )


async def test_rsa_key_wraps_locally_with_one_get_public_key(rsa_kms: RsaKms, moto_rsa_key: str) -> None:
    kr = _keyring_at(rsa_kms.url, (moto_rsa_key,))
    try:
        rsa_kms.calls.clear()
        keys = [await kr.generate_data_key(moto_rsa_key, {"bucket": "b", "key": str(i)}) for i in range(3)]
        copied = await kr.wrap_data_key(moto_rsa_key, keys[0].plaintext, CTX)
        assert rsa_kms.calls["GetPublicKey"] == 1
        assert rsa_kms.calls["GenerateDataKey"] == rsa_kms.calls["Encrypt"] == 0
        for dk in [*keys, copied]:
            assert dk.key_ref.startswith("kms-rsa:arn:aws:kms:") and dk.key_ref.endswith("/" + moto_rsa_key)
            assert len(dk.wrapped) == 384 and dk.plaintext not in dk.wrapped
        assert len({k.plaintext for k in keys}) == 3
        # moto's Decrypt cannot open RSA ciphertexts (see above): it refuses, nothing is returned.
        refused = "KMS Decrypt with key .*: (wrapped key does not decrypt|refused|request rejected)"
        with pytest.raises((KeyAccessDenied, InvalidWrappedKey), match=refused):
            await kr.decrypt_data_key(copied.key_ref, copied.wrapped, CTX)
    finally:
        await kr.close()


async def test_rsa_key_refuses_a_symmetric_key(kms_url: str, key_arn: str) -> None:
    kr = _keyring_at(kms_url, (key_arn,))
    try:
        with pytest.raises(KeyAccessDenied, match="not an RSA key"):
            await kr.generate_data_key(key_arn, CTX)
    finally:
        await kr.close()


async def test_rsa_round_trip_through_kms_decrypt(rsa_kms: RsaKms) -> None:
    kr = _keyring_at(rsa_kms.url, (rsa_kms.key_id,))
    try:
        rsa_kms.calls.clear()
        dk = await kr.generate_data_key(rsa_kms.key_id, CTX)
        assert dk.key_ref == "kms-rsa:" + rsa_kms.arn
        assert await kr.decrypt_data_key(dk.key_ref, dk.wrapped, CTX) == dk.plaintext
        assert (rsa_kms.calls["GetPublicKey"], rsa_kms.calls["Decrypt"]) == (1, 1)
        # The context is bound although KMS takes none for RSA keys: another one is refused.
        with pytest.raises(InvalidWrappedKey, match="was not made for this key and context"):
            await kr.decrypt_data_key(dk.key_ref, dk.wrapped, {"bucket": "b1", "key": "photos/dog.jpg"})
        bad = bytearray(dk.wrapped)
        bad[7] ^= 1
        with pytest.raises(InvalidWrappedKey, match="does not decrypt .InvalidCiphertextException"):
            await kr.decrypt_data_key(dk.key_ref, bytes(bad), CTX)
    finally:
        await kr.close()


def _gateway_kms(url: str, key_id: str, extra: str = "") -> str:
    return (
        f'provider = "aws-kms"\nregion = "{REGION}"\nendpoint = "{url}"\ndefault_key = "{key_id}"\n'
        f'access_key_id = "testing"\nsecret_access_key = "testing"\nrsa_keys = ["{key_id}"]\n{extra}'
    )


def test_encrypt_only_gateway_with_a_kms_rsa_key(
    rsa_kms: RsaKms, moto_rsa_key: str, moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    from botocore.exceptions import ClientError

    policy = f"""
[[keys]]
id = "{moto_rsa_key}"
encrypt = ["tester"]
decrypt = ["tester"]
mode = "encrypt-only"

[encryption]
upload_secret = "shared-upload-secret-0123456789"
"""
    st = start_stack(tmp_path, moto_url, tls_files, kms=_gateway_kms(rsa_kms.url, moto_rsa_key), extra=policy)
    try:
        s3 = st.client()
        s3.create_bucket(Bucket="eo-kms-rsa")
        rsa_kms.calls.clear()
        for i in range(3):
            s3.put_object(Bucket="eo-kms-rsa", Key=f"small{i}", Body=os.urandom(1000 + i))
        parts = [os.urandom(5 * 1024 * 1024), b"tail"]
        multipart_put(s3, "eo-kms-rsa", "big", parts)
        ref = backend_client(moto_url).head_object(Bucket="eo-kms-rsa", Key="small0")["Metadata"]["sg-kr"]
        assert ref.startswith("kms-rsa:arn:aws:kms:") and ref.endswith("/" + moto_rsa_key)
        for key in ("small0", "big"):
            with pytest.raises(ClientError) as err:
                s3.get_object(Bucket="eo-kms-rsa", Key=key)
            assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
            assert "encrypt-only" in err.value.response["Error"]["Message"]
        assert rsa_kms.calls["GetPublicKey"] == 1
        assert rsa_kms.calls["GenerateDataKey"] == rsa_kms.calls["Decrypt"] == rsa_kms.calls["Encrypt"] == 0
    finally:
        st.gate.stop()


def test_read_write_gateway_with_a_kms_rsa_key(
    rsa_kms: RsaKms, moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    from botocore.exceptions import ClientError

    cache = "[kms.cache]\nenabled = false\n"
    st = start_stack(tmp_path, moto_url, tls_files, kms=_gateway_kms(rsa_kms.url, rsa_kms.key_id, cache))
    try:
        s3, raw = st.client(), backend_client(moto_url)
        s3.create_bucket(Bucket="rw-kms-rsa")
        rsa_kms.calls.clear()
        bodies = {f"o{i}": os.urandom(70_000 + i) for i in range(2)}
        for k, v in bodies.items():
            s3.put_object(Bucket="rw-kms-rsa", Key=k, Body=v)
        for k, v in bodies.items():
            assert s3.get_object(Bucket="rw-kms-rsa", Key=k)["Body"].read() == v
        assert (rsa_kms.calls["GetPublicKey"], rsa_kms.calls["Decrypt"]) == (1, 2)
        # An object's envelope moved onto another name does not open there.
        stored = raw.get_object(Bucket="rw-kms-rsa", Key="o0")
        raw.put_object(Bucket="rw-kms-rsa", Key="o1", Body=stored["Body"].read(), Metadata=stored["Metadata"])
        with pytest.raises(ClientError) as err:
            s3.get_object(Bucket="rw-kms-rsa", Key="o1")["Body"].read()
        assert err.value.response["Error"]["Code"] == "ObjectIntegrityError"  # not a 503 or an AccessDenied
    finally:
        st.gate.stop()


def test_cached_key_uses_are_audited(key_arn: str, moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    """One audit line per key use, also when the data-key cache spares the KMS call."""
    from proxy.audit import verify_file

    audit = tmp_path / "audit.jsonl"
    kms = (
        f'provider = "aws-kms"\nregion = "{REGION}"\nendpoint = "{moto_url}"\ndefault_key = "{key_arn}"\n'
        'access_key_id = "testing"\nsecret_access_key = "testing"\n'
    )
    st = start_stack(tmp_path, moto_url, tls_files, kms=kms, extra=f'[audit]\npath = "{audit}"\n')
    try:
        s3 = st.client()
        s3.create_bucket(Bucket="audit-cache")
        for k in ("a", "b", "c"):
            s3.put_object(Bucket="audit-cache", Key=k, Body=k.encode())
        for _ in range(2):
            for k in ("a", "b", "c"):
                assert s3.get_object(Bucket="audit-cache", Key=k)["Body"].read() == k.encode()
    finally:
        st.gate.stop()
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    uses = [(r["operation"], r["reason"], r["object_key"]) for r in records if r["bucket"] == "audit-cache"]
    generated = [u for u in uses if u[0] == "generate"]
    decrypted = [u for u in uses if u[0] == "decrypt"]
    assert [u[1] for u in generated] == [None, "cached", "cached"]  # one KMS call, three uses
    assert [u[2] for u in generated] == ["a", "b", "c"]
    assert sorted(u[1] or "kms" for u in decrypted) == ["cached"] * 5 + ["kms"]
    assert [u[2] for u in decrypted] == ["a", "b", "c"] * 2
    assert all(r["identity"] == "tester" and r["outcome"] == "allowed" for r in records if r["bucket"] == "audit-cache")
    assert verify_file(audit).ok
