"""Header values a client sends that the backend cannot take as they are: non-ASCII text in
Content-Disposition and x-amz-tagging is stored as S3 stores it (RFC 2047; percent-encoded
tags), never a 500 (issue 19 item 5)."""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Stack, start_stack
from tests.signing import sign


def _raw_put(st: Stack, path: str, headers: dict[str, str], body: bytes) -> bytes:
    port = int(st.gate.url.rsplit(":", 1)[1])
    url = f"https://localhost:{port}{path}"
    signed = sign("PUT", url, {**headers, "Host": f"localhost:{port}", "Content-Length": str(len(body))})
    ctx = ssl.create_default_context(cafile=str(st.ca_path))
    with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        head = f"PUT {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in signed.items()) + "\r\n"
        tls.sendall(head.encode("utf-8") + body)
        tls.settimeout(20)
        return tls.recv(65536)


def test_non_ascii_content_headers_are_stored_encoded(stack: Stack) -> None:
    bucket = f"hdr-{os.getpid()}-{os.urandom(2).hex()}"
    c = stack.client()
    c.create_bucket(Bucket=bucket)
    headers = {"Content-Disposition": 'attachment; filename="résumé – 履歴書.pdf"', "x-amz-tagging": "kind=résumé&x=1"}
    answer = _raw_put(stack, f"/{bucket}/cv", headers, b"body")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    got = c.get_object(Bucket=bucket, Key="cv")
    assert got["Body"].read() == b"body"
    disposition = got["ContentDisposition"]
    assert disposition.startswith("=?UTF-8?B?") and disposition.isascii()
    from email.header import decode_header

    decoded = b"".join(part for part, _ in decode_header(disposition) if isinstance(part, bytes)).decode()
    assert decoded == headers["Content-Disposition"]
    tags = c.get_object_tagging(Bucket=bucket, Key="cv")["TagSet"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("kind", "résumé"), ("x", "1")]


def test_a_key_with_a_newline_is_authenticated_and_served(
    rclone_s3: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    """A key may hold any character; one with a newline used to get 404 from the router,
    before its signature was even checked."""
    st = start_stack(
        tmp_path, rclone_s3, tls_files, backend_akid="rcloneaccess", backend_secret="rclonesecret0123456789"
    )
    try:
        bucket = f"nl-{os.getpid()}-{os.urandom(2).hex()}"
        c = st.client()
        c.create_bucket(Bucket=bucket)
        c.put_object(Bucket=bucket, Key="two\nlines", Body=b"x")
        assert c.get_object(Bucket=bucket, Key="two\nlines")["Body"].read() == b"x"
        bad = st.client(akid="SGNOBODY000000000009", secret="nobody-secret-000000009")
        with pytest.raises(ClientError) as err:
            bad.get_object(Bucket=bucket, Key="two\nlines")
        assert err.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    finally:
        st.gate.stop()
