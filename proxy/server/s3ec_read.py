"""Serving and writing AWS S3 Encryption Client objects (V2, V3; legacy V1/CBC only if opted in).

An S3EC body is one AES-GCM stream whose tag comes last, so nothing can be authenticated before
the end. Objects up to the verify-first limit (64 MiB by default, as the Java client) are read
and checked whole before the first byte is released; larger ones are refused unless the bucket
opts in to delayed authentication, where a failed tag aborts the connection. Ranges follow the
same rule (S3EC itself decrypts ranges with unauthenticated CTR; sealgate does not).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiohttp import web

from proxy.audit import AuditError, AuditingKeyring
from proxy.backend import BackendResponse, version_ids, version_query
from proxy.crypto import s3ec
from proxy.crypto.format import SALT_SIZE, FormatError, IntegrityError
from proxy.crypto.upload_id import S3EC_PREFIX, UploadId, open_for_replicas, seal_for_replicas
from proxy.kms.base import InvalidWrappedKey, KeyringError, KeyUnavailable
from proxy.kms.local import LocalKeyring
from proxy.s3.errors import S3Error, keyring_error
from proxy.s3.headers import etag_value
from proxy.s3.ranges import parse_range
from proxy.s3.sigv4 import VerifiedRequest
from proxy.s3.xml import XML_HEADERS, complete_upload, document, find_text, parse, parse_answer
from proxy.server.body import PlaintextBody
from proxy.server.state import Gateway, require_key_use

if TYPE_CHECKING:
    from proxy.config import BucketRule

log = logging.getLogger(__name__)

S3EC_FIELDS = frozenset(name for attr, name in vars(s3ec).items() if attr.startswith("META_") and isinstance(name, str))


def is_s3ec_object(meta: Mapping[str, str]) -> bool:
    """Whether backend metadata is an S3 Encryption Client envelope."""
    return s3ec.detect(meta) is not None


def user_metadata(meta: Mapping[str, str]) -> dict[str, str]:
    """The client's own metadata: everything but the S3EC envelope fields."""
    return {k: v for k, v in meta.items() if k not in S3EC_FIELDS}


def _rule(gw: Gateway, bucket: str, key: str) -> BucketRule | None:
    return gw.config.rule_for_bucket(bucket, key)


def _delayed_ok(gw: Gateway, bucket: str, key: str) -> bool:
    rule = gw.config.rule_for_bucket(bucket, key)
    return rule is not None and rule.s3ec_delayed_authentication


#: Instruction files are small JSON documents; anything bigger is not one.
MAX_INSTRUCTION_FILE = 64 * 1024


def _probe_instruction_files(gw: Gateway, bucket: str, key: str) -> bool:
    rule = gw.config.rule_for_bucket(bucket, key)
    return rule is not None and (rule.s3ec_instruction_files or rule.format == "s3ec-v3")


async def s3ec_metadata(gw: Gateway, bucket: str, key: str, meta: Mapping[str, str]) -> dict[str, str] | None:
    """The S3EC envelope of an object (backend user metadata, merged with ``KEY.instruction``
    where the envelope lives there), or None if it is not an S3EC object.

    V3 objects name their need for an instruction file in their own metadata. V1/V2 objects
    with an instruction file leave no trace, so ``KEY.instruction`` is probed only for objects
    without an envelope in buckets that ask for it (``s3ec_instruction_files`` or
    ``format = "s3ec-v3"``): plain reads elsewhere pay no extra request."""
    version = s3ec.detect(meta)
    if version is not None and not s3ec.needs_instruction_file(meta):
        return dict(meta)
    if version is None and not _probe_instruction_files(gw, bucket, key):
        return None
    resp = await gw.backend.request("GET", bucket, key + s3ec.INSTRUCTION_SUFFIX)
    if resp.status == 404:
        resp.release()
        if version is None:
            return None
        raise S3Error("ObjectIntegrityError", "S3EC object's instruction file is missing", 500)
    if resp.status >= 300:
        raise await resp.error()
    try:
        body = await resp.raw.content.read(MAX_INSTRUCTION_FILE + 1)
    finally:
        resp.release()
    try:
        if len(body) > MAX_INSTRUCTION_FILE:
            raise s3ec.S3ecFormatError("S3EC instruction file is too large")
        merged = s3ec.merge_instruction_file(meta, s3ec.parse_instruction_file(body))
        if s3ec.detect(merged) is None:
            raise s3ec.S3ecFormatError("S3EC instruction file holds no envelope")
    except s3ec.S3ecFormatError as exc:
        if version is None:
            log.info("/%s/%s%s is not an S3EC instruction file: %s", bucket, key, s3ec.INSTRUCTION_SUFFIX, exc)
            return None
        raise S3Error("ObjectIntegrityError", f"S3EC object failed authentication: {exc}", 500) from exc
    return merged


async def open_s3ec(
    gw: Gateway, request: web.Request | None, bucket: str, key: str, meta: Mapping[str, str]
) -> s3ec.S3ecMaterials:
    """Unwrap an S3EC object's data key with the bucket's KMS key (S3EC records no key id).

    `meta` is the merged envelope (`s3ec_metadata`). Without a request (operator tools such as
    `sealgate convert`) no client key policy applies."""
    legacy = s3ec.is_legacy(meta)
    if legacy:
        rule = gw.config.rule_for_bucket(bucket, key)
        if rule is None or not rule.allow_s3ec_v1:
            raise S3Error(
                "InvalidObjectState",
                "legacy S3EC objects (V1, AES/CBC: unauthenticated encryption) are served only from buckets that "
                "set allow_s3ec_v1 = true",
                403,
            )
        log.warning(
            "reading legacy S3EC AES/CBC object /%s/%s: unauthenticated encryption (buckets.allow_s3ec_v1)", bucket, key
        )
    key_id = gw.config.key_for_bucket(bucket, key)
    if request is not None:
        require_key_use(gw, request, "decrypt", key_id)
    try:
        if legacy:
            return await s3ec.unwrap_legacy(meta, gw.materials.keyring, key_id)
        wrap_alg = s3ec.parse(meta).wrap_alg
        if wrap_alg in (s3ec.WRAP_AES_GCM, s3ec.WRAP_RSA_OAEP_SHA1):
            return await _unwrap_with_local_key(gw, bucket, key, meta, key_id, wrap_alg)
        return await s3ec.unwrap_s3ec(meta, keyring=gw.materials.keyring, kms_key_id=key_id)
    except s3ec.S3ecUnsupported as exc:
        raise S3Error("InvalidObjectState", f"cannot read this S3EC object here: {exc}", 403) from exc
    except KeyringError as exc:
        raise keyring_error(exc) from exc
    except FormatError as exc:
        raise S3Error("ObjectIntegrityError", f"S3EC object failed authentication: {exc}", 500) from exc


def _local_keyring(gw: Gateway) -> LocalKeyring | None:
    keyring: object = gw.materials.keyring
    if isinstance(keyring, AuditingKeyring):
        keyring = keyring.inner
    return keyring if isinstance(keyring, LocalKeyring) else None


def _audit_local_use(gw: Gateway, operation: str, ref: str, wrap_alg: str, bucket: str, key: str) -> None:
    """The audit line of a local key used directly for S3EC wrapping (no keyring call); as for
    keyring calls, a use that cannot be recorded does not happen (503)."""
    if gw.audit is not None:
        key_name, _, version = ref.rpartition(":")
        try:
            gw.audit.record(
                operation, "allowed", reason=f"s3ec {wrap_alg}", key_id=key_name, key_version=version,
                bucket=bucket, object_key=key,
            )  # fmt: skip
        except (AuditError, OSError) as exc:
            log.error("refusing a key use that cannot be audited: %s", exc)
            raise S3Error("ServiceUnavailable", "the audit log cannot be written", 503) from exc


async def _unwrap_with_local_key(
    gw: Gateway, bucket: str, key: str, meta: Mapping[str, str], key_id: str, wrap_alg: str
) -> s3ec.S3ecMaterials:
    """An AES/GCM- or RSA-OAEP-SHA1-wrapped S3EC object, opened with the bucket's local key.

    S3EC records no key id or version for these wrappings: each version of the bucket's key is
    tried, newest first (a wrong one fails its AES-GCM tag or OAEP check). The use is audited
    like a keyring call."""
    local = _local_keyring(gw)
    if local is None:
        raise s3ec.S3ecUnsupported(f"S3EC object is wrapped with {wrap_alg}: needs the local keyring's key")
    for ref, material in local.s3ec_unwrapping_keys(key_id):
        if isinstance(material, bytes) != (wrap_alg == s3ec.WRAP_AES_GCM):
            continue
        try:
            if isinstance(material, bytes):
                opened = await s3ec.unwrap_s3ec(meta, aes_key=material)
            else:
                opened = await s3ec.unwrap_s3ec(meta, rsa_key=material)
        except InvalidWrappedKey:
            continue
        _audit_local_use(gw, "decrypt", ref, wrap_alg, bucket, key)
        return opened
    raise InvalidWrappedKey(f"S3EC {wrap_alg} wrapped key does not unwrap under any version of key {key_id!r}")


async def s3ec_plaintext(
    gw: Gateway, bucket: str, key: str, meta: Mapping[str, str], etag: str, total: int
) -> tuple[int, AsyncIterator[bytes]]:
    """(plaintext length, plaintext stream) of a whole S3EC object, for operator tools that
    re-encrypt it: released as decrypted, and the stream raises `IntegrityError` at the end if
    the tag fails, so a writer that holds back its own last bytes stores nothing."""
    materials = await open_s3ec(gw, None, bucket, key, meta)
    size = await plaintext_size(gw, bucket, key, materials, total, etag)
    decryptor: s3ec.S3ecDecryptor | s3ec.S3ecCbcDecryptor
    if materials.version == s3ec.FORMAT_V1:
        decryptor = s3ec.S3ecCbcDecryptor(materials, size)
    else:
        decryptor = s3ec.S3ecDecryptor(materials, total, mode="delayed")

    async def plaintext() -> AsyncIterator[bytes]:
        resp = await gw.backend.request("GET", bucket, key, headers={"If-Match": etag} if etag else {})
        if resp.status >= 300:
            raise await resp.error()
        try:
            async for chunk in resp.raw.content.iter_any():
                for piece in decryptor.feed(chunk):
                    yield piece
            for piece in decryptor.finish():
                yield piece
        finally:
            resp.close()

    return size, plaintext()


async def plaintext_size(
    gw: Gateway,
    bucket: str,
    key: str,
    materials: s3ec.S3ecMaterials,
    total: int,
    etag: str,
    version: str | None = None,
) -> int:
    """Plaintext length of an S3EC object of `total` stored bytes. GCM: total - 16. Legacy CBC:
    its padding, found by decrypting the last block (one ranged GET of at most 32 bytes)."""
    try:
        if materials.version != s3ec.FORMAT_V1:
            return s3ec.plaintext_length(total)
        if total < s3ec.CBC_BLOCK or total % s3ec.CBC_BLOCK:
            raise s3ec.S3ecFormatError(f"S3EC CBC body of {total} bytes is not a whole number of blocks")
        n = min(total, 2 * s3ec.CBC_BLOCK)
        headers = {"Range": f"bytes={total - n}-{total - 1}"}
        if etag:
            headers["If-Match"] = etag
        resp = await gw.backend.request("GET", bucket, key, query=version_query(version), headers=headers)
        if resp.status >= 300:
            raise await resp.error()
        tail = b""
        try:
            async for chunk in resp.raw.content.iter_any():  # a backend may ignore the Range
                tail = (tail + chunk)[-n:]
        finally:
            resp.close()
        return s3ec.cbc_plaintext_length(materials, total, tail)
    except FormatError as exc:
        raise S3Error("ObjectIntegrityError", f"S3EC object is not readable: {exc}", 500) from exc


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
    version the client named, which every further read of the body must name too."""
    materials = await open_s3ec(gw, request, bucket, key, meta)
    size = await plaintext_size(gw, bucket, key, materials, total, resp.headers.get("ETag", ""), version)
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
    delayed_ok = _delayed_ok(gw, bucket, key)
    decryptor: s3ec.S3ecDecryptor | s3ec.S3ecCbcDecryptor
    try:
        if materials.version == s3ec.FORMAT_V1:
            decryptor = s3ec.S3ecCbcDecryptor(materials, size)  # nothing to verify: streamed
        else:
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


async def _new_data_key(
    gw: Gateway, request: web.Request | None, bucket: str, key: str
) -> tuple[bytes, bytes, str, dict[str, str] | None, str]:
    """(data key, wrapped data key, wrapping, KMS encryption context, key reference) for a new
    S3EC V3 object: kms+context with aws-kms (the reference is the KMS key id), AES/GCM under
    the bucket's AES-256 key with the local keyring (``local:<id>:<version>``)."""
    key_id = gw.config.key_for_bucket(bucket, key)
    if request is not None:
        require_key_use(gw, request, "encrypt", key_id)
    if gw.config.kms.provider != "aws-kms":
        local = _local_keyring(gw)
        if local is None:
            raise S3Error("InvalidRequest", "S3EC V3 objects need aws-kms or the local keyring", 400)
        try:
            ref, kek = local.s3ec_wrapping_key(key_id)
        except KeyringError as exc:
            raise keyring_error(exc) from exc
        data_key = os.urandom(s3ec.DATA_KEY_SIZE)
        _audit_local_use(gw, "generate", ref, s3ec.WRAP_AES_GCM, bucket, key)
        return data_key, s3ec.wrap_aes_gcm(kek, data_key), s3ec.WRAP_AES_GCM, None, ref
    context = s3ec.kms_context()
    try:
        generated = await gw.materials.keyring.generate_data_key(key_id, context)
    except KeyringError as exc:
        raise keyring_error(exc) from exc
    return generated.plaintext, generated.wrapped, s3ec.WRAP_KMS_CONTEXT, context, key_id


def _object_headers(request: web.Request, s3ec_meta: Mapping[str, str]) -> dict[str, str]:
    headers = {f"x-amz-meta-{k}": v for k, v in s3ec_meta.items()}
    for name, value in request.headers.items():
        lname = name.lower()
        if lname.startswith("x-amz-meta-") and lname[len("x-amz-meta-") :] not in S3EC_FIELDS:
            headers[lname] = value  # S3EC keeps user metadata in the clear
    from proxy.server.objects import stored_headers

    headers.update(stored_headers(request))  # content headers, storage class, tags, Object Lock
    return headers


async def write_s3ec_v3(
    gw: Gateway,
    request: web.Request | None,
    bucket: str,
    key: str,
    plaintext: AsyncIterable[bytes | memoryview],
    length: int,
    headers: Mapping[str, str],
) -> str:
    """PUT `length` bytes of plaintext as an S3EC V3 object with kms+context; `headers` are the
    object's own (user metadata, Content-Type, ...). The tag (the body's last 16 bytes) is sent
    only after `plaintext` has ended without error (every check on it passed), so a failure
    stores nothing. Returns the backend's ETag."""
    plain_key, wrapped, wrap_alg, context, _ = await _new_data_key(gw, request, bucket, key)
    encryptor = s3ec.S3ecV3Encryptor(plain_key)
    meta = encryptor.metadata(wrapped, wrap_alg, encryption_context=context)
    out = {k: v for k, v in headers.items() if k.lower().removeprefix("x-amz-meta-") not in S3EC_FIELDS}
    out.update({f"x-amz-meta-{k}": v for k, v in meta.items()})

    async def ciphertext() -> AsyncIterator[bytes]:
        async for piece in plaintext:
            yield encryptor.update(bytes(piece))
        yield encryptor.finish()

    from proxy.server.objects import put_stream

    resp = await put_stream(gw, bucket, key, ciphertext(), s3ec.ciphertext_length(length), headers=out)
    return resp.headers.get("ETag", "")


async def put_s3ec_v3(
    gw: Gateway, request: web.Request, bucket: str, key: str, body: PlaintextBody, conditions: dict[str, str]
) -> str:
    """PutObject in S3EC V3 with kms+context: the official client reads it from the backend.
    `conditions` are the backend headers of the client's If-Match / If-None-Match."""
    headers = {**_object_headers(request, {}), **conditions}
    return await write_s3ec_v3(gw, request, bucket, key, body, body.length, headers)


# -- multipart uploads in s3ec-v3 buckets -----------------------------------------------------
#
# An S3EC body is one GCM stream, so part N is encrypted from the stream state after part N-1
# (`s3ec.GcmStreamState`: offset, GHASH accumulator, < 16 pending bytes) and the tag ends the
# body. That state lives in the memory of the sealgate process that created the upload: parts
# must come to that process, in order (1, 2, 3, ...). A part that arrives early waits a little
# for its predecessor to start; one that is still out of order is refused (InvalidPartOrder),
# never stored where it would make the object unreadable. The state before each part is kept,
# so the latest part can be retried (after a failed check or a backend error).
#
# The upload id is authenticated as a sealgate one is (proxy/crypto/upload_id.py, prefix
# ``s3ec3-``): it carries the backend id, the key reference and the S3EC-wrapped data key, with
# a MAC under a key derived from the data key and bound to bucket and key. Every request that
# continues the upload needs the caller's ``encrypt`` right on that key and the id's MAC to
# check: with the data key this process holds, or, for AbortMultipartUpload and ListParts on
# another process, with the data key unwrapped from the id.
#
# Where the tag goes: S3 requires every part but the last to be at least 5 MiB, so a smaller
# part must be the last one and gets the tag appended. If the last part is 5 MiB or more, the
# tag is uploaded at CompleteMultipartUpload as one more part (16 bytes, allowed as the last).

UPLOAD_PREFIX = S3EC_PREFIX
#: How long a part waits for the part before it to start before it is refused as out of order.
PART_ORDER_WAIT = 30.0
MAX_LIVE_UPLOADS = 4096
UPLOAD_TTL = 7 * 24 * 3600.0


@dataclass
class _Part:
    number: int
    length: int
    backend_etag: str
    client_etag: str
    before: s3ec.GcmStreamState


@dataclass
class _Upload:
    bucket: str
    key: str
    backend_id: str
    body: s3ec.S3ecV3Multipart
    state: s3ec.GcmStreamState
    #: The S3EC data key, which authenticates the upload id.
    data_key: bytes = field(repr=False)
    created: float = field(default_factory=time.monotonic)
    parts: list[_Part] = field(default_factory=list)
    tagged: bool = False
    tag_part: tuple[int, str] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Part numbers that have queued for the lock (a successor waits for its predecessor's).
    queued: set[int] = field(default_factory=set)

    @property
    def last(self) -> int:
        return self.parts[-1].number if self.parts else 0


_registries: dict[int, dict[str, _Upload]] = {}


def _uploads(gw: Gateway) -> dict[str, _Upload]:
    """This process's s3ec-v3 uploads for this gateway (tests run several in one process), by
    backend upload id."""
    reg = _registries.get(id(gw))
    if reg is None:
        reg = _registries[id(gw)] = {}
        weakref.finalize(gw, _registries.pop, id(gw), None)
    return reg


def is_s3ec_upload(upload_id: str) -> bool:
    """Whether a client-visible upload id is one of sealgate's s3ec-v3 uploads."""
    return upload_id.startswith(UPLOAD_PREFIX)


def forget_upload(gw: Gateway, backend_id: str) -> None:
    """Drop an upload's state (after abort), if this process holds it."""
    _uploads(gw).pop(backend_id, None)


def _lost_upload() -> S3Error:
    return S3Error(
        "NoSuchUpload",
        "this s3ec-v3 multipart upload is not known to this sealgate process (it was started by another "
        "replica, sealgate restarted, or it was completed or aborted): its parts form one GCM stream whose "
        "state stays in the process that created it, so they must go there, in order; abort it and upload again",
        404,
    )


def _decode(gw: Gateway, request: web.Request, text: str) -> UploadId:
    """The fields of an s3ec-v3 upload id, once the caller may encrypt under its key (checked
    before any keyring or backend call); NoSuchUpload if it is not one. Not yet authenticated."""
    from proxy.server.multipart import no_upload

    try:
        uid = UploadId.decode(text, S3EC_PREFIX)
    except FormatError:
        raise no_upload() from None
    require_key_use(gw, request, "encrypt", uid.key_ref)
    return uid


def _held(gw: Gateway, uid: UploadId, bucket: str, key: str) -> _Upload | None:
    """This process's state of the upload `uid` names, once the id checks out for this object
    (NoSuchUpload if it does not); None if another process (or none) holds the upload."""
    from proxy.server.multipart import no_upload

    up = _uploads(gw).get(uid.backend_id)
    if up is None:
        return None
    try:
        uid.verify(up.data_key, bucket, key)
    except FormatError:
        raise no_upload() from None
    if up.bucket != bucket or up.key != key:
        raise no_upload()
    return up


def _find_upload(gw: Gateway, request: web.Request, bucket: str, key: str, text: str) -> _Upload:
    """The state of the upload that client id `text` names, authenticated for this object."""
    up = _held(gw, _decode(gw, request, text), bucket, key)
    if up is None:
        raise _lost_upload()
    return up


async def verified_upload(gw: Gateway, request: web.Request, bucket: str, key: str, text: str) -> UploadId:
    """The fields of s3ec-v3 upload id `text`, authenticated for this object, on any process
    (for AbortMultipartUpload and ListParts): the data key is this process's if it holds the
    upload, else unwrapped from the id (or opened with the upload secret)."""
    from proxy.server.multipart import no_upload

    uid = _decode(gw, request, text)
    if _held(gw, uid, bucket, key) is not None:
        return uid
    try:
        data_key = await _upload_data_key(gw, uid, bucket, key)
        uid.verify(data_key, bucket, key)
    except FormatError:
        raise no_upload() from None
    except KeyringError as exc:
        if isinstance(exc, KeyUnavailable):
            raise keyring_error(exc) from exc
        raise no_upload() from None
    return uid


async def _upload_data_key(gw: Gateway, uid: UploadId, bucket: str, key: str) -> bytes:
    """The S3EC data key an s3ec-v3 upload id carries, wrapped as `_new_data_key` wrapped it."""
    secret = gw.config.encryption.upload_secret
    if uid.sealed_key and secret is not None:
        return open_for_replicas(secret.get_secret_value().encode(), uid.salt, uid.sealed_key, bucket, key)
    if not uid.key_ref.startswith("local:"):
        return await gw.materials.keyring.decrypt_data_key(uid.key_ref, uid.wrapped_key, s3ec.kms_context())
    local = _local_keyring(gw)
    if local is None:
        raise InvalidWrappedKey("an AES/GCM-wrapped S3EC upload needs the local keyring")
    key_id = uid.key_ref[len("local:") :].rpartition(":")[0]
    envelope = s3ec.S3ecEnvelope(s3ec.FORMAT_V3, s3ec.WRAP_AES_GCM, uid.wrapped_key, {})
    for ref, material in local.s3ec_unwrapping_keys(key_id):
        if ref == uid.key_ref and isinstance(material, bytes):
            data_key = s3ec.unwrap_aes_gcm(envelope, material)
            _audit_local_use(gw, "decrypt", ref, s3ec.WRAP_AES_GCM, bucket, key)
            return data_key
    raise InvalidWrappedKey(f"no AES-256 key {uid.key_ref!r} in the local keyring")


async def create_multipart(gw: Gateway, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    """CreateMultipartUpload into an s3ec-v3 bucket: S3EC metadata on the upload, state here."""
    from proxy.server.multipart import put_upload_record

    reg = _uploads(gw)
    now = time.monotonic()
    for stale in [u for u, up in reg.items() if now - up.created > UPLOAD_TTL]:
        del reg[stale]
    if len(reg) >= MAX_LIVE_UPLOADS:
        raise S3Error("SlowDown", "too many s3ec-v3 multipart uploads in progress on this sealgate process", 503)
    plain_key, wrapped, wrap_alg, context, key_ref = await _new_data_key(gw, request, bucket, key)
    body = s3ec.S3ecV3Multipart(plain_key)
    headers = _object_headers(request, body.metadata(wrapped, wrap_alg, encryption_context=context))
    _, doc = await gw.backend.read_ok("POST", bucket, key, query=[("uploads", "")], headers=headers, body=b"")
    backend_id = find_text(parse(doc), "UploadId")
    if not backend_id:
        raise S3Error("BadGateway", "backend returned no upload id", 502)
    salt = os.urandom(SALT_SIZE)
    secret = gw.config.encryption.upload_secret
    sealed = b""
    if secret is not None:
        sealed = seal_for_replicas(secret.get_secret_value().encode(), salt, plain_key, bucket, key)
    uid = UploadId(backend_id, key_ref, wrapped, salt, sealed_key=sealed, prefix=S3EC_PREFIX)
    upload_id = uid.encode(plain_key, bucket, key)
    await put_upload_record(gw, bucket, key, backend_id, upload_id)
    reg[backend_id] = _Upload(bucket, key, backend_id, body, body.start, plain_key)
    xml = document("InitiateMultipartUploadResult", [("Bucket", bucket), ("Key", key), ("UploadId", upload_id)])
    return web.Response(status=200, body=xml, headers=XML_HEADERS)


async def _encrypt_part(
    gw: Gateway, up: _Upload, number: int, length: int, plaintext: AsyncIterable[bytes | memoryview]
) -> str:
    """Encrypt and store part `number` in order; returns the backend's ETag of the part."""
    from proxy.server.multipart import MAX_PARTS, MIN_PART_SIZE
    from proxy.server.objects import put_stream

    # A part that arrives early waits (briefly) until its predecessor queues on the lock, which
    # is FIFO, so it then queues behind it. Nothing is read from its body meanwhile.
    deadline = time.monotonic() + PART_ORDER_WAIT
    while number > up.last + 1 and number - 1 not in up.queued and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    up.queued.add(number)
    async with up.lock:
        if number == up.last + 1:
            if up.tagged:
                raise S3Error(
                    "InvalidPartOrder",
                    f"part {up.last} was smaller than 5 MiB and so was the last part of this s3ec-v3 upload "
                    "(it carries the GCM tag); no part can follow it",
                    400,
                )
            start = up.state
            retry = False
        elif up.parts and number == up.last:
            start, retry = up.parts[-1].before, True
        else:
            raise _out_of_order(up, number)
        is_last = length < MIN_PART_SIZE or number == MAX_PARTS
        enc = up.body.part(start)
        after: list[s3ec.GcmStreamState] = []

        async def ciphertext() -> AsyncIterator[bytes]:
            async for piece in plaintext:
                yield enc.update(bytes(piece))
            if enc.length != length:
                raise S3Error("IncompleteBody", "The request body is shorter than its stated length", 400)
            after.append(enc.finish())
            if is_last:
                yield up.body.tag(after[0])

        resp = await put_stream(
            gw,
            up.bucket,
            up.key,
            ciphertext(),
            length + (s3ec.TAG_SIZE if is_last else 0),
            headers={},
            query=[("partNumber", str(number)), ("uploadId", up.backend_id)],
        )
        etag = etag_value(resp.headers.get("ETag", ""))
        part = _Part(number, length, etag, etag, start)
        if retry:
            up.parts[-1] = part
        else:
            up.parts.append(part)
        up.state, up.tagged, up.tag_part = after[0], is_last, None
        return etag


def _out_of_order(up: _Upload, number: int) -> S3Error:
    return S3Error(
        "InvalidPartOrder",
        f"part {number} is out of order for this s3ec-v3 upload (last part stored: {up.last}): an S3 Encryption "
        "Client object is one GCM stream, so parts must be uploaded one after the other, numbered 1, 2, 3, ... "
        "(only the latest part may be sent again)",
        400,
    )


async def upload_part(
    gw: Gateway, request: web.Request, bucket: str, key: str, verified: VerifiedRequest
) -> web.StreamResponse:
    """UploadPart (or UploadPartCopy) of an s3ec-v3 upload: encrypted in order, in this process."""
    from proxy.server.multipart import parse_part_number
    from proxy.server.objects import MAX_PUT_SIZE, client_body

    up = _find_upload(gw, request, bucket, key, request.query["uploadId"])
    number = parse_part_number(request)
    if "x-amz-copy-source" in request.headers:
        return await _upload_part_copy(gw, request, up, number)
    body = client_body(gw, request, verified)
    if body.length > MAX_PUT_SIZE:
        raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size", 400)
    backend_etag = await _encrypt_part(gw, up, number, body.length, body)
    md5 = body.md5
    if (body.md5_wanted or body.content_md5 is not None) and md5 is not None:
        # Clients that check part ETags compare them with the plaintext MD5.
        up.parts[-1].client_etag = md5.hex()
    out = web.Response(status=200, headers={"ETag": f'"{up.parts[-1].client_etag}"'})
    if not backend_etag:
        out.headers["ETag"] = '""'
    for name, value in body.checksums.items():
        out.headers[name] = value
    return out


async def _upload_part_copy(gw: Gateway, request: web.Request, up: _Upload, number: int) -> web.StreamResponse:
    from proxy.server.multipart import read_copy_source

    length, plaintext = await read_copy_source(gw, request)
    try:
        etag = await _encrypt_part(gw, up, number, length, plaintext)
    except IntegrityError as exc:
        raise S3Error("ObjectIntegrityError", f"copy source failed authentication: {exc}", 500) from exc
    modified = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    xml = document("CopyPartResult", [("LastModified", modified), ("ETag", f'"{etag}"')])
    return web.Response(status=200, body=xml, headers=XML_HEADERS)


async def complete_multipart(gw: Gateway, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
    """CompleteMultipartUpload of an s3ec-v3 upload: the parts stored, then the tag if no part
    carried it, completed on the backend; the object then reads as one S3EC V3 body."""
    from proxy.server.multipart import (
        MAX_PARTS,
        MAX_XML,
        MIN_PART_SIZE,
        client_parts,
        drop_upload_record,
    )

    up = _find_upload(gw, request, bucket, key, request.query["uploadId"])
    doc = await request.content.read(MAX_XML + 1)
    if len(doc) > MAX_XML:
        raise S3Error("MaxMessageLengthExceeded", "Your request was too big.", 400)
    wanted = client_parts(doc)
    from proxy.server.objects import write_conditions

    conditions = await write_conditions(gw, request, bucket, key)
    async with up.lock:
        stored = [p.number for p in up.parts]
        if [n for n, _ in wanted] != stored:
            raise S3Error(
                "InvalidPart",
                f"an s3ec-v3 upload is one GCM stream and must be completed with exactly the parts stored, in "
                f"order: {_ranges(stored)}",
                400,
            )
        for part, (_, etag) in zip(up.parts, wanted, strict=True):
            if etag not in (part.client_etag.lower(), part.backend_etag.lower()):
                raise S3Error("InvalidPart", f"The ETag of part {part.number} does not match.", 400)
        for part in up.parts[:-1]:
            if part.length < MIN_PART_SIZE:
                raise S3Error("EntityTooSmall", "Your proposed upload is smaller than the minimum allowed size.", 400)
        listed = [(p.number, p.backend_etag) for p in up.parts]
        if not up.tagged:
            if up.tag_part is None:
                number = up.last + 1
                if number > MAX_PARTS:
                    raise S3Error("InvalidPart", "no part number is left for the S3EC tag", 400)
                resp = await gw.backend.request(
                    "PUT",
                    bucket,
                    key,
                    query=[("partNumber", str(number)), ("uploadId", up.backend_id)],
                    body=up.body.tag(up.state),
                )
                if resp.status >= 300:
                    raise await resp.error()
                resp.release()
                up.tag_part = (number, etag_value(resp.headers.get("ETag", "")))
            listed.append(up.tag_part)
        xml = complete_upload(listed)
        done, answer = await gw.backend.read_ok(
            "POST", bucket, key, query=[("uploadId", up.backend_id)], headers=conditions, body=xml
        )
        root = parse_answer(answer)
        forget_upload(gw, up.backend_id)
    await drop_upload_record(gw, bucket, key, up.backend_id)
    etag = (find_text(root, "ETag") or "").strip() if root is not None else ""
    out = document(
        "CompleteMultipartUploadResult",
        [("Location", f"/{bucket}/{key}"), ("Bucket", bucket), ("Key", key), ("ETag", etag)],
    )
    return web.Response(status=200, body=out, headers={**XML_HEADERS, **version_ids(done.headers)})


def _ranges(numbers: list[int]) -> str:
    if not numbers:
        return "none"
    if numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"parts {numbers[0]} to {numbers[-1]}" if len(numbers) > 1 else f"part {numbers[0]}"
    return "parts " + ", ".join(map(str, numbers))
