"""Client authentication: each failure refused with S3's code, and nothing stored."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import zlib

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Stack, client_for
from tests.signing import send, sign


def stored(stack: Stack, bucket: str, key: str) -> bool:
    try:
        stack.backend().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError:
        return False


def error_code(resp: object) -> str:
    import re

    m = re.search(rb"<Code>([^<]+)</Code>", resp.data)  # type: ignore[attr-defined]
    return m.group(1).decode() if m else ""


def test_wrong_secret(stack: Stack, bucket: str) -> None:
    s3 = client_for(stack.gate.url, stack.ca_path, secret="wrong-secret-wrong-secret-000")
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket=bucket, Key="k", Body=b"data")
    assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert not stored(stack, bucket, "k")


def test_unknown_access_key(stack: Stack, bucket: str) -> None:
    s3 = client_for(stack.gate.url, stack.ca_path, akid="SGUNKNOWN00000000000")
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket=bucket, Key="k", Body=b"data")
    assert err.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    assert not stored(stack, bucket, "k")


def test_stale_date(stack: Stack, bucket: str) -> None:
    url = f"{stack.gate.url}/{bucket}/k"
    body = b"data"
    when = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=20)
    h = sign("PUT", url, {"Content-Length": "4"}, payload_hash=hashlib.sha256(body).hexdigest(), when=when)
    r = send(stack.ca_path, "PUT", url, h, body)
    assert r.status == 403 and error_code(r) == "RequestTimeTooSkewed"
    assert not stored(stack, bucket, "k")


def test_unsigned_request_denied(stack: Stack, bucket: str) -> None:
    r = send(stack.ca_path, "GET", f"{stack.gate.url}/{bucket}", {})
    assert r.status == 403 and error_code(r) == "AccessDenied"


def test_tampered_payload_hash(stack: Stack, bucket: str) -> None:
    url = f"{stack.gate.url}/{bucket}/k"
    h = sign("PUT", url, {"Content-Length": "4"}, payload_hash=hashlib.sha256(b"data").hexdigest())
    r = send(stack.ca_path, "PUT", url, h, b"DATA")
    assert r.status == 400 and error_code(r) == "XAmzContentSHA256Mismatch"
    assert not stored(stack, bucket, "k")


def test_hex_payload_put_gets_md5_etag(stack: Stack, bucket: str) -> None:
    url = f"{stack.gate.url}/{bucket}/hexed"
    body = os.urandom(70000)
    h = sign("PUT", url, {"Content-Length": str(len(body))}, payload_hash=hashlib.sha256(body).hexdigest())
    r = send(stack.ca_path, "PUT", url, h, body)
    assert r.status == 200, r.data
    assert r.headers["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    s3 = stack.client()
    assert s3.head_object(Bucket=bucket, Key="hexed")["ETag"] == r.headers["ETag"]
    got = s3.get_object(Bucket=bucket, Key="hexed")
    assert got["ETag"] == r.headers["ETag"] and got["Body"].read() == body


def _aws_chunked(body: bytes, crc: bytes) -> bytes:
    out = b""
    if body:
        out += f"{len(body):x}\r\n".encode() + body + b"\r\n"
    return out + b"0\r\nx-amz-checksum-crc32:" + base64.b64encode(crc) + b"\r\n\r\n"


@pytest.mark.parametrize("good", [True, False])
def test_trailing_checksum(stack: Stack, bucket: str, good: bool) -> None:
    url = f"{stack.gate.url}/{bucket}/trailer-{good}"
    body = os.urandom(100000)
    crc = zlib.crc32(body).to_bytes(4, "big")
    if not good:
        crc = bytes(4)
    wire = _aws_chunked(body, crc)
    h = sign(
        "PUT",
        url,
        {
            "Content-Encoding": "aws-chunked",
            "X-Amz-Decoded-Content-Length": str(len(body)),
            "X-Amz-Trailer": "x-amz-checksum-crc32",
            "x-amz-sdk-checksum-algorithm": "CRC32",
        },
        payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER",
    )
    pieces = [wire[i : i + 7000] for i in range(0, len(wire), 7000)]
    r = send(stack.ca_path, "PUT", url, h, pieces, chunked=True)
    if good:
        assert r.status == 200, r.data
        assert stack.client().get_object(Bucket=bucket, Key=f"trailer-{good}")["Body"].read() == body
    else:
        assert r.status == 400 and error_code(r) == "BadDigest"
        assert not stored(stack, bucket, f"trailer-{good}")


def test_bad_content_md5(stack: Stack, bucket: str) -> None:
    s3 = stack.client(when_required=True)
    with pytest.raises(ClientError) as err:
        s3.put_object(
            Bucket=bucket,
            Key="md5",
            Body=b"data",
            ContentMD5=base64.b64encode(hashlib.md5(b"other").digest()).decode(),
        )
    assert err.value.response["Error"]["Code"] == "BadDigest"
    assert not stored(stack, bucket, "md5")
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket=bucket, Key="md5", Body=b"data", ContentMD5="not-base64!")
    assert err.value.response["Error"]["Code"] == "InvalidDigest"
    assert not stored(stack, bucket, "md5")


def test_virtual_hosted_style(stack: Stack, bucket: str) -> None:
    """Host: <bucket>.localhost selects the bucket; the path is the key."""
    import urllib3

    port = stack.gate.running.tls_port
    host = f"{bucket}.localhost:{port}"
    body = b"virtual"
    h = sign(
        "PUT",
        f"https://{host}/vh/key",
        {"Content-Length": str(len(body)), "Host": host},
        payload_hash=hashlib.sha256(body).hexdigest(),
    )
    pool = urllib3.HTTPSConnectionPool(
        "127.0.0.1",
        port,
        ca_certs=str(stack.ca_path),
        server_hostname="localhost",
        assert_hostname="localhost",
        retries=False,
    )
    r = pool.request("PUT", "/vh/key", headers=h, body=body)
    assert r.status == 200, r.data
    assert stack.client().get_object(Bucket=bucket, Key="vh/key")["Body"].read() == body


def test_checksum_header_checked(stack: Stack, bucket: str) -> None:
    url = f"{stack.gate.url}/{bucket}/crc-header"
    body = os.urandom(5000)
    for crc, status in ((zlib.crc32(body), 200), (zlib.crc32(body) ^ 1, 400)):
        value = base64.b64encode(crc.to_bytes(4, "big")).decode()
        h = sign("PUT", url, {"Content-Length": str(len(body)), "x-amz-checksum-crc32": value})
        r = send(stack.ca_path, "PUT", url, h, body)
        assert r.status == status, r.data
        if status == 200:
            assert r.headers["x-amz-checksum-crc32"] == value  # the plaintext's, as verified
        else:
            assert error_code(r) == "BadDigest"
    # The object stored is the good one; the bad attempt changed nothing.
    assert stack.client().get_object(Bucket=bucket, Key="crc-header")["Body"].read() == body


def _signed_chunks(secret: str, amz_date: str, seed: str, chunks: list[bytes]) -> bytes:
    """An aws-chunked body with a signature per chunk, per the SigV4 streaming specification."""
    import hmac

    def h(key: bytes, msg: str) -> bytes:
        return hmac.new(key, msg.encode(), hashlib.sha256).digest()

    k = h(h(h(h(("AWS4" + secret).encode(), amz_date[:8]), "us-east-1"), "s3"), "aws4_request")
    scope = f"{amz_date[:8]}/us-east-1/s3/aws4_request"
    prev, out = seed, b""
    for c in [*chunks, b""]:
        sts = "\n".join(
            [
                "AWS4-HMAC-SHA256-PAYLOAD",
                amz_date,
                scope,
                prev,
                hashlib.sha256(b"").hexdigest(),
                hashlib.sha256(c).hexdigest(),
            ]
        )
        prev = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
        out += f"{len(c):x};chunk-signature={prev}\r\n".encode() + c + b"\r\n"
    return out


@pytest.mark.parametrize("tamper", [False, True])
def test_signed_chunk_upload(stack: Stack, bucket: str, tamper: bool) -> None:
    from tests.conftest import CLIENT_SECRET

    url = f"{stack.gate.url}/{bucket}/signed-chunks-{tamper}"
    chunks = [os.urandom(65536), os.urandom(1000)]
    total = sum(map(len, chunks))
    h = sign(
        "PUT",
        url,
        {"Content-Encoding": "aws-chunked", "X-Amz-Decoded-Content-Length": str(total)},
        payload_hash="STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    )
    seed = h["Authorization"].rsplit("Signature=", 1)[1]
    wire = bytearray(_signed_chunks(CLIENT_SECRET, h["X-Amz-Date"], seed, chunks))
    if tamper:
        wire[200] ^= 1
    r = send(stack.ca_path, "PUT", url, h, [bytes(wire)], chunked=True)
    if tamper:
        assert r.status == 403 and error_code(r) == "SignatureDoesNotMatch"
        assert not stored(stack, bucket, f"signed-chunks-{tamper}")
    else:
        assert r.status == 200, r.data
        assert stack.client().get_object(Bucket=bucket, Key=f"signed-chunks-{tamper}")["Body"].read() == b"".join(
            chunks
        )
