"""The client's address behind trusted proxies: ``X-Forwarded-For`` read from the right.

Each proxy appends the address it received the request from, so the list ends with what the
closest proxy saw and everything to its left is only as honest as the proxy that wrote it. The
client is therefore the right-most address that is not itself a trusted proxy: a client can put
anything at the left of the header, but never past the proxy that appends its real address.
A peer that is not a trusted proxy is the client, whatever header it sends.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

__all__ = ["TrustedProxies", "client_address", "trusted_proxies"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """Networks whose connections may say whom they carry (PROXY protocol, X-Forwarded-For)."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks: tuple[Network, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, address: object) -> bool:
        ip = _ip(address) if isinstance(address, str) else None
        return ip is not None and any(ip in net for net in self.networks)


@functools.lru_cache(maxsize=16)
def trusted_proxies(networks: tuple[str, ...]) -> TrustedProxies:
    """`TrustedProxies` for a config's list, made once per distinct list (a reload may change it)."""
    return TrustedProxies(networks)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _entry(text: str) -> str | None:
    """One X-Forwarded-For element as an address (``1.2.3.4``, ``1.2.3.4:5678``, ``[::1]:80``
    and ``::1`` are all seen in the wild); None if it is none."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    ip = _ip(text)
    return str(ip) if ip is not None else None


def client_address(peer: str | None, forwarded_for: Iterable[str], trusted: TrustedProxies) -> str | None:
    """The client's address: `peer` unless it is a trusted proxy, else the right-most address
    of the X-Forwarded-For header lines `forwarded_for` (in the order received) that is not a
    trusted proxy. An element that is no address ends the walk: what lies left of it was
    written by someone no trusted proxy vouches for, so the last trusted hop is the answer."""
    if peer is None or not trusted or peer not in trusted:
        return peer
    hops = [hop for line in forwarded_for for hop in line.split(",")]
    current = peer
    for hop in reversed(hops):
        address = _entry(hop)
        if address is None:
            return current
        current = address
        if address not in trusted:
            return address
    return current
