"""Where a connection and a request come from when a balancer stands in between.

- A **PROXY protocol header** (``server.proxy_protocol``) is read off an accepted socket before
  anything else, TLS included: peeked, so that exactly the header is consumed and the
  handshake behind it (often in the same packet) stays in the socket for the TLS layer.
- **X-Forwarded-For** is believed from ``server.trusted_proxies`` only (proxy/net/forwarded.py).

`client_address` is what a request's address is taken to be everywhere: the access and audit
logs, ``aws:SourceIp``, ``metrics_allow`` and the per-address connection cap.
"""

from __future__ import annotations

import asyncio
import socket
import time

from aiohttp import web

from proxy.net import forwarded
from proxy.net.proxy_protocol import MAX_HEADER, ProxyHeader, ProxyHeaderError, parse

__all__ = ["client_address", "read_proxy_header"]

#: How long to wait before peeking again at a header that arrived in pieces (rare: a balancer
#: writes it in one go); peeking at once would spin, the bytes already there staying readable.
_PIECE_WAIT = 0.01

_CLIENT = web.RequestKey("sealgate.client", str)


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


async def read_proxy_header(sock: socket.socket, timeout: float) -> ProxyHeader:
    """The PROXY header at the start of the accepted, non-blocking `sock`, consumed from it;
    ProxyHeaderError if the connection starts otherwise or ends first, TimeoutError if the
    header is not complete within `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    async with asyncio.timeout(timeout):
        while True:
            await _readable(loop, sock)
            try:
                data = sock.recv(MAX_HEADER, socket.MSG_PEEK)
            except BlockingIOError:
                continue
            if not data:
                raise ProxyHeaderError("the connection closed before its PROXY header was complete")
            header = parse(data)
            if header is not None:
                _consume(sock, header.length)
                return header
            await asyncio.sleep(min(_PIECE_WAIT, max(deadline - time.monotonic(), 0)))


def _consume(sock: socket.socket, length: int) -> None:
    """Take `length` bytes that a peek has shown to be there."""
    while length > 0:
        length -= len(sock.recv(length))


def client_address(request: web.BaseRequest, trusted: forwarded.TrustedProxies) -> str | None:
    """The address of the client behind `request` (worked out once): the connection's peer (the
    client a PROXY header named, if one did), or, when that is a trusted proxy, the right-most
    address of X-Forwarded-For that is not one."""
    known = request.get(_CLIENT)
    if isinstance(known, str):
        return known
    client = request.remote
    if trusted:
        client = forwarded.client_address(client, request.headers.getall("X-Forwarded-For", ()), trusted)
    if client is not None:
        request[_CLIENT] = client
    return client
