"""Load test: many concurrent clients mixing PUT/GET/HEAD/LIST/DELETE against one sealgate.

    python -m benchmarks.load                  # 200 clients, 1 KiB-16 MiB, 120 s warm-up + 60 s
    python -m benchmarks.load --backend URL    # against another S3 backend (e.g. moto_server)
    python -m benchmarks.load --clients 40 --warmup-seconds 5 --seconds 10 --max-size 1MiB --backend URL

Every client owns its own keys, so it knows exactly what each of them must hold: every GET is
checked byte for byte (SHA-256) against what that client last wrote, every HEAD and LIST against
the sizes it wrote. sealgate runs as a subprocess; its RSS and open file descriptors are sampled
once a second. An uncounted warm-up comes first. The run fails (exit 1) on any error or corrupted
read (warm-up included), on RSS during the measured run above the warm-up's peak by more than
--rss-growth-mib, or on more open descriptors once the load has stopped than when the warm-up
ended. The default backend is benchmarks/sink.py (in memory). The figures go to stdout and, with
--json, to a file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.etree import ElementTree

import aiohttp
from yarl import URL

from benchmarks.client import Target
from benchmarks.procs import CLIENT_AKID, CLIENT_SECRET, descendants, rss_mib, servers, wait_healthy

BUCKET = "load"
OPS = (("PUT", 30), ("GET", 35), ("HEAD", 15), ("LIST", 10), ("DELETE", 10))


def parse_size(text: str) -> int:
    """``1KiB``, ``16MiB``, ``4096`` -> bytes."""
    m = re.fullmatch(r"(\d+)\s*(KiB|MiB|GiB|)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 1KiB, 16MiB)")
    return int(m.group(1)) * {"": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}[m.group(2)]


def body_for(seed: int, size: int) -> bytes:
    """The body a client writes for (seed, size): reproducible, so reads can be checked."""
    return random.Random(seed).randbytes(size)


@dataclass
class Stats:
    """What the clients did and what went wrong."""

    ops: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    bytes_up: int = 0
    bytes_down: int = 0

    def count(self, op: str) -> None:
        self.ops[op] = self.ops.get(op, 0) + 1


class Client:
    """One simulated user: its own prefix, its own keys, one keep-alive connection."""

    def __init__(self, index: int, target: Target, session: aiohttp.ClientSession, args: argparse.Namespace) -> None:
        self.index = index
        self.target = target
        self.session = session
        self.args = args
        self.rng = random.Random(index)
        self.prefix = f"c{index:04d}/"
        #: key -> (sha256 hex, size) of what this client last wrote there.
        self.objects: dict[str, tuple[str, int]] = {}

    def _size(self) -> int:
        lo, hi = self.args.min_size, self.args.max_size
        # Log-uniform: mostly small objects, some large ones, as real traffic.
        return int(min(hi, lo * (hi / lo) ** self.rng.random())) if hi > lo else lo

    async def _request(
        self, method: str, key: str | None, query: str = "", body: bytes | None = None
    ) -> tuple[int, bytes, Any]:
        url = self.target.url(BUCKET, quote(key, safe="/") if key else "", query)
        extra = {"Content-Length": str(len(body))} if body is not None else {}
        headers = self.target.sign(method, url, extra)
        async with self.session.request(method, URL(url, encoded=True), headers=headers, data=body) as resp:
            data = await resp.read()
            return resp.status, data, resp.headers

    async def step(self, stats: Stats) -> None:
        op = self.rng.choices([o for o, _ in OPS], [w for _, w in OPS])[0]
        if op != "PUT" and op != "LIST" and not self.objects:
            op = "PUT"
        key = self.rng.choice(sorted(self.objects)) if op in ("GET", "HEAD", "DELETE") else ""
        if op == "PUT":
            key = self.prefix + f"obj-{self.rng.randrange(8)}"
            size = self._size()
            body = body_for(self.rng.getrandbits(64), size)
            status, data, _ = await self._request("PUT", key, body=body)
            if status != 200:
                stats.errors.append(f"PUT {key}: HTTP {status} {data[:200]!r}")
                return
            self.objects[key] = (hashlib.sha256(body).hexdigest(), size)
            stats.bytes_up += size
        elif op == "GET":
            status, data, _ = await self._request("GET", key)
            if status != 200:
                stats.errors.append(f"GET {key}: HTTP {status} {data[:200]!r}")
                return
            digest, size = self.objects[key]
            if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
                stats.corrupt.append(f"GET {key}: {len(data)} bytes, expected {size}")
            stats.bytes_down += len(data)
        elif op == "HEAD":
            status, data, headers = await self._request("HEAD", key)
            if status != 200:
                stats.errors.append(f"HEAD {key}: HTTP {status}")
                return
            if int(headers.get("Content-Length", -1)) != self.objects[key][1]:
                stats.corrupt.append(f"HEAD {key}: Content-Length {headers.get('Content-Length')}")
        elif op == "LIST":
            status, data, _ = await self._request("GET", None, f"list-type=2&prefix={quote(self.prefix, safe='')}")
            if status != 200:
                stats.errors.append(f"LIST {self.prefix}: HTTP {status} {data[:200]!r}")
                return
            listed = _listing(data)
            expected = {k: size for k, (_, size) in self.objects.items()}
            if listed != expected:
                stats.corrupt.append(f"LIST {self.prefix}: {listed} != {expected}")
        else:
            status, data, _ = await self._request("DELETE", key)
            if status != 204:
                stats.errors.append(f"DELETE {key}: HTTP {status} {data[:200]!r}")
                return
            del self.objects[key]
        stats.count(op)

    async def run(self, stats: Stats, stop_at: float) -> None:
        while time.monotonic() < stop_at:
            try:
                await self.step(stats)
            except (aiohttp.ClientError, TimeoutError) as exc:
                stats.errors.append(f"client {self.index}: {exc.__class__.__name__}: {exc}")


def _listing(xml: bytes) -> dict[str, int]:
    out: dict[str, int] = {}
    root = ElementTree.fromstring(xml)
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == "Contents":
            fields = {c.tag.rsplit("}", 1)[-1]: c.text or "" for c in el}
            out[fields["Key"]] = int(fields["Size"])
    return out


def _fds(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="sealgate-load-"))
    with servers(workdir) as s:
        backend = args.backend
        if backend is None:
            backend = s.start_sink(etag="md5").endpoint
        files = s.prepare_sealgate_files()
        gate = s.start_sealgate(files, backend, workers=args.workers)
        wait_healthy(gate, files["ca"])
        pids = [gate.pid, *descendants(gate.pid)]
        target = Target("sealgate", gate.endpoint, str(files["ca"]), CLIENT_AKID, CLIENT_SECRET)
        connector = aiohttp.TCPConnector(limit=args.clients, ssl=target.ssl_context())
        timeout = aiohttp.ClientTimeout(total=300, sock_read=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
            url = target.url(BUCKET)
            async with session.put(
                URL(url, encoded=True), headers=target.sign("PUT", url, {"Content-Length": "0"}), data=b""
            ) as r:
                if r.status not in (200, 409):
                    raise RuntimeError(f"create bucket: HTTP {r.status}: {await r.text()}")
            clients = [Client(i, target, session, args) for i in range(args.clients)]
            # Warm-up, not counted: every client fills its key set and sealgate's buffers, pools
            # and allocator reach their working size (RSS climbs for the first minute or two
            # under 200 clients, then stays put).
            warm_stats = Stats()
            warm_rss = 0.0
            warm_end = time.monotonic() + args.warmup_seconds
            warm_task = asyncio.gather(*(c.run(warm_stats, warm_end) for c in clients))
            while time.monotonic() < warm_end:
                await asyncio.sleep(1.0)
                warm_rss = max(warm_rss, max(rss_mib(p) for p in pids))
            await warm_task
            warm_fds = _fds(pids)
            stats = Stats()
            stats.errors.extend(f"warm-up: {e}" for e in warm_stats.errors)
            stats.corrupt.extend(f"warm-up: {e}" for e in warm_stats.corrupt)
            start = time.monotonic()
            stop_at = start + args.seconds
            samples: list[tuple[float, float, int]] = []

            async def sample() -> None:
                while time.monotonic() < stop_at:
                    now = time.monotonic()
                    samples.append((round(now - start, 1), max(rss_mib(p) for p in pids), _fds(pids)))
                    await asyncio.sleep(1.0)

            sampler = asyncio.create_task(sample())
            await asyncio.gather(*(c.run(stats, stop_at) for c in clients))
            await sampler
            elapsed = time.monotonic() - start
        await asyncio.sleep(1.0)  # let sealgate close what the clients left
        after_fds = _fds(pids)
        gate.check_alive()
    total_ops = sum(stats.ops.values())
    result = {
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "workers": args.workers,
        "sizes": [args.min_size, args.max_size],
        "backend": args.backend or "benchmarks/sink.py (in-memory)",
        "ops": stats.ops,
        "ops_per_second": round(total_ops / elapsed, 1),
        "mb_up": round(stats.bytes_up / 1e6, 1),
        "mb_down": round(stats.bytes_down / 1e6, 1),
        "errors": len(stats.errors),
        "corrupt_reads": len(stats.corrupt),
        "first_errors": (stats.errors + stats.corrupt)[:10],
        "warmup_seconds": args.warmup_seconds,
        "rss_mib_max_during_warmup": round(warm_rss, 1),
        "rss_mib_max_after_warmup": round(max((r for _, r, _ in samples), default=warm_rss), 1),
        "fds_after_warmup": warm_fds,
        "fds_after_load": after_fds,
        "samples": samples,
    }
    growth = result["rss_mib_max_after_warmup"] - warm_rss
    problems = []
    if total_ops == 0:
        problems.append("no operation completed")
    if stats.errors:
        problems.append(f"{len(stats.errors)} errors")
    if stats.corrupt:
        problems.append(f"{len(stats.corrupt)} corrupted reads")
    if growth > args.rss_growth_mib:
        problems.append(f"RSS grew {growth:.1f} MiB after warm-up (limit {args.rss_growth_mib})")
    if after_fds > warm_fds:
        problems.append(f"open descriptors grew from {warm_fds} to {after_fds}")
    result["problems"] = problems
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--min-size", type=parse_size, default=parse_size("1KiB"))
    p.add_argument("--max-size", type=parse_size, default=parse_size("16MiB"))
    p.add_argument("--backend", help="S3 endpoint (default: start benchmarks/sink.py)")
    p.add_argument("--workers", type=int, default=1, help="sealgate server.workers")
    p.add_argument("--warmup-seconds", type=float, default=120.0, help="uncounted load before the measured run")
    p.add_argument(
        "--rss-growth-mib", type=float, default=20.0, help="allowed RSS above the warm-up's peak during the run"
    )
    p.add_argument("--json", type=Path, help="write the result here")
    args = p.parse_args(argv)
    result = asyncio.run(run(args))
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if result["problems"]:
        print("FAILED: " + "; ".join(result["problems"]), file=sys.stderr)
        return 1
    print("OK: no errors, no corrupted reads, RSS and descriptors flat after warm-up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
