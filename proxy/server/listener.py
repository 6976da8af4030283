"""The client connections: a connection cap shared fairly, a header deadline and a graceful drain.

aiohttp's own sites hand every accepted connection straight to the HTTP protocol. sealgate
accepts itself instead (proxy/server/sites.py), which gives it what aiohttp lacks:

- **max_connections**: a slot is taken before ``accept()``; at the cap the accept loop waits,
  so further clients queue in the kernel's backlog (as nginx does at ``worker_connections``)
  instead of being accepted and starved.
- **fair slots**: a connection is *anonymous* until a request on it passes SigV4 verification
  (`mark_authenticated`; health and metrics paths, CORS preflights and requests that fail
  verification never authenticate one). Anonymous connections
  hold at most a share of the slots, and at most a few per source address (IPv4 address, IPv6
  /64), and are closed after a short idle time. A new connection that finds its share (or its
  address's) full takes the place of the oldest anonymous one that can give way: one idle after
  a response, or one that has sent no complete request head for two seconds. So anonymous load,
  however it is spread over connections, cannot keep a client out: the slots beyond the share
  stay for authenticated connections, and a new client (anonymous until its first request)
  pushes out an idle anonymous one. At the cap itself, a waiting client likewise replaces an
  anonymous connection that can give way. Busy connections are never pushed out.
- **source addresses behind a balancer**: a connection from ``server.trusted_proxies`` carries
  other clients, so it counts per address only once it says whose: its PROXY header, or each
  request's X-Forwarded-For (`Connections.readdress`). Its requests see that client as their peer.
- **header_timeout**: the PROXY header, the TLS handshake, and the request headers of every
  request, must be complete within it. A connection that dribbles its headers (slowloris) is
  cut; one idle between requests is left to the keep-alive timeouts (aiohttp's, and the shorter
  anonymous one) and a body to the stall timeout and minimum rate (proxy/server/budget.py).
- **drain**: on shutdown, listeners close first, idle connections are closed, requests in
  flight run to completion until a deadline, and whatever is left is then cut.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter
from typing import Any, Final, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from proxy.logs import LogLimit
from proxy.metrics import CONNECTIONS
from proxy.net.forwarded import TrustedProxies

log = logging.getLogger("sealgate.listener")

__all__ = ["CONNECTIONS_KEY", "Connections", "Guard", "address_key", "mark_authenticated", "peer_host", "request_from"]

_DRAIN_POLL = 0.05
#: How long an anonymous connection without a complete request head is safe from being pushed
#: out: a client's own handshake and first request take milliseconds, a silent socket longer.
EVICT_MIN_AGE: Final = 2.0


def peer_host(peer: Any) -> str:
    """The host part of a socket address (``peername``)."""
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


def address_key(peer: Any) -> str:
    """The source an address counts against: an IPv4 address, or an IPv6 /64 (what one host
    usually gets); IPv4-mapped IPv6 addresses count as their IPv4 address."""
    host = peer[0] if isinstance(peer, tuple) and peer else str(peer)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return str(host)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Guard(asyncio.Protocol):
    """One client connection: aiohttp's RequestHandler behind a header-deadline timer.

    The timer runs from the connection's start, and from the first byte of each later request,
    until aiohttp has parsed a complete request head. Reads aiohttp's per-connection request
    count and its wait-for-next-request future; tests/integration/test_limits.py notices if an
    aiohttp upgrade changes them.
    """

    def __init__(self, inner: RequestHandler, connections: Connections, address: str | None, peer: str) -> None:
        self.inner = inner
        self._connections = connections
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at_count = 0
        self._released = False
        #: Where the connection comes from (`address_key`), as the per-address cap counts it;
        #: None for a trusted proxy's connection until it says whom it carries.
        self.address = address
        #: The client's host, for log lines.
        self.peer = peer
        #: The client a PROXY header named (aiohttp's requests see it as their peer).
        self.declared_peer: tuple[str, int] | None = None
        #: Whether a request on it has passed SigV4 verification.
        self.authenticated = False
        #: The task that runs the TLS handshake (cancelled to push the connection out before it).
        self.opening: asyncio.Task[Any] | None = None
        self.born = self._last_seen = time.monotonic()
        self._idle_timer: asyncio.TimerHandle | None = None

    # -- asyncio protocol, forwarded ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        self._connections.opened(self)
        CONNECTIONS.inc()
        self.inner.connection_made(self.transport)
        self._arm()
        self._last_seen = time.monotonic()
        if not self.authenticated and self._connections.anonymous_idle is not None:
            loop = asyncio.get_running_loop()
            self._idle_timer = loop.call_later(self._connections.anonymous_idle, self._idle_check)

    def data_received(self, data: bytes) -> None:
        if not self.authenticated:
            self._last_seen = time.monotonic()
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
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
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
        log.info(
            "closing connection from %s: request headers not complete within %ss",
            self.peer,
            self._connections.header_timeout,
        )
        self.transport.abort()

    def _idle_check(self) -> None:
        """Close an anonymous connection that has waited for a request, with nothing arriving,
        for the anonymous idle time; look again later otherwise."""
        self._idle_timer = None
        timeout = self._connections.anonymous_idle
        if self.authenticated or self.closing() or timeout is None:
            return
        now = time.monotonic()
        if not self.idle():
            self._last_seen = now  # a request is running: its end is not visible, count from now
        elif now - self._last_seen >= timeout:
            log.debug("closing anonymous connection from %s: idle for %ss", self.address, timeout)
            self.abort()
            return
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(max(self._last_seen + timeout - now, 0.05), self._idle_check)

    def can_give_way(self, now: float) -> bool:
        """An anonymous connection that may be pushed out for a new one: idle after a response,
        or without a complete request head (still in its TLS handshake, too) for
        `EVICT_MIN_AGE`. A request being handled is never cut."""
        if self.authenticated:
            return False
        if self.transport is not None and self.idle() and self._request_count() > 0:
            return True
        head_pending = self.transport is None or self.idle() or self._timer is not None
        return head_pending and now - self.born >= min(EVICT_MIN_AGE, self._connections.header_timeout)

    def push_out(self) -> None:
        """Cut the connection (or its handshake) to make room for another."""
        if self.transport is not None:
            self.transport.abort()
        elif self.opening is not None:
            self.opening.cancel()

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
            self._connections.closed(self)
            self._connections.slots.release()


class Connections:
    """The client connections of one process, shared by its listeners, and their fair shares.

    `anonymous`: most connections not (yet) authenticated at once (default: all of them);
    `per_address`: most of those from one source (0: no such cap); `anonymous_idle`: seconds
    an anonymous connection may wait for a request (None: aiohttp's keep-alive timeout only).
    """

    def __init__(
        self,
        max_connections: int,
        header_timeout: float,
        *,
        anonymous: int | None = None,
        per_address: int = 0,
        anonymous_idle: float | None = None,
    ) -> None:
        self.slots = asyncio.Semaphore(max_connections)
        self.header_timeout = header_timeout
        self.anonymous_limit = anonymous if anonymous is not None else max_connections
        self.per_address = per_address
        self.anonymous_idle = anonymous_idle
        self.open: set[Guard] = set()
        #: Admitted connections not authenticated, oldest first (handshakes included).
        self._anonymous: dict[Guard, None] = {}
        self._from: Counter[str] = Counter()
        self._by_transport: dict[asyncio.BaseTransport, Guard] = {}
        #: Set once shutdown began: responses then say ``Connection: close``.
        self.draining = False
        #: How often lines about what clients get wrong (failed handshakes) may be logged.
        self.log_limit = LogLimit()

    @property
    def anonymous(self) -> int:
        """Connections admitted and not authenticated now."""
        return len(self._anonymous)

    def anonymous_from(self, address: str) -> int:
        """Anonymous connections from `address` (an `address_key`) now."""
        return self._from[address]

    def install(self, app: web.Application) -> None:
        """Hook into `app` (before it starts): drain-time ``Connection: close``, and the
        authenticated-connection mark (`mark_authenticated`)."""
        app.on_response_prepare.append(self.on_response_prepare)
        app[CONNECTIONS_KEY] = self

    def admit(self, guard: Guard) -> bool:
        """Count a just-accepted connection as anonymous, pushing out an anonymous one that can
        give way if its address's cap or the anonymous share is full; False (refuse it) if
        none can."""
        # Debug level: under attack these come by the thousand.
        full = self.per_address and guard.address is not None and self._from[guard.address] >= self.per_address
        if full and not self.push_out(guard.address):
            log.debug("refusing a connection from %s: %d anonymous ones already", guard.address, self.per_address)
            return False
        if len(self._anonymous) >= self.anonymous_limit and not self.push_out():
            log.debug("refusing a connection: %d anonymous connections, none can give way", self.anonymous_limit)
            return False
        self._anonymous[guard] = None
        if guard.address is not None:
            self._from[guard.address] += 1
        return True

    def readdress(self, guard: Guard, address: str | None) -> bool:
        """`guard`'s connection turns out to carry a client from `address` (an `address_key`;
        None: a trusted proxy itself): an anonymous one counts against that address's cap from
        now on, pushing out one from there that can give way if it is full; False (cut it) if
        none can."""
        if address == guard.address:
            return True
        anonymous = guard in self._anonymous
        if anonymous:
            self._uncount(guard.address)
        guard.address = address
        if not anonymous or address is None:
            return True
        if self.per_address and self._from[address] >= self.per_address and not self.push_out(address, guard):
            log.debug("refusing a connection from %s: %d anonymous ones already", address, self.per_address)
            self._anonymous.pop(guard, None)
            return False
        self._from[address] += 1
        return True

    def request_from(self, transport: asyncio.BaseTransport | None, address: str | None) -> bool:
        """A request on this connection comes from `address` (X-Forwarded-For): `readdress`."""
        guard = self._by_transport.get(transport) if transport is not None else None
        return guard is None or self.readdress(guard, address)

    def can_push_out(self) -> bool:
        """Whether some anonymous connection could give way now."""
        now = time.monotonic()
        return any(g.can_give_way(now) for g in self._anonymous)

    def push_out(self, address: str | None = None, keep: Guard | None = None) -> bool:
        """Push out the oldest anonymous connection (from `address`, if given; never `keep`)
        that can give way."""
        now = time.monotonic()
        for guard in self._anonymous:
            if guard is keep:
                continue
            if (address is None or guard.address == address) and guard.can_give_way(now):
                self._forget(guard)
                log.debug("pushing out an anonymous connection from %s", guard.address)
                guard.push_out()
                return True
        return False

    def authenticated(self, transport: asyncio.BaseTransport | None) -> None:
        """A request on this connection passed SigV4 verification: it leaves the anonymous share."""
        guard = self._by_transport.get(transport) if transport is not None else None
        if guard is not None and not guard.authenticated:
            guard.authenticated = True
            self._forget(guard)

    def opened(self, guard: Guard) -> None:
        """`guard`'s connection is established (after the TLS handshake)."""
        self.open.add(guard)
        if guard.transport is not None:
            self._by_transport[guard.transport] = guard

    def closed(self, guard: Guard) -> None:
        """`guard`'s connection (or handshake) is over."""
        self.open.discard(guard)
        if guard.transport is not None:
            self._by_transport.pop(guard.transport, None)
        self._forget(guard)

    def _forget(self, guard: Guard) -> None:
        if self._anonymous.pop(guard, False) is None:
            self._uncount(guard.address)

    def _uncount(self, address: str | None) -> None:
        if address is not None:
            self._from[address] -= 1
            if self._from[address] <= 0:
                del self._from[address]

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


#: The process's `Connections`, on the app (`Connections.install`).
CONNECTIONS_KEY = web.AppKey("sealgate.connections", Connections)


def request_from(request: web.Request, address: str | None, trusted: TrustedProxies) -> bool:
    """A request on this connection comes from `address` (X-Forwarded-For of a trusted proxy):
    the connection counts against that address's anonymous cap from now on (`readdress`);
    False if it is full and none from there can give way."""
    connections = request.app.get(CONNECTIONS_KEY)
    if connections is None or address is None:
        return True
    return connections.request_from(request.transport, None if address in trusted else address_key(address))


def mark_authenticated(request: web.Request) -> None:
    """A request on this connection passed SigV4 verification: from now on it is an
    authenticated connection (out of the anonymous share, usual keep-alive timeout)."""
    connections = request.app.get(CONNECTIONS_KEY)
    if connections is not None:
        connections.authenticated(request.transport)
