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


# -- name binding -------------------------------------------------------------------------------


def _v3_materials(message_id: bytes, data_key: bytes = DATA_KEY) -> s3ec.S3ecMaterials:
    enc = s3ec_streams.S3ecV3Encryptor(data_key, message_id=message_id)
    meta = enc.metadata(b"wrapped", s3ec.WRAP_AES_GCM)
    return s3ec_keys.materials(s3ec.parse(meta), data_key)


def test_context_key_leaves_plain_keys_and_encodes_the_rest() -> None:
    assert s3ec.context_key("a/b-c_d.e~f(1)+x=y") == "a/b-c_d.e~f(1)+x=y"
    assert s3ec.context_key("100% é z") == "100%25%20%C3%A9%20z"
    assert s3ec.context_key("tab\there").isascii()


def test_context_name_reads_the_bound_name_and_refuses_half_of_one() -> None:
    enc = s3ec_streams.S3ecV3Encryptor(DATA_KEY)
    ctx = s3ec.kms_context(s3ec.name_context("bkt", "dir/é"))
    assert ctx == {"sealgate:bucket": "bkt", "sealgate:key": "dir/%C3%A9", "aws:x-amz-cek-alg": "115"}
    assert s3ec.context_name(enc.metadata(b"w", s3ec.WRAP_KMS_CONTEXT, encryption_context=ctx)) == ("bkt", "dir/%C3%A9")
    foreign = s3ec.kms_context({"project": "x"})
    assert s3ec.context_name(enc.metadata(b"w", s3ec.WRAP_KMS_CONTEXT, encryption_context=foreign)) is None
    half = s3ec.kms_context({"sealgate:bucket": "bkt"})
    with pytest.raises(s3ec.S3ecFormatError):
        s3ec.context_name(enc.metadata(b"w", s3ec.WRAP_KMS_CONTEXT, encryption_context=half))
    assert s3ec.context_name(enc.metadata(b"w", s3ec.WRAP_AES_GCM)) is None


@settings(max_examples=40, deadline=None)
@given(bucket=st.from_regex(r"[a-z0-9][a-z0-9.-]{2,20}", fullmatch=True), key=st.text(min_size=1, max_size=40))
def test_bound_message_id_binds_exactly_its_name(bucket: str, key: str) -> None:
    mid = s3ec_keys.bound_message_id(DATA_KEY, bucket, key)
    assert len(mid) == s3ec.MESSAGE_ID_SIZE
    materials = _v3_materials(mid)
    assert s3ec_keys.name_binding(materials, bucket, key) is True
    assert s3ec_keys.name_binding(materials, bucket, key + "x") is False
    assert s3ec_keys.name_binding(materials, bucket + "x", key) is False
    # Another data key (the binding needs the data key to be made or checked).
    assert s3ec_keys.name_binding(_v3_materials(mid, bytes(32)), bucket, key) is None


def test_a_random_message_id_binds_no_name() -> None:
    assert s3ec_keys.name_binding(_v3_materials(os.urandom(28)), "bkt", "k") is None


def test_the_message_id_cannot_change_without_the_commitment_failing() -> None:
    enc = s3ec_streams.S3ecV3Encryptor(DATA_KEY, message_id=s3ec_keys.bound_message_id(DATA_KEY, "a", "k"))
    meta = enc.metadata(b"wrapped", s3ec.WRAP_AES_GCM)
    meta[s3ec.META_V3_MESSAGE_ID] = s3ec_streams.S3ecV3Encryptor(
        DATA_KEY, message_id=s3ec_keys.bound_message_id(DATA_KEY, "b", "k")
    ).metadata(b"wrapped", s3ec.WRAP_AES_GCM)[s3ec.META_V3_MESSAGE_ID]
    with pytest.raises(IntegrityError):
        s3ec_keys.materials(s3ec.parse(meta), DATA_KEY)
