"""DirectBody on real TLS connections, on asyncio's event loop and on uvloop's (which sealgate
uses when installed): the bytes read are the bytes sent, in order, with block reuse; reading
pauses the client while too much waits; after the body the connection goes back to the replaced
protocol when it is ready, and otherwise what follows is dropped; the connection's end reaches
the replaced protocol. And how the parser for the next request is built from aiohttp's code."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import ssl
import types
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import trustme

from proxy.server.direct import BLOCK, HIGH_WATER, DirectBody, _parser_recipe, parser_recipe, renew_parser

SEGMENT = 64 * 1024


def loops() -> list[Any]:
    out: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:
        out.append(pytest.param(None, id="uvloop", marks=pytest.mark.skip(reason="uvloop not installed")))
    else:
        out.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
    return out


class Previous(asyncio.Protocol):
    """The protocol DirectBody replaces: records what is passed on to it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost: list[Exception | None] = []
        self.received = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)
        self.transport = None  # as aiohttp's handler does


Scenario = Callable[[Previous, asyncio.StreamWriter], Coroutine[Any, Any, None]]


def run(new_loop: Callable[[], asyncio.AbstractEventLoop], scenario: Scenario, *, tls: bool = True) -> None:
    """A TLS server (plain TCP with `tls` false, as for ``plain_http_listen``) whose one
    connection starts with `Previous`; `scenario` gets it and the client's writer."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def main() -> None:
        accepted: asyncio.Future[Previous] = asyncio.get_running_loop().create_future()

        def factory() -> Previous:
            p = Previous()
            accepted.set_result(p)
            return p

        loop = asyncio.get_running_loop()
        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=server_ctx if tls else None)
        port = server.sockets[0].getsockname()[1]
        if tls:
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
        else:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        previous = await asyncio.wait_for(accepted, 5)
        try:
            await asyncio.wait_for(scenario(previous, writer), 30)
        finally:
            writer.close()
            server.close()

    loop = new_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


async def read_all(body: DirectBody) -> tuple[bytes, list[int]]:
    """Everything the body yields (each piece copied before the next read), and piece sizes."""
    out = bytearray()
    sizes = []
    while piece := await body.readany():
        out += piece
        sizes.append(len(piece))
    return bytes(out), sizes


@pytest.mark.parametrize("ready", [None, False], ids=["no-hand-back", "not-ready"])
@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
@pytest.mark.parametrize("new_loop", loops())
def test_reads_exactly_the_body_in_order_across_reused_blocks(new_loop: Any, tls: bool, ready: bool | None) -> None:
    data = os.urandom(9 * BLOCK + 12345)  # more blocks than are kept for reuse, and a partial one
    head = data[:1000]  # as if aiohttp had parsed these before the take-over

    async def scenario(previous: Previous, writer: asyncio.StreamWriter) -> None:
        assert previous.transport is not None
        hand_back = None if ready is None else (lambda: False)
        body = DirectBody(previous.transport, head, len(data) - len(head), SEGMENT, hand_back=hand_back)
        writer.write(data[len(head) :] + b"GET /next HTTP/1.1\r\n\r\n")  # a pipelined request
        got, _ = await read_all(body)
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        assert body.at_eof()
        await asyncio.sleep(0.1)
        # The old protocol was not ready for them: bytes after the declared body were dropped.
        assert previous.received == b"" and not body.handed_back

    run(new_loop, scenario, tls=tls)


@pytest.mark.parametrize("paused", [False, True], ids=["flowing", "paused"])
@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
@pytest.mark.parametrize("new_loop", loops())
def test_after_the_body_the_connection_goes_back_to_a_ready_protocol(new_loop: Any, tls: bool, paused: bool) -> None:
    # Paused: the body is read only once the client has been paused at the high-water mark;
    # after the body the old protocol must still be reading.
    data = os.urandom(6 * HIGH_WATER + 4321 if paused else 3 * BLOCK + 4321)
    head = data[:1000]
    after = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n" * 1000  # pipelined requests, 31 KB

    async def scenario(previous: Previous, writer: asyncio.StreamWriter) -> None:
        transport = previous.transport
        assert transport is not None
        asked = []
        body = DirectBody(transport, head, len(data) - len(head), SEGMENT, hand_back=lambda: asked.append(1) or True)
        writer.write(data[len(head) :] + after)
        if paused:
            for _ in range(200):
                await asyncio.sleep(0.02)
                if not transport.is_reading():
                    break
            assert not transport.is_reading()
        got, _ = await read_all(body)
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        for _ in range(200):
            if len(previous.received) >= len(after):
                break
            await asyncio.sleep(0.01)
        # Exactly the bytes after the body, to the old protocol, which reads on.
        assert previous.received == after
        assert body.handed_back and asked == [1] and transport.is_reading()
        assert transport.get_protocol() is previous

    run(new_loop, scenario, tls=tls)


@pytest.mark.parametrize("new_loop", loops())
def test_a_reader_that_is_behind_gets_whole_segments(new_loop: Any) -> None:
    data = os.urandom(3 * BLOCK + 4321)
    head = data[:777]

    async def scenario(previous: Previous, writer: asyncio.StreamWriter) -> None:
        assert previous.transport is not None
        body = DirectBody(previous.transport, head, len(data) - len(head), SEGMENT)
        writer.write(data[len(head) :])
        while body.remaining:  # everything arrives before the first read
            await asyncio.sleep(0.01)
        got, sizes = await read_all(body)
        assert got == data
        # The pieces end on the body's segment boundaries (the sealing code then seals them
        # without copying), apart from the end of the body.
        ends = [sum(sizes[: i + 1]) for i in range(len(sizes))]
        assert all(end % SEGMENT == 0 for end in ends[:-1]), ends
        assert ends[-1] == len(data)

    run(new_loop, scenario)


@pytest.mark.parametrize("new_loop", loops())
def test_pauses_reading_while_too_much_waits(new_loop: Any) -> None:
    data = os.urandom(6 * HIGH_WATER)

    async def scenario(previous: Previous, writer: asyncio.StreamWriter) -> None:
        assert previous.transport is not None
        transport = previous.transport
        body = DirectBody(transport, b"", len(data), SEGMENT)
        writer.write(data)
        # Nobody reads: the connection stops being read at the high-water mark ...
        for _ in range(200):
            await asyncio.sleep(0.02)
            if not transport.is_reading():
                break
        assert not transport.is_reading()
        await asyncio.sleep(0.2)
        got = bytearray()
        while piece := body.read_nowait():  # ... so what waits stays bounded
            got += piece
        assert len(got) <= HIGH_WATER + 2 * BLOCK
        # Reading on resumes it, and nothing is lost.
        rest, _ = await read_all(body)
        assert bytes(got) + rest == data

    run(new_loop, scenario)


@pytest.mark.parametrize("end", ["abort", "close"])
@pytest.mark.parametrize("new_loop", loops())
def test_a_client_gone_mid_body_is_a_short_body_and_reaches_the_old_protocol(new_loop: Any, end: str) -> None:
    async def scenario(previous: Previous, writer: asyncio.StreamWriter) -> None:
        assert previous.transport is not None
        body = DirectBody(previous.transport, b"", 10 * SEGMENT, SEGMENT)
        sent = os.urandom(3 * SEGMENT + 5)
        writer.write(sent)
        await writer.drain()
        await asyncio.sleep(0.1)
        if end == "abort":
            writer.transport.abort()
        else:
            writer.close()  # TLS close_notify, then FIN
        got = b""
        try:
            while piece := await body.readany():
                got += piece
        except ConnectionError:
            pass  # a reset is an error; a close is the end of a too-short body
        assert got == sent  # the reader's length check then fails the request
        for _ in range(100):
            if previous.lost:
                break
            await asyncio.sleep(0.01)
        assert len(previous.lost) == 1  # so aiohttp and the listener learn the connection ended

    run(new_loop, scenario)


@pytest.mark.parametrize("handed_back", [False, True], ids=["kept", "handed-back"])
@pytest.mark.parametrize("new_loop", loops())
def test_its_memory_is_freed_when_the_connection_ends_without_the_garbage_collector(
    new_loop: Any, handed_back: bool
) -> None:
    # sealgate runs the cyclic garbage collector rarely (_tune_gc in proxy/cli.py): a reference cycle through
    # the transport would keep each finished upload's blocks for a long time.
    async def scenario(previous: Previous, writer: asyncio.StreamWriter) -> None:
        assert previous.transport is not None
        body = DirectBody(previous.transport, b"", 3 * BLOCK, SEGMENT, hand_back=lambda: handed_back)
        writer.write(os.urandom(3 * BLOCK))
        got, _ = await read_all(body)
        assert len(got) == 3 * BLOCK
        assert body.handed_back is handed_back
        writer.close()
        for _ in range(100):
            if previous.lost:
                break
            await asyncio.sleep(0.01)
        assert previous.lost
        ref = weakref.ref(body)
        del body
        await asyncio.sleep(0.05)  # the loop lets go of the closed transport
        assert ref() is None

    gc.collect()
    gc.disable()
    try:
        run(new_loop, scenario)
    finally:
        gc.enable()


# -- the parser for the connection's next request --------------------------------------------------


class HttpRequestParser:
    """Stands for aiohttp's parser class in the constructors below (only their source is read)."""


RequestPayloadError = ValueError
MODULE = types.SimpleNamespace(RequestPayloadError=RequestPayloadError, LIMIT=5)


class KnownHandler:
    def __init__(self, manager: object, *, loop: object, read_bufsize: int = 2**16, max_line_size: int = 8190) -> None:
        self._parser = HttpRequestParser(
            self, loop, read_bufsize, max_line_size=max_line_size, payload_exception=RequestPayloadError
        )


class RebindingHandler:
    def __init__(self, manager: object, *, loop: object, read_bufsize: int = 2**16) -> None:
        read_bufsize = max(read_bufsize, 1024)
        self._parser = HttpRequestParser(self, loop, read_bufsize)


class ComputingHandler:
    def __init__(self, manager: object, *, loop: object, max_line_size: int = 8190) -> None:
        self._parser = HttpRequestParser(self, loop, 2**16, max_line_size=max_line_size * 2)


class LocalNameHandler:
    def __init__(self, manager: object, *, loop: object) -> None:
        limit = 2**16
        self._parser = HttpRequestParser(self, loop, limit)


class UnknownNameHandler:
    def __init__(self, manager: object, *, loop: object) -> None:
        self._parser = HttpRequestParser(self, loop, NOT_IN_MODULE)  # noqa: F821


class NoParserHandler:
    def __init__(self, manager: object, *, loop: object) -> None:
        self._parser = None


def test_a_parser_built_from_parameters_and_module_names_is_understood() -> None:
    recipe = parser_recipe(KnownHandler.__init__, MODULE)
    assert recipe is not None
    assert recipe.args == ["self", "loop", "read_bufsize"]
    assert recipe.kwargs == {"max_line_size": "max_line_size", "payload_exception": "RequestPayloadError"}
    assert recipe.defaults == {"read_bufsize": 2**16, "max_line_size": 8190}


@pytest.mark.parametrize(
    "handler", [RebindingHandler, ComputingHandler, LocalNameHandler, UnknownNameHandler, NoParserHandler]
)
def test_a_parser_built_any_other_way_is_not_rebuilt(handler: type) -> None:
    # Rebuilding it from what was passed could give a parser with other settings: the
    # connection closes after a direct body instead.
    assert parser_recipe(handler.__init__, MODULE) is None


def test_the_installed_aiohttp_builds_its_parser_in_a_way_understood() -> None:
    # If this fails after an aiohttp upgrade, every direct body closes its connection again
    # (safe, but slower): read how RequestHandler.__init__ now builds its parser.
    recipe = _parser_recipe()
    assert recipe is not None
    assert {"max_line_size", "max_field_size", "max_headers"} <= set(recipe.kwargs)


def test_a_handler_that_is_not_aiohttps_is_left_alone() -> None:
    thing = types.SimpleNamespace(_parser=HttpRequestParser(), _manager=types.SimpleNamespace(_kwargs={}))
    assert renew_parser(thing) is False
    assert isinstance(thing._parser, HttpRequestParser)
