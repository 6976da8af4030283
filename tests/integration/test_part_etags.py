"""CompleteMultipartUpload checks every part ETag as S3 does (issue 18): a wrong or stale one is
InvalidPart, and nothing is completed; ListParts shows the ETags UploadPart returned."""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Stack

MiB = 1024 * 1024


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def _put(s3: Any, bucket: str, uid: str, n: int, data: bytes, *, with_md5: bool) -> str:
    extra = {"ContentMD5": _md5(data)} if with_md5 else {}
    return str(s3.upload_part(Bucket=bucket, Key="k", UploadId=uid, PartNumber=n, Body=data, **extra)["ETag"])


def _invalid_part(s3: Any, bucket: str, uid: str, parts: list[dict[str, Any]]) -> None:
    with pytest.raises(ClientError) as err:
        s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=uid, MultipartUpload={"Parts": parts})
    assert err.value.response["Error"]["Code"] == "InvalidPart"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def _part_records(stack: Stack, bucket: str) -> list[str]:
    listed = stack.backend().list_objects_v2(Bucket=bucket, Prefix=".sealgate/pt/").get("Contents", [])
    return [o["Key"] for o in listed]


@pytest.mark.parametrize("with_md5", [True, False], ids=["content-md5", "no-md5"])
def test_wrong_and_stale_part_etags_are_invalid_part(stack: Stack, bucket: str, with_md5: bool) -> None:
    s3 = stack.client()
    uid = s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    first, second, tail = os.urandom(5 * MiB), os.urandom(5 * MiB), b"tail"
    stale = _put(s3, bucket, uid, 1, first, with_md5=with_md5)
    current = _put(s3, bucket, uid, 1, second, with_md5=with_md5)  # part 1 again: replaces it
    last = _put(s3, bucket, uid, 2, tail, with_md5=with_md5)
    if with_md5:
        assert current.strip('"') == hashlib.md5(second).hexdigest()
    listed = {p["PartNumber"]: p["ETag"] for p in s3.list_parts(Bucket=bucket, Key="k", UploadId=uid)["Parts"]}
    assert listed == {1: current, 2: last}  # the ETags UploadPart returned
    _invalid_part(s3, bucket, uid, [{"PartNumber": 1, "ETag": stale}, {"PartNumber": 2, "ETag": last}])
    _invalid_part(s3, bucket, uid, [{"PartNumber": 1, "ETag": '"' + "f" * 32 + '"'}, {"PartNumber": 2, "ETag": last}])
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="k")  # nothing completed
    done = s3.complete_multipart_upload(
        Bucket=bucket,
        Key="k",
        UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": current}, {"PartNumber": 2, "ETag": last}]},
    )
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == second + tail
    if with_md5:
        digests = hashlib.md5(hashlib.md5(second).digest() + hashlib.md5(tail).digest()).hexdigest()
        assert done["ETag"] == f'"{digests}-2"'  # S3's multipart ETag
    assert _part_records(stack, bucket) == []  # the part records went with the upload


def test_abort_drops_the_part_records(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    uid = s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    _put(s3, bucket, uid, 1, b"x" * 1000, with_md5=True)
    assert len(_part_records(stack, bucket)) == 1
    s3.abort_multipart_upload(Bucket=bucket, Key="k", UploadId=uid)
    assert _part_records(stack, bucket) == []


def test_a_forged_part_record_vouches_for_nothing(stack: Stack, bucket: str) -> None:
    """Someone who can write to the backend replaces a part's record with one of their own: it
    does not open under the upload's data key, so no MD5 it claims is taken. The records never
    show the backend a digest of the plaintext."""
    s3, raw = stack.client(), stack.backend()
    uid = s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    data = b"y" * 1000
    real = _put(s3, bucket, uid, 1, data, with_md5=True)
    (name,) = _part_records(stack, bucket)
    assert hashlib.md5(data).hexdigest() not in name and real.strip('"') not in name
    prefix, leaf = name.rsplit("/", 1)
    number, backend_etag, sealed = leaf.split(".")
    raw.delete_object(Bucket=bucket, Key=name)
    forged = os.urandom(len(sealed) // 2).hex()
    raw.put_object(Bucket=bucket, Key=f"{prefix}/{number}.{backend_etag}.{forged}", Body=b"")
    _invalid_part(s3, bucket, uid, [{"PartNumber": 1, "ETag": real}])
