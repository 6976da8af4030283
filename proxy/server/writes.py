"""What a write request asks of the object it replaces (If-Match / If-None-Match), and the
store step every single-part write shares (PutObject, POST Object)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from aiohttp import web

from proxy.access.authorize import Caller
from proxy.crypto.format import LAYOUT_SINGLE, stream_key
from proxy.crypto.segments import StreamEncryptor
from proxy.s3.headers import WRITE_ANSWER_HEADERS, stored_headers
from proxy.server.state import CALLER
from proxy.store import objects as store
from proxy.store import s3ec
from proxy.store.backend import version_ids
from proxy.store.bodies import SealableBody, send_sealed
from proxy.store.gateway import Gateway

#: The backend headers `write_conditions` gave for this request, when they were worked out
#: before 100 Continue.
WRITE_CONDITIONS = web.RequestKey("sealgate.write_conditions", dict[str, str])


async def write_conditions(
    gw: Gateway, request: web.Request, bucket: str, key: str, *, version: str | None = None
) -> dict[str, str]:
    """Backend headers that carry out the request's If-Match / If-None-Match on a write
    (`proxy.store.objects.write_conditions`)."""
    h = request.headers
    return await store.write_conditions(
        gw, request[CALLER], bucket, key, h.get("If-Match"), h.get("If-None-Match"), version=version
    )


class WrittenBody(SealableBody, Protocol):
    """A client's plaintext for a single-part object: its declared Content-MD5, if any, and
    whether its MD5 is wanted for the ETag anyway."""

    @property
    def content_md5(self) -> bytes | None: ...

    @property
    def md5_wanted(self) -> bool: ...


async def store_single(
    gw: Gateway,
    caller: Caller,
    bucket: str,
    key: str,
    body: WrittenBody,
    meta: Mapping[str, str],
    conditions: Mapping[str, str],
) -> tuple[str, dict[str, str]]:
    """Seal `body` and store it as one object (in an s3ec-v3 bucket, in that format), with the
    headers `meta` asks to store and the backend `conditions` of the write; (the ETag the
    client is shown, the version headers of the answer)."""
    rule = gw.config.rule_for_bucket(bucket, key)
    if rule is not None and rule.format == "s3ec-v3":
        headers = {**s3ec.object_headers(meta, {}), **conditions}
        return await s3ec.write_s3ec_v3(gw, caller, bucket, key, body, body.length, headers), {}
    if body.content_md5 is not None:
        etag_field: str | None = body.content_md5.hex()
    else:
        etag_field = store.ETAG_TAIL if body.md5_wanted else None
    data_key, env = await store.new_envelope(
        gw, caller, bucket, key, meta, layout=LAYOUT_SINGLE, etag_field=etag_field, size=body.length
    )
    headers = {f"x-amz-meta-{k}": v for k, v in env.to_metadata().items()}
    headers.update(stored_headers(meta))
    headers.update(conditions)
    encryptor = StreamEncryptor(stream_key(data_key, env.salt, 0), env.segment_size)
    digest = etag_field == store.ETAG_TAIL
    resp = await send_sealed(gw, bucket, key, body, encryptor, digest_md5=digest, headers=headers)
    if digest:
        assert body.md5 is not None
        etag = f'"{body.md5.hex()}"'
    elif etag_field is not None:
        etag = f'"{etag_field}"'
    else:
        etag = store.opaque_etag(resp.headers.get("ETag", ""))
    return etag, version_ids(resp.headers, WRITE_ANSWER_HEADERS)
