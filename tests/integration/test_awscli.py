"""The aws cli (PyPI awscli) through sealgate: sync, ls, rm --recursive, presign, ranged get-object."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import urllib3

from tests.conftest import CLIENT_AKID, CLIENT_SECRET, Stack

pytestmark = pytest.mark.skipif(shutil.which("aws") is None, reason="aws cli not installed (pip install awscli)")


def aws(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": CLIENT_AKID,
        "AWS_SECRET_ACCESS_KEY": CLIENT_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CA_BUNDLE": str(stack.ca_path),
    }
    r = subprocess.run(
        ["aws", "--endpoint-url", stack.gate.url, *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_sync_ls_rm_presign_range(stack: Stack, bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    files = {"a.txt": b"alpha" * 100, "sub/b.bin": os.urandom(9 * 1024 * 1024), "empty": b""}
    for name, data in files.items():
        (src / name).write_bytes(data)
        # Files older than the upload, as files usually are: S3 timestamps have whole seconds.
        os.utime(src / name, (os.path.getmtime(src / name) - 3600,) * 2)
    first = aws(stack, "s3", "sync", str(src), f"s3://{bucket}/tree")
    assert first.stdout.count("upload:") == 3
    second = aws(stack, "s3", "sync", str(src), f"s3://{bucket}/tree")
    assert "upload:" not in second.stdout  # sizes and times match: nothing to send again
    listing = aws(stack, "s3", "ls", "--recursive", f"s3://{bucket}/tree/").stdout
    for name, data in files.items():
        assert f"{len(data)} tree/{name}" in " ".join(listing.split())
    dst = tmp_path / "dst"
    aws(stack, "s3", "sync", f"s3://{bucket}/tree", str(dst))
    assert {n: (dst / n).read_bytes() for n in files} == files

    out = tmp_path / "range.bin"
    aws(
        stack,
        "s3api",
        "get-object",
        "--bucket",
        bucket,
        "--key",
        "tree/sub/b.bin",
        "--range",
        "bytes=100-8388708",
        str(out),
    )
    assert out.read_bytes() == files["sub/b.bin"][100:8388709]

    url = aws(stack, "s3", "presign", f"s3://{bucket}/tree/a.txt", "--expires-in", "60").stdout.strip()
    r = urllib3.PoolManager(ca_certs=str(stack.ca_path)).request("GET", url)
    assert r.status == 200 and r.data == files["a.txt"]

    aws(stack, "s3", "rm", "--recursive", f"s3://{bucket}/tree")
    assert aws(stack, "s3", "ls", "--recursive", f"s3://{bucket}/").stdout.strip() == ""
