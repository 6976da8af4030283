"""s3ec-v3 parts sent again, against a fake backend: what an attempt may have sent binds every
later attempt at that part, and a GCM tag once sent fixes where the upload ends."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from proxy.crypto import s3ec_multipart
from proxy.crypto.s3ec_multipart import S3ecV3Multipart
from proxy.s3.errors import S3Error
from proxy.store import s3ec_uploads
from proxy.store.s3ec_uploads import Upload, complete_upload, encrypt_part

PART = 256  # the smallest part that is not the last one, here


class Answer:
    status = 200

    def __init__(self, body: bytes) -> None:
        self.headers = {"ETag": f'"{hashlib.md5(body).hexdigest()}"'}

    def release(self) -> None:
        pass


class Sink:
    """Stands in for `put_stream`: keeps what reached the backend, and fails on command
    (`cut`: after that many bytes; `lose`: once the whole body has arrived)."""

    def __init__(self) -> None:
        self.bodies: list[bytearray] = []
        self.cut: int | None = None
        self.lose = False

    async def __call__(self, gw: Any, bucket: str, key: str, chunks: AsyncIterator[bytes], n: int, **_: Any) -> Any:
        got = bytearray()
        self.bodies.append(got)
        async for chunk in chunks:
            got += chunk
            if self.cut is not None and len(got) >= self.cut:
                raise S3Error("InternalError", "connection reset by the backend", 502)
        if self.lose:
            raise S3Error("InternalError", "the backend's answer was lost", 500)
        return Answer(bytes(got))


class Backend:
    """The tag PUT at Complete works; the Complete itself fails."""

    def __init__(self) -> None:
        self.tags: list[bytes] = []

    async def request(self, method: str, bucket: str, key: str, *, body: bytes, **_: Any) -> Answer:
        self.tags.append(body)
        return Answer(body)

    async def read_ok(self, *_: Any, **__: Any) -> Any:
        raise S3Error("InternalError", "CompleteMultipartUpload failed", 500)


class Gateway:
    def __init__(self) -> None:
        self.backend = Backend()


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sink]:
    s = Sink()
    monkeypatch.setattr(s3ec_uploads, "put_stream", s)
    monkeypatch.setattr(s3ec_uploads, "MIN_PART_SIZE", PART)
    monkeypatch.setattr(s3ec_multipart, "RESEND_CHUNK", 64)
    yield s


def upload() -> Upload:
    body = S3ecV3Multipart(bytes(32))
    return Upload("b", "k", "backend-id", body, body.start, bytes(32))


async def _pieces(data: bytes, size: int = 50) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def send(up: Upload, number: int, data: bytes, gw: Any = None) -> str:
    return asyncio.run(encrypt_part(gw, up, number, len(data), _pieces(data)))


def refused(up: Upload, number: int, data: bytes) -> str:
    with pytest.raises(S3Error) as err:
        send(up, number, data)
    assert err.value.code == "InvalidRequest" and err.value.status == 400
    return err.value.message


def other(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def test_a_part_whose_answer_was_lost_is_taken_again_only_unchanged(sink: Sink) -> None:
    up, data = upload(), os.urandom(PART + 44)
    sink.lose = True
    with pytest.raises(S3Error):
        send(up, 1, data)
    assert len(sink.bodies[0]) == len(data) and not up.parts  # the backend has it all
    sink.lose = False
    message = refused(up, 1, other(data, 3))
    assert "part 1 was already sent with other bytes" in message and "restart the upload" in message
    assert len(sink.bodies) == 1  # the differing attempt never reached the backend
    assert "first sent with 300 bytes, now with 301" in refused(up, 1, data + b"x")
    send(up, 1, data)
    assert sink.bodies[1] == sink.bodies[0] and len(up.parts) == 1


def test_a_stored_part_is_taken_again_only_unchanged(sink: Sink) -> None:
    up, first, second = upload(), os.urandom(PART), os.urandom(PART + 1)
    send(up, 1, first)
    send(up, 2, second)
    refused(up, 2, other(second, PART))
    # It differed in its last chunk: the backend saw the chunks before it again, nothing new.
    assert 0 < len(sink.bodies[2]) <= PART and sink.bodies[1].startswith(sink.bodies[2])
    send(up, 2, second)
    assert sink.bodies[3] == sink.bodies[1]
    assert set(up.sent) == {2}  # part 1 can no longer come again: its record is gone


def test_a_cut_attempt_binds_what_it_may_have_sent(sink: Sink) -> None:
    up, data = upload(), os.urandom(PART + 44)
    sink.cut = 100
    with pytest.raises(S3Error):
        send(up, 1, data)
    sent = bytes(sink.bodies[0])
    sink.cut = None
    refused(up, 1, other(data, 60))  # within what left
    changed = other(data, 200)  # after it: that keystream was never used
    send(up, 1, changed)
    assert bytes(sink.bodies[-1][: len(sent)]) == sent
    refused(up, 1, data)  # the full attempt binds in turn


def test_a_tag_sent_by_a_failed_complete_fixes_the_end(sink: Sink) -> None:
    gw, up, data = Gateway(), upload(), os.urandom(PART + 44)
    etag = send(up, 1, data)
    with pytest.raises(S3Error, match="CompleteMultipartUpload failed"):
        asyncio.run(complete_upload(gw, up, "b", "k", [(1, etag)], {}))  # type: ignore[arg-type]
    assert up.sealed_at == len(data)
    assert "already sent for a body of 300 bytes" in refused(up, 2, b"more")
    assert "300 bytes" in refused(up, 2, os.urandom(PART))
    send(up, 1, data)  # the same last part again is fine, and so is its tag
    with pytest.raises(S3Error, match="CompleteMultipartUpload failed"):
        asyncio.run(complete_upload(gw, up, "b", "k", [(1, etag)], {}))  # type: ignore[arg-type]
    assert gw.backend.tags[1] == gw.backend.tags[0]


def test_a_last_part_whose_tag_left_must_stay_the_last(sink: Sink) -> None:
    gw, up, first, last = Gateway(), upload(), os.urandom(PART), os.urandom(10)
    etag = send(up, 1, first)
    sink.lose = True
    with pytest.raises(S3Error):
        send(up, 2, last)  # carries the tag, which reached the backend
    sink.lose = False
    with pytest.raises(S3Error) as err:  # ending after part 1 would send a second tag
        asyncio.run(complete_upload(gw, up, "b", "k", [(1, etag)], {}))  # type: ignore[arg-type]
    assert err.value.code == "InvalidRequest" and not gw.backend.tags
    refused(up, 2, other(last, 9))
    send(up, 2, last)
    assert sink.bodies[-1] == sink.bodies[-2]
