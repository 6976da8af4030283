"""Fault injection: a loopback relay in front of moto that fails on command (5xx, resets
mid-body, KMS throttling). After each fault: nothing half-written is visible, no plaintext on
the backend, and sealgate still serves."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from botocore.exceptions import BotoCoreError, ClientError

from tests.conftest import Stack, backend_client, free_port, start_stack
from tests.signing import sign


class FaultyRelay:
    """Forwards to moto; `fault` picks what goes wrong for requests whose path contains `match`."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.fault: str | None = None
        self.match = ""
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        hit = self.fault and self.match in request.path_qs
        target = request.headers.get("X-Amz-Target", "")
        if hit and self.fault == "503":
            return web.Response(status=503, body=b"<Error><Code>ServiceUnavailable</Code><Message>x</Message></Error>")
        if hit and self.fault == "throttle" and target:
            return web.json_response({"__type": "ThrottlingException", "message": "slow down"}, status=400)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
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


@pytest.fixture(scope="module")
def faulty(
    moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[FaultyRelay, Stack]]:
    relay = FaultyRelay(moto_url)
    st = start_stack(tmp_path_factory.mktemp("faults"), relay.url, tls_files)
    st.client().create_bucket(Bucket="faults")
    yield relay, st
    st.gate.stop()
    relay.loop.call_soon_threadsafe(relay.loop.stop)


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
    with pytest.raises(ClientError):
        backend_client(moto_url).head_object(Bucket="faults", Key="five")
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


def test_kms_throttling_is_retried_then_503(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    import boto3

    relay = FaultyRelay(moto_url)
    key_id = boto3.client(
        "kms",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_key()["KeyMetadata"]["KeyId"]
    kms = (
        f'provider = "aws-kms"\nregion = "us-east-1"\nendpoint = "{relay.url}"\ndefault_key = "{key_id}"\n'
        'access_key_id = "testing"\nsecret_access_key = "testing"\n[kms.cache]\nenabled = false\n'
    )
    st = start_stack(tmp_path, moto_url, tls_files, kms=kms)
    try:
        s3 = st.client()
        s3.create_bucket(Bucket="throttle")
        relay.fault, relay.match = "throttle", "/"
        with pytest.raises(ClientError) as err:
            s3.put_object(Bucket="throttle", Key="k", Body=b"secret")
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        with pytest.raises(ClientError):
            backend_client(moto_url).head_object(Bucket="throttle", Key="k")
        relay.fault = None
        s3.put_object(Bucket="throttle", Key="k", Body=b"secret")
        assert s3.get_object(Bucket="throttle", Key="k")["Body"].read() == b"secret"
    finally:
        st.gate.stop()
        relay.loop.call_soon_threadsafe(relay.loop.stop)
