"""Request bodies read straight off the connection, past aiohttp's HTTP parser.

aiohttp hands a request body over in three copies: its TLS layer decrypts each record into a
fresh bytes object and joins them, the HTTP parser slices its own copy for the payload stream,
and the sealing code then assembles whole segments from the pieces. On a large upload those
copies cost more CPU than the encryption does (`benchmarks/floor.py` measures it).

`DirectBody` takes the connection over once the request head is parsed. As a buffered protocol
it has the TLS layer decrypt straight into 512 KiB blocks, and it hands out views of those blocks
cut at segment boundaries, so segments are sealed from the received bytes without another copy.
Blocks are reused once read, so no fresh memory has to be cleared either.

When the declared body has arrived, the connection goes back to aiohttp with a fresh request
parser (`renew_parser`): the old one still expects the body it never saw. The next request on
the connection, pipelined or not, is then parsed as on a new connection, so multipart parts and
runs of uploads keep their connections. The fresh parser is built as aiohttp's RequestHandler
builds its own, with the handler's settings; `renew_parser` first checks, once per process,
that aiohttp's code still builds it that way, and if not (an aiohttp it does not know, or no
source to read) the connection closes after the response instead (`closes_connection`), with
bytes after the declared body dropped. So does a body that ended early. Every read is cut at
the declared body's end, so the next request starts exactly where aiohttp's own parser would
have started it.

Bodies of at least ``server.direct_body_min_bytes`` (1 MiB by default) take this path: from
there on it costs 15–20% less CPU per uploaded GiB (`benchmarks/README.md`, session 5); below,
the fixed costs of a request dominate and it gains nothing measurable.

`DirectBody` offers the reads `proxy.server.body.PlaintextBody` makes, so every check on a body
(length, hashes, aws-chunked framing and signatures, stall timeout) runs unchanged on top.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import inspect
import logging
import textwrap
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web, web_protocol

__all__ = ["BLOCK", "HIGH_WATER", "DirectBody", "closes_connection", "renew_parser", "take_over"]

log = logging.getLogger(__name__)

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

    def __init__(
        self,
        transport: asyncio.Transport,
        head: bytes,
        remaining: int,
        segment: int,
        *,
        hand_back: Callable[[], bool] | None = None,
    ) -> None:
        """`hand_back`, called once the whole body has arrived, readies the replaced protocol for
        the connection's next bytes; if it returns True the connection goes back to it.
        Without it, or if it returns False, bytes after the body are read and dropped."""
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
        self._hand_back = hand_back
        #: Whether the connection went back to the replaced protocol after the body.
        self.handed_back = False
        self._enqueue(everything=remaining <= 0)
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
        if self._remaining == 0:
            self._give_back()
        elif self._queued >= HIGH_WATER and not self._paused and self._transport is not None:
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
        # rarely, see _tune_gc in proxy/cli.py) would free only much later. Cut it now.
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

    def _give_back(self) -> None:
        """The body is complete: the connection's next bytes go to the replaced protocol, if it
        is ready for them. The transport's own buffers keep whatever followed the body, as every
        read was cut at the body's end."""
        transport, previous, ready = self._transport, self._previous, self._hand_back
        self._hand_back = None
        if transport is None or previous is None or ready is None or transport.is_closing() or not ready():
            return
        if self._paused:
            self._paused = False
            transport.resume_reading()
        self.handed_back = True
        self._previous = self._transport = None
        transport.set_protocol(previous)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def take_over(request: web.Request, min_bytes: int, segment: int) -> DirectBody | None:
    """The request's body as a `DirectBody` if it declares at least `min_bytes` and has not all
    arrived yet; None leaves it with aiohttp. After the body the connection goes back to aiohttp
    (`renew_parser`) or, where that cannot be done, closes after the response."""
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
        # All of it is with aiohttp already (its parser may not have marked the end yet).
        or request.content.total_bytes >= length
    ):
        return None
    # Every body byte aiohttp has received is in request.content by now: its parser hands a
    # Content-Length body's bytes over as they arrive and only pauses between them.
    head = request.content.read_nowait(-1)
    # aiohttp's stream gets nothing more: ended now, aiohttp does not wait for the rest of it
    # (lingering) before it closes the connection after the response.
    request.content.feed_eof()
    handler = request.protocol
    return DirectBody(transport, head, length - len(head), segment, hand_back=lambda: renew_parser(handler))


def closes_connection(request: web.Request) -> bool:
    """Whether this request's body was taken over and the connection not given back to aiohttp
    (the body ended early, or the parser could not be renewed), so it cannot carry another."""
    transport = request.transport
    return transport is not None and isinstance(transport.get_protocol(), DirectBody)


# -- the connection back to aiohttp ---------------------------------------------------------------


def renew_parser(handler: web_protocol.RequestHandler) -> bool:
    """Give aiohttp's `handler` a fresh request parser, built as its constructor built the one it
    has, for the next request on its connection; False (nothing changed) where that cannot be
    done safely. The parser it has still expects the body that `DirectBody` read instead."""
    recipe = _parser_recipe()
    old = getattr(handler, "_parser", None)
    loop = getattr(handler, "_loop", None)
    # What the handler was constructed with: the aiohttp server passes the same to each one.
    options = getattr(getattr(handler, "_manager", None), "_kwargs", None)
    if recipe is None or loop is None or not isinstance(options, dict):
        return False
    if old is None or type(old) is not getattr(web_protocol, "HttpRequestParser", None):
        return False

    def value(name: str) -> Any:
        if name == "self":
            return handler
        if name == "loop":
            return loop
        if name in recipe.defaults:
            return options.get(name, recipe.defaults[name])
        return getattr(web_protocol, name)

    try:
        parser = type(old)(*(value(n) for n in recipe.args), **{k: value(n) for k, n in recipe.kwargs.items()})
    except Exception:  # noqa: BLE001 - an aiohttp this code does not know: close instead
        log.debug("cannot renew aiohttp's request parser; the connection closes", exc_info=True)
        return False
    handler._parser = parser
    return True


@dataclass(frozen=True)
class _Recipe:
    """How aiohttp's RequestHandler builds its parser: the names passed as arguments, each
    ``self``, ``loop``, one of the constructor's parameters (`defaults` has those) or a name in
    `aiohttp.web_protocol`."""

    args: list[str]
    kwargs: dict[str, str]
    defaults: dict[str, Any]


@functools.cache
def _parser_recipe() -> _Recipe | None:
    """How this aiohttp's `RequestHandler` builds its parser, read once per process."""
    return parser_recipe(web_protocol.RequestHandler.__init__, web_protocol)


def parser_recipe(init: Callable[..., None], module: object) -> _Recipe | None:
    """How the constructor `init` (defined in `module`) calls `HttpRequestParser`. Only a call
    whose arguments are all plain names, each the handler itself, its loop, one of the
    constructor's own parameters left as passed, or a name in `module`, is understood; anything
    else (or no source to read) gives None, and connections close after a direct body."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
        params = inspect.signature(init).parameters
    except (OSError, TypeError, SyntaxError, ValueError):
        return None
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "HttpRequestParser"
    ]
    if len(calls) != 1:
        return None
    call = calls[0]
    if not all(isinstance(a, ast.Name) for a in call.args) or not all(
        k.arg is not None and isinstance(k.value, ast.Name) for k in call.keywords
    ):
        return None
    args = [cast(ast.Name, a).id for a in call.args]
    kwargs = {cast(str, k.arg): cast(ast.Name, k.value).id for k in call.keywords}
    # A parameter that the constructor rebinds before the call would not be the value passed.
    rebound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    defaults = {
        name: p.default
        for name, p in params.items()
        if name not in ("self", "loop") and p.default is not inspect.Parameter.empty
    }
    for name in [*args, *kwargs.values()]:
        if name in ("self", "loop"):
            continue
        if name in rebound or (name not in defaults and not hasattr(module, name)):
            return None
    if args[:2] != ["self", "loop"]:
        return None
    return _Recipe(args, kwargs, defaults)
