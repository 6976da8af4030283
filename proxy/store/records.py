"""sealgate's own records beside the objects, under the reserved prefix ``.sealgate/``: the sealed
manifests of multipart objects (``mp/``), the manifests of completions under way (``pc/``) and
the ids of open uploads (``up/``)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from contextlib import suppress
from urllib.parse import quote

from proxy.crypto.format import FormatError, IntegrityError, Manifest
from proxy.crypto.upload_id import UploadId
from proxy.s3.errors import S3Error
from proxy.s3.headers import etag_value
from proxy.store.backend import BackendResponse
from proxy.store.gateway import Gateway
from proxy.store.reserved import RESERVED_PREFIX, content_md5

log = logging.getLogger(__name__)


#: An upload record holds one upload id: a few hundred bytes.
MAX_RECORD = 8192


def check_reserved(key: str) -> None:
    """Keys under sealgate's own prefix are not for clients."""
    if key.startswith(RESERVED_PREFIX):
        raise S3Error("AccessDenied", f"keys under {RESERVED_PREFIX} are reserved by sealgate", 403)


class ManifestMissing(IntegrityError):
    """No manifest is stored under the name the object's backend ETag gives."""


def record_key(key: str, backend_etag: str) -> str:
    """Where the manifest of the object stored as `key` with this backend ETag lives."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{RESERVED_PREFIX}mp/{digest}/{etag_value(backend_etag)}"


async def read_manifest(
    gw: Gateway,
    bucket: str,
    key: str,
    resp: BackendResponse,
    data_key: bytes,
    salt: bytes,
    check: Callable[[bytes, Mapping[str, str]], None] | None = None,
) -> Manifest:
    """The sealed manifest of a multipart object; it must name the ETag the backend reports.
    `check` (the sender signature's) sees the record's body and user metadata before it is opened."""
    etag = etag_value(resp.headers.get("ETag", ""))
    rec = await gw.backend.request("GET", bucket, record_key(key, etag))
    if rec.status == 404:
        rec.release()
        raise ManifestMissing("the multipart manifest for this object is missing")
    if rec.status >= 300:
        raise await rec.error()
    try:
        sealed = await rec.read()
    finally:
        rec.release()
    if check is not None:
        check(sealed, rec.user_metadata())
    manifest = Manifest.open(data_key, salt, sealed)
    if manifest.backend_etag != etag:
        raise IntegrityError("the stored parts are not the ones the manifest names")
    return manifest


async def put_record(
    gw: Gateway,
    bucket: str,
    key: str,
    manifest: Manifest,
    sealed: bytes,
    signature: str = "",
    *,
    name: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> None:
    """Store a sealed multipart manifest under its reserved key (named by the backend ETag, or
    `name`), with the object's sender `signature` (b64, docs/FORMAT.md §3a) if it has one and
    `extra` headers."""
    signed = {"x-amz-meta-sg-sig": signature} if signature else {}
    resp = await gw.backend.request(
        "PUT",
        bucket,
        name or record_key(key, manifest.backend_etag),
        headers=dict(extra or {})
        | {
            "x-amz-meta-sg-size": str(manifest.size),
            # The object's name (URL-quoted: header-safe), so `sealgate gc` can find orphans.
            "x-amz-meta-sg-object": quote(key, safe=""),
            "Content-Type": "application/octet-stream",
            "Content-MD5": content_md5(sealed),
        }
        | signed,
        body=sealed,
    )
    if resp.status >= 300:
        raise await resp.error()
    resp.release()


def upload_record_key(key: str, backend_id: str) -> str:
    """Where the record of the upload with this backend id into `key` lives: the id sealgate
    handed out, so that ListMultipartUploads can show it (the backend knows only its own)."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{RESERVED_PREFIX}up/{digest}/{hashlib.sha256(backend_id.encode()).hexdigest()}"


async def put_upload_record(
    gw: Gateway, bucket: str, key: str, backend_id: str, upload_id: str, envelope: Mapping[str, str] | None = None
) -> None:
    """Record the client's form of a new upload's id (and the object's `envelope` metadata, which
    lets the completion be signed before the object appears); if that fails, abort the backend
    upload (nothing can list it in the form that continues it) and fail the CreateMultipartUpload."""
    body = upload_id.encode()
    resp = await gw.backend.request(
        "PUT",
        bucket,
        upload_record_key(key, backend_id),
        headers={f"x-amz-meta-{k}": v for k, v in (envelope or {}).items()}
        | {
            "x-amz-meta-sg-object": quote(key, safe=""),
            "Content-Type": "text/plain",
            "Content-MD5": content_md5(body),
        },
        body=body,
    )
    if resp.status < 300:
        resp.release()
        return
    error = await resp.error()
    with suppress(S3Error):
        gone = await gw.backend.request("DELETE", bucket, key, query=[("uploadId", backend_id)])
        gone.release()
    raise error


async def drop_record(gw: Gateway, bucket: str, name: str, what: str) -> None:
    """Delete one of sealgate's records (`what` names it in the log) once the request it served
    has succeeded: a failure is only logged, and `sealgate gc` removes records left over."""
    try:
        resp = await gw.backend.request("DELETE", bucket, name)
        resp.release()
        if resp.status >= 300 and resp.status != 404:
            log.warning("could not delete %s: backend status %s", what, resp.status)
    except S3Error as exc:
        log.warning("could not delete %s: %s", what, exc.message)


async def drop_upload_record(gw: Gateway, bucket: str, key: str, backend_id: str) -> None:
    """Delete an upload's record once the upload is completed or aborted."""
    await drop_record(gw, bucket, upload_record_key(key, backend_id), f"the upload record of /{bucket}/{key}")


async def recorded_id(gw: Gateway, bucket: str, key: str, backend_id: str) -> str | None:
    """The client's id of a listed upload, from its record; None without one (an upload made
    before records existed, or not by sealgate)."""
    resp = await gw.backend.request("GET", bucket, upload_record_key(key, backend_id))
    try:
        if resp.status >= 300:
            return None
        text = (await resp.raw.content.read(MAX_RECORD + 1)).decode("ascii", "replace")
    finally:
        resp.release()
    try:
        if UploadId.decode(text).backend_id == backend_id:
            return text
    except FormatError:
        pass
    log.warning("ignoring a malformed upload record for /%s/%s", bucket, key)
    return None


async def recorded_envelope(gw: Gateway, bucket: str, key: str, backend_id: str) -> Mapping[str, str] | None:
    """The envelope metadata an upload's record keeps (None: no record, or one without it)."""
    resp = await gw.backend.request("HEAD", bucket, upload_record_key(key, backend_id))
    resp.release()
    if resp.status >= 300:
        return None
    meta = resp.user_metadata()
    return meta if any(name.startswith("sg-") and name != "sg-object" for name in meta) else None
