"""The client's request body as verified plaintext pieces.

Decodes aws-chunked framing when present and checks everything the client asserted about the
body (length, SHA-256 payload hash, Content-MD5, x-amz-checksum-* header or trailer, chunk
signatures). Pieces are released as they arrive so that uploads stream; the last check runs when
the body ends, and the caller holds back the final ciphertext segment until then, so a failed
check leaves nothing stored on the backend.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Protocol

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.crypto.format import DEFAULT_SEGMENT_SIZE
from proxy.metrics import BYTES_IN
from proxy.s3.checksums import b64, new_checksum
from proxy.s3.chunked import AwsChunkedDecoder
from proxy.s3.errors import S3Error
from proxy.s3.routing import QUERY_CHECKSUMS
from proxy.s3.sigv4 import VerifiedRequest, chunk_verifier_for
from proxy.server.budget import BodyPace
from proxy.server.direct import take_over
from proxy.store.gateway import Gateway

STREAMING_PREFIX = "STREAMING-"
UNSIGNED = "UNSIGNED-PAYLOAD"
READ_SIZE = 1024 * 1024


class _Stream(Protocol):
    """aiohttp's request.content, or a `proxy.server.direct.DirectBody`. A piece read is used
    up before the next read (DirectBody reuses its memory after that)."""

    async def readany(self) -> bytes | memoryview: ...

    def read_nowait(self) -> bytes | memoryview: ...

    def at_eof(self) -> bool: ...


def _declared_length(headers: CIMultiDictProxy[str], chunked: bool) -> int:
    name = "x-amz-decoded-content-length" if chunked else "Content-Length"
    raw = headers.get(name)
    if raw is None:
        raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.", 411)
    try:
        value = int(raw)
    except ValueError:
        raise S3Error("InvalidArgument", f"{name} is not a number") from None
    if value < 0:
        raise S3Error("InvalidArgument", f"{name} is negative")
    return value


def _content_md5(headers: CIMultiDictProxy[str]) -> bytes | None:
    raw = headers.get("Content-MD5")
    if raw is None:
        return None
    try:
        digest = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 16:
        raise S3Error("InvalidDigest", "The Content-MD5 you specified was invalid.")
    return digest


_NOT_CHECKSUMS = ("x-amz-checksum-mode", "x-amz-checksum-type", "x-amz-checksum-algorithm")


def _header_checksum(headers: CIMultiDictProxy[str]) -> tuple[str, str] | None:
    for name, value in headers.items():
        lname = name.lower()
        if lname.startswith("x-amz-checksum-") and lname not in _NOT_CHECKSUMS:
            return lname[len("x-amz-checksum-") :], value
    return None


async def paced_read(stream: _Stream, pace: BodyPace) -> bytes | memoryview:
    """The next bytes of a request body (empty at its end). What has arrived is taken without
    arming a timer (a small body usually has all arrived by now); only a read that has to wait
    is bounded, by the stall timeout and the minimum rate (`BodyPace`). A client too slow gets
    S3's RequestTimeout, one that goes away IncompleteBody."""
    try:
        data = stream.read_nowait()
        waited = 0.0
        if not data and not stream.at_eof():
            began = time.monotonic()
            async with asyncio.timeout(pace.wait()):
                data = await stream.readany()
            waited = time.monotonic() - began
        if data:
            pace.took(len(data), waited)
    except TimeoutError as exc:
        raise S3Error(
            "RequestTimeout",
            "Your socket connection to the server was not read from or written to within the timeout period.",
            400,
        ) from exc
    except Exception as exc:  # noqa: BLE001 - aiohttp raises several types on disconnect
        raise S3Error("IncompleteBody", "The client connection ended mid-body.") from exc
    return data


class PlaintextBody:
    """Async iterator over the plaintext the client uploads; raises S3Error on a failed check."""

    def __init__(
        self,
        stream: _Stream,
        headers: CIMultiDictProxy[str],
        verified: VerifiedRequest,
        *,
        want_md5: bool,
        stall_timeout: float = 60.0,
        min_rate: int = 0,
    ) -> None:
        self._stream = stream
        self._stall = stall_timeout
        self._min_rate = min_rate
        payload = verified.payload_hash
        self.chunked = payload.startswith(STREAMING_PREFIX)
        encoding = headers.get("Content-Encoding", "")
        if not self.chunked and "aws-chunked" in encoding.lower():
            raise S3Error("InvalidRequest", "aws-chunked encoding needs a STREAMING-* payload hash")
        self.length = _declared_length(headers, self.chunked)
        self._decoder: AwsChunkedDecoder | None = None
        if self.chunked:
            trailers = [t.strip().lower() for t in headers.get("x-amz-trailer", "").split(",") if t.strip()]
            self._decoder = AwsChunkedDecoder(
                decoded_length=self.length,
                trailer_names=trailers,
                signer=chunk_verifier_for(verified),
            )
        self._sha256 = None
        self._expected_sha256: str | None = None
        if not self.chunked and payload != UNSIGNED:
            self._expected_sha256 = payload.lower()
            self._sha256 = hashlib.sha256()
        self._expected_md5 = _content_md5(headers)
        #: Whether the plaintext MD5 is computed although the client did not send Content-MD5.
        self.md5_wanted = want_md5
        self._md5 = hashlib.md5(usedforsecurity=False) if (want_md5 or self._expected_md5) else None
        self._checksum_header = _header_checksum(headers)
        self._checksum = new_checksum(self._checksum_header[0]) if self._checksum_header else None
        self.received = 0
        #: Verified checksum values to echo to the client (name -> base64 value).
        self.checksums: dict[str, str] = {}

    @property
    def sha256_signed(self) -> bool:
        """Whether the client signed a hex SHA-256 of the payload."""
        return self._expected_sha256 is not None

    @property
    def content_md5(self) -> bytes | None:
        """The MD5 the client declared up front, if any."""
        return self._expected_md5

    @property
    def md5(self) -> bytes | None:
        """The MD5 of the plaintext (after the body ended), if it was computed."""
        return self._md5.digest() if self._md5 is not None else None

    def _account(self, piece: bytes | memoryview) -> None:
        self.received += len(piece)
        BYTES_IN.inc(len(piece))
        if self.received > self.length:
            raise S3Error("IncompleteBody", "The request body is longer than its declared length.")
        if self._md5 is not None:
            self._md5.update(piece)
        if self._sha256 is not None:
            self._sha256.update(piece)
        if self._checksum is not None:
            self._checksum.update(piece)

    async def __aiter__(self) -> AsyncIterator[bytes | memoryview]:
        pace = BodyPace(self._stall, self._min_rate)
        while True:
            data = await paced_read(self._stream, pace)
            if not data:
                break
            if self._decoder is not None:
                for piece in self._decoder.feed(data):
                    self._account(piece)
                    yield piece
            else:
                self._account(data)
                yield data
        self._finish()

    def _finish(self) -> None:
        if self._decoder is not None:
            trailers = self._decoder.finish()
            for name, value in trailers.items():
                if name.startswith("x-amz-checksum-"):
                    self.checksums[name] = value
        if self.received != self.length:
            raise S3Error(
                "IncompleteBody",
                "You did not provide the number of bytes specified by the Content-Length HTTP header.",
            )
        if self._sha256 is not None and self._sha256.hexdigest() != self._expected_sha256:
            raise S3Error(
                "XAmzContentSHA256Mismatch",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            )
        if self._expected_md5 is not None and self.md5 != self._expected_md5:
            raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we received.")
        if self._checksum is not None and self._checksum_header is not None:
            alg, value = self._checksum_header
            if b64(self._checksum) != value.strip():
                raise S3Error(
                    "BadDigest",
                    f"The {alg.upper()} you specified did not match the calculated checksum.",
                )
            self.checksums[f"x-amz-checksum-{alg}"] = value.strip()


def wants_md5(gw: Gateway, verified: VerifiedRequest) -> bool:
    """Whether to compute the plaintext MD5 although no Content-MD5 came: the client signed a
    hex SHA-256 payload (such clients compare ETags with MD5s) or the config asks for it."""
    payload = verified.payload_hash
    return gw.config.encryption.etag == "md5" or (
        payload != "UNSIGNED-PAYLOAD" and not payload.startswith("STREAMING-")
    )


def client_body(gw: Gateway, request: web.Request, verified: VerifiedRequest) -> PlaintextBody:
    """The request's body as verified plaintext, with the config's MD5 and stall settings."""
    direct = take_over(request, gw.config.server.direct_body_min_bytes, DEFAULT_SEGMENT_SIZE)
    headers = request.headers
    carried = [(n, request.query[n]) for n in QUERY_CHECKSUMS if n in request.query]
    if carried:  # a checksum in a (signed) query binds the body as the header would
        headers = CIMultiDictProxy(CIMultiDict([*headers.items(), *carried]))
    return PlaintextBody(
        request.content if direct is None else direct,
        headers,
        verified,
        want_md5=wants_md5(gw, verified),
        stall_timeout=gw.config.server.body_stall_timeout_seconds,
        min_rate=gw.config.server.body_min_bytes_per_second,
    )
