"""Verify-first reads of S3EC objects share one memory budget per process
(``server.verify_first_memory_bytes``, proxy/server/budget.py), over real TLS against moto.

A verify-first read holds the object's whole plaintext until its GCM tag has checked. With a
budget of two objects, a third concurrent read waits a moment and gets 503 SlowDown while the
two are served whole; whatever way a read ends (served, client gone, client stalled and cut
off) its share comes back, so later reads are served. Objects larger than the budget are
treated as above the verify-first limit: refused, or streamed where the bucket opts in to
delayed authentication.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from proxy.server.budget import VERIFY_FIRST_BUDGET, MemoryBudget
from tests.conftest import CLIENT_AKID, CLIENT_SECRET, Stack, start_stack

MiB = 1024 * 1024
OBJECT = 6 * MiB  # a stalled reader's kernel buffers (4 MiB on Linux loopback) cannot take it all
BUDGET = 2 * OBJECT + MiB  # two at once, not three
LARGE = BUDGET + MiB  # more than the whole budget
STALL = 8  # server.body_stall_timeout_seconds
BUCKET = "s3ec-memory"
DELAYED = "s3ec-memory-delayed"

RULES = f"""
[[buckets]]
name = "{BUCKET}"
format = "s3ec-v3"

[[buckets]]
name = "{DELAYED}"
format = "s3ec-v3"
s3ec_delayed_authentication = true
"""


@pytest.fixture(scope="module")
def st(moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(
        tmp_path_factory.mktemp("s3ec-memory"),
        moto_url,
        tls_files,
        extra=RULES,
        server_extra=f"verify_first_memory_bytes = {BUDGET}\nbody_stall_timeout_seconds = {STALL}\n",
    )
    for name in (BUCKET, DELAYED):
        stack.client().create_bucket(Bucket=name)
    yield stack
    stack.gate.stop()


@pytest.fixture(scope="module")
def objects(st: Stack) -> dict[str, bytes]:
    """Five objects of OBJECT bytes, written as S3EC V3 through sealgate."""
    made = {f"obj-{i}": os.urandom(OBJECT) for i in range(5)}
    s3 = st.client()
    for key, data in made.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    assert st.backend().head_object(Bucket=BUCKET, Key="obj-0")["Metadata"]["x-amz-c"] == "115"  # S3EC V3
    return made


def budget_of(st: Stack) -> MemoryBudget:
    return st.gate.running.runner.app[VERIFY_FIRST_BUDGET]  # type: ignore[no-any-return]


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


class RawGet:
    """A presigned GET on its own TLS connection, read only when and as far as the test says
    (a small receive buffer, so the server's writes block as soon as it stops reading)."""

    def __init__(self, st: Stack, bucket: str, key: str) -> None:
        signer = boto3.client(
            "s3",
            endpoint_url=st.gate.url,
            aws_access_key_id=CLIENT_AKID,
            aws_secret_access_key=CLIENT_SECRET,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
        )
        url = urlsplit(signer.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}))
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        raw.settimeout(60)
        raw.connect(("127.0.0.1", st.gate.running.tls_port))
        ctx = ssl.create_default_context(cafile=str(st.ca_path))
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        self.sock.sendall(
            f"GET {url.path}?{url.query} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n\r\n".encode()
        )
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""

    def read_head(self) -> int:
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = self.sock.recv(4096)
            if not data:
                raise AssertionError(f"connection closed before the response head: {buf!r}")
            buf += data
        head, self.body = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        return self.status

    def read_body(self) -> bytes:
        """The rest of the body, as far as the connection carries it."""
        want = int(self.headers["content-length"])
        while len(self.body) < want:
            try:
                data = self.sock.recv(256 * 1024)
            except (ConnectionError, ssl.SSLError):
                break
            if not data:
                break
            self.body += data
        return self.body

    def reset(self) -> None:
        """Disconnect with a TCP reset."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def _error_code(exc: ClientError) -> tuple[str, int]:
    return exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"]


def test_reads_beyond_the_budget_get_slow_down_and_the_others_their_bytes(st: Stack, objects: dict[str, bytes]) -> None:
    budget = budget_of(st)
    assert budget.capacity == BUDGET and budget.in_use == 0
    keys = list(objects)
    readers = [RawGet(st, BUCKET, key) for key in keys]
    began = time.monotonic()

    def head(reader: RawGet) -> tuple[int, float]:
        return reader.read_head(), time.monotonic() - began

    try:
        with ThreadPoolExecutor(len(readers)) as pool:
            heads = list(pool.map(head, readers))
            # The two served hold their share while their clients do not read on.
            assert budget.in_use == 2 * OBJECT, budget.in_use
            statuses = [status for status, _ in heads]
            assert sorted(statuses) == [200, 200, 503, 503, 503], statuses
            for reader, (status, after) in zip(readers, heads, strict=True):
                if status == 503:
                    assert b"<Code>SlowDown</Code>" in reader.read_body()
                    assert 0.9 <= after < 8.0, f"SlowDown after {after:.2f}s"
            bodies = list(pool.map(lambda r: r.read_body() if r.status == 200 else None, readers))
        for key, reader, body in zip(keys, readers, bodies, strict=True):
            if reader.status == 200:
                assert body == objects[key]
    finally:
        for reader in readers:
            reader.close()
    wait_until(lambda: budget.in_use == 0, 10, "the budget returned after the reads were served")


def test_the_budget_is_returned_after_success(st: Stack, objects: dict[str, bytes]) -> None:
    budget = budget_of(st)
    s3 = st.client()
    for _ in range(3):  # more in sequence than the budget holds at once
        for key in ("obj-0", "obj-1"):
            assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == objects[key]
    part = s3.get_object(Bucket=BUCKET, Key="obj-2", Range="bytes=100-199")["Body"].read()
    assert part == objects["obj-2"][100:200]
    wait_until(lambda: budget.in_use == 0, 10, "the budget returned after served reads")


def test_the_budget_is_returned_when_the_client_disconnects_mid_read(st: Stack, objects: dict[str, bytes]) -> None:
    budget = budget_of(st)
    readers = [RawGet(st, BUCKET, key) for key in ("obj-0", "obj-1")]
    try:
        for reader in readers:
            assert reader.read_head() == 200
            reader.sock.recv(4096)
        assert budget.in_use == 2 * OBJECT
    finally:
        readers[0].reset()
        readers[1].close()
    wait_until(lambda: budget.in_use == 0, 2 * STALL, "the budget returned after the clients left")
    s3 = st.client()
    for key in ("obj-0", "obj-1", "obj-2"):
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == objects[key]
    assert budget.in_use == 0


def test_a_stalled_reader_is_cut_off_and_its_share_returned(st: Stack, objects: dict[str, bytes]) -> None:
    budget = budget_of(st)
    stalled = [RawGet(st, BUCKET, key) for key in ("obj-3", "obj-4")]
    try:
        wait_until(lambda: budget.in_use == 2 * OBJECT, 30, "both stalled readers hold their share")
        began = time.monotonic()
        with pytest.raises(ClientError) as refused:
            st.client().get_object(Bucket=BUCKET, Key="obj-0")["Body"].read()
        assert _error_code(refused.value) == ("SlowDown", 503)
        wait_until(lambda: budget.in_use == 0, STALL + 15, "the stalled readers cut off")
        assert time.monotonic() - began >= STALL - 3  # not before the stall timeout
        for reader in stalled:
            reader.read_head()
            assert len(reader.read_body()) < OBJECT  # the connection was cut, not ended cleanly
    finally:
        for reader in stalled:
            reader.close()
    assert st.client().get_object(Bucket=BUCKET, Key="obj-0")["Body"].read() == objects["obj-0"]
    assert budget.in_use == 0


def test_objects_larger_than_the_budget_are_above_the_verify_first_limit(st: Stack) -> None:
    budget = budget_of(st)
    data = os.urandom(LARGE)
    s3 = st.client()
    for bucket in (BUCKET, DELAYED):
        s3.put_object(Bucket=bucket, Key="large", Body=data)
    with pytest.raises(ClientError) as refused:
        s3.get_object(Bucket=BUCKET, Key="large")
    assert _error_code(refused.value) == ("InvalidObjectState", 403)
    # Delayed authentication streams: it holds nothing in the budget, so it is never SlowDown.
    holders = [RawGet(st, BUCKET, key) for key in ("obj-0", "obj-1")]
    try:
        wait_until(lambda: budget.in_use == 2 * OBJECT, 30, "two verify-first readers hold the budget")
        got: Any = s3.get_object(Bucket=DELAYED, Key="large")["Body"].read()
        assert got == data
    finally:
        for holder in holders:
            holder.close()
    wait_until(lambda: budget.in_use == 0, 2 * STALL, "the budget returned")
