"""The incremental multipart/form-data parser (proxy/s3/post_form.py): the same events whatever
the pieces the body arrives in, exact data offsets, and MalformedPOSTRequest for broken framing."""

from __future__ import annotations

import pytest
import urllib3
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.s3.errors import S3Error
from proxy.s3.post_form import FormEnd, FormParser, PartData, PartEnd, PartStart, boundary_of

B = b"----sealgateBoundary7MA4YWxkTrZu0gW"


def _body(fields: list[tuple[str, str]], file: bytes, boundary: bytes = B, tail: bytes = b"\r\n") -> bytes:
    out = b""
    for name, value in fields:
        out += b"--" + boundary + b"\r\n"
        out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value.encode() + b"\r\n"
    out += b"--" + boundary + b"\r\n"
    out += b'Content-Disposition: form-data; name="file"; filename="a.bin"\r\nContent-Type: image/png\r\n\r\n'
    return out + file + b"\r\n--" + boundary + b"--" + tail


def _parse(body: bytes, cuts: list[int], boundary: bytes = B) -> tuple[dict[str, bytes], list[PartStart], bool]:
    parser = FormParser(boundary)
    events = []
    last = 0
    for cut in [*sorted(cuts), len(body)]:
        events += parser.feed(body[last:cut])
        last = cut
    parser.finish()
    values: dict[str, bytes] = {}
    starts = []
    current = None
    for ev in events:
        if isinstance(ev, PartStart):
            starts.append(ev)
            current = ev.name
            values[current] = b""
        elif isinstance(ev, PartData):
            assert current is not None
            values[current] += ev.data
        elif isinstance(ev, PartEnd):
            current = None
    return values, starts, isinstance(events[-1], FormEnd)


def test_fields_and_file() -> None:
    body = _body([("key", "up/${filename}"), ("policy", "eyJ9")], b"\x00\r\n--not-the-boundary\r\n" * 3)
    values, starts, ended = _parse(body, [])
    assert values == {"key": b"up/${filename}", "policy": b"eyJ9", "file": b"\x00\r\n--not-the-boundary\r\n" * 3}
    assert ended
    file = starts[-1]
    assert (file.name, file.filename, file.content_type) == ("file", "a.bin", "image/png")
    # The offset is where the file's bytes start in the body.
    assert body[file.offset : file.offset + 3] == b"\x00\r\n"


def test_urllib3_forms_parse() -> None:
    data = bytes(range(256)) * 50
    body, content_type = urllib3.encode_multipart_formdata([("key", "k"), ("file", ("x.txt", data, "text/plain"))])
    values, starts, _ = _parse(body, [7, 100, 101], boundary_of(content_type))
    assert values == {"key": b"k", "file": data}
    assert starts[1].filename == "x.txt"


@settings(max_examples=200, deadline=None)
@given(
    fields=st.lists(
        st.tuples(st.sampled_from(["key", "acl", "x-amz-meta-a", "policy"]), st.text(max_size=40)), max_size=4
    ),
    file=st.binary(max_size=3000),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
)
def test_any_split_gives_the_same_form(fields: list[tuple[str, str]], file: bytes, cuts: list[int]) -> None:
    body = _body(fields, file)
    values, starts, ended = _parse(body, [c for c in cuts if c <= len(body)])
    assert ended and values["file"] == file
    assert body[starts[-1].offset : starts[-1].offset + len(file)] == file
    assert len(body) - starts[-1].offset - len(file) == len(b"\r\n--" + B + b"--\r\n")


def test_preamble_and_epilogue_are_ignored() -> None:
    body = b"ignored preamble\r\n" + _body([("key", "k")], b"data", tail=b"\r\nepilogue --" + B)
    values, _, ended = _parse(body, [3])
    assert values == {"key": b"k", "file": b"data"} and ended


@pytest.mark.parametrize(
    "body",
    [
        b"--" + B + b'\r\nContent-Disposition: form-data; name="key"\r\n\r\nvalue',  # never closed
        b"--" + B + b"\r\nContent-Type: text/plain\r\n\r\nx\r\n--" + B + b"--\r\n",  # no disposition
        b"--" + B + b"\r\nContent-Disposition: form-data\r\n\r\nx\r\n--" + B + b"--\r\n",  # no name
        b"--" + B + b"junk\r\n",  # garbage after a boundary
        b"--" + B + b"\r\n\r\nx\r\n--" + B + b"--\r\n",  # no headers at all
        b"--" + B + b"\r\nbroken header line\r\n\r\nx\r\n--" + B + b"--\r\n",
        b"no boundary anywhere",
    ],
)
def test_malformed_bodies(body: bytes) -> None:
    parser = FormParser(B)
    with pytest.raises(S3Error) as err:
        parser.feed(body)
        parser.finish()
    assert (err.value.code, err.value.status) == ("MalformedPOSTRequest", 400)


def test_header_blocks_are_bounded() -> None:
    parser = FormParser(B)
    with pytest.raises(S3Error) as err:
        parser.feed(b"--" + B + b"\r\nX-Long: " + b"a" * 10_000)
    assert err.value.code == "MalformedPOSTRequest"


def test_boundary_of() -> None:
    assert boundary_of('multipart/form-data; boundary="abc def"') == b"abc def"
    assert boundary_of("Multipart/Form-Data; boundary=xyz") == b"xyz"
    for bad in ("multipart/form-data", "text/plain; boundary=x", "multipart/form-data; boundary=" + "x" * 71):
        with pytest.raises(S3Error) as err:
            boundary_of(bad)
        assert err.value.code == "MalformedPOSTRequest"
