"""What every handler needs, built once per process and kept on the aiohttp Application."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiohttp import web

from proxy.access.authorize import Caller
from proxy.audit import AuditLog
from proxy.backend import Backend
from proxy.config import Config
from proxy.kms.materials import Materials
from proxy.s3.errors import S3Error

log = logging.getLogger("sealgate.policy")


@dataclass
class Gateway:
    """The proxy's shared state: parsed config, backend client and key materials."""

    config: Config
    backend: Backend
    materials: Materials
    audit: AuditLog | None = None


#: The identity (client name) of the request, set once its signature checked out.
IDENTITY = web.RequestKey("sealgate.identity", str)
#: Who is asking (client, address, TLS or not), set with IDENTITY.
CALLER = web.RequestKey("sealgate.caller", Caller)
#: The request id every response and log line carries.
REQUEST_ID = web.RequestKey("sealgate.request_id", str)


def require_key_use(gw: Gateway, request: web.Request, action: str, key: str) -> None:
    """Key policy, checked before any keyring call: AccessDenied unless allowed."""
    identity = request.get(IDENTITY, "")
    if action == "decrypt" and gw.config.encrypt_only(key):
        if gw.audit is not None:
            gw.audit.record(action, "denied", reason="encrypt-only", key_id=key)
        raise S3Error(
            "AccessDenied",
            "this object's key is encrypt-only at this gateway: it stores uploads but cannot read them back; "
            "read the object where its key may decrypt",
            403,
        )
    if not gw.config.may_use_key(identity, action, key):
        if gw.audit is not None:
            gw.audit.record(action, "denied", reason="policy", key_id=key)
        log.warning("policy denied %s: %s may not %s with key %s", request.get(REQUEST_ID, ""), identity, action, key)
        raise S3Error("AccessDenied", f"client {identity!r} may not {action} with this object's key", 403)
