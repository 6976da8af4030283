"""Multipart uploads into s3ec-v3 buckets: one GCM stream whose state lives in this process.

An S3EC body is one GCM stream, so part N is encrypted from the stream state after part N-1
(`GcmStreamState`: offset, GHASH accumulator, < 16 pending bytes) and the tag ends the
body. That state lives in the memory of the sealgate process that created the upload: parts
must come to that process, in order (1, 2, 3, ...). With several workers (``server.workers``)
the upload id names the worker's slot, and a part or a Complete that reaches another worker of
the same sealgate is checked there and passed over the workers' private channel to this one
(proxy/server/peers.py: `locate_upload` tells the two cases apart). Another replica, or this
sealgate after a restart, has no such path: NoSuchUpload. A part that arrives early waits a little
for its predecessor to start; one that is still out of order is refused (InvalidPartOrder),
never stored where it would make the object unreadable. The state before each part is kept,
so the latest part can be retried (after a failed check or a backend error).

A retry is encrypted at the same AES-CTR counters under the same key, so it must be
byte-identical to what earlier attempts may have sent (`SentPart`, recorded before any
ciphertext byte of an attempt leaves, even if the attempt fails later); a GCM tag, once sent,
fixes where the stream ends. Anything else is refused before it reaches the backend.

The upload id is authenticated as a sealgate one is (proxy/crypto/upload_id.py, prefix
``s3ec3-``): it carries the backend id, the key reference and the S3EC-wrapped data key, with
a MAC under a key derived from the data key and bound to bucket and key. Every request that
continues the upload needs the caller's ``encrypt`` right on that key and the id's MAC to
check: with the data key this process holds, or, for AbortMultipartUpload and ListParts on
another process, with the data key unwrapped from the id.

Where the tag goes: S3 requires every part but the last to be at least 5 MiB, so a smaller
part must be the last one and gets the tag appended. If the last part is 5 MiB or more, the
tag is uploaded at CompleteMultipartUpload as one more part (16 bytes, allowed as the last).

How many: a process holds at most ``server.s3ec_uploads`` of these states, and one client at
most ``server.s3ec_uploads_per_client`` of them, so one client cannot take them from the others
(503 SlowDown, naming the quota). The state is inherent to the format (the next part's counter
and GHASH come from the parts before it), so it cannot move to the client or the backend; what
lives on the backend is the multipart upload itself, and that is the record of whether an
upload is still open. An abort may land on any replica (or ``sealgate gc`` may abort it): it
deletes the backend's upload, and before refusing a new upload for want of room, the process
that holds the state asks the backend (ListParts, a few of the longest-unchecked uploads at a
time) which of its uploads still exist, and forgets those that do not.
"""

from __future__ import annotations

import asyncio
import os
import time
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass, field

from proxy.access.authorize import Caller
from proxy.crypto import s3ec, s3ec_keys
from proxy.crypto.format import SALT_SIZE, FormatError
from proxy.crypto.s3ec_multipart import GcmStreamState, PartAttempt, PartMismatch, S3ecV3Multipart, SentPart
from proxy.crypto.upload_id import S3EC_PREFIX, UploadId, open_for_replicas, seal_for_replicas
from proxy.kms.base import InvalidWrappedKey
from proxy.s3.errors import S3Error
from proxy.s3.headers import etag_value
from proxy.s3.xml import complete_upload as complete_document
from proxy.s3.xml import find_text, parse, parse_answer
from proxy.store.backend import version_ids
from proxy.store.bodies import put_stream
from proxy.store.gateway import Gateway, require_key_use
from proxy.store.records import drop_upload_record, put_upload_record
from proxy.store.s3ec import audit_local_use, key_errors, local_keyring, new_data_key, object_headers
from proxy.store.uploads import MAX_PARTS, MIN_PART_SIZE, no_upload, opening_upload

UPLOAD_PREFIX = S3EC_PREFIX


#: How long a part waits for the part before it to start before it is refused as out of order.
PART_ORDER_WAIT = 30.0


#: An upload older than this (S3 keeps them until aborted; sealgate gc aborts them after a
#: week by default) is forgotten.
UPLOAD_TTL = 7 * 24 * 3600.0

#: When looking for room, how many held uploads are checked against the backend at once, and
#: how soon one is checked again: this bounds the backend requests a client at its quota causes
#: (at most `ROOM_CHECKS` per refused CreateMultipartUpload, each upload once a second).
ROOM_CHECKS = 8
RECHECK_SECONDS = 1.0


@dataclass
class Part:
    """A stored part of an s3ec-v3 upload and the stream state before it (for a retry)."""

    number: int
    length: int
    backend_etag: str
    client_etag: str
    before: GcmStreamState


@dataclass
class Upload:
    """This process's state of one s3ec-v3 upload."""

    bucket: str
    key: str
    backend_id: str
    body: S3ecV3Multipart
    state: GcmStreamState
    #: The S3EC data key, which authenticates the upload id.
    data_key: bytes = field(repr=False)
    #: The client that created it (the quota it counts against).
    owner: str | None = None
    created: float = field(default_factory=time.monotonic)
    #: When the backend last said the upload still exists (never, at first).
    checked: float = float("-inf")
    parts: list[Part] = field(default_factory=list)
    tagged: bool = False
    tag_part: tuple[int, str] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Part numbers that have queued for the lock (a successor waits for its predecessor's).
    queued: set[int] = field(default_factory=set)
    #: What attempts at the parts that can still be sent again (the last stored one and the
    #: next) may have released, by part number.
    sent: dict[int, SentPart] = field(default_factory=dict)
    #: The stream length whose GCM tag may have been sent: the stream must end there.
    sealed_at: int | None = None

    @property
    def last(self) -> int:
        return self.parts[-1].number if self.parts else 0


_registries: dict[int, dict[str, Upload]] = {}


def _uploads(gw: Gateway) -> dict[str, Upload]:
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


def lost_upload() -> S3Error:
    """NoSuchUpload, saying why a process may not hold an s3ec-v3 upload."""
    return S3Error(
        "NoSuchUpload",
        "this s3ec-v3 multipart upload is not known to this sealgate process (it was started by another "
        "replica, sealgate or the worker holding it restarted, or it was completed or aborted): its parts "
        "form one GCM stream whose state stays in the process that created it, so they must go there, in "
        "order; abort it and upload again",
        404,
    )


def _decode(gw: Gateway, caller: Caller, text: str) -> UploadId:
    """The fields of an s3ec-v3 upload id, once the caller may encrypt under its key (checked
    before any keyring or backend call); NoSuchUpload if it is not one. Not yet authenticated."""
    try:
        uid = UploadId.decode(text, S3EC_PREFIX)
    except FormatError:
        raise no_upload() from None
    require_key_use(gw, caller, "encrypt", uid.key_ref)
    return uid


def _held(gw: Gateway, uid: UploadId, bucket: str, key: str) -> Upload | None:
    """This process's state of the upload `uid` names, once the id checks out for this object
    (NoSuchUpload if it does not); None if another process (or none) holds the upload."""
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


def find_upload(gw: Gateway, caller: Caller, bucket: str, key: str, text: str) -> Upload:
    """The state of the upload that client id `text` names, authenticated for this object."""
    up = locate_upload(gw, caller, bucket, key, text)
    if not isinstance(up, Upload):
        raise lost_upload()
    return up


def locate_upload(gw: Gateway, caller: Caller, bucket: str, key: str, text: str) -> Upload | UploadId:
    """As `find_upload`, but where this process does not hold the upload, the id's fields
    (not authenticated: the worker its slot names checks them) instead of NoSuchUpload."""
    uid = _decode(gw, caller, text)
    up = _held(gw, uid, bucket, key)
    return uid if up is None else up


async def verified_upload(gw: Gateway, caller: Caller, bucket: str, key: str, text: str) -> UploadId:
    """The fields of s3ec-v3 upload id `text`, authenticated for this object, on any process
    (for AbortMultipartUpload and ListParts): the data key is this process's if it holds the
    upload, else unwrapped from the id (or opened with the upload secret)."""
    uid = _decode(gw, caller, text)
    if _held(gw, uid, bucket, key) is not None:
        return uid
    with opening_upload():
        data_key = await _upload_data_key(gw, uid, bucket, key)
        uid.verify(data_key, bucket, key)
    return uid


async def _upload_data_key(gw: Gateway, uid: UploadId, bucket: str, key: str) -> bytes:
    """The S3EC data key an s3ec-v3 upload id carries, wrapped as `new_data_key` wrapped it."""
    secret = gw.config.encryption.upload_secret
    if uid.sealed_key and secret is not None:
        return open_for_replicas(secret.get_secret_value().encode(), uid.salt, uid.sealed_key, bucket, key)
    if not uid.key_ref.startswith("local:"):
        context = s3ec.kms_context(s3ec.name_context(bucket, key))
        return await gw.materials.keyring.decrypt_data_key(uid.key_ref, uid.wrapped_key, context)
    local = local_keyring(gw)
    if local is None:
        raise InvalidWrappedKey("an AES/GCM-wrapped S3EC upload needs the local keyring")
    key_id = uid.key_ref[len("local:") :].rpartition(":")[0]
    envelope = s3ec.S3ecEnvelope(s3ec.FORMAT_V3, s3ec.WRAP_AES_GCM, uid.wrapped_key, {})
    for ref, material in local.s3ec_unwrapping_keys(key_id):
        if ref == uid.key_ref and isinstance(material, bytes):
            with key_errors():
                data_key = s3ec_keys.unwrap_aes_gcm(envelope, material)
            audit_local_use(gw, "decrypt", ref, s3ec.WRAP_AES_GCM, bucket, key)
            return data_key
    raise InvalidWrappedKey(f"no AES-256 key {uid.key_ref!r} in the local keyring")


async def create_upload(gw: Gateway, caller: Caller, bucket: str, key: str, request_headers: Mapping[str, str]) -> str:
    """Start an s3ec-v3 upload: S3EC metadata on the backend's upload, the GCM stream's state in
    this process; returns the upload id for the client."""
    reg = _uploads(gw)
    await _room_for(gw, reg, caller.identity)
    plain_key, wrapped, wrap_alg, context, key_ref = await new_data_key(gw, caller, bucket, key)
    body = S3ecV3Multipart(plain_key, message_id=s3ec_keys.bound_message_id(plain_key, bucket, key))
    headers = object_headers(request_headers, body.metadata(wrapped, wrap_alg, encryption_context=context))
    _, doc = await gw.backend.read_ok("POST", bucket, key, query=[("uploads", "")], headers=headers, body=b"")
    backend_id = find_text(parse(doc), "UploadId")
    if not backend_id:
        raise S3Error("BadGateway", "backend returned no upload id", 502)
    salt = os.urandom(SALT_SIZE)
    secret = gw.config.encryption.upload_secret
    sealed = b""
    if secret is not None:
        sealed = seal_for_replicas(secret.get_secret_value().encode(), salt, plain_key, bucket, key)
    uid = UploadId(backend_id, key_ref, wrapped, salt, sealed_key=sealed, prefix=S3EC_PREFIX, slot=gw.worker_slot)
    upload_id = uid.encode(plain_key, bucket, key)
    await put_upload_record(gw, bucket, key, backend_id, upload_id)
    reg[backend_id] = Upload(bucket, key, backend_id, body, body.start, plain_key, owner=caller.identity)
    return upload_id


async def _room_for(gw: Gateway, reg: dict[str, Upload], client: str | None) -> None:
    """Room for one more upload of `client`, within its quota and the process's total; uploads
    the backend no longer has (aborted on another replica, by gc, ...) are forgotten to make it.
    503 SlowDown, saying which limit, if there is none."""
    now = time.monotonic()
    for stale in [u for u, up in reg.items() if now - up.created > UPLOAD_TTL]:
        del reg[stale]
    srv = gw.config.server
    quota = srv.s3ec_uploads_quota
    mine = [up for up in reg.values() if up.owner == client]
    if len(mine) >= quota and not await _forget_gone(gw, reg, mine):
        raise S3Error(
            "SlowDown",
            f"client {client} already has {len(mine)} s3ec-v3 multipart uploads in progress on this sealgate "
            f"process, its quota (server.s3ec_uploads_per_client = {quota}); complete or abort some of them",
            503,
        )
    if len(reg) >= srv.s3ec_uploads and not await _forget_gone(gw, reg, list(reg.values())):
        raise S3Error(
            "SlowDown",
            f"this sealgate process holds {len(reg)} s3ec-v3 multipart uploads in progress, its limit "
            "(server.s3ec_uploads); complete or abort some, or retry later",
            503,
        )


async def _forget_gone(gw: Gateway, reg: dict[str, Upload], candidates: list[Upload]) -> bool:
    """Ask the backend about the `ROOM_CHECKS` candidates checked longest ago (none checked in
    the last `RECHECK_SECONDS`) and forget those it no longer has; whether any was forgotten."""
    now = time.monotonic()
    due = sorted((up for up in candidates if now - up.checked >= RECHECK_SECONDS), key=lambda up: up.checked)
    due = due[:ROOM_CHECKS]
    found = await asyncio.gather(*(_still_open(gw, up) for up in due))
    freed = False
    for up, still_open in zip(due, found, strict=True):
        up.checked = now
        if not still_open and reg.get(up.backend_id) is up:
            del reg[up.backend_id]
            freed = True
    return freed


async def _still_open(gw: Gateway, up: Upload) -> bool:
    """Whether the backend still has this upload (True too when it cannot say)."""
    query = [("max-parts", "1"), ("uploadId", up.backend_id)]
    try:
        resp = await gw.backend.request("GET", up.bucket, up.key, query=query)
    except S3Error:
        return True
    resp.release()
    # NoSuchUpload, or NoSuchBucket: either way the upload is gone.
    return resp.status != 404


async def encrypt_part(
    gw: Gateway, up: Upload, number: int, length: int, plaintext: AsyncIterable[bytes | memoryview]
) -> str:
    """Encrypt and store part `number` in order; returns the backend's ETag of the part."""
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
        attempt = _attempt(up, number, start, length, is_last)
        enc = up.body.part(start)
        after: list[GcmStreamState] = []

        async def ciphertext() -> AsyncIterator[bytes]:
            async for piece in plaintext:
                try:
                    released = attempt.release(piece)
                except PartMismatch as exc:
                    raise _resent(number, exc) from None
                if released:
                    yield enc.update(released)
            if enc.length != length:
                raise S3Error("IncompleteBody", "The request body is shorter than its stated length", 400)
            after.append(enc.finish())
            if is_last:
                up.sealed_at = after[0].offset
                yield up.body.tag(after[0])

        try:
            resp = await put_stream(
                gw,
                up.bucket,
                up.key,
                await _primed(ciphertext()),
                length + (s3ec.TAG_SIZE if is_last else 0),
                headers={},
                query=[("partNumber", str(number)), ("uploadId", up.backend_id)],
            )
        except S3Error as exc:
            if exc.code == "NoSuchUpload":  # aborted elsewhere: nothing to keep
                forget_upload(gw, up.backend_id)
            raise
        etag = etag_value(resp.headers.get("ETag", ""))
        part = Part(number, length, etag, etag, start)
        if retry:
            up.parts[-1] = part
        else:
            up.parts.append(part)
        up.state, up.tagged, up.tag_part = after[0], is_last, None
        for older in [n for n in up.sent if n < number]:
            del up.sent[older]
        return etag


def _attempt(up: Upload, number: int, start: GcmStreamState, length: int, is_last: bool) -> PartAttempt:
    """An attempt at part `number` from `start`, refused unless it can neither end the stream
    where no tag was sent nor differ from what earlier attempts at the part may have sent."""
    end = start.offset + length
    if up.sealed_at is not None and (end > up.sealed_at or (is_last and end != up.sealed_at)):
        raise _sealed(up.sealed_at)
    try:
        return up.sent.setdefault(number, SentPart(length)).attempt(length)
    except PartMismatch as exc:
        raise _resent(number, exc) from None


async def _primed(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`chunks` with its first chunk already in hand: a retry that differs in its first
    chunk never reaches the backend."""
    first = await anext(chunks, None)

    async def body() -> AsyncIterator[bytes]:
        if first is not None:
            yield first
            async for chunk in chunks:
                yield chunk

    return body()


def _resent(number: int, exc: PartMismatch) -> S3Error:
    return S3Error(
        "InvalidRequest",
        f"part {number} was already sent with other bytes ({exc}); an s3ec-v3 part cannot be re-encrypted "
        "with different content (it would reuse the AES-CTR keystream of the earlier attempt): send exactly "
        "the same bytes again, or abort and restart the upload",
        400,
    )


def _sealed(offset: int) -> S3Error:
    return S3Error(
        "InvalidRequest",
        f"the GCM tag of this s3ec-v3 upload was already sent for a body of {offset} bytes (by a last part or "
        "a CompleteMultipartUpload that failed); a second tag under the same nonce would give away the "
        "authentication key, so the upload must end there: send the same parts again, or abort and restart it",
        400,
    )


def _out_of_order(up: Upload, number: int) -> S3Error:
    return S3Error(
        "InvalidPartOrder",
        f"part {number} is out of order for this s3ec-v3 upload (last part stored: {up.last}): an S3 Encryption "
        "Client object is one GCM stream, so parts must be uploaded one after the other, numbered 1, 2, 3, ... "
        "(only the latest part may be sent again)",
        400,
    )


async def complete_upload(
    gw: Gateway, up: Upload, bucket: str, key: str, wanted: list[tuple[int, str]], conditions: dict[str, str]
) -> tuple[str, dict[str, str]]:
    """Complete an s3ec-v3 upload with exactly the parts stored, in order, then the tag if no
    part carried it; the object then reads as one S3EC V3 body. Returns the backend's ETag (as
    its answer gives it) and the answer's version-id headers."""
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
                if up.sealed_at not in (None, up.state.offset):
                    raise _sealed(up.sealed_at)
                up.sealed_at = up.state.offset
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
        xml = complete_document(listed)
        done, answer = await gw.backend.read_ok(
            "POST", bucket, key, query=[("uploadId", up.backend_id)], headers=conditions, body=xml
        )
        root = parse_answer(answer)
        forget_upload(gw, up.backend_id)
    await drop_upload_record(gw, bucket, key, up.backend_id)
    etag = (find_text(root, "ETag") or "").strip() if root is not None else ""
    return etag, version_ids(done.headers)


def _ranges(numbers: list[int]) -> str:
    if not numbers:
        return "none"
    if numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"parts {numbers[0]} to {numbers[-1]}" if len(numbers) > 1 else f"part {numbers[0]}"
    return "parts " + ", ".join(map(str, numbers))


async def completed_upload(
    gw: Gateway, caller: Caller, bucket: str, key: str, text: str, lost: S3Error
) -> tuple[str, dict[str, str]]:
    """The answer to completing an s3ec-v3 upload this process no longer holds: as its
    completion was when the current object is the one it made (it carries the upload's wrapped
    data key), else `lost` (NoSuchUpload)."""
    uid = await verified_upload(gw, caller, bucket, key, text)
    head = await gw.backend.request("HEAD", bucket, key)
    head.release()
    if head.status >= 300:
        raise lost
    try:
        made = s3ec.parse(head.user_metadata()).wrapped_key == uid.wrapped_key
    except s3ec.S3ecFormatError:
        made = False
    if not made:
        raise lost
    await drop_upload_record(gw, bucket, key, uid.backend_id)
    return head.headers.get("ETag", ""), version_ids(head.headers)
