"""Issue 19 item 2: slow uploads cannot take the backend connection pool from other clients.

Real sockets play a client that starts streamed uploads (above 256 KiB, so each holds a backend
connection while its body comes) and then trickles; another client, real boto3 without retries,
must still be served, or at worst told to slow down, never left hanging."""

from __future__ import annotations

import select
import time
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.conftest import backend_client
from tests.integration.hostile_support import VICTIM, VICTIM_AKID, VICTIM_SECRET, Gate, Trickle, gate


def trickle_for(uploads: list[Trickle], seconds: float, size: int = 4096, interval: float = 0.1) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for up in uploads:
            up.step(size)
        time.sleep(interval)


def victim(g: Gate) -> object:
    return g.client(timeout=5, akid=VICTIM_AKID, secret=VICTIM_SECRET)


def setup_bucket(g: Gate) -> str:
    bucket = f"pool-{uuid.uuid4().hex[:12]}"
    g.client().create_bucket(Bucket=bucket)
    g.client().put_object(Bucket=bucket, Key="small", Body=b"hello")
    return bucket


def test_one_client_cannot_hold_the_pool(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    backend = "pool_size = 8\npool_wait_seconds = 1\n"  # two streamed uploads per client by default
    with gate(tmp_path, moto_url, tls_files, backend=backend, extra=VICTIM) as g:
        bucket = setup_bucket(g)
        uploads = [Trickle(g, bucket, f"slow-{i}") for i in range(10)]
        try:
            trickle_for(uploads, 2.5)
            statuses = sorted(str(up.status) for up in uploads)
            assert statuses.count("503") == 8, statuses  # SlowDown: the client's share is taken
            assert all(b"<Code>SlowDown</Code>" in up.answer for up in uploads if up.status == 503)
            other = victim(g)
            t0 = time.monotonic()
            assert other.get_object(Bucket=bucket, Key="small")["Body"].read() == b"hello"  # type: ignore[attr-defined]
            other.put_object(Bucket=bucket, Key="streamed", Body=b"z" * (1024 * 1024))  # type: ignore[attr-defined]
            assert time.monotonic() - t0 < 4.0
            trickle_for(uploads, 0.3)
            assert sum(up.status is None for up in uploads) == 2  # the two streaming ones go on
        finally:
            for up in uploads:
                up.close()


def test_a_full_pool_answers_slow_down_in_bounded_time(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    backend = "pool_size = 2\npool_wait_seconds = 0.5\nstreamed_uploads_per_client = 2\n"
    with gate(tmp_path, moto_url, tls_files, backend=backend, extra=VICTIM) as g:
        bucket = setup_bucket(g)
        uploads = [Trickle(g, bucket, f"slow-{i}") for i in range(2)]
        try:
            trickle_for(uploads, 0.5)
            other = victim(g)
            t0 = time.monotonic()
            with pytest.raises(ClientError) as err:
                other.get_object(Bucket=bucket, Key="small")  # type: ignore[attr-defined]
            assert err.value.response["Error"]["Code"] == "SlowDown"
            assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
            assert time.monotonic() - t0 < 3.0
        finally:
            for up in uploads:
                up.close()
        # Once the uploads are gone (cut, nothing stored), the pool serves again: as soon as
        # sealgate has seen them go, which on a loaded machine may take a moment.
        deadline = time.monotonic() + 5
        while True:
            try:
                assert victim(g).get_object(Bucket=bucket, Key="small")["Body"].read() == b"hello"  # type: ignore[attr-defined]
                break
            except ClientError as exc:
                assert exc.response["Error"]["Code"] == "SlowDown" and time.monotonic() < deadline
                time.sleep(0.2)


def test_a_trickling_upload_is_cut_off(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    """Each piece comes well within the stall timeout, but far below the minimum rate."""
    server = "body_stall_timeout_seconds = 2\nbody_min_bytes_per_second = 65536\n"
    with gate(tmp_path, moto_url, tls_files, server) as g:
        bucket = setup_bucket(g)
        up = Trickle(g, bucket, "trickle")
        try:
            t0 = time.monotonic()
            while up.status is None and time.monotonic() - t0 < 8:
                up.step(2048)
                time.sleep(0.25)
            assert up.status == 400, up.answer[:300]
            assert b"<Code>RequestTimeout</Code>" in up.answer
            assert time.monotonic() - t0 < 6.0
        finally:
            up.close()
        with pytest.raises(ClientError):
            backend_client(moto_url).head_object(Bucket=bucket, Key="trickle")  # nothing stored


def test_a_trickling_form_upload_is_cut_off_too(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    """POST Object reads its form with the same pace as every upload (it had only the per-read
    stall timeout, so a form trickled just inside it held its backend connection for ever)."""
    server = "body_stall_timeout_seconds = 2\nbody_min_bytes_per_second = 65536\n"
    with gate(tmp_path, moto_url, tls_files, server) as g:
        bucket = setup_bucket(g)
        post = g.client().generate_presigned_post(bucket, "trickled-form")  # type: ignore[attr-defined]
        boundary = "sealgateformboundary"
        fields = "".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
            for k, v in post["fields"].items()
        )
        fields += f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
        length = len(fields) + 1024 * 1024 + len(f"\r\n--{boundary}--\r\n")
        head = (
            f"POST /{bucket} HTTP/1.1\r\nHost: localhost:{g.port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {length}\r\n\r\n{fields}"
        ).encode()
        up = Trickle(g, bucket, "trickled-form", length=1024 * 1024, head=head)
        try:
            t0 = time.monotonic()
            while up.status is None and time.monotonic() - t0 < 8:
                up.step(2048)
                time.sleep(0.25)
            assert up.status == 400, up.answer[:300]
            assert b"<Code>RequestTimeout</Code>" in up.answer
            assert time.monotonic() - t0 < 6.0
        finally:
            up.close()
        with pytest.raises(ClientError):
            backend_client(moto_url).head_object(Bucket=bucket, Key="trickled-form")  # nothing stored


def test_a_steady_slow_upload_above_the_rate_goes_through(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path
) -> None:
    server = "body_stall_timeout_seconds = 1\nbody_min_bytes_per_second = 16384\n"
    with gate(tmp_path, moto_url, tls_files, server) as g:
        bucket = setup_bucket(g)
        up = Trickle(g, bucket, "steady", length=400 * 1024, first=100 * 1024)
        try:
            t0 = time.monotonic()
            while up.sent < up.length - 1 and time.monotonic() - t0 < 10:  # 64 KiB/s for ~5 s
                assert not up.step(6554)
                time.sleep(0.1)
            up.sock.sendall(b"y")
            up.sock.settimeout(5)
            while b"\r\n\r\n" not in up.answer:
                up.answer += up.sock.recv(65536)
            assert up.status == 200, up.answer[:300]
        finally:
            up.close()


def test_the_default_pool_survives_260_slow_uploads(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    """The finding at its own scale: 260 slow uploads from one client took all 256 pooled
    connections, and a 5-byte GET from another client got no answer. Default settings."""
    with gate(tmp_path, moto_url, tls_files, extra=VICTIM) as g:
        bucket = setup_bucket(g)
        uploads = [Trickle(g, bucket, f"slow-{i}", first=1024) for i in range(260)]
        try:
            deadline = time.monotonic() + 3.0  # the default pool wait (2 s) and then some
            while time.monotonic() < deadline:
                readable, _, _ = select.select([up.sock for up in uploads if up.status is None], [], [], 0.2)
                for up in uploads:
                    if up.sock in readable:
                        up.step(0)
            t0 = time.monotonic()
            assert victim(g).get_object(Bucket=bucket, Key="small")["Body"].read() == b"hello"  # type: ignore[attr-defined]
            assert time.monotonic() - t0 < 5.0
            assert sum(up.status == 503 for up in uploads) == 260 - 64  # a quarter of the pool each
        finally:
            for up in uploads:
                up.close()
