"""multipart/form-data as a POST Object sends it, parsed incrementally: pure, no I/O.

`FormParser` takes the body in pieces of any size and returns events: a part's start (its
name, file name and Content-Type, and where its data begins in the body), pieces of its data,
its end, and the end of the form. It holds back only what could be the start of the next
delimiter, so a file part streams through in bounded memory, and it knows the exact body offset
of every part's data: the server needs it to work out a file's length from the request's
Content-Length before the file has arrived (the backend and the envelope need the length first).
"""

from __future__ import annotations

import email.message
from dataclasses import dataclass

from proxy.s3.errors import S3Error

#: Bytes a part's header block may take (S3's whole pre-file limit is 20 KiB).
MAX_PART_HEADERS = 8 * 1024


@dataclass(frozen=True)
class PartStart:
    """A part begins: its form field name, file name (None for a plain field) and type."""

    name: str
    filename: str | None
    content_type: str | None
    #: Offset in the body of the part's first data byte.
    offset: int


@dataclass(frozen=True)
class PartData:
    """A piece of the current part's data."""

    data: bytes


@dataclass(frozen=True)
class PartEnd:
    """The current part has ended (its delimiter arrived)."""


@dataclass(frozen=True)
class FormEnd:
    """The closing delimiter arrived; whatever follows (the epilogue) is ignored."""


Event = PartStart | PartData | PartEnd | FormEnd


def malformed(detail: str = "") -> S3Error:
    """S3's answer to a body that is not multipart/form-data."""
    message = "The body of your POST request is not well-formed multipart/form-data."
    return S3Error("MalformedPOSTRequest", message + (f" ({detail})" if detail else ""), 400)


def boundary_of(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type; MalformedPOSTRequest without one."""
    msg = email.message.Message()
    msg["Content-Type"] = content_type
    if msg.get_content_type() != "multipart/form-data":
        raise malformed("not multipart/form-data")
    boundary = msg.get_param("boundary")
    if not isinstance(boundary, str) or not 1 <= len(boundary) <= 70:
        raise malformed("no usable boundary")
    try:
        return boundary.encode("ascii")
    except UnicodeEncodeError:
        raise malformed("no usable boundary") from None


def _part_start(block: bytes, offset: int) -> PartStart:
    """The part a header block describes (only form-data parts with a name are taken)."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        raise malformed("part headers are not UTF-8") from None
    msg = email.message.Message()
    for line in text.split("\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or name != name.strip():
            raise malformed("bad part header line")
        msg[name] = value.strip()
    if msg.get("Content-Disposition") is None or msg.get_content_disposition() != "form-data":
        raise malformed("a part without Content-Disposition: form-data")
    field = msg.get_param("name", header="Content-Disposition")
    if not isinstance(field, str) or not field:
        raise malformed("a part without a field name")
    filename = msg.get_filename()
    content_type = msg.get("Content-Type")
    return PartStart(field, filename, str(content_type) if content_type is not None else None, offset)


class FormParser:
    """Incremental multipart/form-data parser (RFC 7578 / RFC 2046 framing)."""

    def __init__(self, boundary: bytes) -> None:
        self._delimiter = b"\r\n--" + boundary
        # The first delimiter may open the body without a CRLF before it: pretend there was one.
        self._buf = bytearray(b"\r\n")
        self._base = -2  # body offset of self._buf[0]
        self._state = "preamble"
        self.ended = False

    def feed(self, data: bytes | memoryview) -> list[Event]:
        """The events `data` (the next bytes of the body) completes."""
        if self._state == "epilogue":
            return []
        self._buf += data
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def finish(self) -> None:
        """The body has ended: MalformedPOSTRequest unless the closing delimiter came."""
        if not self.ended:
            raise malformed("the body ended before the closing boundary")

    def _take(self, n: int) -> bytes:
        chunk = bytes(self._buf[:n])
        del self._buf[:n]
        self._base += n
        return chunk

    def _step(self, events: list[Event]) -> bool:
        """Advance by one state transition if the buffer allows; False when it needs more."""
        if self._state in ("preamble", "data"):
            return self._scan(events)
        if self._state == "delimiter":
            return self._after_delimiter(events)
        if self._state == "headers":
            return self._headers(events)
        return False

    def _scan(self, events: list[Event]) -> bool:
        at = self._buf.find(self._delimiter)
        if at < 0:
            # Keep what could be the start of a delimiter split across pieces.
            keep = len(self._delimiter) - 1
            if len(self._buf) > keep:
                piece = self._take(len(self._buf) - keep)
                if self._state == "data":
                    events.append(PartData(piece))
            return False
        piece = self._take(at)
        if self._state == "data":
            if piece:
                events.append(PartData(piece))
            events.append(PartEnd())
        self._take(len(self._delimiter))
        self._state = "delimiter"
        return True

    def _after_delimiter(self, events: list[Event]) -> bool:
        if len(self._buf) < 2:
            return False
        if self._buf[:2] == b"--":
            self._take(len(self._buf))
            self._state = "epilogue"
            self.ended = True
            events.append(FormEnd())
            return False
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > 256:
                raise malformed("garbage after a boundary")
            return False
        if self._buf[:end].strip(b" \t"):
            raise malformed("garbage after a boundary")
        self._take(end + 2)
        self._state = "headers"
        return True

    def _headers(self, events: list[Event]) -> bool:
        if self._buf[:2] == b"\r\n":
            raise malformed("a part without headers")
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_PART_HEADERS:
                raise malformed("part headers too long")
            return False
        if end > MAX_PART_HEADERS:
            raise malformed("part headers too long")
        block = self._take(end + 4)
        events.append(_part_start(block[:-4], self._base))
        self._state = "data"
        return True
