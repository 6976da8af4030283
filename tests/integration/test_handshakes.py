"""TLS mistakes are logged with their cause (issue 21 item 6): plain HTTP to the TLS port, a client
that does not trust sealgate's certificate, and an ``https://`` backend that speaks plain HTTP;
a flood of them cannot fill the log. Real sockets, real TLS, a real moto backend."""

from __future__ import annotations

import logging
import socket
import ssl
import time
from pathlib import Path

import pytest
import trustme
from botocore.exceptions import ClientError

from tests.conftest import Stack, start_stack


def _port(stack: Stack) -> int:
    return int(stack.gate.running.tls_port)


def _logged(caplog: pytest.LogCaptureFixture, text: str, seconds: float = 5.0) -> list[logging.LogRecord]:
    """The records containing `text`, waiting for the server's thread to write them."""
    deadline = time.monotonic() + seconds
    while not (found := [r for r in caplog.records if text in r.getMessage()]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _plain_http(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /-/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        try:
            return sock.recv(100)
        except ConnectionError:
            return b""


@pytest.fixture
def fresh_stack(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> Stack:
    """A sealgate of its own: the log limit counts per server."""
    st = start_stack(tmp_path, moto_url, tls_files)
    yield st  # type: ignore[misc]
    st.gate.stop()


def test_plain_http_to_the_tls_port_is_logged_with_its_cause(
    fresh_stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sealgate.tls")
    assert _plain_http(_port(fresh_stack)) == b""  # nothing sensible to answer on a TLS port
    (line,) = _logged(caplog, "plain HTTP sent to the TLS port")
    assert line.levelno == logging.INFO
    assert line.getMessage().startswith("TLS handshake from 127.0.0.1 failed: plain HTTP sent to the TLS port")


def test_a_client_that_does_not_trust_the_certificate_is_logged(
    fresh_stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sealgate.tls")
    ctx = ssl.create_default_context()
    trustme.CA().configure_trust(ctx)  # some other CA than the one that issued sealgate's cert
    with (
        socket.create_connection(("127.0.0.1", _port(fresh_stack)), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ctx.wrap_socket(raw, server_hostname="localhost")
    (line,) = _logged(caplog, "does not accept sealgate's certificate")
    assert line.levelno == logging.WARNING  # most often sealgate's side: a certificate clients cannot check
    assert "TLS handshake from 127.0.0.1 failed" in line.getMessage()
    assert "(its alert: unknown ca)" in line.getMessage() and "server.tls_cert" in line.getMessage()


def test_a_flood_of_bad_handshakes_logs_a_few_lines_and_the_count(
    fresh_stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sealgate.tls")
    for _ in range(40):
        _plain_http(_port(fresh_stack))
    _logged(caplog, "plain HTTP", 2.0)
    time.sleep(0.5)  # the last failures reach the log
    lines = [r for r in caplog.records if "plain HTTP sent to the TLS port" in r.getMessage()]
    assert len([r for r in lines if r.levelno >= logging.INFO]) == 5, [r.getMessage() for r in lines]
    # The server is still there for everyone else.
    assert fresh_stack.client().list_buckets()["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_an_https_backend_that_speaks_http_is_named_as_such(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    st = start_stack(tmp_path, moto_url.replace("http://", "https://"), tls_files)
    try:
        caplog.set_level(logging.INFO)
        with pytest.raises(ClientError) as err:
            st.client().list_buckets()
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert err.value.response["Error"]["Code"] == "ServiceUnavailable"  # an S3 XML error, as before
        (line,) = _logged(caplog, "does not speak TLS")[:1]
        assert line.levelno == logging.WARNING
        assert moto_url.replace("http://", "https://") in line.getMessage()
        assert "backend.endpoint" in line.getMessage() and "http://" in line.getMessage()
    finally:
        st.gate.stop()
