"""Parts sent again (`SentPart`, `PartAttempt`): released only where they match what earlier
attempts may have sent, so no AES-CTR keystream of an s3ec-v3 upload is used for two plaintexts."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.crypto import s3ec_multipart
from proxy.crypto.s3ec_multipart import PartAttempt, PartMismatch, S3ecV3Multipart, SentPart

CHUNK = 64


@pytest.fixture(autouse=True)
def small_chunks() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(s3ec_multipart, "RESEND_CHUNK", CHUNK)
        yield


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def run(attempt: PartAttempt, data: bytes, size: int = 7) -> bytes:
    return b"".join(attempt.release(p) for p in pieces(data, size))


def test_a_first_attempt_is_recorded_and_released_at_once() -> None:
    sent = SentPart(200)
    attempt = sent.attempt(200)
    data = os.urandom(200)
    out = [attempt.release(p) for p in pieces(data, 30)]
    assert out == pieces(data, 30)  # nothing held back: there is nothing to match yet
    assert sent.recorded == 200 and attempt.held == 0


def test_an_identical_retry_comes_out_whole_chunk_by_chunk() -> None:
    data = os.urandom(3 * CHUNK + 5)
    sent = SentPart(len(data))
    run(sent.attempt(len(data)), data)
    retry = sent.attempt(len(data))
    assert retry.release(data[:10]) == b""  # held until its chunk is whole and checked
    assert retry.held == 10
    assert retry.release(data[10 : CHUNK + 1]) == data[:CHUNK]
    assert retry.release(data[CHUNK + 1 :]) == data[CHUNK:]
    assert sent.recorded == len(data)


def test_a_retry_with_other_bytes_is_refused_before_they_are_released() -> None:
    data = os.urandom(3 * CHUNK)
    sent = SentPart(len(data))
    run(sent.attempt(len(data)), data)
    other = bytearray(data)
    other[CHUNK + 3] ^= 1
    retry = sent.attempt(len(data))
    released = retry.release(bytes(other[: CHUNK + 10]))
    assert released == data[:CHUNK]
    with pytest.raises(PartMismatch, match=f"bytes {CHUNK} to {2 * CHUNK - 1}"):
        retry.release(bytes(other[CHUNK + 10 :]))
    assert sent.recorded == len(data)


def test_another_length_is_refused() -> None:
    sent = SentPart(100)
    with pytest.raises(PartMismatch, match="100 bytes, now with 99"):
        sent.attempt(99)


def test_a_failed_attempt_binds_only_what_it_may_have_sent() -> None:
    data = os.urandom(3 * CHUNK)
    sent = SentPart(len(data))
    first = sent.attempt(len(data))
    first.release(data[: CHUNK + 20])  # then the attempt failed
    assert sent.recorded == CHUNK + 20
    # The bytes after what left are free: their keystream was never used.
    second_data = data[: CHUNK + 20] + os.urandom(2 * CHUNK - 20)
    assert run(sent.attempt(len(data)), second_data) == second_data
    # ... and now bound in turn.
    with pytest.raises(PartMismatch):
        run(sent.attempt(len(data)), data)
    assert run(sent.attempt(len(data)), second_data) == second_data


def test_a_retry_differing_in_the_partly_sent_chunk_is_refused() -> None:
    data = os.urandom(2 * CHUNK)
    sent = SentPart(len(data))
    sent.attempt(len(data)).release(data[: CHUNK + 20])
    other = data[: CHUNK + 19] + bytes([data[CHUNK + 19] ^ 0x80]) + data[CHUNK + 20 :]
    retry = sent.attempt(len(data))
    with pytest.raises(PartMismatch):
        run(retry, other, size=CHUNK + 25)
    assert sent.recorded == CHUNK + 20


def test_a_shorter_retry_releases_nothing_unchecked() -> None:
    data = os.urandom(2 * CHUNK)
    sent = SentPart(len(data))
    run(sent.attempt(len(data)), data)
    retry = sent.attempt(len(data))
    assert run(retry, data[: CHUNK + 30]) == data[:CHUNK]
    assert retry.held == 30


def test_memoryviews_are_taken() -> None:
    data = os.urandom(CHUNK + 1)
    sent = SentPart(len(data))
    assert sent.attempt(len(data)).release(memoryview(data)) == data
    assert sent.attempt(len(data)).release(memoryview(data)) == data


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(0, 4 * CHUNK),
    attempts=st.lists(
        st.tuples(st.integers(0, 4 * CHUNK), st.integers(-1, 4 * CHUNK), st.integers(1, 2 * CHUNK)),
        min_size=1,
        max_size=5,
    ),
)
def test_no_offset_is_ever_encrypted_for_two_plaintexts(length: int, attempts: list[tuple[int, int, int]]) -> None:
    """Attempts that stop anywhere, differ anywhere (or nowhere), arrive in any pieces: every
    ciphertext byte released for an offset is the same, so no keystream byte serves two
    plaintext bytes, and the bytes that do come out are the attempt's own."""
    body = S3ecV3Multipart(bytes(32))
    base = os.urandom(length)
    sent = SentPart(length)
    seen: dict[int, int] = {}  # offset -> the ciphertext byte released there
    plain: dict[int, int] = {}  # offset -> the plaintext byte it was released for
    for stop, flip, size in attempts:
        data = bytearray(base)
        if 0 <= flip < length:
            data[flip] ^= 0xFF
        data = data[: min(stop, length)]
        attempt, enc = sent.attempt(length), body.part(body.start)
        released = b""
        agrees = all(plain.get(i, b) == b for i, b in enumerate(data))
        try:
            for piece in pieces(bytes(data), size):
                released += attempt.release(piece)
        except PartMismatch:
            assert not agrees  # refused only what differs from what left before
        assert released == bytes(data[: len(released)])
        for offset, byte in enumerate(enc.update(released)):
            assert seen.setdefault(offset, byte) == byte
        plain.update(enumerate(released))
        assert sent.recorded >= len(released)
