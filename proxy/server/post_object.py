"""POST Object: browser form uploads, authenticated by the form's signed policy document.

The form's fields come before its file and are small (S3's 20 KiB); they are read first, and the
policy's signature, the policy's conditions and the identity policies are all checked before
any backend or keyring call. The file then streams into the same sealing path as a PutObject
(`proxy.store.bodies.send_sealed`), holding back the last segment until the file has ended
where the form said and every check on it passed: a refused or broken form stores nothing.

The backend needs the sealed length before the first byte, and so does the envelope's
signature. A file that ends within the first `SMALL_BODY_BYTES` is measured; a larger one is
taken to fill the rest of the body but for the closing boundary (as it does when ``file`` is
the last field, as S3 asks), from the request's Content-Length, and a file that ends elsewhere
is refused once that shows, before anything is stored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlencode
from xml.sax.saxutils import escape

from aiohttp import StreamReader, web

from proxy.metrics import BYTES_IN
from proxy.s3.checksums import ALGORITHMS, Checksum, b64, new_checksum
from proxy.s3.errors import S3Error
from proxy.s3.headers import refuse_reserved_metadata
from proxy.s3.post_form import Event, FormEnd, FormParser, PartData, PartEnd, PartStart, boundary_of, malformed
from proxy.s3.post_policy import (
    PostPolicy,
    Signer,
    check_conditions,
    check_expiration,
    check_length,
    exempt_fields,
    expand_filename,
    missing_field,
    object_headers,
    parse_policy,
    verify_signature,
)
from proxy.s3.routing import Op, Route, bucket_from_host
from proxy.s3.sigv4 import ClientCredentials, VerifiedRequest
from proxy.s3.xml import S3_NS, XML_HEADERS
from proxy.server import cors
from proxy.server.body import paced_read
from proxy.server.budget import BodyPace
from proxy.server.state import CALLER, IDENTITY
from proxy.server.tls import check_client_certificate
from proxy.server.writes import store_single
from proxy.store.bodies import SMALL_BODY_BYTES
from proxy.store.gateway import Gateway
from proxy.store.objects import MAX_PUT_SIZE
from proxy.store.records import check_reserved

#: S3's limit on the form before the file, boundaries and part headers included
#: ("MaxPostPreDataLengthExceeded").
MAX_PRE_DATA = 20 * 1024

#: The identity-policy check of the app (`proxy.server.app`): the routed request with its key,
#: who signed it, and the headers a PutObject of the same object would carry.
Authorize = Callable[[Route, VerifiedRequest, Mapping[str, str]], Awaitable[None]]
Lookup = Callable[[str], ClientCredentials | None]


def is_form_upload(request: web.Request) -> bool:
    """Whether the request is a form POST (routed as PostObject when it names a bucket only)."""
    return request.method == "POST" and request.headers.get("Content-Type", "").lower().startswith(
        "multipart/form-data"
    )


def _too_much_pre_data() -> S3Error:
    return S3Error("MaxPostPreDataLengthExceeded", "Your POST request fields preceding the upload file were too large.")


class _Events:
    """The form's events as the body arrives (reads bounded by the stall timeout and the
    minimum body rate, as every upload's are)."""

    def __init__(self, stream: StreamReader, parser: FormParser, pace: BodyPace) -> None:
        self._stream = stream
        self._parser = parser
        self._pace = pace
        self._pending: deque[Event] = deque()

    async def next(self) -> Event:
        while not self._pending:
            if self._parser.ended:
                return FormEnd()
            data = await paced_read(self._stream, self._pace)
            if not data:
                self._parser.finish()
                return FormEnd()
            self._pending.extend(self._parser.feed(data))
        return self._pending.popleft()


async def _read_fields(events: _Events) -> tuple[dict[str, str], PartStart]:
    """The fields before the file (by lower-case name; a name sent twice has its values joined
    by commas, as S3 checks them) and the file part's start."""
    fields: dict[str, str] = {}
    while True:
        event = await events.next()
        if isinstance(event, FormEnd):
            raise S3Error(
                "InvalidArgument",
                "POST requires exactly one file upload per request.",
                400,
                extra={"ArgumentName": "file"},
            )
        if not isinstance(event, PartStart):
            raise malformed()
        if event.offset > MAX_PRE_DATA:
            raise _too_much_pre_data()
        name = event.name.lower()
        if name == "file":
            return fields, event
        value = bytearray()
        while not isinstance(event := await events.next(), PartEnd):
            if not isinstance(event, PartData):
                raise malformed()
            value += event.data
            if len(value) > MAX_PRE_DATA:
                raise _too_much_pre_data()
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise S3Error("InvalidArgument", f"The form field {name!r} is not UTF-8.", 400) from None
        fields[name] = f"{fields[name]},{text}" if name in fields else text


class FileBody:
    """The file part's plaintext, of a length known before it is sent (`SealableBody`)."""

    def __init__(
        self, events: _Events, head: list[bytes], ended: bool, length: int, want_md5: bool, fields: Mapping[str, str]
    ) -> None:
        self._events = events
        self._head = head
        self._ended = ended
        self.length = length
        #: The MD5 the form's Content-MD5 field declares, checked at the end (and then the ETag).
        self.content_md5 = _content_md5(fields.get("content-md5"))
        #: Whether the MD5 is computed for the ETag although no Content-MD5 came.
        self.md5_wanted = want_md5 and self.content_md5 is None
        self._md5 = hashlib.md5(usedforsecurity=False) if want_md5 or self.content_md5 else None
        self._checksum: tuple[str, str, Checksum] | None = None
        for alg in ALGORITHMS:
            value = fields.get(f"x-amz-checksum-{alg}")
            if value is not None:
                self._checksum = (alg, value.strip(), new_checksum(alg))
        self.received = 0

    @property
    def md5(self) -> bytes | None:
        """The plaintext's MD5 once it has ended, if it was computed."""
        return self._md5.digest() if self._md5 is not None else None

    def _account(self, piece: bytes) -> None:
        self.received += len(piece)
        BYTES_IN.inc(len(piece))
        if self.received > self.length:
            raise _misplaced_file()
        if self._md5 is not None:
            self._md5.update(piece)
        if self._checksum is not None:
            self._checksum[2].update(piece)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self._head:
            self._account(piece)
            yield piece
        self._head = []
        if not self._ended:
            while not isinstance(event := await self._events.next(), PartEnd):
                if not isinstance(event, PartData):
                    raise malformed()
                self._account(event.data)
                yield event.data
        if self.received != self.length:
            raise _misplaced_file()
        # Fields after the file are ignored, as S3 does, but the form must end well.
        while not isinstance(await self._events.next(), FormEnd):
            pass
        if self.content_md5 is not None and self.md5 != self.content_md5:
            raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we received.")
        if self._checksum is not None:
            alg, expected, checksum = self._checksum
            if b64(checksum) != expected:
                raise S3Error("BadDigest", f"The {alg.upper()} you specified did not match the calculated checksum.")


def _content_md5(value: str | None) -> bytes | None:
    if value is None:
        return None
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 16:
        raise S3Error("InvalidDigest", "The Content-MD5 you specified was invalid.")
    return digest


def _misplaced_file() -> S3Error:
    return malformed(f"a file larger than {SMALL_BODY_BYTES} bytes must be the last field of the form")


async def _file_body(
    events: _Events,
    start: PartStart,
    content_length: int | None,
    boundary: bytes,
    want_md5: bool,
    fields: Mapping[str, str],
) -> FileBody:
    """The file, measured if it is small, else sized from the Content-Length (see the module)."""
    head: list[bytes] = []
    got = 0
    ended = False
    while got <= SMALL_BODY_BYTES:
        event = await events.next()
        if isinstance(event, PartEnd):
            ended = True
            break
        if not isinstance(event, PartData):
            raise malformed()
        head.append(event.data)
        got += len(event.data)
    if ended:
        length = got
    elif content_length is None:
        raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.", 411)
    else:
        length = content_length - start.offset - len(b"\r\n--" + boundary + b"--\r\n")
        if length < got:
            raise _misplaced_file()
    return FileBody(events, head, ended, length, want_md5, fields)


def _object_key(fields: Mapping[str, str]) -> str:
    if "key" not in fields:
        raise missing_field("key")
    key = fields["key"]
    if not key:
        raise S3Error("InvalidArgument", "User key must have a length greater than 0.", 400)
    if len(key.encode()) > 1024:
        raise S3Error("KeyTooLongError", "Your key is too long", 400)
    check_reserved(key)
    return key


def _authenticate(
    gw: Gateway, request: web.Request, fields: Mapping[str, str], lookup: Lookup
) -> tuple[Signer, PostPolicy]:
    """Check the form's signature and its policy's lifetime; (who signed it, the policy)."""
    signer = verify_signature(fields, lookup)
    peercert = request.transport.get_extra_info("peercert") if request.transport is not None else None
    check_client_certificate(gw.config, peercert, signer.credentials.identity)
    request[IDENTITY] = signer.credentials.identity
    policy = parse_policy(fields["policy"])
    srv = gw.config.server
    check_expiration(
        policy,
        signer,
        datetime.now(UTC),
        max_seconds=srv.presign_max_seconds,
        skew=timedelta(seconds=srv.client_max_skew_seconds),
    )
    return signer, policy


async def post_object(
    gw: Gateway, request: web.Request, r: Route, authorize: Authorize, lookup: Lookup
) -> web.StreamResponse:
    """Store the form's file under its ``key`` once its signature, policy and the identity
    policies allow it; answer as ``success_action_redirect`` / ``success_action_status`` ask."""
    assert r.bucket is not None
    bucket = r.bucket
    boundary = boundary_of(request.headers.get("Content-Type", ""))
    srv = gw.config.server
    pace = BodyPace(srv.body_stall_timeout_seconds, srv.body_min_bytes_per_second)
    events = _Events(request.content, FormParser(boundary), pace)
    signed, start = await _read_fields(events)
    signer, policy = _authenticate(gw, request, signed, lookup)
    fields = expand_filename(signed, start.filename)
    check_conditions(policy, fields, bucket, exempt_fields(fields))
    key = _object_key(fields)
    headers = object_headers(fields)
    refuse_reserved_metadata(headers)
    verified = VerifiedRequest.without_payload_signature(signer.credentials)
    await authorize(Route(Op.POST_OBJECT, bucket, key), verified, headers)
    request[cors.BUCKET] = bucket  # only now: its CORS rules may be read from the backend
    body = await _file_body(events, start, request.content_length, boundary, gw.config.encryption.etag == "md5", fields)
    check_length(policy, body.length)
    if body.length > MAX_PUT_SIZE:
        raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size", 400)
    etag, answer_headers = await _store(gw, request, bucket, key, body, headers)
    return _answer(request, fields, bucket, key, etag, answer_headers, gw.config.server.virtual_host_domains)


async def _store(
    gw: Gateway, request: web.Request, bucket: str, key: str, body: FileBody, meta: Mapping[str, str]
) -> tuple[str, dict[str, str]]:
    """Seal and store the file as PutObject does; (the ETag shown, the answer's extra headers)."""
    return await store_single(gw, request[CALLER], bucket, key, body, meta, {})


def _location(request: web.Request, bucket: str, key: str, virtual: bool) -> str:
    host = request.headers.get("Host", "")
    path = quote(key, safe="/~") if virtual else f"{bucket}/{quote(key, safe='/~')}"
    return f"{request.scheme}://{host}/{path}"


def _answer(
    request: web.Request,
    fields: Mapping[str, str],
    bucket: str,
    key: str,
    etag: str,
    extra: dict[str, str],
    virtual_domains: Sequence[str],
) -> web.StreamResponse:
    """S3's answer to a stored form: a 303 to ``success_action_redirect``, or the status that
    ``success_action_status`` names (204 by default; 201 with a PostResponse document)."""
    headers = {"ETag": etag, **extra}
    redirect = fields.get("success_action_redirect") or fields.get("redirect")
    if redirect and redirect.startswith(("http://", "https://")) and redirect.isprintable():
        sep = "&" if "?" in redirect else "?"
        target = redirect + sep + urlencode({"bucket": bucket, "key": key, "etag": etag})
        return web.Response(status=303, headers={**headers, "Location": target})
    virtual = bucket_from_host(request.headers.get("Host", ""), virtual_domains) == bucket
    location = _location(request, bucket, key, virtual)
    status = fields.get("success_action_status")
    if status == "201":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<PostResponse xmlns="{S3_NS}"><Location>{escape(location)}</Location>'
            f"<Bucket>{escape(bucket)}</Bucket><Key>{escape(key)}</Key><ETag>{escape(etag)}</ETag></PostResponse>"
        )
        return web.Response(status=201, body=body.encode(), headers={**headers, **XML_HEADERS, "Location": location})
    return web.Response(status=200 if status == "200" else 204, headers={**headers, "Location": location})
