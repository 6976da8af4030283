"""``backend.upload_checksum``: streamed uploads reach the backend aws-chunked with a CRC32C of
the ciphertext in a trailer. moto decodes such bodies but checks no checksum, so the relay in
front of it checks the trailer as S3 does (and, on command, flips a byte on the way)."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from awscrt import checksums
from botocore.exceptions import ClientError

from tests.conftest import Stack, multipart_put
from tests.faults.test_faults import FaultyRelay, relayed

MiB = 1024 * 1024


def decode_aws_chunked(raw: bytes) -> tuple[bytes, dict[str, str]]:
    """(payload, trailers) of an aws-chunked body; ValueError if it is not one."""
    out, pos = bytearray(), 0
    while True:
        end = raw.index(b"\r\n", pos)
        size = int(raw[pos:end].split(b";")[0], 16)
        pos = end + 2
        if size == 0:
            break
        out += raw[pos : pos + size]
        if raw[pos + size : pos + size + 2] != b"\r\n":
            raise ValueError("chunk not followed by CRLF")
        pos += size + 2
    trailers = {}
    for line in raw[pos:].split(b"\r\n"):
        if line:
            name, _, value = line.decode().partition(":")
            trailers[name.strip().lower()] = value.strip()
    return bytes(out), trailers


class Checker:
    """What S3 does with a trailing checksum: recompute it, refuse the upload on a mismatch."""

    def __init__(self) -> None:
        self.checked = 0
        self.flip = False

    async def __call__(self, request: web.Request) -> web.StreamResponse | None:
        if request.headers.get("x-amz-content-sha256") != "STREAMING-UNSIGNED-PAYLOAD-TRAILER":
            return None
        raw = bytearray(await request.read())
        if self.flip:
            raw[len(raw) // 2] ^= 0x01
        payload, trailers = decode_aws_chunked(bytes(raw))
        assert len(payload) == int(request.headers["x-amz-decoded-content-length"])
        wanted = base64.b64encode(checksums.crc32c(payload).to_bytes(4, "big")).decode()
        self.checked += 1
        if trailers.get("x-amz-checksum-crc32c") != wanted:
            return web.Response(status=400, body=b"<Error><Code>BadDigest</Code><Message>crc32c</Message></Error>")
        return None


@pytest.fixture(scope="module")
def checked(
    moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[FaultyRelay, Stack, Checker]]:
    with relayed(moto_url, tls_files, tmp_path_factory.mktemp("crc"), backend_extra="upload_checksum = true") as (
        relay,
        st,
    ):
        checker = Checker()
        relay.before = checker
        st.client().create_bucket(Bucket="crc")
        yield relay, st, checker


def test_streamed_uploads_carry_a_checksum_the_backend_can_check(checked: tuple[FaultyRelay, Stack, Checker]) -> None:
    _, st, checker = checked
    s3 = st.client()
    before = checker.checked
    big = os.urandom(3 * MiB + 5)  # streamed, and through the direct body path
    s3.put_object(Bucket="crc", Key="big", Body=big)
    mid = os.urandom(300_000)  # streamed through aiohttp's body path
    s3.put_object(Bucket="crc", Key="mid", Body=mid, ContentEncoding="gzip")
    parts = multipart_put(s3, "crc", "mp", [os.urandom(5 * MiB), os.urandom(MiB)])
    small = b"sent whole, with Content-MD5 instead"
    s3.put_object(Bucket="crc", Key="small", Body=small)
    assert checker.checked - before == 4  # big, mid and the two parts
    assert s3.get_object(Bucket="crc", Key="big")["Body"].read() == big
    got = s3.get_object(Bucket="crc", Key="mid")
    assert got["Body"].read() == mid and got["ContentEncoding"] == "gzip"
    assert s3.get_object(Bucket="crc", Key="mp")["Body"].read() == parts
    assert s3.get_object(Bucket="crc", Key="small")["Body"].read() == small
    raw = st.backend().head_object(Bucket="crc", Key="big")
    assert raw["ContentLength"] > len(big)  # the ciphertext, stored decoded (no chunk framing)
    assert raw["ContentLength"] < len(big) + 64 * 1024


def test_a_byte_flipped_on_the_way_stores_nothing(checked: tuple[FaultyRelay, Stack, Checker]) -> None:
    _, st, checker = checked
    s3 = st.client()
    checker.flip = True
    try:
        with pytest.raises(ClientError) as exc:
            s3.put_object(Bucket="crc", Key="flipped", Body=os.urandom(2 * MiB))
        assert exc.value.response["Error"]["Code"] == "BadDigest"
    finally:
        checker.flip = False
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket="crc", Key="flipped")
    assert exc.value.response["Error"]["Code"] == "404"  # never written, not merely unreadable


def test_a_failed_client_check_still_stores_nothing(checked: tuple[FaultyRelay, Stack, Checker]) -> None:
    """The trailer comes only after every check on the client's body: a wrong Content-MD5 cuts
    the chunked body short, and the backend stores nothing."""
    _, st, _ = checked
    s3 = st.client()
    wrong = base64.b64encode(hashlib.md5(b"something else").digest()).decode()
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket="crc", Key="bad-md5", Body=os.urandom(2 * MiB), ContentMD5=wrong)
    assert exc.value.response["Error"]["Code"] == "BadDigest"
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket="crc", Key="bad-md5")
    assert exc.value.response["Error"]["Code"] == "404"
    assert "bad-md5" not in [o["Key"] for o in st.backend().list_objects_v2(Bucket="crc").get("Contents", [])]


def _lock_bucket(s3: Any, name: str) -> None:
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    s3.put_object_lock_configuration(
        Bucket=name,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
        },
    )


def test_large_uploads_into_a_bucket_with_default_retention(checked: tuple[FaultyRelay, Stack, Checker]) -> None:
    """Such a bucket takes uploads only with a checksum: with upload_checksum, streamed ones too."""
    _, st, _ = checked
    s3 = st.client()
    _lock_bucket(s3, "crc-locked")
    data = os.urandom(2 * MiB)
    s3.put_object(Bucket="crc-locked", Key="big", Body=data)
    assert s3.head_object(Bucket="crc-locked", Key="big")["ObjectLockMode"] == "GOVERNANCE"
    assert s3.get_object(Bucket="crc-locked", Key="big")["Body"].read() == data


def test_without_upload_checksum_such_uploads_are_refused_not_stored_unlocked(stack: Stack) -> None:
    s3 = stack.client()
    _lock_bucket(s3, "nocrc-locked")
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket="nocrc-locked", Key="big", Body=os.urandom(2 * MiB))
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "Contents" not in s3.list_objects_v2(Bucket="nocrc-locked")
