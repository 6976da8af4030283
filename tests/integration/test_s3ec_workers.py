"""s3ec-v3 multipart uploads on a sealgate with several workers (issue 21 item 8): a part or a
Complete that reaches a worker other than the one holding the upload's GCM state is passed to
that worker over the workers' private channel (proxy/server/peers.py).

`sealgate serve` runs as a real subprocess with ``server.workers = 2``. Which worker serves a
connection is the kernel's choice (SO_REUSEPORT); a boto3 client keeps its connection, and the
slot in the id of an upload it creates says which worker that is, so each test holds one client
on each worker and knows where every request lands.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import signal
import socket
import stat
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from proxy.crypto.upload_id import S3EC_PREFIX, UploadId
from proxy.kms.keystore import LocalKeyStore
from tests.conftest import PASSPHRASE, backend_client, client_for, free_port, wait_port, write_config
from tests.integration.test_cli import SEALGATE
from tests.integration.test_s3ec_format import S3EncryptionClient, S3EncryptionClientConfig, _TestAesKeyring

MiB = 1024 * 1024
BUCKET = "s3ec-workers"
RULES = f'\n[[buckets]]\nname = "{BUCKET}"\nformat = "s3ec-v3"\n'
SOURCES = "s3ec-workers-sources"  # sealgate's format: what UploadPartCopy copies from
PASSED = "of an s3ec-v3 upload passed to worker"


@dataclass
class Gate:
    """A `sealgate serve` with two workers, and where its log goes."""

    proc: subprocess.Popen[bytes]
    url: str
    ca: Path
    log: Path
    dir: Path
    backend_url: str

    def client(self) -> Any:
        return client_for(self.url, self.ca)

    def passed(self, what: str = "") -> int:
        """How many requests a worker has passed to another so far (`what`: "PUT /part", ...)."""
        return sum(1 for line in self.log.read_text().splitlines() if PASSED in line and what in line)

    def logged(self, text: str) -> int:
        """How many log lines say `text`."""
        return sum(1 for line in self.log.read_text().splitlines() if text in line)

    def child(self) -> int:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(out) == 1, out
        return int(out[0])

    def pinned(self) -> dict[int, Any]:
        """A client (one kept connection) on each worker, by slot."""
        clients: dict[int, Any] = {}
        for _ in range(100):
            s3 = self.client()
            uid = s3.create_multipart_upload(Bucket=BUCKET, Key="probe")["UploadId"]
            s3.abort_multipart_upload(Bucket=BUCKET, Key="probe", UploadId=uid)
            slot = UploadId.decode(uid).slot
            assert slot in (0, 1), f"an s3ec-v3 id of a sealgate with two workers names one: {slot}"
            clients.setdefault(slot, s3)
            if len(clients) == 2:
                return clients
        raise AssertionError("every connection went to one worker")


@pytest.fixture(scope="module")
def gate(moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gate]:
    d = tmp_path_factory.mktemp("s3ec-workers")
    port = free_port()
    cfg = write_config(d, backend=moto_url, tls=tls_files, port=port, server_extra="workers = 2", extra=RULES)
    log = d / "sealgate.log"
    run = d / "run"  # where the workers' channel goes
    run.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(run)}
    with log.open("wb") as err:
        proc = subprocess.Popen([*SEALGATE, "serve", "--config", str(cfg)], cwd=d, stderr=err, env=env)
    g = Gate(proc, f"https://localhost:{port}", tls_files["ca"], log, d, moto_url)
    try:
        wait_port(port, 30)  # the other worker may start later: `pinned` waits for it
        backend_client(moto_url).create_bucket(Bucket=BUCKET)
        backend_client(moto_url).create_bucket(Bucket=SOURCES)
        yield g
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert list(run.iterdir()) == [], "the channel's directory outlived sealgate"


def _kek(g: Gate) -> bytes:
    current = LocalKeyStore.open(g.dir / "keyring", PASSPHRASE.encode()).current("default")
    assert current is not None
    return current[1]


def _official_read(g: Gate, key: str) -> bytes:
    """The official client's S3EC decrypt pipeline, straight from the backend."""
    config = S3EncryptionClientConfig(keyring=_TestAesKeyring(_kek(g)))
    client = S3EncryptionClient(wrapped_s3_client=backend_client(g.backend_url), config=config)
    body: bytes = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return body


def _eventually(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Whether `check` comes true within `seconds` (sealgate writes a loop iteration's log lines
    together, after the answer may have gone)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _code(err: pytest.ExceptionInfo[ClientError]) -> tuple[str, str, int]:
    e = err.value.response
    return e["Error"]["Code"], e["Error"].get("Message", ""), e["ResponseMetadata"]["HTTPStatusCode"]


def _stored_parts(g: Gate, key: str, uid: str) -> list[dict[str, Any]]:
    backend_id = UploadId.decode(uid).backend_id
    parts: list[dict[str, Any]] = (
        backend_client(g.backend_url).list_parts(Bucket=BUCKET, Key=key, UploadId=backend_id).get("Parts", [])
    )
    return parts


def _put(s3: Any, key: str, uid: str, number: int, data: bytes, **kw: Any) -> str:
    etag: str = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=uid, PartNumber=number, Body=data, **kw)["ETag"]
    return etag


@pytest.mark.parametrize("owner", [0, 1])
def test_parts_and_complete_reach_the_worker_holding_the_upload(gate: Gate, owner: int) -> None:
    clients = gate.pinned()
    mine, other = clients[owner], clients[1 - owner]
    key = f"two-workers/{owner}"
    uid = mine.create_multipart_upload(Bucket=BUCKET, Key=key, Metadata={"who": "w"})["UploadId"]
    assert UploadId.decode(uid).slot == owner
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB + 7), os.urandom(1000)]
    before = gate.passed("PUT /part"), gate.passed("POST /complete")
    etags = [
        _put(other, key, uid, 1, parts[0]),
        _put(mine, key, uid, 2, parts[1]),
        _put(other, key, uid, 3, parts[2]),
    ]
    done = [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]
    answer = other.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=uid, MultipartUpload={"Parts": done})
    assert answer["Key"] == key
    # Both workers served parts: two were passed to the owner, one it took itself.
    assert _eventually(
        lambda: (gate.passed("PUT /part"), gate.passed("POST /complete")) == (before[0] + 2, before[1] + 1)
    )
    data = b"".join(parts)
    got = gate.client().get_object(Bucket=BUCKET, Key=key)
    assert got["Body"].read() == data and got["Metadata"]["who"] == "w"
    assert _official_read(gate, key) == data  # a valid S3EC V3 object
    meta = backend_client(gate.backend_url).head_object(Bucket=BUCKET, Key=key)
    assert meta["Metadata"]["x-amz-c"] == "115" and meta["ContentLength"] == len(data) + 16
    # A retried Complete on the other worker answers as the first (the owner no longer holds it).
    again = mine.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=uid, MultipartUpload={"Parts": done})
    assert again["ETag"] == answer["ETag"]


def test_an_sdk_upload_over_several_connections(gate: Gate) -> None:
    """As a user runs it: boto3's transfer manager, parts from four threads over four
    connections, which the kernel spreads over both workers (parts that reach the owner early
    wait there for their turn)."""
    s3 = gate.client()  # a pool of up to 10 connections
    data = os.urandom(4 * 5 * MiB + 11)
    cfg = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=4)
    s3.upload_fileobj(io.BytesIO(data), BUCKET, "two-workers/sdk", Config=cfg)
    assert gate.client().get_object(Bucket=BUCKET, Key="two-workers/sdk")["Body"].read() == data
    assert _official_read(gate, "two-workers/sdk") == data


def test_a_part_that_fails_its_check_where_it_arrived_stores_nothing(gate: Gate) -> None:
    """The receiving worker holds back the last byte until the body has checked out: the owner,
    short of the part's length, stores nothing, and the part can be sent again."""
    clients = gate.pinned()
    key = "two-workers/bad-md5"
    uid = clients[1].create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    part = os.urandom(5 * MiB)
    wrong = base64.b64encode(hashlib.md5(b"other bytes").digest()).decode()
    with pytest.raises(ClientError) as err:
        _put(clients[0], key, uid, 1, part, ContentMD5=wrong)
    assert _code(err)[0] == "BadDigest"
    assert _stored_parts(gate, key, uid) == []
    with pytest.raises(ClientError) as err:
        _put(clients[0], key, uid, 1, b"", ContentMD5=wrong)  # an empty body is checked before it goes
    assert _code(err)[0] == "BadDigest"
    assert _stored_parts(gate, key, uid) == []
    etag = _put(clients[0], key, uid, 1, part)
    last = _put(clients[0], key, uid, 2, b"end")
    assert len(_stored_parts(gate, key, uid)) == 2
    done = [{"PartNumber": 1, "ETag": etag}, {"PartNumber": 2, "ETag": last}]
    clients[0].complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=uid, MultipartUpload={"Parts": done})
    assert gate.client().get_object(Bucket=BUCKET, Key=key)["Body"].read() == part + b"end"


def test_the_owners_refusals_reach_the_client(gate: Gate) -> None:
    clients = gate.pinned()
    key = "two-workers/order"
    uid = clients[0].create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    _put(clients[1], key, uid, 1, b"small")  # a small part is the last one
    with pytest.raises(ClientError) as err:
        _put(clients[1], key, uid, 2, b"more")
    assert _code(err)[0] == "InvalidPartOrder"
    with pytest.raises(ClientError) as err:
        _put(clients[1], key, uid, 1, b"other")
    assert _code(err)[0] == "InvalidRequest"  # an s3ec-v3 part is never re-encrypted differently
    clients[1].abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=uid)


def _with_slot(uid: str, slot: int | None) -> str:
    """`uid` with its slot changed (None: dropped), the mac left as it was."""
    b64 = uid[len(S3EC_PREFIX) :]
    raw = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
    body, mac = raw[:-18], raw[-16:]
    forged = body + (b"" if slot is None else struct.pack(">H", slot)) + mac
    return S3EC_PREFIX + base64.urlsafe_b64encode(forged).decode().rstrip("=")


def test_a_forged_slot_is_refused(gate: Gate) -> None:
    """The slot is under the id's mac: the worker it names checks it (and holds nothing of
    another's upload), so a changed one gets NoSuchUpload, and so does an unknown one."""
    clients = gate.pinned()
    key = "two-workers/forged"
    uid = clients[1].create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    for forged in (_with_slot(uid, 0), _with_slot(uid, 7), _with_slot(uid, None)):
        UploadId.decode(forged)  # well-formed: only the mac tells
        for s3 in clients.values():
            with pytest.raises(ClientError) as err:
                _put(s3, key, forged, 1, b"data")
            assert _code(err)[0] == "NoSuchUpload"
    assert _stored_parts(gate, key, uid) == []
    _put(clients[0], key, uid, 1, b"data")  # the real id still works
    assert len(_stored_parts(gate, key, uid)) == 1


def test_an_upload_whose_worker_died_is_no_such_upload(gate: Gate) -> None:
    clients = gate.pinned()
    key = "two-workers/killed"
    uid = clients[1].create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    _put(clients[0], key, uid, 1, os.urandom(5 * MiB))
    child = gate.child()
    os.kill(child, signal.SIGKILL)
    # Gone once reaped (the first process looks every second): a zombie leader's other threads
    # may still hold its sockets, and a part sent then meets a broken channel (503, see below).
    assert _eventually(lambda: not Path(f"/proc/{child}").exists(), 10)
    started = time.monotonic()
    with pytest.raises(ClientError) as err:
        _put(clients[0], key, uid, 2, b"next")
    code, message, status = _code(err)
    assert (code, status) == ("NoSuchUpload", 404) and "not known to this sealgate process" in message
    assert time.monotonic() - started < 5
    time.sleep(0.2)
    assert gate.logged("worker 1 did not answer") == 0  # refused at once: not a broken channel
    # The replacement takes the dead worker's slot, holds nothing of its uploads, and serves
    # new ones that the other worker passes parts to.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if gate.child() != child:
                break
        except AssertionError:
            pass
        time.sleep(0.2)
    clients = gate.pinned()
    with pytest.raises(ClientError) as err:
        _put(clients[0], key, uid, 2, b"next")
    assert _code(err)[0] == "NoSuchUpload"
    fresh = clients[1].create_multipart_upload(Bucket=BUCKET, Key="two-workers/after")["UploadId"]
    etag = _put(clients[0], "two-workers/after", fresh, 1, b"after")
    clients[0].complete_multipart_upload(
        Bucket=BUCKET,
        Key="two-workers/after",
        UploadId=fresh,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
    )
    assert gate.client().get_object(Bucket=BUCKET, Key="two-workers/after")["Body"].read() == b"after"


def test_a_copied_part_goes_to_the_worker_holding_the_upload(gate: Gate) -> None:
    clients = gate.pinned()
    source = os.urandom(3000)
    clients[0].put_object(Bucket=SOURCES, Key="source", Body=source)
    key = "two-workers/copied"
    uid = clients[1].create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    before = gate.passed("PUT /part")
    copied = clients[0].upload_part_copy(
        Bucket=BUCKET,
        Key=key,
        UploadId=uid,
        PartNumber=1,
        CopySource={"Bucket": SOURCES, "Key": "source"},
        CopySourceRange="bytes=1000-2999",
    )
    etag = copied["CopyPartResult"]["ETag"]
    clients[0].complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=uid, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]}
    )
    assert _eventually(lambda: gate.passed("PUT /part") == before + 1)
    assert gate.client().get_object(Bucket=BUCKET, Key=key)["Body"].read() == source[1000:]
    assert _official_read(gate, key) == source[1000:]


def test_the_channel_is_private(gate: Gate) -> None:
    """The workers' sockets are in a directory only sealgate's user may enter, and a request
    without the token (made before the workers started) is refused."""
    (directory,) = list((gate.dir / "run").iterdir())
    assert directory.name.startswith("sealgate-")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert sorted(p.name for p in directory.iterdir()) == ["w0.sock", "w1.sock"]
    for name in ("w0.sock", "w1.sock"):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(directory / name))
            sock.sendall(b"PUT /part HTTP/1.1\r\nHost: peer\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 403") and b"AccessDenied" in answer
