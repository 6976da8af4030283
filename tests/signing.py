"""Hand-made SigV4 requests for the failure paths real clients never take (signed with botocore)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import urllib3
from botocore.auth import SIGV4_TIMESTAMP, S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.conftest import CLIENT_AKID, CLIENT_SECRET


class _FixedPayloadAuth(S3SigV4Auth):
    def __init__(self, creds: Credentials, payload_hash: str) -> None:
        super().__init__(creds, "s3", "us-east-1")
        self._payload_hash = payload_hash

    def payload(self, request: AWSRequest) -> str:
        return self._payload_hash


def sign(
    method: str,
    url: str,
    headers: dict[str, str],
    *,
    payload_hash: str = "UNSIGNED-PAYLOAD",
    akid: str = CLIENT_AKID,
    secret: str = CLIENT_SECRET,
    when: dt.datetime | None = None,
) -> dict[str, str]:
    """Headers signed with SigV4 at time `when` (default now)."""
    req = AWSRequest(method=method, url=url, headers=dict(headers))
    auth = _FixedPayloadAuth(Credentials(akid, secret), payload_hash)
    stamp = (when or dt.datetime.now(dt.UTC)).strftime(SIGV4_TIMESTAMP)
    req.context["timestamp"] = stamp
    auth._modify_request_before_signing(req)
    canonical = auth.canonical_request(req)
    sts = auth.string_to_sign(req, canonical)
    auth._inject_signature_to_request(req, auth.signature(sts, req))
    return dict(req.headers.items())


def send(
    ca: Path,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | Iterable[bytes] | None = None,
    *,
    chunked: bool = False,
) -> Any:
    """Send over TLS with the test CA; returns the urllib3 response (body preloaded)."""
    http = urllib3.PoolManager(ca_certs=str(ca), retries=False)
    return http.request(method, url, headers=headers, body=body, chunked=chunked)
