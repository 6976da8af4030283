"""Segment encryption and decryption of one stream: pure objects, bytes in and bytes out.

Both sides take input in pieces of any size and cut exact segments themselves; pieces that
hold whole segments are sealed straight from memoryview slices without copying.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from proxy.crypto.format import (
    DIGEST_SLOT,
    MAX_SEGMENTS,
    TAG_SIZE,
    IntegrityError,
    Layout,
    SegmentSpan,
    segment_nonce,
)

Buffer = bytes | bytearray | memoryview


class StreamEncryptor:
    """Seals a stream: `feed` plaintext as it arrives, then `finish` with the digest slot."""

    def __init__(self, key: bytes, segment_size: int) -> None:
        self._aead = AESGCM(key)
        self._size = segment_size
        self._buf = bytearray()
        self._index = 0
        self.plaintext_bytes = 0
        self._finished = False

    def _seal(self, data: Buffer, last: bool) -> bytes:
        if self._index >= MAX_SEGMENTS:
            raise ValueError("stream too long for 32-bit segment indexes")
        out = self._aead.encrypt(segment_nonce(self._index, last), data, None)
        self._index += 1
        return out

    def feed(self, data: Buffer) -> list[bytes]:
        """Sealed segments completed by `data`. A full segment of data is never the last one:
        the digest slot always follows it."""
        if self._finished:
            raise ValueError("stream already finished")
        self.plaintext_bytes += len(data)
        view = memoryview(data)
        out: list[bytes] = []
        size = self._size
        if self._buf:
            need = size - len(self._buf)
            if len(view) < need:
                self._buf += view
                return out
            self._buf += view[:need]
            out.append(self._seal(self._buf, last=False))
            self._buf.clear()
            view = view[need:]
        while len(view) >= size:
            out.append(self._seal(view[:size], last=False))
            view = view[size:]
        if view:
            self._buf += view
        return out

    def finish(self, digest: bytes = b"\x00" * DIGEST_SLOT) -> list[bytes]:
        """The final segment(s): buffered data, then the 16-byte digest slot."""
        if len(digest) != DIGEST_SLOT:
            raise ValueError("digest slot is 16 bytes")
        self._finished = True
        tail = bytes(self._buf) + digest
        self._buf.clear()
        if len(tail) > self._size:
            return [self._seal(tail[: self._size], False), self._seal(tail[self._size :], True)]
        return [self._seal(tail, True)]


class StreamDecryptor:
    """Opens the segments of `span` (from `Layout.span`) and releases only authenticated bytes.

    `feed` returns plaintext as whole segments authenticate; `finish` raises IntegrityError
    when the ciphertext ended early. Extra ciphertext beyond the span is an IntegrityError too.
    """

    def __init__(self, key: bytes, layout: Layout, span: SegmentSpan, plaintext_length: int) -> None:
        self._aead = AESGCM(key)
        self._layout = layout
        self._span = span
        self._length = plaintext_length
        self._index = span.first
        self._skip = span.skip
        self._remaining = span.length
        self._buf = bytearray()
        self._expect = self._sealed_size(self._index)

    def _sealed_size(self, index: int) -> int:
        if index > self._span.last:
            return 0
        return self._layout.segment_plain_length(index, self._length) + TAG_SIZE

    @property
    def done(self) -> bool:
        """All segments of the span arrived and authenticated."""
        return self._index > self._span.last

    def _open(self, sealed: Buffer) -> bytes:
        last = self._index == self._span.final_index
        try:
            plain = self._aead.decrypt(segment_nonce(self._index, last), sealed, None)
        except InvalidTag as exc:
            raise IntegrityError(f"segment {self._index} failed authentication") from exc
        self._index += 1
        self._expect = self._sealed_size(self._index)
        if self._skip or len(plain) > self._remaining:
            plain = plain[self._skip : self._skip + self._remaining]
            self._skip = 0
        self._remaining -= len(plain)
        return plain

    def feed(self, data: Buffer) -> list[bytes]:
        """Plaintext released by the segments that `data` completes."""
        view = memoryview(data)
        out: list[bytes] = []
        if self._buf:
            need = self._expect - len(self._buf)
            if len(view) < need:
                self._buf += view
                return out
            self._buf += view[:need]
            view = view[need:]
            piece = self._open(self._buf)
            self._buf = bytearray()
            if piece:
                out.append(piece)
        while view:
            if self._expect == 0:
                raise IntegrityError("more ciphertext than the object's length allows")
            if len(view) < self._expect:
                self._buf += view
                break
            size = self._expect
            piece = self._open(view[:size])
            view = view[size:]
            if piece:
                out.append(piece)
        return out

    def finish(self) -> None:
        """IntegrityError unless every segment of the span arrived."""
        if not self.done or self._buf:
            raise IntegrityError("ciphertext ended before the last segment")


def read_digest_slot(key: bytes, layout: Layout, plaintext_length: int, ciphertext_tail: bytes) -> bytes:
    """The 16-byte digest slot, from the backend bytes of the segments that hold it."""
    span = layout.span(plaintext_length, plaintext_length + DIGEST_SLOT, plaintext_length)
    if len(ciphertext_tail) != span.ciphertext_end - span.ciphertext_start:
        raise IntegrityError("digest slot segments have the wrong length")
    dec = StreamDecryptor(key, layout, span, plaintext_length)
    slot = b"".join(dec.feed(ciphertext_tail))
    dec.finish()
    return slot
