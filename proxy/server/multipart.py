"""Multipart uploads that any replica can serve: the upload id carries the wrapped data key.

Each part is encrypted as it streams, under a key bound to its header (part number, length,
random salt), so parts can arrive in any order, in parallel, on any replica, and be retried.
At completion sealgate writes a sealed manifest (parts, lengths, the backend's ETag for the
exact stored parts) beside the object under the reserved prefix ``.sealgate/mp/``. While an
upload is open, a record under ``.sealgate/up/`` holds its id for ListMultipartUploads.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import suppress
from datetime import UTC, datetime
from urllib.parse import unquote_plus

from aiohttp import web

from proxy.crypto.format import (
    DEFAULT_SEGMENT_SIZE,
    PART_HEADER_SIZE,
    FormatError,
    IntegrityError,
    Layout,
    PartHeader,
    part_key,
    part_plaintext_length,
)
from proxy.crypto.segments import StreamEncryptor
from proxy.crypto.upload_id import PREFIX, UploadId
from proxy.s3.errors import S3Error
from proxy.s3.headers import SSE_ANSWER_HEADERS, etag_value
from proxy.s3.sigv4 import VerifiedRequest
from proxy.s3.xml import (
    XML_HEADERS,
    completed_parts,
    document,
    find_text,
    iter_named,
    local_name,
    parse,
    qname,
    serialize,
)
from proxy.server import s3ec
from proxy.server.body import client_body
from proxy.server.parts import parse_part_number, read_copy_source
from proxy.server.state import CALLER
from proxy.server.writes import write_conditions
from proxy.store import s3ec_uploads
from proxy.store.bodies import put_stream, send_sealed
from proxy.store.gateway import Gateway
from proxy.store.objects import MAX_PUT_SIZE
from proxy.store.part_etags import drop_upload_parts, record_part, recorded_parts
from proxy.store.records import check_reserved, drop_upload_record, recorded_id
from proxy.store.uploads import MAX_XML, complete_upload, create_upload, open_upload

#: Upload records ListMultipartUploads reads at once (a page holds up to 1000 uploads).
RECORD_READS = 16


async def create(gw: Gateway, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    """CreateMultipartUpload: a data key for the whole object, carried in the upload id."""
    check_reserved(key)
    rule = gw.config.rule_for_bucket(bucket, key)
    if rule is not None and rule.format == "s3ec-v3":
        return await s3ec.create_multipart(gw, request, bucket, key)
    uid, sse = await create_upload(gw, request[CALLER], bucket, key, request.headers)
    body = document("InitiateMultipartUploadResult", [("Bucket", bucket), ("Key", key), ("UploadId", uid)])
    return web.Response(status=200, body=body, headers={**XML_HEADERS, **sse})


async def upload_part(
    gw: Gateway, request: web.Request, bucket: str, key: str, verified: VerifiedRequest
) -> web.StreamResponse:
    """UploadPart: encrypt the part as it streams, under a key bound to its own header."""
    if s3ec_uploads.is_s3ec_upload(request.query["uploadId"]):
        return await s3ec.upload_part(gw, request, bucket, key, verified)
    if "x-amz-copy-source" in request.headers:
        return await upload_part_copy(gw, request, bucket, key)
    number = parse_part_number(request)
    uid, data_key = await open_upload(gw, request[CALLER], bucket, key, request.query["uploadId"])
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
    etag = resp.headers.get("ETag", "")
    if with_md5 and md5 is not None:
        # The client gets the plaintext's MD5; Complete checks it against this record.
        await record_part(gw, bucket, key, uid.backend_id, data_key, uid.salt, number, etag, md5.hex())
        etag = f'"{md5.hex()}"'
    out = web.Response(status=200, headers={"ETag": etag, **_sse_answer(resp.headers)})
    for name, value in body.checksums.items():
        out.headers[name] = value
    return out


async def upload_part_copy(gw: Gateway, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    """UploadPartCopy: the source's plaintext (authenticated) re-encrypted as a part of this upload.

    The bodies are under different data keys, so the bytes pass through sealgate; memory stays
    bounded, as for any part."""
    number = parse_part_number(request)
    uid, data_key = await open_upload(gw, request[CALLER], bucket, key, request.query["uploadId"])
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
    return web.Response(status=200, body=body, headers={**XML_HEADERS, **_sse_answer(resp.headers)})


def _sse_answer(headers: Mapping[str, str]) -> dict[str, str]:
    """The backend's own server-side encryption of a part, as S3 reports it on part answers."""
    return {name: headers[name] for name in SSE_ANSWER_HEADERS if name in headers}


async def complete(gw: Gateway, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    """CompleteMultipartUpload: check the parts, seal a manifest, complete on the backend."""
    if s3ec_uploads.is_s3ec_upload(request.query["uploadId"]):
        return await s3ec.complete_multipart(gw, request, bucket, key)
    uid, data_key = await open_upload(gw, request[CALLER], bucket, key, request.query["uploadId"])
    doc = await request.content.read(MAX_XML + 1)
    if len(doc) > MAX_XML:
        raise S3Error("MaxMessageLengthExceeded", "Your request was too big.", 400)
    wanted = completed_parts(doc)
    # Checked before the manifest is written; the backend checks again as it completes.
    conditions = await write_conditions(gw, request, bucket, key)
    final_etag, versions = await complete_upload(gw, uid, data_key, bucket, key, wanted, conditions)
    location = f"/{bucket}/{key}"
    out = document(
        "CompleteMultipartUploadResult",
        [("Location", location), ("Bucket", bucket), ("Key", key), ("ETag", f'"{final_etag}"')],
    )
    return web.Response(status=200, body=out, headers={**XML_HEADERS, **versions})


async def verified_upload(gw: Gateway, request: web.Request, bucket: str, key: str) -> UploadId:
    """The request's upload id (either format), authenticated for this object, after checking
    the caller may encrypt under its key. AbortMultipartUpload and ListParts need no more than
    this, but no less: the full id as CreateMultipartUpload (or ListMultipartUploads) gave it,
    never the bare backend id."""
    text = request.query["uploadId"]
    if s3ec_uploads.is_s3ec_upload(text):
        return await s3ec_uploads.verified_upload(gw, request[CALLER], bucket, key, text)
    uid, _ = await open_upload(gw, request[CALLER], bucket, key, text)
    return uid


async def abort(gw: Gateway, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    """AbortMultipartUpload (by those who may continue the upload)."""
    uid = await verified_upload(gw, request, bucket, key)
    resp = await gw.backend.request("DELETE", bucket, key, query=[("uploadId", uid.backend_id)])
    if resp.status >= 300:
        raise await resp.error()
    resp.release()
    s3ec_uploads.forget_upload(gw, uid.backend_id)
    await drop_upload_record(gw, bucket, key, uid.backend_id)
    if uid.prefix == PREFIX:
        await drop_upload_parts(gw, bucket, key, uid.backend_id)
    return web.Response(status=204)


async def list_parts(gw: Gateway, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    """ListParts, with plaintext part sizes and the part ETags UploadPart returned (by those who
    may continue the upload)."""
    text = request.query["uploadId"]
    md5s: dict[tuple[int, str], str] = {}
    if s3ec_uploads.is_s3ec_upload(text):
        uid = await verified_upload(gw, request, bucket, key)
    else:
        uid, data_key = await open_upload(gw, request[CALLER], bucket, key, text)
        md5s, _ = await recorded_parts(gw, bucket, key, uid.backend_id, data_key, uid.salt)
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
            el.text = text
    for part in iter_named(root, "Part"):
        number, etag = find_text(part, "PartNumber"), part.find(qname("ETag"))
        if number and number.isdigit() and etag is not None and etag.text:
            md5 = md5s.get((int(number), etag_value(etag.text)))
            if md5 is not None:
                etag.text = f'"{md5}"'
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
            return await recorded_id(gw, bucket, key, backend_id)

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
