"""How fast can any encrypting S3 proxy on sealgate's stack upload? A floor for issue 5's PUT target.

`python benchmarks/floor.py` starts the benchmark sink, nginx (the same TLS pass-through as
`run.py`), sealgate, and two stripped-down proxies that do nothing but what every encrypting
proxy on aiohttp + uvloop + Python's `ssl` must do: terminate TLS, cut the body into 64 KiB
segments, seal each with AES-256-GCM, and stream them to the sink over a pooled aiohttp
connection. No SigV4, no envelope, no metadata, no checks, no logging, no metrics:

- ``floor-readany``: reads the body with aiohttp's public API (`request.content.readany()`),
  as sealgate does for bodies under ``server.direct_body_min_bytes``;
- ``floor-buffered``: takes the body off aiohttp's parser and has uvloop's TLS layer decrypt
  straight into the proxy's own buffer (`transport.set_protocol` with an
  `asyncio.BufferedProtocol`): the fewest copies Python's `ssl` memory BIOs allow. Sealgate
  does the same for bodies of at least 1 MiB (`proxy/server/direct.py`), so its 1 GiB
  upload is measured on that path.

Each uploads the same 1 GiB (default) with the same lean client as `run.py`; the table gives
MB/s, the proxy's CPU-seconds per GiB and the ratio to nginx, medians over `--runs`. If the
floor's ratio is under 0.9, no implementation on this stack meets "PUT >= 0.9x nginx" on this
machine: the cost is in TLS records, copies and socket writes that the stack makes, not in
sealgate's own work. Loopback only; everything it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks import client as C  # noqa: E402
from benchmarks.procs import (  # noqa: E402
    CLIENT_AKID,
    CLIENT_SECRET,
    Server,
    Servers,
    cpu_seconds,
    descendants,
    free_port,
    servers,
)

SEGMENT = 64 * 1024


def proxy_main(mode: str, port: int, backend: str, cert: str, key: str, reuse_port: bool = False) -> None:
    """The stripped-down proxy (run in its own process by `main`)."""
    import ssl

    import aiohttp
    import uvloop
    from aiohttp import web
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(AESGCM.generate_key(256))

    def nonce(i: int) -> bytes:
        return i.to_bytes(12, "big")

    def sealed_length(n: int) -> int:
        return n + 16 * (n // SEGMENT + 1)

    class Pump(asyncio.BufferedProtocol):
        """Receives the rest of a body straight into `buf` and seals whole segments from it."""

        def __init__(self, transport: asyncio.Transport, remaining: int, out: asyncio.Queue[bytes | None]) -> None:
            self.transport = transport
            self.buf = bytearray(4 * SEGMENT)
            self.view = memoryview(self.buf)
            self.fill = 0
            self.remaining = remaining
            self.out = out
            self.index = 0
            self.done = asyncio.get_running_loop().create_future()

        def get_buffer(self, sizehint: int) -> memoryview:
            if self.remaining == 0:  # bytes after the body: the connection is closed after it
                return memoryview(bytearray(SEGMENT))
            return self.view[self.fill : self.fill + min(len(self.buf) - self.fill, self.remaining)]

        def buffer_updated(self, nbytes: int) -> None:
            if self.remaining == 0:
                return
            self.fill += nbytes
            self.remaining -= nbytes
            full = self.fill - self.fill % SEGMENT
            for off in range(0, full, SEGMENT):
                self.out.put_nowait(aead.encrypt(nonce(self.index), self.view[off : off + SEGMENT], None))
                self.index += 1
            if full:
                self.buf[: self.fill - full] = self.view[full : self.fill]
                self.fill -= full
            if self.remaining == 0:
                self.finish()
            elif self.out.qsize() > 32:  # the backend is slower: stop reading until it drains
                self.transport.pause_reading()

        def take(self, data: bytes) -> None:
            """Bytes aiohttp had already parsed before the swap."""
            view = memoryview(data)
            while view:
                dest = self.get_buffer(-1)
                n = min(len(dest), len(view))
                dest[:n] = view[:n]
                self.buffer_updated(n)
                view = view[n:]

        def finish(self) -> None:
            self.out.put_nowait(aead.encrypt(nonce(self.index), self.view[: self.fill], None))
            self.out.put_nowait(None)
            self.done.set_result(None)

        def eof_received(self) -> bool:
            self.connection_lost(None)
            return False

        def connection_lost(self, exc: Exception | None) -> None:
            if not self.done.done():
                self.done.set_exception(ConnectionError("client went away"))
                self.out.put_nowait(None)

    async def handle(request: web.Request) -> web.StreamResponse:
        size = int(request.headers["Content-Length"])
        session: aiohttp.ClientSession = request.app["session"]

        async def sealed() -> object:
            if mode == "readany":
                pending = bytearray()
                index = 0
                while chunk := await request.content.readany():
                    view = memoryview(chunk)
                    if pending:
                        take = min(SEGMENT - len(pending), len(view))
                        pending += view[:take]
                        view = view[take:]
                        if len(pending) < SEGMENT:
                            continue
                        yield aead.encrypt(nonce(index), pending, None)
                        index += 1
                        pending.clear()
                    while len(view) >= SEGMENT:
                        yield aead.encrypt(nonce(index), view[:SEGMENT], None)
                        index += 1
                        view = view[SEGMENT:]
                    pending += view
                yield aead.encrypt(nonce(index), pending, None)
                return
            queue: asyncio.Queue[bytes | None] = asyncio.Queue()
            transport = request.transport
            assert transport is not None
            pump = Pump(transport, size, queue)
            pump.take(request.content.read_nowait(-1))  # what aiohttp parsed before the swap
            if size == 0:
                pump.finish()
            handler = transport.get_protocol()
            if not pump.done.done():
                transport.set_protocol(pump)
            while (segment := await queue.get()) is not None:
                if queue.qsize() < 8:
                    transport.resume_reading()
                yield segment
            await pump.done
            transport.set_protocol(handler)

        url = f"{backend}{request.path}"
        headers = {"Content-Length": str(sealed_length(size))}
        async with session.put(url, data=sealed(), headers=headers) as resp:
            await resp.read()
        out = web.Response(status=resp.status)
        if mode == "buffered" and size:
            out.force_close()  # aiohttp's parser never saw the body: the connection ends here
        return out

    async def on_startup(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))

    async def on_cleanup(app: web.Application) -> None:
        await app["session"].close()

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    app = web.Application(client_max_size=1 << 40)
    app.router.add_put("/{tail:.*}", handle)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, ssl_context=tls, print=None, access_log=None, reuse_port=reuse_port)


async def measure(target: C.Target, proc: Server, size: int, runs: int) -> tuple[float, float]:
    """Median (MB/s, proxy CPU-s per GiB) of `runs` uploads after one warm-up upload."""
    rates: list[float] = []
    cpus: list[float] = []
    async with C.session_for(target) as session:
        await C.create_bucket(session, target, "floor")
        for i in range(runs + 1):
            c0 = cpu_seconds(proc.pid)
            t0 = time.perf_counter()
            await C.put_object(session, target, "floor", "big", size)
            seconds = time.perf_counter() - t0
            if i:
                rates.append(size / seconds / 1e6)
                cpus.append((cpu_seconds(proc.pid) - c0) / (size / 2**30))
    return statistics.median(rates), statistics.median(cpus)


async def measure_small(target: C.Target, pids: list[int], seconds: float, runs: int) -> dict[str, float]:
    """4 KiB PUTs on 64 keep-alive connections, as run.py's small load: medians of `runs`."""
    keys = [f"k{i}" for i in range(256)]
    body = bytes(4096)
    rows: list[dict[str, float]] = []
    async with C.session_for(target) as session:
        await C.create_bucket(session, target, "floor")
    for _ in range(runs):
        signed = C.presign_small(target, "floor", "PUT", keys, len(body))
        c0 = sum(cpu_seconds(pid) for pid in pids)
        result = await C.small_load(target, "PUT", signed, connections=64, seconds=seconds, warmup=1.0, body=body)
        summary = result.summary()
        cpu = sum(cpu_seconds(pid) for pid in pids) - c0
        summary["cpu_us"] = cpu / max(1, summary["requests"]) * 1e6
        rows.append(summary)
    return {k: statistics.median(r[k] for r in rows) for k in ("req_per_s", "p50_ms", "p99_ms", "cpu_us")}


def small_floor(run: Servers, sink: Server, files: dict[str, Path], workers: int, seconds: float, runs: int) -> None:
    """The 4 KiB PUT load against `workers` floor-readany processes and as many sealgate workers."""
    port = free_port()
    tls = [str(files["cert"]), str(files["key"])]
    floor = [
        run._spawn(
            f"floor-small-{i}",
            [sys.executable, __file__, "--proxy", "readany", str(port), sink.endpoint, *tls, "reuse"],
            port,
            "https",
        )
        for i in range(workers)
    ]
    sealgate = run.start_sealgate(files, sink.endpoint, workers=workers)
    results = {
        "floor-readany": asyncio.run(
            measure_small(
                C.Target("floor", floor[0].endpoint, str(files["ca"]), CLIENT_AKID, CLIENT_SECRET),
                [p.pid for p in floor],
                seconds,
                runs,
            )
        ),
        "sealgate": asyncio.run(
            measure_small(
                C.Target("sealgate", sealgate.endpoint, str(files["ca"]), CLIENT_AKID, CLIENT_SECRET),
                descendants(sealgate.pid),
                seconds,
                runs,
            )
        ),
    }
    print(f"4 KiB PUT, 64 connections, {workers} worker(s), medians of {runs} x {seconds:.0f} s")
    print(f"{'':16}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'CPU us/req':>12}")
    for name, r in results.items():
        print(f"{name:16}{r['req_per_s']:8.0f}{r['p50_ms']:8.1f}{r['p99_ms']:8.1f}{r['cpu_us']:12.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="4 KiB PUT loads instead of the 1 GiB upload")
    parser.add_argument("--workers", type=int, default=2, help="processes per proxy for --small")
    parser.add_argument("--small-seconds", type=float, default=8.0)
    parser.add_argument("--proxy", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.proxy:
        mode, port, backend, cert, key, *reuse = args.proxy
        proxy_main(mode, int(port), backend, cert, key, reuse_port=bool(reuse))
        return
    if args.small:
        with tempfile.TemporaryDirectory(prefix="sgfloor-") as tmp, servers(Path(tmp)) as run:
            sink = run.start_sink()
            small_floor(run, sink, run.prepare_sealgate_files(), args.workers, args.small_seconds, args.runs)
        return
    size = args.size_mib * 2**20
    with tempfile.TemporaryDirectory(prefix="sgfloor-") as tmp, servers(Path(tmp)) as run:
        sink = run.start_sink()
        files = run.prepare_sealgate_files()
        procs: dict[str, Server] = {"nginx": run.start_nginx(files, sink.port)}
        for mode in ("readany", "buffered"):
            port = free_port()
            tls = [str(files["cert"]), str(files["key"])]
            argv = [sys.executable, __file__, "--proxy", mode, str(port), sink.endpoint, *tls]
            procs[f"floor-{mode}"] = run._spawn(f"floor-{mode}", argv, port, "https")
        procs["sealgate"] = run.start_sealgate(files, sink.endpoint)
        results: dict[str, tuple[float, float]] = {}
        for name, proc in procs.items():
            target = C.Target(name, proc.endpoint, str(files["ca"]), CLIENT_AKID, CLIENT_SECRET)
            results[name] = asyncio.run(measure(target, proc, size, args.runs))
    base = results["nginx"][0]
    print(f"PUT {args.size_mib} MiB, one connection, medians of {args.runs} (after a warm-up upload)")
    print(f"{'':16}{'MB/s':>8}{'CPU-s/GiB':>11}{'x nginx':>9}")
    for name, (rate, cpu) in results.items():
        print(f"{name:16}{rate:8.0f}{cpu:11.2f}{rate / base:8.2f}x")


if __name__ == "__main__":
    main()
