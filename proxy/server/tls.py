"""TLS contexts of the client-facing server (the backend client's is in proxy/tls_files.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from proxy.config import Config, ServerConfig
from proxy.s3.errors import S3Error
from proxy.tls_files import TLSConfigError, require_file, ssl_reason

__all__ = [
    "TLS12_CIPHERS",
    "CertificateReloader",
    "TLSConfigError",
    "cert_binding_problem",
    "check_client_certificate",
    "peer_identities",
    "server_ssl_context",
]

log = logging.getLogger("sealgate.tls")

#: TLS 1.2 suites of the Mozilla "intermediate" profile without DHE, in its order: ECDHE key
#: exchange with AES-GCM or ChaCha20-Poly1305 only. Python's defaults would also allow CBC
#: suites. TLS 1.3 suites are all AEAD and are left at OpenSSL's defaults.
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)

#: Key-exchange groups of the Mozilla "intermediate" profile, in preference order. OpenSSL's
#: default list also offers secp521r1 and X448, which the profile says to refuse.
GROUPS = "X25519:P-256:P-384"


def _refuse_password() -> NoReturn:
    # Without a callback OpenSSL would prompt on the terminal and block start-up.
    raise TLSConfigError("encrypted")


def server_ssl_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """The context for the client-facing listener.

    TLS 1.2 and 1.3 only; TLS 1.2 restricted to `TLS12_CIPHERS` with the server's order
    preferred; no compression, no renegotiation, and no TLS 1.2 session tickets (the ticket
    key would live as long as the process and undo forward secrecy); ALPN offers only
    ``http/1.1``. `cert` may hold the leaf followed by intermediates. With `client_ca`,
    clients must present a certificate issued by it (mutual TLS). TLSConfigError names the
    file when something cannot be loaded.
    """
    require_file(cert, "server TLS certificate")
    require_file(key, "server TLS key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
    ctx.num_tickets = 0  # OP_NO_TICKET covers TLS 1.2 only: no TLS 1.3 session tickets either
    ctx.set_alpn_protocols(["http/1.1"])
    _set_groups(ctx, GROUPS)
    try:
        ctx.load_cert_chain(str(cert), str(key), password=_refuse_password)
    except TLSConfigError:
        raise TLSConfigError(
            f"server TLS key {key} is encrypted; give sealgate an unencrypted key (mode 0600)"
        ) from None
    except ssl.SSLError as exc:
        raise TLSConfigError(f"cannot load server TLS certificate {cert} with key {key}: {ssl_reason(exc)}") from None
    if client_ca is not None:
        _load_trust(ctx, client_ca, "client CA")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


_SSL_CTRL_SET_GROUPS_LIST = 92  # SSL_CTX_set1_groups_list() is this SSL_CTX_ctrl() call


def _set_groups(ctx: ssl.SSLContext, groups: str) -> None:
    """Restrict the key-exchange groups; keeps OpenSSL's defaults where that cannot be done.

    Python 3.15 has ``SSLContext.set_groups``. Before it, ``set_ecdh_curve`` takes one curve
    only, so the list goes to OpenSSL's ``SSL_CTX_set1_groups_list`` directly: the ``SSL_CTX``
    pointer is the first field after the object header in CPython's ``PySSLContext`` (stable in
    every released version that lacks ``set_groups``), and the function is found through the
    ``_ssl`` module, so it is the OpenSSL that module uses.
    """
    set_groups = getattr(ctx, "set_groups", None)
    if set_groups is not None:
        set_groups(groups)
        return
    if sys.implementation.name != "cpython":
        # The struct layout below is CPython's; elsewhere keep OpenSSL's defaults.
        log.warning("cannot restrict TLS key-exchange groups to %s on %s", groups, sys.implementation.name)
        return
    try:
        import _ssl
        import ctypes

        lib = ctypes.CDLL(_ssl.__file__)
        ctrl = lib.SSL_CTX_ctrl
        ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
        ctrl.restype = ctypes.c_long
        ssl_ctx = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
        ok = ssl_ctx is not None and ctrl(ssl_ctx, _SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode()) == 1
    except (OSError, AttributeError, ImportError):
        ok = False
    if not ok:
        log.warning("cannot restrict TLS key-exchange groups to %s; OpenSSL's defaults stay", groups)


def _load_trust(ctx: ssl.SSLContext, path: Path, what: str) -> None:
    require_file(path, what)
    try:
        ctx.load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        raise TLSConfigError(f"cannot load {what} {path}: {ssl_reason(exc)}") from None


# --- mutual TLS: which configured client a certificate is -------------------------------------

_SAN_KINDS = {"DNS": "DNS:", "email": "email:", "URI": "URI:"}


def peer_identities(peercert: Mapping[str, Any] | None) -> frozenset[str]:
    """The names a verified peer certificate (``SSLSocket.getpeercert()``) can be matched by.

    ``CN=<common name>`` for each subject CN and ``DNS:``/``email:``/``URI:`` for each subject
    alternative name of those types; DNS names lower-cased. Empty without a (verified) cert.
    """
    if not peercert:
        return frozenset()
    names: set[str] = set()
    for rdn in peercert.get("subject", ()):
        for attr, value in rdn:
            if attr == "commonName":
                names.add(f"CN={value}")
    for kind, value in peercert.get("subjectAltName", ()):
        prefix = _SAN_KINDS.get(kind)
        if prefix is not None:
            names.add(prefix + (value.lower() if kind == "DNS" else value))
    return frozenset(names)


def _normalised(identity: str) -> str:
    return "DNS:" + identity[4:].lower() if identity.startswith("DNS:") else identity


def check_client_certificate(config: Config, peercert: Mapping[str, Any] | None, client_name: str) -> None:
    """Mutual TLS binding between a connection's certificate and the SigV4 client of a request.

    A certificate that names a configured client (``[[clients]] cert_identities``) may only be
    used with that client's keys, and a client with ``cert_identities`` only over a connection
    with one of its certificates. A certificate naming no client (or a client without
    ``cert_identities``) adds no restriction: the CA alone admitted it. AccessDenied otherwise.
    """
    names = peer_identities(peercert)
    owners = {c.name for c in config.clients if names & {_normalised(i) for i in c.cert_identities}}
    client = next((c for c in config.clients if c.name == client_name), None)
    if owners and owners != {client_name}:
        # Several owners cannot happen with a valid config (checked by cert_binding_problem);
        # refusing is the fail-closed answer should it anyway.
        log.warning("mTLS denied: certificate of %s used with the keys of %s", sorted(owners), client_name)
        raise S3Error("AccessDenied", "the access key does not belong to the client certificate's owner", 403)
    if client is not None and client.cert_identities and not owners:
        log.warning("mTLS denied: keys of %s used without one of its client certificates", client_name)
        raise S3Error("AccessDenied", "this access key may only be used with its client certificate", 403)


def cert_binding_problem(config: Config) -> str | None:
    """What is wrong with the config's ``cert_identities`` as a whole, if anything."""
    seen: dict[str, str] = {}
    for i, client in enumerate(config.clients):
        if client.cert_identities and config.server.tls_client_ca is None:
            return f"clients[{i}].cert_identities: only used with server.tls_client_ca (mutual TLS)"
        for identity in client.cert_identities:
            key = _normalised(identity)
            if key in seen and seen[key] != client.name:
                return f'clients[{i}].cert_identities: "{identity}" is also client {seen[key]}\'s'
            seen[key] = client.name
    return None


# --- hot reload -----------------------------------------------------------------------------

Signature = tuple[tuple[int, int, int] | None, ...]


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class CertificateReloader:
    """The listener's current server context, rebuilt when its files change or on demand.

    Every new connection takes `context` at accept time, so a reload changes only handshakes
    that start afterwards; connections already open keep the context they were made with. A
    certificate, key or client CA that does not load is logged and the running context kept.
    """

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._signature = self._files_signature()
        self.context = server_ssl_context(cert, key, client_ca)

    @classmethod
    def from_config(cls, server: ServerConfig) -> CertificateReloader:
        """The reloader for the ``[server]`` TLS files."""
        assert server.tls_cert is not None and server.tls_key is not None
        return cls(server.tls_cert, server.tls_key, server.tls_client_ca)

    def _files_signature(self) -> Signature:
        paths = (self.cert, self.key, self.client_ca)
        return tuple(_stat(p) if p is not None else None for p in paths)

    def reload(self) -> bool:
        """Load the files again now; False (and a log line) keeps the running context."""
        self._signature = self._files_signature()
        try:
            ctx = server_ssl_context(self.cert, self.key, self.client_ca)
        except TLSConfigError as exc:
            log.error("TLS reload refused, keeping the running certificate: %s", exc)
            return False
        self.context = ctx
        log.info("TLS certificate reloaded from %s", self.cert)
        return True

    def reload_if_changed(self) -> bool | None:
        """Reload when a file's inode, size or mtime changed since the last attempt (None: no change)."""
        if self._files_signature() == self._signature:
            return None
        return self.reload()

    async def watch(self, interval: float) -> None:
        """Poll the files every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            self.reload_if_changed()
