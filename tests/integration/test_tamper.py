"""Tampering on the backend is detected on GET, and no wrong byte reaches the client."""

from __future__ import annotations

import os
from typing import Any

import pytest
from botocore.exceptions import BotoCoreError, ClientError, IncompleteReadError, ResponseStreamingError

from tests.conftest import Stack

SEG = 64 * 1024
SEALED = SEG + 16


def read_what_arrives(s3: Any, bucket: str, key: str) -> tuple[bytes, BaseException | None]:
    """All bytes the client receives, and the error that stopped it (None if it ended cleanly)."""
    got = b""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        while True:
            piece = body.read(8192)
            if not piece:
                break
            got += piece
    except (ClientError, BotoCoreError, OSError) as exc:
        return got, exc
    return got, None


def raw(stack: Stack, bucket: str, key: str) -> tuple[bytes, dict[str, str]]:
    obj = stack.backend().get_object(Bucket=bucket, Key=key)
    return obj["Body"].read(), obj["Metadata"]


def store(stack: Stack, bucket: str, key: str, body: bytes, meta: dict[str, str]) -> None:
    stack.backend().put_object(Bucket=bucket, Key=key, Body=body, Metadata=meta)


def assert_refused(stack: Stack, bucket: str, key: str, original: bytes, code: str = "ObjectIntegrityError") -> None:
    got, err = read_what_arrives(stack.client(), bucket, key)
    assert err is not None, "tampered object was served without error"
    if isinstance(err, ClientError):
        # Refused before the body: the S3 error says why (not a NoSuchKey, a 403 or a 503).
        assert err.response["Error"]["Code"] == code
    else:
        # Found inside the body, after the 200: the connection is cut, never ended cleanly.
        # (botocore 1.44 reports a body cut short as IncompleteReadError, earlier ones as a
        # ResponseStreamingError.)
        assert isinstance(err, (ResponseStreamingError, IncompleteReadError)), repr(err)
    # Whatever arrived before the failure is authentic plaintext, never altered bytes.
    assert got == original[: len(got)]
    assert len(got) < len(original) or not original


@pytest.fixture
def obj(stack: Stack, bucket: str) -> tuple[str, bytes]:
    data = os.urandom(4 * SEG + 123)
    stack.client().put_object(Bucket=bucket, Key="victim", Body=data)
    return "victim", data


def test_flipped_ciphertext_byte(stack: Stack, bucket: str, obj: tuple[str, bytes]) -> None:
    key, data = obj
    body, meta = raw(stack, bucket, key)
    for pos in (5, 2 * SEALED + 100, len(body) - 1):
        b = bytearray(body)
        b[pos] ^= 0x01
        store(stack, bucket, key, bytes(b), meta)
        assert_refused(stack, bucket, key, data)


def test_truncated_body(stack: Stack, bucket: str, obj: tuple[str, bytes]) -> None:
    key, data = obj
    body, meta = raw(stack, bucket, key)
    for cut in (len(body) - 1, 3 * SEALED, 2 * SEALED + 7):
        store(stack, bucket, key, body[:cut], meta)
        assert_refused(stack, bucket, key, data)


def test_dropped_segment(stack: Stack, bucket: str, obj: tuple[str, bytes]) -> None:
    key, data = obj
    body, meta = raw(stack, bucket, key)
    store(stack, bucket, key, body[:SEALED] + body[2 * SEALED :], meta)
    assert_refused(stack, bucket, key, data)


def test_reordered_segments(stack: Stack, bucket: str, obj: tuple[str, bytes]) -> None:
    key, data = obj
    body, meta = raw(stack, bucket, key)
    store(stack, bucket, key, body[SEALED : 2 * SEALED] + body[:SEALED] + body[2 * SEALED :], meta)
    assert_refused(stack, bucket, key, data)


def test_swapped_objects(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    a, b = os.urandom(SEG + 5), os.urandom(SEG + 5)
    s3.put_object(Bucket=bucket, Key="a", Body=a)
    s3.put_object(Bucket=bucket, Key="b", Body=b)
    body_a, meta_a = raw(stack, bucket, "a")
    body_b, meta_b = raw(stack, bucket, "b")
    # Bodies and metadata swapped together: the wrapped key is bound to the other name.
    store(stack, bucket, "a", body_b, meta_b)
    store(stack, bucket, "b", body_a, meta_a)
    assert_refused(stack, bucket, "a", a)
    assert_refused(stack, bucket, "b", b)
    # Bodies swapped alone: the data key does not open the other body.
    store(stack, bucket, "a", body_b, meta_a)
    assert_refused(stack, bucket, "a", a)


def test_edited_metadata(stack: Stack, bucket: str, obj: tuple[str, bytes]) -> None:
    key, data = obj
    body, meta = raw(stack, bucket, key)
    import base64

    for field in ("sg-dk", "sg-salt", "sg-cm", "sg-m"):
        edited = dict(meta)
        blob = bytearray(base64.b64decode(edited[field]))
        blob[len(blob) // 2] ^= 0x01
        edited[field] = base64.b64encode(bytes(blob)).decode()
        store(stack, bucket, key, body, edited)
        assert_refused(stack, bucket, key, data)
    for field, value in (("sg-seg", "4096"), ("sg-v", "7")):
        store(stack, bucket, key, body, {**meta, field: value})
        assert_refused(stack, bucket, key, data)
    # A key reference naming a key this keyring does not hold is a key that may not be used here.
    store(stack, bucket, key, body, {**meta, "sg-kr": "local:other:1"})
    assert_refused(stack, bucket, key, data, "AccessDenied")
    store(stack, bucket, key, body, {k: v for k, v in meta.items() if k != "sg-cm"})
    assert_refused(stack, bucket, key, data)
