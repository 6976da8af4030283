"""The aiohttp application: request ids, S3 errors, authentication, routing to handlers."""

from __future__ import annotations

import logging
import os
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from proxy.access.actions import needs
from proxy.access.authorize import Caller, decide, require
from proxy.audit import AuditContext, audit_context
from proxy.crypto.format import FormatError
from proxy.kms.base import KeyringError
from proxy.metrics import ACTIVE, BYTES_OUT, render, request_finished
from proxy.net.forwarded import trusted_proxies
from proxy.s3.errors import S3Error
from proxy.s3.headers import refuse_reserved_metadata
from proxy.s3.routing import Op, Route, route
from proxy.s3.sigv4 import ClientCredentials, VerifiedRequest, anonymous_request, is_unsigned, verify_request
from proxy.server import admin, bucket_access, buckets, copy, cors, multipart, objects, post_object
from proxy.server.budget import VERIFY_FIRST_BUDGET, MemoryBudget
from proxy.server.direct import closes_connection
from proxy.server.listener import mark_authenticated, request_from
from proxy.server.proxied import client_address
from proxy.server.state import CALLER, IDENTITY, REQUEST_ID
from proxy.server.tls import check_client_certificate
from proxy.server.writes import WRITE_CONDITIONS, write_conditions
from proxy.store.errors import keyring_error
from proxy.store.gateway import Gateway
from proxy.store.records import check_reserved
from proxy.wiring import started

log = logging.getLogger("sealgate.access")

GATEWAY = web.AppKey("gateway", Gateway)
OPERATION = web.RequestKey("sealgate.operation", str)
HEALTH_PREFIX = "/-/"
_VERIFIED = web.RequestKey("sealgate.verified", VerifiedRequest)
_ROUTE = web.RequestKey("sealgate.route", Route)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# Request ids need to be unique, not secret: a generator seeded once per process is enough
# (secrets.token_hex costs a getrandom syscall per request).
_ids = random.Random(secrets.randbits(128))
os.register_at_fork(after_in_child=lambda: _ids.seed(secrets.randbits(128)))  # workers differ


def _request_id(request: web.Request) -> str:
    rid = request.get(REQUEST_ID)
    if rid is None:
        rid = f"{_ids.getrandbits(64):016X}"
        request[REQUEST_ID] = rid
    assert isinstance(rid, str)
    return rid


def error_response(request: web.Request, err: S3Error) -> web.Response:
    """The S3 XML error for `err` (no body for HEAD and 304, as S3 does)."""
    rid = _request_id(request)
    headers = {**err.headers, "x-amz-request-id": rid, "x-amz-id-2": rid}
    if request.method == "HEAD" or err.status == 304:
        return web.Response(status=err.status, headers=headers)
    body = err.to_xml(rid, resource=err.resource or request.path)
    headers["Content-Type"] = "application/xml"
    return web.Response(status=err.status, body=body, headers=headers)


_INTERNAL = S3Error("InternalError", "We encountered an internal error. Please try again.")


@web.middleware
async def s3_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes an S3 XML error; every response carries a request id."""
    rid = _request_id(request)
    start = time.monotonic()
    ACTIVE.inc()
    try:
        refused = _admit_client(request)
        resp = refused if refused is not None else await handler(request)
    except S3Error as err:
        resp = error_response(request, err)
    except KeyringError as err:
        resp = error_response(request, keyring_error(err))
    except FormatError as err:
        resp = error_response(request, S3Error("ObjectIntegrityError", str(err), 500))
    except web.HTTPException as exc:
        code = {404: "NoSuchKey", 405: "MethodNotAllowed", 413: "EntityTooLarge"}.get(exc.status, "InvalidRequest")
        resp = error_response(request, S3Error(code, exc.reason, exc.status))
    except ConnectionError as exc:
        if not _client_gone(request, exc):
            log.exception("unhandled error in request %s", rid)
            resp = error_response(request, _INTERNAL)
        else:
            # The client closed the connection (a download it stopped reading): not our error,
            # and nothing can be answered on it.
            client = client_of(request) or "-"
            log.info("%s %s %s %s: the client closed the connection", rid, client, request.method, request.path)
            raise
    except Exception:
        log.exception("unhandled error in request %s", rid)
        resp = error_response(request, _INTERNAL)
    finally:
        ACTIVE.dec()
    if not resp.prepared:
        resp.headers.setdefault("x-amz-request-id", rid)
        resp.headers.setdefault("x-amz-id-2", rid)
    operation = request.get(OPERATION, "Health" if request.path.startswith(HEALTH_PREFIX) else "Unrouted")
    elapsed = time.monotonic() - start
    request_finished(operation, resp.status, elapsed)
    BYTES_OUT.inc(resp.body_length)
    log.info(
        "%s %s %s %s %s %s %.1fms",  # who (address, client) asked what, and how it ended
        rid,
        client_of(request) or "-",
        request.get(IDENTITY) or "-",
        request.method,
        request.path,
        resp.status,
        (time.monotonic() - start) * 1000,
    )
    return resp


def _client_gone(request: web.Request, exc: ConnectionError) -> bool:
    """Whether `exc` is the client's connection ending: a reset, or any connection error once
    the client's transport is gone (aiohttp's paused writer says only "Connection lost")."""
    transport = request.transport
    return isinstance(exc, ConnectionResetError) or transport is None or transport.is_closing()


def client_of(request: web.Request) -> str | None:
    """The client's address, behind trusted proxies too (proxy/server/proxied.py)."""
    return client_address(request, trusted_proxies(request.app[GATEWAY].config.server.trusted_proxies))


def _admit_client(request: web.Request) -> web.Response | None:
    """Work out the client's address first. Behind a trusted proxy, the connection counts against
    that address's anonymous cap from here on, as the client's own connection would: None, or
    the refusal (503, connection closed) if that cap is full and none from there can give way."""
    trusted = trusted_proxies(request.app[GATEWAY].config.server.trusted_proxies)
    client = client_address(request, trusted)
    if not trusted or request.remote not in trusted or request_from(request, client, trusted):
        return None
    resp = error_response(request, S3Error("SlowDown", "too many connections from your address", 503))
    resp.force_close()
    return resp


def _authenticate(request: web.Request) -> VerifiedRequest:
    verified = request.get(_VERIFIED)
    if isinstance(verified, VerifiedRequest):
        return verified
    gw = request.app[GATEWAY]
    if gw.config.access.anonymous and is_unsigned(request.raw_path, request.headers):
        verified = anonymous_request(request.headers)
        check_client_certificate(gw.config, _peercert(request), verified.identity)
        request[_VERIFIED] = verified
        request[IDENTITY] = verified.identity
        return verified
    verified = verify_request(
        request.method,
        request.raw_path,
        request.headers,
        gw_lookup(gw),
        datetime.now(UTC),
        max_skew=timedelta(seconds=gw.config.server.client_max_skew_seconds),
        virtual_host_domains=gw.config.server.virtual_host_domains,
        presign_max_seconds=gw.config.server.presign_max_seconds,
    )
    # Mutual TLS: a client certificate and the SigV4 key must name the same client.
    check_client_certificate(gw.config, _peercert(request), verified.identity)
    request[_VERIFIED] = verified
    request[IDENTITY] = verified.identity
    mark_authenticated(request)
    return verified


def _peercert(request: web.Request) -> Any:
    return request.transport.get_extra_info("peercert") if request.transport is not None else None


def gw_lookup(gw: Gateway) -> Callable[[str], ClientCredentials | None]:
    """Access key id -> credentials of a configured client."""

    def lookup(access_key_id: str) -> ClientCredentials | None:
        client = gw.config.client_by_access_key(access_key_id)
        if client is None:
            return None
        return ClientCredentials(
            access_key_id=client.access_key_id,
            secret_access_key=client.secret_access_key.get_secret_value(),
            identity=client.name,
        )

    return lookup


def _route(request: web.Request) -> Route:
    """The S3 operation, bucket and key of a request (worked out once)."""
    r = request.get(_ROUTE)
    if isinstance(r, Route):
        return r
    gw = request.app[GATEWAY]
    r = request[_ROUTE] = route(
        request.method,
        request.raw_path.split("?", 1)[0],
        request.query,
        request.headers.get("Host", ""),
        gw.config.server.virtual_host_domains,
        request.headers,
    )
    return r


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """Check what can be checked before telling the client to send its body (Expect:
    100-continue): the signature, that the operation is one sealgate serves, and a PutObject's
    If-Match / If-None-Match, so that a request bound to fail does not send its body first."""
    if _form_route(request) is not None and request.headers.get("Expect", "").lower() == "100-continue":
        # A form upload's signature is its policy's, in the body: nothing to check before it.
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
        return None
    try:
        if not request.path.startswith(HEALTH_PREFIX) or request.path.startswith(admin.PREFIX):
            _authenticate(request)
        if not request.path.startswith((HEALTH_PREFIX, admin.PREFIX)):
            r = _route(request)
            _refuse_sse_c(request)
            _refuse_reserved_metadata(request, r)
            await _authorize(request, r, _authenticate(request))
            conditional = "If-Match" in request.headers or "If-None-Match" in request.headers
            if r.operation is Op.PUT_OBJECT and conditional and r.bucket and r.key:
                check_reserved(r.key)
                gw = request.app[GATEWAY]
                request[WRITE_CONDITIONS] = await write_conditions(gw, request, r.bucket, r.key)
    except S3Error as err:
        resp = error_response(request, err)
        resp.force_close()
        return resp
    if request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # As aiohttp's own handler does: the interim response is not part of the body size.
        request.writer.output_size = 0
        return None
    return error_response(request, S3Error("InvalidRequest", "unsupported Expect header", 417))


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Authenticate, route and run one S3 request."""
    if request.path.startswith(admin.PREFIX):
        request[OPERATION] = "Admin"
        return await admin.handle(request.app[GATEWAY], request, _authenticate(request))
    if request.path.startswith(HEALTH_PREFIX):
        return await _health(request)
    gw = request.app[GATEWAY]
    if request.method == "OPTIONS":
        request[OPERATION] = "PreflightRequest"
        return await cors.preflight(gw, request)  # browsers send it unsigned
    if (form := _form_route(request)) is not None:
        return await _form_upload(gw, request, form)  # signed in its body, not in its headers
    verified = _authenticate(request)
    r = _route(request)
    request[OPERATION] = r.operation
    await _authorize(request, r, verified)
    if r.bucket is not None:
        # Only now: adding the bucket's CORS headers may read its rules from the backend.
        request[cors.BUCKET] = r.bucket
    return await _run(gw, request, r, verified)


async def _authorize(
    request: web.Request, r: Route, verified: VerifiedRequest, headers: Mapping[str, str] | None = None
) -> None:
    """Identity and bucket policies: every action the request needs, allowed before any backend
    or keyring call but the reading of the buckets' own access settings, which only a request
    that no identity policy denies outright makes (once per request: the Expect: 100-continue
    check may have done it already). `headers` stand in for the request's own where its
    parameters are elsewhere (a POST form's fields)."""
    if request.get(CALLER) is not None:
        return
    gw = request.app[GATEWAY]
    audit_context.set(
        AuditContext(
            identity=verified.identity,
            source=client_of(request),
            request_id=request.get(REQUEST_ID),
            bucket=r.bucket,
            object_key=r.key,
        )
    )
    caller = Caller(verified.identity, client_of(request), request.secure)
    try:
        wanted = needs(r.operation, r.bucket, r.key, request.query, request.headers if headers is None else headers)
    except KeyError:
        raise S3Error("NotImplemented", f"{r.operation} is not implemented by sealgate", 501) from None
    if any(decide(gw.config, caller, need).effect == "Deny" for need in wanted):
        require(gw.config, gw.audit, caller, wanted)  # refused (and audited) without a backend call
    held = await bucket_access.bucket_policies(gw, request, r, wanted)
    require(gw.config, gw.audit, caller, wanted, buckets=held)
    bucket_access.check_acls(request, r.operation, r.bucket, headers=headers)
    request[CALLER] = caller


#: SSE-C: a key the client keeps, without which S3 refuses to read the object. Dropping these
#: headers would leave objects readable without that key, so such requests are refused.
_SSE_C_HEADERS = (
    "x-amz-server-side-encryption-customer-algorithm",
    "x-amz-server-side-encryption-customer-key",
    "x-amz-copy-source-server-side-encryption-customer-algorithm",
    "x-amz-copy-source-server-side-encryption-customer-key",
)


def _refuse_sse_c(request: web.Request) -> None:
    if any(name in request.headers for name in _SSE_C_HEADERS):
        raise S3Error(
            "NotImplemented",
            "sealgate encrypts every object with its own keys; customer-provided keys (SSE-C) are not supported",
            501,
        )


#: The operations that store the client's ``x-amz-meta-*`` headers (CopyObject only with REPLACE).
_STORES_USER_METADATA = (Op.PUT_OBJECT, Op.CREATE_MULTIPART_UPLOAD, Op.COPY_OBJECT)


def _refuse_reserved_metadata(request: web.Request, r: Route) -> None:
    if r.operation not in _STORES_USER_METADATA:
        return
    if r.operation is Op.COPY_OBJECT and request.headers.get("x-amz-metadata-directive", "COPY").upper() != "REPLACE":
        return
    refuse_reserved_metadata(request.headers)


def _form_route(request: web.Request) -> Route | None:
    """The route of a browser form upload (PostObject, which its body authenticates), else None."""
    if not post_object.is_form_upload(request):
        return None
    try:
        r = _route(request)
    except S3Error:
        return None  # answered after authentication, as for any other request
    return r if r.operation is Op.POST_OBJECT else None


async def _form_upload(gw: Gateway, request: web.Request, r: Route) -> web.StreamResponse:
    """PostObject: authenticated and authorized by `post_object` once it has read the form's fields."""
    request[OPERATION] = r.operation

    async def authorize(routed: Route, verified: VerifiedRequest, headers: Mapping[str, str]) -> None:
        await _authorize(request, routed, verified, headers)

    return await post_object.post_object(gw, request, r, authorize, gw_lookup(gw))


Call = Callable[[Gateway, web.Request, Route, VerifiedRequest], Awaitable[web.StreamResponse]]
BucketHandler = Callable[[Gateway, web.Request, str], Awaitable[web.StreamResponse]]
ObjectHandler = Callable[[Gateway, web.Request, str, str], Awaitable[web.StreamResponse]]
SignedObjectHandler = Callable[[Gateway, web.Request, str, str, VerifiedRequest], Awaitable[web.StreamResponse]]


def _on_service(handler: Callable[[Gateway, web.Request], Awaitable[web.StreamResponse]]) -> Call:
    async def run(gw: Gateway, request: web.Request, r: Route, verified: VerifiedRequest) -> web.StreamResponse:
        return await handler(gw, request)

    return run


def _on_bucket(handler: BucketHandler) -> Call:
    async def run(gw: Gateway, request: web.Request, r: Route, verified: VerifiedRequest) -> web.StreamResponse:
        assert r.bucket is not None
        return await handler(gw, request, r.bucket)

    return run


def _on_object(handler: ObjectHandler) -> Call:
    async def run(gw: Gateway, request: web.Request, r: Route, verified: VerifiedRequest) -> web.StreamResponse:
        assert r.bucket is not None and r.key is not None
        check_reserved(r.key)
        return await handler(gw, request, r.bucket, r.key)

    return run


def _on_signed_object(handler: SignedObjectHandler) -> Call:
    """Uploads, which check the body against the signature (signed chunks, payload hash)."""

    async def run(gw: Gateway, request: web.Request, r: Route, verified: VerifiedRequest) -> web.StreamResponse:
        assert r.bucket is not None and r.key is not None
        check_reserved(r.key)
        return await handler(gw, request, r.bucket, r.key, verified)

    return run


def _bucket_setting(name: str) -> Call:
    return _on_bucket(lambda gw, request, bucket: buckets.bucket_config(gw, request, bucket, name))


def _object_property(name: str) -> Call:
    return _on_object(lambda gw, request, bucket, key: objects.object_property(gw, request, bucket, key, name))


#: Bucket settings that pass through (GET, PUT, DELETE), by sub-resource.
_BUCKET_SETTINGS: Mapping[str, tuple[Op, ...]] = {
    "tagging": (Op.GET_BUCKET_TAGGING, Op.PUT_BUCKET_TAGGING, Op.DELETE_BUCKET_TAGGING),
    "encryption": (Op.GET_BUCKET_ENCRYPTION, Op.PUT_BUCKET_ENCRYPTION, Op.DELETE_BUCKET_ENCRYPTION),
    "lifecycle": (Op.GET_BUCKET_LIFECYCLE, Op.PUT_BUCKET_LIFECYCLE, Op.DELETE_BUCKET_LIFECYCLE),
    "cors": (Op.GET_BUCKET_CORS, Op.PUT_BUCKET_CORS, Op.DELETE_BUCKET_CORS),
    "acl": (Op.GET_BUCKET_ACL, Op.PUT_BUCKET_ACL),
}

#: The handler of every operation the router serves (a test checks none is missing).
HANDLERS: Mapping[Op, Call] = {
    Op.LIST_BUCKETS: _on_service(buckets.list_buckets),
    Op.CREATE_BUCKET: _on_bucket(buckets.create_bucket),
    Op.DELETE_BUCKET: _on_bucket(buckets.delete_bucket),
    Op.HEAD_BUCKET: _on_bucket(buckets.head_bucket),
    Op.GET_BUCKET_LOCATION: _on_bucket(buckets.get_bucket_location),
    Op.LIST_OBJECTS: _on_bucket(buckets.list_objects),
    Op.LIST_OBJECTS_V2: _on_bucket(buckets.list_objects),
    Op.LIST_OBJECT_VERSIONS: _on_bucket(
        lambda gw, request, bucket: buckets.list_objects(gw, request, bucket, versions=True)
    ),
    Op.DELETE_OBJECTS: _on_bucket(buckets.delete_objects),
    Op.GET_BUCKET_VERSIONING: _bucket_setting("versioning"),
    Op.PUT_BUCKET_VERSIONING: _bucket_setting("versioning"),
    Op.GET_OBJECT_LOCK_CONFIGURATION: _bucket_setting("object-lock"),
    Op.PUT_OBJECT_LOCK_CONFIGURATION: _bucket_setting("object-lock"),
    **{op: _bucket_setting(name) for name, ops in _BUCKET_SETTINGS.items() for op in ops},
    Op.LIST_MULTIPART_UPLOADS: _on_bucket(multipart.list_uploads),
    Op.PUT_OBJECT: _on_signed_object(objects.put_object),
    Op.COPY_OBJECT: _on_object(copy.copy_object),
    Op.GET_OBJECT: _on_object(objects.get_object),
    Op.HEAD_OBJECT: _on_object(objects.head_object),
    Op.DELETE_OBJECT: _on_object(objects.delete_object),
    Op.CREATE_MULTIPART_UPLOAD: _on_object(multipart.create),
    Op.UPLOAD_PART: _on_signed_object(multipart.upload_part),
    Op.UPLOAD_PART_COPY: _on_signed_object(multipart.upload_part),  # it serves both upload formats' copies
    Op.COMPLETE_MULTIPART_UPLOAD: _on_object(multipart.complete),
    Op.ABORT_MULTIPART_UPLOAD: _on_object(multipart.abort),
    Op.LIST_PARTS: _on_object(multipart.list_parts),
    Op.GET_OBJECT_TAGGING: _object_property("tagging"),
    Op.PUT_OBJECT_TAGGING: _object_property("tagging"),
    Op.DELETE_OBJECT_TAGGING: _object_property("tagging"),
    Op.GET_OBJECT_RETENTION: _object_property("retention"),
    Op.PUT_OBJECT_RETENTION: _object_property("retention"),
    Op.GET_OBJECT_LEGAL_HOLD: _object_property("legal-hold"),
    Op.PUT_OBJECT_LEGAL_HOLD: _object_property("legal-hold"),
    Op.GET_OBJECT_ACL: _object_property("acl"),
    Op.PUT_OBJECT_ACL: _object_property("acl"),
    Op.GET_OBJECT_ATTRIBUTES: _on_object(objects.get_object_attributes),
    **{op: _on_bucket(handler) for op, handler in bucket_access.HANDLERS.items()},
    Op.POST_OBJECT: lambda gw, request, r, verified: _form_upload(gw, request, r),  # dispatch sends it first
}


async def _run(gw: Gateway, request: web.Request, r: Route, verified: VerifiedRequest) -> web.StreamResponse:
    _refuse_sse_c(request)
    _refuse_reserved_metadata(request, r)
    handler = HANDLERS.get(r.operation)
    if handler is None:
        raise S3Error("NotImplemented", f"{r.operation} is not implemented by sealgate", 501)
    return await handler(gw, request, r, verified)


async def _health(request: web.Request) -> web.StreamResponse:
    """/-/healthz: alive. /-/readyz: backend and key service reachable. /-/metrics: Prometheus."""
    if request.path == "/-/healthz":
        return web.Response(text="ok\n")
    gw = request.app[GATEWAY]
    trusted = gw.config.server.metrics_allowed(client_of(request))
    if request.path == "/-/metrics":
        if not trusted:  # traffic volumes and key-use counts are not for anyone who asks
            raise S3Error("AccessDenied", "metrics are served to server.metrics_allow only", 403)
        return web.Response(body=render(), content_type="text/plain", charset="utf-8")
    if request.path == "/-/readyz":
        problems = []
        try:
            resp = await gw.backend.request("GET", None)
            resp.release()
            if resp.status >= 500:  # reachable, but not serving: a 403 (scoped credentials) is fine
                problems.append(f"backend: answers {resp.status}")
        except S3Error as exc:
            problems.append(f"backend: {exc.message}")
        try:
            await gw.materials.ready(gw.config.kms.default_key)
        except KeyringError as exc:
            problems.append(f"kms: {exc.message}")
        if problems:
            detail = "\n".join(problems) + "\n" if trusted else ""
            return web.Response(status=503, text="not ready\n" + detail)
        return web.Response(text="ready\n")
    raise S3Error("NoSuchKey", "no such health path", 404)


async def _stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Streamed responses too carry the request id, as every S3 response does."""
    rid = _request_id(request)
    response.headers.setdefault("x-amz-request-id", rid)
    response.headers.setdefault("x-amz-id-2", rid)


async def _close_after_direct_body(request: web.Request, response: web.StreamResponse) -> None:
    """A body read past aiohttp's parser and not handed back (proxy/server/direct.py) leaves the
    connection unusable for another request."""
    if closes_connection(request):
        response.force_close()
        # aiohttp has already derived the Connection header by the time this signal runs.
        response.headers["Connection"] = "close"


async def _cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    await cors.add_headers(request.app[GATEWAY], request, response)


def build_app(gw: Gateway) -> web.Application:
    """The application serving `gw` (from proxy.wiring); its parts open and close with it."""
    srv = gw.config.server
    app = web.Application(
        middlewares=[s3_errors],
        client_max_size=1024**2,
        handler_args={
            "auto_decompress": False,
            "keepalive_timeout": srv.keepalive_timeout_seconds,
            "max_line_size": srv.max_header_bytes,
            "max_field_size": srv.max_header_bytes,
            "max_headers": srv.max_headers,
        },
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with started(gw):
            app[GATEWAY] = gw
            yield

    app[VERIFY_FIRST_BUDGET] = MemoryBudget(srv.verify_first_memory_bytes)
    app.cleanup_ctx.append(lifecycle)

    app.on_response_prepare.append(_stamp_request_id)
    app.on_response_prepare.append(_cors_headers)
    app.on_response_prepare.append(_close_after_direct_body)
    app.router.add_route("*", "/{tail:[\\s\\S]*}", dispatch, expect_handler=expect_continue)
    return app
