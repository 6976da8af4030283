"""The client's address behind a balancer (issues 19 and 21): PROXY protocol v1 and v2 headers
and X-Forwarded-For, believed from ``server.trusted_proxies`` only, give the address that the
access log, the audit log, ``aws:SourceIp``, ``metrics_allow`` and the per-address connection
cap use.

Real sockets and real TLS: the "balancer" is a socket bound to 127.0.0.2 (Linux routes all of
127/8 to loopback), a client it does not vouch for comes from 127.0.0.3.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.net.proxy_protocol import v1_header, v2_header
from tests.conftest import Stack, free_port, start_stack, wait_port
from tests.signing import sign

BALANCER, STRANGER = "127.0.0.2", "127.0.0.3"
#: Only clients from the documentation network 203.0.113.0/24 may list buckets.
POLICY = """
[[policies]]
name = "from-the-office"
principals = ["tester"]
document = '''{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:ListAllMyBuckets",
  "Resource": "*", "Condition": {"IpAddress": {"aws:SourceIp": "203.0.113.0/24"}}}]}'''
"""


def _stack(tmp_path: Path, moto_url: str, tls_files: dict[str, Path], server: str) -> Stack:
    extra = POLICY + f'\n[audit]\npath = "{tmp_path / "audit.jsonl"}"\n'
    return start_stack(tmp_path, moto_url, tls_files, server_extra=server, extra=extra)


@pytest.fixture(scope="module")
def proxied(moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # 127.0.0.1: this host's own `sealgate health`, which sends a LOCAL header.
    trusted = f'trusted_proxies = ["{BALANCER}/32", "127.0.0.1/32"]'
    server = f"{trusted}\nproxy_protocol = true\nanonymous_connections_per_address = 2"
    st = _stack(tmp_path_factory.mktemp("proxied"), moto_url, tls_files, server)
    yield st
    st.gate.stop()


@pytest.fixture(scope="module")
def forwarded(moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    server = f'trusted_proxies = ["{BALANCER}/32"]\nanonymous_connections_per_address = 2'
    st = _stack(tmp_path_factory.mktemp("forwarded"), moto_url, tls_files, server)
    yield st
    st.gate.stop()


def _connect(stack: Stack, source: str, header: bytes | list[bytes] = b"", port: int | None = None) -> ssl.SSLSocket:
    """A TLS connection from `source` (to `port`, default sealgate's), opened with `header`
    (pieces sent 50 ms apart)."""
    port = port or stack.gate.running.tls_port
    raw = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    for i, piece in enumerate(header if isinstance(header, list) else [header]):
        if i:
            time.sleep(0.05)
        raw.sendall(piece)
    ctx = ssl.create_default_context(cafile=str(stack.ca_path))
    return ctx.wrap_socket(raw, server_hostname="localhost")


def _get(
    stack: Stack,
    path: str = "/",
    *,
    source: str = BALANCER,
    header: bytes | list[bytes] = b"",
    forwarded_for: str | None = None,
    via: int | None = None,
) -> bytes:
    """A signed GET `path` over a connection of its own (through port `via`, if given); the whole
    answer (status line first)."""
    port = stack.gate.running.tls_port
    headers = sign("GET", f"https://localhost:{port}{path}", {"Host": f"localhost:{port}"})
    if forwarded_for is not None:  # added by the balancer, after the client signed
        headers["X-Forwarded-For"] = forwarded_for
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with _connect(stack, source, header, via) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\n{lines}Connection: close\r\n\r\n".encode())
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    return answer


def _logged(caplog: pytest.LogCaptureFixture, text: str, seconds: float = 5.0) -> list[str]:
    deadline = time.monotonic() + seconds
    while True:
        found = [r.getMessage() for r in caplog.records if text in r.getMessage()]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _audit(stack: Stack) -> list[dict[str, object]]:
    return [json.loads(line) for line in (stack.dir / "audit.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "header",
    [
        v1_header(("203.0.113.7", 50123)),
        v2_header(("203.0.113.7", 50123)),
        v2_header(("203.0.113.7", 50123), tlvs=b"\x05\x00\x02id"),  # HAProxy may add TLVs
        [b"PROXY TCP4 203.0.", b"113.7 127.0.0.1 50123 8443\r\n"],  # in two pieces
    ],
    ids=["v1", "v2", "v2-tlv", "v1-in-pieces"],
)
def test_a_proxy_header_names_the_client_for_the_log_and_the_policy(
    proxied: Stack, header: bytes | list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sealgate.access")
    answer = _get(proxied, header=header)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]  # aws:SourceIp saw 203.0.113.7
    assert _logged(caplog, " 203.0.113.7 tester GET / 200 ")


def test_aws_source_ip_and_the_audit_line_see_the_proxied_address(proxied: Stack) -> None:
    answer = _get(proxied, header=v2_header(("198.51.100.9", 4000)))
    assert answer.startswith(b"HTTP/1.1 403 ") and b"<Code>AccessDenied</Code>" in answer
    denied = [r for r in _audit(proxied) if r.get("outcome") == "denied"]
    assert denied and denied[-1]["source"] == "198.51.100.9", denied


def test_a_local_header_is_the_balancers_own_connection(proxied: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sealgate.access")
    answer = _get(proxied, "/-/healthz", header=v2_header(None))  # HAProxy's health checks
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert _logged(caplog, f" {BALANCER} - GET /-/healthz 200 ")
    answer = _get(proxied, header=v1_header(None))  # UNKNOWN: the balancer's address stands
    assert answer.startswith(b"HTTP/1.1 403 ")


def test_sealgate_health_opens_with_a_local_header(proxied: Stack) -> None:
    cfg = proxied.dir / "sealgate.toml"
    for args, answer in ((["health"], "ok"), (["health", "--ready"], "ready")):
        r = subprocess.run(
            [sys.executable, "-m", "proxy.cli", *args, "-c", str(cfg)], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0 and r.stdout.strip() == answer, r.stderr


@pytest.mark.parametrize(
    ("source", "header", "why"),
    [
        (BALANCER, b"", "the connection does not start with a PROXY protocol header"),
        (BALANCER, b"PROXY TCP4 203.0.113.7 127.0.0.1 99999 8443\r\n", "a port that is not 0 to 65535"),
        (STRANGER, v2_header(("203.0.113.7", 1)), "not from server.trusted_proxies, and proxy_protocol = true"),
    ],
    ids=["no-header", "bad-header", "untrusted-peer"],
)
def test_connections_without_a_trusted_header_are_closed(
    proxied: Stack, source: str, header: bytes, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sealgate.listener")
    with pytest.raises((ssl.SSLError, ConnectionError, TimeoutError)):
        _get(proxied, header=header, source=source)
    (line,) = _logged(caplog, why)
    assert line.startswith(f"closed a connection from {source}: ")


def test_the_per_address_cap_counts_the_proxied_address(proxied: Stack) -> None:
    """Two anonymous connections per address (this stack's cap): a third for the same client is
    closed, one for another client through the same balancer is served."""
    held = [_connect(proxied, BALANCER, v2_header(("203.0.113.50", 1000 + i))) for i in range(2)]
    try:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _get(proxied, header=v2_header(("203.0.113.50", 2000)))
        assert _get(proxied, header=v2_header(("203.0.113.51", 2001))).startswith(b"HTTP/1.1 200 ")
    finally:
        for tls in held:
            tls.close()


def test_x_forwarded_for_from_a_trusted_proxy_names_the_client(
    forwarded: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sealgate.access")
    # The client wrote the left part itself; the balancer appended what it saw.
    answer = _get(forwarded, forwarded_for="198.51.100.1, 203.0.113.7")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert _logged(caplog, " 203.0.113.7 tester GET / 200 ")


def test_x_forwarded_for_from_anyone_else_is_ignored(forwarded: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sealgate.access")
    answer = _get(forwarded, source=STRANGER, forwarded_for="203.0.113.7")  # forged
    assert answer.startswith(b"HTTP/1.1 403 ") and b"<Code>AccessDenied</Code>" in answer
    assert _logged(caplog, f" {STRANGER} tester GET / 403 ")
    denied = [r for r in _audit(forwarded) if r.get("outcome") == "denied"]
    assert denied and denied[-1]["source"] == STRANGER


def test_metrics_allow_checks_the_forwarded_client(forwarded: Stack) -> None:
    # 127.0.0.2 is loopback, in the default metrics_allow; the client it forwards is not.
    assert _get(forwarded, "/-/metrics").startswith(b"HTTP/1.1 200 ")
    assert _get(forwarded, "/-/metrics", forwarded_for="203.0.113.7").startswith(b"HTTP/1.1 403 ")


def _health_on(tls: ssl.SSLSocket, forwarded_for: str) -> bytes:
    """An unsigned health check on a kept-alive connection (it stays anonymous)."""
    tls.sendall(f"GET /-/healthz HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: {forwarded_for}\r\n\r\n".encode())
    answer = b""
    while not answer.endswith(b"ok\n"):
        answer += tls.recv(4096)
    return answer


def _closed(tls: ssl.SSLSocket) -> bool:
    tls.settimeout(0.5)
    try:
        return tls.recv(1) == b""
    except TimeoutError:
        return False
    except (ssl.SSLError, ConnectionError):
        return True


def test_the_per_address_cap_counts_the_forwarded_client(forwarded: Stack) -> None:
    """The balancer's connections count against the address each request forwards (cap 2 here):
    a third anonymous connection for one client pushes out that client's oldest idle one, and
    leaves other clients' alone."""
    held = [_connect(forwarded, BALANCER) for _ in range(3)]
    try:
        for tls in held[:2]:
            assert _health_on(tls, "203.0.113.60").startswith(b"HTTP/1.1 200 ")
        assert _health_on(held[2], "203.0.113.61").startswith(b"HTTP/1.1 200 ")
        assert not any(_closed(tls) for tls in held)
        assert _get(forwarded, "/-/healthz", forwarded_for="203.0.113.60").startswith(b"HTTP/1.1 200 ")
        assert [_closed(tls) for tls in held] == [True, False, False]
    finally:
        for tls in held:
            tls.close()


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (apt-get install haproxy)")
def test_behind_a_real_haproxy_with_send_proxy_v2(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """deploy/haproxy's settings: TCP mode, send-proxy-v2, TLS health checks with a PROXY header."""
    st = _stack(tmp_path, moto_url, tls_files, 'trusted_proxies = ["127.0.0.1/32"]\nproxy_protocol = true')
    front = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        f"""
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend s3
    bind 127.0.0.1:{front}
    default_backend sealgate

backend sealgate
    option httpchk GET /-/readyz
    http-check expect status 200
    default-server send-proxy-v2 check check-ssl check-send-proxy verify none inter 300ms
    server gate1 127.0.0.1:{st.gate.running.tls_port}
"""
    )
    haproxy = subprocess.Popen(["haproxy", "-f", str(cfg)], stderr=subprocess.PIPE)
    try:
        caplog.set_level(logging.INFO)
        wait_port(front)
        assert _get(st, source="127.0.0.9", via=front).startswith(b"HTTP/1.1 403 ")  # not the office network
        assert _logged(caplog, " 127.0.0.9 tester GET / 403 ")
        assert _logged(caplog, " 127.0.0.1 - GET /-/readyz 200 ")  # HAProxy's own checks, LOCAL headers
        assert not [r for r in caplog.records if "closed a connection" in r.getMessage()]
    finally:
        haproxy.terminate()
        haproxy.wait(10)
        st.gate.stop()
