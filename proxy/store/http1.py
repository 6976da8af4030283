"""The HTTP/1.1 client sealgate talks to its backend with: keep-alive connections from a bounded
pool (`proxy.store.pool.ConnectionPool`), requests written as bytes, answers parsed by
httptools (llhttp, the parser Node.js uses).

Why not aiohttp's client: on a 4 KiB PUT or GET it cost about 140 µs of CPU per backend request
against about 50 µs for the same bytes written and parsed on a bare protocol (benchmarks/README.md,
sessions 10 and 12), a third of what sealgate spends on such a request. This client does only what
sealgate's backend requests need: one request at a time per connection, bodies as bytes or as an
async iterable of pieces (HTTP chunked when no length is known), responses streamed with bounded
buffering, a read timeout on every wait.

Failures are raised as `ConnectFailed` (no connection could be made: DNS, refused, TLS),
`ConnectionBroken` (the connection ended or the answer was not HTTP), or `TimeoutError` (no
progress for the read timeout); `proxy.store.backend` turns them into S3 errors and retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import weakref
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

#: Reading from the backend pauses while this much of a response body waits for its reader
#: (aiohttp's client did the same with its 1 MiB read buffer: up to twice that queued).
HIGH_WATER = 2 * 1024 * 1024
LOW_WATER = HIGH_WATER // 4
#: Writes to the backend wait for the socket's buffer to drain above this.
WRITE_HIGH_WATER = 1024 * 1024
#: A body at most this long goes out in the same write as the request head.
_JOIN_BODY = 64 * 1024


class ConnectFailed(Exception):
    """No connection to the backend could be made; `os_error` is why (an `ssl.SSLError` when TLS
    failed)."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(f"{os_error.__class__.__name__}: {os_error}")
        self.os_error = os_error


class ConnectionBroken(Exception):
    """The connection ended before the answer did, or what came back was not HTTP/1.1."""


class Connection(asyncio.Protocol):
    """One keep-alive connection to the backend, carrying one exchange at a time. It holds its
    current `Response` only weakly: an answer its reader dropped unread gives the connection up
    (`Response.__del__`) instead of holding a pool slot for ever."""

    #: Set by the pool: told when the connection has gone (closed by the backend while idle).
    pool_forget: Callable[[Connection], None] | None = None

    def __init__(self, key: tuple[str, int, bool], loop: asyncio.AbstractEventLoop) -> None:
        self.key = key
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        #: Exchanges completed on this connection (0: new, so a failure is not staleness).
        self.uses = 0
        #: When it went back to the pool (loop time); whether it is there now; whether the pool
        #: counts it.
        self.idle_since = 0.0
        self.in_pool = False
        self.counted = False
        self._ref: weakref.ref[Response] | None = None
        #: The response being fed while the parser runs (a strong reference only then).
        self._cur: Response | None = None
        self._parser: Any = None
        self.write_paused = False
        self._drain: asyncio.Future[None] | None = None

    @property
    def response(self) -> Response | None:
        return self._ref() if self._ref is not None else None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(WRITE_HIGH_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):  # not TCP, or a socket that cannot
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        resp = self.response
        if resp is None or resp.complete or self._parser is None:
            # Nothing was asked, or nobody is reading: a backend that talks out of turn cannot be
            # trusted to frame the next answer right.
            self.abort()
            return
        self._cur = resp
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            resp.fail(ConnectionBroken(f"the backend's answer is not HTTP/1.1: {exc}"))
            self.abort()
        finally:
            self._cur = None

    def eof_received(self) -> bool:
        return False  # close; connection_lost says the rest

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        resp = self.response
        if resp is not None and not resp.complete:
            if resp.head_done and resp.until_close and exc is None:
                resp.finish()  # a body delimited by the end of the connection (HTTP/1.0 style)
            else:
                resp.fail(ConnectionBroken("the backend closed the connection" + (f" ({exc})" if exc else "")))
        self._wake_drain()
        if self.pool_forget is not None:
            self.pool_forget(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_drain()

    # httptools callbacks (during data_received)

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._cur is not None
        self._cur.raw_headers.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        resp = self._cur
        assert resp is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (sealgate never asks for one): the real one follows
            resp.raw_headers.clear()
            resp.skip_complete = True
            return
        resp.head(status, self._parser.should_keep_alive())
        if resp.method == "HEAD":
            # No body follows whatever the headers say. This parser cannot be told so; it is
            # dropped and the next exchange gets a fresh one.
            self._parser = None
            resp.finish()

    def on_body(self, body: bytes) -> None:
        resp = self._cur
        assert resp is not None
        resp.feed(body)
        if resp.buffered > HIGH_WATER and not resp.reading_paused and self.transport is not None:
            resp.reading_paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        resp = self._cur
        assert resp is not None
        if resp.skip_complete:
            resp.skip_complete = False
            return
        resp.finish()

    # used by the exchange

    def abort(self) -> None:
        """Drop the connection at once."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _wake_drain(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    async def drain(self, timeout: float) -> None:
        """Wait until the socket takes more (or the connection ends, or the answer starts);
        TimeoutError if the backend takes nothing for `timeout` seconds."""
        while self.write_paused and not self.closed:
            resp = self.response
            if resp is not None and resp.head_done:
                return
            self._drain = self.loop.create_future()
            try:
                await wait_at_most(self._drain, timeout)
            finally:
                self._drain = None

    def begin(self, method: str, read_timeout: float) -> Response:
        """A fresh response (and parser) for the next exchange on this connection."""
        resp = Response(self, method, read_timeout)
        self._ref = weakref.ref(resp)
        self._parser = httptools.HttpResponseParser(self)
        return resp


def _expire(waiter: asyncio.Future[None], error: type[Exception]) -> None:
    if not waiter.done():
        waiter.set_exception(error())


async def wait_at_most(waiter: asyncio.Future[None], seconds: float, error: type[Exception] = TimeoutError) -> None:
    """Await `waiter`; if nothing settles it within `seconds`, it fails with `error`."""
    handle = waiter.get_loop().call_later(seconds, _expire, waiter, error)
    try:
        await waiter
    finally:
        handle.cancel()


class Response:
    """The backend's answer: status and headers once `wait_head` returns, then the body through
    `read`, `readany` or `iter_any` (``content`` is the same object: aiohttp's names, which
    sealgate's code reads bodies with). The connection goes back to the pool as soon as the
    last byte of the body is read (`release` and `close` change nothing then); before that,
    `release` gives it back if all the body has arrived, `close` drops it, and an answer dropped
    without either drops its connection."""

    def __init__(self, conn: Connection, method: str, read_timeout: float) -> None:
        self.conn = conn
        self.method = method
        self.read_timeout = read_timeout
        self.status = 0
        #: The headers the request went with (signed), for diagnostics.
        self.request_headers: list[tuple[str, str]] = []
        self.raw_headers: list[tuple[str, str]] = []
        self.headers: CIMultiDictProxy[str] = _NO_HEADERS
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        #: The request's body was not all sent (the backend answered first): close after.
        self.must_close = False
        self.until_close = False
        self.skip_complete = False
        self.reading_paused = False
        self.buffered = 0
        self._chunks: deque[bytes] = deque()
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        #: Told once, with the connection and whether it can carry another exchange.
        self.on_done: Callable[[Connection, bool], None] | None = None

    def __del__(self) -> None:
        if not self._done:
            with contextlib.suppress(Exception):  # at interpreter exit the loop may be gone
                self._settle(abandon=True)

    # fed by the connection

    def head(self, status: int, keep_alive: bool) -> None:
        self.status = status
        self.keep_alive = keep_alive
        self.headers = h = CIMultiDictProxy(CIMultiDict(self.raw_headers))
        self.until_close = "Content-Length" not in h and "Transfer-Encoding" not in h and not keep_alive
        self.head_done = True
        self._wake()
        self.conn._wake_drain()

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self.buffered += len(data)
        self._wake()

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        self._waiter = self.conn.loop.create_future()
        try:
            await wait_at_most(self._waiter, self.read_timeout)
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    # read by the caller

    async def wait_head(self) -> None:
        """Until the status line and headers have arrived."""
        while not self.head_done:
            await self._wait()

    @property
    def content(self) -> Response:
        return self

    def _take(self, n: int) -> bytes:
        chunks = self._chunks
        if n < 0 or n >= self.buffered:
            data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
        else:
            parts = []
            need = n
            while need:
                chunk = chunks.popleft()
                if len(chunk) > need:
                    chunks.appendleft(chunk[need:])
                    chunk = chunk[:need]
                parts.append(chunk)
                need -= len(chunk)
            data = b"".join(parts)
        self.buffered -= len(data)
        if self.reading_paused and self.buffered < LOW_WATER:
            self._resume_reading()
        if self.complete and not self.buffered:
            # The caller has the last byte: the connection is free for the next exchange now,
            # whatever the caller does with this answer (a download stops reading at its length
            # and closes it). The caller reads only once the request is all sent.
            self._settle()
        return data

    def _resume_reading(self) -> None:
        self.reading_paused = False
        if self.conn.transport is not None:
            self.conn.transport.resume_reading()

    async def read(self, n: int = -1) -> bytes:
        """`n` bytes of the body, fewer only where it ends (all of it when `n` < 0): only for
        small documents, never object data."""
        while not self.complete and (n < 0 or self.buffered < n):
            await self._wait()
        return self._take(n)

    async def readany(self) -> bytes:
        """What has arrived of the body (waiting for something); b"" at its end."""
        while not self.buffered and not self.complete:
            await self._wait()
        if not self.buffered:
            self._settle()
            return b""
        return self._take(-1)

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body in the pieces it arrives in."""
        while data := await self.readany():
            yield data

    def release(self) -> None:
        """Done with the answer: its connection goes back to the pool if all the body has
        arrived, else it is dropped."""
        self._settle()

    def close(self) -> None:
        """Drop the connection (a body abandoned half read)."""
        self._settle(abandon=True)

    def _settle(self, abandon: bool = False) -> None:
        if self._done:
            return
        self._done = True
        conn = self.conn
        reusable = (
            not abandon
            and self.complete
            and self.keep_alive
            and not self.must_close
            and self._error is None
            and not conn.closed
        )
        if reusable:
            conn.uses += 1
            if self.reading_paused:  # the last bytes came in above the high-water mark
                self._resume_reading()
        else:
            conn.abort()
        self._chunks.clear()
        self.buffered = 0
        if self.on_done is not None:
            self.on_done(conn, reusable)


_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


def request_head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    """The request line and headers as sent. A CR or LF inside a name or value would start a
    header or a request of its own: refused (ValueError), as aiohttp refused it."""
    text = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    lines = len(headers) + 2
    if text.count("\n") != lines or text.count("\r") != lines or " " in target or "\t" in target:
        raise ValueError("a CR, LF or blank in a request line or header to the backend")
    return text.encode("utf-8")


async def send(
    conn: Connection,
    resp: Response,
    head: bytes,
    body: bytes | AsyncIterable[bytes | memoryview] | None,
    *,
    chunked: bool,
    timeout: float,
) -> None:
    """Write the request: `head`, then the body (HTTP chunked if `chunked`). A streamed body stops
    early if the backend answers before it has all of it (its answer is what counts then; the
    connection closes after it) or the connection ends."""
    transport = conn.transport
    assert transport is not None
    if body is None:
        transport.write(head)
        return
    if isinstance(body, bytes):
        if len(body) <= _JOIN_BODY:
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)
        return
    transport.write(head)
    async for piece in body:
        if conn.closed or resp.head_done:
            resp.must_close = True
            return
        if not len(piece):
            continue
        if chunked:
            transport.writelines((f"{len(piece):x}\r\n".encode(), piece, b"\r\n"))
        else:
            transport.write(piece)
        if conn.write_paused:
            await conn.drain(timeout)
    if chunked and not conn.closed:
        transport.write(b"0\r\n\r\n")
