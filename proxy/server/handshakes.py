"""Why a client's TLS handshake failed, in words an operator can act on, logged a few times a
minute at most (anyone can connect and fail: the log must not be theirs to fill).

The commonest mistakes are a client speaking plain HTTP to the TLS port, and a client that does
not trust sealgate's certificate (it ends the handshake with an alert such as ``unknown ca``);
with mutual TLS, a client without a certificate or with one the client CA did not issue.
Handshakes cut by a timeout, a reset or a client giving up are routine and stay at DEBUG.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from typing import Final

from proxy.logs import LogLimit

log = logging.getLogger("sealgate.tls")

__all__ = ["HandshakeFailure", "describe", "log_failure"]


@dataclass(frozen=True)
class HandshakeFailure:
    """A failed handshake's kind (what the log limit counts), level and cause in words."""

    kind: str
    level: int
    cause: str


_CLIENT_REFUSED: Final = (
    "the client does not accept sealgate's certificate (its alert: {alert}): give the client the CA that "
    "issued server.tls_cert, and check that the certificate names the host the client connects to and is current"
)

#: OpenSSL reasons, by what they mean for the operator.
_REASONS: Final[dict[str, HandshakeFailure]] = {
    "HTTP_REQUEST": HandshakeFailure(
        "plain-http", logging.INFO, "plain HTTP sent to the TLS port (the client should use https://)"
    ),
    "HTTPS_PROXY_REQUEST": HandshakeFailure(
        "plain-http", logging.INFO, "an HTTP proxy request (CONNECT) sent to the TLS port"
    ),
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": HandshakeFailure(
        "client-cert", logging.INFO, "the client sent no certificate, and server.tls_client_ca requires one"
    ),
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": HandshakeFailure(
        "client-cert", logging.INFO, "the client sent no certificate, and server.tls_client_ca requires one"
    ),
}

#: Alerts a client sends when it will not accept the server's certificate.
_REFUSALS: Final = frozenset(
    {
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "TLSV1_ALERT_ACCESS_DENIED",
    }
)

#: A handshake that is not TLS 1.2/1.3 as sealgate speaks it (a scanner, an old client, garbage).
_NOT_OURS: Final = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "UNSUPPORTED_PROTOCOL",
        "UNEXPECTED_MESSAGE",
        "VERSION_TOO_LOW",
        "NO_SHARED_CIPHER",
        "NO_SHARED_GROUPS",
        "NO_SUITABLE_SIGNATURE_ALGORITHM",
        "TLSV1_ALERT_PROTOCOL_VERSION",
        "TLSV1_ALERT_INSUFFICIENT_SECURITY",
        "SSLV3_ALERT_HANDSHAKE_FAILURE",
        "HTTP_REQUEST_TOO_LONG",
        "PACKET_LENGTH_TOO_LONG",
        "RECORD_LAYER_FAILURE",
    }
)


def describe(exc: BaseException) -> HandshakeFailure | None:
    """What a failed server-side handshake means; None for the routine (timeouts, resets, a
    client that closed), which is not worth more than DEBUG."""
    if not isinstance(exc, ssl.SSLError):
        return None
    reason = exc.reason or ""
    if reason in _REASONS:
        return _REASONS[reason]
    if isinstance(exc, ssl.SSLCertVerificationError) or reason == "CERTIFICATE_VERIFY_FAILED":
        detail = getattr(exc, "verify_message", None) or "verification failed"
        return HandshakeFailure(
            "client-cert", logging.INFO, f"the client's certificate is not accepted by server.tls_client_ca ({detail})"
        )
    if reason in _REFUSALS:
        alert = reason.split("ALERT_", 1)[1].lower().replace("_", " ")
        return HandshakeFailure("refused", logging.WARNING, _CLIENT_REFUSED.format(alert=alert))
    if reason in _NOT_OURS:
        words = reason.lower().replace("_", " ")
        return HandshakeFailure("not-tls", logging.INFO, f"not a TLS 1.2/1.3 handshake sealgate accepts ({words})")
    return None


def log_failure(peer: str, exc: BaseException, limit: LogLimit) -> None:
    """Log a failed handshake from `peer`: its cause at INFO or WARNING, at most `limit` allows
    of each kind; the routine ones at DEBUG."""
    failure = describe(exc)
    if failure is None:
        log.debug("TLS handshake from %s failed: %s", peer, exc)
        return
    limit.log(log, failure.level, failure.kind, "TLS handshake from %s failed: %s", peer, failure.cause)
