"""A lean S3 client for the benchmark: aiohttp plus botocore's SigV4 signer.

Every request is signed with ``x-amz-content-sha256: UNSIGNED-PAYLOAD`` (the body is never
hashed) so the client spends its CPU on moving bytes, not on checksums. Uploads repeat one
random 1 MiB block (no copies); downloads are counted and dropped, read through 1 MiB buffers.
For the small-request load, requests are signed before the clock starts and replayed, so the
load generator measures the server, not botocore.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import statistics
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote
from xml.etree import ElementTree

import aiohttp
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from yarl import URL

BLOCK = 1024 * 1024
READ_BUFSIZE = 1024 * 1024
_BLOCK_DATA = os.urandom(BLOCK)


class _UnsignedAuth(S3SigV4Auth):  # type: ignore[misc]
    """SigV4 for S3 that signs ``UNSIGNED-PAYLOAD`` whatever the scheme."""

    def _should_sha256_sign_payload(self, request: AWSRequest) -> bool:
        return False


@dataclass(frozen=True)
class Target:
    """Where the client sends requests: an endpoint, its CA (None for plain HTTP) and credentials."""

    name: str
    endpoint: str
    ca: str | None
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"

    def ssl_context(self) -> ssl.SSLContext | bool:
        """A verifying context for the target's CA, or False for plain HTTP."""
        if self.ca is None:
            return False
        return ssl.create_default_context(cafile=self.ca)

    def url(self, bucket: str, key: str = "", query: str = "") -> str:
        """Path-style URL of a bucket or object."""
        url = f"{self.endpoint}/{bucket}" + (f"/{key}" if key else "")
        return url + (f"?{query}" if query else "")

    def sign(self, method: str, url: str, headers: Mapping[str, str] | None = None) -> dict[str, str]:
        """Headers for one SigV4-signed request (botocore's signer, UNSIGNED-PAYLOAD)."""
        req = AWSRequest(method=method, url=url, headers=dict(headers or {}))
        creds = Credentials(self.access_key_id, self.secret_access_key)
        _UnsignedAuth(creds, "s3", self.region).add_auth(req)
        return dict(req.headers.items())


def session_for(target: Target, connections: int = 8) -> aiohttp.ClientSession:
    """A keep-alive session with large read buffers and no automatic headers."""
    connector = aiohttp.TCPConnector(limit=connections, ssl=target.ssl_context(), keepalive_timeout=60)
    return aiohttp.ClientSession(
        connector=connector,
        read_bufsize=READ_BUFSIZE,
        auto_decompress=False,
        skip_auto_headers=("Content-Type", "Accept-Encoding", "User-Agent"),
        timeout=aiohttp.ClientTimeout(total=600, sock_read=60),
    )


class S3Failure(RuntimeError):
    """A request the benchmark needed did not succeed."""


async def _check(resp: aiohttp.ClientResponse, what: str) -> None:
    if resp.status >= 300:
        body = (await resp.read())[:300]
        raise S3Failure(f"{what}: HTTP {resp.status}: {body!r}")


async def _blocks(size: int) -> AsyncIterator[memoryview]:
    view = memoryview(_BLOCK_DATA)
    left = size
    while left > 0:
        n = min(left, BLOCK)
        yield view[:n]
        left -= n


def body_bytes(size: int) -> bytes:
    """The exact bytes `put_object` sends for `size` (for correctness checks on small sizes)."""
    reps, rest = divmod(size, BLOCK)
    return _BLOCK_DATA * reps + _BLOCK_DATA[:rest]


async def create_bucket(session: aiohttp.ClientSession, target: Target, bucket: str) -> None:
    """CreateBucket (an existing bucket is fine)."""
    url = target.url(bucket)
    async with session.put(
        URL(url, encoded=True), headers=target.sign("PUT", url, {"Content-Length": "0"}), data=b""
    ) as resp:
        if resp.status >= 300 and resp.status != 409:
            await _check(resp, f"create bucket {bucket} on {target.name}")


async def put_object(
    session: aiohttp.ClientSession, target: Target, bucket: str, key: str, size: int, query: str = ""
) -> str:
    """Stream `size` bytes to an object (or a part, with `query`); returns the ETag."""
    url = target.url(bucket, key, query)
    headers = target.sign("PUT", url, {"Content-Length": str(size)})
    async with session.put(URL(url, encoded=True), headers=headers, data=_blocks(size)) as resp:
        await _check(resp, f"PUT {key} via {target.name}")
        return resp.headers.get("ETag", "")


async def get_object(
    session: aiohttp.ClientSession, target: Target, bucket: str, key: str, *, keep: bool = False
) -> tuple[int, bytes]:
    """Read an object to the end: (bytes received, the body when `keep`)."""
    url = target.url(bucket, key)
    kept: list[bytes] = []
    n = 0
    async with session.get(URL(url, encoded=True), headers=target.sign("GET", url)) as resp:
        await _check(resp, f"GET {key} via {target.name}")
        async for chunk in resp.content.iter_any():
            n += len(chunk)
            if keep:
                kept.append(chunk)
        expected = resp.headers.get("Content-Length")
    if expected is not None and int(expected) != n:
        raise S3Failure(f"GET {key} via {target.name}: {n} bytes, Content-Length said {expected}")
    return n, b"".join(kept)


async def delete_object(session: aiohttp.ClientSession, target: Target, bucket: str, key: str) -> None:
    """DeleteObject."""
    url = target.url(bucket, key)
    async with session.delete(URL(url, encoded=True), headers=target.sign("DELETE", url)) as resp:
        await _check(resp, f"DELETE {key} via {target.name}")


async def multipart_upload(
    session: aiohttp.ClientSession,
    target: Target,
    bucket: str,
    key: str,
    size: int,
    part_size: int,
    concurrency: int,
) -> str:
    """Create, upload parts (`concurrency` at a time) and complete; returns the final ETag."""
    url = target.url(bucket, key, "uploads")
    async with session.post(
        URL(url, encoded=True), headers=target.sign("POST", url, {"Content-Length": "0"}), data=b""
    ) as resp:
        await _check(resp, f"create multipart upload via {target.name}")
        doc = ElementTree.fromstring(await resp.read())
    upload_id = next((el.text or "" for el in doc.iter() if el.tag.rsplit("}", 1)[-1] == "UploadId"), "")
    sizes = [min(part_size, size - off) for off in range(0, size, part_size)]
    etags: dict[int, str] = {}
    queue = list(enumerate(sizes, start=1))
    quoted_id = quote(upload_id, safe="-_.~")

    async def worker() -> None:
        while queue:
            number, n = queue.pop(0)
            etags[number] = await put_object(
                session, target, bucket, key, n, query=f"partNumber={number}&uploadId={quoted_id}"
            )

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    parts = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{etags[n]}</ETag></Part>" for n in sorted(etags))
    body = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
    url = target.url(bucket, key, f"uploadId={quoted_id}")
    headers = target.sign("POST", url, {"Content-Length": str(len(body))})
    async with session.post(URL(url, encoded=True), headers=headers, data=body) as resp:
        await _check(resp, f"complete multipart upload via {target.name}")
        answer = await resp.read()
    if b"<Error>" in answer:
        raise S3Failure(f"complete multipart upload via {target.name}: {answer[:300]!r}")
    return next((el.text or "" for el in ElementTree.fromstring(answer).iter() if el.tag.endswith("ETag")), "")


@dataclass
class LoadResult:
    """What a small-request load run measured."""

    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    client_cpu_seconds: float

    @property
    def rate(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        """Latency percentile in milliseconds (nearest rank)."""
        if not self.latencies_ms:
            return float("nan")
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, max(0, round(p / 100 * len(data)) - 1))]

    def summary(self) -> dict[str, Any]:
        """The figures, for the JSON file."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "req_per_s": round(self.rate, 1),
            "p50_ms": round(self.percentile(50), 3),
            "p99_ms": round(self.percentile(99), 3),
            "mean_ms": round(statistics.fmean(self.latencies_ms), 3) if self.latencies_ms else None,
            "client_cpu_seconds": round(self.client_cpu_seconds, 3),
        }


def presign_small(
    target: Target, bucket: str, method: str, keys: list[str], size: int
) -> list[tuple[str, dict[str, str]]]:
    """(url, signed headers) for each key: signed once, replayed during the load run."""
    out = []
    for key in keys:
        url = target.url(bucket, key)
        extra = {"Content-Length": str(size)} if method == "PUT" else {}
        out.append((url, target.sign(method, url, extra)))
    return out


async def small_load(
    target: Target,
    method: str,
    signed: list[tuple[str, dict[str, str]]],
    *,
    connections: int,
    seconds: float,
    warmup: float,
    body: bytes = b"",
) -> LoadResult:
    """`connections` keep-alive connections sending requests back to back for `seconds`
    (after `warmup` seconds not counted); each connection cycles through its share of `signed`."""
    latencies: list[float] = []
    counted = errors = 0
    stop_at = start_at = 0.0

    async with session_for(target, connections) as session:

        async def worker(index: int) -> None:
            nonlocal counted, errors
            mine = signed[index::connections] or signed
            i = 0
            while True:
                url, headers = mine[i % len(mine)]
                i += 1
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                try:
                    async with session.request(
                        method, URL(url, encoded=True), headers=headers, data=body or None
                    ) as resp:
                        await resp.read()
                        ok = resp.status < 300
                except aiohttp.ClientError:
                    ok = False
                t1 = time.perf_counter()
                if t0 >= start_at:
                    if ok:
                        counted += 1
                        latencies.append((t1 - t0) * 1000)
                    else:
                        errors += 1

        now = time.perf_counter()
        start_at = now + warmup
        stop_at = start_at + seconds
        cpu0 = time.process_time()
        await asyncio.gather(*(worker(i) for i in range(connections)))
        cpu = time.process_time() - cpu0
        # Requests still in flight at stop_at finished a little later: count the real span.
        elapsed = max(time.perf_counter() - start_at, seconds)
    return LoadResult(counted, errors, elapsed, latencies, cpu * seconds / (seconds + warmup))
