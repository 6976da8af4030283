"""Writes that race with sealgate: another client overwrites an object between sealgate reading
it and sealgate's write to the backend. The relay in front of moto runs the other client's write
at exactly that moment; what was written last must stay readable and nothing may be lost."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web
from botocore.exceptions import ClientError

from tests.conftest import PASSPHRASE, Stack, backend_client
from tests.faults.test_faults import FaultyRelay, relayed

Hook = Callable[[web.Request], Awaitable[web.StreamResponse | None]]


@pytest.fixture(scope="module")
def racing(
    moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[FaultyRelay, Stack]]:
    d = tmp_path_factory.mktemp("races")
    with relayed(moto_url, tls_files, d) as (relay, st):
        st.client().create_bucket(Bucket="races")
        yield relay, st


@pytest.fixture(autouse=True)
def _no_hook(racing: tuple[FaultyRelay, Stack]) -> Iterator[None]:
    yield
    racing[0].before = None


def once(when: Callable[[web.Request], bool], then: Hook) -> Hook:
    """A relay hook that runs `then` for the first request `when` picks."""
    fired = False

    async def hook(request: web.Request) -> web.StreamResponse | None:
        nonlocal fired
        if fired or not when(request):
            return None
        fired = True
        return await then(request)

    return hook


async def in_thread(fn: Callable[[], Any]) -> Any:
    """Run a blocking client call without blocking the relay, which must forward it too."""
    return await asyncio.get_running_loop().run_in_executor(None, fn)


async def copy_source_if_match(moto_url: str, request: web.Request) -> web.StreamResponse | None:
    """What S3, MinIO and Ceph do with x-amz-copy-source-if-match and moto does not: refuse the
    copy (412) when the source's ETag is no longer the one named."""
    wanted = request.headers.get("x-amz-copy-source-if-match")
    if wanted is None:
        return None
    bucket, _, key = unquote(request.headers["x-amz-copy-source"].split("?", 1)[0]).lstrip("/").partition("/")
    current = (await in_thread(lambda: backend_client(moto_url).head_object(Bucket=bucket, Key=key)))["ETag"]
    if current.strip('"') == wanted.strip('"'):
        return None
    return web.Response(
        status=412, body=b"<Error><Code>PreconditionFailed</Code><Message>copy source changed</Message></Error>"
    )


def test_put_if_match_loses_to_a_write_that_came_between(racing: tuple[FaultyRelay, Stack]) -> None:
    relay, st = racing
    s3, other = st.client(), st.client()
    seen = s3.put_object(Bucket="races", Key="doc", Body=b"version 1")["ETag"]

    async def other_writer_first(request: web.Request) -> None:
        await in_thread(lambda: other.put_object(Bucket="races", Key="doc", Body=b"the other writer"))

    relay.before = once(lambda r: r.method == "PUT" and "If-Match" in r.headers, other_writer_first)
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket="races", Key="doc", Body=b"version 2", IfMatch=seen)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert s3.get_object(Bucket="races", Key="doc")["Body"].read() == b"the other writer"


def test_copy_of_a_source_overwritten_mid_copy(racing: tuple[FaultyRelay, Stack], moto_url: str) -> None:
    relay, st = racing
    s3 = st.client()
    s3.put_object(Bucket="races", Key="src", Body=b"old source")
    read_etag = backend_client(moto_url).head_object(Bucket="races", Key="src")["ETag"]
    pins: list[str | None] = []

    async def overwrite_source_first(request: web.Request) -> web.StreamResponse | None:
        pins.append(request.headers.get("x-amz-copy-source-if-match"))
        await in_thread(lambda: st.client().put_object(Bucket="races", Key="src", Body=b"new source"))
        return await copy_source_if_match(moto_url, request)

    relay.before = once(lambda r: "x-amz-copy-source" in r.headers, overwrite_source_first)
    # The backend refuses the copy of the body that replaced the one read; sealgate answers 503,
    # which the SDK retries (the test clients retry once), and the retry copies the new body.
    done = s3.copy_object(Bucket="races", Key="dst", CopySource={"Bucket": "races", "Key": "src"})
    assert done["ResponseMetadata"]["RetryAttempts"] == 1
    assert pins == [read_etag]
    assert s3.get_object(Bucket="races", Key="dst")["Body"].read() == b"new source"
    assert s3.get_object(Bucket="races", Key="src")["Body"].read() == b"new source"


def test_rewrap_of_an_object_overwritten_mid_rewrap(racing: tuple[FaultyRelay, Stack], moto_url: str) -> None:
    from proxy.kms.keystore import LocalKeyStore
    from proxy.tools.rewrap import rewrap_object
    from proxy.wiring import operator_gateway

    relay, st = racing
    store = LocalKeyStore.open(st.dir / "keyring", PASSPHRASE.encode())
    store.create_key("key2")
    store.save()
    s3 = st.client()
    s3.put_object(Bucket="races", Key="obj", Body=b"written before the rewrap")
    fresh = os.urandom(70_000)

    async def client_writes_first(request: web.Request) -> web.StreamResponse | None:
        await in_thread(lambda: st.client().put_object(Bucket="races", Key="obj", Body=fresh))
        return await copy_source_if_match(moto_url, request)

    relay.before = once(lambda r: "x-amz-copy-source" in r.headers, client_writes_first)

    async def run() -> str:
        async with operator_gateway(st.gate.config) as gw:
            return await rewrap_object(gw, "races", "obj", "key2")

    assert asyncio.run(run()) == "rewrapped"
    # The client's write survives, readable, and under the new key.
    assert s3.get_object(Bucket="races", Key="obj")["Body"].read() == fresh
    meta = backend_client(moto_url).head_object(Bucket="races", Key="obj")["Metadata"]
    assert any("key2" in v for v in meta.values())
