"""The listening sockets and their accept loops (the connections they accept are managed by
proxy/server/listener.py): a slot taken before ``accept()``, a PROXY protocol header read before
anything else where the listener expects one, then the TLS handshake, all within the header
deadline. Each connection takes the TLS context current at accept time, which is what makes
certificate reloads affect new handshakes only."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web

from proxy.net.forwarded import TrustedProxies
from proxy.net.proxy_protocol import ProxyHeaderError
from proxy.server.handshakes import log_failure
from proxy.server.listener import Connections, Guard, address_key, peer_host
from proxy.server.protocol_errors import answer_as_s3
from proxy.server.proxied import read_proxy_header

log = logging.getLogger("sealgate.listener")

__all__ = ["GuardedSite", "bind", "port_in_use"]

#: How often a full accept loop looks again for an anonymous connection that can give way.
_CAP_POLL = 0.1


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
    """An aiohttp site on sockets from `bind`, accepting through `Connections`' slots.

    `trusted` gives the networks of the proxies that may say whom a connection carries (the
    config's, as reloaded); with `proxy_protocol`, every connection must come from one of them
    and start with a PROXY header."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sockets: list[socket.socket],
        connections: Connections,
        ssl_context: Callable[[], ssl.SSLContext] | None = None,
        *,
        trusted: Callable[[], TrustedProxies] = lambda: TrustedProxies(()),
        proxy_protocol: bool = False,
    ) -> None:
        super().__init__(runner)
        self._sockets = sockets
        self._connections = connections
        self._context = ssl_context
        self._trusted = trusted
        self._proxy_protocol = proxy_protocol
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

    def _spawn(self, loop: asyncio.AbstractEventLoop, coro: Any) -> asyncio.Task[Any]:
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _accept_loop(self, sock: socket.socket) -> None:
        while True:
            accepted = await self._accept(sock)
            if accepted is None:
                continue
            conn, peer = accepted
            server = self._runner.server
            assert server is not None
            host = peer_host(peer)
            from_proxy = host in self._trusted()
            if self._proxy_protocol and not from_proxy:
                self._refuse(conn, host, "not from server.trusted_proxies, and proxy_protocol = true")
                continue
            # A proxy's connection carries many clients: it counts per address once it says whose.
            guard = Guard(answer_as_s3(server()), self._connections, None if from_proxy else address_key(peer), host)
            if not self._connections.admit(guard):
                conn.close()
                self._connections.slots.release()
                continue
            guard.opening = self._spawn(asyncio.get_running_loop(), self._open(conn, guard))

    def _refuse(self, conn: socket.socket, host: str, why: str) -> None:
        """Close a just-accepted connection that holds a slot but no `Guard`."""
        conn.close()
        self._connections.slots.release()
        self._note_refusal(host, why)

    def _note_refusal(self, host: str, why: str) -> None:
        self._connections.log_limit.log(log, logging.INFO, "proxy", "closed a connection from %s: %s", host, why)

    async def _accept(self, sock: socket.socket) -> tuple[socket.socket, Any] | None:
        """The next connection, with a slot taken for it; None after a failed ``accept()``."""
        loop = asyncio.get_running_loop()
        slots = self._connections.slots
        while slots.locked() and not self._connections.can_push_out():
            await asyncio.sleep(_CAP_POLL)
        make_room = slots.locked()
        if not make_room:
            await slots.acquire()
        try:
            conn, peer = await loop.sock_accept(sock)
            if make_room:
                # At the cap, a client is waiting: an anonymous connection gives way to it.
                if slots.locked():
                    self._connections.push_out()
                await slots.acquire()
        except OSError as exc:
            if not make_room:
                slots.release()
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                log.error("cannot accept connections: %s; retrying shortly", exc.strerror)
                await asyncio.sleep(0.5)
            return None
        except BaseException:
            if not make_room:
                slots.release()
            raise
        return conn, peer

    async def _open(self, conn: socket.socket, guard: Guard) -> None:
        loop = asyncio.get_running_loop()
        ctx = self._context() if self._context is not None else None
        deadline = loop.time() + self._connections.header_timeout
        try:
            if self._proxy_protocol and not await self._read_proxy_header(conn, guard):
                conn.close()
                guard.release()
                return
            await loop.connect_accepted_socket(
                lambda: guard,
                conn,
                ssl=ctx,
                # The PROXY header and the handshake share the deadline.
                ssl_handshake_timeout=max(deadline - loop.time(), 0.001) if ctx is not None else None,
            )
        except BaseException as exc:
            # A failed, timed-out or pushed-out handshake: the protocol never saw the connection.
            conn.close()
            guard.release()
            if not isinstance(exc, Exception):
                raise
            log_failure(guard.peer, exc, self._connections.log_limit)
        finally:
            guard.opening = None

    async def _read_proxy_header(self, conn: socket.socket, guard: Guard) -> bool:
        """Read the connection's PROXY header and take the client it names as the connection's
        peer; False (close it) if there is none in time, or the client's address cap is full."""
        try:
            header = await read_proxy_header(conn, self._connections.header_timeout)
        except (ProxyHeaderError, TimeoutError, OSError) as exc:
            why = str(exc) if isinstance(exc, ProxyHeaderError) else "no PROXY header in time"
            self._note_refusal(guard.peer, why)
            return False
        if header.source is None:  # LOCAL or UNKNOWN: the balancer's own connection
            return True
        guard.declared_peer = header.source
        guard.peer = header.source[0]
        address = None if guard.peer in self._trusted() else address_key(header.source)
        return self._connections.readdress(guard, address)
