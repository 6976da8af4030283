"""Serving objects written by the AWS S3 Encryption Client (V2 and V3; V1 is refused).

An S3EC body is one AES-GCM stream whose tag comes last, so nothing can be authenticated before
the end. Objects up to the verify-first limit (64 MiB by default, as the Java client) are read
and checked whole before the first byte is released; larger ones are refused unless the bucket
opts in to delayed authentication, where a failed tag aborts the connection. Ranges follow the
same rule (S3EC itself decrypts ranges with unauthenticated CTR; sealgate does not).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

from aiohttp import web

from proxy.backend import BackendResponse
from proxy.crypto import s3ec
from proxy.crypto.format import FormatError, IntegrityError
from proxy.kms.base import KeyringError
from proxy.s3.errors import S3Error
from proxy.s3.ranges import parse_range
from proxy.server.body import PlaintextBody
from proxy.server.state import Gateway, require_key_use

log = logging.getLogger(__name__)

S3EC_FIELDS = frozenset(name for attr, name in vars(s3ec).items() if attr.startswith("META_") and isinstance(name, str))


def is_s3ec_object(meta: Mapping[str, str]) -> bool:
    """Whether backend metadata is an S3 Encryption Client envelope."""
    return s3ec.detect(meta) is not None


def user_metadata(meta: Mapping[str, str]) -> dict[str, str]:
    """The client's own metadata: everything but the S3EC envelope fields."""
    return {k: v for k, v in meta.items() if k not in S3EC_FIELDS}


def _delayed_ok(gw: Gateway, bucket: str, key: str) -> bool:
    rule = gw.config.rule_for_bucket(bucket, key)
    return rule is not None and rule.s3ec_delayed_authentication


async def open_s3ec(
    gw: Gateway, request: web.Request, bucket: str, key: str, meta: Mapping[str, str]
) -> s3ec.S3ecMaterials:
    """Unwrap an S3EC object's data key with the bucket's KMS key (S3EC records no key id)."""
    if s3ec.detect(meta) == "v1":
        raise S3Error(
            "InvalidObjectState",
            "legacy S3EC V1 objects (AES/CBC, unauthenticated encryption) are not served; convert them with the "
            "S3 Encryption Client first",
            403,
        )
    key_id = gw.config.key_for_bucket(bucket, key)
    require_key_use(gw, request, "decrypt", key_id)
    try:
        return await s3ec.unwrap_s3ec(meta, keyring=gw.materials.keyring, kms_key_id=key_id)
    except s3ec.S3ecUnsupported as exc:
        raise S3Error("InvalidObjectState", f"cannot read this S3EC object here: {exc}", 403) from exc
    except KeyringError as exc:
        raise S3Error(exc.code, exc.message, exc.status) from exc
    except FormatError as exc:
        raise S3Error("ObjectIntegrityError", f"S3EC object failed authentication: {exc}", 500) from exc


async def stream_s3ec(
    gw: Gateway,
    request: web.Request,
    bucket: str,
    key: str,
    resp: BackendResponse,
    total: int,
    range_header: str | None,
    headers: dict[str, str],
) -> web.StreamResponse:
    """GET of an S3EC object: verify-first up to the limit, delayed authentication if opted in."""
    meta = resp.user_metadata()
    materials = await open_s3ec(gw, request, bucket, key, meta)
    size = s3ec.plaintext_length(total)
    rng = parse_range(range_header, size)
    start, end = rng if rng else (0, size)
    if resp.status != 200 or resp.headers.get("Content-Range"):
        # The first request asked for a sealgate-shaped range: S3EC needs the whole body.
        resp.close()
        resp = await gw.backend.request("GET", bucket, key, headers={"If-Match": resp.headers.get("ETag", "")})
        if resp.status >= 300:
            raise await resp.error()
    delayed_ok = _delayed_ok(gw, bucket, key)
    try:
        decryptor = s3ec.S3ecDecryptor(materials, total, mode="verify_first")
    except s3ec.S3ecTooLarge as exc:
        if not delayed_ok:
            resp.close()
            raise S3Error(
                "InvalidObjectState",
                f"{exc}; it cannot be authenticated before release (buckets.s3ec_delayed_authentication)",
                403,
            ) from exc
        decryptor = s3ec.S3ecDecryptor(materials, total, mode="delayed")
    status = 206 if rng else 200
    if rng:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers["Content-Length"] = str(end - start)
    out = web.StreamResponse(status=status, headers=headers)
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
                    await out.prepare(request)
                await out.write(piece[lo:hi])
            position += len(piece)

    try:
        async for chunk in resp.raw.content.iter_any():
            await emit(decryptor.feed(chunk))
        await emit(decryptor.finish(), final=True)
    except (IntegrityError, FormatError) as exc:
        if not out.prepared:
            raise S3Error("ObjectIntegrityError", f"S3EC object failed authentication: {exc}", 500) from exc
        log.error("S3EC authentication failed mid-body on /%s/%s; aborting", bucket, key)
        if request.transport is not None:
            request.transport.abort()
        return out
    finally:
        resp.close()
    if not out.prepared:
        await out.prepare(request)
    await out.write_eof()
    return out


async def put_s3ec_v3(gw: Gateway, request: web.Request, bucket: str, key: str, body: PlaintextBody) -> str:
    """PutObject in S3EC V3 with kms+context: the official client reads it from the backend.

    The tag (the body's last 16 bytes) is held back until every check on the client's body has
    passed, so a failed check stores nothing. Returns the backend's ETag."""
    if gw.config.kms.provider != "aws-kms":
        raise S3Error("InvalidRequest", "S3EC V3 objects are written with kms+context: needs provider aws-kms", 400)
    key_id = gw.config.key_for_bucket(bucket, key)
    require_key_use(gw, request, "encrypt", key_id)
    context = s3ec.kms_context()
    try:
        data_key = await gw.materials.keyring.generate_data_key(key_id, context)
    except KeyringError as exc:
        raise S3Error(exc.code, exc.message, exc.status) from exc
    encryptor = s3ec.S3ecV3Encryptor(data_key.plaintext)
    meta = encryptor.metadata(data_key.wrapped, s3ec.WRAP_KMS_CONTEXT, encryption_context=context)
    headers = {f"x-amz-meta-{k}": v for k, v in meta.items()}
    for name, value in request.headers.items():
        if name.lower().startswith("x-amz-meta-"):
            headers[name.lower()] = value  # S3EC keeps user metadata in the clear
    for name in ("Content-Type", "Cache-Control", "Content-Disposition", "Content-Language", "Expires"):
        if name in request.headers:
            headers[name] = request.headers[name]

    async def ciphertext() -> AsyncIterator[bytes]:
        async for piece in body:
            yield encryptor.update(bytes(piece))
        yield encryptor.finish()  # the tag: only once every check on the body has passed

    from proxy.server.objects import put_stream

    resp = await put_stream(gw, bucket, key, ciphertext(), s3ec.ciphertext_length(body.length), headers=headers)
    return resp.headers.get("ETag", "")
