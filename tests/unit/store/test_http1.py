"""sealgate's own HTTP/1.1 client to the backend (proxy/store/http1.py, the pool in
proxy/store/pool.py), driven through `Backend` against real sockets: scripted servers on
loopback that answer as backends do, and misbehave as they may."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from proxy.s3.errors import S3Error
from proxy.store.backend import Backend, BackendResponse, BackendSettings
from proxy.store.http1 import HIGH_WATER, request_head
from proxy.store.pool import ConnectionPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


class Server:
    """A loopback server whose every connection runs `handler`; counts connections and requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
        """One request's head and its Content-Length body."""
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        return head, await reader.readexactly(length)


@asynccontextmanager
async def serving(handler: Handler, **settings: object) -> AsyncIterator[tuple[Server, Backend]]:
    srv = Server(handler)
    server = await asyncio.start_server(srv._serve, "127.0.0.1", 0)
    srv.port = server.sockets[0].getsockname()[1]
    backend = Backend(
        BackendSettings(
            endpoint=f"http://127.0.0.1:{srv.port}",
            region="us-east-1",
            access_key_id="AKIDTESTHTTP1",
            secret_access_key="secret",
            **settings,  # type: ignore[arg-type]
        )
    )
    await backend.start()
    try:
        yield srv, backend
    finally:
        await backend.close()
        server.close()


def answer(status: int, body: bytes = b"", extra: str = "") -> bytes:
    return f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


async def keep_alive_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
    while True:
        head, body = await srv.read_request(reader)
        writer.write(answer(200, b"got " + str(len(body)).encode(), 'ETag: "e"\r\n'))
        await writer.drain()


async def test_requests_share_one_kept_alive_connection() -> None:
    async with serving(keep_alive_ok) as (srv, backend):
        for i in range(5):
            resp = await backend.request("PUT", "b", f"k{i}", body=b"x" * (i * 1000))
            assert (resp.status, resp.headers["etag"]) == (200, '"e"')
            assert await resp.read() == b"got " + str(i * 1000).encode()
            resp.release()
        assert srv.connections == 1 and len(srv.requests) == 5
        first = srv.requests[0].decode()
        assert first.startswith("PUT /b/k0 HTTP/1.1\r\n") and "Authorization: AWS4-HMAC-SHA256" in first


async def test_a_chunked_answer_and_a_head_answer_with_a_length() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        while True:
            head, _ = await srv.read_request(reader)
            if head.startswith(b"HEAD"):  # a length, and no body after it
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\nx-amz-meta-a: 1\r\n\r\n")
            else:
                writer.write(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                )
            await writer.drain()

    async with serving(handler) as (srv, backend):
        for _ in range(2):
            resp = await backend.request("HEAD", "b", "k")
            assert resp.headers["Content-Length"] == "12345" and resp.user_metadata() == {"a": "1"}
            resp.release()
            resp = await backend.request("GET", "b", "k")
            assert b"".join([c async for c in resp.raw.content.iter_any()]) == b"hello world"
            resp.release()
        assert srv.connections == 1


def answers_with(body: bytes) -> Handler:
    """A kept-alive backend that answers every request with 200 and `body`."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        while True:
            await srv.read_request(reader)
            writer.write(answer(200, body))
            await writer.drain()

    return handler


async def read_span_then_close(resp: BackendResponse, size: int) -> None:
    """Read `size` bytes of the body and stop there, then close the answer: as pump() does at
    the end of a download's span."""
    got = 0
    async for chunk in resp.raw.content.iter_any():
        got += len(chunk)
        if got == size:
            break
    resp.close()


async def test_a_body_read_to_its_length_then_closed_keeps_its_connection() -> None:
    """A download stops reading once it has the object's length and then closes the answer: the
    connection must still serve the next request (a new connection per GET costs a TCP, or TLS,
    handshake each). Closed before the end, the connection is dropped."""
    async with serving(answers_with(b"y" * 50_000)) as (srv, backend):
        for _ in range(4):
            await read_span_then_close(await backend.request("GET", "b", "k"), 50_000)
        assert srv.connections == 1 and len(srv.requests) == 4
        resp = await backend.request("GET", "b", "k")
        assert len(await resp.raw.content.read(10)) == 10
        resp.close()  # abandoned half read
        resp = await backend.request("GET", "b", "k")
        assert len(await resp.read()) == 50_000
        resp.release()
        assert srv.connections == 2


async def test_a_connection_paused_by_a_full_buffer_serves_the_next_request() -> None:
    """An answer one byte over the high-water mark, left unread until all of it has arrived,
    pauses the connection's reading as its last byte comes in; once read (or released unread),
    the connection goes back to the pool reading again, so the next answer on it arrives."""
    size = HIGH_WATER + 1
    async with serving(answers_with(b"z" * size), read_timeout=3.0) as (srv, backend):
        for how in ("read to its length", "released unread"):
            resp = await backend.request("GET", "b", "k")
            await asyncio.sleep(0.3)  # all of it arrives while nobody reads
            if how == "released unread":
                resp.release()
            else:
                await read_span_then_close(resp, size)
            nxt = await asyncio.wait_for(backend.request("GET", "b", "k"), 5)
            assert len(await asyncio.wait_for(nxt.read(), 5)) == size, how
            nxt.release()
        assert srv.connections == 1


async def test_a_connection_the_backend_closed_while_idle_is_replaced_without_using_an_attempt() -> None:
    async def one_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        await srv.read_request(reader)
        writer.write(answer(200, b"ok"))  # says keep-alive, then goes away (an idle timeout)
        await writer.drain()

    async with serving(one_per_connection, max_attempts=1) as (srv, backend):
        for _ in range(3):
            resp = await backend.request("GET", "b", "k")
            assert await resp.read() == b"ok"
            resp.release()
            await asyncio.sleep(0.05)
        assert srv.connections == 3


async def test_an_answer_that_is_not_http_is_a_bad_gateway() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        await srv.read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async with serving(garbage, max_attempts=2, retry_base_delay=0.01) as (srv, backend):
        with pytest.raises(S3Error) as err:
            await backend.request("GET", "b", "k")
        assert (err.value.status, err.value.code) == (502, "BadGateway")
        assert len(srv.requests) == 2  # retried once, as the attempts allow


async def test_a_backend_that_stops_answering_times_out() -> None:
    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        await asyncio.sleep(5)

    async with serving(stalls, read_timeout=0.3, max_attempts=1) as (_, backend):
        resp = await backend.request("GET", "b", "k")
        assert resp.status == 200
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(TimeoutError):
            async for _ in resp.raw.content.iter_any():
                pass
        assert loop.time() - t0 < 2
        resp.close()

    async def no_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        await srv.read_request(reader)
        await asyncio.sleep(5)

    async with serving(no_head, read_timeout=0.3, max_attempts=1) as (_, backend):
        with pytest.raises(S3Error) as err:
            await backend.request("GET", "b", "k")
        assert (err.value.status, err.value.code) == (503, "ServiceUnavailable")


async def test_a_full_pool_answers_slow_down_and_frees_as_requests_end() -> None:
    release = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        while True:
            await srv.read_request(reader)
            await release.wait()
            writer.write(answer(200, b"ok"))
            await writer.drain()

    async with serving(slow, pool_size=1, pool_wait=0.2) as (srv, backend):
        first = asyncio.create_task(backend.request("GET", "b", "one"))
        await asyncio.sleep(0.1)
        with pytest.raises(S3Error) as err:
            await backend.request("GET", "b", "two")
        assert (err.value.status, err.value.code) == (503, "SlowDown")
        second = asyncio.create_task(backend.request("GET", "b", "three"))  # waits, then gets it
        await asyncio.sleep(0.05)
        release.set()
        resp = await first
        assert await resp.read() == b"ok"
        resp.release()
        resp = await second
        assert await resp.read() == b"ok"
        resp.release()
        assert srv.connections == 1


async def test_an_answer_dropped_unread_gives_its_connection_up() -> None:
    async with serving(keep_alive_ok, pool_size=1, pool_wait=0.2) as (_, backend):
        resp = await backend.request("GET", "b", "k")
        assert resp.status == 200
        del resp  # neither read nor released: a bug elsewhere must not take the pool for ever
        gc.collect()
        for _ in range(3):
            resp = await backend.request("GET", "b", "k")
            resp.release()


async def test_a_large_answer_is_read_with_bounded_buffering() -> None:
    size = 24 * 1024 * 1024

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        await srv.read_request(reader)
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        block = b"z" * (1024 * 1024)
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()

    async with serving(big) as (_, backend):
        resp = await backend.request("GET", "b", "k")
        got = most = 0
        await asyncio.sleep(0.3)  # the backend sends as fast as it can; nobody reads yet
        async for chunk in resp.raw.content.iter_any():
            most = max(most, len(chunk))
            got += len(chunk)
            await asyncio.sleep(0.001)
        resp.release()
        assert got == size
        assert most <= HIGH_WATER + 1024 * 1024  # held back at the high-water mark, not 24 MiB


async def test_an_early_answer_ends_a_streamed_upload() -> None:
    async def refuses(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        srv.requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(answer(403, b"<Error><Code>AccessDenied</Code><Message>no</Message></Error>"))
        await writer.drain()
        await asyncio.sleep(2)

    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1000):
            sent += 1
            yield b"y" * 65536
            await asyncio.sleep(0.002)

    async with serving(refuses) as (srv, backend):
        resp = await backend.request("PUT", "b", "k", body=body(), content_length=1000 * 65536)
        assert resp.status == 403
        err = await resp.error()
        assert err.code == "AccessDenied"
        assert sent < 1000  # stopped sending once the answer came


async def test_a_failing_body_is_what_the_caller_sees_and_the_backend_gets_less_than_declared() -> None:
    got: list[int] = []

    async def counts(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        await reader.readuntil(b"\r\n\r\n")
        n = 0
        while chunk := await reader.read(65536):
            n += len(chunk)
        got.append(n)

    async def body() -> AsyncIterator[bytes]:
        yield b"a" * 1000
        raise S3Error("BadDigest", "the body does not match", 400)

    async with serving(counts) as (_, backend):
        with pytest.raises(S3Error) as err:
            await backend.request("PUT", "b", "k", body=body(), content_length=5000)
        assert err.value.code == "BadDigest"
        for _ in range(50):
            if got:
                break
            await asyncio.sleep(0.02)
        assert got == [1000]


async def test_upload_checksum_bodies_go_http_chunked() -> None:
    seen: list[bytes] = []

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            data += await reader.read(65536)
        seen.append(data)
        writer.write(answer(200))
        await writer.drain()

    async def body() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"defg"

    async with serving(chunked, upload_checksum=True) as (_, backend):
        resp = await backend.request("PUT", "b", "k", body=body(), content_length=7)
        assert resp.status == 200
        resp.release()
    head = seen[0].decode().lower()
    assert "transfer-encoding: chunked" in head and "\r\ncontent-length:" not in head
    assert "x-amz-decoded-content-length: 7" in head
    # HTTP chunks carrying the aws-chunked stream, which ends with the CRC32C trailer
    data, inner = seen[1], b""
    while True:
        size_line, data = data.split(b"\r\n", 1)
        if int(size_line, 16) == 0:
            assert data == b"\r\n"
            break
        inner, data = inner + data[: int(size_line, 16)], data[int(size_line, 16) + 2 :]
    assert inner == b"3\r\nabc\r\n4\r\ndefg\r\n0\r\nx-amz-checksum-crc32c:5if0QQ==\r\n\r\n"


def test_a_cr_or_lf_cannot_start_a_header_or_request_of_its_own() -> None:
    assert request_head("GET", "/b/k", [("Host", "h")]) == b"GET /b/k HTTP/1.1\r\nHost: h\r\n\r\n"
    for headers in ([("x-amz-meta-a", "1\r\nX-Evil: 1")], [("x-amz-meta-a", "1\nX")], [("a\rb", "1")]):
        with pytest.raises(ValueError):
            request_head("GET", "/b/k", headers)
    with pytest.raises(ValueError):
        request_head("GET", "/b/k HTTP/1.1\r\nX: 1", [])


async def test_an_unreachable_backend_is_503() -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    backend = Backend(
        BackendSettings(
            endpoint=f"http://127.0.0.1:{port}",
            region="us-east-1",
            access_key_id="a",
            secret_access_key="b",
            max_attempts=2,
            retry_base_delay=0.01,
        )
    )
    await backend.start()
    try:
        with pytest.raises(S3Error) as err:
            await backend.request("GET", "b", "k")
        assert (err.value.status, err.value.code) == (503, "ServiceUnavailable")
    finally:
        await backend.close()


async def test_the_pool_keeps_nothing_for_hosts_whose_connections_are_gone() -> None:
    """Virtual-hosted buckets make a host per bucket: once the connections to a host are used
    again, swept or closed, the pool holds nothing for it (no growth with the buckets touched)."""
    servers = [await asyncio.start_server(lambda r, w: None, f"127.0.0.{i}", 0) for i in range(2, 12)]
    keys = [(f"127.0.0.{i}", s.sockets[0].getsockname()[1], False) for i, s in enumerate(servers, start=2)]
    pool = ConnectionPool(limit=64, wait=1.0, connect_timeout=2.0, tls=None, keepalive=0.2)
    try:
        conns = [await pool.acquire(key) for key in keys]
        for conn in conns:
            pool.release(conn, reusable=True)
        assert (pool.idle_hosts, pool.size) == (10, 10)
        again = await pool.acquire(keys[0])  # reused: its host has no idle connection left
        assert again is conns[0] and (pool.idle_hosts, pool.size) == (9, 10)
        pool.release(again, reusable=False)
        conns[1].abort()  # the backend side goes away while idle
        for _ in range(50):
            await asyncio.sleep(0.01)
            if pool.idle_hosts == 8:
                break
        assert (pool.idle_hosts, pool.size) == (8, 8)
        await asyncio.sleep(0.5)  # past the keep-alive: swept
        assert (pool.idle_hosts, pool.size) == (0, 0)
    finally:
        pool.close()
        for s in servers:
            s.close()
