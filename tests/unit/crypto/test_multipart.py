"""Multipart layout: parts with headers, any range across part boundaries, tampering caught."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.crypto.format import (
    IntegrityError,
    Layout,
    Manifest,
    ManifestPart,
    PartHeader,
    part_ciphertext_length,
    part_key,
    part_plaintext_length,
)
from proxy.crypto.multipart import MultipartDecryptor, stored_length
from proxy.crypto.segments import StreamEncryptor

SEG = 4096
LAYOUT = Layout(SEG)
DK = bytes(range(32))
SALT = bytes(32)


def seal_part(number: int, data: bytes, md5: bool) -> bytes:
    header = PartHeader(number, len(data), os.urandom(16)).pack()
    enc = StreamEncryptor(part_key(DK, SALT, header), SEG)
    digest = hashlib.md5(data).digest() if md5 else bytes(16)
    return header + b"".join(enc.feed(data)) + b"".join(enc.finish(digest))


def build(sizes: list[int], numbers: list[int] | None = None, md5: bool = True) -> tuple[bytes, bytes, Manifest]:
    numbers = numbers or list(range(1, len(sizes) + 1))
    datas = [os.urandom(n) for n in sizes]
    body = b"".join(seal_part(num, d, md5) for num, d in zip(numbers, datas, strict=True))
    parts = tuple(
        ManifestPart(num, len(d), hashlib.md5(d).hexdigest(), md5) for num, d in zip(numbers, datas, strict=True)
    )
    return b"".join(datas), body, Manifest(parts, "backend-etag", "final-etag")


def read(body: bytes, manifest: Manifest, start: int, end: int, full: bool = False, feed: int = 777) -> bytes:
    dec = MultipartDecryptor(DK, SALT, LAYOUT, manifest, start, end, full=full)
    if dec.header_range:
        a, b = dec.header_range
        dec.set_first_header(body[a:b])
    a, b = dec.fetch_range
    chunk = body[a:b]
    out = b""
    for i in range(0, len(chunk), feed):
        out += b"".join(dec.feed(chunk[i : i + feed]))
    dec.finish()
    return out


def test_lengths() -> None:
    for n in (0, 1, SEG, 5 * SEG + 3):
        assert part_plaintext_length(LAYOUT, part_ciphertext_length(LAYOUT, n)) == n


def test_full_read() -> None:
    plain, body, m = build([3 * SEG + 5, 2 * SEG, 1])
    assert stored_length(m, LAYOUT) == len(body)
    assert read(body, m, 0, len(plain), full=True) == plain
    assert m.size == len(plain)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 3 * SEG), min_size=1, max_size=4), st.data())
def test_any_range(sizes: list[int], draw: st.DataObject) -> None:
    plain, body, m = build(
        sizes, numbers=sorted(draw.draw(st.sets(st.integers(1, 10000), min_size=len(sizes), max_size=len(sizes))))
    )
    a = draw.draw(st.integers(0, len(plain) - 1))
    b = draw.draw(st.integers(a + 1, len(plain)))
    assert read(body, m, a, b, feed=draw.draw(st.integers(1, 5000))) == plain[a:b]


def test_swapped_parts_fail() -> None:
    plain, body, m = build([SEG, SEG])
    half = len(body) // 2
    with pytest.raises(IntegrityError):
        read(body[half:] + body[:half], m, 0, len(plain), full=True)


def test_part_from_other_position_fails() -> None:
    # Part 1's ciphertext where part 2 should be: the header names the wrong number.
    plain, body, m = build([SEG, SEG])
    half = len(body) // 2
    with pytest.raises(IntegrityError):
        read(body[:half] + body[:half], m, 0, len(plain), full=True)


def test_stale_attempt_fails_full_read() -> None:
    plain, body, m = build([SEG, SEG])
    other = seal_part(2, os.urandom(SEG), True)
    half = len(body) // 2
    with pytest.raises(IntegrityError):
        read(body[:half] + other, m, 0, len(plain), full=True)


def test_flipped_byte_in_header_fails() -> None:
    plain, body, m = build([SEG, SEG])
    b = bytearray(body)
    b[len(body) // 2 + 30] ^= 1  # the second part's header salt
    with pytest.raises(IntegrityError):
        read(bytes(b), m, 0, len(plain), full=True)


def test_manifest_seal() -> None:
    _, _, m = build([10, 20])
    sealed = m.seal(DK, SALT)
    assert Manifest.open(DK, SALT, sealed) == m
    with pytest.raises(IntegrityError):
        Manifest.open(bytes(32), SALT, sealed)


@pytest.mark.parametrize("size", [SEG, 2 * SEG, SEG - 16, SEG - 10, SEG - 17])
def test_range_across_parts_at_awkward_sizes(size: int) -> None:
    # Sizes where the digest slot fills or spills into a segment of its own.
    plain, body, m = build([size, size, 7])
    for a, b in [(size - 3, size + 3), (1, 2 * size + 7), (size - 1, size)]:
        assert read(body, m, a, b) == plain[a:b], (size, a, b)
