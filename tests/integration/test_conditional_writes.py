"""Conditional writes (If-Match / If-None-Match on PutObject, CompleteMultipartUpload, CopyObject,
DeleteObject): the client's ETags are the ones sealgate shows, which the backend never saw."""

from __future__ import annotations

import os
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Stack, multipart_put

MiB = 1024 * 1024


def _code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    err: Any = exc.value.response
    return err["ResponseMetadata"]["HTTPStatusCode"], err["Error"]["Code"]


def _body(s3: Any, bucket: str, key: str) -> bytes:
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_put_if_match_replaces_only_the_version_the_client_saw(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    first = s3.put_object(Bucket=bucket, Key="doc", Body=b"version 1")["ETag"]
    second = s3.put_object(Bucket=bucket, Key="doc", Body=b"version 2", IfMatch=first)["ETag"]
    assert _body(s3, bucket, "doc") == b"version 2"
    # A writer still holding the first ETag loses, and nothing it sent is stored.
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="doc", Body=b"stale writer", IfMatch=first)
    assert _code(exc) == (412, "PreconditionFailed")
    assert _body(s3, bucket, "doc") == b"version 2"
    assert s3.head_object(Bucket=bucket, Key="doc")["ETag"] == second
    # "*" matches whatever is there.
    s3.put_object(Bucket=bucket, Key="doc", Body=b"version 3", IfMatch="*")
    assert _body(s3, bucket, "doc") == b"version 3"


def test_put_if_match_on_a_missing_key_is_no_such_key(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="absent", Body=b"x", IfMatch='"0123456789abcdef0123456789abcdef"')
    assert _code(exc) == (404, "NoSuchKey")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)


def test_put_if_match_on_a_multipart_object_and_a_large_body(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    multipart_put(s3, bucket, "big", [os.urandom(5 * MiB), b"tail"])
    etag = s3.head_object(Bucket=bucket, Key="big")["ETag"]
    assert etag.strip('"').endswith("-2")
    body = os.urandom(3 * MiB)  # large enough to take the direct body path
    s3.put_object(Bucket=bucket, Key="big", Body=body, IfMatch=etag)
    assert _body(s3, bucket, "big") == body


def test_put_if_none_match(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    s3.put_object(Bucket=bucket, Key="once", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="once", Body=b"second", IfNoneMatch="*")
    assert _code(exc) == (412, "PreconditionFailed")
    # With ETags (as Ceph and MinIO take it): refused while the stored object has one of them.
    etag = s3.head_object(Bucket=bucket, Key="once")["ETag"]
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="once", Body=b"third", IfNoneMatch=etag)
    assert _code(exc) == (412, "PreconditionFailed")
    assert _body(s3, bucket, "once") == b"first"


def test_delete_if_match(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    old = s3.put_object(Bucket=bucket, Key="d", Body=b"one")["ETag"]
    new = s3.put_object(Bucket=bucket, Key="d", Body=b"two")["ETag"]
    with pytest.raises(ClientError) as exc:
        s3.delete_object(Bucket=bucket, Key="d", IfMatch=old)
    assert _code(exc) == (412, "PreconditionFailed")
    assert _body(s3, bucket, "d") == b"two"
    # Conditions on the stored size or time would compare ciphertext figures: refused.
    with pytest.raises(ClientError) as exc:
        s3.delete_object(Bucket=bucket, Key="d", IfMatchSize=3)
    assert _code(exc) == (501, "NotImplemented")
    assert _body(s3, bucket, "d") == b"two"
    s3.delete_object(Bucket=bucket, Key="d", IfMatch=new)
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="d")
    assert _code(exc)[0] == 404
    with pytest.raises(ClientError) as exc:
        s3.delete_object(Bucket=bucket, Key="d", IfMatch=new)
    assert _code(exc) == (404, "NoSuchKey")


def _upload(s3: Any, bucket: str, key: str, data: bytes) -> tuple[str, list[dict[str, Any]]]:
    uid = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=1, Body=data)["ETag"]
    return uid, [{"PartNumber": 1, "ETag": etag}]


def test_complete_multipart_conditions(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    s3.put_object(Bucket=bucket, Key="m", Body=b"existing")
    uid, parts = _upload(s3, bucket, "m", b"from the upload")
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(
            Bucket=bucket, Key="m", UploadId=uid, MultipartUpload={"Parts": parts}, IfNoneMatch="*"
        )
    assert _code(exc) == (412, "PreconditionFailed")
    assert _body(s3, bucket, "m") == b"existing"
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(
            Bucket=bucket, Key="m", UploadId=uid, MultipartUpload={"Parts": parts}, IfMatch='"' + "0" * 32 + '"'
        )
    assert _code(exc) == (412, "PreconditionFailed")
    assert _body(s3, bucket, "m") == b"existing"
    # The upload is still there to complete once the condition holds.
    current = s3.head_object(Bucket=bucket, Key="m")["ETag"]
    s3.complete_multipart_upload(
        Bucket=bucket, Key="m", UploadId=uid, MultipartUpload={"Parts": parts}, IfMatch=current
    )
    assert _body(s3, bucket, "m") == b"from the upload"
    uid, parts = _upload(s3, bucket, "fresh", b"new object")
    s3.complete_multipart_upload(
        Bucket=bucket, Key="fresh", UploadId=uid, MultipartUpload={"Parts": parts}, IfNoneMatch="*"
    )
    assert _body(s3, bucket, "fresh") == b"new object"


def test_copy_destination_conditions(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    s3.put_object(Bucket=bucket, Key="src", Body=b"source body")
    target = s3.put_object(Bucket=bucket, Key="dst", Body=b"destination body")["ETag"]
    source = {"Bucket": bucket, "Key": "src"}
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket=bucket, Key="dst", CopySource=source, IfNoneMatch="*")
    assert _code(exc) == (412, "PreconditionFailed")
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket=bucket, Key="dst", CopySource=source, IfMatch='"' + "0" * 32 + '"')
    assert _code(exc) == (412, "PreconditionFailed")
    assert _body(s3, bucket, "dst") == b"destination body"
    s3.copy_object(Bucket=bucket, Key="dst", CopySource=source, IfMatch=target)
    assert _body(s3, bucket, "dst") == b"source body"
    s3.copy_object(Bucket=bucket, Key="new", CopySource=source, IfNoneMatch="*")
    assert _body(s3, bucket, "new") == b"source body"


@pytest.mark.parametrize("quiet", [False, True])
def test_delete_objects_with_etags(stack: Stack, bucket: str, quiet: bool) -> None:
    s3 = stack.client()
    right = s3.put_object(Bucket=bucket, Key="right", Body=b"1")["ETag"]
    stale = s3.put_object(Bucket=bucket, Key="stale", Body=b"2")["ETag"]
    s3.put_object(Bucket=bucket, Key="stale", Body=b"2, rewritten")
    s3.put_object(Bucket=bucket, Key="plain", Body=b"3")
    s3.put_object(Bucket=bucket, Key="kept", Body=b"4")
    out = s3.delete_objects(
        Bucket=bucket,
        Delete={
            "Objects": [
                {"Key": "right", "ETag": right},
                {"Key": "stale", "ETag": stale},
                {"Key": "plain"},
                {"Key": "missing", "ETag": right},
            ],
            "Quiet": quiet,
        },
    )
    errors = {e["Key"]: e["Code"] for e in out.get("Errors", [])}
    assert errors == {"stale": "PreconditionFailed", "missing": "NoSuchKey"}
    if not quiet:
        assert sorted(d["Key"] for d in out["Deleted"]) == ["plain", "right"]
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]) == ["kept", "stale"]
    assert _body(s3, bucket, "stale") == b"2, rewritten"
    # Every listed object refused: the backend is not asked at all.
    out = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "kept", "ETag": stale}]})
    assert [(e["Key"], e["Code"]) for e in out["Errors"]] == [("kept", "PreconditionFailed")]
    assert _body(s3, bucket, "kept") == b"4"
    with pytest.raises(ClientError) as exc:
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "kept", "Size": 1}]})
    assert _code(exc) == (501, "NotImplemented")
    assert _body(s3, bucket, "kept") == b"4"
