"""What a write request asks of the object it replaces (If-Match / If-None-Match)."""

from __future__ import annotations

from aiohttp import web

from proxy.server.state import CALLER
from proxy.store import objects as store
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
