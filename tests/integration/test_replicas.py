"""Stateless replicas: one multipart upload served by two sealgate processes in turn."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CLIENT_AKID, CLIENT_SECRET, SealgateThread, client_for, free_port, write_config

MiB = 1024 * 1024


def test_upload_alternating_between_two_replicas(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    cfg = write_config(tmp_path, backend=moto_url, tls=tls_files, port=free_port())
    a = SealgateThread(cfg).start()
    other = cfg.with_name("other.toml")
    other.write_text(cfg.read_text().replace(f":{a.running.tls_port}", f":{free_port()}"))
    b = SealgateThread(other).start()
    try:
        sa, sb = client_for(a.url, tls_files["ca"]), client_for(b.url, tls_files["ca"])
        sa.create_bucket(Bucket="replicas")
        uid = sa.create_multipart_upload(Bucket="replicas", Key="k")["UploadId"]
        parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(10)]
        done = []
        for n, data in enumerate(parts, 1):
            client = sa if n % 2 else sb
            etag = client.upload_part(Bucket="replicas", Key="k", UploadId=uid, PartNumber=n, Body=data)["ETag"]
            done.append({"PartNumber": n, "ETag": etag})
        sb.complete_multipart_upload(Bucket="replicas", Key="k", UploadId=uid, MultipartUpload={"Parts": done})
        whole = b"".join(parts)
        assert sa.get_object(Bucket="replicas", Key="k")["Body"].read() == whole
        assert (
            sb.get_object(Bucket="replicas", Key="k", Range="bytes=5242870-5242890")["Body"].read()
            == whole[5242870:5242891]
        )
    finally:
        a.stop()
        b.stop()


@pytest.mark.skipif(shutil.which("aws") is None, reason="aws cli not installed (pip install awscli)")
def test_aws_cli_cp_100mib(stack, bucket: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    with open(src, "wb") as f:
        for _ in range(100):
            f.write(os.urandom(MiB))
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": CLIENT_AKID,
        "AWS_SECRET_ACCESS_KEY": CLIENT_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CA_BUNDLE": str(stack.ca_path),
    }
    base = ["aws", "--endpoint-url", stack.gate.url, "s3"]
    up = subprocess.run([*base, "cp", str(src), f"s3://{bucket}/big.bin"], env=env, capture_output=True, text=True)
    assert up.returncode == 0, up.stderr
    down = subprocess.run([*base, "cp", f"s3://{bucket}/big.bin", str(dst)], env=env, capture_output=True, text=True)
    assert down.returncode == 0, down.stderr
    assert src.read_bytes() == dst.read_bytes()
    ls = subprocess.run([*base, "ls", f"s3://{bucket}/"], env=env, capture_output=True, text=True)
    assert f"{100 * MiB} big.bin" in ls.stdout
