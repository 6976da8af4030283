"""The channel between the workers of one sealgate (``server.workers > 1``): a part or the
completion of an s3ec-v3 upload that reached a worker other than the one holding the upload's GCM
state (proxy/store/s3ec_uploads.py) is passed to that worker, whose answer goes to the client.

Each worker serves a small aiohttp app on its unix socket in the channel's private directory
(proxy/server/workers.py: `Channel`); every request carries the channel's token. The worker that
received the client's request has done all it does for a local part before it passes one on:
SigV4, aws-chunked decoding, authorization, the key policy's ``encrypt`` right on the upload's
key, the id's parsing. It streams the plaintext as it is verified, holding back its last byte
until the whole body has checked out (Content-MD5, payload hash, checksums, chunk signatures):
the owner, short of its length, stores nothing of a body that failed. The owner then does what
it does for a local part: the id's MAC under the data key it holds, the part order, the retry
rules, the encryption and the backend's PUT.

If the owner's socket refuses (the worker died, and its state with it) the upload is lost:
NoSuchUpload, as from any process that does not hold it. A channel that fails mid-part is a
503: the owner, short of the part's length, stores nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from proxy.access.authorize import Caller
from proxy.crypto.format import FormatError
from proxy.crypto.upload_id import UploadId
from proxy.kms.base import KeyringError
from proxy.s3.errors import S3Error
from proxy.server.workers import Channel
from proxy.store.errors import keyring_error
from proxy.store.gateway import Gateway
from proxy.store.s3ec_uploads import complete_upload, encrypt_part, find_upload, lost_upload

log = logging.getLogger("sealgate")

_TOKEN = "X-Sealgate-Peer-Token"
_FIELDS = "X-Sealgate-Peer-Request"
#: The owner waits up to PART_ORDER_WAIT for an early part's predecessor before it answers; a
#: hung owner must not hold the client's request forever.
_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=300.0)

Fields = dict[str, Any]


class Peers:
    """This worker's end of the channel: the app it serves on its socket, and the sessions it
    passes requests over to the other workers."""

    def __init__(self, gateway: Gateway, channel: Channel) -> None:
        self.gateway = gateway
        self.channel = channel
        self._runner: web.AppRunner | None = None
        self._sessions: dict[int, aiohttp.ClientSession] = {}

    async def start(self) -> None:
        """Serve this worker's socket (a stale one left by a dead worker is replaced)."""
        # The largest body read whole: a Complete's list of parts (10,000 of them at most).
        app = web.Application(middlewares=[_answers], client_max_size=4 << 20)
        app[_PEERS] = self
        app.router.add_put("/part", _take_part)
        app.router.add_post("/complete", _take_complete)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.channel.socket(self.channel.slot))).start()

    async def close(self) -> None:
        """Stop serving the socket and close the sessions to the others."""
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.channel.socket(self.channel.slot).unlink(missing_ok=True)

    def owner_of(self, uid: UploadId) -> int | None:
        """The other worker that holds the upload `uid` names, or None (this one, or no worker of
        this sealgate: an id of a sealgate with other workers, or with none)."""
        slot = uid.slot
        if slot is None or slot == self.channel.slot or not 0 <= slot < self.channel.workers:
            return None
        return slot

    def _session(self, slot: int) -> aiohttp.ClientSession:
        session = self._sessions.get(slot)
        if session is None:
            # One connection per request: one whose body was cut short is never used again.
            connector = aiohttp.UnixConnector(path=str(self.channel.socket(slot)), force_close=True)
            session = self._sessions[slot] = aiohttp.ClientSession(
                connector=connector, timeout=_TIMEOUT, auto_decompress=False
            )
        return session

    async def send_part(
        self, slot: int, fields: Fields, length: int, plaintext: AsyncIterable[bytes | memoryview]
    ) -> Fields:
        """Pass a part to worker `slot`: `plaintext` (`length` bytes) streamed, its last byte only
        once the whole body has checked out. The owner's answer; its S3 error raised, or the
        body's own failure (the owner, short of the length, then stored nothing)."""
        failed: list[BaseException] = []

        async def body() -> AsyncIterator[bytes | memoryview]:
            held = b""
            try:
                async for piece in plaintext:
                    if not piece:
                        continue
                    if held:
                        yield held
                    # A copy: the piece's memory may be reused by the next read (DirectBody)
                    # while the socket still holds it.
                    data = bytes(piece)
                    yield memoryview(data)[:-1]
                    held = data[-1:]
            except Exception as exc:  # a failed check (not a cancel: the owner answered first)
                failed.append(exc)
                raise
            if held:
                yield held

        headers = {"Content-Length": str(length), "Content-Type": "application/octet-stream"}
        if length == 0:
            async for _ in body():  # nothing to hold back: check the (empty) body first
                pass
            return await self._call(slot, "PUT", "/part", fields, b"", headers, failed)
        return await self._call(slot, "PUT", "/part", fields, body(), headers, failed)

    async def send_complete(self, slot: int, fields: Fields) -> Fields:
        """Pass a CompleteMultipartUpload to worker `slot` (its parts and write conditions in
        `fields`); the owner's answer, or its S3 error raised."""
        return await self._call(slot, "POST", "/complete", {}, json.dumps(fields).encode(), {}, [])

    async def _call(
        self,
        slot: int,
        method: str,
        path: str,
        fields: Fields,
        data: bytes | AsyncIterator[bytes | memoryview],
        headers: dict[str, str],
        failed: list[BaseException],
    ) -> Fields:
        headers = {**headers, _TOKEN: self.channel.token}
        if fields:
            headers[_FIELDS] = json.dumps(fields)
        try:
            session = self._session(slot)
            async with session.request(method, "http://sealgate-peer" + path, data=data, headers=headers) as resp:
                answer = json.loads(await resp.read())
                status = resp.status
        except aiohttp.ClientConnectorError:
            if failed:
                raise failed[0] from None
            # Nothing listens on the owner's socket: it died, and the upload's state with it.
            raise lost_upload() from None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            if failed:
                raise failed[0] from None
            log.error("worker %s did not answer a request passed to it (%s)", slot, exc)
            raise S3Error(
                "ServiceUnavailable",
                "the sealgate worker that holds this s3ec-v3 upload did not answer; send the part again",
                503,
            ) from None
        if failed:
            raise failed[0]
        if status != 200:
            raise S3Error(
                answer["code"],
                answer["message"],
                int(answer["status"]),
                extra=answer["extra"],
                headers=answer["headers"],
            )
        log.info("%s %s of an s3ec-v3 upload passed to worker %s", method, path, slot)
        return dict(answer)


_PEERS = web.AppKey("peers", Peers)
#: On the public app (with several workers): this worker's end of the channel.
PEERS = web.AppKey("peer channel", Peers)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(status: int, doc: Fields) -> web.Response:
    return web.Response(status=status, body=json.dumps(doc).encode(), content_type="application/json")


def _error(err: S3Error) -> web.Response:
    doc = {"code": err.code, "message": err.message, "status": err.status, "extra": err.extra, "headers": err.headers}
    return _json(err.status, doc)


@web.middleware
async def _answers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The token first; every failure an S3 error the receiving worker passes on."""
    token = request.app[_PEERS].channel.token
    if not hmac.compare_digest(request.headers.get(_TOKEN, "").encode(), token.encode()):
        return _error(S3Error("AccessDenied", "not a request of this sealgate's workers", 403))
    try:
        return await handler(request)
    except S3Error as err:
        return _error(err)
    except KeyringError as err:
        return _error(keyring_error(err))
    except FormatError as err:
        return _error(S3Error("ObjectIntegrityError", str(err), 500))
    except Exception:
        log.exception("unhandled error in a request passed from another worker")
        return _error(S3Error("InternalError", "We encountered an internal error. Please try again.", 500))


def _fields(request: web.Request, text: str | bytes | None = None) -> tuple[Fields, Caller]:
    """The fields of a request between workers (from its header, or `text`: its body), and the
    client it is made for."""
    try:
        fields = json.loads(request.headers.get(_FIELDS, "") if text is None else text)
    except ValueError:
        raise S3Error("InvalidRequest", "malformed request between workers", 400) from None
    identity = fields.get("identity")
    if not isinstance(fields, dict) or not isinstance(identity, str):
        # A client's request always has an identity; None would be the operator.
        raise S3Error("InvalidRequest", "malformed request between workers", 400)
    return fields, Caller(identity)


async def _take_part(request: web.Request) -> web.StreamResponse:
    """A part another worker received and verified, for an upload this worker holds."""
    peers = request.app[_PEERS]
    gw = peers.gateway
    fields, caller = _fields(request)
    bucket, key = str(fields["bucket"]), str(fields["key"])
    up = find_upload(gw, caller, bucket, key, str(fields["upload_id"]))
    number, length = int(fields["number"]), int(fields["length"])
    md5 = hashlib.md5(usedforsecurity=False) if fields.get("md5") else None

    async def plaintext() -> AsyncIterator[bytes]:
        while True:
            try:
                chunk = await request.content.readany()
            except Exception as exc:  # noqa: BLE001 - aiohttp raises several types on disconnect
                # The receiving worker cut the body: a failed check there, or its client left.
                raise S3Error("IncompleteBody", "the part's body ended early", 400) from exc
            if not chunk:
                return
            if md5 is not None:
                md5.update(chunk)
            yield chunk

    backend_etag = await encrypt_part(gw, up, number, length, plaintext())
    if md5 is not None:  # clients that check part ETags compare them with the plaintext MD5
        up.parts[-1].client_etag = md5.hexdigest()
    return _json(200, {"etag": up.parts[-1].client_etag, "backend_etag": backend_etag})


async def _take_complete(request: web.Request) -> web.StreamResponse:
    """A CompleteMultipartUpload another worker received, for an upload this worker holds."""
    gw = request.app[_PEERS].gateway
    # In the body: the list of parts may be long (up to 10,000).
    fields, caller = _fields(request, await request.read())
    bucket, key = str(fields["bucket"]), str(fields["key"])
    up = find_upload(gw, caller, bucket, key, str(fields["upload_id"]))
    wanted = [(int(n), str(etag)) for n, etag in fields["parts"]]
    conditions = {str(k): str(v) for k, v in dict(fields["conditions"]).items()}
    etag, versions = await complete_upload(gw, up, bucket, key, wanted, conditions)
    return _json(200, {"etag": etag, "versions": versions})
