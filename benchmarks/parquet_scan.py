"""A pyarrow Parquet scan of a multipart object through sealgate, against the same scan straight
from the backend (issue 18 item 3, issue 22 item 2).

A ~70 MiB Parquet file (random data, many row groups) is uploaded in 8 MiB parts through
sealgate, and the same bytes straight to the backend (a moto_server started here). pyarrow's
S3FileSystem then reads it both ways, twice: `pq.read_table` (pyarrow's own coalesced range
reads, all columns), and one column's pages read in 256 KiB ranges with `read_at`. Printed: wall
time each way and their ratio, and the backend requests sealgate made per client request
(counted in moto's request log, divided by the requests the same scan makes straight to moto).
Targets: at most 1.5 backend requests per range, the scan within 2x
(issue 18) / 1.5x (issue 22) of the direct one.

    python benchmarks/parquet_scan.py [--mib 70] [--runs 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import procs  # noqa: E402

RANGE = 256 * 1024


def parquet_bytes(mib: int) -> bytes:
    """A Parquet file of about `mib` MiB of incompressible columns, in row groups of ~1 MiB."""
    rows = mib * 1024 * 1024 // 24
    rng = np.random.default_rng(7)
    table = pa.table({"a": rng.integers(0, 2**62, rows), "b": rng.random(rows), "c": rng.integers(0, 2**62, rows)})
    out = io.BytesIO()
    pq.write_table(table, out, row_group_size=max(1, rows // mib), compression="none")
    return out.getvalue()


def moto_requests(log: Path, *, settings: bool = False) -> int:
    """How many requests moto has logged so far: object requests, or (`settings`) sealgate's
    listings of a bucket's access settings, which every process repeats once per 5 s per bucket
    in use (so that every replica applies a changed bucket policy within that bound)."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if 'HTTP/1.1"' in line]
    return sum(1 for line in lines if ("prefix=.sealgate/bk/" in line) == settings)


def scan_table(fs: pafs.S3FileSystem, path: str) -> float:
    """Seconds for pyarrow's own read of the whole table (its coalesced range reads)."""
    start = time.perf_counter()
    pq.read_table(path, filesystem=fs)
    return time.perf_counter() - start


def scan_ranges(fs: pafs.S3FileSystem, path: str) -> tuple[float, int]:
    """(seconds, reads) for one column's pages read in 256 KiB ranges, row group by row group."""
    with fs.open_input_file(path) as f:
        meta = pq.ParquetFile(f).metadata
    start = time.perf_counter()
    ranges = 0
    with fs.open_input_file(path) as f:
        for g in range(meta.num_row_groups):
            col = meta.row_group(g).column(1)
            offset = col.data_page_offset
            end = offset + col.total_compressed_size
            while offset < end:
                f.read_at(min(RANGE, end - offset), offset)
                offset += RANGE
                ranges += 1
    return time.perf_counter() - start, ranges


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=70)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    data = parquet_bytes(args.mib)
    with TemporaryDirectory() as tmp, procs.servers(Path(tmp)) as servers:
        port = procs.free_port()
        moto = servers._spawn("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port)
        files = servers.prepare_sealgate_files()
        gate = servers.start_sealgate(files, moto.endpoint)
        procs.wait_healthy(gate, files["ca"])
        cfg = BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1})
        through = boto3.client(
            "s3",
            endpoint_url=gate.endpoint,
            verify=str(files["ca"]),
            region_name="us-east-1",
            config=cfg,
            aws_access_key_id=procs.CLIENT_AKID,
            aws_secret_access_key=procs.CLIENT_SECRET,
        )
        direct = boto3.client(
            "s3",
            endpoint_url=moto.endpoint,
            region_name="us-east-1",
            config=cfg,
            aws_access_key_id=procs.BACKEND_AKID,
            aws_secret_access_key=procs.BACKEND_SECRET,
        )
        parts = TransferConfig(multipart_threshold=8 * 1024**2, multipart_chunksize=8 * 1024**2)
        through.create_bucket(Bucket="sealed")
        through.upload_fileobj(io.BytesIO(data), "sealed", "scan.parquet", Config=parts)
        direct.create_bucket(Bucket="plain")
        direct.upload_fileobj(io.BytesIO(data), "plain", "scan.parquet", Config=parts)
        via = pafs.S3FileSystem(
            access_key=procs.CLIENT_AKID,
            secret_key=procs.CLIENT_SECRET,
            region="us-east-1",
            endpoint_override=f"127.0.0.1:{gate.port}",
            scheme="https",
            tls_ca_file_path=str(files["ca"]),
        )
        straight = pafs.S3FileSystem(
            access_key=procs.BACKEND_AKID,
            secret_key=procs.BACKEND_SECRET,
            region="us-east-1",
            endpoint_override=f"127.0.0.1:{port}",
            scheme="http",
        )
        results: dict[str, list[float]] = {
            "direct-table": [],
            "direct-ranges": [],
            "sealgate-table": [],
            "sealgate-ranges": [],
        }
        per_range: list[float] = []
        settings_reads: list[int] = []
        for _ in range(args.runs):
            results["direct-table"].append(scan_table(straight, "plain/scan.parquet"))
            # The direct scan's requests are exactly the client's (HEADs, footer and ranges).
            before = moto_requests(moto.log)
            results["direct-ranges"].append(scan_ranges(straight, "plain/scan.parquet")[0])
            asked = moto_requests(moto.log) - before
            results["sealgate-table"].append(scan_table(via, "sealed/scan.parquet"))
            before, refreshes = moto_requests(moto.log), moto_requests(moto.log, settings=True)
            seconds, _ = scan_ranges(via, "sealed/scan.parquet")
            per_range.append((moto_requests(moto.log) - before) / asked)
            settings_reads.append(moto_requests(moto.log, settings=True) - refreshes)
            results["sealgate-ranges"].append(seconds)
        med = {k: statistics.median(v) for k, v in results.items()}
        size = len(data) / 1024**2
        print(f"Parquet file: {size:.1f} MiB, multipart (8 MiB parts), {args.runs} runs, medians")
        print(f"{'':28} {'direct':>9} {'sealgate':>9} {'ratio':>7}")
        for what in ("table", "ranges"):
            d, s = med[f"direct-{what}"], med[f"sealgate-{what}"]
            label = "read_table (all columns)" if what == "table" else "one column, 256 KiB ranges"
            print(f"{label:28} {d:8.2f}s {s:8.2f}s {s / d:6.2f}x")
        print(f"backend requests per client request, first ranged scan (manifest, part headers): {per_range[0]:.2f}")
        warm = per_range[1:] or per_range
        bound = statistics.median(warm)
        print(f"backend requests per client request, later ranged scans (median): {bound:.2f}")
        print(f"besides: bucket-settings refreshes during each ranged scan (one per 5 s): {settings_reads}")
        ratio = med["sealgate-ranges"] / med["direct-ranges"]
        print(f"target <= 1.5 backend requests per range (issue 18): {'met' if per_range[0] <= 1.5 else 'not met'}")
        met = "met" if bound <= 1.0 else "not met"
        print(f"target <= 1 backend request per range after the first (issue 22): {met}")
        print(f"target range scan within 1.5x of direct: {'met' if ratio <= 1.5 else 'not met'} ({ratio:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
