"""aws-chunked decoding: botocore's own encoder (what boto3 sends) as the producer."""

from __future__ import annotations

import hashlib
import hmac
import io
import os

import pytest
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum, CrtCrc32cChecksum, Sha256Checksum
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.s3.chunked import AwsChunkedDecoder
from proxy.s3.errors import S3Error
from proxy.s3.sigv4 import ChunkSignatureVerifier, VerifiedRequest, signing_key


def boto_body(
    data: bytes, cls: type = Crc32Checksum, name: str = "x-amz-checksum-crc32", chunk: int = 1024 * 1024
) -> bytes:
    return AwsChunkedWrapper(io.BytesIO(data), checksum_cls=cls, checksum_name=name, chunk_size=chunk).read()


def decode(
    wire: bytes,
    length: int,
    splits: list[int] | None = None,
    trailers: tuple[str, ...] = ("x-amz-checksum-crc32",),
    signer: ChunkSignatureVerifier | None = None,
) -> tuple[bytes, dict[str, str]]:
    dec = AwsChunkedDecoder(decoded_length=length, trailer_names=trailers, signer=signer)
    out = b""
    pos = 0
    for n in splits or []:
        out += b"".join(bytes(p) for p in dec.feed(wire[pos : pos + n]))
        pos += n
    out += b"".join(bytes(p) for p in dec.feed(wire[pos:]))
    return out, dec.finish()


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 3 * 1024 * 1024 + 3])
def test_boto3_bodies(size: int) -> None:
    data = os.urandom(size)
    out, trailers = decode(boto_body(data), size)
    assert out == data
    assert "x-amz-checksum-crc32" in trailers


def test_other_checksums() -> None:
    data = os.urandom(5000)
    assert (
        decode(boto_body(data, CrtCrc32cChecksum, "x-amz-checksum-crc32c"), 5000, trailers=("x-amz-checksum-crc32c",))[
            0
        ]
        == data
    )
    assert (
        decode(boto_body(data, Sha256Checksum, "x-amz-checksum-sha256"), 5000, trailers=("x-amz-checksum-sha256",))[0]
        == data
    )


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=20000), st.lists(st.integers(1, 3000), max_size=12), st.integers(1, 5000))
def test_any_split(data: bytes, splits: list[int], chunk: int) -> None:
    assert decode(boto_body(data, chunk=chunk), len(data), splits)[0] == data


def test_missing_final_blank_line_is_tolerated() -> None:
    data = b"hello"
    wire = boto_body(data)
    assert wire.endswith(b"\r\n\r\n")
    assert decode(wire[:-2], 5)[0] == data


@pytest.mark.parametrize(
    "mutate,code",
    [
        (lambda w: w.replace(b"x-amz-checksum-crc32:", b"x-amz-checksum-crc32:AAAA"), "BadDigest"),
        (lambda w: w[:-30], "IncompleteBody"),
        (lambda w: b"zz\r\n" + w, "InvalidRequest"),
        (lambda w: w.replace(b"\r\n0\r\n", b"XX0\r\n"), "InvalidRequest"),
        (lambda w: w + b"extra", "InvalidRequest"),
        (lambda w: w.split(b"\r\n0\r\n")[0] + b"\r\n0\r\n\r\n", "InvalidRequest"),
    ],
    ids=["bad-crc", "truncated", "bad-size", "no-crlf", "trailing-junk", "missing-trailer"],
)
def test_malformed(mutate, code: str) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(3000)
    with pytest.raises(S3Error) as err:
        decode(mutate(boto_body(data)), 3000)
    assert err.value.code == code


def test_length_mismatch() -> None:
    with pytest.raises(S3Error) as err:
        decode(boto_body(b"abc"), 4)
    assert err.value.code == "IncompleteBody"
    with pytest.raises(S3Error) as err:
        decode(boto_body(b"abcde"), 4)
    assert err.value.code == "IncompleteBody"


def test_oversized_chunk_header() -> None:
    with pytest.raises(S3Error) as err:
        AwsChunkedDecoder(decoded_length=1).feed(b"1" * 10000)
    assert (err.value.code, err.value.status) == ("InvalidRequest", 400)


#: What the decoder may answer a bad body with: its own 4xx errors, never a 5xx.
REFUSALS = {
    ("IncompleteBody", 400),
    ("InvalidRequest", 400),
    ("BadDigest", 400),
    ("InvalidArgument", 400),
    ("SignatureDoesNotMatch", 403),
}


def decoded_or_refused(wire: bytes, length: int) -> bytes | None:
    """The payload, or None when the decoder refused the body with one of its S3 errors."""
    dec = AwsChunkedDecoder(decoded_length=length, trailer_names=["x-amz-checksum-crc32"])
    try:
        out = b"".join(bytes(p) for p in dec.feed(wire))
        dec.finish()
    except S3Error as err:  # refusing is one of the two allowed outcomes; both are checked
        assert (err.code, err.status) in REFUSALS, err
        return None
    return out


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.integers(0, 100))
def test_garbage_never_crashes(junk: bytes, length: int) -> None:
    out = decoded_or_refused(junk, length)
    # Accepted only as a whole body of the declared length (its CRC32 trailer checked).
    assert out is None or len(out) == length


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=3000),
    chunk=st.sampled_from([1, 7, 100, 1024]),
    where=st.integers(min_value=0),
    flip=st.integers(1, 255),
)
def test_a_changed_byte_never_decodes_to_other_bytes(data: bytes, chunk: int, where: int, flip: int) -> None:
    """One byte of a boto3 body changed anywhere: refused, or (hex case, header name case) the
    same payload; never other bytes."""
    wire = bytearray(boto_body(data, chunk=chunk))
    wire[where % len(wire)] ^= flip
    assert decoded_or_refused(bytes(wire), len(data)) in (None, data)


# Signed chunks (STREAMING-AWS4-HMAC-SHA256-PAYLOAD), built per the AWS specification.
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DATE = "20130524T000000Z"
SCOPE = "20130524/us-east-1/s3/aws4_request"
SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"


def _verified() -> VerifiedRequest:
    return VerifiedRequest(
        "t",
        "AKIDEXAMPLE",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        DATE,
        SCOPE,
        signing_key(SECRET, "20130524", "us-east-1", "s3"),
        SEED,
        False,
    )


def signed_stream(chunks: list[bytes]) -> bytes:
    key = signing_key(SECRET, "20130524", "us-east-1", "s3")
    prev = SEED
    out = b""
    for c in [*chunks, b""]:
        sts = "\n".join(
            [
                "AWS4-HMAC-SHA256-PAYLOAD",
                DATE,
                SCOPE,
                prev,
                hashlib.sha256(b"").hexdigest(),
                hashlib.sha256(c).hexdigest(),
            ]
        )
        prev = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
        out += f"{len(c):x};chunk-signature={prev}\r\n".encode() + c + b"\r\n"
    return out


def test_signed_chunks() -> None:
    chunks = [os.urandom(65536), os.urandom(1024)]
    wire = signed_stream(chunks)
    out, _ = decode(wire, 66560, [100, 70000], trailers=(), signer=ChunkSignatureVerifier(_verified()))
    assert out == b"".join(chunks)


def test_signed_chunk_tampered() -> None:
    wire = bytearray(signed_stream([b"a" * 100, b"b" * 10]))
    wire[wire.index(b"a") + 5] = ord("X")
    with pytest.raises(S3Error) as err:
        decode(bytes(wire), 110, trailers=(), signer=ChunkSignatureVerifier(_verified()))
    assert err.value.code == "SignatureDoesNotMatch"


def test_signed_chunks_reordered() -> None:
    a = signed_stream([b"a" * 10, b"b" * 10])
    first = a.index(b"\r\n", a.index(b"a" * 10)) + 2
    second_end = a.index(b"\r\n", a.index(b"b" * 10)) + 2
    swapped = a[first:second_end] + a[:first] + a[second_end:]
    with pytest.raises(S3Error) as err:
        decode(swapped, 20, trailers=(), signer=ChunkSignatureVerifier(_verified()))
    assert (err.value.code, err.value.status) == ("SignatureDoesNotMatch", 403)


def test_missing_signature_when_required() -> None:
    with pytest.raises(S3Error) as err:
        decode(boto_body(b"abc"), 3, signer=ChunkSignatureVerifier(_verified()))
    assert (err.value.code, err.value.status, err.value.message) == (
        "SignatureDoesNotMatch",
        403,
        "A chunk signature is missing.",
    )


def test_signed_chunks_with_signed_trailer() -> None:
    import base64
    import zlib

    chunks = [os.urandom(3000)]
    body = signed_stream(chunks)[:-2]  # the final chunk's header line; trailers follow it
    key = signing_key(SECRET, "20130524", "us-east-1", "s3")
    last_sig = body.rsplit(b"chunk-signature=", 1)[1].split(b"\r\n", 1)[0].decode()
    crc = base64.b64encode(zlib.crc32(chunks[0]).to_bytes(4, "big")).decode()
    trailer_text = f"x-amz-checksum-crc32:{crc}\n"
    sts = "\n".join(
        ["AWS4-HMAC-SHA256-TRAILER", DATE, SCOPE, last_sig, hashlib.sha256(trailer_text.encode()).hexdigest()]
    )
    tsig = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
    good = body + f"x-amz-checksum-crc32:{crc}\r\nx-amz-trailer-signature:{tsig}\r\n\r\n".encode()
    signer = ChunkSignatureVerifier(_verified())
    out, trailers = decode(good, 3000, trailers=("x-amz-checksum-crc32",), signer=signer)
    assert out == chunks[0] and trailers["x-amz-checksum-crc32"] == crc
    bad = good.replace(tsig.encode(), ("0" * 64).encode())
    with pytest.raises(S3Error) as err:
        decode(bad, 3000, trailers=("x-amz-checksum-crc32",), signer=ChunkSignatureVerifier(_verified()))
    assert err.value.code == "SignatureDoesNotMatch"
