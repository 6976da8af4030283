"""Connection limits over real TLS: header deadline (slowloris), connection cap, graceful shutdown."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from botocore.exceptions import ClientError
from cryptography import x509

from tests.conftest import SealgateThread, Stack, backend_client, client_for, free_port, wait_port, write_config
from tests.signing import sign


def start(d: Path, moto_url: str, tls: dict[str, Path], options: str) -> Stack:
    cfg = write_config(d, backend=moto_url, tls=tls, port=free_port(), server_extra=options)
    return Stack(SealgateThread(cfg).start(), moto_url, tls["ca"], d)


def tls_connect(port: int, ca: Path, timeout: float = 5.0) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(ca))
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def https(port: int, ca: Path) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("localhost", port, context=ssl.create_default_context(cafile=str(ca)), timeout=5)


def health(conn: http.client.HTTPSConnection) -> int:
    conn.request("GET", "/-/healthz")
    resp = conn.getresponse()
    resp.read()
    return resp.status


def list_buckets(conn: http.client.HTTPSConnection, port: int) -> int:
    """A signed request, which makes the connection an authenticated one."""
    headers = sign("GET", f"https://localhost:{port}/", {"Host": f"localhost:{port}"})
    conn.request("GET", "/", headers=headers)
    resp = conn.getresponse()
    resp.read()
    return resp.status


def seconds_until_closed(tls: ssl.SSLSocket, limit: float, during: Any = None) -> float:
    """Send one header byte every 0.1 s until the server closes; the time it took."""
    t0 = time.monotonic()
    tls.settimeout(0.1)
    while (elapsed := time.monotonic() - t0) < limit:
        if during is not None and elapsed > 0.3:
            during()
            during = None
        try:
            tls.sendall(b"x")
            if tls.recv(1024) == b"":
                return time.monotonic() - t0
        except TimeoutError:
            continue
        except (OSError, ssl.SSLError):
            return time.monotonic() - t0
    return float("inf")


@pytest.fixture(scope="module")
def limited(moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start(tmp_path_factory.mktemp("limits"), moto_url, tls_files, "header_timeout_seconds = 1")
    yield s
    s.gate.stop()


# --- header deadline -------------------------------------------------------------------------


def test_slowloris_is_cut_and_others_are_served(limited: Stack) -> None:
    port = limited.gate.running.tls_port
    served: list[int] = []
    with tls_connect(port, limited.ca_path) as slow:
        slow.sendall(b"GET /-/healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        took = seconds_until_closed(slow, 4.0, during=lambda: served.append(health(https(port, limited.ca_path))))
    assert served == [200]
    assert 0.8 < took < 3.0


def test_slowloris_on_a_kept_alive_connection_is_cut(limited: Stack) -> None:
    port = limited.gate.running.tls_port
    conn = https(port, limited.ca_path)
    assert health(conn) == 200
    assert conn.sock is not None
    conn.sock.sendall(b"GET /-/healthz HTTP/1.1\r\nHost: localhost\r\n")
    assert seconds_until_closed(conn.sock, 4.0) < 3.0


def test_idle_keepalive_and_slow_bodies_are_not_header_timeouts(limited: Stack) -> None:
    port = limited.gate.running.tls_port
    bucket = f"limits-{uuid.uuid4().hex[:12]}"
    limited.client().create_bucket(Bucket=bucket)
    conn = https(port, limited.ca_path)
    assert health(conn) == 200
    sock = conn.sock
    time.sleep(1.2)  # idle longer than the header timeout: keep-alive rules apply, not it
    assert health(conn) == 200 and conn.sock is sock

    # complete headers, then a body that takes longer than the header timeout
    pieces = [os.urandom(1000) for _ in range(4)]
    url = f"https://localhost:{port}/{bucket}/slow"
    headers = sign("PUT", url, {"Content-Length": str(4000), "Host": f"localhost:{port}"})
    conn.putrequest("PUT", f"/{bucket}/slow", skip_host=True, skip_accept_encoding=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders()
    for piece in pieces:
        time.sleep(0.3)
        conn.send(piece)
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    resp.read()
    assert limited.client().get_object(Bucket=bucket, Key="slow")["Body"].read() == b"".join(pieces)


def test_tls_handshake_has_the_deadline_too(limited: Stack) -> None:
    with socket.create_connection(("127.0.0.1", limited.gate.running.tls_port), timeout=4) as raw:
        t0 = time.monotonic()
        assert raw.recv(1) == b""  # never sends a ClientHello
        assert time.monotonic() - t0 < 3.0


# --- connection cap --------------------------------------------------------------------------


def test_connections_beyond_the_cap_wait_for_a_free_slot(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    st = start(tmp_path, moto_url, tls_files, "max_connections = 2")
    port = st.gate.running.tls_port
    try:
        # Authenticated connections: anonymous ones would give way to the third (test_fair_connections).
        first, second = https(port, st.ca_path), https(port, st.ca_path)
        assert list_buckets(first, port) == 200 and list_buckets(second, port) == 200
        third = https(port, st.ca_path)
        result: list[Any] = []
        thread = threading.Thread(target=lambda: result.append(health(third)), daemon=True)
        thread.start()
        thread.join(0.8)
        assert thread.is_alive(), "a third connection was served beyond max_connections = 2"
        first.close()
        thread.join(3)
        assert result == [200]
        assert list_buckets(second, port) == 200
    finally:
        st.gate.stop()


# --- graceful shutdown -----------------------------------------------------------------------


def slow_put(port: int, ca: Path, bucket: str, key: str, pieces: list[bytes], pause: float) -> http.client.HTTPResponse:
    conn = https(port, ca)
    url = f"https://localhost:{port}/{bucket}/{key}"
    headers = sign("PUT", url, {"Content-Length": str(sum(map(len, pieces))), "Host": f"localhost:{port}"})
    conn.putrequest("PUT", f"/{bucket}/{key}", skip_host=True, skip_accept_encoding=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders()
    for piece in pieces:
        conn.send(piece)
        time.sleep(pause)
    resp = conn.getresponse()
    resp.read()
    return resp


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def peer_serial(port: int, ca: Path) -> int:
    with tls_connect(port, ca) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_sighup_reloads_certificate_sigterm_finishes_uploads(
    moto_url: str, ca: trustme.CA, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    port = free_port()
    tls = {"ca": tls_files["ca"], "cert": tmp_path / "server.pem", "key": tmp_path / "server-key.pem"}
    shutil.copy(tls_files["cert"], tls["cert"])
    shutil.copy(tls_files["key"], tls["key"])
    cfg = write_config(
        tmp_path,
        backend=moto_url,
        tls=tls,
        port=port,
        server_extra="shutdown_timeout_seconds = 20\ntls_reload_seconds = 0",
    )
    log = (tmp_path / "sealgate.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "serve", "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_port(port)
        renewed = ca.issue_cert("localhost", "127.0.0.1")
        renewed.private_key_pem.write_to_path(str(tls["key"]))
        tls["cert"].write_bytes(b"".join(b.bytes() for b in renewed.cert_chain_pems))
        serial = x509.load_pem_x509_certificate(renewed.cert_chain_pems[0].bytes()).serial_number
        assert peer_serial(port, tls["ca"]) != serial  # no polling: only the signal reloads
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 3
        while peer_serial(port, tls["ca"]) != serial:
            assert time.monotonic() < deadline, "SIGHUP did not reload the certificate"
            time.sleep(0.05)

        bucket = f"drain-{uuid.uuid4().hex[:12]}"
        client_for(f"https://localhost:{port}", tls["ca"]).create_bucket(Bucket=bucket)
        pieces = [os.urandom(64 * 1024) for _ in range(8)]
        outcome: list[Any] = []
        upload = threading.Thread(
            target=lambda: outcome.append(slow_put(port, tls["ca"], bucket, "big", pieces, 0.15)), daemon=True
        )
        upload.start()
        time.sleep(0.4)
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 2
        while not refused(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert refused(port), "still accepting connections after SIGTERM"
        assert upload.is_alive(), "the upload ended before the listener closed; the test proves nothing"
        upload.join(10)
        assert outcome and outcome[0].status == 200
        assert outcome[0].getheader("Connection", "").lower() == "close"
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    stored = backend_client(moto_url).head_object(Bucket=bucket, Key="big")
    assert stored["ContentLength"] > sum(map(len, pieces))  # sealed: plaintext plus envelope


def test_shutdown_deadline_cuts_what_is_left(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    st = start(tmp_path, moto_url, tls_files, "shutdown_timeout_seconds = 0.5")
    port = st.gate.running.tls_port
    bucket = f"cut-{uuid.uuid4().hex[:12]}"
    st.client().create_bucket(Bucket=bucket)
    outcome: list[Any] = []

    def stalled() -> None:
        try:
            outcome.append(slow_put(port, st.ca_path, bucket, "stalled", [b"a" * 1000] * 8, 0.5))
        except (OSError, http.client.HTTPException) as exc:
            outcome.append(exc)

    upload = threading.Thread(target=stalled, daemon=True)
    upload.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    st.gate.stop()
    assert 0.4 < time.monotonic() - t0 < 4.0  # waited for the deadline, then cut
    upload.join(5)
    assert outcome and isinstance(outcome[0], Exception)
    with pytest.raises(ClientError) as err:
        st.backend().head_object(Bucket=bucket, Key="stalled")
    assert err.value.response["Error"]["Code"] == "404"  # never written, not merely unreadable
