"""The dispatcher: every operation the router serves has a handler."""

from __future__ import annotations

from proxy.s3.routing import OPERATIONS
from proxy.server.app import HANDLERS


def test_every_routed_operation_has_a_handler() -> None:
    assert set(HANDLERS) == set(OPERATIONS)
