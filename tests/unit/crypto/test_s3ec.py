"""The S3EC V3 multipart encryptor (CTR from an offset + GHASH folded per part) and the legacy
CBC helpers, against the single-stream encryptor and `cryptography` directly."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.crypto import s3ec, s3ec_keys, s3ec_multipart, s3ec_streams
from proxy.crypto.format import IntegrityError

DATA_KEY = bytes(range(32))
MESSAGE_ID = bytes(range(100, 128))


@settings(max_examples=60, deadline=None)
@given(
    parts=st.lists(st.binary(max_size=300), min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=300), min_size=6, max_size=6),
)
def test_parts_equal_one_stream(parts: list[bytes], cuts: list[int]) -> None:
    ref = s3ec_streams.S3ecV3Encryptor(DATA_KEY, message_id=MESSAGE_ID)
    expected = b"".join(ref.update(p) for p in parts) + ref.finish()
    body = s3ec_multipart.S3ecV3Multipart(DATA_KEY, message_id=MESSAGE_ID)
    state, out = body.start, b""
    for part, cut in zip(parts, cuts, strict=False):
        enc = body.part(state)
        out += enc.update(part[:cut]) + enc.update(part[cut:])
        state = enc.finish()
    assert out + body.tag(state) == expected
    assert body.commitment == ref.commitment


def test_a_part_sent_again_replaces_the_first_attempt() -> None:
    body = s3ec_multipart.S3ecV3Multipart(DATA_KEY)
    first = os.urandom(5000)
    enc = body.part(body.start)
    c1 = enc.update(first)
    before = enc.finish()
    abandoned = body.part(before)
    abandoned.update(os.urandom(77))  # a failed attempt: its state is never used
    enc = body.part(before)
    c2 = enc.update(b"the retry")
    tag = body.tag(enc.finish())
    materials = s3ec_keys.materials(
        s3ec.S3ecEnvelope(
            "v3", s3ec.WRAP_KMS_CONTEXT, b"x", {}, message_id=body.message_id, commitment=body.commitment
        ),
        DATA_KEY,
    )
    assert s3ec_streams.decrypt_body(materials, c1 + c2 + tag) == first + b"the retry"
    with pytest.raises(IntegrityError):
        s3ec_streams.decrypt_body(materials, c1 + c2[:-1] + bytes([c2[-1] ^ 1]) + tag)


def _cbc(key: bytes, iv: bytes, data: bytes) -> bytes:
    padder = padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return enc.update(padder.update(data) + padder.finalize()) + enc.finalize()


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1000])
def test_cbc_length_and_stream(size: int) -> None:
    iv, data = os.urandom(16), os.urandom(size)
    body = _cbc(DATA_KEY, iv, data)
    mats = s3ec.S3ecMaterials(version="v1", content_key=DATA_KEY, iv=iv, aad=b"")
    n = s3ec_streams.cbc_plaintext_length(mats, len(body), body[-32:])
    assert n == size
    dec = s3ec_streams.S3ecCbcDecryptor(mats, n)
    out = [p for i in range(0, len(body), 7) for p in dec.feed(body[i : i + 7])]
    assert b"".join(out + dec.finish()) == data


def test_legacy_detection() -> None:
    v1 = {"x-amz-key": "a2V5", "x-amz-iv": "aXY=", "x-amz-matdesc": "{}", "x-amz-wrap-alg": "kms"}
    assert s3ec.detect(v1) == s3ec.FORMAT_V1 and s3ec.is_legacy(v1)
    with pytest.raises(s3ec.S3ecUnsupported):
        s3ec.parse(v1)  # the GCM path never opens CBC objects
    with pytest.raises(s3ec.S3ecUnsupported):
        s3ec.parse_legacy({k: v for k, v in v1.items() if k != "x-amz-wrap-alg"})  # client-side master key
