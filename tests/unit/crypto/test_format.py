"""The envelope format: length maths, segment sealing, and what tampering does."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.crypto.format import (
    DEFAULT_SEGMENT_SIZE,
    DIGEST_SLOT,
    LAYOUT_SINGLE,
    SALT_SIZE,
    SCOPE_BUCKET,
    SCOPE_OBJECT,
    TAG_SIZE,
    Envelope,
    FormatError,
    IntegrityError,
    Layout,
    SealedMetadata,
    commitment,
    open_metadata,
    seal_metadata,
    stream_key,
)
from proxy.crypto.segments import StreamDecryptor, StreamEncryptor, read_digest_slot

SEG = 4096
LAYOUT = Layout(SEG)
KEY = bytes(range(32))


def seal(data: bytes, pieces: list[int] | None = None, digest: bytes = b"\x00" * 16) -> bytes:
    enc = StreamEncryptor(KEY, SEG)
    out: list[bytes] = []
    pos = 0
    for n in pieces or [len(data)]:
        out += enc.feed(data[pos : pos + n])
        pos += n
    out += enc.feed(data[pos:])
    out += enc.finish(digest)
    return b"".join(out)


def open_range(ct: bytes, plain_len: int, start: int, end: int, feed: int = 1000) -> bytes:
    span = LAYOUT.span(start, end, plain_len)
    dec = StreamDecryptor(KEY, LAYOUT, span, plain_len)
    body = ct[span.ciphertext_start : span.ciphertext_end]
    out = b""
    for i in range(0, len(body), feed):
        out += b"".join(dec.feed(body[i : i + feed]))
    dec.finish()
    return out


@pytest.mark.parametrize("n", [0, 1, SEG - 17, SEG - 16, SEG - 15, SEG - 1, SEG, SEG + 1, 3 * SEG + 5])
def test_round_trip_and_length_is_pure_function(n: int) -> None:
    data = os.urandom(n)
    ct = seal(data)
    assert len(ct) == LAYOUT.ciphertext_length(n)
    assert LAYOUT.plaintext_length(len(ct)) == n
    if n:
        assert open_range(ct, n, 0, n) == data


@given(st.integers(0, 10 * SEG))
def test_length_inverse(n: int) -> None:
    c = LAYOUT.ciphertext_length(n)
    assert LAYOUT.plaintext_length(c) == n
    assert c == n + DIGEST_SLOT + TAG_SIZE * -(-(n + DIGEST_SLOT) // SEG)


def test_impossible_ciphertext_lengths_are_rejected() -> None:
    valid = {LAYOUT.ciphertext_length(n) for n in range(0, 3 * SEG)}
    for c in range(0, 3 * SEG):
        if c not in valid:
            with pytest.raises(FormatError):
                LAYOUT.plaintext_length(c)


@given(
    st.binary(min_size=1, max_size=3 * SEG + 100),
    st.lists(st.integers(1, 5000), max_size=8),
    st.data(),
)
def test_any_feed_split_and_any_range(data: bytes, pieces: list[int], draw: st.DataObject) -> None:
    ct = seal(data, pieces)
    start = draw.draw(st.integers(0, len(data) - 1))
    end = draw.draw(st.integers(start + 1, len(data)))
    feed = draw.draw(st.integers(1, 3 * SEG))
    assert open_range(ct, len(data), start, end, feed) == data[start:end]


def test_digest_slot_round_trip() -> None:
    for n in [0, 5, SEG - 16, SEG - 10, SEG]:
        data = os.urandom(n)
        digest = os.urandom(16)
        ct = seal(data, digest=digest)
        span = LAYOUT.span(n, n + 16, n)
        assert read_digest_slot(KEY, LAYOUT, n, ct[span.ciphertext_start : span.ciphertext_end]) == digest


def test_flipped_byte_fails() -> None:
    data = os.urandom(2 * SEG)
    ct = bytearray(seal(data))
    ct[SEG + 20] ^= 1
    with pytest.raises(IntegrityError):
        open_range(bytes(ct), len(data), 0, len(data))


def test_truncation_at_segment_boundary_fails() -> None:
    data = os.urandom(3 * SEG)
    ct = seal(data)
    # Dropping whole trailing segments yields a valid-looking shorter length; the last flag catches it.
    short = ct[: 2 * (SEG + TAG_SIZE)]
    plain = LAYOUT.plaintext_length(len(short))
    with pytest.raises(IntegrityError):
        open_range(short, plain, 0, plain)


def test_dropped_and_reordered_segments_fail() -> None:
    data = os.urandom(3 * SEG)
    ct = seal(data)
    s = SEG + TAG_SIZE
    segs = [ct[i : i + s] for i in range(0, len(ct), s)]
    swapped = segs[1] + segs[0] + b"".join(segs[2:])
    with pytest.raises(IntegrityError):
        open_range(swapped, len(data), 0, len(data))
    dropped = segs[0] + b"".join(segs[2:])
    plain = LAYOUT.plaintext_length(len(dropped))
    with pytest.raises(IntegrityError):
        open_range(dropped, plain, 0, plain)


def test_wrong_key_fails_and_commitment_differs() -> None:
    data = os.urandom(100)
    ct = seal(data)
    span = LAYOUT.span(0, 100, 100)
    dec = StreamDecryptor(bytes(32), LAYOUT, span, 100)
    with pytest.raises(IntegrityError):
        dec.feed(ct)
    salt = os.urandom(32)
    assert commitment(KEY, salt) != commitment(bytes(32), salt)


def test_extra_ciphertext_fails() -> None:
    data = os.urandom(100)
    ct = seal(data)
    span = LAYOUT.span(0, 100, 100)
    dec = StreamDecryptor(KEY, LAYOUT, span, 100)
    with pytest.raises(IntegrityError):
        dec.feed(ct + b"x")


def test_stream_keys_separate_streams() -> None:
    salt = os.urandom(32)
    assert stream_key(KEY, salt, 0) != stream_key(KEY, salt, 1)
    assert stream_key(KEY, salt, 1, b"a") != stream_key(KEY, salt, 1, b"b")


def test_new_envelope_commits_to_its_key_and_binds_a_bucket_scoped_name() -> None:
    meta = SealedMetadata(user={"colour": "blue"}, etag="tail")
    env = Envelope.new(KEY, "local:default:1", b"wrapped", meta, layout=LAYOUT_SINGLE)
    other = Envelope.new(KEY, "local:default:1", b"wrapped", meta, layout=LAYOUT_SINGLE)
    assert env.salt != other.salt and len(env.salt) == SALT_SIZE
    assert (env.segment_size, env.scope, env.name_tag) == (DEFAULT_SEGMENT_SIZE, SCOPE_OBJECT, b"")
    parsed = Envelope.from_metadata(env.to_metadata())
    assert parsed == env
    parsed.check_commitment(KEY)
    with pytest.raises(IntegrityError):
        parsed.check_commitment(bytes(32))
    assert open_metadata(KEY, env.salt, env.sealed) == meta
    shared = Envelope.new(KEY, "k", b"w", meta, layout=LAYOUT_SINGLE, scope=SCOPE_BUCKET, bucket="b", key="x")
    shared.check_name(KEY, "b", "x")
    with pytest.raises(IntegrityError):
        shared.check_name(KEY, "b", "y")


def test_envelope_metadata_round_trip_and_errors() -> None:
    salt = os.urandom(32)
    meta = SealedMetadata(user={"colour": "blue"}, etag="abc")
    env = Envelope("local:default:1", b"wrapped", salt, commitment(KEY, salt), SEG, seal_metadata(KEY, salt, meta))
    parsed = Envelope.from_metadata(env.to_metadata())
    assert parsed == env
    parsed.check_commitment(KEY)
    with pytest.raises(IntegrityError):
        parsed.check_commitment(bytes(32))
    assert open_metadata(KEY, salt, parsed.sealed) == meta
    tampered = bytearray(parsed.sealed)
    tampered[-1] ^= 1
    with pytest.raises(IntegrityError):
        open_metadata(KEY, salt, bytes(tampered))
    md = env.to_metadata()
    with pytest.raises(FormatError):
        Envelope.from_metadata({k: v for k, v in md.items() if k != "sg-dk"})
    with pytest.raises(FormatError):
        Envelope.from_metadata({**md, "sg-v": "9"})
    with pytest.raises(FormatError):
        Envelope.from_metadata({**md, "sg-seg": "1000"})
    with pytest.raises(FormatError):
        Envelope.from_metadata({**md, "sg-salt": "!!"})


def test_a_sealed_part_md5_opens_only_for_its_part_and_etag() -> None:
    """The MD5 in a part record is bound to the data key, salt, part number and backend ETag."""
    import os

    import pytest

    from proxy.crypto.format import IntegrityError, open_part_md5, seal_part_md5

    dk, salt, md5 = os.urandom(32), os.urandom(32), os.urandom(16)
    sealed = seal_part_md5(dk, salt, 3, "abc-1", md5)
    assert open_part_md5(dk, salt, 3, "abc-1", sealed) == md5
    assert md5.hex() not in sealed.hex()
    for args in ((dk, salt, 4, "abc-1"), (dk, salt, 3, "abc-2"), (os.urandom(32), salt, 3, "abc-1")):
        with pytest.raises(IntegrityError):
            open_part_md5(*args, sealed)
