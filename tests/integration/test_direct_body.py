"""Bodies of at least ``server.direct_body_min_bytes``, read past aiohttp's parser
(proxy/server/direct.py), from real clients over TLS: same objects, same checks, same failure
handling as any other body. After a complete body the connection carries on, with the next
request (pipelined or not) parsed under the configured limits; a body that ends early closes it."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from tests.conftest import SealgateThread, Stack, free_port, write_config
from tests.signing import sign

MIN = 1024 * 1024  # the threshold these tests configure
HEADER_BYTES = 4096  # max_header_bytes here: not aiohttp's default, so a parser without it shows


@pytest.fixture(scope="module")
def direct(moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    d = tmp_path_factory.mktemp("direct")
    cfg = write_config(
        d,
        backend=moto_url,
        tls=tls_files,
        port=free_port(),
        server_extra=(
            f"direct_body_min_bytes = {MIN}\nbody_stall_timeout_seconds = 1\nmax_header_bytes = {HEADER_BYTES}"
        ),
    )
    s = Stack(SealgateThread(cfg).start(), moto_url, tls_files["ca"], d)
    s.backend().create_bucket(Bucket="direct")
    yield s
    s.gate.stop()


def https(stack: Stack) -> http.client.HTTPSConnection:
    ctx = ssl.create_default_context(cafile=str(stack.ca_path))
    return http.client.HTTPSConnection("localhost", stack.gate.running.tls_port, context=ctx, timeout=10)


def signed_put(stack: Stack, key: str, body: bytes, *, payload_hash: str | None = None) -> dict[str, str]:
    port = stack.gate.running.tls_port
    return sign(
        "PUT",
        f"https://localhost:{port}/direct/{key}",
        {"Content-Length": str(len(body)), "Host": f"localhost:{port}"},
        payload_hash=payload_hash or hashlib.sha256(body).hexdigest(),
    )


def raw_tls(stack: Stack) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(stack.ca_path))
    raw = socket.create_connection(("127.0.0.1", stack.gate.running.tls_port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def head(key: str, headers: dict[str, str]) -> bytes:
    return (f"PUT /direct/{key} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()


def read_to_end(tls: ssl.SSLSocket) -> bytes:
    out = b""
    try:
        while chunk := tls.recv(65536):
            out += chunk
    except (ConnectionError, ssl.SSLError):
        pass
    return out


def open_connections(stack: Stack) -> float:
    text = urllib3.PoolManager(ca_certs=str(stack.ca_path)).request("GET", stack.gate.url + "/-/metrics").data.decode()
    line = next(ln for ln in text.splitlines() if ln.startswith("sealgate_connections_open "))
    return float(line.split()[1])


def stored(stack: Stack, key: str) -> bool:
    try:
        stack.backend().head_object(Bucket="direct", Key=key)
    except ClientError:
        return False
    return True


def test_boto3_uploads_round_trip_encrypted(direct: Stack, tmp_path: Path) -> None:
    s3 = direct.client()
    data = os.urandom(3 * MIN + 12345)
    s3.put_object(Bucket="direct", Key="single", Body=data)  # aws-chunked with a CRC trailer
    assert s3.get_object(Bucket="direct", Key="single")["Body"].read() == data
    on_backend = direct.backend().get_object(Bucket="direct", Key="single")["Body"].read()
    assert len(on_backend) > len(data) and data[:4096] not in on_backend
    # A multipart upload whose parts are over the threshold.
    src = tmp_path / "big"
    src.write_bytes(os.urandom(11 * MIN))
    s3.upload_file(
        str(src), "direct", "parts", Config=TransferConfig(multipart_threshold=5 * MIN, multipart_chunksize=5 * MIN)
    )
    got = s3.get_object(Bucket="direct", Key="parts")["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(src.read_bytes()).digest()


def test_a_connection_carries_on_after_a_direct_body(direct: Stack) -> None:
    conn = https(direct)
    small = os.urandom(1000)
    conn.request("PUT", "/direct/small", body=small, headers=signed_put(direct, "small", small))
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200 and resp.getheader("Connection") != "close"
    sock = conn.sock
    bodies = {f"big{i}": os.urandom(2 * MIN + i * 4321) for i in range(3)}
    for key, big in bodies.items():  # direct bodies back to back, then other requests
        conn.request("PUT", f"/direct/{key}", body=big, headers=signed_put(direct, key, big))
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200 and resp.getheader("Connection") != "close"
    conn.request("GET", "/-/healthz")
    again = conn.getresponse()
    again.read()
    assert again.status == 200 and conn.sock is sock  # one connection throughout
    for key, big in bodies.items():
        assert direct.client().get_object(Bucket="direct", Key=key)["Body"].read() == big


def test_a_request_pipelined_after_a_direct_body_is_served_after_it(direct: Stack) -> None:
    body = os.urandom(2 * MIN)
    with raw_tls(direct) as tls:
        tls.sendall(head("piped", signed_put(direct, "piped", body)))
        tls.sendall(body + b"GET /-/healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = read_to_end(tls)
    first, _, rest = answer.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200") and b"Connection: close" not in first
    assert rest.startswith(b"HTTP/1.1 200") and rest.endswith(b"\r\n\r\nok\n"), answer[-300:]
    assert direct.client().get_object(Bucket="direct", Key="piped")["Body"].read() == body


def status(answer: bytes) -> bytes:
    return answer.split(b" ", 2)[1]


def request_with_header(size: int) -> bytes:
    return f"GET /-/healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: {'a' * size}\r\nConnection: close\r\n\r\n".encode()


@pytest.mark.parametrize("size", [2000, 6000])  # under and over 4096, both under aiohttp's 8190
def test_the_request_after_a_direct_body_is_parsed_under_the_configured_limits(direct: Stack, size: int) -> None:
    # A fresh connection's answer to a header of this size ...
    with raw_tls(direct) as tls:
        tls.sendall(request_with_header(size))
        fresh = read_to_end(tls)
    assert status(fresh) == (b"200" if size < HEADER_BYTES else b"400")
    # ... is the answer after a direct body on the same connection: the renewed parser has
    # sealgate's max_header_bytes, not aiohttp's default (8190).
    body = os.urandom(2 * MIN)
    with raw_tls(direct) as tls:
        tls.sendall(head("limits", signed_put(direct, "limits", body)))
        tls.sendall(body)
        tls.sendall(request_with_header(size))
        answer = read_to_end(tls)
    first, _, rest = answer.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200")
    assert status(rest) == status(fresh)


def test_a_body_that_does_not_match_its_signed_hash_stores_nothing(direct: Stack) -> None:
    body = os.urandom(2 * MIN)
    conn = https(direct)
    wrong = hashlib.sha256(b"something else").hexdigest()
    conn.request("PUT", "/direct/tampered", body=body, headers=signed_put(direct, "tampered", body, payload_hash=wrong))
    resp = conn.getresponse()
    text = resp.read()
    assert resp.status == 400 and b"XAmzContentSHA256Mismatch" in text
    assert not stored(direct, "tampered")


def test_a_client_gone_mid_body_stores_nothing_and_frees_its_connection(direct: Stack) -> None:
    before = open_connections(direct)
    body = os.urandom(4 * MIN)
    with raw_tls(direct) as tls:
        tls.sendall(head("gone", signed_put(direct, "gone", body)))
        tls.sendall(body[: 2 * MIN])
        time.sleep(0.3)
    for _ in range(50):
        if open_connections(direct) == before:
            break
        time.sleep(0.1)
    assert open_connections(direct) == before
    assert not stored(direct, "gone")


def test_a_stalled_body_times_out_and_stores_nothing(direct: Stack) -> None:
    body = os.urandom(2 * MIN)
    with raw_tls(direct) as tls:
        tls.sendall(head("stalled", signed_put(direct, "stalled", body)))
        tls.sendall(body[: MIN // 2])
        t0 = time.monotonic()
        answer = read_to_end(tls)
    assert answer.startswith(b"HTTP/1.1 400") and b"RequestTimeout" in answer
    # The rest of the body might still come: the connection cannot carry another request.
    assert b"Connection: close" in answer.partition(b"\r\n\r\n")[0]
    assert time.monotonic() - t0 < 5
    assert not stored(direct, "stalled")
