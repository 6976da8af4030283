"""X-Forwarded-For from trusted proxies: the right-most address that is not itself trusted."""

from __future__ import annotations

import pytest

from proxy.net.forwarded import TrustedProxies, client_address

TRUSTED = TrustedProxies(["10.0.0.0/8", "2001:db8:1::/48"])


@pytest.mark.parametrize(
    ("peer", "header", "client"),
    [
        ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),  # not a trusted proxy: its header is ignored
        ("10.0.0.5", [], "10.0.0.5"),  # a trusted proxy's own request (a health check)
        ("10.0.0.5", ["198.51.100.1"], "198.51.100.1"),
        ("10.0.0.5", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),  # the client forged the left part
        ("10.0.0.5", ["6.6.6.6", "198.51.100.1, 10.0.0.7"], "198.51.100.1"),  # two lines, two proxies
        ("10.0.0.5", ["10.1.1.1, 10.0.0.7"], "10.1.1.1"),  # all trusted: the farthest
        ("10.0.0.5", ["198.51.100.1:4711"], "198.51.100.1"),
        ("10.0.0.5", ["[2001:db8:2::9]:443"], "2001:db8:2::9"),
        ("10.0.0.5", ["2001:db8:2::9"], "2001:db8:2::9"),
        ("10.0.0.5", ["198.51.100.1, nonsense"], "10.0.0.5"),  # garbage ends the walk at the last trusted hop
        ("10.0.0.5", ["unknown, 10.0.0.8"], "10.0.0.8"),
        ("::ffff:10.0.0.5", ["198.51.100.1"], "198.51.100.1"),  # an IPv4-mapped peer is its IPv4 address
        (None, ["198.51.100.1"], None),
    ],
)
def test_the_client_is_the_rightmost_untrusted_address(peer: str | None, header: list[str], client: str) -> None:
    assert client_address(peer, header, TRUSTED) == client


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert client_address("10.0.0.5", ["198.51.100.1"], TrustedProxies([])) == "10.0.0.5"
