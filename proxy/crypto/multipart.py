"""Reading multipart objects: where each part sits, and a decryptor for any plaintext range.

A multipart object on the backend is its parts' ciphertexts in part-number order; each part is
``header(32) ‖ stream`` (see format.py). The manifest (sealed, stored beside the object) lists
the parts and their plaintext lengths, so offsets are pure arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.crypto.format import (
    DIGEST_SLOT,
    PART_HEADER_SIZE,
    IntegrityError,
    Layout,
    Manifest,
    PartHeader,
    part_ciphertext_length,
    part_key,
)
from proxy.crypto.segments import Buffer, StreamDecryptor


@dataclass(frozen=True)
class Placement:
    """Where one part lies, in ciphertext and in plaintext."""

    number: int
    length: int
    md5: str | None
    ciphertext_start: int
    plaintext_start: int


def placements(manifest: Manifest, layout: Layout) -> list[Placement]:
    """Every part's position, in order."""
    out = []
    ct = pt = 0
    for part in manifest.parts:
        out.append(Placement(part.number, part.length, part.etag if part.md5 else None, ct, pt))
        ct += part_ciphertext_length(layout, part.length)
        pt += part.length
    return out


def stored_length(manifest: Manifest, layout: Layout) -> int:
    """The backend size the manifest implies."""
    return sum(part_ciphertext_length(layout, p.length) for p in manifest.parts)


@dataclass
class _Step:
    part: Placement
    inline_header: bool
    #: Stream-plaintext span within the part: [start, end) and how much of it is released.
    start: int
    end: int
    release: int
    decryptor: StreamDecryptor | None = None
    header: PartHeader | None = None
    remaining: int = 0
    released: int = 0
    digest: bytes = b""


def _steps(manifest: Manifest, layout: Layout, start: int, end: int, full: bool) -> list[_Step]:
    """What reading plaintext [start, end) takes of each part (every part for a full read)."""
    steps: list[_Step] = []
    for p in placements(manifest, layout):
        p_end = p.plaintext_start + p.length
        if full:
            steps.append(_Step(p, True, 0, p.length + DIGEST_SLOT, p.length))
            continue
        if p_end <= start or p.plaintext_start >= end:
            continue
        s = max(start, p.plaintext_start) - p.plaintext_start
        e = min(end, p_end) - p.plaintext_start
        first_segment = s // layout.segment_size
        steps.append(_Step(p, first_segment == 0 or bool(steps), s, e, e - s))
    if not steps:
        raise ValueError("empty range")
    for step in steps[:-1]:
        # A part the range runs past is read to its end, digest slot included: its last
        # segment(s) lie between this part's data and the next part's header.
        step.end = step.part.length + DIGEST_SLOT
    return steps


def _ranges(steps: list[_Step], layout: Layout) -> tuple[tuple[int, int], tuple[int, int] | None, int]:
    """(the backend range to fetch, the first part's header range when the fetch starts inside
    that part, that part's number)."""
    first = steps[0]
    header_range: tuple[int, int] | None = None
    if first.inline_header:
        fetch_start = first.part.ciphertext_start
    else:
        span = layout.span(first.start, first.end, first.part.length)
        fetch_start = first.part.ciphertext_start + PART_HEADER_SIZE + span.ciphertext_start
        hs = first.part.ciphertext_start
        header_range = (hs, hs + PART_HEADER_SIZE)
    last = steps[-1]
    span = layout.span(last.start, last.end, last.part.length)
    return (
        (fetch_start, last.part.ciphertext_start + PART_HEADER_SIZE + span.ciphertext_end),
        header_range,
        first.part.number,
    )


def read_plan(
    manifest: Manifest, layout: Layout, start: int, end: int
) -> tuple[tuple[int, int], tuple[int, int] | None, int]:
    """What a `MultipartDecryptor` of plaintext [start, end) will ask for, without a data key:
    (fetch range, header range or None, the number of the part that header belongs to)."""
    return _ranges(_steps(manifest, layout, start, end, False), layout)


class MultipartDecryptor:
    """Decrypts plaintext [start, end) of a multipart object from one contiguous backend range.

    `fetch_range` is the backend range to request. When `header_range` is not None, the caller
    must fetch those 32 bytes too and pass them to `set_first_header` before feeding. A full read
    (`full=True`) also checks each part's MD5 digest slot where the manifest names one.
    """

    def __init__(
        self,
        data_key: bytes,
        salt: bytes,
        layout: Layout,
        manifest: Manifest,
        start: int,
        end: int,
        *,
        full: bool = False,
    ) -> None:
        self._dk = data_key
        self._salt = salt
        self._layout = layout
        self._steps = _steps(manifest, layout, start, end, full)
        self.fetch_range, self.header_range, self.header_part = _ranges(self._steps, layout)
        self._current = 0
        self._hbuf = bytearray()
        self._enter(self._steps[0])

    def _enter(self, step: _Step) -> None:
        span = self._layout.span(step.start, step.end, step.part.length)
        step.remaining = span.ciphertext_end - span.ciphertext_start
        if step.header is not None:
            self._start_decryptor(step)

    def _start_decryptor(self, step: _Step) -> None:
        assert step.header is not None
        span = self._layout.span(step.start, step.end, step.part.length)
        key = part_key(self._dk, self._salt, step.header.pack())
        step.decryptor = StreamDecryptor(key, self._layout, span, step.part.length)

    def _check_header(self, step: _Step, raw: bytes) -> None:
        header = PartHeader.unpack(raw)
        if header.number != step.part.number or header.length != step.part.length:
            raise IntegrityError(f"part {step.part.number} is not where the manifest puts it")
        step.header = header
        self._start_decryptor(step)

    def set_first_header(self, raw: bytes) -> None:
        """The separately fetched header of the first part (when `header_range` is set)."""
        self._check_header(self._steps[0], raw)

    @property
    def done(self) -> bool:
        """Every step has consumed its ciphertext."""
        return self._current >= len(self._steps)

    def feed(self, data: Buffer) -> list[bytes]:
        """Plaintext released by `data` (which continues the fetched range)."""
        view = memoryview(data)
        out: list[bytes] = []
        while view:
            if self._current >= len(self._steps):
                raise IntegrityError("more ciphertext than the manifest allows")
            step = self._steps[self._current]
            if step.header is None:
                need = PART_HEADER_SIZE - len(self._hbuf)
                self._hbuf += view[:need]
                view = view[need:]
                if len(self._hbuf) < PART_HEADER_SIZE:
                    break
                self._check_header(step, bytes(self._hbuf))
                self._hbuf.clear()
                continue
            take = view[: step.remaining]
            view = view[len(take) :]
            step.remaining -= len(take)
            assert step.decryptor is not None
            for piece in step.decryptor.feed(take):
                out.extend(self._release(step, piece))
            if step.remaining == 0:
                self._finish_step(step)
        return out

    def _release(self, step: _Step, piece: bytes) -> list[bytes]:
        room = step.release - step.released
        keep = piece[:room]
        step.released += len(keep)
        if len(piece) > room:
            step.digest += piece[room:]
        return [keep] if keep else []

    def _finish_step(self, step: _Step) -> None:
        assert step.decryptor is not None
        step.decryptor.finish()
        full_part = step.end == step.part.length + DIGEST_SLOT
        if full_part and step.part.md5 is not None and step.digest.hex() != step.part.md5:
            raise IntegrityError(f"part {step.part.number} is not the upload the manifest names")
        self._current += 1
        if self._current < len(self._steps):
            self._enter(self._steps[self._current])

    def finish(self) -> None:
        """IntegrityError unless every part arrived whole."""
        if not self.done:
            raise IntegrityError("ciphertext ended before the last part")
