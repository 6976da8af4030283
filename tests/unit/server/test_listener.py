"""The per-address share of anonymous connections when a trusted proxy says whom a connection
carries (`Connections.readdress`), without sockets: connections still in their handshake."""

from __future__ import annotations

from proxy.server.listener import Connections, Guard


def _guard(connections: Connections) -> Guard:
    # A connection not yet through its handshake: no protocol or transport is needed for that.
    return Guard(None, connections, None, "127.0.0.2")  # type: ignore[arg-type]


def test_a_proxys_connections_count_per_address_once_they_say_whose() -> None:
    connections = Connections(10, 15.0, per_address=1)
    first, second, third = (_guard(connections) for _ in range(3))
    assert all(connections.admit(g) for g in (first, second, third))  # a balancer's: not capped
    assert connections.readdress(first, "203.0.113.1")
    assert connections.anonymous_from("203.0.113.1") == 1
    # The cap for 203.0.113.1 is full, and `first` is too young to give way: refused.
    assert not connections.readdress(second, "203.0.113.1")
    assert connections.anonymous == 2 and connections.anonymous_from("203.0.113.1") == 1
    assert connections.readdress(third, "203.0.113.2")
    # Back to the balancer's own (a request without X-Forwarded-For): no longer counted there.
    assert connections.readdress(first, None)
    assert connections.anonymous_from("203.0.113.1") == 0 and connections.anonymous == 2
    connections.closed(third)
    assert connections.anonymous_from("203.0.113.2") == 0 and connections.anonymous == 1
