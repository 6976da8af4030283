"""sealgate-format multipart uploads on the backend: the upload id that carries the data key,
starting an upload, and completing it with a sealed manifest."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from proxy.access.authorize import Caller
from proxy.crypto.format import (
    DEFAULT_SEGMENT_SIZE,
    LAYOUT_MULTIPART,
    Envelope,
    FormatError,
    IntegrityError,
    Layout,
    Manifest,
    ManifestPart,
    encryption_context,
    open_metadata,
    part_plaintext_length,
)
from proxy.crypto.signing import encode_signature
from proxy.crypto.upload_id import PREFIX, UploadId, open_for_replicas, seal_for_replicas
from proxy.kms.base import KeyringError, KeyUnavailable
from proxy.s3.errors import S3Error
from proxy.s3.headers import SSE_ANSWER_HEADERS, WRITE_ANSWER_HEADERS, etag_value, stored_headers
from proxy.s3.xml import complete_upload as complete_document
from proxy.s3.xml import find_text, iter_named, parse, parse_answer
from proxy.store.backend import version_ids
from proxy.store.completion import drop_pending, find_manifest, made_by, put_pending
from proxy.store.errors import keyring_error
from proxy.store.gateway import Gateway, require_key_use
from proxy.store.objects import new_envelope
from proxy.store.part_etags import drop_parts, drop_upload_parts, recorded_parts
from proxy.store.records import drop_upload_record, put_record, put_upload_record, recorded_envelope
from proxy.store.signatures import integrity_error, manifest_check, sign_manifest

log = logging.getLogger(__name__)

MIN_PART_SIZE = 5 * 1024 * 1024


MAX_PARTS = 10000


MAX_XML = 2 * 1024 * 1024


_HEX32 = re.compile(r"^[0-9a-f]{32}$")


def no_upload() -> S3Error:
    """S3's NoSuchUpload: for an upload id that is not (or no longer) valid for this object."""
    return S3Error(
        "NoSuchUpload",
        "The specified upload does not exist. The upload ID may be invalid, or the upload may have "
        "been aborted or completed.",
        404,
    )


@contextmanager
def opening_upload() -> Iterator[None]:
    """What opening an upload id's data key may raise, as the client sees it: a key service that
    cannot be reached is that (503); a key or id that does not open is NoSuchUpload (404)."""
    try:
        yield
    except FormatError:
        raise no_upload() from None
    except KeyUnavailable as exc:
        raise keyring_error(exc) from exc
    except KeyringError:
        raise no_upload() from None


async def open_upload(gw: Gateway, caller: Caller, bucket: str, key: str, text: str) -> tuple[UploadId, bytes]:
    """The upload id's fields and its data key, after checking it was made for this object."""
    try:
        uid = UploadId.decode(text, PREFIX)
    except FormatError:
        raise no_upload() from None
    # Continuing an upload is writing under its key: checked before any keyring or backend call.
    require_key_use(gw, caller, "encrypt", uid.key_ref)
    secret = gw.config.encryption.upload_secret
    with opening_upload():
        if uid.sealed_key and secret is not None:
            data_key = open_for_replicas(secret.get_secret_value().encode(), uid.salt, uid.sealed_key, bucket, key)
        else:
            data_key = await gw.materials.unwrap(uid.key_ref, uid.wrapped_key, encryption_context(bucket, key))
    try:
        uid.verify(data_key, bucket, key)
    except FormatError:
        raise no_upload() from None
    return uid, data_key


async def create_upload(
    gw: Gateway, caller: Caller, bucket: str, key: str, request_headers: Mapping[str, str]
) -> tuple[str, dict[str, str]]:
    """Start a sealgate upload: a data key for the whole object, carried in the upload id
    returned (and recorded for ListMultipartUploads), with what the backend's answer says of
    its own server-side encryption."""
    data_key, env = await new_envelope(
        gw, caller, bucket, key, request_headers, layout=LAYOUT_MULTIPART, etag_field=None
    )
    headers = {f"x-amz-meta-{k}": v for k, v in env.to_metadata().items()}
    headers.update(stored_headers(request_headers))
    resp, doc = await gw.backend.read_ok("POST", bucket, key, query=[("uploads", "")], headers=headers, body=b"")
    backend_id = find_text(parse(doc), "UploadId")
    if not backend_id:
        raise S3Error("BadGateway", "backend returned no upload id", 502)
    secret = gw.config.encryption.upload_secret
    sealed = b""
    if secret is not None:
        sealed = seal_for_replicas(secret.get_secret_value().encode(), env.salt, data_key, bucket, key)
    uid = UploadId(backend_id, env.key_ref, env.wrapped_key, env.salt, sealed_key=sealed).encode(data_key, bucket, key)
    await put_upload_record(gw, bucket, key, backend_id, uid, env.to_metadata())
    return uid, version_ids(resp.headers, SSE_ANSWER_HEADERS)


async def backend_parts(gw: Gateway, bucket: str, key: str, backend_id: str) -> dict[int, tuple[str, int]]:
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


def multipart_etag(etags: list[str]) -> str | None:
    """S3's ETag of a multipart object with these part MD5s (hex); None unless all are MD5s."""
    if not all(_HEX32.match(e) for e in etags):
        return None
    return hashlib.md5(b"".join(bytes.fromhex(e) for e in etags)).hexdigest() + f"-{len(etags)}"


def _checked_envelope(meta: Mapping[str, str], data_key: bytes, salt: bytes) -> Envelope:
    """The envelope in `meta`, checked to be this upload's (salt, commitment, sealed metadata
    under its data key): FormatError otherwise."""
    env = Envelope.from_metadata(meta)
    if env.salt != salt or env.layout != LAYOUT_MULTIPART:
        raise IntegrityError("the completed object's envelope is not this upload's")
    env.check_commitment(data_key)
    open_metadata(data_key, salt, env.sealed)
    return env


def _signs(gw: Gateway) -> bool:
    return gw.local_keys is not None and gw.local_keys.signer() is not None


def _pending_signature(
    gw: Gateway, uid: UploadId, data_key: bytes, bucket: str, key: str, sealed: bytes, meta: Mapping[str, str] | None
) -> tuple[str, Envelope | None]:
    """The sender signature (docs/FORMAT.md §3a) of the pending record, made before the object
    exists over the envelope its upload record keeps (`meta`), and that envelope; ("", None)
    when this gateway does not sign or the record keeps no usable envelope (an upload started
    before records kept one)."""
    if not _signs(gw) or meta is None:
        return "", None
    try:
        env = _checked_envelope(meta, data_key, uid.salt)
    except FormatError:
        log.warning("the upload record of /%s/%s keeps an envelope that is not its upload's", bucket, key)
        return "", None
    return encode_signature(sign_manifest(gw, env, bucket, key, sealed)), env


def _completed_signature(
    gw: Gateway, data_key: bytes, salt: bytes, bucket: str, key: str, meta: Mapping[str, str], sealed: bytes
) -> str:
    """The sender signature of the completed object's manifest, "" when this gateway does not
    sign; signed over the completed object's own envelope, once it is checked to be this upload's."""
    if not _signs(gw):
        return ""
    try:
        env = _checked_envelope(meta, data_key, salt)
    except FormatError as exc:
        raise integrity_error(exc) from exc
    return encode_signature(sign_manifest(gw, env, bucket, key, sealed))


_INVALID_PART = (
    "One or more of the specified parts could not be found. The part may not have been uploaded, or the "
    "specified entity tag may not match the part's entity tag."
)


def _chosen_parts(
    stored: Mapping[int, tuple[str, int]],
    wanted: list[tuple[int, str]],
    md5s: Mapping[tuple[int, str], str],
    strict: bool,
) -> tuple[list[ManifestPart], list[str]]:
    """The manifest's parts and their backend ETags for the client's `wanted` list, checked
    against the `stored` parts (InvalidPart, EntityTooSmall). A part ETag is the backend's own
    or the plaintext MD5 its part record (`md5s`) vouches for; only uploads started before part
    records existed (not `strict`) may claim an unrecorded MD5."""
    layout = Layout(DEFAULT_SEGMENT_SIZE)
    parts: list[ManifestPart] = []
    backend_etags: list[str] = []
    missing = [n for n, _ in wanted if n not in stored]
    if missing:
        raise S3Error("InvalidPart", _INVALID_PART, 400)
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
        recorded = md5s.get((number, backend_etag))
        if is_md5 and (recorded != etag if recorded is not None else strict or not _HEX32.match(etag)):
            raise S3Error("InvalidPart", _INVALID_PART, 400)
        parts.append(ManifestPart(number, length, etag, is_md5))
        backend_etags.append(backend_etag)
    return parts, backend_etags


async def complete_upload(
    gw: Gateway,
    uid: UploadId,
    data_key: bytes,
    bucket: str,
    key: str,
    wanted: list[tuple[int, str]],
    conditions: dict[str, str],
) -> tuple[str, dict[str, str]]:
    """Complete a sealgate upload with the client's `wanted` parts, so that a crash at any step
    leaves the object absent or readable (proxy/store/completion.py): check them against the
    stored ones, store the sealed manifest as a pending record, complete on the backend (with the
    destination `conditions`), then store the manifest under the name the object's ETag gives.
    An upload that is already complete (a retry) is answered as its completion was. Returns the
    object's ETag (unquoted) and the answer's version-id headers."""
    try:
        stored = await backend_parts(gw, bucket, key, uid.backend_id)
    except S3Error as exc:
        if exc.code != "NoSuchUpload":
            raise
        return await completed_before(gw, uid, data_key, bucket, key)
    recorded = await recorded_envelope(gw, bucket, key, uid.backend_id)
    md5s, part_records = await recorded_parts(gw, bucket, key, uid.backend_id, data_key, uid.salt)
    # An upload whose record keeps its envelope started after part records existed.
    parts, backend_etags = _chosen_parts(stored, wanted, md5s, strict=recorded is not None)
    final_etag = multipart_etag([p.etag for p in parts]) or hashlib.md5(os.urandom(16)).hexdigest() + f"-{len(parts)}"
    expected = multipart_etag([e.lower() for e in backend_etags]) or ""
    manifest = Manifest(tuple(parts), expected, final_etag, tuple(backend_etags))
    sealed = manifest.seal(data_key, uid.salt)
    signature, signed_env = _pending_signature(gw, uid, data_key, bucket, key, sealed, recorded)
    await put_pending(gw, bucket, key, uid.backend_id, uid.salt, manifest, sealed, signature)

    xml = complete_document((p.number, e) for p, e in zip(parts, backend_etags, strict=True))
    try:
        resp, answer = await gw.backend.read_ok(
            "POST", bucket, key, query=[("uploadId", uid.backend_id)], headers=conditions, body=xml
        )
    except S3Error as exc:
        if exc.code != "NoSuchUpload":
            raise
        return await completed_before(gw, uid, data_key, bucket, key)  # another replica completed it
    root = parse_answer(answer)
    # Name the manifest after the ETag that reads will see: some backends report another ETag
    # on HEAD and GET than in their completion answer.
    head = await gw.backend.request("HEAD", bucket, key)
    head.release()
    if head.status >= 300 or not made_by(head, uid.salt):
        # Replaced (or deleted) as soon as it appeared: whoever reads this version, or gc,
        # finishes its completion from the pending record.
        return final_etag, version_ids(resp.headers, WRITE_ANSWER_HEADERS)
    actual = etag_value(head.headers.get("ETag", ""))
    if not actual and root is not None:
        actual = etag_value(find_text(root, "ETag") or "")
    if actual != expected:
        # A backend with its own ETag scheme: the manifest must name the ETag it really gave.
        manifest = dataclasses.replace(manifest, backend_etag=actual)
        sealed = manifest.seal(data_key, uid.salt)
        signature = ""
    if not signature or signed_env is None or Envelope.from_metadata(head.user_metadata()) != signed_env:
        # Signed over the completed object's own envelope (the pending record's signature holds
        # only for the same manifest body and the envelope the upload record kept).
        signature = _completed_signature(gw, data_key, uid.salt, bucket, key, head.user_metadata(), sealed)
    await put_record(gw, bucket, key, manifest, sealed, signature)
    await drop_pending(gw, bucket, key, uid.salt)
    await drop_upload_record(gw, bucket, key, uid.backend_id)
    await drop_parts(gw, bucket, part_records)
    return final_etag, version_ids(resp.headers, WRITE_ANSWER_HEADERS)


async def completed_before(
    gw: Gateway, uid: UploadId, data_key: bytes, bucket: str, key: str
) -> tuple[str, dict[str, str]]:
    """The answer to completing an upload the backend no longer has: as its completion was when
    the current object is the one it made (finishing that completion if a crash interrupted
    it), else NoSuchUpload."""
    head = await gw.backend.request("HEAD", bucket, key)
    head.release()
    if head.status >= 300:
        raise no_upload()
    try:
        env = Envelope.from_metadata(head.user_metadata())
    except FormatError:
        raise no_upload() from None
    if env.salt != uid.salt or env.layout != LAYOUT_MULTIPART:
        raise no_upload()
    try:
        env.check_commitment(data_key)
        check = manifest_check(gw, env, bucket, key)
        total = int(head.headers.get("Content-Length", "0"))
        manifest = await find_manifest(gw, bucket, key, head, total, data_key, env, check)
    except FormatError as exc:
        raise integrity_error(exc) from exc
    await drop_upload_record(gw, bucket, key, uid.backend_id)
    await drop_upload_parts(gw, bucket, key, uid.backend_id)
    return manifest.etag, version_ids(head.headers)
