"""TLS contexts, checked by real handshakes on loopback (certificates from trustme).

This machine sets SSL_CERT_FILE / AWS_CA_BUNDLE globally, so every client context here is
built from an empty trust store and given the test CA explicitly.
"""

from __future__ import annotations

import socket
import ssl
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from proxy.config import Config
from proxy.s3.errors import S3Error
from proxy.server.tls import (
    CertificateReloader,
    TLSConfigError,
    cert_binding_problem,
    check_client_certificate,
    peer_identities,
    server_ssl_context,
)
from proxy.tls_files import backend_ssl_context


@dataclass
class Outcome:
    """What one handshake did, seen from both ends."""

    version: str | None = None
    cipher: str | None = None
    alpn: str | None = None
    client_error: Exception | None = None
    server_error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.client_error is None and self.server_error is None


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, host: str = "localhost") -> Outcome:
    """Connect `client_ctx` to `server_ctx` over 127.0.0.1 and exchange one message."""
    out = Outcome()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                conn.settimeout(10)
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    # In TLS 1.3 a missing client certificate surfaces here, after the handshake.
                    tls.sendall(b"ok")
                    tls.recv(1)
            except (ssl.SSLError, OSError) as exc:
                out.server_error = exc

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                client_ctx.wrap_socket(raw, server_hostname=host) as tls,
            ):
                out.version = tls.version()
                cipher = tls.cipher()
                out.cipher = cipher[0] if cipher else None
                out.alpn = tls.selected_alpn_protocol()
                if tls.recv(2) != b"ok":
                    raise ConnectionError("server closed the connection")
        except (ssl.SSLError, OSError) as exc:
            out.client_error = exc
        thread.join(10)
    return out


def write_chain(cert: trustme.LeafCert, d: Path) -> tuple[Path, Path]:
    cert_path, key_path = d / "server.pem", d / "server-key.pem"
    cert.private_key_pem.write_to_path(str(key_path))
    with open(cert_path, "wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    return cert_path, key_path


@pytest.fixture(params=[trustme.KeyType.ECDSA, trustme.KeyType.RSA], ids=["ecdsa", "rsa"])
def ca(request: pytest.FixtureRequest) -> trustme.CA:
    return trustme.CA(key_type=request.param)


@pytest.fixture
def server_files(ca: trustme.CA, tmp_path: Path) -> tuple[Path, Path]:
    return write_chain(ca.issue_cert("localhost", "127.0.0.1"), tmp_path)


@pytest.fixture
def server_ctx(server_files: tuple[Path, Path]) -> ssl.SSLContext:
    return server_ssl_context(*server_files)


def client(ca: trustme.CA, tweak: Callable[[ssl.SSLContext], None] | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # loads no default trust store
    ca.configure_trust(ctx)
    if tweak is not None:
        tweak(ctx)
    return ctx


def tls12_only(ctx: ssl.SSLContext) -> None:
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2


def test_tls13_handshake(ca: trustme.CA, server_ctx: ssl.SSLContext) -> None:
    out = handshake(server_ctx, client(ca))
    assert out.ok, out
    assert out.version == "TLSv1.3"


def test_tls12_ecdhe_gcm_handshake(ca: trustme.CA, server_ctx: ssl.SSLContext) -> None:
    out = handshake(server_ctx, client(ca, tls12_only))
    assert out.ok, out
    assert out.version == "TLSv1.2"
    assert out.cipher is not None and out.cipher.startswith("ECDHE-") and "GCM" in out.cipher


def test_tls12_chacha20(ca: trustme.CA, server_ctx: ssl.SSLContext) -> None:
    def chacha_only(ctx: ssl.SSLContext) -> None:
        tls12_only(ctx)
        ctx.set_ciphers("ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")

    out = handshake(server_ctx, client(ca, chacha_only))
    assert out.ok, out
    assert out.cipher is not None and "CHACHA20-POLY1305" in out.cipher


def test_server_cipher_order_wins(ca: trustme.CA, server_ctx: ssl.SSLContext) -> None:
    def prefer_chacha(ctx: ssl.SSLContext) -> None:
        tls12_only(ctx)
        ctx.set_ciphers("ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:ECDHE+AESGCM")

    out = handshake(server_ctx, client(ca, prefer_chacha))
    assert out.ok, out
    assert out.cipher is not None and out.cipher.endswith("AES128-GCM-SHA256")


def test_tls11_refused_by_the_server(ca: trustme.CA, server_ctx: ssl.SSLContext) -> None:
    def tls11(ctx: ssl.SSLContext) -> None:
        # Security level 0 lets this OpenSSL send a TLS 1.1 hello at all, so the refusal
        # we see is the server's.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        out = handshake(server_ctx, client(ca, tls11))
    assert out.client_error is not None
    assert isinstance(out.server_error, ssl.SSLError)
    assert "UNSUPPORTED_PROTOCOL" in str(out.server_error)


@pytest.mark.parametrize(
    "ciphers",
    ["AES128-SHA", "ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384:AES256-SHA256"],
)
def test_cbc_only_client_refused(ca: trustme.CA, server_ctx: ssl.SSLContext, ciphers: str) -> None:
    def cbc_only(ctx: ssl.SSLContext) -> None:
        tls12_only(ctx)
        ctx.set_ciphers(ciphers)

    out = handshake(server_ctx, client(ca, cbc_only))
    assert out.client_error is not None
    assert isinstance(out.server_error, ssl.SSLError)
    assert "NO_SHARED_CIPHER" in str(out.server_error)


def test_only_aead_ecdhe_suites(server_ctx: ssl.SSLContext) -> None:
    suites = server_ctx.get_ciphers()
    assert suites
    for suite in suites:
        assert suite["aead"], suite["name"]
        assert suite["kea"] in ("kx-ecdhe", "kx-any"), suite["name"]  # kx-any: TLS 1.3
        assert "CBC" not in suite["description"] and not suite["name"].endswith("-SHA")
        assert suite["protocol"] in ("TLSv1.2", "TLSv1.3")
    tls12 = {s["name"] for s in suites if s["protocol"] == "TLSv1.2"}
    assert tls12 == {
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    }


def test_context_settings(server_ctx: ssl.SSLContext) -> None:
    assert server_ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server_ctx.maximum_version == ssl.TLSVersion.TLSv1_3
    for option in (
        ssl.OP_NO_COMPRESSION,
        ssl.OP_CIPHER_SERVER_PREFERENCE,
        ssl.OP_NO_RENEGOTIATION,
        ssl.OP_NO_TICKET,
    ):
        assert server_ctx.options & option
    assert server_ctx.verify_mode == ssl.CERT_NONE


@pytest.mark.parametrize(
    ("group", "accepted"),
    [("X25519", True), ("prime256v1", True), ("secp384r1", True), ("secp521r1", False), ("X448", False)],
)
def test_key_exchange_groups(ca: trustme.CA, server_ctx: ssl.SSLContext, group: str, accepted: bool) -> None:
    out = handshake(server_ctx, client(ca, lambda ctx: ctx.set_ecdh_curve(group)))
    assert out.ok is accepted, out


def test_alpn_is_http11(ca: trustme.CA, server_ctx: ssl.SSLContext) -> None:
    out = handshake(server_ctx, client(ca, lambda ctx: ctx.set_alpn_protocols(["h2", "http/1.1"])))
    assert out.ok, out
    assert out.alpn == "http/1.1"


def test_wrong_ca_fails(server_ctx: ssl.SSLContext) -> None:
    out = handshake(server_ctx, client(trustme.CA()))
    assert isinstance(out.client_error, ssl.SSLCertVerificationError)


def test_mutual_tls(ca: trustme.CA, server_files: tuple[Path, Path], tmp_path: Path) -> None:
    client_ca = trustme.CA()
    ca_path = tmp_path / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(ca_path))
    ctx = server_ssl_context(*server_files, client_ca=ca_path)
    assert ctx.verify_mode == ssl.CERT_REQUIRED

    without = handshake(ctx, client(ca))
    assert without.server_error is not None and without.client_error is not None

    stranger = handshake(ctx, client(ca, trustme.CA().issue_cert("alice@example.com").configure_cert))
    assert stranger.server_error is not None

    with_cert = handshake(ctx, client(ca, client_ca.issue_cert("alice@example.com").configure_cert))
    assert with_cert.ok, with_cert


# --- load errors -----------------------------------------------------------------------------


def test_missing_cert_file(server_files: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(TLSConfigError, match="server TLS certificate .*nope.pem: file not found"):
        server_ssl_context(tmp_path / "nope.pem", server_files[1])


def test_key_of_another_cert(ca: trustme.CA, server_files: tuple[Path, Path], tmp_path: Path) -> None:
    other = tmp_path / "other-key.pem"
    ca.issue_cert("other").private_key_pem.write_to_path(str(other))
    with pytest.raises(TLSConfigError, match="the key does not belong to the certificate"):
        server_ssl_context(server_files[0], other)


def test_encrypted_key_refused_without_prompt(server_files: tuple[Path, Path], tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(server_files[1].read_bytes(), None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass phrase"),
        )
    )
    with pytest.raises(TLSConfigError, match="is encrypted"):
        server_ssl_context(server_files[0], encrypted)


def test_not_pem(server_files: tuple[Path, Path], tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(TLSConfigError, match="cannot load server TLS certificate"):
        server_ssl_context(junk, server_files[1])


# --- backend client context ------------------------------------------------------------------


def test_backend_verification_off_is_false() -> None:
    assert backend_ssl_context(None, verify=False) is False


def test_backend_default_trust_store() -> None:
    ctx = backend_ssl_context(None)
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_backend_ca_bundle_is_the_only_trust(ca: trustme.CA, server_ctx: ssl.SSLContext, tmp_path: Path) -> None:
    bundle = tmp_path / "backend-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    ctx = backend_ssl_context(bundle)
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert len(ctx.get_ca_certs()) == 1  # the system store was not loaded alongside
    assert handshake(server_ctx, ctx).ok
    wrong_host = handshake(server_ctx, ctx, host="elsewhere.example")
    assert isinstance(wrong_host.client_error, ssl.SSLCertVerificationError)

    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    other_ctx = backend_ssl_context(other)
    assert isinstance(other_ctx, ssl.SSLContext)
    assert isinstance(handshake(server_ctx, other_ctx).client_error, ssl.SSLCertVerificationError)


def test_backend_ca_bundle_errors(tmp_path: Path) -> None:
    with pytest.raises(TLSConfigError, match="backend CA bundle .*: file not found"):
        backend_ssl_context(tmp_path / "missing.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("junk\n")
    with pytest.raises(TLSConfigError, match="cannot load backend CA bundle"):
        backend_ssl_context(junk)


# --- mutual TLS identities -------------------------------------------------------------------


def peercert_of(cert: trustme.LeafCert, client_ca: trustme.CA, tmp_path: Path) -> dict[str, object]:
    """What the server's ssl module reports for `cert` after a real handshake."""
    server = trustme.CA()
    ca_path = tmp_path / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(ca_path))
    ctx = server_ssl_context(*write_chain(server.issue_cert("localhost"), tmp_path), client_ca=ca_path)
    seen: dict[str, object] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with ctx.wrap_socket(conn, server_side=True) as tls:
                seen.update(tls.getpeercert() or {})
                tls.sendall(b"ok")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client(server, cert.configure_cert).wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.recv(2)
        thread.join(10)
    return seen


def test_peer_identities_from_a_real_certificate(tmp_path: Path) -> None:
    client_ca = trustme.CA()
    cert = client_ca.issue_cert("Alice.Example", "alice@example.com", common_name="alice")
    names = peer_identities(peercert_of(cert, client_ca, tmp_path))
    assert names == {"CN=alice", "DNS:alice.example", "email:alice@example.com"}
    assert peer_identities(None) == frozenset() and peer_identities({}) == frozenset()


def config_with(clients: list[dict[str, object]], client_ca: bool = True) -> Config:
    server: dict[str, object] = {"tls": False, "plain_http_listen": "127.0.0.1:8080"}
    if client_ca:
        server = {"listen": "127.0.0.1:8443", "tls_cert": "c.pem", "tls_key": "k.pem", "tls_client_ca": "ca.pem"}
    return Config.model_validate(
        {
            "server": server,
            "backend": {"endpoint": "http://127.0.0.1:9000", "region": "us-east-1"},
            "kms": {"provider": "local", "default_key": "k", "keyring": "kr", "passphrase_env": "P"},
            "clients": [
                {"access_key_id": f"SGUNITCLIENT{i:08d}", "secret_access_key": "s" * 16, **c}
                for i, c in enumerate(clients)
            ],
        }
    )


def cert_named(*names: tuple[str, str]) -> dict[str, object]:
    sans = tuple((kind, value) for kind, value in names if kind != "commonName")
    subject = tuple(((kind, value),) for kind, value in names if kind == "commonName")
    return {"subject": subject, "subjectAltName": sans}


def test_certificate_binding() -> None:
    cfg = config_with(
        [
            {"name": "alice", "cert_identities": ["CN=alice", "DNS:Alice.example"]},
            {"name": "bob", "cert_identities": ["URI:spiffe://corp/bob"]},
            {"name": "carol"},
        ]
    )
    alice = cert_named(("commonName", "alice"))
    by_dns = cert_named(("DNS", "ALICE.example"))
    bob = cert_named(("URI", "spiffe://corp/bob"), ("commonName", "alice-lookalike"))
    nobody = cert_named(("commonName", "dave"))
    check_client_certificate(cfg, alice, "alice")
    check_client_certificate(cfg, by_dns, "alice")
    check_client_certificate(cfg, bob, "bob")
    check_client_certificate(cfg, nobody, "carol")
    check_client_certificate(cfg, None, "carol")  # plain listener, unbound client
    for cert, name in [(alice, "bob"), (alice, "carol"), (bob, "alice"), (nobody, "alice"), (None, "bob")]:
        with pytest.raises(S3Error) as err:
            check_client_certificate(cfg, cert, name)
        assert err.value.code == "AccessDenied" and err.value.status == 403


def test_certificate_binding_config_problems() -> None:
    assert cert_binding_problem(config_with([{"name": "a", "cert_identities": ["CN=a"]}])) is None
    twice = config_with(
        [{"name": "a", "cert_identities": ["DNS:x.example"]}, {"name": "b", "cert_identities": ["DNS:X.example"]}]
    )
    assert "also client a's" in (cert_binding_problem(twice) or "")
    without_ca = config_with([{"name": "a", "cert_identities": ["CN=a"]}], client_ca=False)
    assert "server.tls_client_ca" in (cert_binding_problem(without_ca) or "")
    with pytest.raises(ValueError, match="cert_identities"):
        config_with([{"name": "a", "cert_identities": ["alice"]}])


# --- hot reload ------------------------------------------------------------------------------


def test_reloader_swaps_context_and_keeps_it_on_bad_files(ca: trustme.CA, tmp_path: Path) -> None:
    cert_path, key_path = write_chain(ca.issue_cert("localhost"), tmp_path)
    reloader = CertificateReloader(cert_path, key_path)
    first = reloader.context
    assert reloader.reload_if_changed() is None
    assert handshake(first, client(ca)).ok

    other_ca = trustme.CA()
    write_chain(other_ca.issue_cert("localhost"), tmp_path)
    assert reloader.reload_if_changed() is True
    assert reloader.context is not first
    assert handshake(reloader.context, client(other_ca)).ok
    assert handshake(first, client(ca)).ok  # the old context, held by old connections, still works

    good = reloader.context
    cert_path.write_bytes(ca.issue_cert("localhost").cert_chain_pems[0].bytes())  # key does not match
    assert reloader.reload_if_changed() is False
    assert reloader.context is good
    assert reloader.reload_if_changed() is None  # no retry until the files change again
    key_path.unlink()
    assert reloader.reload() is False and reloader.context is good


@pytest.mark.parametrize("tweak", [None, tls12_only], ids=["tls1.3", "tls1.2"])
def test_no_session_tickets_and_no_resumption(
    ca: trustme.CA, server_ctx: ssl.SSLContext, tweak: Callable[[ssl.SSLContext], None] | None
) -> None:
    """No session tickets in either version, so a client cannot resume a session (issue 19:
    TLS 1.3 tickets were issued and sessions resumed, which the README says they are not)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ctx = client(ca, tweak)
    sessions = []
    try:
        for _ in range(2):
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                ctx.wrap_socket(raw, server_hostname="localhost", session=sessions[-1] if sessions else None) as tls,
            ):
                assert tls.recv(2) == b"ok"  # TLS 1.3 tickets, if any, arrive with the first data
                assert not tls.session_reused
                assert tls.session is not None and not tls.session.has_ticket
                sessions.append(tls.session)
    finally:
        thread.join(10)
        listener.close()
