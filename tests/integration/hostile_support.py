"""Real sealgate processes and raw TLS sockets for the hostile-client tests (issue 19)."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from tests.conftest import CLIENT_AKID, CLIENT_SECRET, free_port, wait_port, write_config
from tests.signing import sign


class Gate:
    """A sealgate started as its own process (``sealgate serve``), one worker."""

    def __init__(self, config: Path, port: int, ca: Path) -> None:
        self.config, self.port, self.ca = config, port, ca
        self.log = config.with_suffix(".log")
        with self.log.open("wb") as out:
            # PYTHONPATH is inherited: the worktree's code is what runs.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while self.proc.poll() is None and time.monotonic() < deadline:
            try:
                wait_port(port, 0.2)
                return
            except RuntimeError:
                continue
        self.stop()
        raise RuntimeError(f"sealgate did not start: {self.log.read_text()[-2000:]}")

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def client(
        self, *, timeout: float = 5.0, akid: str = CLIENT_AKID, secret: str = CLIENT_SECRET, attempts: int = 1
    ) -> Any:
        """boto3 through this sealgate: no retries unless asked, so a refused or hung request shows."""
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=akid,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            verify=str(self.ca),
            config=BotoConfig(
                s3={"addressing_style": "path"},
                retries={"max_attempts": attempts, "mode": "standard"},
                connect_timeout=timeout,
                read_timeout=timeout,
                max_pool_connections=50,
            ),
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def gate(
    d: Path, moto_url: str, tls: dict[str, Path], server: str = "", backend: str = "", extra: str = ""
) -> Iterator[Gate]:
    """A sealgate process with these ``[server]`` / ``[backend]`` lines (and one worker)."""
    port = free_port()
    d.mkdir(parents=True, exist_ok=True)
    cfg = write_config(
        d,
        backend=moto_url,
        tls=tls,
        port=port,
        server_extra="workers = 1\n" + server,
        backend_extra=backend,
        extra=extra,
    )
    g = Gate(cfg, port, tls["ca"])
    try:
        yield g
    finally:
        g.stop()


def tls_socket(port: int, ca: Path, source: str | None = None, timeout: float = 5.0) -> ssl.SSLSocket:
    """A TLS connection to sealgate, from `source` (another loopback address) if given."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None)
    ctx = ssl.create_default_context(cafile=str(ca))
    return ctx.wrap_socket(raw, server_hostname="localhost")


def read_response(sock: ssl.SSLSocket) -> tuple[int, bytes]:
    """One HTTP response with a Content-Length body: (status, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            raise ConnectionError("closed before a response")
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        piece = sock.recv(65536)
        if not piece:
            raise ConnectionError("closed mid-body")
        body += piece
    return int(head.split(b" ")[1]), body


def health(sock: ssl.SSLSocket) -> int:
    """An anonymous ``GET /-/healthz`` on a kept-alive connection."""
    sock.sendall(b"GET /-/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    return read_response(sock)[0]


def signed_get(sock: ssl.SSLSocket, port: int, path: str = "/") -> int:
    """A SigV4-signed GET (ListBuckets by default) on a kept-alive connection."""
    headers = sign("GET", f"https://localhost:{port}{path}", {"Host": f"localhost:{port}"})
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"GET {path} HTTP/1.1\r\n{lines}\r\n".encode())
    return read_response(sock)[0]


def is_closed(sock: ssl.SSLSocket, wait: float = 0.2) -> bool:
    """Whether the server has closed (or reset) this connection."""
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except (OSError, ssl.SSLError):
        return True


def signed_put_head(port: int, bucket: str, key: str, length: int) -> bytes:
    """The head of a signed streaming PUT of `length` bytes (UNSIGNED-PAYLOAD)."""
    url = f"https://localhost:{port}/{bucket}/{key}"
    headers = sign("PUT", url, {"Host": f"localhost:{port}", "Content-Length": str(length)})
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"PUT /{bucket}/{key} HTTP/1.1\r\n{lines}\r\n".encode()


def wait_until(predicate: Any, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def close_all(socks: list[Any]) -> None:
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


__all__ = [
    "Gate",
    "close_all",
    "gate",
    "health",
    "is_closed",
    "read_response",
    "signed_get",
    "signed_put_head",
    "tls_socket",
    "wait_until",
]


VICTIM_AKID = "SGVICTIM000000000001"
VICTIM_SECRET = "victim-secret-0123456789abcdef"
#: A second client, for the tests where one client attacks and another must still be served.
VICTIM = f"""
[[clients]]
name = "victim"
access_key_id = "{VICTIM_AKID}"
secret_access_key = "{VICTIM_SECRET}"
"""


class Trickle:
    """A signed streamed PUT that sends its head and a first piece, then trickles."""

    def __init__(
        self,
        g: Gate,
        bucket: str,
        key: str,
        length: int = 1024 * 1024,
        first: int = 64 * 1024,
        head: bytes | None = None,
    ) -> None:
        """`head`: another request's head and body start (a form upload) instead of a PUT's."""
        self.sock = tls_socket(g.port, g.ca)
        self.length = length
        self.sent = first
        self.answer: bytes = b""
        self.sock.sendall((head or signed_put_head(g.port, bucket, key, length)) + b"x" * first)

    def step(self, size: int) -> bool:
        """Send `size` more bytes unless the server has answered; whether it has."""
        self.sock.settimeout(0.01)
        try:
            self.answer += self.sock.recv(65536)
            return True  # an answer, or the connection closed
        except TimeoutError:
            pass
        except (OSError, ssl.SSLError):
            return True
        size = min(size, self.length - self.sent - 1)  # never finish the body
        if size > 0:
            try:
                self.sock.settimeout(2)
                self.sock.sendall(b"y" * size)
                self.sent += size
            except (OSError, ssl.SSLError):
                return True
        return False

    @property
    def status(self) -> int | None:
        if not self.answer.startswith(b"HTTP/1.1 "):
            return None
        return int(self.answer.split(b" ")[1])

    def close(self) -> None:
        close_all([self.sock])
