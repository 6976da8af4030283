"""Multipart uploads that any replica can serve: the upload id carries the wrapped data key.

Each part is encrypted as it streams, under a key bound to its header (part number, length,
random salt), so parts can arrive in any order, in parallel, on any replica, and be retried.
At completion sealgate writes a sealed manifest (parts, lengths, the backend's ETag for the
exact stored parts) beside the object under the reserved prefix ``.sealgate/mp/``. While an
upload is open, a record under ``.sealgate/up/`` holds its id for ListMultipartUploads.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from collections.abc import AsyncIterator
from contextlib import suppress
from datetime import UTC, datetime
from urllib.parse import quote, unquote_plus

from aiohttp import web

from proxy.backend import version_ids
from proxy.crypto.format import (
    DEFAULT_SEGMENT_SIZE,
    LAYOUT_MULTIPART,
    PART_HEADER_SIZE,
    FormatError,
    IntegrityError,
    Layout,
    Manifest,
    ManifestPart,
    PartHeader,
    encryption_context,
    part_key,
    part_plaintext_length,
)
from proxy.crypto.segments import StreamEncryptor
from proxy.crypto.upload_id import PREFIX, UploadId, open_for_replicas, seal_for_replicas
from proxy.kms.base import KeyringError, KeyUnavailable
from proxy.s3.errors import S3Error, keyring_error
from proxy.s3.headers import etag_value
from proxy.s3.sigv4 import VerifiedRequest
from proxy.s3.xml import (
    XML_HEADERS,
    complete_upload,
    document,
    find_text,
    iter_named,
    local_name,
    parse,
    parse_answer,
    parse_client,
    serialize,
)
from proxy.server import s3ec_read
from proxy.server.objects import (
    MAX_PUT_SIZE,
    RESERVED_PREFIX,
    check_reserved,
    client_body,
    content_md5,
    new_envelope,
    put_stream,
    read_plaintext,
    record_key,
    send_sealed,
    stored_headers,
    write_conditions,
)
from proxy.server.state import Gateway, require_key_use

log = logging.getLogger(__name__)

MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PARTS = 10000
MAX_XML = 2 * 1024 * 1024
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
#: Upload records ListMultipartUploads reads at once (a page holds up to 1000 uploads).
RECORD_READS = 16
#: An upload record holds one upload id: a few hundred bytes.
MAX_RECORD = 8192


def no_upload() -> S3Error:
    """S3's NoSuchUpload: for an upload id that is not (or no longer) valid for this object."""
    return S3Error(
        "NoSuchUpload",
        "The specified upload does not exist. The upload ID may be invalid, or the upload may have "
        "been aborted or completed.",
        404,
    )


async def _open_upload(gw: Gateway, request: web.Request, bucket: str, key: str, text: str) -> tuple[UploadId, bytes]:
    """The upload id's fields and its data key, after checking it was made for this object."""
    try:
        uid = UploadId.decode(text, PREFIX)
    except FormatError:
        raise no_upload() from None
    # Continuing an upload is writing under its key: checked before any keyring or backend call.
    require_key_use(gw, request, "encrypt", uid.key_ref)
    secret = gw.config.encryption.upload_secret
    try:
        if uid.sealed_key and secret is not None:
            data_key = open_for_replicas(secret.get_secret_value().encode(), uid.salt, uid.sealed_key, bucket, key)
        else:
            data_key = await gw.materials.unwrap(uid.key_ref, uid.wrapped_key, encryption_context(bucket, key))
    except FormatError:
        raise no_upload() from None
    except KeyringError as exc:
        if isinstance(exc, KeyUnavailable):
            raise keyring_error(exc) from exc
        raise no_upload() from None
    try:
        uid.verify(data_key, bucket, key)
    except FormatError:
        raise no_upload() from None
    return uid, data_key


def upload_record_key(key: str, backend_id: str) -> str:
    """Where the record of the upload with this backend id into `key` lives: the id sealgate
    handed out, so that ListMultipartUploads can show it (the backend knows only its own)."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{RESERVED_PREFIX}up/{digest}/{hashlib.sha256(backend_id.encode()).hexdigest()}"


async def put_upload_record(gw: Gateway, bucket: str, key: str, backend_id: str, upload_id: str) -> None:
    """Record the client's form of a new upload's id; if that fails, abort the backend upload
    (nothing can list it in the form that continues it) and fail the CreateMultipartUpload."""
    body = upload_id.encode()
    resp = await gw.backend.request(
        "PUT",
        bucket,
        upload_record_key(key, backend_id),
        headers={
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


async def drop_upload_record(gw: Gateway, bucket: str, key: str, backend_id: str) -> None:
    """Delete an upload's record once the upload is completed or aborted. A failure is only
    logged: the request it ends has succeeded, and `sealgate gc` removes records left over."""
    try:
        resp = await gw.backend.request("DELETE", bucket, upload_record_key(key, backend_id))
        resp.release()
        if resp.status >= 300 and resp.status != 404:
            log.warning("could not delete the upload record of /%s/%s: backend status %s", bucket, key, resp.status)
    except S3Error as exc:
        log.warning("could not delete the upload record of /%s/%s: %s", bucket, key, exc.message)


async def _recorded_id(gw: Gateway, bucket: str, key: str, backend_id: str) -> str | None:
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


async def create(gw: Gateway, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    """CreateMultipartUpload: a data key for the whole object, carried in the upload id."""
    check_reserved(key)
    rule = gw.config.rule_for_bucket(bucket, key)
    if rule is not None and rule.format == "s3ec-v3":
        return await s3ec_read.create_multipart(gw, request, bucket, key)
    data_key, env = await new_envelope(gw, request, bucket, key, layout=LAYOUT_MULTIPART, etag_field=None)
    headers = {f"x-amz-meta-{k}": v for k, v in env.to_metadata().items()}
    headers.update(stored_headers(request))
    resp, doc = await gw.backend.read_ok("POST", bucket, key, query=[("uploads", "")], headers=headers, body=b"")
    backend_id = find_text(parse(doc), "UploadId")
    if not backend_id:
        raise S3Error("BadGateway", "backend returned no upload id", 502)
    secret = gw.config.encryption.upload_secret
    sealed = b""
    if secret is not None:
        sealed = seal_for_replicas(secret.get_secret_value().encode(), env.salt, data_key, bucket, key)
    uid = UploadId(backend_id, env.key_ref, env.wrapped_key, env.salt, sealed_key=sealed).encode(data_key, bucket, key)
    await put_upload_record(gw, bucket, key, backend_id, uid)
    body = document("InitiateMultipartUploadResult", [("Bucket", bucket), ("Key", key), ("UploadId", uid)])
    return web.Response(status=200, body=body, headers=XML_HEADERS)


def parse_part_number(request: web.Request) -> int:
    """The request's ``partNumber`` (1-10000), or S3's InvalidArgument."""
    raw = request.query.get("partNumber", "")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PARTS:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive", 400)
    return int(raw)


async def upload_part(
    gw: Gateway, request: web.Request, bucket: str, key: str, verified: VerifiedRequest
) -> web.StreamResponse:
    """UploadPart: encrypt the part as it streams, under a key bound to its own header."""
    if s3ec_read.is_s3ec_upload(request.query["uploadId"]):
        return await s3ec_read.upload_part(gw, request, bucket, key, verified)
    if "x-amz-copy-source" in request.headers:
        return await upload_part_copy(gw, request, bucket, key)
    number = parse_part_number(request)
    uid, data_key = await _open_upload(gw, request, bucket, key, request.query["uploadId"])
    body = client_body(gw, request, verified)
    if body.length > MAX_PUT_SIZE:
        raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size", 400)
    header = PartHeader(number, body.length, os.urandom(16)).pack()
    encryptor = StreamEncryptor(part_key(data_key, uid.salt, header), DEFAULT_SEGMENT_SIZE)
    with_md5 = body.md5_wanted or body.content_md5 is not None
    resp = await send_sealed(
        gw,
        bucket,
        key,
        body,
        encryptor,
        prefix=header,
        digest_md5=with_md5,
        headers={},
        query=[("partNumber", str(number)), ("uploadId", uid.backend_id)],
    )
    md5 = body.md5
    etag = f'"{md5.hex()}"' if with_md5 and md5 is not None else resp.headers.get("ETag", "")
    out = web.Response(status=200, headers={"ETag": etag})
    for name, value in body.checksums.items():
        out.headers[name] = value
    return out


_COPY_RANGE = re.compile(r"^bytes=(\d+)-(\d+)$")


async def read_copy_source(gw: Gateway, request: web.Request) -> tuple[int, AsyncIterator[bytes]]:
    """The length and authenticated plaintext stream that an UploadPartCopy names
    (x-amz-copy-source and its optional x-amz-copy-source-range)."""
    from proxy.s3.routing import parse_copy_source

    src_bucket, src_key, version = parse_copy_source(request.headers["x-amz-copy-source"])
    check_reserved(src_key)
    byte_range = None
    raw_range = request.headers.get("x-amz-copy-source-range")
    if raw_range is not None:
        m = _COPY_RANGE.match(raw_range.strip())
        if not m or int(m.group(2)) < int(m.group(1)):
            raise S3Error(
                "InvalidArgument", "The x-amz-copy-source-range value must be of the form bytes=first-last", 400
            )
        byte_range = (int(m.group(1)), int(m.group(2)))
    length, plaintext, _opened, _head = await read_plaintext(gw, request, src_bucket, src_key, byte_range, version)
    return length, plaintext


async def upload_part_copy(gw: Gateway, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    """UploadPartCopy: the source's plaintext (authenticated) re-encrypted as a part of this upload.

    The bodies are under different data keys, so the bytes pass through sealgate; memory stays
    bounded, as for any part."""
    number = parse_part_number(request)
    uid, data_key = await _open_upload(gw, request, bucket, key, request.query["uploadId"])
    length, plaintext = await read_copy_source(gw, request)
    header = PartHeader(number, length, os.urandom(16)).pack()
    encryptor = StreamEncryptor(part_key(data_key, uid.salt, header), DEFAULT_SEGMENT_SIZE)

    async def ciphertext() -> AsyncIterator[bytes]:
        yield header
        async for piece in plaintext:
            for segment in encryptor.feed(piece):
                yield segment
        for segment in encryptor.finish():
            yield segment

    try:
        resp = await put_stream(
            gw,
            bucket,
            key,
            ciphertext(),
            PART_HEADER_SIZE + Layout(DEFAULT_SEGMENT_SIZE).ciphertext_length(length),
            headers={},
            query=[("partNumber", str(number)), ("uploadId", uid.backend_id)],
        )
    except IntegrityError as exc:
        raise S3Error("ObjectIntegrityError", f"copy source failed authentication: {exc}", 500) from exc
    modified = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    body = document("CopyPartResult", [("LastModified", modified), ("ETag", resp.headers.get("ETag", ""))])
    return web.Response(status=200, body=body, headers=XML_HEADERS)


async def _backend_parts(gw: Gateway, bucket: str, key: str, backend_id: str) -> dict[int, tuple[str, int]]:
    """Part number -> (backend ETag, stored size), across all pages of ListParts."""
    parts: dict[int, tuple[str, int]] = {}
    marker = "0"
    while True:
        resp, raw_body = await gw.backend.read_ok(
            "GET", bucket, key, query=[("part-number-marker", marker), ("uploadId", backend_id)]
        )
        root = parse(raw_body)
        for el in iter_named(root, "Part"):
            n = find_text(el, "PartNumber")
            etag = find_text(el, "ETag")
            size = find_text(el, "Size")
            if n and etag is not None and size:
                parts[int(n)] = (etag_value(etag), int(size))
        if (find_text(root, "IsTruncated") or "false").lower() != "true":
            return parts
        marker = find_text(root, "NextPartNumberMarker") or ""
        if not marker:
            return parts


def client_parts(doc: bytes) -> list[tuple[int, str]]:
    """(part number, ETag) pairs of a CompleteMultipartUpload body; MalformedXML on bad input."""
    root = parse_client(doc)
    out: list[tuple[int, str]] = []
    for el in iter_named(root, "Part"):
        n = find_text(el, "PartNumber")
        etag = find_text(el, "ETag")
        if not n or not n.strip().isdigit() or etag is None:
            raise S3Error("MalformedXML", "Each Part needs a PartNumber and an ETag", 400)
        out.append((int(n), etag_value(etag).lower()))
    if not out:
        raise S3Error("MalformedXML", "You must specify at least one part", 400)
    numbers = [n for n, _ in out]
    if numbers != sorted(numbers) or len(set(numbers)) != len(numbers):
        raise S3Error("InvalidPartOrder", "The list of parts was not in ascending order.", 400)
    return out


def _multipart_etag(etags: list[str]) -> str | None:
    if not all(_HEX32.match(e) for e in etags):
        return None
    return hashlib.md5(b"".join(bytes.fromhex(e) for e in etags)).hexdigest() + f"-{len(etags)}"


async def put_record(gw: Gateway, bucket: str, key: str, manifest: Manifest, sealed: bytes) -> None:
    """Store a sealed multipart manifest under its reserved key (named by the backend ETag)."""
    resp = await gw.backend.request(
        "PUT",
        bucket,
        record_key(key, manifest.backend_etag),
        headers={
            "x-amz-meta-sg-size": str(manifest.size),
            # The object's name (URL-quoted: header-safe), so `sealgate gc` can find orphans.
            "x-amz-meta-sg-object": quote(key, safe=""),
            "Content-Type": "application/octet-stream",
            "Content-MD5": content_md5(sealed),
        },
        body=sealed,
    )
    if resp.status >= 300:
        raise await resp.error()
    resp.release()


async def complete(gw: Gateway, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    """CompleteMultipartUpload: check the parts, seal a manifest, complete on the backend."""
    if s3ec_read.is_s3ec_upload(request.query["uploadId"]):
        return await s3ec_read.complete_multipart(gw, request, bucket, key)
    uid, data_key = await _open_upload(gw, request, bucket, key, request.query["uploadId"])
    doc = await request.content.read(MAX_XML + 1)
    if len(doc) > MAX_XML:
        raise S3Error("MaxMessageLengthExceeded", "Your request was too big.", 400)
    wanted = client_parts(doc)
    # Checked before the manifest is written; the backend checks again as it completes.
    conditions = await write_conditions(gw, request, bucket, key)
    stored = await _backend_parts(gw, bucket, key, uid.backend_id)
    layout = Layout(DEFAULT_SEGMENT_SIZE)
    parts: list[ManifestPart] = []
    backend_etags: list[str] = []
    missing = [n for n, _ in wanted if n not in stored]
    if missing:
        raise S3Error("InvalidPart", f"Part {missing[0]} has not been uploaded.", 400)
    for i, (number, etag) in enumerate(wanted):
        backend_etag, size = stored[number]
        try:
            length = part_plaintext_length(layout, size)
        except FormatError:
            raise S3Error("InvalidPart", f"Part {number} is not a sealgate part.", 400) from None
        if i < len(wanted) - 1 and length < MIN_PART_SIZE:
            raise S3Error(
                "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed object size.", 400
            )
        is_md5 = etag != backend_etag.lower()
        if is_md5 and not _HEX32.match(etag):
            raise S3Error("InvalidPart", f"The ETag of part {number} does not match.", 400)
        parts.append(ManifestPart(number, length, etag, is_md5))
        backend_etags.append(backend_etag)
    final_etag = _multipart_etag([p.etag for p in parts]) or hashlib.md5(os.urandom(16)).hexdigest() + f"-{len(parts)}"
    expected = _multipart_etag([e.lower() for e in backend_etags]) or "unknown"
    manifest = Manifest(tuple(parts), expected, final_etag)
    await put_record(gw, bucket, key, manifest, manifest.seal(data_key, uid.salt))

    xml = complete_upload((p.number, e) for p, e in zip(parts, backend_etags, strict=True))
    resp, answer = await gw.backend.read_ok(
        "POST", bucket, key, query=[("uploadId", uid.backend_id)], headers=conditions, body=xml
    )
    root = parse_answer(answer)
    # Name the manifest after the ETag that reads will see: some backends report another ETag
    # on HEAD and GET than in their completion answer.
    head = await gw.backend.request("HEAD", bucket, key)
    head.release()
    actual = etag_value(head.headers.get("ETag", ""))
    if not actual and root is not None:
        actual = etag_value(find_text(root, "ETag") or "")
    if actual and actual != expected:
        # A backend with its own ETag scheme: the manifest must name the ETag it really gave.
        stale = manifest
        manifest = Manifest(tuple(parts), actual, final_etag)
        await put_record(gw, bucket, key, manifest, manifest.seal(data_key, uid.salt))
        old = await gw.backend.request("DELETE", bucket, record_key(key, stale.backend_etag))
        old.release()
    await drop_upload_record(gw, bucket, key, uid.backend_id)
    location = f"/{bucket}/{key}"
    out = document(
        "CompleteMultipartUploadResult",
        [("Location", location), ("Bucket", bucket), ("Key", key), ("ETag", f'"{final_etag}"')],
    )
    return web.Response(status=200, body=out, headers={**XML_HEADERS, **version_ids(resp.headers)})


async def verified_upload(gw: Gateway, request: web.Request, bucket: str, key: str) -> UploadId:
    """The request's upload id (either format), authenticated for this object, after checking
    the caller may encrypt under its key. AbortMultipartUpload and ListParts need no more than
    this, but no less: the full id as CreateMultipartUpload (or ListMultipartUploads) gave it,
    never the bare backend id."""
    text = request.query["uploadId"]
    if s3ec_read.is_s3ec_upload(text):
        return await s3ec_read.verified_upload(gw, request, bucket, key, text)
    uid, _ = await _open_upload(gw, request, bucket, key, text)
    return uid


async def abort(gw: Gateway, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    """AbortMultipartUpload (by those who may continue the upload)."""
    uid = await verified_upload(gw, request, bucket, key)
    resp = await gw.backend.request("DELETE", bucket, key, query=[("uploadId", uid.backend_id)])
    if resp.status >= 300:
        raise await resp.error()
    resp.release()
    s3ec_read.forget_upload(gw, uid.backend_id)
    await drop_upload_record(gw, bucket, key, uid.backend_id)
    return web.Response(status=204)


async def list_parts(gw: Gateway, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    """ListParts, with plaintext part sizes (by those who may continue the upload)."""
    uid = await verified_upload(gw, request, bucket, key)
    query = [(k, v) for k, v in request.query.items() if k in ("max-parts", "part-number-marker")]
    query.append(("uploadId", uid.backend_id))
    resp, raw_body = await gw.backend.read_ok("GET", bucket, key, query=query)
    root = parse(raw_body)
    layout = Layout(DEFAULT_SEGMENT_SIZE)
    for el in root.iter():
        tag = local_name(el.tag)
        if tag == "Size" and el.text and el.text.strip().isdigit() and uid.prefix == PREFIX:
            with suppress(FormatError):
                el.text = str(part_plaintext_length(layout, int(el.text)))
        elif tag == "UploadId":
            el.text = request.query["uploadId"]
    return web.Response(status=200, body=serialize(root), headers=XML_HEADERS)


def _marker_backend_id(text: str) -> str:
    """The backend id an ``upload-id-marker`` names: a marker grants nothing, so an id sealgate
    handed out needs no check here; anything else is passed on as it is."""
    try:
        return UploadId.decode(text).backend_id
    except FormatError:
        return text


async def list_uploads(gw: Gateway, request: web.Request, bucket: str) -> web.StreamResponse:
    """ListMultipartUploads, showing each upload's id in the form CreateMultipartUpload gave
    (read from its record under ``.sealgate/up/``); uploads without a record show the
    backend's id, which continues nothing through sealgate."""
    names = ("delimiter", "encoding-type", "key-marker", "max-uploads", "prefix")
    query = [("uploads", "")] + [(k, v) for k, v in request.query.items() if k in names]
    marker = request.query.get("upload-id-marker")
    if marker is not None:
        query.append(("upload-id-marker", _marker_backend_id(marker)))
    resp, data = await gw.backend.read_ok("GET", bucket, None, query=query)
    root = parse(data)
    url_keys = (find_text(root, "EncodingType") or "").lower() == "url"
    listed: list[tuple[str, str]] = []
    for up in iter_named(root, "Upload"):
        key, backend_id = find_text(up, "Key"), find_text(up, "UploadId")
        if key is not None and backend_id:
            listed.append((unquote_plus(key) if url_keys else key, backend_id))
    if not listed and marker is None:
        return web.Response(status=200, body=data, headers=XML_HEADERS)
    limit = asyncio.Semaphore(RECORD_READS)

    async def lookup(key: str, backend_id: str) -> str | None:
        async with limit:
            return await _recorded_id(gw, bucket, key, backend_id)

    try:
        async with asyncio.TaskGroup() as group:
            found = [group.create_task(lookup(key, backend_id)) for key, backend_id in listed]
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None  # the backend's S3Error, as a single read would raise it
    shown = {backend_id: t.result() for (_, backend_id), t in zip(listed, found, strict=True) if t.result()}
    for el in root.iter():
        tag = local_name(el.tag)
        if tag in ("UploadId", "NextUploadIdMarker") and el.text in shown:
            el.text = shown[el.text]
        elif tag == "UploadIdMarker" and marker is not None:
            el.text = marker
    return web.Response(status=200, body=serialize(root), headers=XML_HEADERS)
