"""The PROXY protocol header a balancer puts before a connection's first byte (HAProxy's
``send-proxy`` / ``send-proxy-v2``, nginx's ``proxy_protocol on``), parsed without I/O.

Version 1 is one text line, ``PROXY TCP4 <src> <dst> <sport> <dport>\\r\\n`` (at most 107 bytes);
version 2 a 16-byte binary preamble (a 12-byte signature, version and command, family and
protocol, the length of what follows) and the addresses, then optional TLVs, which are skipped.
A header saying LOCAL (v2: the balancer's own connection, its health checks) or UNKNOWN (v1)
carries no client: the connection's own peer stands. Specification:
https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt

`parse` takes the bytes a connection has received so far and returns the header once it is
complete (with its length, so that exactly that much is consumed and the TLS handshake after
it is left alone), None while it may still be, and raises `ProxyHeaderError` as soon as the
bytes cannot be one. Error messages never quote the bytes.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

__all__ = ["MAX_HEADER", "V2_SIGNATURE", "ProxyHeader", "ProxyHeaderError", "parse", "v1_header", "v2_header"]

V1_PREFIX: Final = b"PROXY "
#: The longest v1 line the specification allows, CRLF included.
V1_MAX: Final = 107
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED: Final = 16
#: The longest header of either version (v2's length field is 16 bits).
MAX_HEADER: Final = _V2_FIXED + 0xFFFF

_V2_LOCAL, _V2_PROXY = 0x0, 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_UNSPEC, _STREAM = 0x0, 0x1
_ADDRESS_SIZE: Final = {_AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}


class ProxyHeaderError(ValueError):
    """The connection does not start with a valid PROXY protocol header."""


@dataclass(frozen=True)
class ProxyHeader:
    """A complete header: the client it names (None for LOCAL, UNKNOWN or a family without an IP
    address), and how many bytes of the connection it took."""

    source: tuple[str, int] | None
    length: int
    version: int


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of `data`; None while `data` is a prefix of one; ProxyHeaderError
    as soon as it cannot be."""
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    if data.startswith(V1_PREFIX):
        return _parse_v1(data)
    if V2_SIGNATURE.startswith(data[: len(V2_SIGNATURE)]) or V1_PREFIX.startswith(data[: len(V1_PREFIX)]):
        return None
    raise ProxyHeaderError("the connection does not start with a PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        # Incomplete only if nothing yet contradicts a CRLF to come: a bare LF, or a CR that is
        # not the last byte so far, cannot be followed by one.
        if len(data) >= V1_MAX or b"\n" in data or b"\r" in data[:-1]:
            raise ProxyHeaderError("PROXY v1 header line too long or not ended by CRLF")
        return None
    try:
        fields = data[len(V1_PREFIX) : end].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 header is not ASCII") from None
    length = end + 2
    if fields[0] == "UNKNOWN":
        return ProxyHeader(None, length, 1)
    if len(fields) != 5 or fields[0] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("PROXY v1 header is not TCP4, TCP6 or UNKNOWN with two addresses and two ports")
    family = ipaddress.IPv4Address if fields[0] == "TCP4" else ipaddress.IPv6Address
    try:
        source, _ = family(fields[1]), family(fields[2])
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 header has an address that is not {fields[0]}") from None
    ports = [_port(text) for text in fields[3:]]
    return ProxyHeader((str(source), ports[0]), length, 1)


def _port(text: str) -> int:
    if not (text.isdigit() and text.isascii()) or (len(text) > 1 and text[0] == "0") or int(text) > 0xFFFF:
        raise ProxyHeaderError("PROXY v1 header has a port that is not 0 to 65535")
    return int(text)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < _V2_FIXED:
        return None
    ver_cmd, fam_proto, size = struct.unpack_from("!BBH", data, len(V2_SIGNATURE))
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError("PROXY v2 header of an unknown version")
    command, family, protocol = ver_cmd & 0xF, fam_proto >> 4, fam_proto & 0xF
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyHeaderError("PROXY v2 header with an unknown command")
    if family > _AF_UNIX or protocol not in (_UNSPEC, _STREAM, 0x2):
        raise ProxyHeaderError("PROXY v2 header with an unknown address family or protocol")
    length = _V2_FIXED + size
    if command == _V2_PROXY and family != _AF_UNSPEC:
        if protocol == 0x2:
            raise ProxyHeaderError("PROXY v2 header for a datagram (UDP) connection")
        if size < _ADDRESS_SIZE[family]:
            raise ProxyHeaderError("PROXY v2 header too short for its addresses")
    if len(data) < length:
        return None
    if command == _V2_LOCAL or family in (_AF_UNSPEC, _AF_UNIX) or protocol == _UNSPEC:
        return ProxyHeader(None, length, 2)
    block = data[_V2_FIXED:length]
    if family == _AF_INET:
        address: str = str(ipaddress.IPv4Address(block[:4]))
        (port,) = struct.unpack_from("!H", block, 8)
    else:
        address = str(ipaddress.IPv6Address(block[:16]))
        (port,) = struct.unpack_from("!H", block, 32)
    return ProxyHeader((address, port), length, 2)


def _loopback(source: tuple[str, int]) -> tuple[str, int]:
    return ("::1" if ":" in source[0] else "127.0.0.1", 443)


def v1_header(source: tuple[str, int] | None, destination: tuple[str, int] | None = None) -> bytes:
    """A v1 header naming `source` (None: UNKNOWN), as a balancer sends it (for `sealgate
    health` and tests); `destination` defaults to loopback of the same family."""
    if source is None:
        return b"PROXY UNKNOWN\r\n"
    family = "TCP6" if ":" in source[0] else "TCP4"
    dst = destination or _loopback(source)
    return f"PROXY {family} {source[0]} {dst[0]} {source[1]} {dst[1]}\r\n".encode()


def v2_header(source: tuple[str, int] | None, destination: tuple[str, int] | None = None, tlvs: bytes = b"") -> bytes:
    """A v2 header naming `source` (None: LOCAL, as a balancer's health check), with `tlvs`."""
    if source is None:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20 | _V2_LOCAL, 0, len(tlvs)) + tlvs
    destination = destination or _loopback(source)
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    family = _AF_INET if src.version == 4 else _AF_INET6
    block = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1]) + tlvs
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | _V2_PROXY, family << 4 | _STREAM, len(block)) + block
