"""Data-key caching with AWS KMS: KMS calls counted at a real KMS endpoint (moto behind a counter)."""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import boto3
import pytest
from aiohttp import web
from botocore.exceptions import ClientError

from tests.conftest import backend_client, free_port, start_stack


class CountingKms:
    """A loopback HTTP relay to moto's KMS that counts calls by operation (X-Amz-Target)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.calls: Counter[str] = Counter()
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)

    async def _relay(self, request: web.Request) -> web.Response:
        target = request.headers.get("X-Amz-Target", "")
        self.calls[target.rsplit(".", 1)[-1]] += 1
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with aiohttp.ClientSession() as s, s.post(self.upstream + "/", data=body, headers=headers) as r:
            return web.Response(status=r.status, body=await r.read(), content_type=r.content_type)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/", self._relay)
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self.loop.run_forever()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def kms(moto_url: str) -> Iterator[tuple[CountingKms, str]]:
    counter = CountingKms(moto_url)
    client = boto3.client(
        "kms",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    yield counter, client.create_key()["KeyMetadata"]["KeyId"]
    counter.loop.call_soon_threadsafe(counter.loop.stop)


def kms_config(url: str, key_id: str, cache: str) -> str:
    return (
        f'provider = "aws-kms"\nregion = "us-east-1"\nendpoint = "{url}"\ndefault_key = "{key_id}"\n'
        f'access_key_id = "testing"\nsecret_access_key = "testing"\n{cache}'
    )


@pytest.mark.parametrize("limit", [10, None], ids=["cache-10", "no-cache"])
def test_kms_calls_per_put(
    kms: tuple[CountingKms, str], moto_url: str, tls_files: dict[str, Path], tmp_path: Path, limit: int | None
) -> None:
    counter, key_id = kms
    cache = f"[kms.cache]\nmax_objects = {limit}\n" if limit else "[kms.cache]\nenabled = false\n"
    st = start_stack(tmp_path, moto_url, tls_files, kms=kms_config(counter.url, key_id, cache))
    try:
        s3 = st.client()
        bucket = f"cache-{limit or 'off'}"
        s3.create_bucket(Bucket=bucket)
        counter.calls.clear()
        bodies = {f"o{i}": os.urandom(1000 + i) for i in range(25)}
        for k, v in bodies.items():
            s3.put_object(Bucket=bucket, Key=k, Body=v)
        generated = counter.calls["GenerateDataKey"]
        for k, v in bodies.items():
            assert s3.get_object(Bucket=bucket, Key=k)["Body"].read() == v
        decrypts = counter.calls["Decrypt"]
        if limit:
            assert generated <= math.ceil(25 / limit)
            assert decrypts <= math.ceil(25 / limit)
            # A shared data key is wrapped for the bucket: the name tag still binds each object.
            raw = backend_client(moto_url).get_object(Bucket=bucket, Key="o1")
            backend_client(moto_url).put_object(
                Bucket=bucket, Key="o2", Body=raw["Body"].read(), Metadata=raw["Metadata"]
            )
            with pytest.raises(ClientError) as err:
                s3.get_object(Bucket=bucket, Key="o2")["Body"].read()
            assert err.value.response["Error"]["Code"] == "ObjectIntegrityError"
        else:
            assert generated == 25 and decrypts == 25
    finally:
        st.gate.stop()


def test_expired_shared_key_is_not_reused(
    kms: tuple[CountingKms, str], moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    counter, key_id = kms
    cache = "[kms.cache]\nmax_objects = 1000\nmax_seconds = 1\n"
    st = start_stack(tmp_path, moto_url, tls_files, kms=kms_config(counter.url, key_id, cache))
    try:
        s3 = st.client()
        s3.create_bucket(Bucket="expiry")
        counter.calls.clear()
        s3.put_object(Bucket="expiry", Key="a", Body=b"a")
        s3.put_object(Bucket="expiry", Key="b", Body=b"b")
        assert counter.calls["GenerateDataKey"] == 1
        time.sleep(1.2)
        s3.put_object(Bucket="expiry", Key="c", Body=b"c")
        assert counter.calls["GenerateDataKey"] == 2
        meta = [backend_client(moto_url).head_object(Bucket="expiry", Key=k)["Metadata"]["sg-dk"] for k in "abc"]
        assert meta[0] == meta[1] != meta[2]
    finally:
        st.gate.stop()


def test_denied_identity_makes_no_kms_call(
    kms: tuple[CountingKms, str], moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    from tests.conftest import client_for

    counter, key_id = kms
    extra = f"""
[[clients]]
name = "nodecrypt"
access_key_id = "SGNODECRYPT000000001"
secret_access_key = "nodecrypt-secret-00001"

[[keys]]
id = "{key_id}"
encrypt = ["tester", "nodecrypt"]
decrypt = ["tester"]
"""
    cache = "[kms.cache]\nenabled = false\n"
    st = start_stack(tmp_path, moto_url, tls_files, kms=kms_config(counter.url, key_id, cache), extra=extra)
    try:
        st.client().create_bucket(Bucket="nodecrypt")
        st.client().put_object(Bucket="nodecrypt", Key="k", Body=b"secret")
        other = client_for(st.gate.url, st.ca_path, akid="SGNODECRYPT000000001", secret="nodecrypt-secret-00001")
        counter.calls.clear()
        with pytest.raises(ClientError) as err:
            other.get_object(Bucket="nodecrypt", Key="k")
        assert err.value.response["Error"]["Code"] == "AccessDenied"
        assert counter.calls["Decrypt"] == 0
        assert st.client().get_object(Bucket="nodecrypt", Key="k")["Body"].read() == b"secret"
        assert counter.calls["Decrypt"] == 1
    finally:
        st.gate.stop()
