"""Downloads that keep moving. A GetObject holds its backend connection until the client has
taken the body, so a reader that takes it slowly would hold that connection as long as it likes:

- **a minimum rate** (`DownloadPace`): each span of ``server.download_grace_seconds`` that
  sealgate spends waiting for the client to take the body (writes blocked on a full socket)
  must see ``server.download_min_bytes_per_second`` × that span taken off the connection, or
  the connection is cut. Time spent waiting for the backend does not count, and nothing carries
  over from one span to the next. The bytes taken are those the client's TCP has acknowledged
  (written, less what still waits in the transport's buffer and the kernel's send queue),
  checked by a timer rather than at each write, so a write that waits long is judged by the
  progress made while it waits. Only the client's own receive buffer counts as taken before it
  reads, so a client that stops reading is cut after one span; the cut is a reset, which drops
  what the kernel still holds for it.
- **a per-client cap** (`download_slot`): each client may have only
  ``backend.streamed_downloads_per_client`` downloads in progress per process; one more waits
  ``backend.pool_wait_seconds`` for one of them to end, then gets 503 SlowDown.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import struct
import termios
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress

from aiohttp import web

from proxy.crypto.format import FormatError, IntegrityError
from proxy.server.listener import CONNECTIONS_KEY
from proxy.server.state import CALLER
from proxy.store.backend import BackendResponse
from proxy.store.bodies import Decryptor
from proxy.store.gateway import Gateway

log = logging.getLogger("sealgate.downloads")

__all__ = ["DownloadPace", "abort", "download_slot", "paced", "pump"]

#: Least time between two looks at a download's progress.
_MIN_TICK = 0.25


class DownloadPace:
    """The pace one response's client takes its body at; cuts the connection when a span of
    `span` seconds of waiting for the client brings less than `rate` × `span` bytes."""

    def __init__(self, request: web.Request, rate: int, span: float, name: str) -> None:
        self._request = request
        self._rate = rate
        self._span = span
        #: What is being downloaded (``/bucket/key``), for log lines.
        self.name = name
        #: Body bytes handed to the connection so far.
        self.written = 0
        self._waited = 0.0
        self._blocked_since: float | None = None
        self._span_start = (0.0, 0)  # (time waited, bytes taken) when the current span began
        self._timer: asyncio.TimerHandle | None = None
        #: Whether the pace cut the connection (a write then fails: that is no error).
        self.cut = False

    def start(self) -> None:
        """Begin watching (nothing to watch with rate 0)."""
        if self._rate > 0:
            self._schedule(self._span)

    def stop(self) -> None:
        """Stop watching: the response is over."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def write(self, out: web.StreamResponse, data: bytes | bytearray | memoryview) -> None:
        """`out.write(data)`, the time it waits counted as waiting for the client."""
        self.written += len(data)
        self._blocked_since = time.monotonic()
        try:
            await out.write(data)
        finally:
            self._waited += time.monotonic() - self._blocked_since
            self._blocked_since = None

    def _taken(self) -> int:
        """Bytes the client has acknowledged: written, less what waits in the transport's buffer
        and in the kernel's send queue (which the kernel refills only once half of it is free,
        megabytes on a fast link: without it, progress would show in bursts that long apart)."""
        transport = self._request.transport
        if transport is None:
            return self.written
        return self.written - transport.get_write_buffer_size() - _unsent(transport.get_extra_info("socket"))

    def _schedule(self, delay: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(max(delay, _MIN_TICK), self._check)

    def _check(self) -> None:
        self._timer = None
        now = time.monotonic()
        waited = self._waited + (now - self._blocked_since if self._blocked_since is not None else 0.0)
        taken = self._taken()
        span_waited, span_taken = waited - self._span_start[0], taken - self._span_start[1]
        if span_waited >= self._span - 0.001:  # a timer is never early by design, only by rounding
            if span_taken < self._rate * self._span:
                self._cut(span_taken)
                return
            self._span_start, span_waited = (waited, taken), 0.0
        self._schedule(self._span - span_waited)

    def _cut(self, taken: int) -> None:
        self.cut = True
        why = (
            f"the client took {taken} bytes in {self._span:g}s of waiting, fewer than "
            f"server.download_min_bytes_per_second ({self._rate}) allows"
        )
        connections = self._request.app.get(CONNECTIONS_KEY)
        if connections is not None:
            connections.log_limit.log(log, logging.INFO, "slow-download", "cutting GET %s: %s", self.name, why)
        else:
            log.info("cutting GET %s: %s", self.name, why)
        transport = self._request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            # A reset, not a close: what the kernel still buffers for this client (megabytes,
            # which it would go on taking at its own pace) is dropped with the connection.
            with suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        abort(self._request)


def _unsent(sock: socket.socket | None) -> int:
    """Bytes in `sock`'s kernel send queue not yet acknowledged by the peer (Linux's SIOCOUTQ;
    0 where it is not to be had, which leaves only the coarser measure)."""
    request = getattr(termios, "TIOCOUTQ", None)
    if sock is None or request is None:
        return 0
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0\0\0\0"))[0])
    except (OSError, ValueError):
        return 0


@contextmanager
def paced(gw: Gateway, request: web.Request, name: str) -> Iterator[DownloadPace]:
    """A `DownloadPace` for `request`'s response, watching for the block."""
    srv = gw.config.server
    pace = DownloadPace(request, srv.download_min_bytes_per_second, srv.download_grace_seconds, name)
    pace.start()
    try:
        yield pace
    finally:
        pace.stop()


@asynccontextmanager
async def download_slot(gw: Gateway, request: web.Request) -> AsyncIterator[None]:
    """One of the caller's download slots for the block (SlowDown if none frees in time).
    Unsigned reads have no client name: they count per source address."""
    caller = request[CALLER]
    client = f"{caller.identity}@{caller.source_ip}" if caller.anonymous else str(caller.identity)
    async with gw.backend.downloads.held(client):
        yield


def abort(request: web.Request) -> None:
    """Cut the client connection: a body must never end cleanly with missing or wrong bytes."""
    transport = request.transport
    if transport is not None:
        transport.abort()


async def pump(
    request: web.Request,
    out: web.StreamResponse,
    source: BackendResponse,
    decryptor: Decryptor,
    span: tuple[int, int],
    pace: DownloadPace,
) -> web.StreamResponse:
    """Send the response: backend bytes (after skipping `span[0]`, `span[1]` of them) through
    the decryptor to the client, only authenticated bytes. A failure once the response has
    started aborts the connection, so the client never sees a body that ends cleanly but wrong."""
    skip, remaining = span
    name = pace.name
    await out.prepare(request)
    try:
        async for chunk in source.raw.content.iter_any():
            view = memoryview(chunk)
            if skip:
                take = min(skip, len(view))
                view = view[take:]
                skip -= take
            view = view[:remaining]
            remaining -= len(view)
            for piece in decryptor.feed(view):
                await pace.write(out, piece)
            if remaining == 0:
                break
        decryptor.finish()
    except (IntegrityError, FormatError) as exc:
        log.error("integrity failure on GET %s: %s; aborting the response", name, exc)
        abort(request)
        return out
    except Exception as exc:  # noqa: BLE001 - backend read errors mid-body
        if not pace.cut:
            log.warning("backend read failed mid-body on GET %s: %s", name, exc.__class__.__name__)
        abort(request)
        return out
    await out.write_eof()
    return out
