"""Large request bodies read straight off the connection, past aiohttp's HTTP parser.

aiohttp hands a request body over in three copies: its TLS layer decrypts each record into a
fresh bytes object and joins them, the HTTP parser slices its own copy for the payload stream,
and the sealing code then assembles whole segments from the pieces. On a large upload those
copies cost more CPU than the encryption does (`benchmarks/floor.py` measures it).

`DirectBody` takes the connection over once the request head is parsed. As a buffered protocol
it has the TLS layer decrypt straight into 512 KiB blocks, and it hands out views of those blocks
cut at segment boundaries, so segments are sealed from the received bytes without another copy.
Blocks are reused once read, so no fresh memory has to be cleared either.

The price is the connection: aiohttp's parser never sees the body, so it cannot know where a
next request would start. The response therefore says ``Connection: close``
(`closes_connection`), and bytes after the declared body are dropped. That is why only bodies of
at least ``server.direct_body_min_bytes`` (64 MiB by default) take this path: the client's next
request pays one TLS handshake, which is noise against tens of MiB. Multipart parts of the usual
5–16 MiB keep their connection. Closing also means a body's length can never be misjudged in a
way that lets its bytes be read as another request.

`DirectBody` offers the reads `proxy.server.body.PlaintextBody` makes, so every check on a body
(length, hashes, aws-chunked framing and signatures, stall timeout) runs unchanged on top.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

from aiohttp import web

__all__ = ["BLOCK", "HIGH_WATER", "DirectBody", "closes_connection", "take_over"]

#: Size of the blocks the TLS layer decrypts into: a multiple of the segment size.
BLOCK = 512 * 1024
#: Reading from the client pauses while this much body waits to be read, and resumes below a
#: quarter of it (aiohttp's own payload stream bounds its buffer the same way).
HIGH_WATER = 4 * BLOCK
#: Read blocks kept for reuse.
_SPARE_BLOCKS = 2


class DirectBody(asyncio.BufferedProtocol):
    """The rest of one request body; it replaces the connection's protocol while it lives.

    Write flow control and the end of the connection are passed on to the protocol it replaced,
    so aiohttp still writes the response and the listener still frees the connection's slot.
    """

    def __init__(self, transport: asyncio.Transport, head: bytes, remaining: int, segment: int) -> None:
        # Both are let go of when the connection ends (see connection_lost).
        self._transport: asyncio.Transport | None = transport
        self._previous: asyncio.Protocol | None = cast(asyncio.Protocol, transport.get_protocol())
        self._segment = segment
        #: Body bytes not yet received.
        self._remaining = remaining
        # What aiohttp had parsed already goes first, so that a block's offsets are the body's
        # offsets modulo BLOCK and the segment boundaries line up.
        self._block = bytearray(max(1, -(-len(head) // BLOCK)) * BLOCK)
        self._block[: len(head)] = head
        self._fill = len(head)  # received into the current block
        self._cut = 0  # of which handed to the queue
        #: (block, view of it) in body order, not yet read.
        self._ready: deque[tuple[bytearray, memoryview]] = deque()
        self._queued = 0
        #: The block of the piece read last: it is free again at the next read.
        self._lent: bytearray | None = None
        self._spare: list[bytearray] = []
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._eof = False
        self._paused = False
        self._discard: memoryview | None = None
        self._enqueue(everything=False)
        transport.set_protocol(self)

    # -- asyncio protocol -------------------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._remaining <= 0:
            # Past the declared body (a pipelined request): read and dropped, as the
            # connection closes after the response.
            if self._discard is None:
                self._discard = memoryview(bytearray(64 * 1024))
            return self._discard
        if self._fill == len(self._block):
            self._block = self._spare.pop() if self._spare else bytearray(BLOCK)
            self._fill = self._cut = 0
        return memoryview(self._block)[self._fill : min(len(self._block), self._fill + self._remaining)]

    def buffer_updated(self, nbytes: int) -> None:
        if self._remaining <= 0:
            return
        self._fill += nbytes
        self._remaining -= nbytes
        # While nobody waits, only whole segments are queued; the rest follows with the next
        # bytes. A reader that waits gets whatever is there.
        self._enqueue(everything=self._remaining == 0 or self._waiter is not None)
        if self._queued >= HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close the connection

    def connection_lost(self, exc: Exception | None) -> None:
        if self._remaining > 0 and self._error is None:
            self._error = exc or ConnectionResetError("the client closed the connection mid-body")
        self._eof = True
        self._wake()
        # The transport holds this protocol and this protocol held the transport and the protocol
        # before it: a reference cycle with the blocks in it, which the garbage collector (run
        # rarely, see proxy/gc.py) would free only much later. Cut it now.
        previous, self._previous, self._transport = self._previous, None, None
        if previous is not None:
            previous.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._previous is not None:
            self._previous.pause_writing()

    def resume_writing(self) -> None:
        if self._previous is not None:
            self._previous.resume_writing()

    # -- the reads PlaintextBody makes ------------------------------------------------------------

    def read_nowait(self) -> bytes | memoryview:
        """The next piece of the body, or b"" when none is queued. A piece is a view of a receive
        block and must be used up before the next read, which may reuse its memory."""
        if not self._ready:
            return b""
        block, piece = self._ready.popleft()
        lent, self._lent = self._lent, block
        if lent is not None and lent is not block and len(self._spare) < _SPARE_BLOCKS:
            self._spare.append(lent)  # every piece of it has been read and used
        self._queued -= len(piece)
        if self._paused and self._queued <= HIGH_WATER // 4 and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return piece

    @property
    def remaining(self) -> int:
        """Body bytes not received yet."""
        return max(0, self._remaining)

    def at_eof(self) -> bool:
        """The whole body has been read, or the client ended the stream early (the reader's
        length check then fails)."""
        return not self._ready and (self._remaining <= 0 or (self._eof and self._error is None))

    async def readany(self) -> bytes | memoryview:
        """The next piece, waiting for one; b"" at the end. Raises if the connection broke."""
        while not self._ready:
            if self._error is not None:
                raise self._error
            if self.at_eof():
                return b""
            self._enqueue(everything=True)
            if self._ready:
                break
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.read_nowait()

    # -- ours -------------------------------------------------------------------------------------

    def _enqueue(self, *, everything: bool) -> None:
        end = self._fill if everything else self._fill - self._fill % self._segment
        if end > self._cut:
            self._ready.append((self._block, memoryview(self._block)[self._cut : end]))
            self._queued += end - self._cut
            self._cut = end
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def take_over(request: web.Request, min_bytes: int, segment: int) -> DirectBody | None:
    """The request's body as a `DirectBody` if it declares at least `min_bytes` and has not all
    arrived yet; None leaves it with aiohttp."""
    length = request.content_length
    transport = request.transport
    if (
        min_bytes <= 0
        or length is None
        or length < min_bytes
        or "Transfer-Encoding" in request.headers
        or transport is None
        or transport.is_closing()
        or request.content.exception() is not None
        or request.content.is_eof()
    ):
        return None
    # Every body byte aiohttp has received is in request.content by now: its parser hands a
    # Content-Length body's bytes over as they arrive and only pauses between them.
    head = request.content.read_nowait(-1)
    # aiohttp's stream gets nothing more: ended now, aiohttp does not wait for the rest of it
    # (lingering) before it closes the connection after the response.
    request.content.feed_eof()
    return DirectBody(transport, head, length - len(head), segment)


def closes_connection(request: web.Request) -> bool:
    """Whether this request's body was taken over, so its connection cannot carry another."""
    transport = request.transport
    return transport is not None and isinstance(transport.get_protocol(), DirectBody)
