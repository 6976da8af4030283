"""TLS material read from files: the error for a certificate, key or CA file that cannot be
used, and the backend client's verifying context. The server's own contexts are in
proxy/server/tls.py; this part is shared with the operator tools, which do not import the server."""

from __future__ import annotations

import ssl
from pathlib import Path

_REASONS = {
    "KEY_VALUES_MISMATCH": "the key does not belong to the certificate",
    "NO_CERTIFICATE_OR_CRL_FOUND": "no PEM certificate found",
}


class TLSConfigError(RuntimeError):
    """A certificate, key or CA file that cannot be used; the message names the file."""


def require_file(path: Path, what: str) -> None:
    """TLSConfigError naming `what` unless `path` is a file."""
    if not path.is_file():
        raise TLSConfigError(f"{what} {path}: file not found")


def ssl_reason(exc: ssl.SSLError) -> str:
    """Why OpenSSL refused a file, in words."""
    reason = exc.reason or ""
    if reason in _REASONS:
        return _REASONS[reason]
    if exc.library == "SSL" and "PEM lib" in str(exc):
        return "not a PEM file of the right kind"
    return reason.lower().replace("_", " ") or str(exc)


#: What the client side of a handshake reports when the server answered with something not TLS.
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE", "HTTP_REQUEST"})


def backend_tls_problem(endpoint: str, exc: BaseException) -> str | None:
    """What a failed TLS connection to the backend at `endpoint` means for the operator; None if
    `exc` is no TLS failure. `exc` may be aiohttp's wrapper (which keeps OpenSSL's error aside)."""
    cause = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", None) or exc
    if not isinstance(cause, ssl.SSLError):
        return None
    if isinstance(cause, ssl.SSLCertVerificationError):
        detail = cause.verify_message or ssl_reason(cause)
        return (
            f"the backend {endpoint} presents a certificate this sealgate does not trust ({detail}): set "
            "backend.ca_bundle to the CA that issued it"
        )
    reason = cause.reason or ""
    if reason in _NOT_TLS:
        plain = "http://" + endpoint.split("://", 1)[-1]
        return (
            f"the backend {endpoint} does not speak TLS ({ssl_reason(cause)}): if it serves plain HTTP, "
            f"set backend.endpoint = {plain!r}"
        )
    return f"TLS with the backend {endpoint} failed: {ssl_reason(cause)}"


def backend_ssl_context(ca_bundle: Path | None, verify: bool = True) -> ssl.SSLContext | bool:
    """The TLS setting of the client that talks to the backend (`proxy.store.backend`).

    Verification (chain and host name) is on by default, against `ca_bundle` alone when it is
    given, else the system trust store. ``verify=False`` returns False, which turns
    verification off; the caller is expected to have warned about it.
    """
    if not verify:
        return False
    if ca_bundle is None:
        return ssl.create_default_context()
    require_file(ca_bundle, "backend CA bundle")
    try:
        # Given a cafile, create_default_context() loads only that file, not the system store.
        return ssl.create_default_context(cafile=str(ca_bundle))
    except ssl.SSLError as exc:
        raise TLSConfigError(f"cannot load backend CA bundle {ca_bundle}: {ssl_reason(exc)}") from None
