"""The AWS KMS keyring against a real KMS-compatible server (moto) and real failing sockets."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from proxy.kms.aws import AwsKmsKeyring
from proxy.kms.base import InvalidWrappedKey, KeyAccessDenied, KeyUnavailable
from tests.conftest import free_port

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
    with pytest.raises(InvalidWrappedKey):
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
    assert err.value.status == 500
    assert dk.plaintext.hex() not in str(err.value)


async def test_tampered_wrapped(keyring: AwsKmsKeyring, key_arn: str) -> None:
    dk = await keyring.generate_data_key(key_arn, CTX)
    bad = bytearray(dk.wrapped)
    bad[-1] ^= 0x01
    with pytest.raises(InvalidWrappedKey):
        await keyring.decrypt_data_key(dk.key_ref, bytes(bad), CTX)
    with pytest.raises(InvalidWrappedKey):
        await keyring.decrypt_data_key(dk.key_ref, b"", CTX)


async def test_unknown_key(keyring: AwsKmsKeyring, key_arn: str) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(KeyAccessDenied, match=missing) as err:
        await keyring.generate_data_key(missing, CTX)
    assert err.value.status == 403


async def test_decrypt_pinned_to_key_ref(keyring: AwsKmsKeyring, key_arn: str, kms_url: str) -> None:
    other = str(_admin(kms_url).create_key()["KeyMetadata"]["Arn"])
    dk = await keyring.generate_data_key(key_arn, CTX)
    with pytest.raises(KeyAccessDenied):
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
        assert err.value.status == 503
        with pytest.raises(KeyUnavailable):
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
