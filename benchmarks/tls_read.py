"""What receiving a large TLS upload costs the receiving process, by the way it reads (issue 22
item 4): asyncio's TLS (memory BIOs; what aiohttp and so sealgate use, under uvloop), a
non-blocking `ssl.SSLSocket` driven from the event loop with `recv_into` into one reused buffer
(as Tornado's IOStream does), and a blocking `SSLSocket.recv_into` loop (the ceiling).

A client process sends `--mib` MiB over TLS 1.3 (AES-256-GCM) on loopback; the receiver only
counts the bytes. Printed: the receiver's CPU seconds per GiB for each way, medians of `--runs`.
sealgate's PUT costs about 0.9 CPU-s per GiB in all (see README.md, "Session 6"); what a way of
reading saves here is what it could save there.

    python benchmarks/tls_read.py [--mib 1024] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import ssl
import statistics
import sys
import time

import trustme

BLOCK = 1024 * 1024


def _send(port: int, total: int, ca_pem: bytes) -> None:
    client = ssl.create_default_context(cadata=ca_pem.decode())
    block = os.urandom(BLOCK)
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        client.wrap_socket(raw, server_hostname="127.0.0.1") as s,
    ):
        sent = 0
        while sent < total:
            s.sendall(block)
            sent += BLOCK
        s.recv(1)  # the receiver's "done"


def _blocking(server: ssl.SSLContext, listener: socket.socket, total: int) -> float:
    conn, _ = listener.accept()
    with server.wrap_socket(conn, server_side=True) as s:
        buf = bytearray(BLOCK)
        got = 0
        start = time.process_time()
        while got < total:
            n = s.recv_into(buf)
            if not n:
                break
            got += n
        spent = time.process_time() - start
        s.sendall(b"k")
    return spent


async def _asyncio_bio(server: ssl.SSLContext, listener: socket.socket, total: int) -> float:
    done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    class Counter(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.got = 0
            self.start = time.process_time()

        def data_received(self, data: bytes) -> None:
            self.got += len(data)
            if self.got >= total and not done.done():
                done.set_result(time.process_time() - self.start)
                self.transport.write(b"k")  # type: ignore[attr-defined]

    srv = await asyncio.get_running_loop().create_server(Counter, sock=listener, ssl=server)
    spent = await done
    srv.close()
    return spent


async def _nonblocking_socket(server: ssl.SSLContext, listener: socket.socket, total: int) -> float:
    loop = asyncio.get_running_loop()
    listener.setblocking(False)
    conn, _ = await loop.sock_accept(listener)
    s = server.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
    while True:  # the handshake, driven from the loop
        try:
            s.do_handshake()
            break
        except ssl.SSLWantReadError:
            await _readable(loop, s)
        except ssl.SSLWantWriteError:
            await asyncio.sleep(0)
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    got = 0
    start = time.process_time()
    while got < total:
        try:
            n = s.recv_into(view)
        except ssl.SSLWantReadError:
            await _readable(loop, s)
            continue
        if not n:
            break
        got += n
    spent = time.process_time() - start
    s.setblocking(True)
    s.sendall(b"k")
    s.close()
    return spent


async def _readable(loop: asyncio.AbstractEventLoop, s: socket.socket) -> None:
    ready = loop.create_future()
    loop.add_reader(s.fileno(), ready.set_result, None)
    try:
        await ready
    finally:
        loop.remove_reader(s.fileno())


def _one(way: str, total: int) -> float:
    ca = trustme.CA()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    sender = multiprocessing.Process(target=_send, args=(port, total, ca.cert_pem.bytes()))
    sender.start()
    try:
        if way == "blocking SSLSocket.recv_into":
            return _blocking(server, listener, total)
        import uvloop

        coro = _asyncio_bio if way == "asyncio TLS (memory BIOs)" else _nonblocking_socket
        return uvloop.run(coro(server, listener, total))
    finally:
        sender.join(60)
        listener.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=1024)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    total = args.mib * BLOCK
    ways = ["asyncio TLS (memory BIOs)", "non-blocking SSLSocket.recv_into", "blocking SSLSocket.recv_into"]
    results: dict[str, list[float]] = {w: [] for w in ways}
    for _ in range(args.runs):
        for way in ways:  # interleaved: a machine slowing down shows in every row alike
            results[way].append(_one(way, total) / (total / 1024**3))
    print(f"receiving {args.mib} MiB over TLS on loopback, receiver CPU-s per GiB, median of {args.runs}")
    base = statistics.median(results[ways[0]])
    for way in ways:
        med = statistics.median(results[way])
        print(
            f"  {way:36s} {med:5.2f}  ({med - base:+.2f} against asyncio's)  runs: "
            + ", ".join(f"{v:.2f}" for v in results[way])
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
