"""The plaintext MD5 of each stored part of a sealgate upload, so that CompleteMultipartUpload
can check the part ETags a client sends (InvalidPart for a wrong or stale one, as S3 does) and
ListParts shows the ETags UploadPart returned. The backend lists only its own ETag of a part
(of the ciphertext), and an upload part cannot be read back before the upload is complete.

One empty record per part upload whose plaintext MD5 sealgate computed (the ETag it then gave
the client), named (docs/FORMAT.md)

    .sealgate/pt/<sha256(key)>/<sha256(backend upload id)>/<part number>.<backend ETag>.<sealed MD5>

where the MD5 is sealed under the upload's data key and bound to the part number and backend
ETag, so one listing gives them all, the backend never sees a digest of the plaintext, and no
one who can only write to the backend can vouch for another MD5."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re

from proxy.crypto.format import IntegrityError, open_part_md5, seal_part_md5
from proxy.s3.errors import S3Error
from proxy.s3.headers import etag_value
from proxy.store.gateway import Gateway
from proxy.store.listing import list_keys
from proxy.store.reserved import RESERVED_PREFIX

log = logging.getLogger(__name__)

PARTS_PREFIX = RESERVED_PREFIX + "pt/"

_NAME = re.compile(r"^([0-9]{1,5})\.([0-9A-Za-z-]{1,80})\.([0-9a-f]{88})$")

#: How many record deletions run at once.
_PARALLEL = 16


def parts_prefix(key: str, backend_id: str) -> str:
    """Where the part records of the upload with this backend id into `key` live."""
    kh, uh = hashlib.sha256(key.encode()).hexdigest(), hashlib.sha256(backend_id.encode()).hexdigest()
    return f"{PARTS_PREFIX}{kh}/{uh}/"


async def record_part(
    gw: Gateway,
    bucket: str,
    key: str,
    backend_id: str,
    data_key: bytes,
    salt: bytes,
    number: int,
    backend_etag: str,
    md5_hex: str,
) -> None:
    """Record that the part `number` stored with `backend_etag` has this plaintext MD5; the
    backend's error if it cannot be stored (the UploadPart then fails, and the client retries)."""
    etag = etag_value(backend_etag)
    sealed = seal_part_md5(data_key, salt, number, etag, bytes.fromhex(md5_hex))
    name = f"{parts_prefix(key, backend_id)}{number}.{etag}.{sealed.hex()}"
    resp = await gw.backend.request("PUT", bucket, name, headers={"Content-Type": "application/octet-stream"}, body=b"")
    if resp.status >= 300:
        raise await resp.error()
    resp.release()


async def _names(gw: Gateway, bucket: str, prefix: str) -> list[str]:
    """Every record under `prefix`."""
    return [name async for name, _ in list_keys(gw, bucket, prefix, reserved=True)]


async def recorded_parts(
    gw: Gateway, bucket: str, key: str, backend_id: str, data_key: bytes, salt: bytes
) -> tuple[dict[tuple[int, str], str], list[str]]:
    """{(part number, backend ETag): plaintext MD5} of the upload's authentic part records, and
    the names of all its records (to delete once the upload ends)."""
    found: dict[tuple[int, str], str] = {}
    prefix = parts_prefix(key, backend_id)
    names = await _names(gw, bucket, prefix)
    for name in names:
        m = _NAME.match(name[len(prefix) :])
        if m is None:
            continue
        number, etag = int(m.group(1)), m.group(2)
        try:
            found[(number, etag)] = open_part_md5(data_key, salt, number, etag, bytes.fromhex(m.group(3))).hex()
        except IntegrityError:
            log.warning("ignoring a part record of /%s/%s that does not authenticate", bucket, key)
    return found, names


async def drop_parts(gw: Gateway, bucket: str, names: list[str]) -> None:
    """Delete an ended upload's part records. Failures are only logged: the request that ended
    the upload has succeeded, and `sealgate gc` removes what is left over."""

    async def one(name: str) -> None:
        try:
            resp = await gw.backend.request("DELETE", bucket, name)
            resp.release()
        except S3Error as exc:
            log.warning("could not delete the part record %s: %s", name, exc.message)

    for start in range(0, len(names), _PARALLEL):
        await asyncio.gather(*(one(n) for n in names[start : start + _PARALLEL]))


async def drop_upload_parts(gw: Gateway, bucket: str, key: str, backend_id: str) -> None:
    """Delete every part record of an upload (after an abort, or a retried completion)."""
    try:
        names = await _names(gw, bucket, parts_prefix(key, backend_id))
    except S3Error as exc:
        log.warning("could not list the part records of /%s/%s: %s", bucket, key, exc.message)
        return
    await drop_parts(gw, bucket, names)
