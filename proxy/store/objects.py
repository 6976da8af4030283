"""sealgate objects on the backend: sealing a new one's envelope, opening a stored one (envelope,
key policy, data key, commitment, manifest), the ETag shown for it, write conditions, and its
authenticated plaintext for operations that re-encrypt."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

from proxy.access.authorize import Caller
from proxy.crypto.format import (
    DIGEST_SLOT,
    LAYOUT_MULTIPART,
    PART_HEADER_SIZE,
    Envelope,
    FormatError,
    IntegrityError,
    Layout,
    Manifest,
    SealedMetadata,
    is_sealgate_object,
    open_metadata,
    stream_key,
)
from proxy.crypto.multipart import MultipartDecryptor, stored_length
from proxy.crypto.segments import StreamDecryptor, read_digest_slot
from proxy.kms.base import KeyringError
from proxy.s3.errors import S3Error, precondition_failed
from proxy.s3.headers import META_PREFIX, etag_value
from proxy.s3.ranges import check_conditions, etag_matches
from proxy.store import s3ec
from proxy.store.backend import BackendResponse, version_query
from proxy.store.bodies import Decryptor, Nothing, ranged, total_length
from proxy.store.completion import find_manifest
from proxy.store.errors import keyring_error
from proxy.store.gateway import Gateway, require_key_use
from proxy.store.signatures import check_single, manifest_check, require_signer, sign_single

log = logging.getLogger(__name__)

MAX_PUT_SIZE = 5 * 1024**3


MAX_USER_METADATA = 2048


ETAG_TAIL = "tail"


def opaque_etag(backend_etag: str) -> str:
    """An ETag that names this stored version but is plainly no MD5 of the plaintext.

    The ``-1`` suffix is S3's multipart form, which sync tools know not to compare with an MD5.
    """
    bare = etag_value(backend_etag)
    return f'"{bare}"' if "-" in bare else f'"{bare}-1"'


def user_metadata(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's user metadata from its request headers; MetadataTooLarge over S3's 2 KiB."""
    meta: dict[str, str] = {}
    size = 0
    for name, value in headers.items():
        lname = name.lower()
        if lname.startswith(META_PREFIX):
            short = lname[len(META_PREFIX) :]
            meta[short] = value
            size += len(short.encode()) + len(value.encode())
    if size > MAX_USER_METADATA:
        raise S3Error(
            "MetadataTooLarge",
            "Your metadata headers exceed the maximum allowed metadata size.",
            400,
        )
    return meta


async def new_envelope(
    gw: Gateway,
    caller: Caller,
    bucket: str,
    key: str,
    headers: Mapping[str, str],
    *,
    layout: str,
    etag_field: str | None,
    size: int | None = None,
) -> tuple[bytes, Envelope]:
    """A data key (KMS first: nothing is sent to the backend if it fails) and envelope, for the
    object the client's request `headers` describe (its user metadata), once key policy allows."""
    user_meta = user_metadata(headers)
    key_id = gw.config.key_for_bucket(bucket, key)
    require_key_use(gw, caller, "encrypt", key_id)
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
    """A data key and envelope under `key_id` for `user_meta` (key policy is the caller's business).
    Refused before any keyring call when the key's readers require a signature this gateway
    cannot make (`require_signer`): such an object would be stored but never served."""
    require_signer(gw, key_id)
    try:
        data_key, scope = await gw.materials.new_object_key(key_id, bucket, key, size)
    except KeyringError as exc:
        raise keyring_error(exc) from exc
    env = Envelope.new(
        data_key.plaintext,
        data_key.key_ref,
        data_key.wrapped,
        SealedMetadata(user=user_meta, etag=etag_field),
        layout=layout,
        scope=scope,
        bucket=bucket,
        key=key,
    )
    if layout != LAYOUT_MULTIPART and size is not None:
        env = sign_single(gw, env, bucket, key, size)  # a multipart object is signed on completion
    return data_key.plaintext, env


async def shown_etag(
    gw: Gateway, caller: Caller, bucket: str, key: str, version: str | None = None
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
        _, total = total_length(resp)
        return (await open_object(gw, caller, bucket, key, resp, total, version)).etag, stored
    if await s3ec.s3ec_metadata(gw, bucket, key, meta) is None:
        require_plain(gw, bucket, key, resp)
    return stored, stored  # shown as stored (see head_object)


async def write_conditions(
    gw: Gateway,
    caller: Caller,
    bucket: str,
    key: str,
    if_match: str | None,
    if_none_match: str | None,
    *,
    version: str | None = None,
) -> dict[str, str]:
    """Backend headers that carry out the client's If-Match / If-None-Match on a write.

    The client's ETags are the ones sealgate shows (of the plaintext), which the backend has
    never seen. An If-Match is checked here against the current object's shown ETag, then sent
    on as an If-Match on the backend's ETag of that same object, so that a write racing with
    ours makes the backend refuse (412) rather than overwrite a version the client never
    saw. If-None-Match ``*`` is checked here and sent on as it is; If-None-Match with ETags (as
    Ceph and MinIO take it) is checked here against the shown ETag and carried out as an If-Match
    on the backend's ETag of the object checked (or ``*`` when there was none)."""
    out: dict[str, str] = {}
    if if_none_match is not None and if_none_match.strip() != "*":
        # ETags (as Ceph and MinIO take them): refused if the current object has one of them.
        current = await shown_etag(gw, caller, bucket, key, version)
        if current is not None:
            shown, stored = current
            if etag_matches(if_none_match, shown):
                raise precondition_failed()
            out["If-Match"] = stored  # the object checked: a write racing ours makes the backend refuse
        else:
            out["If-None-Match"] = "*"
    elif if_none_match is not None:
        # Checked here too, for backends that do not check it themselves (not all do on every
        # operation); where the backend does, it also closes the gap between here and the write.
        head = await gw.backend.request("HEAD", bucket, key)
        head.release()
        if head.status < 300:
            raise precondition_failed()
        if head.status != 404:
            raise await head.error()
        out["If-None-Match"] = "*"
    if if_match is not None:
        out["If-Match"] = await matching_etag(gw, caller, bucket, key, if_match, version)
    return out


async def matching_etag(
    gw: Gateway, caller: Caller, bucket: str, key: str, if_match: str, version: str | None = None
) -> str:
    """The backend's ETag of the object stored as `bucket`/`key`, once its shown ETag matches
    `if_match`: NoSuchKey (404) if nothing is stored, PreconditionFailed (412) if it differs."""
    current = await shown_etag(gw, caller, bucket, key, version)
    if current is None:
        raise S3Error("NoSuchKey", "The specified key does not exist.", 404, resource=f"/{bucket}/{key}")
    shown, stored = current
    if not etag_matches(if_match, shown):
        raise precondition_failed()
    return stored


@dataclasses.dataclass
class Opened:
    """An object whose envelope has been checked and whose data key is unwrapped."""

    envelope: Envelope
    data_key: bytes
    meta: SealedMetadata
    plaintext_length: int
    etag: str
    manifest: Manifest | None = None


async def open_object(
    gw: Gateway,
    caller: Caller,
    bucket: str,
    key: str,
    resp: BackendResponse,
    total: int,
    version: str | None = None,
    *,
    cached: bool = False,
) -> Opened:
    """Check the envelope and unwrap the data key, once `caller` may decrypt with its key (the
    operator, running tools such as `sealgate convert`, is bound by no key policy). `version`: the object version `resp`
    describes, if the client named one (later reads of the body must read that version). With
    `cached` (a range read) a multipart object's manifest may come from the read cache."""
    meta = resp.user_metadata()
    try:
        env = Envelope.from_metadata(meta)
    except FormatError as exc:
        raise S3Error("ObjectIntegrityError", f"stored object is not readable: {exc}", 500) from exc
    require_key_use(gw, caller, "decrypt", env.key_ref)
    if env.layout != LAYOUT_MULTIPART:
        check_single(gw, env, bucket, key, total)  # before any keyring call: forgeries cost nothing
    try:
        data_key = await gw.materials.unwrap(env.key_ref, env.wrapped_key, env.context(bucket, key))
    except KeyringError as exc:
        raise keyring_error(exc) from exc
    layout = Layout(env.segment_size)
    try:
        env.check_commitment(data_key)
        env.check_name(data_key, bucket, key)
        sealed = open_metadata(data_key, env.salt, env.sealed)
        if env.layout == LAYOUT_MULTIPART:
            check = manifest_check(gw, env, bucket, key)
            manifest = await find_manifest(gw, bucket, key, resp, total, data_key, env, check, version, cached=cached)
            if stored_length(manifest, layout) != total:
                raise IntegrityError("stored size differs from the manifest's parts")
            return Opened(env, data_key, sealed, manifest.size, f'"{manifest.etag}"', manifest)
        plain_len = layout.plaintext_length(total)
    except FormatError as exc:
        raise S3Error("ObjectIntegrityError", f"stored object failed authentication: {exc}", 500) from exc
    if sealed.etag == ETAG_TAIL:
        etag = f'"{(await digest_slot(gw, bucket, key, env, data_key, plain_len, version)).hex()}"'
    elif sealed.etag:
        etag = f'"{sealed.etag}"'
    else:
        etag = opaque_etag(resp.headers.get("ETag", ""))
    return Opened(env, data_key, sealed, plain_len, etag)


async def digest_slot(
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
    start, _ = total_length(resp)
    try:
        data = await resp.read()
    finally:
        resp.release()
    data = data[span.ciphertext_start - start : span.ciphertext_end - start]
    try:
        return read_digest_slot(stream_key(data_key, env.salt, 0), layout, plain_len, data)
    except FormatError as exc:
        raise S3Error("ObjectIntegrityError", f"stored object failed authentication: {exc}", 500) from exc


def last_modified(resp: BackendResponse) -> datetime | None:
    raw = resp.headers.get("Last-Modified")
    if not raw:
        return None
    try:
        return parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None


def not_sealgate(bucket: str, key: str) -> S3Error:
    return S3Error(
        "InvalidObjectState",
        "This object was not written by sealgate; reading unencrypted objects is not enabled "
        "for this bucket (buckets.allow_unencrypted_reads).",
        403,
        resource=f"/{bucket}/{key}",
    )


def require_plain(gw: Gateway, bucket: str, key: str, resp: BackendResponse) -> None:
    """Raise unless an object without an envelope (`resp`: the backend's answer to a GET or HEAD
    of it) may be served as stored: its rule allows unencrypted reads and the backend last
    modified it before the rule's cut-over. Anything newer is what a downgrade looks like (an
    object sealgate wrote, replaced by plaintext on the backend): an integrity error."""
    rule = gw.config.rule_for_bucket(bucket, key)
    if rule is None or not rule.allow_unencrypted_reads:
        raise not_sealgate(bucket, key)
    cut_over = rule.unencrypted_before
    modified = last_modified(resp)
    # LastModified has second resolution (rounded down): an object is older than the cut-over
    # only if its whole second is.
    if cut_over is not None and modified is not None and modified + timedelta(seconds=1) <= cut_over:
        return
    stamp = resp.headers.get("Last-Modified") or "none"
    log.error(
        "integrity failure on /%s/%s: no envelope, last modified %s, not before the cut-over %s "
        "(buckets.unencrypted_before); refused",
        bucket,
        key,
        stamp,
        cut_over.isoformat() if cut_over is not None else "unset",
    )
    raise S3Error(
        "ObjectIntegrityError",
        f"stored object has no sealgate envelope but was last modified ({stamp}) after this bucket's "
        "cut-over to encryption (buckets.unencrypted_before): it may have been replaced on the backend",
        500,
        resource=f"/{bucket}/{key}",
    )


async def open_copy_source(
    gw: Gateway,
    caller: Caller,
    bucket: str,
    key: str,
    version: str | None = None,
    conditions: Mapping[str, str] | None = None,
) -> tuple[Opened, BackendResponse, int]:
    """The source of a copy: opened (data key unwrapped, checked) once the request's
    x-amz-copy-source-if-* `conditions` (request headers; none for the operator) hold against
    the ETag sealgate shows for it."""
    head = await gw.backend.request("HEAD", bucket, key, query=version_query(version))
    head.release()
    if head.status >= 300:
        raise await head.error()
    meta = head.user_metadata()
    if not is_sealgate_object(meta):
        rule = gw.config.rule_for_bucket(bucket, key)
        migrating = rule is not None and rule.allow_unencrypted_reads
        if migrating and await s3ec.s3ec_metadata(gw, bucket, key, meta) is None:
            require_plain(gw, bucket, key, head)  # a downgraded object is an integrity error, not just "not ours"
        raise S3Error("InvalidObjectState", "sealgate copies only objects it wrote", 403)
    _, total = total_length(head)
    opened = await open_object(gw, caller, bucket, key, head, total, version)
    if conditions is None:
        return opened, head, total
    h = conditions
    check_conditions(
        h.get("x-amz-copy-source-if-match"),
        h.get("x-amz-copy-source-if-none-match"),
        h.get("x-amz-copy-source-if-modified-since"),
        h.get("x-amz-copy-source-if-unmodified-since"),
        opened.etag,
        last_modified(head),
        is_read=False,
    )
    return opened, head, total


async def read_plaintext(
    gw: Gateway,
    caller: Caller,
    bucket: str,
    key: str,
    byte_range: tuple[int, int] | None,
    version: str | None = None,
    conditions: Mapping[str, str] | None = None,
) -> tuple[int, AsyncIterator[bytes], Opened, BackendResponse]:
    """Authenticated plaintext of [first, last] (inclusive, like a Range) of a sealgate object
    (of that `version` of it), as a stream, for server-side operations that must re-encrypt
    (UploadPartCopy)."""
    opened, head, _ = await open_copy_source(gw, caller, bucket, key, version, conditions)
    size = opened.plaintext_length
    start, end = (0, size) if byte_range is None else (byte_range[0], byte_range[1] + 1)
    if not 0 <= start < end <= size and not (start == end == size == 0):
        raise S3Error("InvalidArgument", f"Range specified is not valid for source object of size: {size}", 400)
    etag = head.headers.get("ETag", "")
    layout = Layout(opened.envelope.segment_size)
    decryptor: Decryptor
    if end == start:
        fetch: tuple[int, int] | None = None
        decryptor = Nothing()
    elif opened.manifest is not None:
        mdec = MultipartDecryptor(opened.data_key, opened.envelope.salt, layout, opened.manifest, start, end)
        if mdec.header_range:
            h = await ranged(gw, bucket, key, etag, *mdec.header_range, version=version)
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
        source = await ranged(gw, bucket, key, etag, *fetch, version=version)
        try:
            first, _ = total_length(source)
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
