"""DeleteBucket with sealgate's own records in the bucket.

The backend counts sealgate's records under the reserved prefix (manifests, pending records,
upload records) as objects, so a bucket whose every visible object is gone would never be
empty to it. When the backend answers BucketNotEmpty and no visible object, version or delete
marker is left, the records (every version of them) are listed, the bucket is checked again for
visible objects, and only then are the listed records removed and the bucket deleted. A record
written after that listing, by an upload or a completion racing the delete, stays: the delete
then fails with BucketNotEmpty, as S3's would with the object that is arriving; and a manifest
can only be listed once its object is visible, which the second check sees. Uploads in progress
do not keep a bucket (S3, MinIO, moto and rclone delete it with them), so their records go too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from proxy.s3.xml import child_text, iter_named, parse
from proxy.store.gateway import Gateway
from proxy.store.listing import list_keys
from proxy.store.reserved import RESERVED_PREFIX

#: How many record deletions run at once.
_PARALLEL = 16


async def delete_bucket(gw: Gateway, bucket: str) -> None:
    """Delete `bucket` on the backend, removing sealgate's records first when they are all that
    keeps it (see the module's docstring); the backend's error otherwise."""
    resp = await gw.backend.request("DELETE", bucket, None)
    if resp.status < 300:
        resp.release()
        return
    error = await resp.error()
    if error.code != "BucketNotEmpty":
        raise error
    if await _holds_visible(gw, bucket):
        raise error
    doomed = [(key, version) async for key, version in _records(gw, bucket)]
    if await _holds_visible(gw, bucket):
        raise error  # an object arrived meanwhile: its records are among those listed
    for start in range(0, len(doomed), _PARALLEL):
        await asyncio.gather(*(_delete(gw, bucket, key, version) for key, version in doomed[start : start + _PARALLEL]))
    again = await gw.backend.request("DELETE", bucket, None)
    if again.status >= 300:
        raise await again.error()
    again.release()


async def _listing(gw: Gateway, bucket: str, query: list[tuple[str, str]]) -> tuple[int, bytes]:
    resp = await gw.backend.request("GET", bucket, None, query=query)
    try:
        if resp.status == 501:
            return 501, b""
        if resp.status >= 300:
            raise await resp.error()
        return resp.status, await resp.read()
    finally:
        resp.release()


async def _holds_visible(gw: Gateway, bucket: str) -> bool:
    """Whether anything but sealgate's records is in the bucket: an object, or in a bucket that
    keeps versions any version or delete marker. With ``/`` as delimiter all the records fold
    into one common prefix, so the first entries tell."""
    status, body = await _listing(gw, bucket, [("versions", ""), ("delimiter", "/"), ("max-keys", "2")])
    if status == 501:  # a backend without versions
        status, body = await _listing(gw, bucket, [("list-type", "2"), ("delimiter", "/"), ("max-keys", "2")])
    root = parse(body)
    for name in ("Contents", "Version", "DeleteMarker"):
        if any(True for _ in iter_named(root, name)):
            return True
    return any(child_text(p, "Prefix") != RESERVED_PREFIX for p in iter_named(root, "CommonPrefixes"))


async def _records(gw: Gateway, bucket: str) -> AsyncIterator[tuple[str, str | None]]:
    """(key, version id or None) of every stored version of every record."""
    markers: list[tuple[str, str]] = []
    while True:
        status, body = await _listing(gw, bucket, [("versions", ""), ("prefix", RESERVED_PREFIX), *markers])
        if status == 501:
            break
        root = parse(body)
        for name in ("Version", "DeleteMarker"):
            for el in iter_named(root, name):
                version = child_text(el, "VersionId")
                yield child_text(el, "Key"), (version or None)
        next_key, next_version = child_text(root, "NextKeyMarker"), child_text(root, "NextVersionIdMarker")
        if child_text(root, "IsTruncated").lower() != "true" or not next_key:
            return
        markers = [("key-marker", next_key), ("version-id-marker", next_version)]
    async for key, _ in list_keys(gw, bucket, RESERVED_PREFIX, reserved=True):  # a backend without versions
        yield key, None


async def _delete(gw: Gateway, bucket: str, key: str, version: str | None) -> None:
    query = [("versionId", version)] if version else []
    resp = await gw.backend.request("DELETE", bucket, key, query=query)
    if resp.status >= 300 and resp.status != 404:
        raise await resp.error()
    resp.release()
