"""Issue 19: slow readers cannot pin backend connections. A download whose client takes the body
below ``server.download_min_bytes_per_second`` is cut, and one client may be reading only
``backend.streamed_downloads_per_client`` downloads at once. Real sealgate processes, real
sockets with small receive buffers that read slowly, real moto behind."""

from __future__ import annotations

import os
import socket
import ssl
import time
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.integration.hostile_support import VICTIM, VICTIM_AKID, VICTIM_SECRET, Gate, gate, wait_until
from tests.signing import sign

MiB = 1024 * 1024


def _setup(g: Gate, size: int) -> tuple[str, bytes]:
    bucket = f"dl-{uuid.uuid4().hex[:12]}"
    body = os.urandom(size)
    g.client(timeout=30).create_bucket(Bucket=bucket)
    g.client(timeout=30).put_object(Bucket=bucket, Key="big", Body=body)
    return bucket, body


def _start_get(g: Gate, path: str, rcvbuf: int = 8192) -> ssl.SSLSocket:
    """A signed GET `path` on a connection with a small receive buffer; returns the socket with
    the request sent (nothing read)."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window stays small
    raw.settimeout(10)
    raw.connect(("127.0.0.1", g.port))
    tls = ssl.create_default_context(cafile=str(g.ca)).wrap_socket(raw, server_hostname="localhost")
    headers = sign("GET", f"https://localhost:{g.port}{path}", {"Host": f"localhost:{g.port}"})
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    tls.sendall(f"GET {path} HTTP/1.1\r\n{lines}\r\n".encode())
    return tls


def _read_at(tls: ssl.SSLSocket, rate: int, limit: float) -> tuple[bytes, bool]:
    """Read at about `rate` bytes per second for at most `limit` seconds, or until nothing comes
    for the socket's timeout: what came, and whether the server closed (or cut) the connection."""
    got = b""
    start = time.monotonic()
    piece = max(rate // 20, 1)
    tls.settimeout(3)
    while time.monotonic() - start < limit:
        try:
            data = tls.recv(piece)
        except TimeoutError:
            return got, False  # nothing more is coming: the body is complete, or it stalled
        except (ConnectionError, ssl.SSLError):
            return got, True
        if not data:
            return got, True
        got += data
        time.sleep(max(0.0, len(got) / rate - (time.monotonic() - start)))
    return got, False


@pytest.mark.parametrize(
    ("reads", "rule"),
    [(20 * 1024, ""), (0, ""), (20 * 1024, '[[buckets]]\nname = "dl-*"\nformat = "s3ec-v3"\n')],
    ids=["trickle", "stops-reading", "trickle-s3ec-v3"],
)
def test_a_slow_reader_is_cut(moto_url: str, tls_files: dict[str, Path], tmp_path: Path, reads: int, rule: str) -> None:
    server = "download_min_bytes_per_second = 262144\ndownload_grace_seconds = 1\n"
    with gate(tmp_path, moto_url, tls_files, server=server, extra=rule) as g:
        bucket, _ = _setup(g, 24 * MiB)
        tls = _start_get(g, f"/{bucket}/big")
        t0 = time.monotonic()
        if reads:
            got, cut = _read_at(tls, reads, 30.0)  # well below 256 KiB/s
        else:
            assert wait_until(lambda: "cutting GET /" in g.log.read_text(), 10)
            got, cut = _read_at(tls, 100 * MiB, 5.0)  # what was on its way, then the reset
        tls.close()
        assert cut and time.monotonic() - t0 < 10, (len(got), time.monotonic() - t0)
        assert got.startswith(b"HTTP/1.1 200 ") and len(got) < 24 * MiB
        assert wait_until(lambda: "cutting GET /" in g.log.read_text(), 5)
        line = next(x for x in g.log.read_text().splitlines() if "cutting GET /" in x)
        assert f"/{bucket}/big: the client took" in line and "server.download_min_bytes_per_second (262144)" in line
        # Everyone else (and the same client, reading properly) is served as ever.
        body = g.client(timeout=30).get_object(Bucket=bucket, Key="big")["Body"].read()
        assert len(body) == 24 * MiB


def test_a_reader_above_the_rate_gets_the_whole_body(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    server = "download_min_bytes_per_second = 262144\ndownload_grace_seconds = 1\n"
    with gate(tmp_path, moto_url, tls_files, server=server) as g:
        # Larger than what the kernel's socket buffers absorb (about 4 MiB here), so that
        # sealgate waits for this reader span after span.
        bucket, body = _setup(g, 7 * MiB)
        tls = _start_get(g, f"/{bucket}/big", rcvbuf=16384)
        got, cut = _read_at(tls, 1024 * 1024, 40.0)  # four times the rate, steadily
        tls.close()
        head, _, received = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and received == body, (len(received), cut)
        assert "cutting GET" not in g.log.read_text()


def test_one_client_may_read_only_so_many_downloads_at_once(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    backend = "streamed_downloads_per_client = 2\npool_wait_seconds = 1\n"
    server = "download_min_bytes_per_second = 0\n"  # only the cap is under test
    with gate(tmp_path, moto_url, tls_files, server=server, backend=backend, extra=VICTIM) as g:
        bucket, _ = _setup(g, 24 * MiB)
        g.client().put_object(Bucket=bucket, Key="small", Body=b"hello")
        held = [_start_get(g, f"/{bucket}/big") for _ in range(2)]  # not read: both stay in progress
        try:
            time.sleep(0.5)
            t0 = time.monotonic()
            try:
                g.client().get_object(Bucket=bucket, Key="small")
                raise AssertionError("a third download of the same client was served")
            except ClientError as err:
                assert err.response["Error"]["Code"] == "SlowDown", err.response
                assert "2 downloads of this client are already in progress" in err.response["Error"]["Message"]
            assert 0.9 < time.monotonic() - t0 < 5  # after the bounded wait, not hanging
            other = g.client(akid=VICTIM_AKID, secret=VICTIM_SECRET)
            assert other.get_object(Bucket=bucket, Key="small")["Body"].read() == b"hello"
        finally:
            for tls in held:
                tls.close()

        def served() -> bool:
            try:
                return bool(g.client().get_object(Bucket=bucket, Key="small")["Body"].read() == b"hello")
            except ClientError:
                return False

        assert wait_until(served, 10)  # the client's slots come back when its downloads end
