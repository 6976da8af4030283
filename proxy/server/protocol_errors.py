"""Requests that are not HTTP aiohttp can parse (a bare LF, a bad header line, a body that
breaks its framing) get an S3 XML error like every other answer, over HTTP/1.1, and one log
line at INFO: no traceback, and neither the offending bytes nor anything the request carried (a
presigned URL's signature, say) in the log or the answer.

aiohttp answers such a request as if it had said HTTP/1.0 (the placeholder request it makes for
it has no version of its own); the answer here goes out under a request of our own that says
HTTP/1.1 and asks for the connection to close."""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import cast

from aiohttp import HttpVersion11, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import RawRequestMessage
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.s3.errors import S3Error

log = logging.getLogger("sealgate.protocol")

_CODES = {400: "BadRequest", 408: "RequestTimeout", 413: "EntityTooLarge", 431: "RequestHeaderSectionTooLarge"}


class S3ProtocolErrors(RequestHandler):
    """aiohttp's connection protocol, with its protocol-level errors answered as S3 would."""

    __slots__ = ()  # the same layout as RequestHandler's, so a connection's class can become this

    @property
    def peername(self) -> str | tuple[str, int, int, int] | tuple[str, int] | None:
        """The client a PROXY header named (kept by the connection's protocol, a
        proxy/server/listener.py `Guard`), else the socket's peer: what ``request.remote`` is."""
        transport = self.transport
        declared = getattr(transport.get_protocol(), "declared_peer", None) if transport is not None else None
        if isinstance(declared, tuple):
            return cast(tuple[str, int], declared)
        return super().peername

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """`RequestHandler.handle_error`, answered with an S3 XML error and logged without the request's bytes."""
        gone = self.transport is None or self.transport.is_closing()
        if isinstance(exc, ConnectionError) and gone:
            # The client went away mid-response (proxy/server/app.py logged it at INFO): nothing
            # failed here, and nothing can be answered.
            raise ConnectionError("the client closed the connection") from exc
        if status >= 500:
            # sealgate's own failure, not the client's input: with its traceback.
            log.error("internal error on a connection from %s", request.remote, exc_info=exc)
        else:
            log.info("malformed request from %s: %s (%s)", request.remote, status, type(exc).__name__ if exc else "-")
        if request.writer.output_size > 0:  # an answer has begun: the connection can only be cut
            raise ConnectionError("cannot answer with an error: the response has started")
        code = _CODES.get(status, "InternalError" if status >= 500 else "BadRequest")
        text = (
            "We encountered an internal error. Please try again." if status >= 500 else "The request is not valid HTTP."
        )
        rid = secrets.token_hex(8).upper()
        resp = _Http11Answer(
            status=status,
            body=S3Error(code, text, status).to_xml(rid, resource=""),
            headers={"Content-Type": "application/xml", "x-amz-request-id": rid, "x-amz-id-2": rid},
        )
        resp.force_close()
        return resp


class _Http11Answer(web.Response):
    """A response sent as HTTP/1.1 with ``Connection: close``, whatever request line it answers."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        """`web.Response.prepare`, for a stand-in of `request` that says HTTP/1.1 and should close."""
        message = RawRequestMessage(
            request.method, "/", HttpVersion11, CIMultiDictProxy(CIMultiDict()), (), True, None, False, False, URL("/")
        )
        loop = asyncio.get_running_loop()
        stand_in = web.BaseRequest(message, request.content, request.protocol, request.writer, request.task, loop)
        return await super().prepare(stand_in)


def answer_as_s3(handler: RequestHandler) -> RequestHandler:
    """Make one connection's protocol answer its protocol-level errors as `S3ProtocolErrors` does
    (aiohttp makes the protocol object; its class has slots, so the class is what changes)."""
    handler.__class__ = S3ProtocolErrors
    return handler
