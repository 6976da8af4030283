"""Key administration over the proxy, for identities with ``admin`` rights in ``[[keys]]``.

As in AWS KMS, administering a key (seeing its metadata, rotating it) is a right of its own,
separate from using it to encrypt or decrypt. Requests are SigV4-signed like S3 requests:

- ``GET /-/keys``: JSON list of the keys the caller may administer, with their versions.
- ``POST /-/keys/<id>/rotate``: a new current version of local key ``<id>``; new objects use it
  (every sealgate process on the keyring file picks it up within a second; on a keyring object,
  every host within ``kms.keyring_poll_seconds``, and at once for an object sealed under it),
  older versions still decrypt.

Admin rights exist only where granted: without ``[[keys]]`` tables nobody is an admin (unlike
encrypt/decrypt, which are open to every client then). Every call is audited; a refusal is a
403 AccessDenied S3 error and a "denied" audit record. Responses never hold key material.

Rights are decided from the config before the keyring file is read, so a caller who may
administer no key (listing) or not this one (rotating) costs no file read and no scrypt run.
The file is read afresh for each admin call, but decrypted with the key the gateway derived at
start-up: only a keyring that was re-keyed since then needs a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

from aiohttp import web

from proxy.audit import AuditContext, Outcome, audit_context
from proxy.kms.keyring_edits import edit
from proxy.kms.keystore import KeyInfo, KeyringFileError, LocalKeyStore, passphrase_from
from proxy.kms.local import LocalKeyring
from proxy.net.forwarded import trusted_proxies
from proxy.s3.errors import S3Error
from proxy.s3.sigv4 import VerifiedRequest
from proxy.server.proxied import client_address
from proxy.server.state import REQUEST_ID
from proxy.store.gateway import Gateway
from proxy.wiring import keyring_where

log = logging.getLogger("sealgate.admin")

PREFIX = "/-/keys"
_ROTATE = re.compile(r"/-/keys/([A-Za-z0-9_.-]{1,64})/rotate")


def may_admin(gw: Gateway, identity: str, key_id: str) -> bool:
    """Whether `identity` holds an explicit ``admin`` grant on `key_id` (default deny)."""
    return bool(gw.config.keys) and gw.config.may_use_key(identity, "admin", key_id)


def administered(gw: Gateway, identity: str) -> list[str]:
    """The configured key ids `identity` may administer: from the config alone, so a caller
    with none is refused before the keyring is touched."""
    return [p.id for p in gw.config.keys if may_admin(gw, identity, p.id)]


def _audit(gw: Gateway, operation: str, outcome: Outcome, *, key_id: str | None, **kw: Any) -> None:
    if gw.audit is not None:
        gw.audit.record(operation, outcome, key_id=key_id, **kw)


def _deny(gw: Gateway, identity: str, operation: str, key_id: str | None, why: str) -> S3Error:
    _audit(gw, operation, "denied", key_id=key_id, reason=why)
    log.warning("admin denied: %s may not %s key %s (%s)", identity, operation, key_id or "(any)", why)
    what = "this key" if key_id is not None else "any key"
    return S3Error("AccessDenied", f"client {identity!r} may not administer {what}", 403)


def _json(doc: Any) -> web.Response:
    return web.Response(body=json.dumps(doc, indent=1).encode() + b"\n", content_type="application/json")


class _Refused(Exception):
    """A rotation the keyring cannot do; the message names no path and no material."""


def _open_store(gw: Gateway) -> LocalKeyStore:
    """The local keyring file as it is now (it may have changed since start-up), as a store of
    its own. Decrypted with the key the gateway's keyring derived at start-up: scrypt costs tens
    of milliseconds of CPU, too much to spend per request."""
    local = _local_keyring(gw)
    if local is not None:
        return local.reopen_store()
    # A keyring handed in from outside (not opened from this config): derive as `serve` does.
    kms = gw.config.kms
    return LocalKeyStore.open(
        keyring_where(kms, gw.config.backend), passphrase_from(kms.passphrase_env, kms.passphrase_file)
    )


def _local_keyring(gw: Gateway) -> LocalKeyring | None:
    """The gateway's `LocalKeyring` on the configured file or object, else None."""
    local = gw.local_keys
    return local if local is not None and local.location == gw.config.kms.keyring else None


def _info_doc(info: KeyInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "provider": "local",
        "type": info.type,
        "origin": info.origin,
        "versions": info.versions,
        "current_version": info.current_version,
        "rotation_period_days": info.rotation_period_days,
        "created": info.created.isoformat(),
        "last_rotated": info.last_rotated.isoformat() if info.last_rotated else None,
    }


async def handle(gw: Gateway, request: web.Request, verified: VerifiedRequest) -> web.StreamResponse:
    """Serve one admin request from an authenticated client."""
    identity = verified.identity
    source = client_address(request, trusted_proxies(gw.config.server.trusted_proxies))
    audit_context.set(AuditContext(identity=identity, source=source, request_id=request.get(REQUEST_ID)))
    if request.can_read_body:  # a Content-Length or a chunked body
        raise S3Error("InvalidRequest", "admin requests take no body", 400)
    path = request.path.rstrip("/")
    if path == PREFIX and request.method == "GET":
        return await _list(gw, identity)
    m = _ROTATE.fullmatch(path)
    if m is not None and request.method == "POST":
        return await _rotate(gw, identity, m.group(1))
    raise S3Error("InvalidRequest", "unknown admin request (GET /-/keys, POST /-/keys/<id>/rotate)", 400)


async def _list(gw: Gateway, identity: str) -> web.StreamResponse:
    mine = administered(gw, identity)
    if not mine:
        raise _deny(gw, identity, "list-keys", None, "policy")
    if gw.config.kms.provider == "local":
        try:
            infos = await asyncio.to_thread(lambda: _open_store(gw).list_keys())
        except (KeyringFileError, OSError) as exc:
            _audit(gw, "list-keys", "error", key_id=None, reason="KeyringUnavailable")
            log.error("listing keys failed: %s", exc)
            raise S3Error("ServiceUnavailable", "the keyring file cannot be read now", 503) from None
        keys = [_info_doc(i) for i in infos if i.id in mine]
    else:
        # KMS keeps versions and metadata itself; list the keys this identity administers.
        keys = [{"id": key_id, "provider": gw.config.kms.provider} for key_id in mine]
    _audit(gw, "list-keys", "allowed", key_id=None, reason=f"{len(keys)} keys")
    return _json({"keys": keys})


async def _rotate(gw: Gateway, identity: str, key_id: str) -> web.StreamResponse:
    if not may_admin(gw, identity, key_id):
        raise _deny(gw, identity, "rotate", key_id, "policy")
    if gw.config.kms.provider != "local":
        _audit(gw, "rotate", "error", key_id=key_id, reason="NotImplemented")
        how = {
            "aws-kms": "aws-kms keys rotate in KMS (automatic rotation or RotateKeyOnDemand)",
        }.get(gw.config.kms.provider, f"{gw.config.kms.provider} keys rotate with `sealgate keys rotate --config`")
        raise S3Error("NotImplemented", how, 501)
    local = _local_keyring(gw)
    where = local.path if local is not None else keyring_where(gw.config.kms, gw.config.backend)

    def rotate(store: LocalKeyStore) -> KeyInfo:
        # On a store read afresh (under the file's lock, or again after another host's change
        # of the object won), so another rotation, by any process on any host, is kept.
        info = next((i for i in store.list_keys() if i.id == key_id), None)
        if info is None:
            raise _Refused(f"no key {key_id!r} in the keyring")
        if info.origin != "generated":
            raise _Refused(f"key {key_id!r} is imported: rotate it with new material (sealgate keys import --rotate)")
        return store.rotate_key(key_id)

    try:
        info = await asyncio.to_thread(edit, where, lambda: _open_store(gw), rotate)
    except _Refused as exc:
        _audit(gw, "rotate", "error", key_id=key_id, reason="InvalidRequest")
        raise S3Error("InvalidRequest", str(exc), 400) from None
    except (KeyringFileError, OSError) as exc:
        _audit(gw, "rotate", "error", key_id=key_id, reason="KeyringUnavailable")
        log.error("rotating key %s failed: %s", key_id, exc)
        raise S3Error("ServiceUnavailable", "the keyring file cannot be updated now", 503) from None
    if local is not None:
        # This process seals new objects under the new version from now on (a keyring object:
        # a request to the backend, so in a thread).
        await asyncio.to_thread(local.refresh)
    _audit(gw, "rotate", "allowed", key_id=key_id, key_version=f"local:{key_id}:{info.current_version}")
    log.info("key %s rotated by %s: now version %s", key_id, identity, info.current_version)
    return _json({"key": _info_doc(info)})
