"""Multipart uploads through sealgate: real clients, any replica, any part size, tampering caught."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from proxy.crypto.upload_id import UploadId
from tests.conftest import Stack

MiB = 1024 * 1024


def pattern(n: int) -> bytes:
    unit = b"MULTIPART-PLAINTEXT-"
    return (unit * (n // len(unit) + 1))[:n]


def test_upload_file_download_file(stack: Stack, bucket: str, tmp_path: Path) -> None:
    data = os.urandom(50 * MiB) + pattern(50 * MiB + 5)  # 100 MiB and 5 bytes: 13 parts of 8 MiB
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(data)
    s3 = stack.client()
    s3.upload_file(str(src), bucket, "big", Config=TransferConfig(multipart_threshold=8 * MiB))
    s3.download_file(bucket, "big", str(dst))
    assert dst.read_bytes() == data
    head = s3.head_object(Bucket=bucket, Key="big")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-13")
    listed = {o["Key"]: o for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert listed["big"]["Size"] == len(data)
    assert list(listed) == ["big"]  # sealgate's manifests never show
    raw = stack.backend().get_object(Bucket=bucket, Key="big")["Body"].read()
    assert b"MULTIPART-PLAINTEXT" not in raw


def _mpu(
    s3: Any, bucket: str, key: str, parts: dict[int, bytes], order: list[int] | None = None, md5: bool = False
) -> tuple[str, list[dict[str, Any]]]:
    uid = s3.create_multipart_upload(Bucket=bucket, Key=key, Metadata={"who": "mp"})["UploadId"]
    done = []
    for n in order or sorted(parts):
        kw: dict[str, Any] = {}
        if md5:
            import base64

            kw["ContentMD5"] = base64.b64encode(hashlib.md5(parts[n]).digest()).decode()
        r = s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=n, Body=parts[n], **kw)
        done.append({"PartNumber": n, "ETag": r["ETag"]})
    return uid, sorted(done, key=lambda p: p["PartNumber"])


def test_out_of_order_unaligned_retried_parts(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    parts = {1: os.urandom(6_000_000), 2: os.urandom(6_000_000), 3: b"z"}
    uid, done = _mpu(s3, bucket, "odd", parts, order=[3, 1, 2])
    # Part 2 uploaded again with other bytes: the last upload wins, as on S3.
    parts[2] = os.urandom(6_000_000)
    r = s3.upload_part(Bucket=bucket, Key="odd", UploadId=uid, PartNumber=2, Body=parts[2])
    done[1] = {"PartNumber": 2, "ETag": r["ETag"]}
    out = s3.complete_multipart_upload(Bucket=bucket, Key="odd", UploadId=uid, MultipartUpload={"Parts": done})
    whole = parts[1] + parts[2] + parts[3]
    got = s3.get_object(Bucket=bucket, Key="odd")
    assert got["Body"].read() == whole
    assert got["ETag"] == out["ETag"] and got["Metadata"] == {"who": "mp"}
    for a, b in [
        (0, 10),
        (5_999_990, 6_000_010),
        (11_999_999, 12_000_000),
        (100, 12_000_000),
        (12_000_000, 12_000_000),
    ]:
        r2 = s3.get_object(Bucket=bucket, Key="odd", Range=f"bytes={a}-{b}")
        assert r2["Body"].read() == whole[a : b + 1], (a, b)


def test_md5_part_etags_give_s3_multipart_etag(stack: Stack, bucket: str) -> None:
    s3 = stack.client(when_required=True)
    parts = {1: os.urandom(5 * MiB), 2: os.urandom(100)}
    uid, done = _mpu(s3, bucket, "md5", parts, md5=True)
    for p in done:
        assert p["ETag"] == f'"{hashlib.md5(parts[p["PartNumber"]]).hexdigest()}"'
    out = s3.complete_multipart_upload(Bucket=bucket, Key="md5", UploadId=uid, MultipartUpload={"Parts": done})
    expected = hashlib.md5(b"".join(hashlib.md5(parts[n]).digest() for n in (1, 2))).hexdigest() + "-2"
    assert out["ETag"] == f'"{expected}"'
    assert s3.get_object(Bucket=bucket, Key="md5")["Body"].read() == parts[1] + parts[2]


def test_small_part_refused(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    uid, done = _mpu(s3, bucket, "small", {1: b"a" * 1000, 2: b"b"})
    with pytest.raises(ClientError) as err:
        s3.complete_multipart_upload(Bucket=bucket, Key="small", UploadId=uid, MultipartUpload={"Parts": done})
    assert err.value.response["Error"]["Code"] == "EntityTooSmall"


def test_bad_requests(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    uid, done = _mpu(s3, bucket, "bad", {1: os.urandom(5 * MiB), 2: b"x"})
    with pytest.raises(ClientError) as err:
        s3.complete_multipart_upload(
            Bucket=bucket, Key="bad", UploadId=uid, MultipartUpload={"Parts": list(reversed(done))}
        )
    assert err.value.response["Error"]["Code"] == "InvalidPartOrder"
    with pytest.raises(ClientError) as err:
        s3.complete_multipart_upload(
            Bucket=bucket, Key="bad", UploadId=uid, MultipartUpload={"Parts": [*done, {"PartNumber": 3, "ETag": '"x"'}]}
        )
    assert err.value.response["Error"]["Code"] == "InvalidPart"
    # An upload id altered by the client, or moved to another key, is not accepted.
    forged = uid[:-3] + ("AAA" if uid[-3:] != "AAA" else "BBB")
    for key, upload in (("bad", forged), ("other", uid)):
        with pytest.raises(ClientError) as err:
            s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x")
        assert err.value.response["Error"]["Code"] == "NoSuchUpload"
    parts = s3.list_parts(Bucket=bucket, Key="bad", UploadId=uid)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, 5 * MiB), (2, 1)]
    listed = [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) if u["Key"] == "bad"]
    assert listed == [uid]  # as CreateMultipartUpload gave it, not the backend's
    # The backend's id, or a forged id, lists and aborts nothing either.
    for upload in (UploadId.decode(uid).backend_id, forged):
        for call in (s3.list_parts, s3.abort_multipart_upload):
            with pytest.raises(ClientError) as err:
                call(Bucket=bucket, Key="bad", UploadId=upload)
            assert err.value.response["Error"]["Code"] == "NoSuchUpload"
    assert stack.backend().list_objects_v2(Bucket=bucket, Prefix=".sealgate/up/")["KeyCount"] == 1
    s3.abort_multipart_upload(Bucket=bucket, Key="bad", UploadId=uid)
    assert stack.backend().list_objects_v2(Bucket=bucket, Prefix=".sealgate/up/")["KeyCount"] == 0
    with pytest.raises(ClientError) as err:
        s3.head_object(Bucket=bucket, Key="bad")
    assert err.value.response["Error"]["Code"] == "404"  # aborted: no object was made


def test_reserved_prefix(stack: Stack, bucket: str) -> None:
    with pytest.raises(ClientError) as err:
        stack.client().put_object(Bucket=bucket, Key=".sealgate/mp/x", Body=b"x")
    assert err.value.response["Error"]["Code"] == "AccessDenied"


def _read_all(s3: Any, bucket: str, key: str) -> tuple[bytes, BaseException | None]:
    got = b""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        while piece := body.read(65536):
            got += piece
    except (ClientError, BotoCoreError, OSError) as exc:
        return got, exc
    return got, None


@pytest.fixture
def three_parts(stack: Stack, bucket: str) -> tuple[bytes, list[bytes]]:
    s3 = stack.client()
    parts = {1: os.urandom(5 * MiB), 2: os.urandom(5 * MiB), 3: os.urandom(1000)}
    uid, done = _mpu(s3, bucket, "t", parts)
    s3.complete_multipart_upload(Bucket=bucket, Key="t", UploadId=uid, MultipartUpload={"Parts": done})
    return parts[1] + parts[2] + parts[3], [parts[1], parts[2], parts[3]]


def _rebuild(stack: Stack, bucket: str, pieces: list[tuple[int, int]]) -> None:
    """Rebuild object `t` on the backend from ranges of its own stored bytes (UploadPartCopy)."""
    b = stack.backend()
    meta = b.head_object(Bucket=bucket, Key="t")["Metadata"]
    b.copy_object(Bucket=bucket, Key="t-src", CopySource={"Bucket": bucket, "Key": "t"})
    uid = b.create_multipart_upload(Bucket=bucket, Key="t", Metadata=meta)["UploadId"]
    done = []
    for i, (a, z) in enumerate(pieces, 1):
        r = b.upload_part_copy(
            Bucket=bucket,
            Key="t",
            UploadId=uid,
            PartNumber=i,
            CopySource={"Bucket": bucket, "Key": "t-src"},
            CopySourceRange=f"bytes={a}-{z - 1}",
        )
        done.append({"PartNumber": i, "ETag": r["CopyPartResult"]["ETag"]})
    b.complete_multipart_upload(Bucket=bucket, Key="t", UploadId=uid, MultipartUpload={"Parts": done})


def _stored_parts(stack: Stack, bucket: str) -> list[tuple[int, int]]:
    from proxy.crypto.format import DEFAULT_SEGMENT_SIZE, Layout, part_ciphertext_length

    layout = Layout(DEFAULT_SEGMENT_SIZE)
    sizes = [part_ciphertext_length(layout, n) for n in (5 * MiB, 5 * MiB, 1000)]
    out, pos = [], 0
    for n in sizes:
        out.append((pos, pos + n))
        pos += n
    return out


@pytest.mark.parametrize("which", ["dropped", "swapped", "prefix"])
def test_tampering_after_complete(
    stack: Stack, bucket: str, three_parts: tuple[bytes, list[bytes]], which: str
) -> None:
    whole, _ = three_parts
    p = _stored_parts(stack, bucket)
    pieces = {"dropped": [p[0], p[2]], "swapped": [p[1], p[0], p[2]], "prefix": [p[0], p[1]]}[which]
    _rebuild(stack, bucket, pieces)
    got, err = _read_all(stack.client(), bucket, "t")
    assert err is not None
    assert got == whole[: len(got)] and len(got) < len(whole)


def test_manifest_deleted(stack: Stack, bucket: str, three_parts: tuple[bytes, list[bytes]]) -> None:
    b = stack.backend()
    for o in b.list_objects_v2(Bucket=bucket, Prefix=".sealgate/")["Contents"]:
        b.delete_object(Bucket=bucket, Key=o["Key"])
    got, err = _read_all(stack.client(), bucket, "t")
    assert err is not None and got == b""


def test_part_number_reads(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    parts = {1: os.urandom(5 * MiB), 2: os.urandom(5 * MiB + 3), 3: os.urandom(7)}
    uid, done = _mpu(s3, bucket, "pn", parts)
    s3.complete_multipart_upload(Bucket=bucket, Key="pn", UploadId=uid, MultipartUpload={"Parts": done})
    for n, data in parts.items():
        got = s3.get_object(Bucket=bucket, Key="pn", PartNumber=n)
        assert got["Body"].read() == data
        assert got["PartsCount"] == 3
        head = s3.head_object(Bucket=bucket, Key="pn", PartNumber=n)
        assert head["ContentLength"] == len(data) and head["PartsCount"] == 3
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="pn", PartNumber=4)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416
    s3.put_object(Bucket=bucket, Key="single", Body=b"one part")
    assert s3.get_object(Bucket=bucket, Key="single", PartNumber=1)["Body"].read() == b"one part"


def test_gc_aborts_stale_uploads_and_orphan_manifests(stack: Stack, bucket: str) -> None:
    import subprocess
    import sys
    import time

    s3 = stack.client()
    keep_parts = {1: os.urandom(5 * MiB), 2: b"k"}
    uid, done = _mpu(s3, bucket, "keep", keep_parts)
    s3.complete_multipart_upload(Bucket=bucket, Key="keep", UploadId=uid, MultipartUpload={"Parts": done})
    uid, done = _mpu(s3, bucket, "gone", {1: os.urandom(5 * MiB), 2: b"g"})
    s3.complete_multipart_upload(Bucket=bucket, Key="gone", UploadId=uid, MultipartUpload={"Parts": done})
    s3.delete_object(Bucket=bucket, Key="gone")
    s3.create_multipart_upload(Bucket=bucket, Key="abandoned")
    time.sleep(1.1)
    cmd = [sys.executable, "-m", "proxy.cli", "gc", "--config", str(stack.dir / "sealgate.toml"), "--bucket", bucket]
    dry = subprocess.run([*cmd, "--older-than", "0m", "--dry-run"], capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0 and "would remove 1 stale uploads, 1 orphan manifests" in dry.stdout, dry.stdout
    real = subprocess.run([*cmd, "--older-than", "0m"], capture_output=True, text=True, timeout=60)
    assert "removed 1 stale uploads, 1 orphan manifests" in real.stdout, real.stdout + real.stderr
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert s3.get_object(Bucket=bucket, Key="keep")["Body"].read() == b"".join(keep_parts.values())
    left = stack.backend().list_objects_v2(Bucket=bucket, Prefix=".sealgate/")["Contents"]
    assert [o["Key"].split("/")[1] for o in left] == ["mp"]  # the aborted upload's record went with it


def test_upload_part_copy(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    single = os.urandom(6 * MiB + 11)
    s3.put_object(Bucket=bucket, Key="src-single", Body=single)
    parts = {1: os.urandom(5 * MiB), 2: os.urandom(77)}
    uid, done = _mpu(s3, bucket, "src-mp", parts)
    s3.complete_multipart_upload(Bucket=bucket, Key="src-mp", UploadId=uid, MultipartUpload={"Parts": done})
    mp_data = parts[1] + parts[2]

    uid = s3.create_multipart_upload(Bucket=bucket, Key="assembled")["UploadId"]
    copies = [
        ({"Bucket": bucket, "Key": "src-single"}, f"bytes=0-{5 * MiB - 1}", single[: 5 * MiB]),
        (
            {"Bucket": bucket, "Key": "src-mp"},
            f"bytes={5 * MiB - 10}-{5 * MiB + 20}",
            mp_data[5 * MiB - 10 : 5 * MiB + 21],
        ),
        ({"Bucket": bucket, "Key": "src-single"}, None, single),
    ]
    done = []
    for n, (source, rng, _) in enumerate(copies, 1):
        kw = {"CopySourceRange": rng} if rng else {}
        r = s3.upload_part_copy(Bucket=bucket, Key="assembled", UploadId=uid, PartNumber=n, CopySource=source, **kw)
        done.append({"PartNumber": n, "ETag": r["CopyPartResult"]["ETag"]})
    # Part 2 is small and not last: S3 would refuse it too, so complete with parts 1 and 3 only.
    s3.complete_multipart_upload(
        Bucket=bucket, Key="assembled", UploadId=uid, MultipartUpload={"Parts": [done[0], done[2]]}
    )
    assert s3.get_object(Bucket=bucket, Key="assembled")["Body"].read() == copies[0][2] + copies[2][2]
    with pytest.raises(ClientError) as err:
        s3.upload_part_copy(
            Bucket=bucket,
            Key="assembled",
            UploadId=uid,
            PartNumber=1,
            CopySource={"Bucket": bucket, "Key": "src-single"},
            CopySourceRange="bytes=0-999999999",
        )
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] in (400, 404)
    raw = stack.backend().get_object(Bucket=bucket, Key="assembled")["Body"].read()
    assert single[:1000] not in raw
    # A range across the source's part boundary, as the only (so last) part of another upload.
    uid = s3.create_multipart_upload(Bucket=bucket, Key="across")["UploadId"]
    r = s3.upload_part_copy(
        Bucket=bucket, Key="across", UploadId=uid, PartNumber=1, CopySource=copies[1][0], CopySourceRange=copies[1][1]
    )
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="across",
        UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": r["CopyPartResult"]["ETag"]}]},
    )
    assert s3.get_object(Bucket=bucket, Key="across")["Body"].read() == copies[1][2]


def test_tools_on_a_missing_bucket_say_so(stack: Stack) -> None:
    """gc and rewrap name the bucket and S3's error, exit 2, and print no traceback (issue 21)."""
    from click.testing import CliRunner

    from proxy.cli import main
    from proxy.tools.gc import parse_age

    cfg = str(stack.dir / "sealgate.toml")
    for args in (
        ["gc", "--config", cfg, "--bucket", "no-such-bucket-here", "--older-than", "0s"],
        ["rewrap", "--config", cfg, "--bucket", "no-such-bucket-here", "--to-key", "default"],
    ):
        run = CliRunner().invoke(main, args)
        assert run.exit_code == 2, run.output
        assert "bucket no-such-bucket-here: NoSuchBucket" in run.output
        assert "Traceback" not in run.output and run.exception is None or isinstance(run.exception, SystemExit)
    assert parse_age("0s").total_seconds() == 0 and parse_age("90s").total_seconds() == 90
