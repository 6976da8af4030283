"""Certificate hot reload on a running sealgate: new handshakes get the new certificate, open
connections keep working, and a certificate that does not load changes nothing."""

from __future__ import annotations

import http.client
import os
import ssl
import time
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from tests.conftest import SealgateThread, free_port, write_config


def install(cert: trustme.LeafCert, cert_path: Path, key_path: Path) -> None:
    """Replace the files the way a deploy tool should: each one renamed into place."""
    cert.private_key_pem.write_to_path(str(key_path.with_suffix(".tmp")))
    os.replace(key_path.with_suffix(".tmp"), key_path)
    cert_path.with_suffix(".tmp").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    os.replace(cert_path.with_suffix(".tmp"), cert_path)


def serial_of(cert: trustme.LeafCert) -> int:
    return x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).serial_number


def peer_serial(conn: http.client.HTTPSConnection) -> int:
    assert isinstance(conn.sock, ssl.SSLSocket)
    der = conn.sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def health(conn: http.client.HTTPSConnection) -> int:
    conn.request("GET", "/-/healthz")
    resp = conn.getresponse()
    resp.read()
    return resp.status


def test_reload_on_file_change_keeps_open_connections(
    moto_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    trust = ssl.create_default_context(cadata=old_ca.cert_pem.bytes().decode() + new_ca.cert_pem.bytes().decode())
    old, new = old_ca.issue_cert("localhost"), new_ca.issue_cert("localhost")
    files = {"cert": tmp_path / "server.pem", "key": tmp_path / "server-key.pem", "ca": tmp_path / "unused.pem"}
    install(old, files["cert"], files["key"])
    port = free_port()
    cfg = write_config(tmp_path, backend=moto_url, tls=files, port=port, server_extra="tls_reload_seconds = 0.1")
    gate = SealgateThread(cfg).start()

    def connect() -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection("localhost", port, context=trust, timeout=5)
        assert health(conn) == 200
        return conn

    try:
        kept = connect()
        assert peer_serial(kept) == serial_of(old)

        install(new, files["cert"], files["key"])
        deadline = time.monotonic() + 3
        while peer_serial(fresh := connect()) != serial_of(new):
            fresh.close()
            assert time.monotonic() < deadline, "the new certificate was not picked up"
            time.sleep(0.05)
        assert health(kept) == 200 and peer_serial(kept) == serial_of(old)

        # A certificate whose key is not in place: refused, the running one stays.
        caplog.clear()
        stray = new_ca.issue_cert("localhost")
        files["cert"].write_bytes(stray.cert_chain_pems[0].bytes())
        deadline = time.monotonic() + 3
        while "TLS reload refused" not in caplog.text:
            assert time.monotonic() < deadline, "the broken certificate was not noticed"
            time.sleep(0.05)
        assert peer_serial(connect()) == serial_of(new)
        assert gate.running.reload_tls() is False  # and SIGHUP's path says so too
        assert health(kept) == 200 and health(fresh) == 200
    finally:
        gate.stop()
