"""sealgate's benchmark: one command, everything on loopback, figures and ratios from one run.

    python benchmarks/run.py            # full run: 1 GiB bodies, medians of 3 rounds (~6 min)
    python benchmarks/run.py --quick    # smoke test: 128 MiB bodies, 1 round (under 2 minutes)

It starts, on 127.0.0.1 only: the in-memory S3 sink (benchmarks/sink.py) as the backend;
sealgate (``python -m proxy.cli serve``, TLS, local keyring) in front of it; Debian's nginx as a
plain TLS pass-through proxy in front of the same sink. The same lean client (benchmarks/
client.py) then drives three targets: ``direct`` (the sink, plain HTTP), ``nginx`` and
``sealgate`` (both TLS). It prints a table and writes every raw number to a JSON file
(benchmarks/results.json unless --json says otherwise). Every server is stopped at the end,
however the run ends, and the whole run is bounded by --time-limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import client
import procs
from client import Target
from yarl import URL

MiB = 1024**2
GiB = 1024**3
SMALL_SIZE = 4096
BUCKET_BIG = "bench-big"
BUCKET_SMALL = "bench-small"
HERE = Path(__file__).resolve().parent

#: Issue 5's targets.
TARGET_RATIO = 0.9
TARGET_RSS_MIB = 100.0
TARGET_SMALL_RATE = 3000.0
TARGET_P99_MS = 30.0
#: Issue 22's targets: 4 KiB requests with 2 workers at 64 connections, and memory per worker.
TARGET22_CPU_US = 150.0
TARGET22_RATE = 8000.0
TARGET22_P99_MS = 15.0
TARGET22_IDLE_MIB = 45.0
TARGET22_PEAK_MIB = 80.0


@dataclass
class Settings:
    """What one run measures, and how big and how long."""

    quick: bool
    runs: int
    size: int
    part_size: int
    part_concurrency: int
    small_seconds: float
    small_warmup: float
    connections: int
    keys_per_connection: int
    rss_sizes: list[int]
    rss_multipart: int
    workers: int
    keyring_puts: int
    boto3: bool
    moto: bool
    profile: bool
    time_limit: float
    json_path: Path


def parse_args(argv: list[str] | None = None) -> Settings:
    """Command line to Settings; --quick sets small defaults that other flags may override."""
    p = argparse.ArgumentParser(description="sealgate benchmark (loopback only)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 round, 128 MiB, short loads")
    p.add_argument("--runs", type=int, help="rounds per figure; medians are reported (default 3, quick 1)")
    p.add_argument("--size-mib", type=int, help="throughput body size in MiB (default 1024, quick 128)")
    p.add_argument("--part-mib", type=int, default=16, help="multipart part size in MiB (default 16)")
    p.add_argument("--part-concurrency", type=int, default=4, help="parts uploaded at once (default 4)")
    p.add_argument("--small-seconds", type=float, help="seconds per small-request load (default 8, quick 3)")
    p.add_argument("--connections", type=int, default=64, help="keep-alive connections for 4 KiB loads")
    p.add_argument(
        "--rss-mib",
        type=str,
        help="comma-separated object sizes (MiB) for the peak-RSS runs (default 1,128,1024,5120; quick 1,128)",
    )
    p.add_argument("--workers", type=int, default=1, help="sealgate and nginx worker processes (default 1)")
    p.add_argument("--keyring-puts", type=int, help="PUTs per key-cache setting when counting keyring calls")
    p.add_argument("--boto3", action=argparse.BooleanOptionalAction, help="also time boto3 (default: full runs)")
    p.add_argument("--moto", action=argparse.BooleanOptionalAction, help="reference run against moto (default: full)")
    p.add_argument("--profile", action="store_true", help="py-spy sealgate during a PUT and a GET")
    p.add_argument("--time-limit", type=float, help="abort the run after this many seconds (default 1200, quick 240)")
    p.add_argument("--json", type=Path, default=HERE / "results.json", help="where the raw numbers go")
    a = p.parse_args(argv)
    q = a.quick
    rss = a.rss_mib or ("1,128" if q else "1,128,1024,5120")
    return Settings(
        quick=q,
        runs=a.runs or (1 if q else 3),
        size=(a.size_mib or (128 if q else 1024)) * MiB,
        part_size=a.part_mib * MiB,
        part_concurrency=a.part_concurrency,
        small_seconds=a.small_seconds or (3.0 if q else 8.0),
        small_warmup=0.5 if q else 1.0,
        connections=a.connections,
        keys_per_connection=16,
        rss_sizes=[int(x) * MiB for x in rss.split(",") if x.strip()],
        rss_multipart=100 * MiB,
        workers=a.workers,
        keyring_puts=a.keyring_puts or (300 if q else 1000),
        boto3=a.boto3 if a.boto3 is not None else not q,
        moto=a.moto if a.moto is not None else not q,
        profile=a.profile,
        time_limit=a.time_limit or (240.0 if q else 1200.0),
        json_path=a.json,
    )


def say(msg: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(msg, file=sys.stderr, flush=True)


def _sizeof(n: float) -> str:
    if n >= GiB and n % GiB == 0:
        return f"{n // GiB:.0f} GiB"
    if n >= MiB:
        return f"{n / MiB:.0f} MiB"
    return f"{n / 1024:.0f} KiB"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Bench:
    """One benchmark run: the servers, the targets and everything measured."""

    def __init__(self, s: Settings, servers: procs.Servers) -> None:
        self.s = s
        self.servers = servers
        self.results: dict[str, Any] = {"throughput": {}, "small": {}, "rss": {}, "notes": []}
        self.files: dict[str, Path] = {}
        self.sink: procs.Server
        self.sealgate: procs.Server
        self.nginx: procs.Server | None = None
        self.targets: dict[str, Target] = {}
        self.proxy_of: dict[str, procs.Server | None] = {}

    # --- setup --------------------------------------------------------------------------------

    def target_for(self, server: procs.Server, name: str) -> Target:
        """A client target for a server started by this run."""
        ca = None if server.scheme == "http" else str(self.files["ca"])
        return Target(name, server.endpoint, ca, procs.CLIENT_AKID, procs.CLIENT_SECRET)

    async def start(self) -> None:
        """Sink, sealgate and nginx, and a bucket on each path."""
        say("starting the in-memory S3 sink, sealgate and nginx on 127.0.0.1 ...")
        self.sink = self.servers.start_sink("fast")
        self.files = self.servers.prepare_sealgate_files()
        self.sealgate = self.servers.start_sealgate(self.files, self.sink.endpoint, workers=self.s.workers)
        procs.wait_healthy(self.sealgate, self.files["ca"])
        self.targets = {"direct": self.target_for(self.sink, "direct")}
        self.proxy_of = {"direct": None}
        if shutil.which("nginx") or Path("/usr/sbin/nginx").exists():
            self.nginx = self.servers.start_nginx(self.files, self.sink.port, workers=self.s.workers)
            self.targets["nginx"] = self.target_for(self.nginx, "nginx")
            self.proxy_of["nginx"] = self.nginx
        else:
            self.note("nginx is not installed (apt-get install -y nginx): its column is empty")
        self.targets["sealgate"] = self.target_for(self.sealgate, "sealgate")
        self.proxy_of["sealgate"] = self.sealgate
        for t in self.targets.values():
            async with client.session_for(t) as session:
                for bucket in (BUCKET_BIG, BUCKET_SMALL, "bench-check"):
                    await client.create_bucket(session, t, bucket)

    def note(self, text: str) -> None:
        """A remark printed under the table and kept in the JSON file."""
        self.results["notes"].append(text)
        say("note: " + text)

    # --- correctness first --------------------------------------------------------------------

    async def check(self) -> None:
        """Round-trip a few sizes and a multipart object through every target, byte for byte,
        and check that the sink holds ciphertext for what went through sealgate."""
        say("checking round trips (sizes 0 B to 12 MiB, single and multipart) ...")
        sizes = [0, 1, 65536 - 1, 65536, 65536 + 17, 3 * MiB + 5]
        for name, t in self.targets.items():
            async with client.session_for(t) as session:
                for size in sizes:
                    await client.put_object(session, t, "bench-check", f"obj-{size}", size)
                    _, body = await client.get_object(session, t, "bench-check", f"obj-{size}", keep=True)
                    if body != client.body_bytes(size):
                        raise RuntimeError(f"{name}: {size}-byte object did not round-trip")
                size = 2 * 5 * MiB + 12345
                await client.multipart_upload(session, t, "bench-check", "mp", size, 5 * MiB, 2)
                _, body = await client.get_object(session, t, "bench-check", "mp", keep=True)
                if body != client.body_bytes(size):
                    raise RuntimeError(f"{name}: multipart object did not round-trip")
        # The sink must hold ciphertext, longer than the plaintext, for what sealgate stored.
        size = 3 * MiB + 5
        sealed = self.targets["sealgate"]
        async with client.session_for(sealed) as session:
            await client.put_object(session, sealed, "bench-check", "sealed-probe", size)
        direct = self.targets["direct"]
        async with client.session_for(direct) as session:
            n, stored = await client.get_object(session, direct, "bench-check", "sealed-probe", keep=True)
        if n <= size or client.body_bytes(size)[:4096] in stored:
            raise RuntimeError("the sink holds plaintext for an object written through sealgate")

    # --- measuring one transfer ---------------------------------------------------------------

    async def timed(self, name: str, nbytes: int, op: Awaitable[Any]) -> dict[str, float]:
        """Await `op` (a coroutine not yet started); wall time, MB/s and the CPU seconds of proxy, sink and client."""
        proxy = self.proxy_of[name]
        p0 = procs.cpu_seconds(proxy.pid) if proxy else 0.0
        s0 = procs.cpu_seconds(self.sink.pid)
        m0 = procs.machine_busy_seconds()
        c0 = time.process_time()
        t0 = time.perf_counter()
        await op
        wall = time.perf_counter() - t0
        client_cpu = time.process_time() - c0
        sink_cpu = procs.cpu_seconds(self.sink.pid) - s0
        proxy_cpu = procs.cpu_seconds(proxy.pid) - p0 if proxy else 0.0
        out = {
            "seconds": round(wall, 4),
            "mb_s": round(nbytes / wall / 1e6, 1),
            "client_cpu_s": round(client_cpu, 3),
            "sink_cpu_s": round(sink_cpu, 3),
        }
        if proxy is not None:
            out["proxy_cpu_s"] = round(proxy_cpu, 3)
            out["proxy_cpu_s_per_gib"] = round(proxy_cpu / (nbytes / GiB), 3)
            proxy.check_alive()
        other = procs.machine_busy_seconds() - m0 - client_cpu - sink_cpu - proxy_cpu
        self.record_background(other, wall)
        return out

    def record_background(self, other_cpu: float, wall: float) -> None:
        """Keep the share of one core that processes outside this run used during a measurement."""
        if wall > 0:
            self.results.setdefault("background_cpu_share", []).append(round(max(0.0, other_cpu) / wall, 3))

    async def throughput_round(self, order: list[str], record: bool) -> None:
        """Single PUT, GET, multipart PUT and GET of the multipart object, for each target."""
        s = self.s
        for name in order:
            t = self.targets[name]
            async with client.session_for(t, connections=max(4, s.part_concurrency)) as session:
                figures = {
                    "put": await self.timed(name, s.size, client.put_object(session, t, BUCKET_BIG, "single", s.size)),
                    "get": await self.timed(name, s.size, client.get_object(session, t, BUCKET_BIG, "single")),
                }
                await client.delete_object(session, t, BUCKET_BIG, "single")
                figures["mpu_put"] = await self.timed(
                    name,
                    s.size,
                    client.multipart_upload(session, t, BUCKET_BIG, "multi", s.size, s.part_size, s.part_concurrency),
                )
                figures["mpu_get"] = await self.timed(name, s.size, client.get_object(session, t, BUCKET_BIG, "multi"))
                await client.delete_object(session, t, BUCKET_BIG, "multi")
            if record:
                for op, fig in figures.items():
                    self.results["throughput"].setdefault(op, {}).setdefault(name, []).append(fig)
            say(
                f"  {name:8s} PUT {figures['put']['mb_s']:7.0f}  GET {figures['get']['mb_s']:7.0f}  "
                f"multipart PUT {figures['mpu_put']['mb_s']:7.0f}  GET {figures['mpu_get']['mb_s']:7.0f} MB/s"
                + ("" if record else "  (warm-up, not counted)")
            )

    async def throughput(self) -> None:
        """A warm-up round, then `runs` rounds in rotating target order."""
        s = self.s
        say(f"throughput: {_sizeof(s.size)} bodies, {s.runs} round(s) after a warm-up ...")
        names = list(self.targets)
        await self.throughput_round(names, record=False)
        for r in range(s.runs):
            order = names[r % len(names) :] + names[: r % len(names)]
            await self.throughput_round(order, record=True)

    # --- small requests -----------------------------------------------------------------------

    async def small(self) -> None:
        """4 KiB PUTs and GETs at `connections` keep-alive connections, per target and round."""
        s = self.s
        say(f"small requests: 4 KiB PUT and GET, {s.connections} connections, {s.small_seconds:.0f}s each ...")
        keys = [f"small/{i:05d}" for i in range(s.connections * s.keys_per_connection)]
        body = client.body_bytes(SMALL_SIZE)
        names = list(self.targets)
        for name in names:
            await self._prefill(self.targets[name], keys)
        for r in range(s.runs):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                t = self.targets[name]
                for method in ("PUT", "GET"):
                    signed = client.presign_small(t, BUCKET_SMALL, method, keys, SMALL_SIZE)
                    proxy = self.proxy_of[name]
                    p0 = procs.cpu_seconds(proxy.pid) if proxy else 0.0
                    s0 = procs.cpu_seconds(self.sink.pid)
                    m0 = procs.machine_busy_seconds()
                    c0 = time.process_time()
                    w0 = time.perf_counter()
                    res = await client.small_load(
                        t,
                        method,
                        signed,
                        connections=s.connections,
                        seconds=s.small_seconds,
                        warmup=s.small_warmup,
                        body=body if method == "PUT" else b"",
                    )
                    wall = time.perf_counter() - w0
                    fig = res.summary()
                    cpu = procs.cpu_seconds(proxy.pid) - p0 if proxy else 0.0
                    if proxy is not None:
                        fig["proxy_cpu_us_per_req"] = round(cpu / max(1, res.requests + res.errors) * 1e6, 1)
                        proxy.check_alive()
                    ours = cpu + procs.cpu_seconds(self.sink.pid) - s0 + time.process_time() - c0
                    self.record_background(procs.machine_busy_seconds() - m0 - ours, wall)
                    self.results["small"].setdefault(method.lower(), {}).setdefault(name, []).append(fig)
                    say(
                        f"  {name:8s} {method:3s} {fig['req_per_s']:8.0f} req/s  p50 {fig['p50_ms']:6.2f} ms  "
                        f"p99 {fig['p99_ms']:6.2f} ms  errors {fig['errors']}"
                    )

    async def _prefill(self, t: Target, keys: list[str]) -> None:
        """Write every small key once, so that GETs find them."""
        body = client.body_bytes(SMALL_SIZE)
        sem = asyncio.Semaphore(32)
        async with client.session_for(t, connections=32) as session:

            async def one(key: str) -> None:
                async with sem:
                    url = t.url(BUCKET_SMALL, key)
                    headers = t.sign("PUT", url, {"Content-Length": str(SMALL_SIZE)})
                    async with session.put(URL(url, encoded=True), headers=headers, data=body) as resp:
                        if resp.status >= 300:
                            raise client.S3Failure(f"prefill {key} via {t.name}: HTTP {resp.status}")

            await asyncio.gather(*(one(k) for k in keys))

    # --- peak RSS -----------------------------------------------------------------------------

    async def rss(self) -> None:
        """Peak RSS of a fresh sealgate moving objects of growing size up and down, and a
        multipart upload; VmHWM is reset before each transfer."""
        s = self.s
        say(f"peak RSS: a fresh sealgate, objects of {', '.join(_sizeof(n) for n in s.rss_sizes)} ...")
        gate = self.servers.start_sealgate(self.files, self.sink.endpoint, workers=s.workers, tag="-rss")
        procs.wait_healthy(gate, self.files["ca"])
        t = self.target_for(gate, "sealgate")
        out: dict[str, Any] = {
            "idle_mib": round(procs.rss_mib(gate.pid), 1),
            "idle_workers": procs.memory_mib(gate.pid),
            "transfers": [],
        }
        if not procs.reset_peak_rss(gate.pid):
            self.note("could not reset VmHWM (clear_refs refused): peaks are cumulative over the RSS runs")
        async with client.session_for(t, connections=8) as session:
            await client.create_bucket(session, t, BUCKET_BIG)

            async def measure(label: str, size: int, op: Awaitable[Any]) -> None:
                procs.reset_peak_rss(gate.pid)
                before = procs.rss_mib(gate.pid)
                t0 = time.perf_counter()
                await op
                wall = time.perf_counter() - t0
                gate.check_alive()
                peak, peak_all = procs.peak_rss_mib(gate.pid)
                row = {
                    "what": label,
                    "size": size,
                    "rss_before_mib": round(before, 1),
                    "peak_mib": round(peak, 1),
                    "peak_all_workers_mib": round(peak_all, 1),
                    "mb_s": round(size / wall / 1e6, 1),
                }
                out["transfers"].append(row)
                say(f"  {label:28s} peak RSS {row['peak_mib']:6.1f} MiB  ({row['mb_s']:.0f} MB/s)")

            for size in s.rss_sizes:
                await measure(f"PUT {_sizeof(size)}", size, client.put_object(session, t, BUCKET_BIG, "rss", size))
                await measure(f"GET {_sizeof(size)}", size, client.get_object(session, t, BUCKET_BIG, "rss"))
                await client.delete_object(session, t, BUCKET_BIG, "rss")
            mp = s.rss_multipart
            await measure(
                f"multipart PUT {_sizeof(mp)} (8 MiB x4)",
                mp,
                client.multipart_upload(session, t, BUCKET_BIG, "rss-mp", mp, 8 * MiB, 4),
            )
            await measure(f"multipart GET {_sizeof(mp)}", mp, client.get_object(session, t, BUCKET_BIG, "rss-mp"))
            await client.delete_object(session, t, BUCKET_BIG, "rss-mp")
        out["max_peak_mib"] = max(r["peak_mib"] for r in out["transfers"])
        self.results["rss"] = out
        self.servers.stop(gate)

    # --- keyring calls ------------------------------------------------------------------------

    async def keyring_calls(self) -> None:
        """Keyring calls per 1,000 4 KiB PUTs, data-key cache off (the local default) and on,
        counted by sealgate's own /-/metrics (the local keyring has no server to count at)."""
        s = self.s
        say(f"keyring calls: {s.keyring_puts} PUTs with the data-key cache off and on ...")
        out: dict[str, Any] = {}
        for cache in (False, True):
            gate = self.servers.start_sealgate(
                self.files, self.sink.endpoint, key_cache=cache, tag="-cache" if cache else "-nocache"
            )
            procs.wait_healthy(gate, self.files["ca"])
            t = self.target_for(gate, "sealgate")
            keys = [f"kc/{i:05d}" for i in range(s.keyring_puts)]
            before = _keyring_calls(procs.fetch_metrics(gate, self.files["ca"]))
            await self._prefill(t, keys)
            after = _keyring_calls(procs.fetch_metrics(gate, self.files["ca"]))
            calls = after - before
            out["cache_on" if cache else "cache_off"] = {
                "puts": s.keyring_puts,
                "keyring_calls": calls,
                "per_1000_puts": round(calls * 1000 / s.keyring_puts, 1),
            }
            say(f"  cache {'on ' if cache else 'off'}: {calls:.0f} keyring calls for {s.keyring_puts} PUTs")
            self.servers.stop(gate)
        self.results["keyring_calls"] = out

    # --- boto3, moto, profile -----------------------------------------------------------------

    async def boto3_check(self) -> None:
        """The same PUT and GET with boto3 (its defaults: CRC32 trailer, aws-chunked), to show
        what the choice of client costs; compared with the lean client's median."""
        import boto3
        from botocore.config import Config as BotoConfig

        size = self.s.size
        say(f"boto3: {_sizeof(size)} put_object and get_object through sealgate and nginx ...")
        out: dict[str, Any] = {}
        block = client.body_bytes(MiB)

        class Body:
            """A readable file of `size` bytes that repeats one block without copying it."""

            def __init__(self) -> None:
                self.pos = 0

            def read(self, n: int = -1) -> bytes:
                left = size - self.pos
                n = left if n is None or n < 0 else min(n, left)
                start = self.pos % MiB
                take = min(n, MiB - start)
                self.pos += take
                return block[start : start + take]

            def seek(self, pos: int, whence: int = 0) -> int:
                self.pos = {0: pos, 1: self.pos + pos, 2: size + pos}[whence]
                return self.pos

            def tell(self) -> int:
                return self.pos

        for name in ("nginx", "sealgate"):
            if name not in self.targets:
                continue
            t = self.targets[name]
            s3 = boto3.client(
                "s3",
                endpoint_url=t.endpoint,
                verify=t.ca,
                aws_access_key_id=t.access_key_id,
                aws_secret_access_key=t.secret_access_key,
                region_name="us-east-1",
                config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
            )

            def put(client_s3: Any = s3) -> None:
                client_s3.put_object(Bucket=BUCKET_BIG, Key="boto3", Body=Body(), ContentLength=size)

            def get(client_s3: Any = s3) -> None:
                stream = client_s3.get_object(Bucket=BUCKET_BIG, Key="boto3")["Body"]
                while stream.read(MiB):
                    pass

            put_fig = await self.timed(name, size, asyncio.to_thread(put))
            get_fig = await self.timed(name, size, asyncio.to_thread(get)) if name == "sealgate" else None
            out[name] = {"put": put_fig, "get": get_fig}
            say(
                f"  boto3 via {name:8s} PUT {put_fig['mb_s']:7.0f} MB/s"
                + (f"  GET {get_fig['mb_s']:7.0f} MB/s" if get_fig else "")
            )
        if "nginx" in out:
            self.note(
                "boto3 via nginx: the sink does not decode aws-chunked bodies, so only boto3's upload "
                "through nginx is timed (the stored bytes keep the chunk framing)"
            )
        self.results["boto3"] = out

    async def moto_reference(self) -> None:
        """One PUT and GET against moto_server, direct and through sealgate, for reference: moto
        is far slower than the sink, which is why the throughput runs do not use it."""
        exe = shutil.which("moto_server")
        if exe is None:
            self.note("moto_server not installed (pip install -e '.[test]'): no moto reference run")
            return
        size = 64 * MiB
        say(f"moto reference: {_sizeof(size)} PUT and GET, direct and through sealgate ...")
        port = procs.free_port()
        moto = self.servers._spawn("moto", [exe, "-H", "127.0.0.1", "-p", str(port)], port)
        gate = self.servers.start_sealgate(self.files, moto.endpoint, tag="-moto")
        procs.wait_healthy(gate, self.files["ca"])
        out: dict[str, Any] = {"size": size}
        try:
            for name, server in (("direct", moto), ("sealgate", gate)):
                t = self.target_for(server, name)
                self.proxy_of[f"moto-{name}"] = gate if name == "sealgate" else None
                async with client.session_for(t) as session:
                    await client.create_bucket(session, t, "bench-moto")
                    out[name] = {
                        "put": await self.timed(
                            f"moto-{name}",
                            size,
                            client.put_object(session, t, "bench-moto", "m", size),
                        ),
                        "get": await self.timed(f"moto-{name}", size, client.get_object(session, t, "bench-moto", "m")),
                    }
                    await client.delete_object(session, t, "bench-moto", "m")
                say(f"  moto {name:8s} PUT {out[name]['put']['mb_s']:6.0f}  GET {out[name]['get']['mb_s']:6.0f} MB/s")
        finally:
            self.servers.stop(gate)
            self.servers.stop(moto)
        self.results["moto"] = out

    async def profile(self) -> None:
        """py-spy on the sealgate process during one PUT and one GET of the throughput size and
        a 4 KiB PUT load: collapsed stacks in the scratch directory, top frames in the JSON."""
        exe = shutil.which("py-spy")
        if exe is None:
            self.note("py-spy not installed (pip install py-spy): no profile")
            return
        say("profiling sealgate with py-spy (PUT, GET, 4 KiB PUTs) ...")
        t = self.targets["sealgate"]
        s = self.s
        keys = [f"small/{i:05d}" for i in range(s.connections * s.keys_per_connection)]
        out: dict[str, Any] = {}
        for op in ("put", "get", "small_put"):
            path = self.servers.workdir / f"profile-{op}.txt"
            argv = [exe, "record", "-p", str(self.sealgate.pid), "-r", "250", "-f", "raw", "-o", str(path)]
            spy = subprocess.Popen(argv + ["--native"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await asyncio.sleep(1.5)
            if op == "small_put":
                signed = client.presign_small(t, BUCKET_SMALL, "PUT", keys, SMALL_SIZE)
                await client.small_load(
                    t,
                    "PUT",
                    signed,
                    connections=s.connections,
                    seconds=s.small_seconds,
                    warmup=0,
                    body=client.body_bytes(SMALL_SIZE),
                )
            else:
                async with client.session_for(t) as session:
                    if op == "put":
                        await client.put_object(session, t, BUCKET_BIG, "profile", s.size)
                    else:
                        await client.get_object(session, t, BUCKET_BIG, "profile")
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(60)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(5)
            out[op] = summarize_profile(path)
            out[op]["file"] = str(path)
            top = ", ".join(f"{name} {pct}%" for name, pct in out[op].get("self_top", [])[:5])
            say(f"  {op}: {out[op]['samples']} samples; top self time: {top}")
        self.results["profile"] = out


def _keyring_calls(metrics: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("sealgate_keyring_calls_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def summarize_profile(path: Path, top: int = 20) -> dict[str, Any]:
    """Self time of the leaf frames and inclusive time of sealgate's own functions, as shares
    of all samples, from py-spy's collapsed-stack output."""
    leaf: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    if not path.exists():
        return {"samples": 0}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        leaf[_frame(frames[-1])] = leaf.get(_frame(frames[-1]), 0) + count
        for name in {_frame(f) for f in frames}:
            inclusive[name] = inclusive.get(name, 0) + count

    def share(d: dict[str, int]) -> list[tuple[str, float]]:
        return (
            [(k, round(100 * v / total, 1)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]] if total else []
        )

    ours = {k: v for k, v in inclusive.items() if "proxy/" in k}
    return {"samples": total, "self_top": share(leaf), "sealgate_inclusive_top": share(ours)}


def _frame(frame: str) -> str:
    # py-spy frames look like "function (path/to/file.py:123)"; drop the line number.
    return re.sub(r":\d+\)$", ")", frame.strip())


# --- the table -------------------------------------------------------------------------------


def medians(results: dict[str, Any]) -> dict[str, Any]:
    """Median of every figure over the rounds, keyed like the raw results."""
    med: dict[str, Any] = {"throughput": {}, "small": {}}
    for op, by_target in results["throughput"].items():
        med["throughput"][op] = {
            name: {k: _median([r[k] for r in runs]) for k in runs[0]} for name, runs in by_target.items()
        }
    for op, by_target in results["small"].items():
        med["small"][op] = {
            name: {k: _median([r[k] for r in runs if r[k] is not None]) for k in runs[0]}
            for name, runs in by_target.items()
        }
    return med


def _fmt(value: float | None, spec: str = ".0f") -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return format(value, spec)


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.2f}x"


def render_table(s: Settings, results: dict[str, Any], med: dict[str, Any]) -> str:
    """The human-readable summary of one run."""
    lines: list[str] = []
    w = lines.append
    size = _sizeof(s.size)
    w("")
    w("sealgate benchmark (loopback; backend = benchmarks/sink.py, an in-memory S3 sink used for throughput)")
    w(
        f"medians of {s.runs} round(s); MB/s = 10^6 bytes/s; direct = plain HTTP to the sink, "
        f"nginx and sealgate = TLS; {s.workers} worker(s) each"
    )
    w("")
    header = f"{'':40s}{'direct':>10s}{'nginx':>10s}{'sealgate':>10s}{'sg/nginx':>10s}{'sg/direct':>10s}"
    w(header)
    w("-" * len(header))
    labels = {
        "put": f"PUT {size} MB/s",
        "get": f"GET {size} MB/s",
        "mpu_put": f"multipart PUT {size} MB/s ({_sizeof(s.part_size)} x{s.part_concurrency})",
        "mpu_get": "GET of that multipart object MB/s",
    }
    tp = med["throughput"]
    for op, label in labels.items():
        row = tp.get(op, {})
        vals = {n: row.get(n, {}).get("mb_s") for n in ("direct", "nginx", "sealgate")}
        w(
            f"{label:40s}{_fmt(vals['direct']):>10s}{_fmt(vals['nginx']):>10s}{_fmt(vals['sealgate']):>10s}"
            f"{_ratio(vals['sealgate'], vals['nginx']):>10s}{_ratio(vals['sealgate'], vals['direct']):>10s}"
        )
    for op in ("put", "get"):
        row = tp.get(op, {})
        vals = {n: row.get(n, {}).get("proxy_cpu_s_per_gib") for n in ("nginx", "sealgate")}
        w(
            f"{'proxy CPU-s per GiB, ' + op.upper():40s}{'':>10s}{_fmt(vals['nginx'], '.2f'):>10s}"
            f"{_fmt(vals['sealgate'], '.2f'):>10s}{_ratio(vals['sealgate'], vals['nginx']):>10s}"
        )
    w("")
    sm = med["small"]
    for op in ("put", "get"):
        row = sm.get(op, {})
        for key, label, spec in (
            ("req_per_s", f"4 KiB {op.upper()} req/s ({s.connections} conns)", ".0f"),
            ("p50_ms", f"4 KiB {op.upper()} p50 ms", ".2f"),
            ("p99_ms", f"4 KiB {op.upper()} p99 ms", ".2f"),
            ("proxy_cpu_us_per_req", f"4 KiB {op.upper()} proxy CPU us/request", ".0f"),
        ):
            vals = {n: row.get(n, {}).get(key) for n in ("direct", "nginx", "sealgate")}
            ratio = _ratio(vals["sealgate"], vals["nginx"]) if key == "req_per_s" else ""
            ratio_d = _ratio(vals["sealgate"], vals["direct"]) if key == "req_per_s" else ""
            w(
                f"{label:40s}{_fmt(vals['direct'], spec):>10s}{_fmt(vals['nginx'], spec):>10s}"
                f"{_fmt(vals['sealgate'], spec):>10s}{ratio:>10s}{ratio_d:>10s}"
            )
    rss = results.get("rss") or {}
    if rss:
        w("")
        w(
            "peak RSS of a fresh sealgate process (VmHWM reset before each transfer; "
            f"idle {rss['idle_mib']} MiB; the largest worker when there are several):"
        )
        for row in rss["transfers"]:
            w(f"  {row['what']:38s}{row['peak_mib']:8.1f} MiB")
        idle = rss.get("idle_workers") or []
        if idle:
            w(
                "  idle, each worker: "
                + "; ".join(f"RSS {m['rss_mib']} PSS {m['pss_mib']} USS {m['uss_mib']} MiB" for m in idle)
                + " (PSS: shared pages divided among the workers; USS: the worker's own)"
            )
    kc = results.get("keyring_calls") or {}
    if kc:
        w("")
        w(
            "keyring calls per 1,000 PUTs (local keyring, sealgate's /-/metrics): "
            f"cache off {kc['cache_off']['per_1000_puts']:.0f}, cache on {kc['cache_on']['per_1000_puts']:.0f}"
        )
    b3 = results.get("boto3") or {}
    if b3:
        lean = tp.get("put", {})
        w("")
        w("client check, boto3 defaults (aws-chunked + CRC32 trailer) vs the lean client (UNSIGNED-PAYLOAD):")
        for name, fig in b3.items():
            lean_put = lean.get(name, {}).get("mb_s")
            line = f"  {name:9s} PUT boto3 {fig['put']['mb_s']:6.0f} MB/s vs lean {_fmt(lean_put)} MB/s"
            if fig.get("get"):
                lean_get = tp.get("get", {}).get(name, {}).get("mb_s")
                line += f"; GET boto3 {fig['get']['mb_s']:6.0f} vs lean {_fmt(lean_get)} MB/s"
            w(line)
    mo = results.get("moto") or {}
    if mo:
        w("")
        w(
            f"reference, moto_server as backend ({_sizeof(mo['size'])}): direct PUT {mo['direct']['put']['mb_s']:.0f} "
            f"GET {mo['direct']['get']['mb_s']:.0f} MB/s; through sealgate PUT {mo['sealgate']['put']['mb_s']:.0f} "
            f"GET {mo['sealgate']['get']['mb_s']:.0f} MB/s"
        )
    bg = results.get("background_cpu_share") or []
    if bg:
        w("")
        w(
            f"CPU used by processes outside this run while it measured: median {100 * _median(bg):.0f}% "
            f"of one core, max {100 * max(bg):.0f}%"
            + ("  << the machine was not idle: expect noisy figures" if _median(bg) > 0.1 else "")
        )
    w("")
    w("issue 5 targets:")
    for line in target_lines(s, results, med):
        w("  " + line)
    w("issue 22 targets (range reads: benchmarks/parquet_scan.py):")
    for line in target22_lines(s, results, med):
        w("  " + line)
    for note in results.get("notes", []):
        w("note: " + note)
    return "\n".join(lines)


def target_lines(s: Settings, results: dict[str, Any], med: dict[str, Any]) -> list[str]:
    """Each target of issue 5 with the figure that decides it."""
    out = []
    tp = med["throughput"]
    for op in ("put", "get"):
        sg = tp.get(op, {}).get("sealgate", {}).get("mb_s")
        ng = tp.get(op, {}).get("nginx", {}).get("mb_s")
        if sg and ng:
            ok = sg / ng >= TARGET_RATIO
            out.append(f"[{'met' if ok else 'NOT met'}] {op.upper()} >= 0.9x nginx: {sg / ng:.2f}x")
    rss = results.get("rss") or {}
    if rss:
        peak = rss["max_peak_mib"]
        biggest = _sizeof(max(s.rss_sizes)) if s.rss_sizes else "-"
        out.append(
            f"[{'met' if peak < TARGET_RSS_MIB else 'NOT met'}] peak RSS < 100 MiB up to {biggest}: {peak:.1f} MiB"
        )
    for op in ("put", "get"):
        fig = med["small"].get(op, {}).get("sealgate")
        if fig:
            ok = fig["req_per_s"] >= TARGET_SMALL_RATE and fig["p99_ms"] < TARGET_P99_MS
            out.append(
                f"[{'met' if ok else 'NOT met'}] 4 KiB {op.upper()} >= 3,000 req/s, p99 < 30 ms: "
                f"{fig['req_per_s']:.0f} req/s, p99 {fig['p99_ms']:.1f} ms with {s.workers} worker(s)"
                + (" (the target is for 2 workers)" if s.workers != 2 else "")
            )
    kc = results.get("keyring_calls") or {}
    if kc:
        per100 = kc["cache_on"]["per_1000_puts"] / 10
        out.append(f"[{'met' if per100 <= 1 else 'NOT met'}] <= 1 KMS call per 100 PUTs with the cache: {per100:.2f}")
    return out


def target22_lines(s: Settings, results: dict[str, Any], med: dict[str, Any]) -> list[str]:
    """Each target of issue 22 with the figure that decides it (the range-read targets are
    `benchmarks/parquet_scan.py`'s)."""
    out = []
    for op in ("put", "get"):
        fig = med["small"].get(op, {}).get("sealgate")
        if not fig:
            continue
        cpu = fig.get("proxy_cpu_us_per_req")
        ok = cpu is not None and cpu <= TARGET22_CPU_US
        out.append(f"[{'met' if ok else 'NOT met'}] 4 KiB {op.upper()} <= 150 us proxy CPU per request: {cpu:.0f} us")
        ok = fig["req_per_s"] >= TARGET22_RATE and fig["p99_ms"] < TARGET22_P99_MS and s.workers == 2
        out.append(
            f"[{'met' if ok else 'NOT met'}] 4 KiB {op.upper()} >= 8,000 req/s, p99 < 15 ms (2 workers, 64 conns): "
            f"{fig['req_per_s']:.0f} req/s, p99 {fig['p99_ms']:.1f} ms with {s.workers} worker(s), "
            f"{s.connections} conns"
        )
    rss = results.get("rss") or {}
    if rss:
        idle = max((m["rss_mib"] for m in rss.get("idle_workers") or []), default=rss["idle_mib"])
        met = "met" if idle <= TARGET22_IDLE_MIB else "NOT met"
        out.append(f"[{met}] idle RSS <= 45 MiB per worker: {idle:.1f} MiB")
        peak = max((row["peak_mib"] for row in rss["transfers"]), default=0.0)
        biggest = _sizeof(max(s.rss_sizes)) if s.rss_sizes else "-"
        out.append(
            f"[{'met' if peak <= TARGET22_PEAK_MIB else 'NOT met'}] peak RSS <= 80 MiB per worker "
            f"(objects up to {biggest}): {peak:.1f} MiB"
        )
    put = med["throughput"].get("put", {})
    sg, ng = put.get("sealgate", {}).get("mb_s"), put.get("nginx", {}).get("mb_s")
    if sg and ng:
        ok = sg / ng >= TARGET_RATIO and s.size >= 1024 * MiB
        out.append(
            f"[{'met' if ok else 'NOT met'}] PUT 1 GiB >= 0.9x nginx: {sg / ng:.2f}x with {_sizeof(s.size)} bodies"
        )
    return out


def environment() -> dict[str, Any]:
    """What the figures were measured on."""
    import aiohttp

    try:
        nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True, timeout=5).stderr.strip()
    except (OSError, subprocess.SubprocessError):
        nginx = None
    try:
        import uvloop

        uv: str | None = uvloop.__version__
    except ImportError:
        uv = None
    try:
        from proxy import __version__ as sg_version
    except ImportError:
        sg_version = None
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "uvloop": uv,
        "nginx": nginx,
        "sealgate": sg_version,
    }


async def run(s: Settings) -> dict[str, Any]:
    """Every phase, in order, within the time limit; the servers stop however it ends."""
    workdir = Path(tempfile.mkdtemp(prefix="sealgate-bench-"))
    started = time.monotonic()
    with procs.servers(workdir) as servers:
        bench = Bench(s, servers)
        try:
            async with asyncio.timeout(s.time_limit):
                await bench.start()
                await bench.check()
                await bench.throughput()
                await bench.small()
                await bench.rss()
                await bench.keyring_calls()
                if s.boto3:
                    await bench.boto3_check()
                if s.moto:
                    await bench.moto_reference()
                if s.profile:
                    await bench.profile()
        except TimeoutError:
            bench.note(f"stopped at the time limit ({s.time_limit:.0f}s): figures after that point are missing")
        results = bench.results
    results["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(s).items()}
    results["environment"] = environment()
    results["elapsed_seconds"] = round(time.monotonic() - started, 1)
    results["workdir"] = str(workdir)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write the JSON file."""
    s = parse_args(argv)
    try:
        import uvloop
    except ImportError:
        uvloop = None
    runner = uvloop.run if uvloop is not None else asyncio.run
    results = runner(run(s))
    med = medians(results)
    results["medians"] = med
    table = render_table(s, results, med)
    results["table"] = table.splitlines()
    print(table, flush=True)
    s.json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if s.profile:
        say(f"\nraw numbers: {s.json_path}; profiles and server logs kept in {results['workdir']}")
    else:
        say(f"\nraw numbers: {s.json_path}")
        with contextlib.suppress(OSError):
            shutil.rmtree(results["workdir"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
