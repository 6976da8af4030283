"""The client to the S3-compatible storage behind sealgate: re-signs every request itself.

Requests are signed with botocore's SigV4 signer under sealgate's own credentials, always with
``UNSIGNED-PAYLOAD`` (the body is sealgate's ciphertext, authenticated by its own tags) and
always with a computed Content-Length: several S3 implementations refuse chunked uploads.

The pool of connections is bounded (``pool_size``) and so is the wait for one of them
(``pool_wait``): a request that gets none in time is answered 503 SlowDown rather than left
hanging. A streamed upload holds its connection until its body ends, however slowly the client
sends it, so each client may have only ``uploads_per_client`` of them at once; a download holds
one until the client has read the body, hence ``downloads_per_client``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from botocore.auth import SIGNED_HEADERS_BLACKLIST, S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials

from proxy.audit import audit_context
from proxy.logs import LogLimit
from proxy.metrics import BACKEND_RETRIES
from proxy.s3.checksums import b64, new_checksum
from proxy.s3.errors import S3Error
from proxy.s3.xml import local_name, parse
from proxy.store.http1 import ConnectFailed, ConnectionBroken, Response, request_head, send
from proxy.store.pool import ClientSlots, ConnectionPool, PoolFull, slow_down
from proxy.tls_files import backend_tls_problem

# Named as before the move to store/: operators filter logs on it.
log = logging.getLogger("proxy.backend")

#: Backend answers worth another attempt: the backend's own transient failures.
RETRY_STATUSES = frozenset({500, 502, 503, 504})

Body = bytes | AsyncIterable[bytes] | None


class _Headers:
    """The header container botocore's signer works on, as a plain case-insensitive dict.

    botocore's own ``AWSRequest`` keeps headers in an ``email.message.Message``, which made
    signing cost ~40 µs a request, a quarter of a small PUT's CPU. The signer only needs
    membership, get/set/delete and ``items()``; a request to the backend never repeats a header.
    """

    __slots__ = ("_map",)

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._map: dict[str, tuple[str, str]] = {k.lower(): (k, v) for k, v in headers.items()}

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._map

    def __getitem__(self, name: str) -> str:
        return self._map[name.lower()][1]

    def __setitem__(self, name: str, value: str) -> None:
        self._map[name.lower()] = (name, value)

    def __delitem__(self, name: str) -> None:
        self._map.pop(name.lower(), None)

    def get(self, name: str, default: str | None = None) -> str | None:
        item = self._map.get(name.lower())
        return default if item is None else item[1]

    def items(self) -> list[tuple[str, str]]:
        return list(self._map.values())


class _HeadersToSign(dict[str, str]):
    """Lower-cased headers that go into the signature, with the one HTTPHeaders method the
    canonicaliser calls."""

    def get_all(self, name: str) -> list[str]:
        return [self[name]]


class _SigningRequest:
    """What botocore's SigV4 signer reads from a request, without ``AWSRequest``'s overhead."""

    __slots__ = ("method", "url", "headers", "context", "params", "body")

    def __init__(self, method: str, url: str, headers: Mapping[str, str]) -> None:
        self.method = method
        self.url = url
        self.headers = _Headers(headers)
        self.context: dict[str, Any] = {}
        self.params: dict[str, str] = {}
        self.body = None


_SIGNING_KEYS: dict[tuple[str, str, str], bytes] = {}


class _UnsignedPayloadAuth(S3SigV4Auth):  # type: ignore[misc]
    """botocore's S3 SigV4 signer, never hashing the body (even over plain HTTP), on a light
    request object, with the day's signing key derived once instead of per request."""

    def _should_sha256_sign_payload(self, request: AWSRequest) -> bool:
        return False

    def headers_to_sign(self, request: _SigningRequest) -> _HeadersToSign:
        # botocore asks twice per signature (canonical request, Authorization header); the
        # headers do not change in between.
        cached = request.context.get("sealgate.headers_to_sign")
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        out = request.context["sealgate.headers_to_sign"] = _HeadersToSign()
        for name, value in request.headers.items():
            lname = name.lower()
            if lname not in SIGNED_HEADERS_BLACKLIST:
                out[lname] = value
        if "host" not in out:
            out["host"] = urlsplit(request.url).netloc
        return out

    def signature(self, string_to_sign: str, request: _SigningRequest) -> str:
        day = request.context["timestamp"][0:8]
        cache_key = (self.credentials.secret_key, day, self._region_name)
        signing_key = _SIGNING_KEYS.get(cache_key)
        if signing_key is None:
            k_date = self._sign(f"AWS4{self.credentials.secret_key}".encode(), day)
            signing_key = self._sign(
                self._sign(self._sign(k_date, self._region_name), self._service_name), "aws4_request"
            )
            if len(_SIGNING_KEYS) > 16:
                _SIGNING_KEYS.clear()
            _SIGNING_KEYS[cache_key] = signing_key
        return hmac.digest(signing_key, string_to_sign.encode("utf-8"), "sha256").hex()


def sign_request(
    credentials: ReadOnlyCredentials,
    region: str,
    method: str,
    url: str,
    headers: Mapping[str, str],
    *,
    trailer: bool = False,
) -> list[tuple[str, str]]:
    """The headers of `method url` signed for S3 with botocore's signer: UNSIGNED-PAYLOAD, or
    with `trailer` STREAMING-UNSIGNED-PAYLOAD-TRAILER (an aws-chunked body ending in a checksum)."""
    request = _SigningRequest(method, url, headers)
    if trailer:
        # What botocore's own flexible-checksum handler puts in the context for a trailer.
        request.context["checksum"] = {"request_algorithm": {"in": "trailer", "algorithm": "crc32c"}}
    _UnsignedPayloadAuth(credentials, "s3", region).add_auth(request)
    return request.headers.items()


#: The trailer sealgate sends with streamed uploads when ``backend.upload_checksum`` is on.
CHECKSUM_TRAILER = "x-amz-checksum-crc32c"


def with_checksum_trailer(body: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """`body` as an aws-chunked stream (one chunk per piece) that ends with the CRC32C of all of
    it in a trailer, which the backend checks before it stores anything. The final chunk and the
    trailer come only once `body` has ended without error: a body that fails part-way stays
    incomplete for the backend."""

    async def framed() -> AsyncIterator[bytes]:
        crc = new_checksum("crc32c")
        before = b""
        async for piece in body:
            if not len(piece):
                continue
            crc.update(piece)
            yield before + f"{len(piece):x}\r\n".encode()
            yield piece
            before = b"\r\n"
        yield before + f"0\r\n{CHECKSUM_TRAILER}:{b64(crc)}\r\n\r\n".encode()

    return framed()


@dataclass(frozen=True)
class BackendSettings:
    """Where the storage is and how to reach it."""

    endpoint: str
    region: str
    access_key_id: str | None = None
    secret_access_key: str | None = None
    ssl: ssl.SSLContext | bool = True
    addressing_style: str = "path"
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    pool_size: int = 256
    #: Longest wait for a pooled connection before 503 SlowDown.
    pool_wait: float = 2.0
    #: Streamed uploads one client (`audit_context` identity) may send at once.
    uploads_per_client: int = 64
    #: Object downloads one client may be reading at once.
    downloads_per_client: int = 64
    max_attempts: int = 3
    #: Seconds before the first retry; doubled each time, with jitter.
    retry_base_delay: float = 0.05
    #: Send streamed uploads aws-chunked with a CRC32C trailer the backend checks.
    upload_checksum: bool = False


def version_ids(headers: Mapping[str, str], names: Sequence[str] = ("x-amz-version-id",)) -> dict[str, str]:
    """The version-id headers of a write's answer that name a version. A backend may say "null"
    (the only version of an object in a bucket without versioning; moto does so for completed
    multipart uploads): that names no version a client could ask for, and some clients that
    then ask for it get 400 from such a backend, so it is left out, as S3 leaves the header out."""
    return {name: headers[name] for name in names if name in headers and headers[name] != "null"}


def version_query(version: str | None) -> list[tuple[str, str]]:
    """The query that names one version of an object (none: the current one)."""
    return [("versionId", version)] if version else []


def quote_key(key: str) -> str:
    """Encode an object key for a URL path the way S3 signs it (slashes kept)."""
    return quote(key, safe="/~")


def encode_query(params: Sequence[tuple[str, str]]) -> str:
    """A query string whose encoding matches SigV4's canonical form."""
    return "&".join(quote(k, safe="-_.~") + ("=" + quote(v, safe="-_.~") if v is not None else "=") for k, v in params)


class BackendResponse:
    """A response from the backend; the body is read by the caller and must be released."""

    def __init__(self, resp: Response) -> None:
        self.raw = resp
        self.status = resp.status
        self.headers = resp.headers

    def user_metadata(self) -> dict[str, str]:
        """x-amz-meta-* as a dict with lower-case names, prefix removed."""
        out: dict[str, str] = {}
        for name, value in self.headers.items():
            lname = name.lower()
            if lname.startswith("x-amz-meta-"):
                out[lname[len("x-amz-meta-") :]] = value
        return out

    async def read(self) -> bytes:
        """The whole body: only for small control responses (XML), never object data."""
        return await self.raw.read()

    def release(self) -> None:
        """Return the connection to the pool (or close it when the body was not consumed)."""
        self.raw.release()

    def close(self) -> None:
        """Drop the connection: used when a body is abandoned half read."""
        self.raw.close()

    async def error(self) -> S3Error:
        """The backend's S3 error, as an S3Error to relay to the client."""
        try:
            body = await self.raw.read(64 * 1024)
        finally:
            self.release()
        code, message = _parse_error(body)
        if not code:
            code = {
                404: "NoSuchKey",
                403: "AccessDenied",
                412: "PreconditionFailed",
                416: "InvalidRange",
                503: "SlowDown",
            }.get(self.status, "InternalError" if self.status >= 500 else "InvalidRequest")
            message = f"backend answered {self.status}"
        status = self.status if self.status >= 400 else 502
        if status >= 500:
            # The backend's own failure is not ours; tell the client to retry.
            status = 503 if status == 503 else 502
            if code == "InternalError":
                code = "ServiceUnavailable" if status == 503 else "BadGateway"
        # What S3 says about a delete marker in the way (404 or 405) reaches the client too.
        passed = {n: self.headers[n] for n in _ERROR_HEADERS if n in self.headers}
        return S3Error(code, message or code, status, headers=passed)


_ERROR_HEADERS = ("x-amz-delete-marker", "x-amz-version-id")


def _parse_error(body: bytes) -> tuple[str, str]:
    if not body:
        return "", ""
    try:
        root = parse(body)
    except Exception:  # noqa: BLE001 - any parse failure means "no S3 error document"
        return "", ""
    code = message = ""
    for child in root.iter():
        tag = local_name(child.tag)
        if tag == "Code" and not code:
            code = (child.text or "").strip()
        elif tag == "Message" and not message:
            message = (child.text or "").strip()
    return code, message


class Backend:
    """Signs and sends requests to the storage over one pool of connections per process."""

    async def read_ok(
        self,
        method: str,
        bucket: str | None,
        key: str | None = None,
        *,
        query: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> tuple[BackendResponse, bytes]:
        """A control request (XML in, XML out): the response and its whole, small body; the
        backend's own S3 error is raised as an S3Error."""
        resp = await self.request(method, bucket, key, query=query, headers=headers, body=body)
        if resp.status >= 300:
            raise await resp.error()
        try:
            data = await resp.read()
        finally:
            resp.release()
        return resp, data

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings
        parts = urlsplit(settings.endpoint.rstrip("/"))
        self._scheme = parts.scheme
        self._netloc = parts.netloc
        self._base_path = parts.path
        self._pool: ConnectionPool | None = None
        #: (host, port, TLS) by the netloc a URL names.
        self._keys: dict[str, tuple[str, int, bool]] = {}
        self._default_port = 443 if parts.scheme == "https" else 80
        self._credentials: Credentials | None = None
        #: Streamed uploads being sent, by client.
        self.uploads = ClientSlots(settings.uploads_per_client, settings.pool_wait)
        #: Object downloads being read (each holding its backend connection until the client
        #: has taken the body), by client; the server takes these (proxy/server/downloads.py).
        self.downloads = ClientSlots(settings.downloads_per_client, settings.pool_wait, "downloads")
        self._log_limit = LogLimit()
        if settings.access_key_id and settings.secret_access_key:
            self._credentials = Credentials(settings.access_key_id, settings.secret_access_key)

    async def start(self) -> None:
        """Open the connection pool and resolve credentials (config or AWS default chain)."""
        if self._credentials is None:
            # Imported here: botocore's session machinery costs ~30 MiB and is only needed for
            # the AWS default credential chain.
            import botocore.session

            creds = await asyncio.to_thread(botocore.session.get_session().get_credentials)
            if creds is None:
                raise RuntimeError("no backend credentials in the config or the AWS default chain")
            self._credentials = creds
        tls: ssl.SSLContext | None = None
        if self._scheme == "https":
            if isinstance(self.settings.ssl, ssl.SSLContext):
                tls = self.settings.ssl
            else:
                tls = ssl.create_default_context()
                if self.settings.ssl is False:  # explicitly unverified, as aiohttp's ssl=False
                    tls.check_hostname = False
                    tls.verify_mode = ssl.CERT_NONE
        self._pool = ConnectionPool(
            self.settings.pool_size, self.settings.pool_wait, self.settings.connect_timeout, tls, keepalive=30.0
        )

    async def close(self) -> None:
        """Close the pool."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _key(self, netloc: str) -> tuple[str, int, bool]:
        key = self._keys.get(netloc)
        if key is None:
            parts = urlsplit(f"//{netloc}")
            if len(self._keys) > 1024:  # virtual-hosted buckets: bounded
                self._keys.clear()
            key = self._keys[netloc] = (parts.hostname or "", parts.port or self._default_port, self._scheme == "https")
        return key

    def _frozen(self) -> ReadOnlyCredentials:
        assert self._credentials is not None
        return self._credentials.get_frozen_credentials()

    def url(self, bucket: str | None, key: str | None, query: Sequence[tuple[str, str]] = ()) -> tuple[str, str]:
        """The (url, host) of a bucket/key on the backend."""
        netloc = self._netloc
        path = self._base_path
        if bucket:
            if self.settings.addressing_style == "virtual":
                netloc = f"{bucket}.{netloc}"
                path += "/"
            else:
                path += "/" + quote_key(bucket)
                if key is not None:
                    path += "/"
        else:
            path += "/"
        if key:
            path += quote_key(key)
        url = f"{self._scheme}://{netloc}{path}"
        if query:
            url += "?" + encode_query(query)
        return url, netloc

    async def request(
        self,
        method: str,
        bucket: str | None,
        key: str | None = None,
        *,
        query: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        content_length: int | None = None,
    ) -> BackendResponse:
        """Send one signed request; S3Error(502/503) when the backend cannot be reached."""
        if self._pool is None:
            raise RuntimeError("backend not started")
        url, host = self.url(bucket, key, query)
        hdrs: dict[str, str] = {"Host": host}
        if headers:
            hdrs.update(headers)
        body, trailer = self._frame(method, hdrs, body, content_length)
        if body is None or isinstance(body, bytes):
            return await self._send(method, bucket, url, hdrs, body, trailer=trailer)
        # A streamed upload holds its connection as long as the client takes to send it.
        client = audit_context.get().identity
        if client is None:  # operator tools: not a client's share
            return await self._send(method, bucket, url, hdrs, body, trailer=trailer)
        await self.uploads.acquire(client)
        try:
            return await self._send(method, bucket, url, hdrs, body, trailer=trailer)
        finally:
            self.uploads.release(client)

    async def _send(
        self, method: str, bucket: str | None, url: str, hdrs: dict[str, str], body: Body, *, trailer: bool
    ) -> BackendResponse:
        # Only a body that can be sent again may be retried: a streamed upload is consumed.
        attempts = self.settings.max_attempts if body is None or isinstance(body, bytes) else 1
        for attempt in range(1, attempts + 1):
            outcome = await self._attempt(method, url, hdrs, body, trailer=trailer, last=attempt == attempts)
            if isinstance(outcome, BackendResponse):
                return outcome
            delay = self.settings.retry_base_delay * 2 ** (attempt - 1) * (0.5 + random.random())
            log.info(
                "backend %s %s: %s, retrying in %.2f s (attempt %d of %d)",
                method,
                bucket or "/",
                outcome,
                delay,
                attempt,
                attempts,
            )
            BACKEND_RETRIES.inc()
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _frame(self, method: str, hdrs: dict[str, str], body: Body, content_length: int | None) -> tuple[Body, bool]:
        """Set the length headers in `hdrs` and return the body to send, and whether it ends in a
        checksum trailer (a streamed upload with ``upload_checksum`` on)."""
        if body is not None or method in ("PUT", "POST"):
            if content_length is None:
                if isinstance(body, bytes):
                    content_length = len(body)
                elif body is None:
                    content_length = 0
                else:
                    raise ValueError("streamed bodies need a computed Content-Length")
            hdrs["Content-Length"] = str(content_length)
        if not (self.settings.upload_checksum and body is not None and not isinstance(body, bytes)):
            return body, False
        # HTTP chunked (the framed length depends on the pieces), aws-chunked inside.
        del hdrs["Content-Length"]
        hdrs["x-amz-decoded-content-length"] = str(content_length)
        encoding = hdrs.pop("Content-Encoding", "")
        hdrs["Content-Encoding"] = "aws-chunked" + (f",{encoding}" if encoding else "")
        hdrs["x-amz-trailer"] = CHECKSUM_TRAILER
        hdrs["x-amz-sdk-checksum-algorithm"] = "CRC32C"
        return with_checksum_trailer(body), True

    async def _attempt(
        self, method: str, url: str, hdrs: dict[str, str], body: Body, *, trailer: bool, last: bool
    ) -> BackendResponse | str:
        """One try: the response to return, or why another try is worth it; on the `last` try a
        failure to reach the backend is raised as S3Error."""
        # Signed per attempt: a retry after a long backoff must not carry a stale date.
        send_headers = sign_request(self._frozen(), self.settings.region, method, url, hdrs, trailer=trailer)
        if trailer:  # the only body without a Content-Length (`_frame`): HTTP chunked, unsigned
            send_headers.append(("Transfer-Encoding", "chunked"))
        try:
            resp = await self._exchange(method, url, hdrs["Host"], send_headers, body, chunked=trailer)
        except PoolFull:
            # Not the backend's fault and not worth a retry here: the client's SDK backs off.
            log.warning(
                "no backend connection free within %ss (pool of %d)", self.settings.pool_wait, self.settings.pool_size
            )
            raise slow_down("all backend connections are busy") from None
        except TimeoutError as exc:
            if last:
                raise S3Error("ServiceUnavailable", "the storage backend timed out", 503) from exc
            return "timeout"
        except ConnectFailed as exc:
            problem = backend_tls_problem(self.settings.endpoint, exc)
            if problem is None:
                log.warning("backend unreachable: %s", exc.os_error.__class__.__name__)
            else:  # the same misconfiguration on every request: a few lines a minute say it
                self._log_limit.log(log, logging.WARNING, "tls", "backend unreachable: %s", problem)
            if last:
                raise S3Error("ServiceUnavailable", "the storage backend is unreachable", 503) from exc
            return exc.os_error.__class__.__name__
        except ConnectionBroken as exc:
            log.warning("backend request failed: %s", exc)
            if last:
                raise S3Error("BadGateway", "the storage backend connection failed", 502) from exc
            return "connection broken"
        if last or resp.status not in RETRY_STATUSES:
            return BackendResponse(resp)
        resp.release()
        return f"HTTP {resp.status}"

    async def _exchange(
        self, method: str, url: str, host: str, headers: list[tuple[str, str]], body: Body, *, chunked: bool
    ) -> Response:
        """Send the request on a pooled connection and wait for the answer's head. A connection
        kept alive that turns out closed (the backend let it go while it was idle) is replaced
        once, at no cost to the attempts, if the body can be sent again."""
        assert self._pool is not None
        key = self._key(host)
        head = request_head(method, url[len(self._scheme) + 3 + len(host) :], headers)  # after scheme://host
        replayable = body is None or isinstance(body, bytes)
        timeout = self.settings.read_timeout
        while True:
            conn = await self._pool.acquire(key)
            reused = conn.uses > 0
            resp = conn.begin(method, timeout)
            resp.on_done = self._pool.release
            resp.request_headers = headers
            try:
                await send(conn, resp, head, body, chunked=chunked, timeout=timeout)
                await resp.wait_head()
            except ConnectionBroken:
                stale = reused and replayable and not resp.head_done and not resp.buffered
                resp.close()
                if stale:
                    continue
                raise
            except BaseException:
                resp.close()
                raise
            return resp
