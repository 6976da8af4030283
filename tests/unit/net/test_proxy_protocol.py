"""PROXY protocol headers, v1 and v2: complete, incomplete (any prefix) and invalid."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.net.proxy_protocol import V2_SIGNATURE, ProxyHeader, ProxyHeaderError, parse, v1_header, v2_header

TLS_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


@pytest.mark.parametrize(
    ("header", "source"),
    [
        (b"PROXY TCP4 203.0.113.7 10.0.0.11 51234 8443\r\n", ("203.0.113.7", 51234)),
        (b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 443\r\n", ("2001:db8::7", 65535)),
        (b"PROXY UNKNOWN\r\n", None),
        (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None),
        (v2_header(("203.0.113.7", 51234)), ("203.0.113.7", 51234)),
        (v2_header(("2001:db8::7", 1)), ("2001:db8::7", 1)),
        (v2_header(None), None),  # LOCAL: the balancer's own health check
        (v2_header(("198.51.100.2", 80), tlvs=b"\x05\x00\x04abcd"), ("198.51.100.2", 80)),  # a TLV, skipped
    ],
)
def test_complete_headers_name_the_client_and_their_length(header: bytes, source: tuple[str, int] | None) -> None:
    parsed = parse(header + TLS_HELLO)
    assert parsed == ProxyHeader(source, len(header), 2 if header.startswith(V2_SIGNATURE) else 1)


@given(st.sampled_from([v1_header(("192.0.2.1", 1)), v2_header(("192.0.2.1", 1)), v2_header(None)]), st.data())
def test_every_proper_prefix_is_incomplete(header: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(header) - 1))
    assert parse(header[:cut]) is None


@pytest.mark.parametrize(
    "data",
    [
        TLS_HELLO,  # a client that connected straight to sealgate, past the balancer
        b"GET / HTTP/1.1\r\n\r\n",
        b"PROXY TCP4 203.0.113.7 10.0.0.11 51234\r\n",  # a port missing
        b"PROXY TCP4 2001:db8::7 10.0.0.11 1 2\r\n",  # an address of the other family
        b"PROXY TCP4 203.0.113.7 10.0.0.11 051234 1\r\n",  # a leading zero
        b"PROXY TCP4 203.0.113.7 10.0.0.11 65536 1\r\n",
        b"PROXY TCP4 203.0.113.7 10.0.0.11 1 2\n",  # a bare LF
        b"PROXY UDP4 203.0.113.7 10.0.0.11 1 2\r\n",
        b"PROXY " + b"x" * 200,  # longer than v1 allows, without CRLF
        V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\x00" * 12,  # version 1 in a v2 preamble
        V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\x00" * 12,  # an unknown command
        V2_SIGNATURE + b"\x21\x12\x00\x0c" + b"\x00" * 12,  # UDP
        V2_SIGNATURE + b"\x21\x11\x00\x08" + b"\x00" * 8,  # too short for IPv4 addresses
        V2_SIGNATURE + b"\x21\x41\x00\x00",  # an unknown family
    ],
)
def test_invalid_headers_are_refused_without_quoting_them(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError) as err:
        parse(data)
    assert "203.0.113.7" not in str(err.value) and "GET" not in str(err.value)


def test_a_v2_unix_or_unspecified_family_names_no_client() -> None:
    unix = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x31, 216) + b"\x00" * 216
    unspec = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x00, 0)
    assert parse(unix) == ProxyHeader(None, len(unix), 2)
    assert parse(unspec) == ProxyHeader(None, 16, 2)
