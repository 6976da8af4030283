"""Decode ``Content-Encoding: aws-chunked`` request bodies: pure, fed in pieces of any size.

Wire form::

    <hex size>[;chunk-signature=<sig>]\\r\\n <data> \\r\\n   … repeated …
    0[;chunk-signature=<sig>]\\r\\n
    <trailer name>:<value>\\r\\n …   (then an empty line; some clients omit it)

Payload bytes are released as they arrive, as memoryview slices of the input where possible.
Checks that need the whole body (length, trailing checksums, the last chunk signatures) run in
`finish`; the caller must not commit anything before `finish` returns (sealgate holds back the
final ciphertext segment, so a failed check leaves nothing stored).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from proxy.s3.checksums import Checksum, b64, new_checksum
from proxy.s3.errors import S3Error
from proxy.s3.sigv4 import ChunkSignatureVerifier

_HEADER, _DATA, _DATA_CRLF, _TRAILER, _DONE = range(5)
_MAX_TRAILER = 16 * 1024


def _incomplete(message: str) -> S3Error:
    return S3Error("IncompleteBody", message, 400)


def _malformed(message: str) -> S3Error:
    return S3Error("InvalidRequest", f"Malformed aws-chunked body: {message}", 400)


class AwsChunkedDecoder:
    """Incremental aws-chunked decoder that verifies length, checksums and chunk signatures."""

    def __init__(
        self,
        *,
        decoded_length: int | None,
        trailer_names: Sequence[str] = (),
        signer: ChunkSignatureVerifier | None = None,
        max_chunk_header: int = 4096,
    ) -> None:
        self._expected_length = decoded_length
        self._trailer_names = [t.lower() for t in trailer_names]
        self._signer = signer
        self._max_header = max_chunk_header
        self._state = _HEADER
        self._line = bytearray()
        self._remaining = 0
        self._chunk_sig: str | None = None
        self._chunk_hash = hashlib.sha256() if signer else None
        self._decoded = 0
        self._trailers: dict[str, str] = {}
        self._trailer_text = ""
        self._trailer_sig: str | None = None
        self._checksums: dict[str, Checksum] = {}
        for name in self._trailer_names:
            if name.startswith("x-amz-checksum-"):
                self._checksums[name] = new_checksum(name[len("x-amz-checksum-") :])

    @property
    def done(self) -> bool:
        """The terminating empty line has been read."""
        return self._state == _DONE

    def _take_line(self, view: memoryview, limit: int) -> tuple[bytes | None, memoryview]:
        """A CRLF-terminated line (without CRLF) if complete, and the rest of the input."""
        data = bytes(view[: limit + 2 - len(self._line)]) if len(self._line) < limit + 2 else b""
        joined = bytes(self._line) + data
        idx = joined.find(b"\r\n")
        if idx < 0:
            if len(joined) > limit:
                raise _malformed("line too long")
            self._line += view
            return None, view[len(view) :]
        consumed = idx + 2 - len(self._line)
        line = joined[:idx]
        self._line.clear()
        return line, view[consumed:]

    def _start_chunk(self, line: bytes) -> None:
        size_text, _, ext = line.partition(b";")
        try:
            size = int(size_text.strip(), 16) if size_text.strip() else -1
        except ValueError:
            size = -1
        if size < 0 or len(size_text) > 16:
            raise _malformed("bad chunk size")
        sig = None
        if ext:
            name, _, value = ext.partition(b"=")
            if name.strip() == b"chunk-signature":
                sig = value.strip().decode("ascii", "replace")
        if self._signer is not None and sig is None:
            raise S3Error("SignatureDoesNotMatch", "A chunk signature is missing.", 403)
        self._chunk_sig = sig
        if size == 0:
            self._finish_chunk()
            self._state = _TRAILER
        else:
            self._remaining = size
            self._state = _DATA

    def _finish_chunk(self) -> None:
        if self._signer is not None and self._chunk_hash is not None:
            assert self._chunk_sig is not None
            self._signer.chunk(self._chunk_sig, self._chunk_hash.hexdigest())
            self._chunk_hash = hashlib.sha256()

    def _trailer_line(self, line: bytes) -> None:
        if not line:
            self._state = _DONE
            return
        text = line.decode("utf-8", "replace")
        name, sep, value = text.partition(":")
        if not sep:
            raise _malformed("bad trailer line")
        name = name.strip().lower()
        if name == "x-amz-trailer-signature":
            self._trailer_sig = value.strip()
            return
        self._trailers[name] = value.strip()
        self._trailer_text += f"{name}:{value.strip()}\n"
        if len(self._trailer_text) > _MAX_TRAILER:
            raise _malformed("trailers too large")

    def feed(self, data: bytes | bytearray | memoryview) -> list[memoryview]:
        """Payload pieces decoded from `data`."""
        view = memoryview(data)
        out: list[memoryview] = []
        while view:
            if self._state == _HEADER:
                line, view = self._take_line(view, self._max_header)
                if line is None:
                    break
                self._start_chunk(line)
            elif self._state == _DATA:
                piece = view[: self._remaining]
                view = view[len(piece) :]
                self._remaining -= len(piece)
                self._decoded += len(piece)
                if self._expected_length is not None and self._decoded > self._expected_length:
                    raise _incomplete("The body is longer than X-Amz-Decoded-Content-Length.")
                for c in self._checksums.values():
                    c.update(piece)
                if self._chunk_hash is not None:
                    self._chunk_hash.update(piece)
                out.append(piece)
                if self._remaining == 0:
                    self._state = _DATA_CRLF
            elif self._state == _DATA_CRLF:
                need = 2 - len(self._line)
                self._line += view[:need]
                view = view[need:]
                if len(self._line) == 2:
                    if bytes(self._line) != b"\r\n":
                        raise _malformed("chunk data not followed by CRLF")
                    self._line.clear()
                    self._finish_chunk()
                    self._state = _HEADER
            elif self._state == _TRAILER:
                line, view = self._take_line(view, _MAX_TRAILER)
                if line is None:
                    break
                self._trailer_line(line)
            else:
                raise _malformed("data after the end of the aws-chunked body")
        return out

    def finish(self) -> dict[str, str]:
        """Check the whole body; returns the trailers (name -> value)."""
        if self._state == _TRAILER and not self._line:
            self._state = _DONE  # the final blank line is optional
        if self._state != _DONE:
            raise _incomplete("The aws-chunked body ended early.")
        if self._expected_length is not None and self._decoded != self._expected_length:
            raise _incomplete("The body is shorter than X-Amz-Decoded-Content-Length.")
        for name in self._trailer_names:
            if name not in self._trailers:
                raise S3Error("InvalidRequest", f"The trailer {name} named in x-amz-trailer is missing.", 400)
        if self._signer is not None and self._trailer_names:
            if self._trailer_sig is None:
                raise S3Error("SignatureDoesNotMatch", "The trailer signature is missing.", 403)
            self._signer.trailer(self._trailer_sig, self._trailer_text)
        for name, checksum in self._checksums.items():
            if b64(checksum) != self._trailers[name]:
                alg = name[len("x-amz-checksum-") :].upper()
                raise S3Error("BadDigest", f"The {alg} you specified did not match the calculated checksum.", 400)
        return dict(self._trailers)
