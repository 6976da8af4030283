"""Browser requests through sealgate (CORS), answered from the bucket's CORS rules as S3 answers
them: a preflight (``OPTIONS``, which browsers send unsigned) before any signature check, and
the ``Access-Control-*`` headers on the answers to requests that carry an ``Origin``. The rules
are the bucket's own (PutBucketCors passes through to the backend), read as `proxy.store.cors`
keeps them."""

from __future__ import annotations

from aiohttp import web

from proxy.s3.cors import NOT_ALLOWED, match, preflight_headers, response_headers
from proxy.s3.errors import S3Error
from proxy.s3.routing import route
from proxy.store.gateway import Gateway

#: The bucket a request names, set once it is routed (for the CORS headers of its answer).
BUCKET = web.RequestKey("sealgate.bucket", str)


async def preflight(gw: Gateway, request: web.Request) -> web.StreamResponse:
    """A CORS preflight: 200 with what the first matching rule allows, else 403 as S3 answers."""
    origin = request.headers.get("Origin")
    method = request.headers.get("Access-Control-Request-Method")
    if not origin:
        raise S3Error("BadRequest", "Insufficient information. Origin request header needed.", 400)
    if not method:
        raise S3Error("BadRequest", "Invalid Access-Control-Request-Method: null", 400)
    path = request.raw_path.split("?", 1)[0]
    r = route("HEAD", path, {}, request.headers.get("Host", ""), gw.config.server.virtual_host_domains)
    if r.bucket is None:
        raise S3Error("BadRequest", "a CORS preflight names a bucket", 400)
    rules = await gw.cors.rules_for(gw.backend, r.bucket)
    if not rules:
        raise S3Error("AccessForbidden", "CORSResponse: CORS is not enabled for this bucket.", 403)
    wanted = [h.strip() for h in request.headers.get("Access-Control-Request-Headers", "").split(",") if h.strip()]
    rule = match(rules, origin, method, wanted)
    if rule is None:
        raise S3Error("AccessForbidden", NOT_ALLOWED, 403)
    return web.Response(status=200, headers=preflight_headers(rule, origin, wanted))


async def add_headers(gw: Gateway, request: web.Request, response: web.StreamResponse) -> None:
    """The Access-Control-* headers of an answer to a request with an Origin its bucket's rules
    allow (errors included, as S3 sends them)."""
    origin = request.headers.get("Origin")
    bucket = request.get(BUCKET)
    if not origin or bucket is None or request.method == "OPTIONS":
        return
    rules = await gw.cors.rules_for(gw.backend, bucket)
    rule = match(rules, origin, request.method) if rules else None
    if rule is not None:
        response.headers.update(response_headers(rule, origin))
