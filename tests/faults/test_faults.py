"""Fault injection: a loopback relay in front of moto that fails on command (5xx, resets
mid-body, KMS throttling). After each fault: nothing half-written is visible, no plaintext on
the backend, and sealgate still serves."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from botocore.exceptions import BotoCoreError, ClientError

from tests.conftest import Stack, backend_client, free_port, multipart_put, start_stack
from tests.signing import send, sign


class FaultyRelay:
    """Forwards to moto; `fault` picks what goes wrong for requests whose path contains `match`."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.fault: str | None = None
        self.match = ""
        #: How many matching requests still get the fault (None: all of them).
        self.remaining: int | None = None
        #: Matching requests seen while a fault was set.
        self.hits = 0
        self.delay = 0.0
        #: Runs before every request is handled; a response it returns is sent instead.
        self.before: Callable[[web.Request], Awaitable[web.StreamResponse | None]] | None = None
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)

    def arm(self, fault: str, match: str, *, times: int | None = None, delay: float = 0.0) -> None:
        """Fail requests whose path contains `match` with `fault` (the next `times` of them)."""
        self.fault, self.match, self.remaining, self.delay, self.hits = fault, match, times, delay, 0

    def _hit(self, request: web.Request) -> bool:
        if not self.fault or self.match not in request.path_qs:
            return False
        self.hits += 1
        if self.remaining is None:
            return True
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.before is not None and (answer := await self.before(request)) is not None:
            return answer
        hit = self._hit(request)
        if hit and self.fault == "reset-upload" and request.method == "PUT":
            await request.content.readexactly(min(200_000, request.content_length or 0))
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        if hit and self.fault == "slow":
            await asyncio.sleep(self.delay)
        body = await request.read()
        target = request.headers.get("X-Amz-Target", "")
        if hit and self.fault in ("503", "500"):
            return web.Response(
                status=int(self.fault), body=b"<Error><Code>ServiceUnavailable</Code><Message>x</Message></Error>"
            )
        if hit and self.fault == "throttle" and target:
            return web.json_response({"__type": "ThrottlingException", "message": "slow down"}, status=400)
        hop = ("host", "content-length", "transfer-encoding")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in hop}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as s,
            s.request(request.method, self.upstream + request.path_qs, data=body, headers=headers) as r,
        ):
            data = await r.read()
            out_headers = {
                k: v
                for k, v in r.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "connection")
            }
            if hit and self.fault == "reset" and request.method == "GET" and len(data) > 100_000:
                resp = web.StreamResponse(status=r.status, headers={**out_headers, "Content-Length": str(len(data))})
                await resp.prepare(request)
                await resp.write(data[: len(data) // 2])
                assert request.transport is not None
                request.transport.abort()
                return resp
            if request.method == "HEAD" and "Content-Length" in r.headers:
                head = web.StreamResponse(status=r.status, headers=out_headers)
                head.content_length = int(r.headers["Content-Length"])
                await head.prepare(request)
                await head.write_eof()
                return head
            return web.Response(status=r.status, body=data, headers=out_headers)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        ready.set()
        self.loop.run_forever()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def relayed(
    moto_url: str, tls_files: dict[str, Path], directory: Path, *, kms_extra: str | None = None, backend_extra: str = ""
) -> Iterator[tuple[FaultyRelay, Stack]]:
    """A new `FaultyRelay` in front of moto and a sealgate that reaches its backend through it
    (with `backend_extra`), or with `kms_extra` its KMS instead (see `_kms_through`); both stop
    on exit."""
    relay = FaultyRelay(moto_url)
    try:
        if kms_extra is None:
            st = start_stack(directory, relay.url, tls_files, backend_extra=backend_extra)
        else:
            st = start_stack(directory, moto_url, tls_files, kms=_kms_through(relay, moto_url, kms_extra))
        try:
            yield relay, st
        finally:
            st.gate.stop()
    finally:
        relay.loop.call_soon_threadsafe(relay.loop.stop)


@pytest.fixture(scope="module")
def faulty(
    moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[FaultyRelay, Stack]]:
    with relayed(moto_url, tls_files, tmp_path_factory.mktemp("faults")) as (relay, st):
        st.client().create_bucket(Bucket="faults")
        yield relay, st


def _once(st: Stack, method: str, key: str, body: bytes | None = None) -> tuple[int, bytes]:
    """One signed request with no client-side retry: (status, body)."""
    url = f"https://localhost:{st.gate.running.tls_port}/{key}"
    headers = {"Host": f"localhost:{st.gate.running.tls_port}"}
    if body is not None:
        headers["Content-Length"] = str(len(body))
    r = send(st.ca_path, method, url, sign(method, url, headers), body)
    return r.status, r.data


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_backend_5xx_on_put(faulty: tuple[FaultyRelay, Stack], moto_url: str) -> None:
    relay, st = faulty
    relay.fault, relay.match = "503", "/faults/five"
    try:
        with pytest.raises(ClientError) as err:
            st.client().put_object(Bucket="faults", Key="five", Body=b"x" * 1000)
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    finally:
        relay.fault = None
    with pytest.raises(ClientError) as err:
        backend_client(moto_url).head_object(Bucket="faults", Key="five")
    assert err.value.response["Error"]["Code"] == "404"  # never written, not merely unreadable
    st.client().put_object(Bucket="faults", Key="five", Body=b"after")
    assert st.client().get_object(Bucket="faults", Key="five")["Body"].read() == b"after"


def test_backend_reset_mid_download(faulty: tuple[FaultyRelay, Stack]) -> None:
    relay, st = faulty
    data = os.urandom(1_000_000)
    st.client().put_object(Bucket="faults", Key="reset", Body=data)
    before = _fds()
    relay.fault, relay.match = "reset", "/faults/reset"
    try:
        got = b""
        with pytest.raises((ClientError, BotoCoreError, OSError)):
            body = st.client().get_object(Bucket="faults", Key="reset")["Body"]
            while piece := body.read(65536):
                got += piece
        assert got == data[: len(got)] and len(got) < len(data)
    finally:
        relay.fault = None
    assert st.client().get_object(Bucket="faults", Key="reset")["Body"].read() == data
    assert _fds() <= before + 5


def test_client_disconnect_mid_download(faulty: tuple[FaultyRelay, Stack]) -> None:
    _, st = faulty
    st.client().put_object(Bucket="faults", Key="big", Body=os.urandom(4_000_000))
    port = st.gate.running.tls_port
    before = _fds()
    for _ in range(5):
        h = sign("GET", f"https://localhost:{port}/faults/big", {"Host": f"localhost:{port}"})
        ctx = ssl.create_default_context(cafile=str(st.ca_path))
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(
                ("GET /faults/big HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n").encode()
            )
            tls.recv(65536)
    import time

    time.sleep(1)
    assert st.client().get_object(Bucket="faults", Key="big")["ContentLength"] == 4_000_000
    assert _fds() <= before + 5


def _kms_through(relay: FaultyRelay, moto_url: str, extra: str = "") -> str:
    """A [kms] table for a new moto KMS key, reached through `relay`, with the cache off."""
    import boto3

    key_id = boto3.client(
        "kms",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_key()["KeyMetadata"]["KeyId"]
    return (
        f'provider = "aws-kms"\nregion = "us-east-1"\nendpoint = "{relay.url}"\ndefault_key = "{key_id}"\n'
        f'access_key_id = "testing"\nsecret_access_key = "testing"\n{extra}[kms.cache]\nenabled = false\n'
    )


def test_kms_throttling_is_retried_then_503(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    with relayed(moto_url, tls_files, tmp_path, kms_extra="") as (relay, st):
        s3 = st.client()
        s3.create_bucket(Bucket="throttle")
        relay.fault, relay.match = "throttle", "/"
        with pytest.raises(ClientError) as err:
            s3.put_object(Bucket="throttle", Key="k", Body=b"secret")
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        with pytest.raises(ClientError) as err:
            backend_client(moto_url).head_object(Bucket="throttle", Key="k")
        assert err.value.response["Error"]["Code"] == "404"  # never written, not merely unreadable
        relay.fault = None
        s3.put_object(Bucket="throttle", Key="k", Body=b"secret")
        assert s3.get_object(Bucket="throttle", Key="k")["Body"].read() == b"secret"


def test_backend_transient_5xx_is_retried(faulty: tuple[FaultyRelay, Stack]) -> None:
    """Two 503s then an answer: the client never sees the backend's hiccup."""
    relay, st = faulty
    st.client().put_object(Bucket="faults", Key="flaky", Body=b"steady")
    relay.arm("503", "/faults/flaky", times=2)
    try:
        assert _once(st, "GET", "faults/flaky") == (200, b"steady")
        assert relay.hits == 3
        relay.arm("500", "/faults/flaky", times=1)
        assert _once(st, "HEAD", "faults/flaky")[0] == 200
        assert relay.hits == 2
    finally:
        relay.fault = None


def test_backend_persistent_5xx_gives_up_after_max_attempts(faulty: tuple[FaultyRelay, Stack]) -> None:
    relay, st = faulty
    st.client().put_object(Bucket="faults", Key="down", Body=b"x")
    relay.arm("500", "/faults/down")
    try:
        status, body = _once(st, "GET", "faults/down")
        assert status == 502 and b"<Code>" in body
        assert relay.hits == 3  # backend.max_attempts defaults to 3
    finally:
        relay.fault = None


def test_streamed_upload_is_not_retried(faulty: tuple[FaultyRelay, Stack], moto_url: str) -> None:
    """A streamed body is consumed by the first attempt: one attempt, a 503, nothing stored."""
    relay, st = faulty
    relay.arm("503", "/faults/once")
    try:
        status, _ = _once(st, "PUT", "faults/once", b"y" * 300_000)
        assert status == 503
        assert relay.hits == 1
    finally:
        relay.fault = None
    with pytest.raises(ClientError) as err:
        backend_client(moto_url).head_object(Bucket="faults", Key="once")
    assert err.value.response["Error"]["Code"] == "404"  # never written, not merely unreadable


def test_small_upload_is_retried(faulty: tuple[FaultyRelay, Stack], moto_url: str) -> None:
    """A small upload (sealed body up to 256 KiB) is sealed whole before it is sent, so a
    backend hiccup is retried like a GET, and the object is stored once, intact."""
    relay, st = faulty
    data = os.urandom(200_000)
    relay.arm("503", "/faults/small", times=2)
    try:
        status, _ = _once(st, "PUT", "faults/small", data)
        assert status == 200
        assert relay.hits == 3
    finally:
        relay.fault = None
    assert st.client().get_object(Bucket="faults", Key="small")["Body"].read() == data
    stored = backend_client(moto_url).get_object(Bucket="faults", Key="small")["Body"].read()
    assert data[:4096] not in stored  # ciphertext on the backend


def test_backend_reset_mid_upload_stores_nothing(faulty: tuple[FaultyRelay, Stack], moto_url: str) -> None:
    relay, st = faulty
    relay.arm("reset-upload", "/faults/cut")
    try:
        with pytest.raises(ClientError) as err:
            st.client().put_object(Bucket="faults", Key="cut", Body=os.urandom(2_000_000))
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] in (502, 503)
    finally:
        relay.fault = None
    with pytest.raises(ClientError) as err:
        backend_client(moto_url).head_object(Bucket="faults", Key="cut")
    assert err.value.response["Error"]["Code"] == "404"  # never written, not merely unreadable
    with pytest.raises(ClientError) as err:
        st.client().head_object(Bucket="faults", Key="cut")
    assert err.value.response["Error"]["Code"] == "404"
    st.client().put_object(Bucket="faults", Key="cut", Body=b"whole")
    assert st.client().get_object(Bucket="faults", Key="cut")["Body"].read() == b"whole"


def test_slow_backend_times_out_and_sealgate_keeps_serving(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    backend_extra = "read_timeout_seconds = 0.5\nmax_attempts = 2"
    with relayed(moto_url, tls_files, tmp_path, backend_extra=backend_extra) as (relay, st):
        s3 = st.client()
        s3.create_bucket(Bucket="slow")
        s3.put_object(Bucket="slow", Key="k", Body=b"data")
        relay.arm("slow", "/slow/k", delay=3.0)
        import time

        t0 = time.monotonic()
        status, body = _once(st, "GET", "slow/k")
        assert status == 503 and b"<Code>ServiceUnavailable</Code>" in body
        assert time.monotonic() - t0 < 2.5  # two attempts of 0.5 s plus backoff, not 2 x 3 s
        assert relay.hits == 2
        # Other requests are served meanwhile and after.
        s3.put_object(Bucket="slow", Key="other", Body=b"fine")
        relay.fault = None
        assert s3.get_object(Bucket="slow", Key="k")["Body"].read() == b"data"


def test_slow_kms_fails_closed_within_its_timeout(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    import time

    with relayed(moto_url, tls_files, tmp_path, kms_extra="timeout_seconds = 0.5\nmax_attempts = 2\n") as (relay, st):
        s3 = st.client()
        s3.create_bucket(Bucket="slowkms")
        relay.arm("slow", "/", delay=3.0)
        t0 = time.monotonic()
        status, _ = _once(st, "PUT", "slowkms/k", b"secret")
        assert status == 503
        # Two attempts of 0.5 s plus botocore's backoff (up to 1 s), not the relay's 3 s each.
        assert time.monotonic() - t0 < 5.0
        with pytest.raises(ClientError) as err:
            backend_client(moto_url).head_object(Bucket="slowkms", Key="k")
        assert err.value.response["Error"]["Code"] == "404"  # never written, not merely unreadable
        relay.fault = None
        s3.put_object(Bucket="slowkms", Key="k", Body=b"secret")
        assert s3.get_object(Bucket="slowkms", Key="k")["Body"].read() == b"secret"


def test_requests_that_find_the_bucket_settings_stale_share_one_read(
    faulty: tuple[FaultyRelay, Stack], moto_url: str
) -> None:
    """Sixteen uploads arriving together on a bucket whose settings this process has not read
    make one listing of them between them, not sixteen (each waited for its own before)."""
    relay, st = faulty
    backend_client(moto_url).create_bucket(Bucket="faults-herd")  # not through sealgate: nothing cached
    relay.arm("slow", "list-type=2", delay=0.5)
    try:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda i: _once(st, "PUT", f"faults-herd/k{i}", b"v")[0], range(16)))
        assert answers == [200] * 16
        assert relay.hits == 1
    finally:
        relay.fault = None
    assert st.client().get_object(Bucket="faults-herd", Key="k7")["Body"].read() == b"v"


def test_downloads_reuse_their_backend_connections(faulty: tuple[FaultyRelay, Stack]) -> None:
    """Whole and ranged GETs of a single-PUT and of a multipart object, one after another, keep
    using the same kept-alive backend connections: a download that stops at its length must not
    cost the backend a new connection (and handshake) each time."""
    relay, st = faulty
    s3 = st.client()
    s3.put_object(Bucket="faults", Key="reuse-single", Body=b"s" * 300_000)
    multipart_put(s3, "faults", "reuse-multi", [b"m" * (5 * 1024 * 1024), b"n" * 1000])
    peers: list[tuple[str, str, object]] = []

    async def note(request: web.Request) -> None:
        assert request.transport is not None
        peers.append((request.method, request.path_qs, request.transport.get_extra_info("peername")))
        return None

    relay.before = note
    try:
        for _ in range(3):
            for key, size in (("reuse-single", 300_000), ("reuse-multi", 5 * 1024 * 1024 + 1000)):
                assert len(s3.get_object(Bucket="faults", Key=key)["Body"].read()) == size
                got = s3.get_object(Bucket="faults", Key=key, Range="bytes=1000-1999")["Body"].read()
                assert len(got) == 1000
    finally:
        relay.before = None
    gets = [p for p in peers if p[0] == "GET"]
    assert len(gets) >= 12
    # Two at most: a multipart object's manifest is read while its body's answer is open.
    assert len({p[2] for p in peers}) <= 2, peers


def test_a_listing_page_stays_short_when_the_backend_fails_its_rest(
    faulty: tuple[FaultyRelay, Stack], caplog: pytest.LogCaptureFixture
) -> None:
    """A page that lost entries to sealgate's records is filled by one more backend request
    (tests/integration/test_listing_pages.py); if that request fails, the client gets the short
    page, still a correct one (truncated, its continuation from the backend), not an error, and
    paging on reaches every key."""
    relay, st = faulty
    s3 = st.client()
    s3.create_bucket(Bucket="faults-pages")
    for key in ("!a", "-b", "c"):
        s3.put_object(Bucket="faults-pages", Key=key, Body=b"x")
    s3.create_multipart_upload(Bucket="faults-pages", Key="open")  # a record between "-b" and "c"
    asked: list[str] = []

    async def fail_the_rest(request: web.Request) -> web.StreamResponse | None:
        if "/faults-pages" in request.path and "start-after=.sealgate" in request.path_qs:
            asked.append(request.path_qs)
            return web.Response(status=500, body=b"<Error><Code>InternalError</Code><Message>x</Message></Error>")
        return None

    relay.before = fail_the_rest
    try:
        first = s3.list_objects_v2(Bucket="faults-pages", MaxKeys=3)
        assert [o["Key"] for o in first["Contents"]] == ["!a", "-b"] and first["IsTruncated"]
        rest = s3.list_objects_v2(Bucket="faults-pages", MaxKeys=3, ContinuationToken=first["NextContinuationToken"])
        assert [o["Key"] for o in rest["Contents"]] == ["c"] and not rest["IsTruncated"]
    finally:
        relay.before = None
    assert len(asked) == 3  # the follow-up was made (and retried as any backend request)
    assert any("kept a short page" in r.getMessage() for r in caplog.records)
    full = s3.list_objects_v2(Bucket="faults-pages", MaxKeys=3)
    assert [o["Key"] for o in full["Contents"]] == ["!a", "-b", "c"] and not full["IsTruncated"]
