"""TLS contexts: the client-facing server context and the context for the backend client."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import NoReturn

__all__ = ["TLS12_CIPHERS", "TLSConfigError", "backend_ssl_context", "server_ssl_context"]

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

_REASONS = {
    "KEY_VALUES_MISMATCH": "the key does not belong to the certificate",
    "NO_CERTIFICATE_OR_CRL_FOUND": "no PEM certificate found",
}


class TLSConfigError(RuntimeError):
    """A certificate, key or CA file that cannot be used; the message names the file."""


def _refuse_password() -> NoReturn:
    # Without a callback OpenSSL would prompt on the terminal and block start-up.
    raise TLSConfigError("encrypted")


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise TLSConfigError(f"{what} {path}: file not found")


def _reason(exc: ssl.SSLError) -> str:
    reason = exc.reason or ""
    if reason in _REASONS:
        return _REASONS[reason]
    if exc.library == "SSL" and "PEM lib" in str(exc):
        return "not a PEM file of the right kind"
    return reason.lower().replace("_", " ") or str(exc)


def server_ssl_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """The context for the client-facing listener.

    TLS 1.2 and 1.3 only; TLS 1.2 restricted to `TLS12_CIPHERS` with the server's order
    preferred; no compression, no renegotiation, and no TLS 1.2 session tickets (the ticket
    key would live as long as the process and undo forward secrecy); ALPN offers only
    ``http/1.1``. `cert` may hold the leaf followed by intermediates. With `client_ca`,
    clients must present a certificate issued by it (mutual TLS). TLSConfigError names the
    file when something cannot be loaded.
    """
    _require_file(cert, "server TLS certificate")
    _require_file(key, "server TLS key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(str(cert), str(key), password=_refuse_password)
    except TLSConfigError:
        raise TLSConfigError(
            f"server TLS key {key} is encrypted; give sealgate an unencrypted key (mode 0600)"
        ) from None
    except ssl.SSLError as exc:
        raise TLSConfigError(f"cannot load server TLS certificate {cert} with key {key}: {_reason(exc)}") from None
    if client_ca is not None:
        _load_trust(ctx, client_ca, "client CA")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def backend_ssl_context(ca_bundle: Path | None, verify: bool = True) -> ssl.SSLContext | bool:
    """The `ssl` argument for the aiohttp client that talks to the backend.

    Verification (chain and host name) is on by default, against `ca_bundle` alone when it is
    given, else the system trust store. ``verify=False`` returns False, which turns
    verification off in aiohttp; the caller is expected to have warned about it.
    """
    if not verify:
        return False
    if ca_bundle is None:
        return ssl.create_default_context()
    _require_file(ca_bundle, "backend CA bundle")
    try:
        # Given a cafile, create_default_context() loads only that file, not the system store.
        return ssl.create_default_context(cafile=str(ca_bundle))
    except ssl.SSLError as exc:
        raise TLSConfigError(f"cannot load backend CA bundle {ca_bundle}: {_reason(exc)}") from None


def _load_trust(ctx: ssl.SSLContext, path: Path, what: str) -> None:
    _require_file(path, what)
    try:
        ctx.load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        raise TLSConfigError(f"cannot load {what} {path}: {_reason(exc)}") from None
