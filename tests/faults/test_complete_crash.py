"""CompleteMultipartUpload is crash-consistent on every backend (issue 24): a sealgate process
killed (SIGKILL) as it sends each backend request of a Complete leaves the object absent or
complete and readable, never listed but unreadable; the client's retry of the Complete then
succeeds, and `sealgate gc` finishes or cleans up what is left without deleting the last
manifest of a readable object. On moto (S3's multipart ETags) and on `rclone serve s3` (whose
HEAD gives an ETag no one can predict before the Complete)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from botocore.exceptions import BotoCoreError, ClientError

from proxy.tools.gc import GcReport, gc
from proxy.wiring import operator_gateway
from tests.conftest import (
    BACKEND_AKID,
    BACKEND_SECRET,
    SealgateThread,
    backend_client,
    client_for,
    free_port,
    wait_port,
    write_config,
)

MiB = 1024 * 1024

#: The backend requests of one Complete, in order (a gateway that does not sign).
STEPS = [
    ("GET", "bucket", "read the bucket's access settings"),  # authorization, before Complete's own
    ("GET", "key", "list the stored parts"),
    ("HEAD", ".sealgate/up/", "read the upload record"),
    ("GET", "bucket", "list the part records"),
    ("PUT", ".sealgate/pc/", "store the pending record"),
    ("POST", "key", "complete on the backend"),
    ("HEAD", "key", "learn the object's ETag"),
    ("PUT", ".sealgate/mp/", "store the manifest under it"),
    ("DELETE", ".sealgate/pc/", "drop the pending record"),
    ("DELETE", ".sealgate/up/", "drop the upload record"),
]


class KillingRelay:
    """An HTTP relay between a sealgate process and its backend. It forwards every request as
    it came (Host included, so a backend that checks signatures accepts them); once armed with
    `n`, it kills the sealgate process with SIGKILL when the n-th request into the bucket
    arrives, before forwarding it. It records the requests it saw while armed."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.kill_at: int | None = None
        self.victim: int | None = None
        self.seen: list[tuple[str, str]] = []
        self.bucket = ""
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._session: aiohttp.ClientSession | None = None
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        assert ready.wait(10)

    def arm(self, bucket: str, kill_at: int | None, victim: int) -> None:
        self.bucket, self.kill_at, self.victim, self.seen = bucket, kill_at, victim, []

    def disarm(self) -> None:
        self.kill_at = self.victim = None
        self.bucket = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.bucket and (request.path == f"/{self.bucket}" or request.path.startswith(f"/{self.bucket}/")):
            self.seen.append((request.method, request.path_qs))
            if self.kill_at is not None and len(self.seen) == self.kill_at and self.victim is not None:
                os.kill(self.victim, signal.SIGKILL)
                assert request.transport is not None
                request.transport.abort()
                return web.Response(status=500)
        body = await request.read()
        hop = ("content-length", "transfer-encoding", "connection")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in hop}
        assert self._session is not None
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as r:
            data = await r.read()
            out = {k: v for k, v in r.headers.items() if k.lower() not in hop}
            if request.method == "HEAD":
                head = web.StreamResponse(status=r.status, headers=out)
                if "Content-Length" in r.headers:
                    head.content_length = int(r.headers["Content-Length"])
                await head.prepare(request)
                await head.write_eof()
                return head
            return web.Response(status=r.status, body=data, headers=out)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def setup() -> None:
            self._session = aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=("Content-Type",))
            app = web.Application(client_max_size=1024**3)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()

        self.loop.run_until_complete(setup())
        ready.set()
        self.loop.run_forever()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Rig:
    """A backend, a `KillingRelay` in front of it, a sealgate process (the victim) that reaches
    the backend through the relay, and an in-process sealgate (the survivor) that reaches it
    directly. Both use one config but for the endpoint: any replica serves any request."""

    def __init__(self, backend: str, akid: str, secret: str, tls: dict[str, Path], d: Path) -> None:
        self.backend_url, self.akid, self.secret, self.dir = backend, akid, secret, d
        self.relay = KillingRelay(backend)
        self.ca = tls["ca"]
        survivor_dir, victim_dir = d / "survivor", d / "victim"
        survivor_dir.mkdir()
        victim_dir.mkdir()
        self.survivor_cfg = write_config(
            survivor_dir, backend=backend, tls=tls, port=free_port(), backend_akid=akid, backend_secret=secret
        )
        (victim_dir / "keyring").write_bytes((survivor_dir / "keyring").read_bytes())
        (victim_dir / "keyring").chmod(0o600)
        (victim_dir / "keyring.pass").write_text((survivor_dir / "keyring.pass").read_text())
        (victim_dir / "keyring.pass").chmod(0o600)
        self.victim_port = free_port()
        self.victim_cfg = write_config(
            victim_dir,
            backend=self.relay.url,
            tls=tls,
            port=self.victim_port,
            backend_akid=akid,
            backend_secret=secret,
            server_extra="workers = 1",  # one process: SIGKILL stops all of it
        )
        self.survivor = SealgateThread(self.survivor_cfg).start()
        self.proc: subprocess.Popen[bytes] | None = None

    def start_victim(self) -> subprocess.Popen[bytes]:
        log = open(self.dir / "victim.log", "ab")  # noqa: SIM115 - the process holds it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "serve", "--config", str(self.victim_cfg)],
            stdout=log,
            stderr=log,
        )
        wait_port(self.victim_port, 30)
        return self.proc

    def victim_client(self) -> Any:
        return client_for(f"https://localhost:{self.victim_port}", self.ca)  # no retries: it dies

    def client(self) -> Any:
        return client_for(self.survivor.url, self.ca)

    def backend(self) -> Any:
        return backend_client(self.backend_url, akid=self.akid, secret=self.secret)

    def gc(self, bucket: str) -> GcReport:
        """`sealgate gc --older-than 0m` on the bucket, as the operator runs it."""

        async def run() -> GcReport:
            async with operator_gateway(self.survivor.config) as gw:
                return await gc(gw, bucket, timedelta(0))

        report = asyncio.run(run())
        assert not report.pending_kept, report.pending_kept
        return report

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.survivor.stop()
        self.relay.loop.call_soon_threadsafe(self.relay.loop.stop)


@pytest.fixture(scope="module", params=["moto", "rclone"])
def rig(
    request: pytest.FixtureRequest, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rig]:
    if request.param == "moto":
        backend, akid, secret = request.getfixturevalue("moto_url"), BACKEND_AKID, BACKEND_SECRET
    else:
        backend, akid, secret = request.getfixturevalue("rclone_s3"), "rcloneaccess", "rclonesecret0123456789"
    r = Rig(backend, akid, secret, tls_files, tmp_path_factory.mktemp(f"crash-{request.param}"))
    yield r
    r.stop()


def _state(rig: Rig, bucket: str, key: str, whole: bytes) -> str:
    """'absent' or 'readable'; fails on anything else (an object listed but unreadable)."""
    s3 = rig.client()
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404, exc.response
        listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
        assert key not in listed
        return "absent"
    assert head["ContentLength"] == len(whole)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == whole
    tail = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={len(whole) - 10}-")["Body"].read()
    assert tail == whole[-10:]
    return "readable"


def _kind(path: str) -> str:
    """'key', 'bucket', or the kind of sealgate record ('.sealgate/pc/', ...) a backend path names."""
    path = path.split("?", 1)[0]
    _, _, record = path.partition("/.sealgate/")
    if record:
        return f".sealgate/{record[:3]}"
    return "key" if path.count("/") > 1 else "bucket"


def _records(rig: Rig, bucket: str) -> list[str]:
    listed = rig.backend().list_objects_v2(Bucket=bucket, Prefix=".sealgate/").get("Contents", [])
    return sorted(o["Key"].split("/")[1] for o in listed)


@pytest.mark.parametrize("order", ["retry-first", "gc-first"])
@pytest.mark.parametrize("kill_at", [*range(1, len(STEPS) + 1), None], ids=[s[2] for s in STEPS] + ["no kill"])
def test_complete_killed_at_each_step(rig: Rig, kill_at: int | None, order: str) -> None:
    bucket = f"crash-{kill_at or 0}-{order}"
    s3 = rig.client()
    s3.create_bucket(Bucket=bucket)
    parts = [os.urandom(5 * MiB), os.urandom(1000)]
    whole = b"".join(parts)
    uid = s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    done = [
        {"PartNumber": n, "ETag": s3.upload_part(Bucket=bucket, Key="k", UploadId=uid, PartNumber=n, Body=p)["ETag"]}
        for n, p in enumerate(parts, 1)
    ]
    victim = rig.start_victim()
    try:
        rig.relay.arm(bucket, kill_at, victim.pid)
        try:
            answer = rig.victim_client().complete_multipart_upload(
                Bucket=bucket, Key="k", UploadId=uid, MultipartUpload={"Parts": done}
            )
        except (BotoCoreError, ClientError):
            answer = None
        if kill_at is None:
            assert answer is not None
            # The steps this test kills at are the ones Complete takes.
            assert [(m, _kind(p)) for m, p in rig.relay.seen] == [(m, kind) for m, kind, _ in STEPS]
        else:
            assert answer is None
            assert victim.wait(10) == -signal.SIGKILL
    finally:
        rig.relay.disarm()
        if victim.poll() is None:
            victim.kill()
            victim.wait(10)

    # At once, with no repair by anyone: absent, or complete and readable.
    first = _state(rig, bucket, "k", whole)
    if kill_at is not None and kill_at > STEPS.index(("POST", "key", "complete on the backend")) + 1:
        assert first == "readable"  # the backend completed it: a read finishes it
    if order == "gc-first":
        rig.gc(bucket)
        after_gc = _state(rig, bucket, "k", whole)
        if first == "readable":
            assert after_gc == "readable"
    try:
        retried = s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=uid, MultipartUpload={"Parts": done})
    except ClientError as exc:
        # Only when gc aborted the upload, old enough for it (age limit 0), before the backend completed it.
        assert order == "gc-first" and first == "absent", exc.response
        assert exc.response["Error"]["Code"] == "NoSuchUpload"
        retried = None
    if retried is not None:
        assert _state(rig, bucket, "k", whole) == "readable"
        assert retried["ETag"] == s3.head_object(Bucket=bucket, Key="k")["ETag"]
    rig.gc(bucket)
    final = _state(rig, bucket, "k", whole)
    assert final == ("readable" if retried is not None else "absent")
    # Nothing left over: the manifest of the object, if there is one, and no other record.
    assert _records(rig, bucket) == (["mp"] if final == "readable" else [])
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
