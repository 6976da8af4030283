"""Object operations: PutObject, GetObject, HeadObject, DeleteObject."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Protocol

from aiohttp import web

from proxy.backend import BackendResponse, version_ids, version_query
from proxy.crypto.format import (
    DEFAULT_SEGMENT_SIZE,
    DIGEST_SLOT,
    LAYOUT_MULTIPART,
    LAYOUT_SINGLE,
    PART_HEADER_SIZE,
    SALT_SIZE,
    SCOPE_BUCKET,
    Envelope,
    FormatError,
    IntegrityError,
    Layout,
    Manifest,
    SealedMetadata,
    commitment,
    is_sealgate_object,
    name_tag,
    open_metadata,
    seal_metadata,
    stream_key,
)
from proxy.crypto.multipart import MultipartDecryptor, stored_length
from proxy.crypto.segments import StreamDecryptor, StreamEncryptor, read_digest_slot
from proxy.kms.base import KeyringError
from proxy.s3.errors import S3Error, keyring_error
from proxy.s3.headers import BYPASS_GOVERNANCE, RELAYED_HEADERS, STORED_HEADERS, etag_value
from proxy.s3.ranges import check_conditions, etag_matches, parse_range
from proxy.s3.sigv4 import VerifiedRequest
from proxy.server import s3ec_read
from proxy.server.body import PlaintextBody
from proxy.server.direct import take_over
from proxy.server.state import Gateway, require_key_use

log = logging.getLogger(__name__)

MAX_PUT_SIZE = 5 * 1024**3
MAX_USER_METADATA = 2048
RESERVED_PREFIX = ".sealgate/"
MAX_CONTROL_BODY = 1024 * 1024
ETAG_TAIL = "tail"

_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


def content_md5(body: bytes) -> str:
    """The Content-MD5 header value of `body`."""
    return base64.b64encode(hashlib.md5(body).digest()).decode()


def opaque_etag(backend_etag: str) -> str:
    """An ETag that names this stored version but is plainly no MD5 of the plaintext.

    The ``-1`` suffix is S3's multipart form, which sync tools know not to compare with an MD5.
    """
    bare = etag_value(backend_etag)
    return f'"{bare}"' if "-" in bare else f'"{bare}-1"'


def _user_metadata(request: web.Request) -> dict[str, str]:
    meta: dict[str, str] = {}
    size = 0
    for name, value in request.headers.items():
        lname = name.lower()
        if lname.startswith("x-amz-meta-"):
            short = lname[len("x-amz-meta-") :]
            meta[short] = value
            size += len(short.encode()) + len(value.encode())
    if size > MAX_USER_METADATA:
        raise S3Error(
            "MetadataTooLarge",
            "Your metadata headers exceed the maximum allowed metadata size.",
            400,
        )
    return meta


def _keyring_error(exc: KeyringError) -> S3Error:
    return keyring_error(exc)


def wants_md5(gw: Gateway, verified: VerifiedRequest) -> bool:
    """Whether to compute the plaintext MD5 although no Content-MD5 came: the client signed a
    hex SHA-256 payload (such clients compare ETags with MD5s) or the config asks for it."""
    payload = verified.payload_hash
    return gw.config.encryption.etag == "md5" or (
        payload != "UNSIGNED-PAYLOAD" and not payload.startswith("STREAMING-")
    )


def client_body(gw: Gateway, request: web.Request, verified: VerifiedRequest) -> PlaintextBody:
    """The request's body as verified plaintext, with the config's MD5 and stall settings."""
    direct = take_over(request, gw.config.server.direct_body_min_bytes, DEFAULT_SEGMENT_SIZE)
    return PlaintextBody(
        request.content if direct is None else direct,
        request.headers,
        verified,
        want_md5=wants_md5(gw, verified),
        stall_timeout=gw.config.server.body_stall_timeout_seconds,
    )


def stored_headers(request: web.Request) -> dict[str, str]:
    """The client's content headers that the backend keeps as object properties."""
    headers = {name: request.headers[name] for name in STORED_HEADERS if name in request.headers}
    encoding = [
        t.strip()
        for t in request.headers.get("Content-Encoding", "").split(",")
        if t.strip() and t.strip().lower() != "aws-chunked"
    ]
    if encoding:
        headers["Content-Encoding"] = ",".join(encoding)
    return headers


async def new_envelope(
    gw: Gateway,
    request: web.Request,
    bucket: str,
    key: str,
    *,
    layout: str,
    etag_field: str | None,
    size: int | None = None,
) -> tuple[bytes, Envelope]:
    """A data key (KMS first: nothing is sent to the backend if it fails) and envelope."""
    user_meta = _user_metadata(request)
    key_id = gw.config.key_for_bucket(bucket, key)
    require_key_use(gw, request, "encrypt", key_id)
    return await seal_envelope(gw, key_id, bucket, key, user_meta, layout=layout, etag_field=etag_field, size=size)


async def seal_envelope(
    gw: Gateway,
    key_id: str,
    bucket: str,
    key: str,
    user_meta: dict[str, str],
    *,
    layout: str,
    etag_field: str | None,
    size: int | None = None,
) -> tuple[bytes, Envelope]:
    """`new_envelope` without a client request (key policy is the caller's business)."""
    try:
        data_key, scope = await gw.materials.new_object_key(key_id, bucket, key, size)
    except KeyringError as exc:
        raise _keyring_error(exc) from exc
    salt = os.urandom(SALT_SIZE)
    env = Envelope(
        key_ref=data_key.key_ref,
        wrapped_key=data_key.wrapped,
        salt=salt,
        commitment=commitment(data_key.plaintext, salt),
        segment_size=DEFAULT_SEGMENT_SIZE,
        sealed=seal_metadata(data_key.plaintext, salt, SealedMetadata(user=user_meta, etag=etag_field)),
        layout=layout,
        scope=scope,
        name_tag=name_tag(data_key.plaintext, salt, bucket, key) if scope == SCOPE_BUCKET else b"",
    )
    return data_key.plaintext, env


#: Uploads up to this size (sealed) are gathered in memory and sent whole; larger ones stream.
SMALL_BODY_BYTES = 256 * 1024


async def _failure_first(
    chunks: AsyncIterator[bytes], send: Callable[[AsyncIterator[bytes]], Awaitable[BackendResponse]]
) -> BackendResponse:
    """`send(body)` with `chunks` as the streamed body: a failure of `chunks` wins over the
    backend's answer."""
    failure: list[BaseException] = []

    async def guarded() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield chunk
        except BaseException as exc:
            failure.append(exc)
            raise

    try:
        resp = await send(guarded())
    except BaseException:
        if failure:
            raise failure[0] from None
        raise
    if failure:
        resp.close()
        raise failure[0]
    return resp


async def put_stream(
    gw: Gateway,
    bucket: str,
    key: str,
    chunks: AsyncIterator[bytes],
    length: int,
    *,
    headers: dict[str, str],
    query: list[tuple[str, str]] | None = None,
) -> BackendResponse:
    """PUT `length` bytes from `chunks` to the backend. If `chunks` fails (a check on the
    client's body), that failure is what the caller sees, and the backend, short of its
    Content-Length, stores nothing.

    A body of at most `SMALL_BODY_BYTES` is gathered first and sent in one piece: a failed
    check then never reaches the backend, and the request can be retried like any other with
    a body in hand."""
    if length <= SMALL_BODY_BYTES:
        whole = b"".join([chunk async for chunk in chunks])
        if len(whole) != length:
            raise AssertionError(f"sealed body is {len(whole)} bytes, not the {length} declared")
        # The backend checks what it stores (and S3 takes uploads into buckets with Object Lock
        # retention only with a checksum of the body). About 5 us for 4 KiB.
        headers = {**headers, "Content-MD5": content_md5(whole)}
        resp = await gw.backend.request("PUT", bucket, key, query=query or [], headers=headers, body=whole)
    else:
        resp = await _failure_first(
            chunks,
            lambda body: gw.backend.request(
                "PUT", bucket, key, query=query or [], headers=headers, body=body, content_length=length
            ),
        )
    if resp.status >= 300:
        raise await resp.error()
    resp.release()
    return resp


async def send_sealed(
    gw: Gateway,
    bucket: str,
    key: str,
    body: SealableBody,
    encryptor: StreamEncryptor,
    *,
    prefix: bytes = b"",
    digest_md5: bool,
    headers: dict[str, str],
    query: list[tuple[str, str]] | None = None,
) -> BackendResponse:
    """PUT `prefix` and the encrypted body, holding back the final segment until every check on
    the client's body has passed (without it the backend never receives all its bytes)."""

    async def ciphertext() -> AsyncIterator[bytes]:
        if prefix:
            yield prefix
        async for piece in body:
            # The segments one piece completes go to aiohttp as one write: a write per 64 KiB
            # segment cost more CPU than the copy (benchmarks/README.md, session 4).
            if sealed := b"".join(encryptor.feed(piece)):
                yield sealed
        digest = body.md5 if digest_md5 and body.md5 else b"\x00" * DIGEST_SLOT
        for segment in encryptor.finish(digest):
            yield segment

    length = len(prefix) + Layout(DEFAULT_SEGMENT_SIZE).ciphertext_length(body.length)
    return await put_stream(gw, bucket, key, ciphertext(), length, headers=headers, query=query)


async def shown_etag(
    gw: Gateway, request: web.Request, bucket: str, key: str, version: str | None = None
) -> tuple[str, str] | None:
    """(the ETag sealgate shows for what is stored as `bucket`/`key` now, the backend's own ETag
    for it), or None if nothing is. Raises what a HEAD of the object would."""
    resp = await gw.backend.request("HEAD", bucket, key, query=version_query(version))
    resp.release()
    if resp.status == 404:
        return None
    if resp.status >= 300:
        raise await resp.error()
    stored = resp.headers.get("ETag", "")
    meta = resp.user_metadata()
    if is_sealgate_object(meta):
        _, total = _total_length(resp)
        return (await _open(gw, request, bucket, key, resp, total, version)).etag, stored
    if _allow_plain(gw, bucket) or await s3ec_read.s3ec_metadata(gw, bucket, key, meta) is not None:
        return stored, stored  # shown as stored (see head_object)
    raise _not_sealgate(bucket, key)


#: The backend headers `write_conditions` gave for this request, when they were worked out
#: before 100 Continue.
WRITE_CONDITIONS = web.RequestKey("sealgate.write_conditions", dict[str, str])


async def write_conditions(
    gw: Gateway, request: web.Request, bucket: str, key: str, *, version: str | None = None
) -> dict[str, str]:
    """Backend headers that carry out the client's If-Match / If-None-Match on a write.

    The client's ETags are the ones sealgate shows (of the plaintext), which the backend has
    never seen. An If-Match is checked here against the current object's shown ETag, then sent
    on as an If-Match on the backend's ETag of that same object, so that a write racing with
    ours makes the backend refuse (412) rather than overwrite a version the client never
    saw. If-None-Match takes only ``*`` on a write, as on S3: checked here and sent on as it is."""
    if_match = request.headers.get("If-Match")
    if_none_match = request.headers.get("If-None-Match")
    out: dict[str, str] = {}
    if if_none_match is not None:
        if if_none_match.strip() != "*":
            raise S3Error("NotImplemented", "If-None-Match on a write takes only '*' (the object must not exist)", 501)
        # Checked here too, for backends that do not check it themselves (not all do on every
        # operation); where the backend does, it also closes the gap between here and the write.
        head = await gw.backend.request("HEAD", bucket, key)
        head.release()
        if head.status < 300:
            raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold", 412)
        if head.status != 404:
            raise await head.error()
        out["If-None-Match"] = "*"
    if if_match is not None:
        out["If-Match"] = await matching_etag(gw, request, bucket, key, if_match, version)
    return out


async def matching_etag(
    gw: Gateway, request: web.Request, bucket: str, key: str, if_match: str, version: str | None = None
) -> str:
    """The backend's ETag of the object stored as `bucket`/`key`, once its shown ETag matches
    `if_match`: NoSuchKey (404) if nothing is stored, PreconditionFailed (412) if it differs."""
    current = await shown_etag(gw, request, bucket, key, version)
    if current is None:
        raise S3Error("NoSuchKey", "The specified key does not exist.", 404, resource=f"/{bucket}/{key}")
    shown, stored = current
    if not etag_matches(if_match, shown):
        raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold", 412)
    return stored


def _put_etag_field(body: PlaintextBody) -> str | None:
    if body.content_md5 is not None:
        return body.content_md5.hex()
    return ETAG_TAIL if body.md5_wanted else None


def check_reserved(key: str) -> None:
    """Keys under sealgate's own prefix are not for clients."""
    if key.startswith(RESERVED_PREFIX):
        raise S3Error("AccessDenied", f"keys under {RESERVED_PREFIX} are reserved by sealgate", 403)


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
    rule = gw.config.rule_for_bucket(bucket, key)
    if rule is not None and rule.format == "s3ec-v3":
        etag = await s3ec_read.put_s3ec_v3(gw, request, bucket, key, body, conditions)
        return web.Response(status=200, headers={"ETag": etag})
    etag_field = _put_etag_field(body)
    data_key, env = await new_envelope(
        gw, request, bucket, key, layout=LAYOUT_SINGLE, etag_field=etag_field, size=body.length
    )
    headers = {f"x-amz-meta-{k}": v for k, v in env.to_metadata().items()}
    headers.update(stored_headers(request))
    headers.update(conditions)
    encryptor = StreamEncryptor(stream_key(data_key, env.salt, 0), env.segment_size)
    resp = await send_sealed(gw, bucket, key, body, encryptor, digest_md5=etag_field == ETAG_TAIL, headers=headers)
    if etag_field == ETAG_TAIL:
        assert body.md5 is not None
        etag = f'"{body.md5.hex()}"'
    elif etag_field is not None:
        etag = f'"{etag_field}"'
    else:
        etag = opaque_etag(resp.headers.get("ETag", ""))
    out = web.Response(status=200, headers={"ETag": etag})
    for name, value in body.checksums.items():
        out.headers[name] = value
    out.headers.update(version_ids(resp.headers))
    return out


@dataclasses.dataclass
class _Opened:
    """An object whose envelope has been checked and whose data key is unwrapped."""

    envelope: Envelope
    data_key: bytes
    meta: SealedMetadata
    plaintext_length: int
    etag: str
    manifest: Manifest | None = None


def _total_length(resp: BackendResponse) -> tuple[int, int]:
    """(start offset of the body, total stored length) of a GET or HEAD response."""
    cr = resp.headers.get("Content-Range")
    # Some backends (rclone serve s3) answer a ranged GET with 200 and a Content-Range.
    if resp.status in (200, 206) and cr:
        m = _CONTENT_RANGE_RE.match(cr)
        if not m:
            raise S3Error("BadGateway", "backend sent a malformed Content-Range", 502)
        return int(m.group(1)), int(m.group(3))
    return 0, int(resp.headers.get("Content-Length", "0"))


async def _open(
    gw: Gateway,
    request: web.Request | None,
    bucket: str,
    key: str,
    resp: BackendResponse,
    total: int,
    version: str | None = None,
) -> _Opened:
    """Check the envelope and unwrap the data key; without a request (operator tools such as
    `sealgate convert`) no client key policy applies. `version`: the object version `resp`
    describes, if the client named one (later reads of the body must read that version)."""
    meta = resp.user_metadata()
    try:
        env = Envelope.from_metadata(meta)
    except FormatError as exc:
        raise S3Error("ObjectIntegrityError", f"stored object is not readable: {exc}", 500) from exc
    if request is not None:
        require_key_use(gw, request, "decrypt", env.key_ref)
    try:
        data_key = await gw.materials.unwrap(env.key_ref, env.wrapped_key, env.context(bucket, key))
    except KeyringError as exc:
        raise _keyring_error(exc) from exc
    layout = Layout(env.segment_size)
    try:
        env.check_commitment(data_key)
        env.check_name(data_key, bucket, key)
        sealed = open_metadata(data_key, env.salt, env.sealed)
        if env.layout == LAYOUT_MULTIPART:
            manifest = await read_manifest(gw, bucket, key, resp, data_key, env.salt)
            if stored_length(manifest, layout) != total:
                raise IntegrityError("stored size differs from the manifest's parts")
            return _Opened(env, data_key, sealed, manifest.size, f'"{manifest.etag}"', manifest)
        plain_len = layout.plaintext_length(total)
    except FormatError as exc:
        raise S3Error("ObjectIntegrityError", f"stored object failed authentication: {exc}", 500) from exc
    if sealed.etag == ETAG_TAIL:
        etag = f'"{(await _digest_slot(gw, bucket, key, env, data_key, plain_len, version)).hex()}"'
    elif sealed.etag:
        etag = f'"{sealed.etag}"'
    else:
        etag = opaque_etag(resp.headers.get("ETag", ""))
    return _Opened(env, data_key, sealed, plain_len, etag)


def record_key(key: str, backend_etag: str) -> str:
    """Where the manifest of the object stored as `key` with this backend ETag lives."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{RESERVED_PREFIX}mp/{digest}/{etag_value(backend_etag)}"


async def read_manifest(
    gw: Gateway, bucket: str, key: str, resp: BackendResponse, data_key: bytes, salt: bytes
) -> Manifest:
    """The sealed manifest of a multipart object; it must name the ETag the backend reports."""
    etag = etag_value(resp.headers.get("ETag", ""))
    rec = await gw.backend.request("GET", bucket, record_key(key, etag))
    if rec.status == 404:
        rec.release()
        raise IntegrityError("the multipart manifest for this object is missing")
    if rec.status >= 300:
        raise await rec.error()
    try:
        sealed = await rec.read()
    finally:
        rec.release()
    manifest = Manifest.open(data_key, salt, sealed)
    if manifest.backend_etag != etag:
        raise IntegrityError("the stored parts are not the ones the manifest names")
    return manifest


async def _digest_slot(
    gw: Gateway, bucket: str, key: str, env: Envelope, data_key: bytes, plain_len: int, version: str | None = None
) -> bytes:
    layout = Layout(env.segment_size)
    span = layout.span(plain_len, plain_len + DIGEST_SLOT, plain_len)
    resp = await gw.backend.request(
        "GET",
        bucket,
        key,
        query=version_query(version),
        headers={"Range": f"bytes={span.ciphertext_start}-{span.ciphertext_end - 1}"},
    )
    if resp.status >= 300:
        raise await resp.error()
    start, _ = _total_length(resp)
    try:
        data = await resp.read()
    finally:
        resp.release()
    data = data[span.ciphertext_start - start : span.ciphertext_end - start]
    try:
        return read_digest_slot(stream_key(data_key, env.salt, 0), layout, plain_len, data)
    except FormatError as exc:
        raise S3Error("ObjectIntegrityError", f"stored object failed authentication: {exc}", 500) from exc


def _last_modified(resp: BackendResponse) -> datetime | None:
    raw = resp.headers.get("Last-Modified")
    if not raw:
        return None
    try:
        return parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None


def _object_headers(resp: BackendResponse, opened: _Opened | None) -> dict[str, str]:
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
    check_conditions(
        h.get("If-Match"),
        h.get("If-None-Match"),
        h.get("If-Modified-Since"),
        h.get("If-Unmodified-Since"),
        etag,
        last_modified,
    )


def _allow_plain(gw: Gateway, bucket: str) -> bool:
    rule = gw.config.rule_for_bucket(bucket)
    return bool(rule is not None and rule.allow_unencrypted_reads)


def _not_sealgate(bucket: str, key: str) -> S3Error:
    return S3Error(
        "InvalidObjectState",
        "This object was not written by sealgate; reading unencrypted objects is not enabled "
        "for this bucket (buckets.allow_unencrypted_reads).",
        403,
        resource=f"/{bucket}/{key}",
    )


async def head_object(gw: Gateway, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    """Plaintext size, ETag, content headers and decrypted user metadata."""
    version = request.query.get("versionId")
    resp = await gw.backend.request("HEAD", bucket, key, query=version_query(version))
    if resp.status >= 300:
        resp.release()
        raise await resp.error()
    resp.release()
    _, total = _total_length(resp)
    meta = resp.user_metadata()
    s3ec_meta = None if is_sealgate_object(meta) else await s3ec_read.s3ec_metadata(gw, bucket, key, meta)
    if s3ec_meta is not None:
        s3ec_materials = await s3ec_read.open_s3ec(gw, request, bucket, key, s3ec_meta)
        headers = _object_headers(resp, None)
        headers["ETag"] = resp.headers.get("ETag", "")
        headers.update({f"x-amz-meta-{k}": v for k, v in s3ec_read.user_metadata(meta).items()})
        headers["Content-Length"] = str(
            await s3ec_read.plaintext_size(
                gw, bucket, key, s3ec_materials, total, resp.headers.get("ETag", ""), version
            )
        )
        _conditions(request, headers["ETag"], _last_modified(resp))
        return web.Response(status=200, headers=headers)
    if not is_sealgate_object(meta):
        if not _allow_plain(gw, bucket):
            raise _not_sealgate(bucket, key)
        headers = _object_headers(resp, None)
        headers["ETag"] = resp.headers.get("ETag", "")
        headers["Content-Length"] = str(total)
        _conditions(request, headers["ETag"], _last_modified(resp))
        return web.Response(status=200, headers=headers)
    opened = await _open(gw, request, bucket, key, resp, total, version)
    _conditions(request, opened.etag, _last_modified(resp))
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


def _part_range(request: web.Request, opened: _Opened) -> tuple[tuple[int, int], int] | None:
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
    """Stream the object back, authenticating each segment before releasing its bytes."""
    range_header = request.headers.get("Range")
    version = request.query.get("versionId")
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
        _, total = _total_length(head)
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


async def _stream_object(
    gw: Gateway,
    request: web.Request,
    bucket: str,
    key: str,
    resp: BackendResponse,
    range_header: str | None,
    version: str | None,
) -> web.StreamResponse:
    resp_start, total = _total_length(resp)
    meta = resp.user_metadata()
    s3ec_meta = None if is_sealgate_object(meta) else await s3ec_read.s3ec_metadata(gw, bucket, key, meta)
    if s3ec_meta is not None:
        headers = _object_headers(resp, None)
        headers["ETag"] = resp.headers.get("ETag", "")
        headers.update({f"x-amz-meta-{k}": v for k, v in s3ec_read.user_metadata(meta).items()})
        _conditions(request, headers["ETag"], _last_modified(resp))
        _response_overrides(request, headers)
        return await s3ec_read.stream_s3ec(
            gw, request, bucket, key, resp, total, range_header, headers, s3ec_meta, version
        )
    if not is_sealgate_object(meta):
        if not _allow_plain(gw, bucket):
            raise _not_sealgate(bucket, key)
        return await _stream_plain(request, resp, resp_start, total, range_header)
    opened = await _open(gw, request, bucket, key, resp, total, version)
    _conditions(request, opened.etag, _last_modified(resp))
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
    skip = span.ciphertext_start - resp_start
    return await _pump(
        request, out, resp, decryptor, skip, span.ciphertext_end - span.ciphertext_start, f"/{bucket}/{key}"
    )


async def _ranged(
    gw: Gateway, bucket: str, key: str, etag: str, start: int, end: int, version: str | None = None
) -> BackendResponse:
    """Backend bytes [start, end) of the object (that version of it) that still has this ETag."""
    resp = await gw.backend.request(
        "GET",
        bucket,
        key,
        query=version_query(version),
        headers={"Range": f"bytes={start}-{end - 1}", "If-Match": etag},
    )
    if resp.status == 412:
        resp.release()
        raise S3Error("ServiceUnavailable", "the object changed while it was read; retry", 503)
    if resp.status >= 300:
        raise await resp.error()
    return resp


async def _stream_multipart(
    gw: Gateway,
    request: web.Request,
    bucket: str,
    key: str,
    resp: BackendResponse,
    opened: _Opened,
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
        resp.close()
        if dec.header_range:
            h = await _ranged(gw, bucket, key, etag, *dec.header_range, version=version)
            try:
                raw = await h.read()
            finally:
                h.release()
            try:
                dec.set_first_header(raw[: dec.header_range[1] - dec.header_range[0]])
            except FormatError as exc:
                raise S3Error("ObjectIntegrityError", f"stored object failed authentication: {exc}", 500) from exc
        source = await _ranged(gw, bucket, key, etag, *dec.fetch_range, version=version)
        first, _ = _total_length(source)
        skip = dec.fetch_range[0] - first
    out = web.StreamResponse(status=status, headers=headers)
    try:
        return await _pump(request, out, source, dec, skip, dec.fetch_range[1] - dec.fetch_range[0], f"/{bucket}/{key}")
    finally:
        source.close()


class SealableBody(Protocol):
    """What `send_sealed` reads: plaintext of a known length whose MD5 is known at its end."""

    length: int

    @property
    def md5(self) -> bytes | None: ...

    def __aiter__(self) -> AsyncIterator[bytes | memoryview]: ...


class _Decryptor(Protocol):
    def feed(self, data: memoryview) -> list[bytes]: ...

    def finish(self) -> None: ...


async def _pump(
    request: web.Request,
    out: web.StreamResponse,
    source: BackendResponse,
    decryptor: _Decryptor,
    skip: int,
    remaining: int,
    name: str,
) -> web.StreamResponse:
    """Send the response: backend bytes (after `skip`, `remaining` of them) through the
    decryptor to the client, only authenticated bytes. A failure once the response has started
    aborts the connection, so the client never sees a body that ends cleanly but wrong."""
    await out.prepare(request)
    try:
        async for chunk in source.raw.content.iter_any():
            view = memoryview(chunk)
            if skip:
                take = min(skip, len(view))
                view = view[take:]
                skip -= take
            view = view[:remaining]
            remaining -= len(view)
            for piece in decryptor.feed(view):
                await out.write(piece)
            if remaining == 0:
                break
        decryptor.finish()
    except (IntegrityError, FormatError) as exc:
        log.error("integrity failure on GET %s: %s; aborting the response", name, exc)
        _abort(request)
        return out
    except Exception as exc:  # noqa: BLE001 - backend read errors mid-body
        log.warning("backend read failed mid-body on GET %s: %s", name, exc.__class__.__name__)
        _abort(request)
        return out
    await out.write_eof()
    return out


def _abort(request: web.Request) -> None:
    """Cut the client connection: a body must never end cleanly with missing or wrong bytes."""
    transport = request.transport
    if transport is not None:
        transport.abort()


async def _stream_plain(
    request: web.Request,
    resp: BackendResponse,
    resp_start: int,
    total: int,
    range_header: str | None,
) -> web.StreamResponse:
    """Migration mode: an object sealgate did not write, relayed as it is stored."""
    headers = _object_headers(resp, None)
    headers["ETag"] = resp.headers.get("ETag", "")
    _conditions(request, headers["ETag"], _last_modified(resp))
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
                await out.write(chunk[lo:hi])
            pos += len(chunk)
            if pos >= end:
                break
    except Exception:  # noqa: BLE001
        _abort(request)
        return out
    if pos < end:
        _abort(request)
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
    Object Lock retention and legal hold (Get/PutObjectRetention, Get/PutObjectLegalHold)."""
    query = [(subresource, ""), *version_query(request.query.get("versionId"))]
    body: bytes | None = None
    headers: dict[str, str] = {}
    if BYPASS_GOVERNANCE in request.headers:
        headers[BYPASS_GOVERNANCE] = request.headers[BYPASS_GOVERNANCE]
    if request.method == "PUT":
        body = await request.content.read(MAX_CONTROL_BODY + 1)
        if len(body) > MAX_CONTROL_BODY:
            raise S3Error("MaxMessageLengthExceeded", "Your request was too big.", 400)
        headers["Content-MD5"] = content_md5(body)
    resp, data = await gw.backend.read_ok(request.method, bucket, key, query=query, headers=headers, body=body)
    out = {name: resp.headers[name] for name in ("x-amz-version-id",) if name in resp.headers}
    if data:
        out["Content-Type"] = "application/xml"
    return web.Response(status=resp.status, body=data or None, headers=out)


async def open_copy_source(
    gw: Gateway, request: web.Request | None, bucket: str, key: str, version: str | None = None
) -> tuple[_Opened, BackendResponse, int]:
    """The source of a copy: opened (data key unwrapped, checked) once the request's
    x-amz-copy-source-if-* conditions hold against the ETag sealgate shows for it."""
    head = await gw.backend.request("HEAD", bucket, key, query=version_query(version))
    head.release()
    if head.status >= 300:
        raise await head.error()
    if not is_sealgate_object(head.user_metadata()):
        raise S3Error("InvalidObjectState", "sealgate copies only objects it wrote", 403)
    _, total = _total_length(head)
    opened = await _open(gw, request, bucket, key, head, total, version)
    if request is None:
        return opened, head, total
    h = request.headers
    check_conditions(
        h.get("x-amz-copy-source-if-match"),
        h.get("x-amz-copy-source-if-none-match"),
        h.get("x-amz-copy-source-if-modified-since"),
        h.get("x-amz-copy-source-if-unmodified-since"),
        opened.etag,
        _last_modified(head),
        is_read=False,
    )
    return opened, head, total


async def read_plaintext(
    gw: Gateway,
    request: web.Request | None,
    bucket: str,
    key: str,
    byte_range: tuple[int, int] | None,
    version: str | None = None,
) -> tuple[int, AsyncIterator[bytes], _Opened, BackendResponse]:
    """Authenticated plaintext of [first, last] (inclusive, like a Range) of a sealgate object
    (of that `version` of it), as a stream, for server-side operations that must re-encrypt
    (UploadPartCopy)."""
    opened, head, _ = await open_copy_source(gw, request, bucket, key, version)
    size = opened.plaintext_length
    start, end = (0, size) if byte_range is None else (byte_range[0], byte_range[1] + 1)
    if not 0 <= start < end <= size and not (start == end == size == 0):
        raise S3Error("InvalidArgument", f"Range specified is not valid for source object of size: {size}", 400)
    etag = head.headers.get("ETag", "")
    layout = Layout(opened.envelope.segment_size)
    decryptor: _Decryptor
    if end == start:
        fetch: tuple[int, int] | None = None
        decryptor = _Nothing()
    elif opened.manifest is not None:
        mdec = MultipartDecryptor(opened.data_key, opened.envelope.salt, layout, opened.manifest, start, end)
        if mdec.header_range:
            h = await _ranged(gw, bucket, key, etag, *mdec.header_range, version=version)
            try:
                raw = await h.read()
            finally:
                h.release()
            mdec.set_first_header(raw[:PART_HEADER_SIZE])
        fetch, decryptor = mdec.fetch_range, mdec
    else:
        span = layout.span(start, end, size)
        fetch = (span.ciphertext_start, span.ciphertext_end)
        decryptor = StreamDecryptor(stream_key(opened.data_key, opened.envelope.salt, 0), layout, span, size)

    async def plaintext() -> AsyncIterator[bytes]:
        if fetch is None:
            return
        source = await _ranged(gw, bucket, key, etag, *fetch, version=version)
        try:
            first, _ = _total_length(source)
            skip, remaining = fetch[0] - first, fetch[1] - fetch[0]
            async for chunk in source.raw.content.iter_any():
                view = memoryview(chunk)[skip:]
                skip = max(0, skip - len(chunk))
                view = view[:remaining]
                remaining -= len(view)
                for piece in decryptor.feed(view):
                    yield piece
                if remaining == 0:
                    break
            decryptor.finish()
        finally:
            source.close()

    return end - start, plaintext(), opened, head


class _Nothing:
    def feed(self, data: memoryview) -> list[bytes]:
        return []

    def finish(self) -> None:
        return None
