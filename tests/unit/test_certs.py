"""`init_certs`: a CA and a server certificate that verify, private keys 0600, no silent overwrite."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from proxy.certs import SERVER_CERT_DAYS, CertPaths, init_certs
from proxy.server.tls import server_ssl_context

#: What the verifier says of a certificate issued for other names (not an expired or untrusted one).
NO_SAN = "leaf certificate has no matching subjectAltName"


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def verify(paths: CertPaths, name: DNSName | IPAddress) -> None:
    store = Store([load_cert(paths.ca_cert)])
    verifier = PolicyBuilder().store(store).build_server_verifier(name)
    verifier.verify(load_cert(paths.server_cert), [])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def paths(tmp_path: Path) -> CertPaths:
    return init_certs(tmp_path / "certs")


def test_files_and_modes(paths: CertPaths, tmp_path: Path) -> None:
    assert paths == CertPaths.in_directory(tmp_path / "certs")
    assert mode(paths.ca_key) == 0o600
    assert mode(paths.server_key) == 0o600
    assert mode(paths.ca_cert) == 0o644
    assert mode(paths.server_cert) == 0o644
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == [
        "ca-key.pem",
        "ca.pem",
        "server-key.pem",
        "server.pem",
    ]


def test_modes_do_not_depend_on_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        paths = init_certs(tmp_path)
    finally:
        os.umask(old)
    assert mode(paths.ca_key) == 0o600 and mode(paths.server_key) == 0o600


def test_keys_load_and_match(paths: CertPaths) -> None:
    for cert_path, key_path in ((paths.ca_cert, paths.ca_key), (paths.server_cert, paths.server_key)):
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert isinstance(key.curve, ec.SECP256R1)
        assert load_cert(cert_path).public_key() == key.public_key()


@pytest.mark.parametrize(
    "name",
    [DNSName("localhost"), IPAddress(ipaddress.ip_address("127.0.0.1")), IPAddress(ipaddress.ip_address("::1"))],
    ids=["localhost", "ipv4", "ipv6"],
)
def test_server_cert_verifies_against_ca(paths: CertPaths, name: DNSName | IPAddress) -> None:
    verify(paths, name)


def test_server_cert_does_not_verify_for_other_names(paths: CertPaths) -> None:
    with pytest.raises(VerificationError, match=NO_SAN):
        verify(paths, DNSName("example.com"))


def test_extensions(paths: CertPaths) -> None:
    ca = load_cert(paths.ca_cert)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign

    leaf = load_cert(paths.server_cert)
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    lifetime = leaf.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=SERVER_CERT_DAYS - 1) < lifetime <= dt.timedelta(days=SERVER_CERT_DAYS)
    assert leaf.issuer == ca.subject


@contextmanager
def tls_server(ctx: ssl.SSLContext) -> Iterator[int]:
    """A one-connection TLS server on 127.0.0.1 (port chosen by the OS); yields the port."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve() -> None:
            conn, _ = listener.accept()
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        yield int(listener.getsockname()[1])
        thread.join(10)


def test_real_handshake(paths: CertPaths) -> None:
    server_ctx = server_ssl_context(paths.server_cert, paths.server_key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # empty trust store: only our CA
    client_ctx.load_verify_locations(cafile=str(paths.ca_cert))
    # Both a DNS-name and an IP-address SAN, as clients check them.
    for host in ("localhost", "127.0.0.1"):
        with (
            tls_server(server_ctx) as port,
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            assert tls.recv(2) == b"ok"


def test_refuses_to_overwrite(paths: CertPaths) -> None:
    before = {p: p.read_bytes() for p in (paths.ca_cert, paths.ca_key, paths.server_cert, paths.server_key)}
    with pytest.raises(FileExistsError, match="server.pem exists"):
        init_certs(paths.ca_cert.parent)
    assert {p: p.read_bytes() for p in before} == before


def test_overwrite_reissues_server_cert_under_the_same_ca(paths: CertPaths) -> None:
    ca_before = paths.ca_cert.read_bytes(), paths.ca_key.read_bytes()
    leaf_before = paths.server_cert.read_bytes()
    again = init_certs(paths.ca_cert.parent, ("sealgate.internal", "10.0.0.7"), overwrite=True)
    assert (again.ca_cert.read_bytes(), again.ca_key.read_bytes()) == ca_before
    assert again.server_cert.read_bytes() != leaf_before
    verify(again, DNSName("sealgate.internal"))
    verify(again, IPAddress(ipaddress.ip_address("10.0.0.7")))
    with pytest.raises(VerificationError, match=NO_SAN):
        verify(again, DNSName("localhost"))


def test_existing_ca_reused_without_overwrite_when_server_files_are_gone(paths: CertPaths) -> None:
    ca_before = paths.ca_cert.read_bytes()
    paths.server_cert.unlink()
    paths.server_key.unlink()
    again = init_certs(paths.ca_cert.parent)
    assert again.ca_cert.read_bytes() == ca_before
    verify(again, DNSName("localhost"))


def test_half_a_ca_is_refused_then_replaced_with_overwrite(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("stale\n")
    with pytest.raises(FileExistsError, match="ca.pem exists without .*ca-key.pem"):
        init_certs(tmp_path)
    assert not (tmp_path / "server.pem").exists()
    paths = init_certs(tmp_path, overwrite=True)
    verify(paths, DNSName("localhost"))


def test_mismatched_ca_key_is_not_reused(paths: CertPaths, tmp_path: Path) -> None:
    other = init_certs(tmp_path / "other")
    paths.ca_key.write_bytes(other.ca_key.read_bytes())
    paths.server_cert.unlink()
    paths.server_key.unlink()
    with pytest.raises(FileExistsError, match="cannot be reused: ca-key.pem does not belong to ca.pem"):
        init_certs(paths.ca_cert.parent)
    fresh = init_certs(paths.ca_cert.parent, overwrite=True)
    verify(fresh, DNSName("localhost"))
    assert mode(fresh.ca_key) == 0o600


@pytest.mark.parametrize("bad", ["not a host", "", "bücher.example", "-lead.example"])
def test_invalid_hostname_writes_nothing(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match=f"not a DNS name or IP address: {re.escape(repr(bad))}"):
        init_certs(tmp_path / "certs", ("localhost", bad))
    assert not (tmp_path / "certs").exists()


def test_duplicate_and_wildcard_names(tmp_path: Path) -> None:
    paths = init_certs(tmp_path, ("LocalHost", "localhost", "*.sealgate.internal"))
    leaf = load_cert(paths.server_cert)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "*.sealgate.internal"]


def test_no_temporary_files_left(paths: CertPaths) -> None:
    assert not [p for p in paths.ca_cert.parent.iterdir() if p.name.startswith(".")]


def _iter_pem_blocks(path: Path) -> Iterator[str]:
    text = path.read_text()
    yield from (block for block in text.split("-----END CERTIFICATE-----") if block.strip())


def test_server_pem_is_the_leaf_alone(paths: CertPaths) -> None:
    assert len(list(_iter_pem_blocks(paths.server_cert))) == 1
