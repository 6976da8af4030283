"""Requests aiohttp cannot parse are answered as S3 would answer them (an XML error) and logged
in one line at INFO: no traceback, and nothing of what the request carried (issue 19 item 4)."""

from __future__ import annotations

import logging
import os
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.conftest import Stack

SIGNATURE = "5eb7a1c2d3e4f5061728394a5b6c7d8e9f00112233445566778899aabbccddee"


def _send(stack: Stack, raw: bytes) -> bytes:
    port = int(stack.gate.url.rsplit(":", 1)[1])
    ctx = ssl.create_default_context(cafile=str(stack.ca_path))
    sock = socket.create_connection(("127.0.0.1", port))
    with sock, ctx.wrap_socket(sock, server_hostname="localhost") as tls:
        tls.sendall(raw)
        tls.settimeout(3)
        out = b""
        try:
            while chunk := tls.recv(65536):
                out += chunk
        except TimeoutError:
            pass  # what came is the answer; the assertions say whether it was the right one
        return out


@pytest.mark.parametrize(
    "raw",
    [
        # A bare LF in the request line, on a presigned URL: the signature must not reach the log.
        f"GET /b/k?X-Amz-Signature={SIGNATURE} HTTP/1.1\nHost: localhost\n\n".encode(),
        f"GET /b/k HTTP/1.1\r\nHost: localhost\r\nX-Bad\x01Header: {SIGNATURE}\r\n\r\n".encode(),
        (
            f"GET /b/k HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nContent-Length: 2\r\nX: {SIGNATURE}\r\n\r\n"
        ).encode(),
        f"NOT HTTP AT ALL /b/k?X-Amz-Signature={SIGNATURE}\r\n\r\n".encode(),
        f"GET /b/k HTTP/1.1\r\nHost: localhost\r\nX-Long: {SIGNATURE * 300}\r\n\r\n".encode(),
    ],
    ids=["bare-lf", "bad-header-name", "two-lengths", "not-a-request-line", "header-too-long"],
)
def test_malformed_requests_get_an_s3_error_and_leave_no_trace_of_their_bytes(
    stack: Stack, raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answer = _send(stack, raw)
    head, _, body = answer.partition(b"\r\n\r\n")
    # HTTP/1.1 (aiohttp's own answer says HTTP/1.0), and the connection closes after it.
    assert head.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"\r\nConnection: close" in head, head
    assert b"<Code>BadRequest</Code>" in body and b"application/xml" in head
    assert SIGNATURE.encode() not in answer
    assert b"/b/k" not in answer and b"X-Bad" not in answer and b"Content-Length: 2" not in answer  # no echo
    assert SIGNATURE not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "Traceback" not in caplog.text
    assert "malformed request from 127.0.0.1: 400" in caplog.text


@pytest.mark.parametrize("fmt", ["sealgate", "s3ec-v3"])
def test_a_client_that_stops_reading_a_download_is_no_internal_error(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture, fmt: str
) -> None:
    from tests.conftest import start_stack

    rule = '[[buckets]]\nname = "gone-v3"\nformat = "s3ec-v3"\n' if fmt == "s3ec-v3" else ""
    st = start_stack(tmp_path, moto_url, tls_files, extra=rule)
    bucket = "gone-v3" if fmt == "s3ec-v3" else "gone-plain"
    try:
        c = st.client()
        c.create_bucket(Bucket=bucket)
        c.put_object(Bucket=bucket, Key="big", Body=os.urandom(24 * 1024 * 1024))
        caplog.set_level(logging.INFO)
        for _ in range(3):
            body = c.get_object(Bucket=bucket, Key="big")["Body"]
            body.read(1024)
            body.close()  # stops reading and closes the connection mid-answer
        time.sleep(1.0)
        assert "unhandled error" not in caplog.text and "Traceback" not in caplog.text
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text[-2000:]
        assert c.get_object(Bucket=bucket, Key="big")["ContentLength"] == 24 * 1024 * 1024
    finally:
        st.gate.stop()
