"""Bodies to and from the backend: PUTs that fail closed (a failed check on the client's body
stores nothing) and ranged GETs pinned to the version that was opened."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from proxy.crypto.format import DEFAULT_SEGMENT_SIZE, DIGEST_SLOT, Layout
from proxy.crypto.segments import StreamEncryptor
from proxy.s3.errors import S3Error
from proxy.store.backend import BackendResponse, version_query
from proxy.store.gateway import Gateway
from proxy.store.reserved import content_md5

_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


#: Uploads up to this size (sealed) are gathered in memory and sent whole; larger ones stream.
SMALL_BODY_BYTES = 256 * 1024


async def _failure_first(
    chunks: AsyncIterator[bytes], send: Callable[[AsyncIterator[bytes]], Awaitable[BackendResponse]]
) -> BackendResponse:
    """`send(body)` with `chunks` as the streamed body: a failure of `chunks` wins over the
    backend's answer."""
    failure: list[BaseException] = []

    async def guarded() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield chunk
        except BaseException as exc:
            failure.append(exc)
            raise

    try:
        resp = await send(guarded())
    except BaseException:
        if failure:
            raise failure[0] from None
        raise
    if failure:
        resp.close()
        raise failure[0]
    return resp


async def put_stream(
    gw: Gateway,
    bucket: str,
    key: str,
    chunks: AsyncIterator[bytes],
    length: int,
    *,
    headers: dict[str, str],
    query: list[tuple[str, str]] | None = None,
) -> BackendResponse:
    """PUT `length` bytes from `chunks` to the backend. If `chunks` fails (a check on the
    client's body), that failure is what the caller sees, and the backend, short of its
    Content-Length, stores nothing.

    A body of at most `SMALL_BODY_BYTES` is gathered first and sent in one piece: a failed
    check then never reaches the backend, and the request can be retried like any other with
    a body in hand."""
    if length <= SMALL_BODY_BYTES:
        whole = b"".join([chunk async for chunk in chunks])
        if len(whole) != length:
            raise AssertionError(f"sealed body is {len(whole)} bytes, not the {length} declared")
        # The backend checks what it stores (and S3 takes uploads into buckets with Object Lock
        # retention only with a checksum of the body). About 5 us for 4 KiB.
        headers = {**headers, "Content-MD5": content_md5(whole)}
        resp = await gw.backend.request("PUT", bucket, key, query=query or [], headers=headers, body=whole)
    else:
        resp = await _failure_first(
            chunks,
            lambda body: gw.backend.request(
                "PUT", bucket, key, query=query or [], headers=headers, body=body, content_length=length
            ),
        )
    if resp.status >= 300:
        raise await resp.error()
    resp.release()
    return resp


class SealableBody(Protocol):
    """What `send_sealed` reads: plaintext of a known length whose MD5 is known at its end."""

    length: int

    @property
    def md5(self) -> bytes | None: ...

    def __aiter__(self) -> AsyncIterator[bytes | memoryview]: ...


async def send_sealed(
    gw: Gateway,
    bucket: str,
    key: str,
    body: SealableBody,
    encryptor: StreamEncryptor,
    *,
    prefix: bytes = b"",
    digest_md5: bool,
    headers: dict[str, str],
    query: list[tuple[str, str]] | None = None,
) -> BackendResponse:
    """PUT `prefix` and the encrypted body, holding back the final segment until every check on
    the client's body has passed (without it the backend never receives all its bytes)."""

    async def ciphertext() -> AsyncIterator[bytes]:
        if prefix:
            yield prefix
        async for piece in body:
            # The segments one piece completes go to aiohttp as one write: a write per 64 KiB
            # segment cost more CPU than the copy (benchmarks/README.md, session 4).
            if sealed := b"".join(encryptor.feed(piece)):
                yield sealed
        digest = body.md5 if digest_md5 and body.md5 else b"\x00" * DIGEST_SLOT
        for segment in encryptor.finish(digest):
            yield segment

    length = len(prefix) + Layout(DEFAULT_SEGMENT_SIZE).ciphertext_length(body.length)
    return await put_stream(gw, bucket, key, ciphertext(), length, headers=headers, query=query)


def total_length(resp: BackendResponse) -> tuple[int, int]:
    """(start offset of the body, total stored length) of a GET or HEAD response."""
    cr = resp.headers.get("Content-Range")
    # Some backends (rclone serve s3) answer a ranged GET with 200 and a Content-Range.
    if resp.status in (200, 206) and cr:
        m = _CONTENT_RANGE_RE.match(cr)
        if not m:
            raise S3Error("BadGateway", "backend sent a malformed Content-Range", 502)
        return int(m.group(1)), int(m.group(3))
    return 0, int(resp.headers.get("Content-Length", "0"))


async def ranged(
    gw: Gateway, bucket: str, key: str, etag: str, start: int, end: int, version: str | None = None
) -> BackendResponse:
    """Backend bytes [start, end) of the object (that version of it) that still has this ETag."""
    resp = await gw.backend.request(
        "GET",
        bucket,
        key,
        query=version_query(version),
        headers={"Range": f"bytes={start}-{end - 1}", "If-Match": etag},
    )
    if resp.status == 412:
        resp.release()
        raise S3Error("ServiceUnavailable", "the object changed while it was read; retry", 503)
    if resp.status >= 300:
        raise await resp.error()
    return resp


class Decryptor(Protocol):
    """What turns stored bytes into authenticated plaintext, piece by piece."""

    def feed(self, data: memoryview) -> list[bytes]: ...

    def finish(self) -> None: ...


class Nothing:
    """The decryptor of an empty range."""

    def feed(self, data: memoryview) -> list[bytes]:
        return []

    def finish(self) -> None:
        return None
