"""The parts every object operation needs, and the key-policy check made before a key is used."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from proxy.access.authorize import Caller
from proxy.audit import AuditLog
from proxy.config import Config
from proxy.kms.local import LocalKeyring
from proxy.kms.materials import Materials
from proxy.s3.errors import S3Error
from proxy.store.backend import Backend
from proxy.store.bucket_access import BucketAccessCache
from proxy.store.cors import CorsCache
from proxy.store.read_cache import ReadCache

log = logging.getLogger("sealgate.policy")


@dataclass
class Gateway:
    """The proxy's shared state: parsed config, backend client and key materials (built by
    proxy.wiring)."""

    config: Config
    backend: Backend
    materials: Materials
    audit: AuditLog | None = None
    #: The local keyring the materials' keys come from, if they do (under any auditing): S3EC's
    #: AES/GCM wrapping and key administration need its raw keys, which no Keyring gives out.
    local_keys: LocalKeyring | None = None
    #: The local keyring, main or ``[kms.previous]`` (one at most: their providers differ); of
    #: a keyring object, a replacement worker is handed its copy (proxy/kms/keyring_handover.py).
    local_keyring: LocalKeyring | None = None
    #: Manifests and part headers of multipart objects, for range reads (per process).
    reads: ReadCache = field(default_factory=ReadCache)
    #: Buckets' CORS rules, for browser requests (per process, briefly).
    cors: CorsCache = field(default_factory=CorsCache)
    #: Buckets' policies, public access blocks and ownership controls (per process, briefly).
    access: BucketAccessCache = field(default_factory=BucketAccessCache)
    #: This worker's slot, with several worker processes (proxy/server/workers.py): s3ec-v3
    #: upload ids name it, so the other workers pass the upload's parts here. None: one worker.
    worker_slot: int | None = None


def require_key_use(gw: Gateway, caller: Caller, action: str, key: str) -> None:
    """Key policy, checked before any keyring call: AccessDenied unless allowed. The operator
    (running a tool with the backend's own credentials) is bound by no key policy."""
    if caller.is_operator:
        return
    identity = caller.identity or ""
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
        log.warning("policy denied: %s may not %s with key %s", identity, action, key)
        raise S3Error("AccessDenied", f"client {identity!r} may not {action} with this object's key", 403)
