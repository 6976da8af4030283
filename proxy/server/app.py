"""The aiohttp application: request ids, S3 errors, authentication, routing to handlers."""

from __future__ import annotations

import logging
import os
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

from aiohttp import web

from proxy.access.actions import needs
from proxy.access.authorize import Caller, require
from proxy.audit import AuditContext, AuditLog, audit_context
from proxy.backend import Backend
from proxy.config import Config
from proxy.crypto.format import FormatError
from proxy.kms.base import KeyringError
from proxy.kms.materials import Materials
from proxy.metrics import ACTIVE, BYTES_OUT, render, request_finished
from proxy.s3.errors import S3Error
from proxy.s3.routing import Route, route
from proxy.s3.sigv4 import ClientCredentials, VerifiedRequest, verify_request
from proxy.server import admin, buckets, copy, multipart, objects
from proxy.server.direct import closes_connection
from proxy.server.state import CALLER, IDENTITY, REQUEST_ID, Gateway
from proxy.server.tls import check_client_certificate

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
    headers = {"x-amz-request-id": rid, "x-amz-id-2": rid}
    if request.method == "HEAD" or err.status == 304:
        return web.Response(status=err.status, headers=headers)
    body = err.to_xml(rid, resource=err.resource or request.path)
    headers["Content-Type"] = "application/xml"
    return web.Response(status=err.status, body=body, headers=headers)


@web.middleware
async def s3_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes an S3 XML error; every response carries a request id."""
    rid = _request_id(request)
    start = time.monotonic()
    ACTIVE.inc()
    try:
        resp = await handler(request)
    except S3Error as err:
        resp = error_response(request, err)
    except KeyringError as err:
        resp = error_response(request, S3Error(err.code, err.message, err.status))
    except FormatError as err:
        resp = error_response(request, S3Error("ObjectIntegrityError", str(err), 500))
    except web.HTTPException as exc:
        code = {404: "NoSuchKey", 405: "MethodNotAllowed", 413: "EntityTooLarge"}.get(exc.status, "InvalidRequest")
        resp = error_response(request, S3Error(code, exc.reason, exc.status))
    except Exception:
        log.exception("unhandled error in request %s", rid)
        resp = error_response(request, S3Error("InternalError", "We encountered an internal error. Please try again."))
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
        "%s %s %s %s %.1fms",
        rid,
        request.method,
        request.path,
        resp.status,
        (time.monotonic() - start) * 1000,
    )
    return resp


def _authenticate(request: web.Request) -> VerifiedRequest:
    verified = request.get(_VERIFIED)
    if isinstance(verified, VerifiedRequest):
        return verified
    gw = request.app[GATEWAY]
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
    peercert = request.transport.get_extra_info("peercert") if request.transport is not None else None
    check_client_certificate(gw.config, peercert, verified.identity)
    request[_VERIFIED] = verified
    request[IDENTITY] = verified.identity
    return verified


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
    )
    return r


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """Check what can be checked before telling the client to send its body (Expect:
    100-continue): the signature, that the operation is one sealgate serves, and a PutObject's
    If-Match / If-None-Match, so that a request bound to fail does not send its body first."""
    try:
        if not request.path.startswith(HEALTH_PREFIX) or request.path.startswith(admin.PREFIX):
            _authenticate(request)
        if not request.path.startswith((HEALTH_PREFIX, admin.PREFIX)):
            r = _route(request)
            _refuse_sse_c(request)
            _authorize(request, r, _authenticate(request))
            conditional = "If-Match" in request.headers or "If-None-Match" in request.headers
            upload = r.operation == "PutObject" and "x-amz-copy-source" not in request.headers
            if upload and conditional and r.bucket and r.key:
                objects.check_reserved(r.key)
                gw = request.app[GATEWAY]
                request[objects.WRITE_CONDITIONS] = await objects.write_conditions(gw, request, r.bucket, r.key)
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
    verified = _authenticate(request)
    r = _route(request)
    request[OPERATION] = r.operation
    _authorize(request, r, verified)
    return await _run(gw, request, r, verified)


def _authorize(request: web.Request, r: Route, verified: VerifiedRequest) -> None:
    """Identity policies: every action the request needs, allowed before any backend or keyring
    call (once per request: the Expect: 100-continue check may have done it already)."""
    if request.get(CALLER) is not None:
        return
    gw = request.app[GATEWAY]
    audit_context.set(
        AuditContext(
            identity=verified.identity,
            source=request.remote,
            request_id=request.get(REQUEST_ID),
            bucket=r.bucket,
            object_key=r.key,
        )
    )
    caller = Caller(verified.identity, request.remote, request.secure)
    try:
        wanted = needs(r.operation, r.bucket, r.key, request.query, request.headers)
    except KeyError:
        raise S3Error("NotImplemented", f"{r.operation} is not implemented by sealgate", 501) from None
    require(gw.config, gw.audit, caller, wanted)
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


async def _run(gw: Gateway, request: web.Request, r: Route, verified: VerifiedRequest) -> web.StreamResponse:
    op, bucket, key = r.operation, r.bucket, r.key
    _refuse_sse_c(request)
    if op == "ListBuckets":
        return await buckets.list_buckets(gw, request)
    assert bucket is not None
    if key is None:
        if op == "CreateBucket":
            return await buckets.create_bucket(gw, request, bucket)
        if op == "DeleteBucket":
            return await buckets.delete_bucket(gw, request, bucket)
        if op == "HeadBucket":
            return await buckets.head_bucket(gw, request, bucket)
        if op == "GetBucketLocation":
            return await buckets.get_bucket_location(gw, request, bucket)
        if op in ("ListObjects", "ListObjectsV2"):
            return await buckets.list_objects(gw, request, bucket)
        if op == "ListObjectVersions":
            return await buckets.list_objects(gw, request, bucket, versions=True)
        if op == "DeleteObjects":
            return await buckets.delete_objects(gw, request, bucket)
        if op in ("GetBucketVersioning", "PutBucketVersioning"):
            return await buckets.bucket_config(gw, request, bucket, "versioning")
        if op in ("GetObjectLockConfiguration", "PutObjectLockConfiguration"):
            return await buckets.bucket_config(gw, request, bucket, "object-lock")
        if op == "ListMultipartUploads":
            return await multipart.list_uploads(gw, request, bucket)
    else:
        objects.check_reserved(key)
        if op == "PutObject":
            if "x-amz-copy-source" in request.headers:
                return await copy.copy_object(gw, request, bucket, key)
            return await objects.put_object(gw, request, bucket, key, verified)
        if op == "GetObject":
            return await objects.get_object(gw, request, bucket, key)
        if op == "HeadObject":
            return await objects.head_object(gw, request, bucket, key)
        if op == "DeleteObject":
            return await objects.delete_object(gw, request, bucket, key)
        if op == "CreateMultipartUpload":
            return await multipart.create(gw, request, bucket, key)
        if op == "UploadPart":
            return await multipart.upload_part(gw, request, bucket, key, verified)
        if op == "CompleteMultipartUpload":
            return await multipart.complete(gw, request, bucket, key)
        if op == "AbortMultipartUpload":
            return await multipart.abort(gw, request, bucket, key)
        if op in ("GetObjectTagging", "PutObjectTagging", "DeleteObjectTagging"):
            return await objects.object_property(gw, request, bucket, key, "tagging")
        if op in ("GetObjectRetention", "PutObjectRetention"):
            return await objects.object_property(gw, request, bucket, key, "retention")
        if op in ("GetObjectLegalHold", "PutObjectLegalHold"):
            return await objects.object_property(gw, request, bucket, key, "legal-hold")
        if op == "ListParts":
            return await multipart.list_parts(gw, request, bucket, key)
    raise S3Error("NotImplemented", f"{op} is not implemented by sealgate", 501)


async def _health(request: web.Request) -> web.StreamResponse:
    """/-/healthz: alive. /-/readyz: backend and key service reachable. /-/metrics: Prometheus."""
    if request.path == "/-/healthz":
        return web.Response(text="ok\n")
    if request.path == "/-/metrics":
        return web.Response(body=render(), content_type="text/plain", charset="utf-8")
    if request.path == "/-/readyz":
        gw = request.app[GATEWAY]
        problems = []
        try:
            resp = await gw.backend.request("GET", None)
            resp.release()
        except S3Error as exc:
            problems.append(f"backend: {exc.message}")
        ready = getattr(gw.materials.keyring, "ready", None)
        if ready is not None:
            try:
                await ready(gw.config.kms.default_key)
            except KeyringError as exc:
                problems.append(f"kms: {exc.message}")
        if problems:
            return web.Response(status=503, text="not ready\n" + "\n".join(problems) + "\n")
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


def build_app(config: Config, materials: Materials, backend: Backend, audit: AuditLog | None = None) -> web.Application:
    """The application; backend and keyring open and close with it."""
    srv = config.server
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
        await backend.start()
        app[GATEWAY] = Gateway(config=config, backend=backend, materials=materials, audit=audit)
        try:
            yield
        finally:
            await backend.close()
            await materials.close()
            if audit is not None:
                audit.close()

    app.cleanup_ctx.append(lifecycle)
    app.on_response_prepare.append(_stamp_request_id)
    app.on_response_prepare.append(_close_after_direct_body)
    app.router.add_route("*", "/{tail:.*}", dispatch, expect_handler=expect_continue)
    return app
