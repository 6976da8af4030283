"""Multipart completions that a crash cannot leave half done (docs/FORMAT.md §6b).

Before the backend completes an upload, the object's manifest is stored as a *pending record*,
named by the object's key and its salt (which the object's envelope carries) rather than by the
ETag the backend will give the object, which some backends (``rclone serve s3``) let no one
predict. Once the object is visible its manifest is stored under the name its ETag gives, and
the pending record is dropped. Whoever finds the object without that manifest (a read, a retried
CompleteMultipartUpload, ``sealgate gc``) finishes the completion from the pending record:
directly when it names the ETag the backend reports, otherwise only after reading the whole
stored object once and checking it against the record (each part's stored bytes against the
backend ETag listed at completion where that is their MD5, and every segment authenticated).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from collections.abc import Callable, Mapping
from urllib.parse import quote

from proxy.crypto.format import Envelope, FormatError, IntegrityError, Layout, Manifest, part_ciphertext_length
from proxy.crypto.multipart import MultipartDecryptor, stored_length
from proxy.crypto.signing import encode_signature
from proxy.s3.errors import S3Error
from proxy.s3.headers import etag_value
from proxy.store.backend import BackendResponse
from proxy.store.bodies import ranged, total_length
from proxy.store.gateway import Gateway
from proxy.store.records import ManifestMissing, drop_record, put_record, read_manifest
from proxy.store.reserved import RESERVED_PREFIX
from proxy.store.signatures import MANIFEST_SIGNATURE, serves_signed, sign_manifest

log = logging.getLogger(__name__)

PENDING_PREFIX = RESERVED_PREFIX + "pc/"

#: The largest pending record read (a manifest of 10,000 parts is about 1 MiB).
MAX_PENDING = 4 * 1024 * 1024

_MD5 = re.compile(r"^[0-9a-f]{32}$")


def pending_key(key: str, salt: bytes) -> str:
    """Where the pending record of the upload into `key` whose envelope has this salt lives."""
    return f"{PENDING_PREFIX}{hashlib.sha256(key.encode()).hexdigest()}/{salt.hex()}"


async def put_pending(
    gw: Gateway,
    bucket: str,
    key: str,
    backend_id: str | None,
    salt: bytes,
    manifest: Manifest,
    sealed: bytes,
    signature: str,
) -> None:
    """Store the pending record of a completion about to be made (with its backend upload id,
    if it completes an upload, so that `sealgate gc` keeps it while the upload can still be
    completed)."""
    extra = {"x-amz-meta-sg-upload": quote(backend_id, safe="")} if backend_id else {}
    await put_record(gw, bucket, key, manifest, sealed, signature, name=pending_key(key, salt), extra=extra)


async def drop_pending(gw: Gateway, bucket: str, key: str, salt: bytes) -> None:
    """Delete a pending record once the manifest it became is stored."""
    await drop_record(gw, bucket, pending_key(key, salt), f"the pending record of /{bucket}/{key}")


def made_by(resp: BackendResponse, salt: bytes) -> bool:
    """Whether the object `resp` describes is the one the upload (or copy) with this salt made."""
    try:
        return Envelope.from_metadata(resp.user_metadata()).salt == salt
    except FormatError:
        return False


async def find_manifest(
    gw: Gateway,
    bucket: str,
    key: str,
    resp: BackendResponse,
    total: int,
    data_key: bytes,
    env: Envelope,
    check: Callable[[bytes, Mapping[str, str]], None] | None,
    version: str | None = None,
    *,
    cached: bool = False,
) -> Manifest:
    """The manifest of the multipart object `resp` describes (`total` stored bytes; that `version`
    of it): the one named by its ETag, else the one its pending record becomes. Kept in the
    gateway's read cache (by ETag, salt and key commitment), and served from it when `cached`
    (range reads); every other read fetches and checks the record again, and a failure drops
    what the cache held of the object."""
    etag = resp.headers.get("ETag", "")
    known = gw.reads.manifest(bucket, key, version, etag, env) if cached else None
    if known is not None:
        return known
    try:
        try:
            manifest = await read_manifest(gw, bucket, key, resp, data_key, env.salt, check)
        except ManifestMissing:
            manifest = await finish_pending(gw, bucket, key, resp, total, data_key, env, check, version)
    except IntegrityError:
        gw.reads.forget(bucket, key, version)
        raise
    gw.reads.remember(bucket, key, version, etag, env, manifest)
    return manifest


async def finish_pending(
    gw: Gateway,
    bucket: str,
    key: str,
    resp: BackendResponse,
    total: int,
    data_key: bytes,
    env: Envelope,
    check: Callable[[bytes, Mapping[str, str]], None] | None,
    version: str | None = None,
) -> Manifest:
    """Finish the completion of an object that has no manifest under its ETag's name from its
    pending record, and store that manifest (when its key's readers would accept what this
    gateway signs). ManifestMissing without a pending record; IntegrityError when the object is
    not the one the record describes."""
    rec = await gw.backend.request("GET", bucket, pending_key(key, env.salt))
    if rec.status == 404:
        rec.release()
        raise ManifestMissing("the multipart manifest for this object is missing")
    if rec.status >= 300:
        raise await rec.error()
    try:
        sealed = await rec.raw.content.read(MAX_PENDING + 1)
    finally:
        rec.release()
    if len(sealed) > MAX_PENDING:
        raise IntegrityError("the pending manifest record is too large")
    meta = rec.user_metadata()
    if check is not None:
        check(sealed, meta)
    pending = Manifest.open(data_key, env.salt, sealed)
    if stored_length(pending, Layout(env.segment_size)) != total:
        raise IntegrityError("stored size differs from the manifest's parts")
    etag = etag_value(resp.headers.get("ETag", ""))
    if pending.backend_etag == etag:
        manifest, body, signature = pending, sealed, meta.get(MANIFEST_SIGNATURE, "")
    else:
        await verify_stored(gw, bucket, key, resp.headers.get("ETag", ""), total, data_key, env, pending, version)
        manifest = dataclasses.replace(pending, backend_etag=etag)
        body = manifest.seal(data_key, env.salt)
        if not serves_signed(gw, env.key_ref):
            return manifest  # served, but not stored: this key's readers would refuse what we sign
        signature = encode_signature(sign_manifest(gw, env, bucket, key, body))
    try:
        await put_record(gw, bucket, key, manifest, body, signature)
    except S3Error as exc:
        log.warning("could not store the finished manifest of /%s/%s: %s", bucket, key, exc.message)
        return manifest
    await drop_pending(gw, bucket, key, env.salt)
    log.info("finished the interrupted completion of /%s/%s", bucket, key)
    return manifest


async def verify_stored(
    gw: Gateway,
    bucket: str,
    key: str,
    etag: str,
    total: int,
    data_key: bytes,
    env: Envelope,
    manifest: Manifest,
    version: str | None = None,
) -> None:
    """Read the whole stored object (the one with this backend `etag`) once: IntegrityError unless
    every part is the one `manifest` lists (its stored bytes' MD5 where the listed backend ETag is
    one) and every segment, part header and digest slot authenticates."""
    layout = Layout(env.segment_size)
    decryptor = MultipartDecryptor(data_key, env.salt, layout, manifest, 0, manifest.size, full=True)
    lengths = [part_ciphertext_length(layout, p.length) for p in manifest.parts]
    listed = list(manifest.part_etags) or [""] * len(lengths)
    index, left, digest = 0, lengths[0] if lengths else 0, hashlib.md5()
    source = await ranged(gw, bucket, key, etag, 0, total, version=version)
    try:
        first, _ = total_length(source)
        if first != 0:
            raise IntegrityError("the backend did not send the whole object")
        remaining = total
        async for chunk in source.raw.content.iter_any():
            view = memoryview(chunk)[:remaining]
            remaining -= len(view)
            decryptor.feed(view)
            while view and index < len(lengths):
                piece, view = view[:left], view[left:]
                digest.update(piece)
                left -= len(piece)
                if left == 0:
                    want = listed[index].lower()
                    if _MD5.match(want) and digest.hexdigest() != want:
                        raise IntegrityError(f"part {manifest.parts[index].number} is not the part that was completed")
                    index += 1
                    left, digest = (lengths[index] if index < len(lengths) else 0), hashlib.md5()
            if remaining == 0:
                break
        if remaining:
            raise IntegrityError("the stored object is shorter than its manifest")
        decryptor.finish()
    finally:
        source.close()
