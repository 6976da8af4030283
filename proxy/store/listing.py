"""What a bucket holds on the backend, as the operator tools walk it: the objects under a prefix,
and whether any stored version of an object still has a given body."""

from __future__ import annotations

from collections.abc import AsyncIterator

from proxy.s3.headers import etag_value
from proxy.s3.xml import child_text, iter_named, parse, qname
from proxy.store.gateway import Gateway
from proxy.store.reserved import RESERVED_PREFIX


async def list_keys(gw: Gateway, bucket: str, prefix: str, *, reserved: bool = False) -> AsyncIterator[tuple[str, int]]:
    """(key, stored size) of every object under `prefix`, across listing pages; sealgate's own
    records (under the reserved prefix) only with `reserved`."""
    token = ""
    while True:
        query = [("list-type", "2"), ("prefix", prefix)]
        if token:
            query.append(("continuation-token", token))
        resp, raw_body = await gw.backend.read_ok("GET", bucket, None, query=query)
        root = parse(raw_body)
        for item in root.iter(qname("Contents")):
            key = item.findtext(qname("Key")) or ""
            if reserved or not key.startswith(RESERVED_PREFIX):
                yield key, int(item.findtext(qname("Size")) or 0)
        token = root.findtext(qname("NextContinuationToken")) or ""
        if not token:
            return


async def versions_of(gw: Gateway, bucket: str, key: str) -> list[tuple[str, str]] | None:
    """(version id, backend ETag) of every stored version of `key`, delete markers left out; None
    when the backend cannot tell (an error). A backend that does not implement version listing
    (501, as `rclone serve s3`) keeps no versions but the current object: [] then."""
    found: list[tuple[str, str]] = []
    markers: list[tuple[str, str]] = []
    while True:
        resp = await gw.backend.request("GET", bucket, None, query=[("versions", ""), ("prefix", key), *markers])
        if resp.status == 501:
            resp.release()
            return []
        if resp.status >= 300:
            resp.release()
            return None
        try:
            root = parse(await resp.read())
        finally:
            resp.release()
        for version in iter_named(root, "Version"):
            if child_text(version, "Key") == key:
                found.append((child_text(version, "VersionId"), etag_value(child_text(version, "ETag"))))
        next_key, next_version = child_text(root, "NextKeyMarker"), child_text(root, "NextVersionIdMarker")
        if child_text(root, "IsTruncated").lower() != "true" or not next_key or next_key > key:
            return found
        markers = [("key-marker", next_key), ("version-id-marker", next_version)]


async def versions_with(gw: Gateway, bucket: str, key: str, etag: str) -> bool | None:
    """Whether any stored version of `key` has this backend ETag (None: the backend cannot tell).
    In a bucket that never had versioning this is just the current object; a backend without
    versions lists none (False), so callers look at the current object themselves first."""
    versions = await versions_of(gw, bucket, key)
    if versions is None:
        return None
    return any(found == etag for _, found in versions)
