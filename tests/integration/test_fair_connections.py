"""Issue 19 item 1: anonymous connections cannot lock authenticated clients out of the slots.

Each test plays the attack with real sockets against a real sealgate process and times a real
boto3 client (no retries) that must still be served."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.integration.hostile_support import (
    close_all,
    gate,
    health,
    is_closed,
    read_response,
    signed_get,
    tls_socket,
    wait_until,
)


def test_idle_anonymous_keepalives_do_not_lock_out_a_client(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    """The finding: twenty unsigned healthz keep-alives held all twenty slots for 75 s."""
    with gate(tmp_path, moto_url, tls_files, "max_connections = 20\n") as g:
        held = []
        for _ in range(20):
            sock = tls_socket(g.port, g.ca)
            assert health(sock) == 200
            held.append(sock)
        try:
            t0 = time.monotonic()
            g.client(timeout=5).list_buckets()
            assert time.monotonic() - t0 < 4.5
        finally:
            close_all(held)


def test_renewed_anonymous_load_does_not_lock_out_a_client(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    """Anonymous connections kept busy, and reopened as soon as they are closed, from thirty
    addresses (each address stays below the per-address cap)."""
    with gate(tmp_path, moto_url, tls_files, "max_connections = 20\n") as g:
        stop = threading.Event()

        def attack(source: str) -> None:
            while not stop.is_set():
                try:
                    sock = tls_socket(g.port, g.ca, source=source, timeout=2)
                except OSError:
                    continue
                try:
                    while not stop.is_set() and health(sock) == 200:
                        stop.wait(0.3)
                except (OSError, ConnectionError):
                    pass
                close_all([sock])

        attackers = [threading.Thread(target=attack, args=(f"127.0.0.{i}",), daemon=True) for i in range(2, 32)]
        for t in attackers:
            t.start()
        try:
            time.sleep(1.0)
            # The SDK's default of three attempts: on a loaded machine a new client's handshake
            # can outlast the time a new connection is safe from being pushed out.
            s3 = g.client(timeout=5, attempts=3)
            for _ in range(5):
                t0 = time.monotonic()
                g.client(timeout=5, attempts=3).list_buckets()  # a new connection each time
                s3.list_buckets()
                assert time.monotonic() - t0 < 9
        finally:
            stop.set()
            for t in attackers:
                t.join(5)


def test_authenticated_connections_keep_their_reserve(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    with gate(tmp_path, moto_url, tls_files, "max_connections = 8\nanonymous_connections = 4\n") as g:
        mine = [tls_socket(g.port, g.ca) for _ in range(4)]
        assert [signed_get(s, g.port) for s in mine] == [200] * 4
        anonymous = []
        for _ in range(12):
            sock = tls_socket(g.port, g.ca, timeout=3)
            anonymous.append(sock)
            try:
                health(sock)
            except OSError:
                pass  # pushed out by the next ones: expected
        try:
            # The authenticated connections were never pushed out, and still serve.
            assert [signed_get(s, g.port) for s in mine] == [200] * 4
            alive = [s for s in anonymous if not is_closed(s, 0.05)]
            assert len(alive) <= 4
            t0 = time.monotonic()
            g.client(timeout=5).list_buckets()
            assert time.monotonic() - t0 < 4.5
        finally:
            close_all(mine + anonymous)


def test_anonymous_connections_per_address(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    server = "max_connections = 40\nanonymous_connections = 20\nanonymous_connections_per_address = 2\n"
    with gate(tmp_path, moto_url, tls_files, server) as g:
        greedy = []
        for _ in range(6):
            sock = tls_socket(g.port, g.ca, source="127.0.0.2")
            assert health(sock) == 200
            greedy.append(sock)
        other = [tls_socket(g.port, g.ca, source="127.0.0.3") for _ in range(2)]
        try:
            assert [health(s) for s in other] == [200, 200]
            assert wait_until(lambda: sum(not is_closed(s, 0.05) for s in greedy) == 2, 3.0)
            assert not any(is_closed(s, 0.05) for s in greedy[-2:])  # the oldest gave way
            assert [health(s) for s in other] == [200, 200]
        finally:
            close_all(greedy + other)


def test_anonymous_idle_timeout(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    with gate(tmp_path, moto_url, tls_files, "anonymous_idle_timeout_seconds = 1\n") as g:
        anonymous, signed, silent = (tls_socket(g.port, g.ca) for _ in range(3))
        try:
            assert health(anonymous) == 200
            assert signed_get(signed, g.port) == 200
            t0 = time.monotonic()
            assert wait_until(lambda: is_closed(anonymous, 0.1), 4.0)
            assert 0.8 < time.monotonic() - t0 < 3.5
            assert is_closed(silent, 0.1)  # no request at all: closed as well
            time.sleep(0.5)
            assert signed_get(signed, g.port) == 200  # authenticated: the usual keep-alive applies
        finally:
            close_all([anonymous, signed, silent])


@pytest.mark.parametrize("path", ["/-/healthz", "/-/metrics"])
def test_health_paths_never_authenticate_a_connection(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path, path: str
) -> None:
    with gate(tmp_path, moto_url, tls_files, "anonymous_idle_timeout_seconds = 1\n") as g:
        sock = tls_socket(g.port, g.ca)
        try:
            headers = f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
            sock.sendall(headers)
            assert read_response(sock)[0] == 200
            assert wait_until(lambda: is_closed(sock, 0.1), 4.0)
        finally:
            close_all([sock])
