"""Requests on AWS S3 Encryption Client objects and s3ec-v3 uploads (`proxy.store.s3ec`,
`proxy.store.s3ec_uploads`).

An S3EC body is one AES-GCM stream whose tag comes last, so nothing can be authenticated before
the end. Objects up to the verify-first limit (64 MiB by default, as the Java client, or
``server.verify_first_memory_bytes`` if that is less) are read and checked whole before the
first byte is released, holding their plaintext in the process's budget (proxy/server/budget.py);
larger ones are refused unless the bucket opts in to delayed authentication, where a failed tag
aborts the connection. Ranges follow the same rule (S3EC itself decrypts ranges with
unauthenticated CTR; sealgate does not).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from datetime import UTC, datetime

from aiohttp import web

from proxy.crypto import s3ec as crypto_s3ec
from proxy.crypto.format import FormatError, IntegrityError
from proxy.crypto.s3ec_streams import S3ecCbcDecryptor, S3ecDecryptor
from proxy.crypto.upload_id import UploadId
from proxy.s3.errors import S3Error
from proxy.s3.ranges import parse_range
from proxy.s3.sigv4 import VerifiedRequest
from proxy.s3.xml import XML_HEADERS, completed_parts, document
from proxy.server.body import client_body
from proxy.server.budget import VERIFY_FIRST_BUDGET, BudgetExhausted
from proxy.server.downloads import DownloadPace, paced
from proxy.server.parts import parse_part_number, read_copy_source
from proxy.server.peers import PEERS, Peers
from proxy.server.state import CALLER
from proxy.server.writes import write_conditions
from proxy.store import s3ec
from proxy.store.backend import BackendResponse, version_query
from proxy.store.gateway import Gateway
from proxy.store.objects import MAX_PUT_SIZE
from proxy.store.s3ec_uploads import (
    Upload,
    complete_upload,
    completed_upload,
    create_upload,
    encrypt_part,
    locate_upload,
    lost_upload,
)
from proxy.store.uploads import MAX_XML

log = logging.getLogger(__name__)


def _decryptor(
    materials: crypto_s3ec.S3ecMaterials, size: int, total: int, *, delayed_ok: bool, limit: int
) -> tuple[S3ecDecryptor | S3ecCbcDecryptor, int]:
    """The decryptor, and the plaintext bytes it holds before releasing any: verify-first up to
    `limit`; beyond it delayed authentication if the bucket opted in, else InvalidObjectState.
    Legacy CBC has nothing to verify: streamed."""
    try:
        if materials.version == crypto_s3ec.FORMAT_V1:
            return S3ecCbcDecryptor(materials, size), 0
        return S3ecDecryptor(materials, total, mode="verify_first", limit=limit), size
    except crypto_s3ec.S3ecTooLarge as exc:
        if not delayed_ok:
            raise S3Error(
                "InvalidObjectState",
                f"{exc}; it cannot be authenticated before release (buckets.s3ec_delayed_authentication)",
                403,
            ) from exc
        return S3ecDecryptor(materials, total, mode="delayed"), 0


class _Stalled(Exception):
    """The client took nothing of the response for the stall timeout."""


async def stream_s3ec(
    gw: Gateway,
    request: web.Request,
    bucket: str,
    key: str,
    resp: BackendResponse,
    total: int,
    range_header: str | None,
    headers: dict[str, str],
    meta: Mapping[str, str],
    version: str | None = None,
) -> web.StreamResponse:
    """GET of an S3EC object (`meta`: its envelope metadata, from `s3ec_metadata`):
    verify-first up to the limit, delayed authentication if opted in. `version`: the object
    version the client named, which every further read of the body must name too.

    A verify-first read holds the whole plaintext until the tag has checked: it reserves that
    from the process's budget before reading the body (503 SlowDown if it does not fit within
    a moment), returns it when the response ends, and a client that takes nothing for
    ``body_stall_timeout_seconds`` is cut off."""
    materials = await s3ec.open_s3ec(gw, request[CALLER], bucket, key, meta)
    size = await s3ec.plaintext_size(gw, bucket, key, materials, total, resp.headers.get("ETag", ""), version)
    rng = parse_range(range_header, size)
    start, end = rng if rng else (0, size)
    if resp.status != 200 or resp.headers.get("Content-Range"):
        # The first request asked for a sealgate-shaped range: S3EC needs the whole body.
        resp.close()
        resp = await gw.backend.request(
            "GET",
            bucket,
            key,
            query=version_query(version),
            headers={"If-Match": resp.headers.get("ETag", "")},
        )
        if resp.status >= 300:
            raise await resp.error()
    budget = request.app[VERIFY_FIRST_BUDGET]
    try:
        decryptor, held = _decryptor(
            materials,
            size,
            total,
            delayed_ok=s3ec.delayed_ok(gw, bucket, key),
            limit=s3ec.verify_limit(budget.capacity),
        )
        await budget.acquire(held)
    except BudgetExhausted as exc:
        resp.close()
        log.warning("verify-first budget full: %s bytes of /%s/%s refused (%s)", held, bucket, key, exc)
        raise S3Error("SlowDown", "Please reduce your request rate.", 503) from exc
    except BaseException:  # refused, or cancelled while waiting: the backend body is not read
        resp.close()
        raise
    if rng:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers["Content-Length"] = str(end - start)
    out = web.StreamResponse(status=206 if rng else 200, headers=headers)
    stall = float(gw.config.server.body_stall_timeout_seconds) if held else None
    try:
        with paced(gw, request, f"/{bucket}/{key}") as pace:
            await _send(request, out, resp, decryptor, (start, end), stall, pace)
    finally:
        resp.close()
        budget.release(held)
    return out


async def _send(
    request: web.Request,
    out: web.StreamResponse,
    resp: BackendResponse,
    decryptor: S3ecDecryptor | S3ecCbcDecryptor,
    span: tuple[int, int],
    stall: float | None,
    pace: DownloadPace,
) -> None:
    """Decrypt the backend's body into `out`, releasing only bytes `span` of the plaintext; a
    write that has not gone out within `stall` seconds (None: no limit) cuts the connection, and
    so does `pace`, for a client that takes the body too slowly."""
    start, end = span
    name = pace.name
    position = 0
    held = b""

    async def emit(pieces: list[bytes], *, final: bool = False) -> None:
        # In delayed mode the last plaintext piece waits for the tag: a body must never end
        # cleanly before it is authenticated, so a failure can still cut the connection short.
        nonlocal held
        queue = [held, *pieces] if held else list(pieces)
        held = b"" if final or not queue else queue.pop()
        await _write(queue)

    async def _write(pieces: list[bytes]) -> None:
        nonlocal position
        for piece in pieces:
            lo, hi = max(start - position, 0), min(end - position, len(piece))
            if hi > lo:
                if not out.prepared:
                    await _within(stall, out.prepare(request))
                await _within(stall, pace.write(out, piece[lo:hi]))
            position += len(piece)

    try:
        async for chunk in resp.raw.content.iter_any():
            await emit(decryptor.feed(chunk))
        await emit(decryptor.finish(), final=True)
        if not out.prepared:
            await _within(stall, out.prepare(request))
        await _within(stall, out.write_eof())
    except (IntegrityError, FormatError) as exc:
        if not out.prepared:
            raise S3Error("ObjectIntegrityError", f"S3EC object failed authentication: {exc}", 500) from exc
        log.error("S3EC authentication failed mid-body on %s; aborting", name)
        _abort(request)
    except _Stalled:
        log.warning("client took nothing of %s for %ss; cutting the connection", name, stall)
        _abort(request)
    except ConnectionError:
        if not pace.cut:  # the client left (proxy/server/app.py says so); the pace cut it: said
            raise


async def _within(seconds: float | None, step: Awaitable[object]) -> None:
    """`step`, or `_Stalled` if it has not finished within `seconds` (None: no limit)."""
    try:
        async with asyncio.timeout(seconds):
            await step
    except TimeoutError:
        raise _Stalled from None


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


async def create_multipart(gw: Gateway, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    """CreateMultipartUpload into an s3ec-v3 bucket: S3EC metadata on the upload, state here."""
    upload_id = await create_upload(gw, request[CALLER], bucket, key, request.headers)
    xml = document("InitiateMultipartUploadResult", [("Bucket", bucket), ("Key", key), ("UploadId", upload_id)])
    return web.Response(status=200, body=xml, headers=XML_HEADERS)


async def upload_part(
    gw: Gateway, request: web.Request, bucket: str, key: str, verified: VerifiedRequest
) -> web.StreamResponse:
    """UploadPart (or UploadPartCopy) of an s3ec-v3 upload: encrypted in order, in the process
    that holds the upload (this one, or another worker it is passed to)."""
    found = locate_upload(gw, request[CALLER], bucket, key, request.query["uploadId"])
    number = parse_part_number(request)
    if not isinstance(found, Upload):
        return await _pass_part(gw, request, (bucket, key, number), _owner(request, found), verified)
    up = found
    if "x-amz-copy-source" in request.headers:
        return await _copy_part(gw, request, lambda length, plaintext: encrypt_part(gw, up, number, length, plaintext))
    body = client_body(gw, request, verified)
    if body.length > MAX_PUT_SIZE:
        raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size", 400)
    backend_etag = await encrypt_part(gw, up, number, body.length, body)
    md5 = body.md5
    if (body.md5_wanted or body.content_md5 is not None) and md5 is not None:
        # Clients that check part ETags compare them with the plaintext MD5.
        up.parts[-1].client_etag = md5.hex()
    return _part_answer(up.parts[-1].client_etag, backend_etag, body.checksums)


def _part_answer(client_etag: str, backend_etag: str, checksums: Mapping[str, str]) -> web.Response:
    out = web.Response(status=200, headers={"ETag": f'"{client_etag}"'})
    if not backend_etag:
        out.headers["ETag"] = '""'
    for name, value in checksums.items():
        out.headers[name] = value
    return out


def _owner(request: web.Request, uid: UploadId) -> tuple[Peers, int]:
    """The channel to the other worker of this sealgate that holds the upload `uid` names;
    NoSuchUpload if none does (it is another sealgate's, or from before a restart)."""
    peers = request.app.get(PEERS)
    slot = peers.owner_of(uid) if peers is not None else None
    if peers is None or slot is None:
        raise lost_upload()
    return peers, slot


async def _pass_part(
    gw: Gateway,
    request: web.Request,
    part: tuple[str, str, int],
    owner: tuple[Peers, int],
    verified: VerifiedRequest,
) -> web.StreamResponse:
    """Part `part` (bucket, key, number) of an upload another worker holds, checked here as a
    local one would be, then streamed to that worker (proxy/server/peers.py); its answer to the
    client."""
    peers, slot = owner
    bucket, key, number = part
    fields = {
        "bucket": bucket,
        "key": key,
        "upload_id": request.query["uploadId"],
        "identity": request[CALLER].identity,
        "number": number,
    }
    if "x-amz-copy-source" in request.headers:

        async def passed(length: int, plaintext: AsyncIterable[bytes | memoryview]) -> str:
            answer = await peers.send_part(slot, {**fields, "length": length}, length, plaintext)
            return str(answer["backend_etag"])

        return await _copy_part(gw, request, passed)
    body = client_body(gw, request, verified)
    if body.length > MAX_PUT_SIZE:
        raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size", 400)
    with_md5 = body.md5_wanted or body.content_md5 is not None
    answer = await peers.send_part(slot, {**fields, "length": body.length, "md5": with_md5}, body.length, body)
    return _part_answer(str(answer["etag"]), str(answer["backend_etag"]), body.checksums)


async def _copy_part(
    gw: Gateway, request: web.Request, store: Callable[[int, AsyncIterable[bytes | memoryview]], Awaitable[str]]
) -> web.StreamResponse:
    """UploadPartCopy: the copy source's plaintext, authenticated as it is read, handed to
    `store` (this process's encryption, or the worker holding the upload), which gives the
    part's ETag."""
    length, plaintext = await read_copy_source(gw, request)
    try:
        etag = await store(length, plaintext)
    except IntegrityError as exc:
        raise S3Error("ObjectIntegrityError", f"copy source failed authentication: {exc}", 500) from exc
    modified = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    xml = document("CopyPartResult", [("LastModified", modified), ("ETag", f'"{etag}"')])
    return web.Response(status=200, body=xml, headers=XML_HEADERS)


async def complete_multipart(gw: Gateway, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    """CompleteMultipartUpload of an s3ec-v3 upload: the parts stored, then the tag if no part
    carried it, completed on the backend; the object then reads as one S3EC V3 body. Done by
    the process that holds the upload: this one, or another worker it is passed to."""
    text = request.query["uploadId"]
    caller = request[CALLER]
    found = locate_upload(gw, caller, bucket, key, text)
    try:
        if isinstance(found, Upload):
            wanted, conditions = await _completion(gw, request, bucket, key)
            etag, versions = await complete_upload(gw, found, bucket, key, wanted, conditions)
        else:
            peers, slot = _owner(request, found)
            wanted, conditions = await _completion(gw, request, bucket, key)
            fields = {"bucket": bucket, "key": key, "upload_id": text, "identity": caller.identity}
            answer = await peers.send_complete(slot, {**fields, "parts": wanted, "conditions": conditions})
            etag, versions = str(answer["etag"]), dict(answer["versions"])
    except S3Error as lost:
        if lost.code != "NoSuchUpload" or isinstance(found, Upload):
            raise
        # A retry of a Complete that succeeded (here, or on a process that died answering).
        etag, versions = await completed_upload(gw, caller, bucket, key, text, lost)
    out = document(
        "CompleteMultipartUploadResult",
        [("Location", f"/{bucket}/{key}"), ("Bucket", bucket), ("Key", key), ("ETag", etag)],
    )
    return web.Response(status=200, body=out, headers={**XML_HEADERS, **versions})


async def _completion(
    gw: Gateway, request: web.Request, bucket: str, key: str
) -> tuple[list[tuple[int, str]], dict[str, str]]:
    """The parts a CompleteMultipartUpload names, and the backend headers of its conditions."""
    doc = await request.content.read(MAX_XML + 1)
    if len(doc) > MAX_XML:
        raise S3Error("MaxMessageLengthExceeded", "Your request was too big.", 400)
    return completed_parts(doc), await write_conditions(gw, request, bucket, key)
