"""Multipart uploads that any replica can serve: the upload id carries the wrapped data key.

Each part is encrypted as it streams, under a key bound to its header (part number, length,
random salt), so parts can arrive in any order, in parallel, on any replica, and be retried.
At completion sealgate writes a sealed manifest (parts, lengths, the backend's ETag for the
exact stored parts) beside the object under the reserved prefix ``.sealgate/mp/``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import AsyncIterator
from contextlib import suppress
from datetime import UTC, datetime
from urllib.parse import quote
from xml.sax.saxutils import escape

from aiohttp import web
from defusedxml import ElementTree

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
from proxy.crypto.upload_id import UploadId, open_for_replicas, seal_for_replicas
from proxy.kms.base import KeyringError
from proxy.s3.errors import S3Error
from proxy.s3.sigv4 import VerifiedRequest
from proxy.server import s3ec_read
from proxy.server.objects import (
    MAX_PUT_SIZE,
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

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PARTS = 10000
MAX_XML = 2 * 1024 * 1024
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
XML_HEADERS = {"Content-Type": "application/xml"}


def _no_upload() -> S3Error:
    return S3Error(
        "NoSuchUpload",
        "The specified upload does not exist. The upload ID may be invalid, or the upload may have "
        "been aborted or completed.",
        404,
    )


async def _open_upload(gw: Gateway, request: web.Request, bucket: str, key: str, text: str) -> tuple[UploadId, bytes]:
    """The upload id's fields and its data key, after checking it was made for this object."""
    try:
        uid = UploadId.decode(text)
    except FormatError:
        raise _no_upload() from None
    require_key_use(gw, request, "encrypt", uid.key_ref)
    secret = gw.config.encryption.upload_secret
    try:
        if uid.sealed_key and secret is not None:
            data_key = open_for_replicas(secret.get_secret_value().encode(), uid.salt, uid.sealed_key, bucket, key)
        else:
            data_key = await gw.materials.unwrap(uid.key_ref, uid.wrapped_key, encryption_context(bucket, key))
    except FormatError:
        raise _no_upload() from None
    except KeyringError as exc:
        if exc.status == 503:
            raise S3Error(exc.code, exc.message, exc.status) from exc
        raise _no_upload() from None
    try:
        uid.verify(data_key, bucket, key)
    except FormatError:
        raise _no_upload() from None
    return uid, data_key


def xml_doc(root: str, fields: list[tuple[str, str]]) -> bytes:
    """An S3 XML document `<root>` holding `fields` as escaped child elements."""
    inner = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in fields)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{S3_NS}">{inner}</{root}>'.encode()


def find_text(root: object, tag: str) -> str | None:
    """Text of the first element named `tag` (any namespace) under `root`; None if absent."""
    for el in root.iter():  # type: ignore[attr-defined]
        if el.tag.rsplit("}", 1)[-1] == tag:
            return str(el.text or "")
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
    backend_id = find_text(ElementTree.fromstring(doc), "UploadId")
    if not backend_id:
        raise S3Error("BadGateway", "backend returned no upload id", 502)
    secret = gw.config.encryption.upload_secret
    sealed = b""
    if secret is not None:
        sealed = seal_for_replicas(secret.get_secret_value().encode(), env.salt, data_key, bucket, key)
    uid = UploadId(backend_id, env.key_ref, env.wrapped_key, env.salt, sealed_key=sealed).encode(data_key, bucket, key)
    body = xml_doc("InitiateMultipartUploadResult", [("Bucket", bucket), ("Key", key), ("UploadId", uid)])
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
    from proxy.server.copy import parse_copy_source

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
    body = xml_doc("CopyPartResult", [("LastModified", modified), ("ETag", resp.headers.get("ETag", ""))])
    return web.Response(status=200, body=body, headers=XML_HEADERS)


async def _backend_parts(gw: Gateway, bucket: str, key: str, backend_id: str) -> dict[int, tuple[str, int]]:
    """Part number -> (backend ETag, stored size), across all pages of ListParts."""
    parts: dict[int, tuple[str, int]] = {}
    marker = "0"
    while True:
        resp, raw_body = await gw.backend.read_ok(
            "GET", bucket, key, query=[("part-number-marker", marker), ("uploadId", backend_id)]
        )
        root = ElementTree.fromstring(raw_body)
        for el in (e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Part"):
            n = find_text(el, "PartNumber")
            etag = find_text(el, "ETag")
            size = find_text(el, "Size")
            if n and etag is not None and size:
                parts[int(n)] = (etag.strip().strip('"'), int(size))
        if (find_text(root, "IsTruncated") or "false").lower() != "true":
            return parts
        marker = find_text(root, "NextPartNumberMarker") or ""
        if not marker:
            return parts


def client_parts(doc: bytes) -> list[tuple[int, str]]:
    """(part number, ETag) pairs of a CompleteMultipartUpload body; MalformedXML on bad input."""
    try:
        root = ElementTree.fromstring(doc)
    except Exception as exc:  # noqa: BLE001 - defusedxml raises several types for hostile XML
        raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not validate", 400) from exc
    out: list[tuple[int, str]] = []
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] != "Part":
            continue
        n = find_text(el, "PartNumber")
        etag = find_text(el, "ETag")
        if not n or not n.strip().isdigit() or etag is None:
            raise S3Error("MalformedXML", "Each Part needs a PartNumber and an ETag", 400)
        out.append((int(n), etag.strip().strip('"').lower()))
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
    doc = await request.content.read(MAX_XML + 1)
    if len(doc) > MAX_XML:
        raise S3Error("MaxMessageLengthExceeded", "Your request was too big.", 400)
    wanted = client_parts(doc)
    uid, data_key = await _open_upload(gw, request, bucket, key, request.query["uploadId"])
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

    body = "".join(
        f'<Part><PartNumber>{p.number}</PartNumber><ETag>"{e}"</ETag></Part>'
        for p, e in zip(parts, backend_etags, strict=True)
    )
    xml = f'<CompleteMultipartUpload xmlns="{S3_NS}">{body}</CompleteMultipartUpload>'.encode()
    resp, answer = await gw.backend.read_ok(
        "POST", bucket, key, query=[("uploadId", uid.backend_id)], headers=conditions, body=xml
    )
    root = ElementTree.fromstring(answer) if answer.strip() else None
    if root is not None and root.tag.rsplit("}", 1)[-1] == "Error":
        # S3 may report a failed completion inside a 200 response.
        code = find_text(root, "Code") or "InternalError"
        raise S3Error(code, find_text(root, "Message") or code, 503 if code == "InternalError" else 400)
    # Name the manifest after the ETag that reads will see: some backends report another ETag
    # on HEAD and GET than in their completion answer.
    head = await gw.backend.request("HEAD", bucket, key)
    head.release()
    actual = head.headers.get("ETag", "").strip().strip('"')
    if not actual and root is not None:
        actual = (find_text(root, "ETag") or "").strip().strip('"')
    if actual and actual != expected:
        # A backend with its own ETag scheme: the manifest must name the ETag it really gave.
        stale = manifest
        manifest = Manifest(tuple(parts), actual, final_etag)
        await put_record(gw, bucket, key, manifest, manifest.seal(data_key, uid.salt))
        old = await gw.backend.request("DELETE", bucket, record_key(key, stale.backend_etag))
        old.release()
    location = f"/{bucket}/{key}"
    out = xml_doc(
        "CompleteMultipartUploadResult",
        [("Location", location), ("Bucket", bucket), ("Key", key), ("ETag", f'"{final_etag}"')],
    )
    return web.Response(status=200, body=out, headers={**XML_HEADERS, **version_ids(resp.headers)})


def _backend_id(text: str) -> str:
    """The backend's id inside a sealgate upload id (or the id itself, as ListMultipartUploads
    shows backend ids: abort and list-parts need no data key)."""
    if s3ec_read.is_s3ec_upload(text):
        return s3ec_read.backend_upload_id(text)
    try:
        return UploadId.decode(text).backend_id
    except FormatError:
        return text


async def abort(gw: Gateway, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    """AbortMultipartUpload."""
    resp = await gw.backend.request("DELETE", bucket, key, query=[("uploadId", _backend_id(request.query["uploadId"]))])
    if resp.status >= 300:
        raise await resp.error()
    resp.release()
    s3ec_read.forget_upload(gw, request.query["uploadId"])
    return web.Response(status=204)


async def list_parts(gw: Gateway, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    """ListParts, with plaintext part sizes."""
    query = [(k, v) for k, v in request.query.items() if k in ("max-parts", "part-number-marker")]
    query.append(("uploadId", _backend_id(request.query["uploadId"])))
    resp, raw_body = await gw.backend.read_ok("GET", bucket, key, query=query)
    root = ElementTree.fromstring(raw_body)
    layout = Layout(DEFAULT_SEGMENT_SIZE)
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        if (
            tag == "Size"
            and el.text
            and el.text.strip().isdigit()
            and not s3ec_read.is_s3ec_upload(request.query["uploadId"])
        ):
            with suppress(FormatError):
                el.text = str(part_plaintext_length(layout, int(el.text)))
        elif tag == "UploadId":
            el.text = request.query["uploadId"]
    from xml.etree.ElementTree import tostring

    return web.Response(status=200, body=tostring(root, encoding="utf-8", xml_declaration=True), headers=XML_HEADERS)


async def list_uploads(gw: Gateway, request: web.Request, bucket: str) -> web.StreamResponse:
    """ListMultipartUploads (ids shown are the backend's; abort and list-parts accept them)."""
    names = ("delimiter", "encoding-type", "key-marker", "max-uploads", "prefix", "upload-id-marker")
    query = [("uploads", "")] + [(k, v) for k, v in request.query.items() if k in names]
    resp, data = await gw.backend.read_ok("GET", bucket, None, query=query)
    return web.Response(status=200, body=data, headers=XML_HEADERS)
