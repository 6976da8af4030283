"""Range reads of multipart objects cost about one backend request each once a read has opened
the object (issue 18 part 3, issue 22 target 2), and an object replaced on the backend is never
read through what was cached of the old one."""

from __future__ import annotations

import os
from pathlib import Path

from aiohttp import web

from tests.conftest import multipart_put
from tests.faults.test_faults import relayed

MiB = 1024 * 1024


def test_a_range_scan_costs_one_backend_request_per_range(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    seen: list[str] = []

    async def count(request: web.Request) -> None:
        seen.append(f"{request.method} {request.path_qs}")
        return None

    with relayed(moto_url, tls_files, tmp_path) as (relay, st):
        s3 = st.client()
        s3.create_bucket(Bucket="scan")
        body = multipart_put(s3, "scan", "table.parquet", [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(MiB)])
        relay.before = count
        size, step, ranges = len(body), 256 * 1024, 0
        for start in range(0, size, step):
            end = min(start + step, size) - 1
            got = s3.get_object(Bucket="scan", Key="table.parquet", Range=f"bytes={start}-{end}")["Body"].read()
            assert got == body[start : end + 1]
            ranges += 1
        per_range = len(seen) / ranges
        assert per_range <= 1.5, (per_range, seen[:12])

        # Replaced on the backend (through sealgate, as another replica would): never stale.
        seen.clear()
        other = multipart_put(s3, "scan", "table.parquet", [os.urandom(5 * MiB), os.urandom(2 * MiB)])
        got = s3.get_object(Bucket="scan", Key="table.parquet", Range="bytes=6000000-6000999")["Body"].read()
        assert got == other[6000000:6001000]
        tail = s3.get_object(Bucket="scan", Key="table.parquet", Range="bytes=-100")["Body"].read()
        assert tail == other[-100:]
        relay.before = None


def test_a_head_between_range_reads_costs_nothing_more(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    """pyarrow opens a file with a HEAD before its range reads: once the object was read, the
    HEAD is one backend HEAD (no manifest fetch) and the ranges stay at one request each (the
    HEAD used to drop the part headers already read, sending each range the long way: 3)."""
    seen: list[str] = []

    async def count(request: web.Request) -> None:
        seen.append(f"{request.method} {request.path_qs}")
        return None

    with relayed(moto_url, tls_files, tmp_path) as (relay, st):
        s3 = st.client()
        s3.create_bucket(Bucket="scan")
        body = multipart_put(s3, "scan", "cols.parquet", [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(MiB)])
        ranges = [(6 * MiB + 1000, 6 * MiB + 300_000), (2 * MiB + 7, 2 * MiB + 200_000)]

        def scan() -> None:
            assert s3.head_object(Bucket="scan", Key="cols.parquet")["ContentLength"] == len(body)
            for start, end in ranges:
                got = s3.get_object(Bucket="scan", Key="cols.parquet", Range=f"bytes={start}-{end}")["Body"].read()
                assert got == body[start : end + 1]

        scan()  # opens the manifest, reads both parts' headers
        relay.before = count
        scan()
        relay.before = None
        assert len(seen) == 1 + len(ranges), seen
        assert seen[0].startswith("HEAD ")
