"""`sealgate rewrap`: move objects to another master key without re-encrypting their bodies.

Each object's data key is unwrapped and wrapped again under the target key (same encryption
context), and only the metadata is rewritten, by an in-place server-side copy. Safe to
interrupt and re-run: an object already under the target key (its current version) is skipped,
and each object changes in one backend operation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from defusedxml import ElementTree

from proxy.crypto.format import Envelope, FormatError, Manifest, is_sealgate_object
from proxy.kms.base import KeyringError
from proxy.s3.errors import S3Error
from proxy.server.copy import _multipart_copy, _xml_call
from proxy.server.multipart import _find_text, _put_record
from proxy.server.objects import RESERVED_PREFIX, _manifest, record_key
from proxy.server.state import Gateway

S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


@dataclass
class RewrapReport:
    """What a run did."""

    rewrapped: int = 0
    bytes: int = 0
    already: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


async def list_keys(gw: Gateway, bucket: str, prefix: str) -> AsyncIterator[tuple[str, int]]:
    """(key, stored size) of every object under `prefix`, across listing pages."""
    token = ""
    while True:
        query = [("list-type", "2"), ("prefix", prefix)]
        if token:
            query.append(("continuation-token", token))
        resp, raw_body = await gw.backend.read_ok("GET", bucket, None, query=query)
        root = ElementTree.fromstring(raw_body)
        for item in root.iter(f"{S3_NS}Contents"):
            key = item.findtext(f"{S3_NS}Key") or ""
            if not key.startswith(RESERVED_PREFIX):
                yield key, int(item.findtext(f"{S3_NS}Size") or 0)
        token = root.findtext(f"{S3_NS}NextContinuationToken") or ""
        if not token:
            return


async def rewrap_object(gw: Gateway, bucket: str, key: str, to_key: str) -> str:
    """Re-wrap one object's data key under `to_key`; returns "rewrapped" or "already"."""
    head = await gw.backend.request("HEAD", bucket, key)
    head.release()
    if head.status >= 300:
        raise await head.error()
    meta = head.user_metadata()
    if not is_sealgate_object(meta):
        raise S3Error("InvalidObjectState", "not a sealgate object", 403)
    env = Envelope.from_metadata(meta)
    context = env.context(bucket, key)
    data_key = await gw.materials.unwrap(env.key_ref, env.wrapped_key, context)
    env.check_commitment(data_key)
    env.check_name(data_key, bucket, key)
    wrapped = await gw.materials.wrap(to_key, data_key, context)
    if wrapped.key_ref == env.key_ref:
        return "already"
    manifest: Manifest | None = None
    if env.layout == "multipart":
        manifest = await _manifest(gw, bucket, key, head, data_key, env.salt)
    new_env = dataclasses.replace(env, key_ref=wrapped.key_ref, wrapped_key=wrapped.wrapped)
    headers = {f"x-amz-meta-{k}": v for k, v in new_env.to_metadata().items()}
    for name in ("Content-Type", "Cache-Control", "Content-Disposition", "Content-Encoding", "Content-Language"):
        if name in head.headers:
            headers[name] = head.headers[name]
    source = "/" + bucket + "/" + key
    from urllib.parse import quote

    source = quote(source, safe="/~")
    total = int(head.headers.get("Content-Length", "0"))
    if manifest is not None or total > gw.config.backend.max_copy_bytes:
        new_etag, _ = await _multipart_copy(gw, bucket, key, headers, source, total)
    else:
        headers["x-amz-copy-source"] = source
        headers["x-amz-metadata-directive"] = "REPLACE"
        root = await _xml_call(gw, "PUT", bucket, key, headers=headers)
        new_etag = (_find_text(root, "ETag") or "").strip().strip('"')
    if manifest is not None:
        moved = Manifest(manifest.parts, new_etag, manifest.etag)
        await _put_record(gw, bucket, key, moved, moved.seal(data_key, env.salt))
        old = await gw.backend.request("DELETE", bucket, record_key(key, manifest.backend_etag))
        old.release()
    return "rewrapped"


async def rewrap(
    gw: Gateway,
    bucket: str,
    prefix: str,
    to_key: str,
    *,
    progress: Callable[[str, int], None] | None = None,
) -> RewrapReport:
    """Re-wrap every sealgate object under `prefix`; failures are reported, not fatal."""
    report = RewrapReport()
    async for key, size in list_keys(gw, bucket, prefix):
        try:
            outcome = await rewrap_object(gw, bucket, key, to_key)
        except (S3Error, KeyringError, FormatError) as exc:
            report.skipped.append((key, str(exc)))
            outcome = "skipped"
        if outcome == "rewrapped":
            report.rewrapped += 1
            report.bytes += size
        elif outcome == "already":
            report.already += 1
        if progress is not None:
            progress(outcome, size)
    return report
