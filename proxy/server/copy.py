"""CopyObject: the data key re-wrapped for the destination, the ciphertext copied by the backend
(`proxy.store.copies`)."""

from __future__ import annotations

import dataclasses
from urllib.parse import quote

from aiohttp import web

from proxy.crypto.format import SCOPE_OBJECT, Envelope, Manifest, SealedMetadata, encryption_context, seal_metadata
from proxy.crypto.signing import encode_signature
from proxy.kms.base import KeyringError
from proxy.s3.errors import S3Error
from proxy.s3.headers import ACL_HEADERS, CONTENT_HEADERS, LOCK_HEADERS, SSE_HEADERS, stored_headers
from proxy.s3.routing import parse_copy_source
from proxy.s3.xml import XML_HEADERS, document
from proxy.server.state import CALLER
from proxy.server.writes import write_conditions
from proxy.store.completion import drop_pending, put_pending
from proxy.store.copies import backend_copy
from proxy.store.errors import keyring_error
from proxy.store.gateway import Gateway, require_key_use
from proxy.store.objects import Opened, opaque_etag, open_copy_source, user_metadata
from proxy.store.records import check_reserved, put_record
from proxy.store.signatures import require_signer, sign_manifest, sign_single


async def copy_object(gw: Gateway, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    """Re-wrap the data key for the destination; let the backend copy the ciphertext."""
    src_bucket, src_key, version = parse_copy_source(request.headers["x-amz-copy-source"])
    check_reserved(src_key)
    directive = request.headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise S3Error("InvalidArgument", "Unknown metadata directive.", 400)
    if (src_bucket, src_key) == (bucket, key) and directive == "COPY":
        raise S3Error(
            "InvalidRequest",
            "This copy request is illegal because it is trying to copy an object to itself without changing the "
            "object's metadata, storage class, website redirect location or encryption attributes.",
            400,
        )
    caller = request[CALLER]
    opened, head, total = await open_copy_source(gw, caller, src_bucket, src_key, version, request.headers)
    conditions = await write_conditions(gw, request, bucket, key)
    env: Envelope = opened.envelope
    dest_key_id = gw.config.key_for_bucket(bucket, key)
    require_key_use(gw, caller, "encrypt", dest_key_id)
    require_signer(gw, dest_key_id)  # a copy its readers would refuse is not written
    try:
        wrapped = await gw.materials.wrap(dest_key_id, opened.data_key, encryption_context(bucket, key))
    except KeyringError as exc:
        raise keyring_error(exc) from exc
    sealed = env.sealed
    if directive == "REPLACE":
        meta = SealedMetadata(user=user_metadata(request.headers), etag=opened.meta.etag)
        sealed = seal_metadata(opened.data_key, env.salt, meta)
    # A copy's key is always wrapped for its own name (object scope), even if the source's was shared.
    new_env = dataclasses.replace(
        env,
        key_ref=wrapped.key_ref,
        wrapped_key=wrapped.wrapped,
        sealed=sealed,
        scope=SCOPE_OBJECT,
        name_tag=b"",
        signature=b"",
    )
    if opened.manifest is None:  # the source's signature names the source: sign the copy, if this gateway signs
        new_env = sign_single(gw, new_env, bucket, key, opened.plaintext_length)
    headers = {f"x-amz-meta-{k}": v for k, v in new_env.to_metadata().items()}
    if directive == "REPLACE":
        headers.update(stored_headers(request.headers))
    else:
        headers.update({n: head.headers[n] for n in CONTENT_HEADERS if n in head.headers})
        # Lock, ACL and server-side encryption settings are the copy's own, whatever the directive (as on S3).
        own = (*LOCK_HEADERS, *ACL_HEADERS, *SSE_HEADERS)
        headers.update({n: request.headers[n] for n in own if n in request.headers})
    source = "/" + quote(f"{src_bucket}/{src_key}", safe="/~")
    if version:
        source += "?versionId=" + quote(version, safe="")
    multipart = opened.manifest is not None
    if opened.manifest is not None:
        await _hold_manifest(gw, opened, new_env, bucket, key, opened.manifest)
    copied = await backend_copy(
        gw,
        bucket,
        key,
        headers,
        source,
        total,
        multipart=multipart,
        source_etag=head.headers.get("ETag", ""),
        conditions=conditions,
    )
    if opened.manifest is not None:
        await _store_manifest(
            gw, opened, new_env, bucket, key, dataclasses.replace(opened.manifest, backend_etag=copied.etag)
        )
        etag = opened.etag
    elif opened.meta.etag:
        etag = opened.etag  # a plaintext MD5: the same bytes keep it
    else:
        etag = opaque_etag(copied.etag)
    body = document("CopyObjectResult", [("LastModified", copied.last_modified), ("ETag", etag)])
    return web.Response(status=200, body=body, headers={**XML_HEADERS, **copied.versions})


async def _hold_manifest(gw: Gateway, opened: Opened, env: Envelope, bucket: str, key: str, manifest: Manifest) -> None:
    """Before the backend copies a multipart object: its manifest as a pending record, which
    readers (and gc) find by the salt the copy keeps until the manifest is stored under the
    copy's ETag, known only once the copy exists (proxy/store/completion.py)."""
    pending = dataclasses.replace(manifest, backend_etag="")
    held = pending.seal(opened.data_key, env.salt)
    signature = encode_signature(sign_manifest(gw, env, bucket, key, held))
    await put_pending(gw, bucket, key, None, env.salt, pending, held, signature)


async def _store_manifest(
    gw: Gateway, opened: Opened, env: Envelope, bucket: str, key: str, manifest: Manifest
) -> None:
    """After the copy: its manifest under the copy's ETag (signed anew, if this gateway signs),
    then the pending record goes."""
    sealed = manifest.seal(opened.data_key, env.salt)
    signature = encode_signature(sign_manifest(gw, env, bucket, key, sealed))
    await put_record(gw, bucket, key, manifest, sealed, signature)
    await drop_pending(gw, bucket, key, env.salt)
