"""The listening sockets: a connection cap, a header deadline and a graceful drain.

aiohttp's own sites hand every accepted connection straight to the HTTP protocol. sealgate
accepts itself instead, which gives it three things aiohttp lacks:

- **max_connections**: a slot is taken before ``accept()``; at the cap the accept loop waits,
  so further clients queue in the kernel's backlog (as nginx does at ``worker_connections``)
  instead of being accepted and starved.
- **header_timeout**: the TLS handshake, and the request headers of every request, must be
  complete within it. A connection that dribbles its headers (slowloris) is cut; one idle
  between requests is left to aiohttp's keep-alive timeout and a body to the stall timeout.
- **drain**: on shutdown, listeners close first, idle connections are closed, requests in
  flight run to completion until a deadline, and whatever is left is then cut.

Each connection takes the TLS context current at accept time, which is what makes certificate
reloads affect new handshakes only.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from proxy.metrics import CONNECTIONS

log = logging.getLogger("sealgate.listener")

__all__ = ["Connections", "GuardedSite", "bind", "port_in_use"]

_DRAIN_POLL = 0.05


class _Guard(asyncio.Protocol):
    """One client connection: aiohttp's RequestHandler behind a header-deadline timer.

    The timer runs from the connection's start, and from the first byte of each later request,
    until aiohttp has parsed a complete request head. Reads aiohttp's per-connection request
    count and its wait-for-next-request future; tests/integration/test_limits.py notices if an
    aiohttp upgrade changes them.
    """

    def __init__(self, inner: RequestHandler, connections: Connections) -> None:
        self.inner = inner
        self._connections = connections
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at_count = 0
        self._released = False

    # -- asyncio protocol, forwarded ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        self._connections.open.add(self)
        CONNECTIONS.inc()
        self.inner.connection_made(self.transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._timer is None and self.idle():
            self._arm()  # the first byte of the next request on a kept-alive connection
        self.inner.data_received(data)
        if self._timer is not None and self._request_count() != self._armed_at_count:
            self._disarm()

    def eof_received(self) -> None:
        self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.inner.connection_lost(exc)
        self.release()

    # -- ours -----------------------------------------------------------------------------------

    def _request_count(self) -> int:
        return int(getattr(self.inner, "_request_count", 0))

    def idle(self) -> bool:
        """Waiting for the next request: nothing being handled, nothing queued."""
        waiter = getattr(self.inner, "_waiter", None)
        return waiter is not None and not waiter.done()

    def _arm(self) -> None:
        self._disarm()
        self._armed_at_count = self._request_count()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._connections.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self.transport is None or self._request_count() != self._armed_at_count:
            return
        peer = self.transport.get_extra_info("peername")
        log.info(
            "closing connection from %s: request headers not complete within %ss",
            peer[0] if isinstance(peer, tuple) else "?",
            self._connections.header_timeout,
        )
        self.transport.abort()

    def closing(self) -> bool:
        """Whether the connection is closing or closed."""
        return self.transport is None or self.transport.is_closing()

    def flushed(self) -> bool:
        """Nothing of an earlier response is still waiting to be sent."""
        return self.transport is not None and self.transport.get_write_buffer_size() == 0

    def close(self) -> None:
        """Close gracefully (TLS close_notify after pending writes)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        """Cut the connection now."""
        if self.transport is not None:
            self.transport.abort()

    def release(self) -> None:
        """Give back the connection slot (once)."""
        if not self._released:
            self._released = True
            if self in self._connections.open:
                CONNECTIONS.dec()
            self._connections.open.discard(self)
            self._connections.slots.release()


class Connections:
    """The client connections of one process, shared by its listeners."""

    def __init__(self, max_connections: int, header_timeout: float) -> None:
        self.slots = asyncio.Semaphore(max_connections)
        self.header_timeout = header_timeout
        self.open: set[_Guard] = set()
        #: Set once shutdown began: responses then say ``Connection: close``.
        self.draining = False

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """aiohttp signal: while draining, no response keeps its connection alive."""
        if self.draining:
            response.force_close()
            # aiohttp has already derived the Connection header by the time this signal runs.
            response.headers["Connection"] = "close"

    async def drain(self, timeout: float) -> None:
        """Let requests in flight finish for up to `timeout` seconds, then cut what is left.

        The listeners must be closed already. A connection is closed (TLS close_notify) once it
        waits for its next request with nothing left to send; connections still busy at the
        deadline are cut. Closing ones finish their TLS shutdown on their own.
        """
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            busy = [g for g in self.open if not g.closing()]
            for guard in busy:
                if guard.idle() and guard.flushed():
                    guard.close()
            busy = [g for g in busy if not g.closing()]
            if not busy:
                return
            if loop.time() >= deadline:
                break
            await asyncio.sleep(_DRAIN_POLL)
        log.warning("shutdown deadline (%ss) reached: cutting %d connection(s) in use", timeout, len(busy))
        for guard in busy:
            guard.abort()


def bind(host: str, port: int, *, reuse_port: bool = False, backlog: int = 511) -> list[socket.socket]:
    """Listening, non-blocking sockets for every address `host` resolves to."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, addr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # Port 0: the port the kernel chose for the first address is used for the others.
            sock.bind((addr[0], port, *addr[2:]))
            sock.listen(backlog)
            sock.setblocking(False)
            port = sock.getsockname()[1]
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on `host`:`port`: a test bind without SO_REUSEPORT
    fails even where every listener there set it (Linux lets only same-user SO_REUSEPORT
    sockets share a port)."""
    if port == 0:
        return False
    try:
        probe = bind(host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return True
        raise
    for sock in probe:
        sock.close()
    return False


class GuardedSite(web.BaseSite):
    """An aiohttp site on sockets from `bind`, accepting through `Connections`' slots."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sockets: list[socket.socket],
        connections: Connections,
        ssl_context: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        super().__init__(runner)
        self._sockets = sockets
        self._connections = connections
        self._context = ssl_context
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def name(self) -> str:
        """``https://host:port`` (or http) of the first socket."""
        host, port = self._sockets[0].getsockname()[:2]
        return f"{'https' if self._context else 'http'}://{host}:{port}"

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Start the accept loops."""
        await super().start()
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            self._spawn(loop, self._accept_loop(sock))

    async def stop(self) -> None:
        """Close the listening sockets (new connections are refused) and drop handshakes in progress."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sock in self._sockets:
            sock.close()
        await super().stop()

    def _spawn(self, loop: asyncio.AbstractEventLoop, coro: Any) -> None:
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        slots = self._connections.slots
        while True:
            await slots.acquire()
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:
                slots.release()
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("cannot accept connections: %s; retrying shortly", exc.strerror)
                    await asyncio.sleep(0.5)
                continue
            except BaseException:
                slots.release()
                raise
            self._spawn(loop, self._open(conn))

    async def _open(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        guard = _Guard(server(), self._connections)
        ctx = self._context() if self._context is not None else None
        try:
            await loop.connect_accepted_socket(
                lambda: guard,
                conn,
                ssl=ctx,
                ssl_handshake_timeout=self._connections.header_timeout if ctx is not None else None,
            )
        except BaseException as exc:
            # A failed or timed-out handshake: the protocol never saw the connection.
            conn.close()
            guard.release()
            if not isinstance(exc, Exception):
                raise
            log.debug("TLS handshake failed: %s", exc)
