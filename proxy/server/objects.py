"""Object operations: PutObject, GetObject, HeadObject, DeleteObject."""

from __future__ import annotations

import dataclasses
import logging
import re
from contextlib import suppress
from datetime import datetime
from email.utils import format_datetime
from xml.sax.saxutils import escape

from aiohttp import web

from proxy.crypto.format import (
    DEFAULT_SEGMENT_SIZE,
    DIGEST_SLOT,
    LAYOUT_MULTIPART,
    META_LAYOUT,
    PART_HEADER_SIZE,
    FormatError,
    Layout,
    is_sealgate_object,
    stream_key,
)
from proxy.crypto.multipart import MultipartDecryptor, read_plan
from proxy.crypto.segments import StreamDecryptor
from proxy.s3.errors import S3Error
from proxy.s3.headers import ACL_HEADERS, BYPASS_GOVERNANCE, RELAYED_HEADERS
from proxy.s3.ranges import check_conditions, parse_range
from proxy.s3.routing import Op
from proxy.s3.sigv4 import VerifiedRequest
from proxy.s3.xml import S3_NS, XML_HEADERS, check_setting
from proxy.server import bucket_access
from proxy.server import s3ec as s3ec_get
from proxy.server.body import client_body
from proxy.server.downloads import DownloadPace, abort, download_slot, paced, pump
from proxy.server.state import CALLER
from proxy.server.writes import WRITE_CONDITIONS, store_single, write_conditions
from proxy.store import s3ec
from proxy.store.backend import BackendResponse, version_query
from proxy.store.bodies import ranged, total_length
from proxy.store.gateway import Gateway
from proxy.store.objects import (
    MAX_PUT_SIZE,
    Opened,
    last_modified,
    open_object,
    require_plain,
)
from proxy.store.reserved import content_md5

log = logging.getLogger(__name__)

MAX_CONTROL_BODY = 1024 * 1024


async def put_object(
    gw: Gateway, request: web.Request, bucket: str, key: str, verified: VerifiedRequest
) -> web.StreamResponse:
    """Encrypt the body as it streams in and store it with its envelope metadata."""
    conditions = request.get(WRITE_CONDITIONS)  # checked before 100 Continue, if the client waited
    if conditions is None:
        conditions = await write_conditions(gw, request, bucket, key)
    body = client_body(gw, request, verified)
    if body.length > MAX_PUT_SIZE:
        raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size", 400)
    etag, extra = await store_single(gw, request[CALLER], bucket, key, body, request.headers, conditions)
    out = web.Response(status=200, headers={"ETag": etag})
    for name, value in body.checksums.items():
        out.headers[name] = value
    out.headers.update(extra)
    return out


def _object_headers(resp: BackendResponse, opened: Opened | None) -> dict[str, str]:
    headers: dict[str, str] = {"Accept-Ranges": "bytes"}
    for name in RELAYED_HEADERS:
        if name in resp.headers:
            headers[name] = resp.headers[name]
    if opened is not None:
        headers["ETag"] = opened.etag
        for k, v in opened.meta.user.items():
            headers[f"x-amz-meta-{k}"] = v
    return headers


def _response_overrides(request: web.Request, headers: dict[str, str]) -> None:
    names = {
        "response-content-type": "Content-Type",
        "response-content-language": "Content-Language",
        "response-expires": "Expires",
        "response-cache-control": "Cache-Control",
        "response-content-disposition": "Content-Disposition",
        "response-content-encoding": "Content-Encoding",
    }
    for param, header in names.items():
        if param in request.query:
            headers[header] = request.query[param]


def _conditions(request: web.Request, etag: str, last_modified: datetime | None) -> None:
    h = request.headers
    try:
        check_conditions(
            h.get("If-Match"),
            h.get("If-None-Match"),
            h.get("If-Modified-Since"),
            h.get("If-Unmodified-Since"),
            etag,
            last_modified,
        )
    except S3Error as err:
        if err.status == 304:  # S3 names the object it did not send
            err.headers["ETag"] = etag
            if last_modified is not None:
                err.headers["Last-Modified"] = format_datetime(last_modified, usegmt=True)
        raise


async def head_object(gw: Gateway, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    """Plaintext size, ETag, content headers and decrypted user metadata."""
    version = request.query.get("versionId")
    resp = await gw.backend.request("HEAD", bucket, key, query=version_query(version))
    if resp.status >= 300:
        resp.release()
        raise await resp.error()
    resp.release()
    _, total = total_length(resp)
    meta = resp.user_metadata()
    s3ec_meta = None if is_sealgate_object(meta) else await s3ec.s3ec_metadata(gw, bucket, key, meta)
    if s3ec_meta is not None:
        s3ec_materials = await s3ec.open_s3ec(gw, request[CALLER], bucket, key, s3ec_meta)
        headers = _object_headers(resp, None)
        headers["ETag"] = resp.headers.get("ETag", "")
        headers.update({f"x-amz-meta-{k}": v for k, v in s3ec.user_metadata(meta).items()})
        headers["Content-Length"] = str(
            await s3ec.plaintext_size(gw, bucket, key, s3ec_materials, total, resp.headers.get("ETag", ""), version)
        )
        _conditions(request, headers["ETag"], last_modified(resp))
        return web.Response(status=200, headers=headers)
    if not is_sealgate_object(meta):
        require_plain(gw, bucket, key, resp)
        headers = _object_headers(resp, None)
        headers["ETag"] = resp.headers.get("ETag", "")
        headers["Content-Length"] = str(total)
        _conditions(request, headers["ETag"], last_modified(resp))
        return web.Response(status=200, headers=headers)
    # A HEAD releases no plaintext: the manifest a read already opened under this very ETag,
    # salt and commitment gives its size as well as the stored record would.
    cached = "partNumber" not in request.query
    opened = await open_object(gw, request[CALLER], bucket, key, resp, total, version, cached=cached)
    _conditions(request, opened.etag, last_modified(resp))
    headers = _object_headers(resp, opened)
    _response_overrides(request, headers)
    headers["Content-Length"] = str(opened.plaintext_length)
    part = _part_range(request, opened)
    if part is not None:
        (a, b), count = part
        headers["x-amz-mp-parts-count"] = str(count)
        if opened.manifest is not None:
            headers["Content-Length"] = str(b - a)
            headers["Content-Range"] = f"bytes {a}-{b - 1}/{opened.plaintext_length}"
            return web.Response(status=206, headers=headers)
    return web.Response(status=200, headers=headers)


def _part_range(request: web.Request, opened: Opened) -> tuple[tuple[int, int], int] | None:
    """[start, end) of the ``partNumber`` a request asks for, and the number of parts; None
    without partNumber. Parts are counted 1..N in the completed object, as S3 numbers them."""
    raw = request.query.get("partNumber")
    if raw is None:
        return None
    if "Range" in request.headers:
        raise S3Error("InvalidRequest", "Cannot specify both Range header and partNumber query parameter", 400)
    if not raw.isdigit() or int(raw) < 1:
        raise S3Error("InvalidArgument", "Part number must be a positive integer", 400)
    number = int(raw)
    if opened.manifest is None:
        if number != 1:
            raise S3Error("InvalidPartNumber", "The requested partnumber is not satisfiable", 416)
        return (0, opened.plaintext_length), 1
    parts = opened.manifest.parts
    if number > len(parts):
        raise S3Error("InvalidPartNumber", "The requested partnumber is not satisfiable", 416)
    start = sum(p.length for p in parts[: number - 1])
    return (start, start + parts[number - 1].length), len(parts)


def _backend_range(header: str | None, segment_size: int) -> str | None:
    """The ciphertext range that surely covers a client's plaintext range (before the size is
    known); None when the whole object is needed."""
    if not header:
        return None
    m = re.match(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", header)
    if not m or (not m.group(1) and not m.group(2)):
        return None
    sealed = segment_size + 16
    first, last = m.group(1), m.group(2)
    if not first:
        n = int(last)
        segments = -(-(n + DIGEST_SLOT) // segment_size) + 1
        return f"bytes=-{segments * sealed}"
    start_seg = int(first) // segment_size
    if last:
        if int(last) < int(first):
            return None
        end_seg = int(last) // segment_size
        return f"bytes={start_seg * sealed}-{(end_seg + 1) * sealed - 1}"
    return f"bytes={start_seg * sealed}-"


async def get_object(gw: Gateway, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    """Stream the object back, authenticating each segment before releasing its bytes; one of
    the client's download slots is held until the body is sent (proxy/server/downloads.py)."""
    async with download_slot(gw, request):
        return await _get_object(gw, request, bucket, key)


async def _get_object(gw: Gateway, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    range_header = request.headers.get("Range")
    version = request.query.get("versionId")
    resp = await _pinned_read(gw, request, bucket, key, version, range_header)
    if resp is None:
        backend_headers: dict[str, str] = {}
        want = _backend_range(range_header, DEFAULT_SEGMENT_SIZE)
        if want:
            backend_headers["Range"] = want
        resp = await gw.backend.request("GET", bucket, key, query=version_query(version), headers=backend_headers)
    if resp.status == 416:
        resp.release()
        # The range starts past the stored object: find the plaintext size for the error.
        head = await gw.backend.request("HEAD", bucket, key, query=version_query(version))
        head.release()
        if head.status >= 300:
            raise await head.error()
        _, total = total_length(head)
        size = total
        if is_sealgate_object(head.user_metadata()):
            with suppress(FormatError):
                size = Layout(DEFAULT_SEGMENT_SIZE).plaintext_length(total)
        parse_range(range_header, size)
        raise S3Error("InvalidRange", "The requested range is not satisfiable", 416)
    if resp.status >= 300:
        raise await resp.error()
    try:
        return await _stream_object(gw, request, bucket, key, resp, range_header, version)
    finally:
        resp.close()


async def _pinned_read(
    gw: Gateway, request: web.Request, bucket: str, key: str, version: str | None, range_header: str | None
) -> BackendResponse | None:
    """A range read of a multipart object whose manifest a read already opened: its one backend
    request, for exactly the ciphertext the range needs, pinned to the ETag it was opened
    under (`proxy.store.read_cache`). None when there is no such plan, or the object changed."""
    known = gw.reads.latest(bucket, key, version) if range_header and "partNumber" not in request.query else None
    if known is None:
        return None
    try:
        rng = parse_range(range_header, known.manifest.size)
    except S3Error:
        return None
    if rng is None or rng[1] <= rng[0]:
        return None
    fetch, header, number = read_plan(known.manifest, Layout(known.segment_size), *rng)
    if header is not None and known.headers.get(number) is None:
        return None  # that part's header is not known yet: the long way fetches it
    headers = {"Range": f"bytes={fetch[0]}-{fetch[1] - 1}", "If-Match": known.etag}
    resp = await gw.backend.request("GET", bucket, key, query=version_query(version), headers=headers)
    if resp.status == 412:  # replaced since: forget it and read the long way
        resp.release()
        gw.reads.forget(bucket, key, version)
        return None
    return resp


async def _stream_object(
    gw: Gateway,
    request: web.Request,
    bucket: str,
    key: str,
    resp: BackendResponse,
    range_header: str | None,
    version: str | None,
) -> web.StreamResponse:
    resp_start, total = total_length(resp)
    meta = resp.user_metadata()
    s3ec_meta = None if is_sealgate_object(meta) else await s3ec.s3ec_metadata(gw, bucket, key, meta)
    if s3ec_meta is not None:
        headers = _object_headers(resp, None)
        headers["ETag"] = resp.headers.get("ETag", "")
        headers.update({f"x-amz-meta-{k}": v for k, v in s3ec.user_metadata(meta).items()})
        _conditions(request, headers["ETag"], last_modified(resp))
        _response_overrides(request, headers)
        return await s3ec_get.stream_s3ec(
            gw, request, bucket, key, resp, total, range_header, headers, s3ec_meta, version
        )
    if not is_sealgate_object(meta):
        require_plain(gw, bucket, key, resp)
        with paced(gw, request, f"/{bucket}/{key}") as pace:
            return await _stream_plain(request, resp, resp_start, total, range_header, pace)
    cached = range_header is not None and "partNumber" not in request.query
    opened = await open_object(gw, request[CALLER], bucket, key, resp, total, version, cached=cached)
    _conditions(request, opened.etag, last_modified(resp))
    size = opened.plaintext_length
    part = _part_range(request, opened)
    if part is not None and opened.manifest is not None and part[0][1] > part[0][0]:
        range_header = f"bytes={part[0][0]}-{part[0][1] - 1}"
    rng = parse_range(range_header, size)
    layout = Layout(opened.envelope.segment_size)
    headers = _object_headers(resp, opened)
    _response_overrides(request, headers)
    if part is not None:
        headers["x-amz-mp-parts-count"] = str(part[1])
    if opened.manifest is not None:
        return await _stream_multipart(gw, request, bucket, key, resp, opened, rng, headers, version)
    if rng is None:
        # A full read authenticates through the final segment, so truncation is always seen.
        span = dataclasses.replace(layout.span(0, size + DIGEST_SLOT, size), length=size)
        status = 200
    else:
        span = layout.span(rng[0], rng[1], size)
        status = 206
        headers["Content-Range"] = f"bytes {rng[0]}-{rng[1] - 1}/{size}"
    headers["Content-Length"] = str(span.length)
    if span.ciphertext_start < resp_start:
        raise S3Error("BadGateway", "backend returned a range that does not cover the request", 502)
    decryptor = StreamDecryptor(stream_key(opened.data_key, opened.envelope.salt, 0), layout, span, size)
    out = web.StreamResponse(status=status, headers=headers)
    fetch = (span.ciphertext_start - resp_start, span.ciphertext_end - span.ciphertext_start)
    with paced(gw, request, f"/{bucket}/{key}") as pace:
        return await pump(request, out, resp, decryptor, fetch, pace)


async def _stream_multipart(
    gw: Gateway,
    request: web.Request,
    bucket: str,
    key: str,
    resp: BackendResponse,
    opened: Opened,
    rng: tuple[int, int] | None,
    headers: dict[str, str],
    version: str | None,
) -> web.StreamResponse:
    """Serve a multipart object: the whole (each part's digest checked) or any range."""
    assert opened.manifest is not None
    size = opened.plaintext_length
    start, end = rng or (0, size)
    status = 200
    if rng is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers["Content-Length"] = str(end - start)
    layout = Layout(opened.envelope.segment_size)
    dec = MultipartDecryptor(
        opened.data_key, opened.envelope.salt, layout, opened.manifest, start, max(end, start), full=rng is None
    )
    etag = resp.headers.get("ETag", "")
    source = resp
    skip = 0
    if rng is not None or resp.status != 200:
        if dec.header_range:
            raw = gw.reads.header(bucket, key, version, etag, dec.header_part)
            if raw is None:
                h = await ranged(gw, bucket, key, etag, *dec.header_range, version=version)
                try:
                    raw = (await h.read())[:PART_HEADER_SIZE]
                finally:
                    h.release()
            try:
                dec.set_first_header(raw)
            except FormatError as exc:
                gw.reads.forget(bucket, key, version)
                raise S3Error("ObjectIntegrityError", f"stored object failed authentication: {exc}", 500) from exc
            gw.reads.remember_header(bucket, key, version, etag, dec.header_part, raw)
        if not _covers(resp, dec.fetch_range):
            resp.close()
            source = await ranged(gw, bucket, key, etag, *dec.fetch_range, version=version)
        first, _ = total_length(source)
        skip = dec.fetch_range[0] - first
    out = web.StreamResponse(status=status, headers=headers)
    fetch = (skip, dec.fetch_range[1] - dec.fetch_range[0])
    try:
        with paced(gw, request, f"/{bucket}/{key}") as pace:
            return await pump(request, out, source, dec, fetch, pace)
    finally:
        source.close()


def _covers(resp: BackendResponse, fetch: tuple[int, int]) -> bool:
    """Whether the backend's ranged answer holds all of `fetch` (some backends answer a range
    with 200 and a Content-Range)."""
    m = re.match(r"^bytes (\d+)-(\d+)/\d+$", resp.headers.get("Content-Range", ""))
    return resp.status in (200, 206) and m is not None and int(m.group(1)) <= fetch[0] < fetch[1] <= int(m.group(2)) + 1


async def _stream_plain(
    request: web.Request,
    resp: BackendResponse,
    resp_start: int,
    total: int,
    range_header: str | None,
    pace: DownloadPace,
) -> web.StreamResponse:
    """Migration mode: an object sealgate did not write, relayed as it is stored."""
    headers = _object_headers(resp, None)
    headers["ETag"] = resp.headers.get("ETag", "")
    _conditions(request, headers["ETag"], last_modified(resp))
    rng = parse_range(range_header, total)
    start, end = rng if rng else (0, total)
    status = 206 if rng else 200
    if rng:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{total}"
    headers["Content-Length"] = str(end - start)
    out = web.StreamResponse(status=status, headers=headers)
    await out.prepare(request)
    # The backend was asked for a segment-aligned range; trim to what the client asked.
    pos = resp_start
    try:
        async for chunk in resp.raw.content.iter_any():
            lo = max(start - pos, 0)
            hi = min(end - pos, len(chunk))
            if hi > lo:
                await pace.write(out, chunk[lo:hi])
            pos += len(chunk)
            if pos >= end:
                break
    except Exception:  # noqa: BLE001
        abort(request)
        return out
    if pos < end:
        abort(request)
        return out
    await out.write_eof()
    return out


async def delete_object(gw: Gateway, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    """Delete passes through; an If-Match is checked against the ETag sealgate shows."""
    version = request.query.get("versionId")
    for name in ("x-amz-if-match-size", "x-amz-if-match-last-modified-time"):
        if name in request.headers:
            # Both would need the stored object's plaintext figures mapped onto the backend's.
            raise S3Error("NotImplemented", f"sealgate does not implement the {name} condition on DeleteObject", 501)
    backend_headers: dict[str, str] = {}
    if "If-Match" in request.headers:
        backend_headers = await write_conditions(gw, request, bucket, key, version=version)
    if BYPASS_GOVERNANCE in request.headers:
        backend_headers[BYPASS_GOVERNANCE] = request.headers[BYPASS_GOVERNANCE]
    resp = await gw.backend.request("DELETE", bucket, key, query=version_query(version), headers=backend_headers)
    if resp.status >= 300:
        raise await resp.error()
    resp.release()
    headers = {name: resp.headers[name] for name in ("x-amz-version-id", "x-amz-delete-marker") if name in resp.headers}
    return web.Response(status=204, headers=headers)


async def object_property(
    gw: Gateway, request: web.Request, bucket: str, key: str, subresource: str
) -> web.StreamResponse:
    """Object properties that are not sealed pass through: tags (Get/Put/DeleteObjectTagging),
    Object Lock retention and legal hold (Get/PutObjectRetention, Get/PutObjectLegalHold) and
    ACLs (Get/PutObjectAcl: they govern access to the ciphertext on the backend)."""
    query = [(subresource, ""), *version_query(request.query.get("versionId"))]
    body: bytes | None = None
    headers = {name: request.headers[name] for name in ACL_HEADERS if name in request.headers}
    if BYPASS_GOVERNANCE in request.headers:
        headers[BYPASS_GOVERNANCE] = request.headers[BYPASS_GOVERNANCE]
    if request.method == "PUT":
        body = await request.content.read(MAX_CONTROL_BODY + 1)
        if len(body) > MAX_CONTROL_BODY:
            raise S3Error("MaxMessageLengthExceeded", "Your request was too big.", 400)
        if subresource == "acl":
            bucket_access.check_acls(request, Op.PUT_OBJECT_ACL, bucket, body)
        if body or subresource != "acl":  # a canned ACL in a header comes without a body
            headers["Content-MD5"] = content_md5(body)
    resp, data = await gw.backend.read_ok(request.method, bucket, key, query=query, headers=headers, body=body)
    if request.method == "GET":
        check_setting(data, subresource)  # never the object's own bytes, from a backend that ignores it
    out = {name: resp.headers[name] for name in ("x-amz-version-id",) if name in resp.headers}
    if data:
        out["Content-Type"] = "application/xml"
    return web.Response(status=resp.status, body=data or None, headers=out)


_ATTRIBUTES = ("ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize")


async def _multipart(gw: Gateway, request: web.Request, bucket: str, key: str) -> bool:
    """Whether the object was completed from parts (a single PUT's opaque ETag also ends in -1)."""
    resp = await gw.backend.request("HEAD", bucket, key, query=version_query(request.query.get("versionId")))
    resp.release()
    meta = resp.user_metadata()
    return meta.get(META_LAYOUT) == LAYOUT_MULTIPART if is_sealgate_object(meta) else resp.status < 300


async def get_object_attributes(gw: Gateway, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    """GetObjectAttributes: what HeadObject tells of the object, as S3's document: the ETag
    (unquoted), the plaintext size, the storage class and, of a multipart object, its part count.
    Checksums are not kept for the plaintext, so none is reported."""
    wanted = {a.strip() for a in request.headers.get("x-amz-object-attributes", "").split(",") if a.strip()}
    unknown = sorted(wanted - set(_ATTRIBUTES))
    if not wanted or unknown:
        raise S3Error(
            "InvalidArgument",
            f"x-amz-object-attributes must name some of {', '.join(_ATTRIBUTES)}"
            + (f" (not {', '.join(unknown)})" if unknown else ""),
            400,
        )
    head = await head_object(gw, request, bucket, key)
    etag = head.headers.get("ETag", "").strip('"')
    fields: list[tuple[str, str]] = []
    if "ETag" in wanted:
        fields.append(("ETag", etag))
    if (
        "ObjectParts" in wanted
        and re.fullmatch(r"[0-9a-f]{32}-[0-9]+", etag)
        and await _multipart(gw, request, bucket, key)
    ):
        fields.append(("ObjectParts", f"<PartsCount>{int(etag.rsplit('-', 1)[1])}</PartsCount>"))
    if "StorageClass" in wanted:
        fields.append(("StorageClass", head.headers.get("x-amz-storage-class", "STANDARD")))
    if "ObjectSize" in wanted:
        fields.append(("ObjectSize", head.headers.get("Content-Length", "0")))
    inner = "".join(f"<{k}>{v if k == 'ObjectParts' else escape(v)}</{k}>" for k, v in fields)
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<GetObjectAttributesResponse xmlns="{S3_NS}">{inner}'
    body += "</GetObjectAttributesResponse>"
    out = {
        n: head.headers[n] for n in ("Last-Modified", "x-amz-version-id", "x-amz-delete-marker") if n in head.headers
    }
    return web.Response(status=200, body=body.encode(), headers={**out, **XML_HEADERS})
