"""Copies of sealgate objects: the body is copied by the backend, never streamed through sealgate.

The body's keys derive from the data key and the object's salt, not from its name, so a copy
needs only the data key re-wrapped for the destination's encryption context (and, with
``REPLACE``, new sealed metadata). The backend copies the ciphertext server-side.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple
from xml.etree.ElementTree import Element

from proxy.s3.errors import S3Error
from proxy.s3.headers import SSE_ANSWER_HEADERS, VERSION_HEADERS, etag_value, quoted
from proxy.s3.routing import parse_copy_source
from proxy.s3.xml import complete_upload, find_text, parse, raise_if_error
from proxy.store.backend import version_ids, version_query
from proxy.store.gateway import Gateway
from proxy.store.objects import last_modified


async def xml_call(
    gw: Gateway,
    method: str,
    bucket: str,
    key: str,
    *,
    query: list[tuple[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> tuple[Element, dict[str, str]]:
    """A backend call answered with XML, and the answer's version-id headers; S3's errors
    inside a 200 become S3Errors too."""
    resp, answer = await gw.backend.read_ok(method, bucket, key, query=query or [], headers=headers or {}, body=body)
    root = parse(answer)
    raise_if_error(root)
    return root, version_ids(resp.headers, (*VERSION_HEADERS, *SSE_ANSWER_HEADERS))


class Copied(NamedTuple):
    """What a backend copy made: its backend ETag, LastModified, and version ids (if any)."""

    etag: str
    last_modified: str
    versions: dict[str, str]


async def multipart_copy(
    gw: Gateway,
    bucket: str,
    key: str,
    headers: dict[str, str],
    source: str,
    total: int,
    *,
    pin: dict[str, str],
    conditions: dict[str, str],
) -> Copied:
    """Copy `source` into `key` with UploadPartCopy in parts of at most 5 GiB; every part is
    pinned to the source's ETag (`pin`), the completion carries the destination `conditions`."""
    root, _ = await xml_call(gw, "POST", bucket, key, query=[("uploads", "")], headers=headers)
    upload = find_text(root, "UploadId") or ""
    versions: dict[str, str] = {}
    try:
        parts = []
        step = gw.config.backend.max_copy_bytes
        for number, start in enumerate(range(0, max(total, 1), step), 1):
            end = min(start + step, total) - 1
            part_headers = {"x-amz-copy-source": source, **pin}
            if total:
                part_headers["x-amz-copy-source-range"] = f"bytes={start}-{end}"
            result, part_versions = await xml_call(
                gw, "PUT", bucket, key, query=[("partNumber", str(number)), ("uploadId", upload)], headers=part_headers
            )
            versions.update({k: v for k, v in part_versions.items() if k == "x-amz-copy-source-version-id"})
            parts.append((number, etag_value(find_text(result, "ETag") or "")))
        body = complete_upload(parts)
        done, done_versions = await xml_call(
            gw, "POST", bucket, key, query=[("uploadId", upload)], headers=conditions, body=body
        )
        versions.update({k: v for k, v in done_versions.items() if k == "x-amz-version-id"})
    except BaseException:
        abort = await gw.backend.request("DELETE", bucket, key, query=[("uploadId", upload)])
        abort.release()
        raise
    head = await gw.backend.request("HEAD", bucket, key)
    head.release()
    etag = etag_value(find_text(done, "ETag") or head.headers.get("ETag") or "")
    modified = last_modified(head) or datetime.now(UTC)
    return Copied(etag, modified.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"), versions)


class SourceChanged(S3Error):
    """The copy source was overwritten between sealgate reading its envelope and the backend
    copying its body: the backend refused, and nothing was written."""

    def __init__(self) -> None:
        super().__init__("ServiceUnavailable", "the copy source changed while it was copied; retry", 503)


async def backend_copy(
    gw: Gateway,
    bucket: str,
    key: str,
    headers: dict[str, str],
    source: str,
    total: int,
    *,
    multipart: bool,
    source_etag: str,
    conditions: dict[str, str] | None = None,
) -> Copied:
    """Copy `source` (`total` bytes) into `key` server-side with `headers` as its metadata.

    `headers` hold the envelope of the source as sealgate read it, so the backend must copy
    that very body: the copy is pinned to `source_etag` (the backend's ETag of what was read)
    with x-amz-copy-source-if-match. If the source was overwritten since, the backend refuses
    and `SourceChanged` is raised; without the pin, a body would be stored with another
    body's data key and could never be read again. `conditions` are the destination's
    If-Match / If-None-Match as `write_conditions` gives them."""
    pin = {"x-amz-copy-source-if-match": quoted(source_etag)}
    conditions = conditions or {}
    try:
        if multipart or total > gw.config.backend.max_copy_bytes:
            # Multipart objects stay multipart (their ETag form tells listings so), and the backend
            # copies at most 5 GiB in one CopyObject: both go part by part, still server-side.
            return await multipart_copy(gw, bucket, key, headers, source, total, pin=pin, conditions=conditions)
        copy_headers = {
            **headers,
            **conditions,
            **pin,
            "x-amz-copy-source": source,
            "x-amz-metadata-directive": "REPLACE",
        }
        root, versions = await xml_call(gw, "PUT", bucket, key, headers=copy_headers)
    except S3Error as exc:
        if exc.status == 412 and await _source_etag(gw, source) != etag_value(source_etag):
            raise SourceChanged() from exc
        raise
    return Copied(etag_value(find_text(root, "ETag") or ""), find_text(root, "LastModified") or "", versions)


async def _source_etag(gw: Gateway, source: str) -> str | None:
    """The backend's ETag of a copy source now (None if it is gone)."""
    src_bucket, src_key, version = parse_copy_source(source)
    head = await gw.backend.request("HEAD", src_bucket, src_key, query=version_query(version))
    head.release()
    return etag_value(head.headers.get("ETag", "")) if head.status < 300 else None
