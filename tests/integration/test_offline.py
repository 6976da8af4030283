"""`sealgate encrypt` / `sealgate decrypt`: files in the proxy's own format, with nothing mocked.

Offline ciphertext uploaded straight to the backend reads through a real sealgate; objects put
through sealgate and fetched straight from the backend decrypt offline; every kind of tampering
fails with status 1, one line, and no output file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner, Result

from proxy.crypto.format import Layout
from proxy.kms.keystore import LocalKeyStore
from proxy.kms.local import LocalKeyring
from proxy.tools.offline.commands import decrypt_cmd, encrypt_cmd
from proxy.tools.offline.encrypt import encrypt_file
from proxy.tools.offline.files import CHUNK_SIZE
from proxy.tools.offline.metadata import manifest_key, parse_metadata_document
from tests.conftest import PASSPHRASE, Stack, backend_client, start_stack

SIZES = [0, 1, 65536, 200000]
MiB = 1024 * 1024


def data_of(n: int) -> bytes:
    return os.urandom(n)


def keyring_args(stack: Stack) -> list[str]:
    return ["--keyring", str(stack.dir / "keyring"), "--passphrase-file", str(stack.dir / "keyring.pass")]


def config_args(stack: Stack) -> list[str]:
    return ["--config", str(stack.dir / "sealgate.toml")]


def invoke(cmd: Any, args: list[str]) -> Result:
    return CliRunner().invoke(cmd, args, catch_exceptions=False)


def encrypt(stack: Stack, bucket: str, key: str, src: Path, dst: Path, *extra: str) -> Result:
    return invoke(
        encrypt_cmd,
        [*keyring_args(stack), "--key", "default", "--bucket", bucket, "--object-key", key, *extra, str(src), str(dst)],
    )


def decrypt(stack: Stack, bucket: str, key: str, src: Path, dst: Path, *extra: str) -> Result:
    return invoke(
        decrypt_cmd, [*config_args(stack), "--bucket", bucket, "--object-key", key, *extra, str(src), str(dst)]
    )


def upload(backend: Any, bucket: str, key: str, body: Path, meta_json: Path) -> None:
    """What a user does with `sealgate encrypt`'s output: a plain PUT to the backend."""
    headers = json.loads(meta_json.read_text())
    assert all(name.startswith("x-amz-meta-") for name in headers)
    with open(body, "rb") as f:
        backend.put_object(
            Bucket=bucket, Key=key, Body=f, Metadata={k.removeprefix("x-amz-meta-"): v for k, v in headers.items()}
        )


def fetch(backend: Any, bucket: str, key: str, body: Path, meta_json: Path, form: str = "headers") -> dict[str, Any]:
    """What a user does without sealgate: GET the stored object and keep its metadata as JSON."""
    resp = backend.get_object(Bucket=bucket, Key=key)
    with open(body, "wb") as f:
        for chunk in resp["Body"].iter_chunks(CHUNK_SIZE):
            f.write(chunk)
    meta = resp["Metadata"]
    if form == "headers":
        doc: dict[str, Any] = {f"x-amz-meta-{k}": v for k, v in meta.items()}
    elif form == "boto3":
        doc = dict(meta)
    else:  # the shape `aws s3api get-object` prints
        doc = {"ContentLength": resp["ContentLength"], "ETag": resp["ETag"], "Metadata": meta}
    meta_json.write_text(json.dumps(doc))
    return dict(resp)


def assert_failed(result: Result, out: Path, *words: str) -> None:
    assert result.exit_code == 1, (result.exit_code, result.output)
    err = result.stderr.strip()
    assert err.startswith("sealgate: ") and "\n" not in err, err
    assert "Traceback" not in result.output
    for word in words:
        assert word in err, err
    assert not out.exists()
    assert not out.with_name(out.name + ".partial").exists()


# --- offline encrypt -> backend -> sealgate --------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_encrypted_offline_reads_through_sealgate(stack: Stack, bucket: str, tmp_path: Path, size: int) -> None:
    data = data_of(size)
    src, ct, meta = tmp_path / "plain", tmp_path / "ct", tmp_path / "ct.meta.json"
    src.write_bytes(data)
    result = encrypt(stack, bucket, "dir/obj", src, ct)
    assert result.exit_code == 0, result.output
    assert ct.stat().st_size == Layout().ciphertext_length(size)
    assert not (tmp_path / "ct.partial").exists()
    headers = json.loads(meta.read_text())
    assert headers["x-amz-meta-sg-v"] == "1" and headers["x-amz-meta-sg-layout"] == "single"
    assert headers["x-amz-meta-sg-kr"] == "local:default:1"
    if size >= 16:
        assert data[:16] not in ct.read_bytes()

    upload(stack.backend(), bucket, "dir/obj", ct, meta)
    s3 = stack.client()
    got = s3.get_object(Bucket=bucket, Key="dir/obj")
    assert got["Body"].read() == data
    # The plaintext MD5 sits in the digest slot: sealgate reports it as the ETag.
    assert got["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    assert s3.head_object(Bucket=bucket, Key="dir/obj")["ContentLength"] == size
    if size > 10:
        ranged = s3.get_object(Bucket=bucket, Key="dir/obj", Range="bytes=3-9")["Body"].read()
        assert ranged == data[3:10]


def test_encrypt_with_config_and_user_metadata(stack: Stack, bucket: str, tmp_path: Path) -> None:
    data = data_of(70_000)
    src, ct, meta = tmp_path / "report.csv", tmp_path / "ct", tmp_path / "headers.json"
    src.write_bytes(data)
    # No --object-key: the input file's name; no --key: the config's key for the bucket.
    args = [
        *config_args(stack),
        "--bucket",
        bucket,
        "--meta",
        "Owner=alice",
        "--meta",
        "x-amz-meta-dept=r&d",
        "--metadata-out",
        str(meta),
        str(src),
        str(ct),
    ]
    result = invoke(encrypt_cmd, args)
    assert result.exit_code == 0, result.output
    assert f"s3://{bucket}/report.csv" in result.stderr
    upload(stack.backend(), bucket, "report.csv", ct, meta)
    got = stack.client().get_object(Bucket=bucket, Key="report.csv")
    assert got["Body"].read() == data
    assert got["Metadata"] == {"owner": "alice", "dept": "r&d"}
    # The user metadata is sealed, never stored in the clear.
    raw_meta = stack.backend().head_object(Bucket=bucket, Key="report.csv")["Metadata"]
    assert "alice" not in json.dumps(raw_meta) and "owner" not in raw_meta


def test_offline_ciphertext_under_another_name_does_not_read(stack: Stack, bucket: str, tmp_path: Path) -> None:
    src, ct, meta = tmp_path / "p", tmp_path / "ct", tmp_path / "ct.meta.json"
    src.write_bytes(b"bound to its name")
    assert encrypt(stack, bucket, "right", src, ct).exit_code == 0
    upload(stack.backend(), bucket, "wrong", ct, meta)
    with pytest.raises(ClientError) as err:
        stack.client().get_object(Bucket=bucket, Key="wrong")["Body"].read()
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] >= 400


# --- sealgate -> backend -> offline decrypt --------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("form", ["headers", "boto3", "response"])
def test_put_through_sealgate_decrypts_offline(stack: Stack, bucket: str, tmp_path: Path, size: int, form: str) -> None:
    data = data_of(size)
    s3 = stack.client()
    s3.put_object(Bucket=bucket, Key="k/x y", Body=data, Metadata={"who": "me"})
    etag = s3.head_object(Bucket=bucket, Key="k/x y")["ETag"]
    ct, meta, out, um = tmp_path / "ct", tmp_path / "meta.json", tmp_path / "plain", tmp_path / "um.json"
    fetch(stack.backend(), bucket, "k/x y", ct, meta, form)
    result = decrypt(stack, bucket, "k/x y", ct, out, "--metadata", str(meta), "--user-metadata-out", str(um))
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == data
    assert out.stat().st_mode & 0o777 == 0o600
    assert json.loads(um.read_text()) == {"who": "me"}
    if form == "response" or "-" not in etag:
        # The ETag sealgate reports, recovered offline (opaque ones need the backend's ETag).
        assert f"ETag {etag}" in result.stderr


@pytest.mark.parametrize("size", [0, 200000])
def test_content_md5_etag_checked_offline(stack: Stack, bucket: str, tmp_path: Path, size: int) -> None:
    data = data_of(size)
    md5 = hashlib.md5(data)
    stack.client().put_object(Bucket=bucket, Key="m", Body=data, ContentMD5=base64.b64encode(md5.digest()).decode())
    ct, meta, out = tmp_path / "ct", tmp_path / "ct.meta.json", tmp_path / "plain"
    fetch(stack.backend(), bucket, "m", ct, meta)
    # --metadata defaults to IN.meta.json.
    result = decrypt(stack, bucket, "m", ct, out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == data and f'ETag "{md5.hexdigest()}"' in result.stderr


def test_keyring_file_instead_of_config(stack: Stack, bucket: str, tmp_path: Path) -> None:
    data = data_of(1000)
    stack.client().put_object(Bucket=bucket, Key="k", Body=data)
    ct, meta, out = tmp_path / "ct", tmp_path / "ct.meta.json", tmp_path / "out"
    fetch(stack.backend(), bucket, "k", ct, meta, "boto3")
    args = [*keyring_args(stack), "--bucket", bucket, "--object-key", "k", str(ct), str(out)]
    assert invoke(decrypt_cmd, args).exit_code == 0
    assert out.read_bytes() == data


# --- failures ----------------------------------------------------------------------------------


@pytest.fixture
def stored(stack: Stack, bucket: str, tmp_path: Path) -> Iterator[tuple[bytes, Path, Path]]:
    data = data_of(200000)
    stack.client().put_object(Bucket=bucket, Key="obj", Body=data)
    ct, meta = tmp_path / "ct", tmp_path / "ct.meta.json"
    fetch(stack.backend(), bucket, "obj", ct, meta)
    yield data, ct, meta


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 1]))


@pytest.mark.parametrize("offset", [0, 70_000, 200_079], ids=["first-segment", "middle", "last-tag"])
def test_tampered_ciphertext_fails_without_output(
    stack: Stack, bucket: str, stored: tuple[bytes, Path, Path], tmp_path: Path, offset: int
) -> None:
    _, ct, _ = stored
    _flip(ct, offset)
    out = tmp_path / "out"
    assert_failed(decrypt(stack, bucket, "obj", ct, out), out, "authentication failed", "segment")


def test_truncated_at_a_segment_boundary_fails(
    stack: Stack, bucket: str, stored: tuple[bytes, Path, Path], tmp_path: Path
) -> None:
    _, ct, meta = stored
    # Three whole sealed segments is a valid length for another plaintext: only the
    # last-segment flag in the nonce shows the end is missing.
    short = 3 * Layout().sealed_segment
    Layout().plaintext_length(short)
    with open(ct, "r+b") as f:
        f.truncate(short)
    out = tmp_path / "out"
    assert_failed(decrypt(stack, bucket, "obj", ct, out, "--metadata", str(meta)), out, "authentication failed")


def test_tampered_metadata_fails(stack: Stack, bucket: str, stored: tuple[bytes, Path, Path], tmp_path: Path) -> None:
    _, ct, meta = stored
    headers = json.loads(meta.read_text())
    sealed = bytearray(base64.b64decode(headers["x-amz-meta-sg-m"]))
    sealed[-1] ^= 1
    headers["x-amz-meta-sg-m"] = base64.b64encode(bytes(sealed)).decode()
    meta.write_text(json.dumps(headers))
    out = tmp_path / "out"
    assert_failed(decrypt(stack, bucket, "obj", ct, out), out, "sealed metadata")
    del headers["x-amz-meta-sg-salt"]
    meta.write_text(json.dumps(headers))
    assert_failed(decrypt(stack, bucket, "obj", ct, out), out, "sg-salt")
    meta.write_text(json.dumps({"x-amz-meta-other": "1"}))
    assert_failed(decrypt(stack, bucket, "obj", ct, out), out, "not a sealgate object")
    meta.write_text("not json")
    assert_failed(decrypt(stack, bucket, "obj", ct, out), out, "not valid JSON")


@pytest.mark.parametrize("which", ["bucket", "key"])
def test_wrong_name_fails(
    stack: Stack, bucket: str, stored: tuple[bytes, Path, Path], tmp_path: Path, which: str
) -> None:
    _, ct, _ = stored
    out = tmp_path / "out"
    b, k = (bucket + "-other", "obj") if which == "bucket" else (bucket, "obj2")
    assert_failed(decrypt(stack, b, k, ct, out), out, "does not unwrap", "--bucket")


def test_existing_output_is_kept(stack: Stack, bucket: str, stored: tuple[bytes, Path, Path], tmp_path: Path) -> None:
    data, ct, _ = stored
    out = tmp_path / "out"
    out.write_bytes(b"precious")
    result = decrypt(stack, bucket, "obj", ct, out)
    assert result.exit_code == 1 and "--force" in result.stderr
    assert out.read_bytes() == b"precious"
    _flip(ct, 100)
    # --force replaces OUT only on success: a failed run leaves the old file alone.
    assert decrypt(stack, bucket, "obj", ct, out, "--force").exit_code == 1
    assert out.read_bytes() == b"precious"
    _flip(ct, 100)
    assert decrypt(stack, bucket, "obj", ct, out, "--force").exit_code == 0
    assert out.read_bytes() == data


def test_usage_errors(stack: Stack, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.write_bytes(b"x")
    out = tmp_path / "out"
    no_keyring = invoke(encrypt_cmd, ["--bucket", "b", str(src), str(out)])
    assert no_keyring.exit_code == 2 and "--config" in no_keyring.output
    no_key = invoke(encrypt_cmd, [*keyring_args(stack), "--bucket", "b", str(src), str(out)])
    assert no_key.exit_code == 2 and "--key" in no_key.output
    both = invoke(encrypt_cmd, [*keyring_args(stack), *config_args(stack), "--bucket", "b", str(src), str(out)])
    assert both.exit_code == 2 and "--config and --keyring" in both.output
    shared = invoke(encrypt_cmd, ["--keyring", "s3://ring/.sealgate/keyring", "--bucket", "b", str(src), str(out)])
    assert shared.exit_code == 2 and "give --config FILE whose kms.keyring names it" in shared.output, shared.output
    unknown = encrypt(stack, "b", "k", src, out, "--key", "nope")
    assert_failed(unknown, out, "nope")
    assert not (tmp_path / "out.meta.json").exists()
    bad_meta = encrypt(stack, "b", "k", src, out, "--meta", "novalue")
    assert_failed(bad_meta, out, "NAME=VALUE")
    same = encrypt(stack, "b", "k", src, src, "--force")
    assert same.exit_code == 1 and "input file" in same.stderr and src.read_bytes() == b"x"
    wrong_pass = tmp_path / "pass"
    wrong_pass.write_text("not the passphrase")
    wrong_pass.chmod(0o600)
    args = [
        "--keyring",
        str(stack.dir / "keyring"),
        "--passphrase-file",
        str(wrong_pass),
        "--key",
        "default",
        "--bucket",
        "b",
        str(src),
        str(out),
    ]
    assert_failed(invoke(encrypt_cmd, args), out, "wrong passphrase")


# --- multipart ---------------------------------------------------------------------------------


@pytest.fixture
def multipart_object(stack: Stack, bucket: str, tmp_path: Path) -> tuple[bytes, Path, Path, Path, str]:
    parts = [os.urandom(5 * MiB), os.urandom(70_000)]
    s3 = stack.client()
    uid = s3.create_multipart_upload(Bucket=bucket, Key="mp/obj", Metadata={"kind": "mp"})["UploadId"]
    done = []
    for n, body in enumerate(parts, 1):
        r = s3.upload_part(Bucket=bucket, Key="mp/obj", UploadId=uid, PartNumber=n, Body=body)
        done.append({"PartNumber": n, "ETag": r["ETag"]})
    s3.complete_multipart_upload(Bucket=bucket, Key="mp/obj", UploadId=uid, MultipartUpload={"Parts": done})
    ct, meta, man = tmp_path / "ct", tmp_path / "meta.json", tmp_path / "manifest"
    resp = fetch(stack.backend(), bucket, "mp/obj", ct, meta, "response")
    backend_etag = resp["ETag"].strip('"')
    body = stack.backend().get_object(Bucket=bucket, Key=manifest_key("mp/obj", backend_etag))["Body"].read()
    man.write_bytes(body)
    return b"".join(parts), ct, meta, man, backend_etag


def test_multipart_decrypts_offline(
    stack: Stack, bucket: str, tmp_path: Path, multipart_object: tuple[bytes, Path, Path, Path, str]
) -> None:
    data, ct, meta, man, backend_etag = multipart_object
    out = tmp_path / "out"
    # The s3api-shaped metadata carries the backend ETag.
    result = decrypt(stack, bucket, "mp/obj", ct, out, "--metadata", str(meta), "--manifest", str(man))
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == data
    sealgate_etag = stack.client().head_object(Bucket=bucket, Key="mp/obj")["ETag"]
    assert f"ETag {sealgate_etag}" in result.stderr and "multipart layout" in result.stderr
    # Plain headers JSON and the ETag given on the command line.
    meta2 = tmp_path / "headers.json"
    meta2.write_text(
        json.dumps({f"x-amz-meta-{k}": v for k, v in parse_metadata_document(meta.read_bytes())[0].items()})
    )
    out2 = tmp_path / "out2"
    args = ["--metadata", str(meta2), "--manifest", str(man), "--backend-etag", f'"{backend_etag}"']
    assert decrypt(stack, bucket, "mp/obj", ct, out2, *args).exit_code == 0
    assert out2.read_bytes() == data


def test_multipart_failures(
    stack: Stack, bucket: str, tmp_path: Path, multipart_object: tuple[bytes, Path, Path, Path, str]
) -> None:
    _, ct, meta, man, backend_etag = multipart_object
    out = tmp_path / "out"
    # Without the manifest, the message names the backend key to fetch it from.
    assert_failed(
        decrypt(stack, bucket, "mp/obj", ct, out, "--metadata", str(meta)), out, manifest_key("mp/obj", backend_etag)
    )
    base = ["--metadata", str(meta), "--manifest", str(man)]
    assert_failed(
        decrypt(stack, bucket, "mp/obj", ct, out, *base, "--backend-etag", "0" * 32 + "-2"),
        out,
        "not the ones the manifest lists",
    )
    _flip(ct, 5 * MiB + 100)
    assert_failed(decrypt(stack, bucket, "mp/obj", ct, out, *base), out, "authentication failed")
    _flip(ct, 5 * MiB + 100)
    _flip(man, 20)
    assert_failed(decrypt(stack, bucket, "mp/obj", ct, out, *base), out, "authentication failed")


# --- aws-kms, with bucket-scoped (cached) data keys --------------------------------------------


def test_aws_kms_both_ways(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kms = boto3.client(
        "kms",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    key_id = kms.create_key(Description="sealgate offline test")["KeyMetadata"]["KeyId"]
    cfg = (
        f'provider = "aws-kms"\nregion = "us-east-1"\nendpoint = "{moto_url}"\ndefault_key = "{key_id}"\n'
        'access_key_id = "testing"\nsecret_access_key = "testing"\n'
    )
    (tmp_path / "gate").mkdir()
    st = start_stack(tmp_path / "gate", moto_url, tls_files, kms=cfg)
    try:
        s3, backend = st.client(), backend_client(moto_url)
        bucket = f"offline-kms-{os.getpid()}"
        s3.create_bucket(Bucket=bucket)
        data = data_of(150_000)
        s3.put_object(Bucket=bucket, Key="via-gate", Body=data)
        ct, meta, out = tmp_path / "ct", tmp_path / "ct.meta.json", tmp_path / "out"
        fetch(backend, bucket, "via-gate", ct, meta)
        # The cache is on by default for aws-kms: the data key is bucket-scoped, bound by name tag.
        assert json.loads(meta.read_text()).get("x-amz-meta-sg-scope") == "bucket"
        assert decrypt(st, bucket, "via-gate", ct, out).exit_code == 0
        assert out.read_bytes() == data
        # A bucket-scoped key unwraps under any key of the bucket: the name tag refuses it.
        out2 = tmp_path / "out2"
        assert_failed(decrypt(st, bucket, "elsewhere", ct, out2), out2, "another name")
        # Recovery without any sealgate config: KMS with the default credential chain, the
        # region taken from the key ARN in the metadata.
        for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        args = ["--aws-kms", "--kms-endpoint", moto_url, "--bucket", bucket, "--object-key", "via-gate"]
        out3 = tmp_path / "out3"
        result = invoke(decrypt_cmd, [*args, str(ct), str(out3)])
        assert result.exit_code == 0, result.output
        assert out3.read_bytes() == data

        src, ct2 = tmp_path / "src", tmp_path / "ct2"
        src.write_bytes(data)
        args = [*config_args(st), "--bucket", bucket, "--object-key", "offline", str(src), str(ct2)]
        assert invoke(encrypt_cmd, args).exit_code == 0
        headers = json.loads((tmp_path / "ct2.meta.json").read_text())
        assert headers["x-amz-meta-sg-kr"].startswith("arn:aws:kms:")
        upload(backend, bucket, "offline", ct2, tmp_path / "ct2.meta.json")
        assert s3.get_object(Bucket=bucket, Key="offline")["Body"].read() == data
    finally:
        st.gate.stop()


# --- the command as a process, memory, progress ------------------------------------------------


def test_round_trip_as_a_process(tmp_path: Path) -> None:
    keyring = tmp_path / "kr"
    pf = tmp_path / "kr.pass"
    pf.write_text(PASSPHRASE + "\n")
    pf.chmod(0o600)
    store = LocalKeyStore.create(keyring, PASSPHRASE.encode())
    store.create_key("k1")
    store.save()
    src = tmp_path / "in.bin"
    data = data_of(300_001)
    src.write_bytes(data)

    def run(cmd: str, *args: str) -> subprocess.CompletedProcess[str]:
        code = f"from proxy.tools.offline.commands import {cmd}; {cmd}(prog_name='sealgate')"
        return subprocess.run(
            [sys.executable, "-c", code, *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=Path(__file__).resolve().parents[2],
            stdin=subprocess.DEVNULL,
        )

    kr = ["--keyring", str(keyring), "--passphrase-file", str(pf)]
    enc = run("encrypt_cmd", *kr, "--key", "k1", "--bucket", "b", str(src), str(tmp_path / "enc"))
    assert enc.returncode == 0, enc.stderr
    assert enc.stdout == "" and "\r" not in enc.stderr  # no progress bar without a terminal
    dec = run("decrypt_cmd", *kr, "--bucket", "b", "--object-key", "in.bin", str(tmp_path / "enc"), str(tmp_path / "o"))
    assert dec.returncode == 0, dec.stderr
    assert (tmp_path / "o").read_bytes() == data
    _flip(tmp_path / "enc", 1000)
    bad = run("decrypt_cmd", *kr, "--bucket", "b", "--object-key", "in.bin", str(tmp_path / "enc"), str(tmp_path / "p"))
    assert bad.returncode == 1
    assert bad.stderr.startswith("sealgate: ") and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert not (tmp_path / "p").exists() and not (tmp_path / "p.partial").exists()


def test_memory_stays_bounded(stack: Stack, tmp_path: Path) -> None:
    src, ct = tmp_path / "big", tmp_path / "big.ct"
    with open(src, "wb") as f:
        for _ in range(24):
            f.write(os.urandom(MiB))
    keyring = LocalKeyring(LocalKeyStore.open(stack.dir / "keyring", PASSPHRASE.encode()))
    tracemalloc.start()
    try:
        encrypt_file(keyring, "default", "b", "big", src, ct, tmp_path / "big.json")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 6 * MiB, peak
    tracemalloc.start()
    try:
        result = invoke(
            decrypt_cmd,
            [
                *keyring_args(stack),
                "--bucket",
                "b",
                "--object-key",
                "big",
                "--metadata",
                str(tmp_path / "big.json"),
                str(ct),
                str(tmp_path / "back"),
            ],
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.exit_code == 0, result.output
    assert peak < 6 * MiB, peak
    assert hashlib.sha256((tmp_path / "back").read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()


def test_progress_bar_when_asked(stack: Stack, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.write_bytes(data_of(3 * MiB))
    result = encrypt(stack, "b", "k", src, tmp_path / "out", "--progress")
    assert result.exit_code == 0
    assert "\rencrypt:" in result.stderr and "/3.00M" in result.stderr
