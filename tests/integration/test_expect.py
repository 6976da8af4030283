"""The signature is checked before `100 Continue`: a bad request never gets to send its body."""

from __future__ import annotations

import hashlib
import socket
import ssl

from tests.conftest import Stack
from tests.signing import sign


def _exchange(
    stack: Stack, bucket: str, secret: str | None, extra: dict[str, str] | None = None, path: str = "expect"
) -> bytes:
    port = stack.gate.running.tls_port
    body = b"x" * 1000
    headers = {
        "Host": f"localhost:{port}",
        "Content-Length": str(len(body)),
        "Expect": "100-continue",
        **(extra or {}),
    }
    kwargs = {"secret": secret} if secret else {}
    h = sign(
        "PUT",
        f"https://localhost:{port}/{bucket}/{path}",
        headers,
        payload_hash=hashlib.sha256(body).hexdigest(),
        **kwargs,
    )
    ctx = ssl.create_default_context(cafile=str(stack.ca_path))
    with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        head = f"PUT /{bucket}/{path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
        tls.sendall(head.encode())
        tls.settimeout(10)
        first = tls.recv(65536)
        if first.startswith(b"HTTP/1.1 100"):
            tls.sendall(body)
            rest = b""
            while b"\r\n\r\n" not in rest:
                rest += tls.recv(65536)
            return first + rest
        return first


def test_bad_signature_refused_before_continue(stack: Stack, bucket: str) -> None:
    answer = _exchange(stack, bucket, "wrong-secret-wrong-secret-0")
    assert answer.startswith(b"HTTP/1.1 403")
    assert b"SignatureDoesNotMatch" in answer


def test_good_signature_gets_continue(stack: Stack, bucket: str) -> None:
    answer = _exchange(stack, bucket, None)
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200")


def test_write_conditions_are_checked_before_continue(stack: Stack, bucket: str) -> None:
    """A conditional PutObject that will fail answers before the client sends its body."""
    s3 = stack.client()
    old = s3.put_object(Bucket=bucket, Key="expect", Body=b"first")["ETag"]
    s3.put_object(Bucket=bucket, Key="expect", Body=b"second")
    answer = _exchange(stack, bucket, None, {"If-None-Match": "*"})
    assert answer.startswith(b"HTTP/1.1 412") and b"PreconditionFailed" in answer
    answer = _exchange(stack, bucket, None, {"If-Match": old})
    assert answer.startswith(b"HTTP/1.1 412")
    current = s3.head_object(Bucket=bucket, Key="expect")["ETag"]
    answer = _exchange(stack, bucket, None, {"If-Match": current})
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200")
    assert s3.get_object(Bucket=bucket, Key="expect")["Body"].read() == b"x" * 1000


def test_unsupported_requests_are_refused_before_continue(stack: Stack, bucket: str) -> None:
    answer = _exchange(stack, bucket, None, path="expect?restore")
    assert answer.startswith(b"HTTP/1.1 501") and b"NotImplemented" in answer
    answer = _exchange(stack, bucket, None, {"x-amz-server-side-encryption-customer-algorithm": "AES256"})
    assert answer.startswith(b"HTTP/1.1 501")
