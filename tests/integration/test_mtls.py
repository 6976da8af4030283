"""Mutual TLS over real handshakes: client certificates from a trustme client CA, boto3 clients.

`tester` is bound to certificates with CN=alice, `bob` to the e-mail SAN bob@example.com, and
`carol` to no certificate at all.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import trustme
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, SSLError

from tests.conftest import CLIENT_AKID, CLIENT_SECRET, SealgateThread, free_port, write_config

BOB_AKID, BOB_SECRET = "SGTESTBOB00000000001", "bob-secret-0123456789abcdef"
CAROL_AKID, CAROL_SECRET = "SGTESTCAROL000000001", "carol-secret-0123456789abcdef"


def write_cert(cert: trustme.LeafCert, d: Path, name: str) -> tuple[str, str]:
    cert_path, key_path = d / f"{name}.pem", d / f"{name}-key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return str(cert_path), str(key_path)


class MTLS:
    def __init__(self, gate: SealgateThread, ca_path: Path, certs: dict[str, tuple[str, str]]) -> None:
        self.gate, self.ca_path, self.certs = gate, ca_path, certs

    def client(self, cert: str | None, akid: str = CLIENT_AKID, secret: str = CLIENT_SECRET) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.gate.url,
            aws_access_key_id=akid,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            verify=str(self.ca_path),
            config=BotoConfig(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1, "mode": "standard"},
                client_cert=self.certs[cert] if cert else None,
            ),
        )


@pytest.fixture(scope="module")
def mtls(moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[MTLS]:
    d = tmp_path_factory.mktemp("mtls")
    client_ca, stranger_ca = trustme.CA(), trustme.CA()
    client_ca.cert_pem.write_to_path(str(d / "client-ca.pem"))
    certs = {
        "alice": write_cert(client_ca.issue_cert("alice.example", common_name="alice"), d, "alice"),
        "bob": write_cert(client_ca.issue_cert("bob@example.com", common_name="robert"), d, "bob"),
        "dave": write_cert(client_ca.issue_cert("dave.example", common_name="dave"), d, "dave"),
        "forged": write_cert(stranger_ca.issue_cert("alice.example", common_name="alice"), d, "forged"),
    }
    extra = f"""cert_identities = ["CN=alice"]

[[clients]]
name = "bob"
access_key_id = "{BOB_AKID}"
secret_access_key = "{BOB_SECRET}"
cert_identities = ["email:bob@example.com"]

[[clients]]
name = "carol"
access_key_id = "{CAROL_AKID}"
secret_access_key = "{CAROL_SECRET}"
"""
    cfg = write_config(
        d,
        backend=moto_url,
        tls=tls_files,
        port=free_port(),
        extra=extra,
        server_extra=f'tls_client_ca = "{d / "client-ca.pem"}"',
    )
    gate = SealgateThread(cfg).start()
    yield MTLS(gate, tls_files["ca"], certs)
    gate.stop()


def raw_exchange(m: MTLS, cert: tuple[str, str] | None) -> bytes:
    """Handshake (with `cert`), send a health check, return what came back before the close."""
    ctx = ssl.create_default_context(cafile=str(m.ca_path))
    if cert is not None:
        ctx.load_cert_chain(*cert)
    got = b""
    with socket.create_connection(("127.0.0.1", m.gate.running.tls_port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                # With TLS 1.3 the server checks the client's certificate after the client
                # considers the handshake done, so the refusal arrives on the first read.
                tls.sendall(b"GET /-/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                while chunk := tls.recv(4096):
                    got += chunk
                    if b"ok\n" in got:
                        break
        except (ssl.SSLError, ConnectionError):
            pass
    return got


def test_health_check_works_with_a_client_certificate(mtls: MTLS) -> None:
    assert raw_exchange(mtls, mtls.certs["alice"]).startswith(b"HTTP/1.1 200")


def _logged(caplog: pytest.LogCaptureFixture, text: str, seconds: float = 5.0) -> list[logging.LogRecord]:
    """The records containing `text`, waiting for the server's thread to write them."""
    deadline = time.monotonic() + seconds
    while not (found := [r for r in caplog.records if text in r.getMessage()]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_no_certificate_handshake_refused(mtls: MTLS, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sealgate.tls")
    assert raw_exchange(mtls, None) == b""
    (line,) = _logged(caplog, "the client sent no certificate, and server.tls_client_ca requires one")
    assert line.levelno == logging.INFO and "TLS handshake from 127.0.0.1 failed" in line.getMessage()
    with pytest.raises((SSLError, EndpointConnectionError, ConnectionClosedError)):
        mtls.client(None).list_buckets()


def test_certificate_from_another_ca_refused(mtls: MTLS, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sealgate.tls")
    assert raw_exchange(mtls, mtls.certs["forged"]) == b""
    (line,) = _logged(caplog, "the client's certificate is not accepted by server.tls_client_ca")
    assert "TLS handshake from 127.0.0.1 failed" in line.getMessage() and "issuer" in line.getMessage()
    with pytest.raises((SSLError, EndpointConnectionError, ConnectionClosedError)):
        mtls.client("forged").list_buckets()


def test_right_certificate_and_keys_work(mtls: MTLS) -> None:
    s3 = mtls.client("alice")
    bucket = f"mtls-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="k", Body=b"hello")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"hello"
    # bob's certificate is matched by its e-mail SAN
    bob = mtls.client("bob", BOB_AKID, BOB_SECRET)
    assert bob.get_object(Bucket=bucket, Key="k")["Body"].read() == b"hello"


def access_denied(call: Any) -> None:
    with pytest.raises(ClientError) as err:
        call()
    assert err.value.response["Error"]["Code"] == "AccessDenied"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_certificate_with_another_clients_keys_denied(mtls: MTLS) -> None:
    access_denied(mtls.client("alice", BOB_AKID, BOB_SECRET).list_buckets)
    access_denied(mtls.client("bob").list_buckets)
    # a client without a certificate binding cannot borrow a bound client's certificate
    access_denied(mtls.client("alice", CAROL_AKID, CAROL_SECRET).list_buckets)


def test_unbound_certificate(mtls: MTLS) -> None:
    # dave's certificate names no client: the CA admits it, and only unbound clients' keys work
    mtls.client("dave", CAROL_AKID, CAROL_SECRET).list_buckets()
    access_denied(mtls.client("dave").list_buckets)
    access_denied(mtls.client("dave", BOB_AKID, BOB_SECRET).list_buckets)
