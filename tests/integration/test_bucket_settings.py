"""Bucket settings, ACLs, the backend's own server-side encryption and GetObjectAttributes through
sealgate (issue 18): answered or passed through, never silently dropped, and lifecycle rules that
could expire sealgate's records apart from their objects refused."""

from __future__ import annotations

import os
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Stack, multipart_put

MiB = 1024 * 1024


def _code(call: Any) -> str:
    with pytest.raises(ClientError) as err:
        call()
    return str(err.value.response["Error"]["Code"])


def test_bucket_tagging_encryption_and_cors_pass_through(stack: Stack, bucket: str) -> None:
    s3, raw = stack.client(), stack.backend()
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [{"Key": "team", "Value": "storage"}]})
    assert s3.get_bucket_tagging(Bucket=bucket)["TagSet"] == [{"Key": "team", "Value": "storage"}]
    assert raw.get_bucket_tagging(Bucket=bucket)["TagSet"] == [{"Key": "team", "Value": "storage"}]
    s3.delete_bucket_tagging(Bucket=bucket)
    assert _code(lambda: s3.get_bucket_tagging(Bucket=bucket)) == "NoSuchTagSet"

    sse = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration=sse)
    got = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert got["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    s3.delete_bucket_encryption(Bucket=bucket)

    cors = {"CORSRules": [{"AllowedMethods": ["GET"], "AllowedOrigins": ["https://app.example"]}]}
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=cors)
    assert s3.get_bucket_cors(Bucket=bucket)["CORSRules"][0]["AllowedOrigins"] == ["https://app.example"]
    s3.delete_bucket_cors(Bucket=bucket)
    assert _code(lambda: s3.get_bucket_cors(Bucket=bucket)) == "NoSuchCORSConfiguration"


def test_lifecycle_rules_spare_sealgate_records(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    whole = {"Rules": [{"ID": "all", "Filter": {"Prefix": ""}, "Status": "Enabled", "Expiration": {"Days": 30}}]}
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=whole)
    assert s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"][0]["ID"] == "all"
    small = {
        "Rules": [
            {"ID": "small", "Filter": {"ObjectSizeLessThan": 1024}, "Status": "Enabled", "Expiration": {"Days": 1}}
        ]
    }
    with pytest.raises(ClientError) as err:
        s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=small)
    assert err.value.response["Error"]["Code"] == "InvalidArgument"
    assert ".sealgate/" in err.value.response["Error"]["Message"]
    assert s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"][0]["ID"] == "all"  # unchanged
    s3.delete_bucket_lifecycle(Bucket=bucket)
    assert _code(lambda: s3.get_bucket_lifecycle_configuration(Bucket=bucket)) == "NoSuchLifecycleConfiguration"


def test_acls_reach_the_backend(stack: Stack, bucket: str) -> None:
    s3, raw = stack.client(), stack.backend()
    s3.put_object(Bucket=bucket, Key="k", Body=b"x", ACL="public-read")
    grants = raw.get_object_acl(Bucket=bucket, Key="k")["Grants"]
    assert any(g["Permission"] == "READ" and g["Grantee"].get("URI", "").endswith("AllUsers") for g in grants)
    assert s3.get_object_acl(Bucket=bucket, Key="k")["Grants"] == grants
    s3.put_object_acl(Bucket=bucket, Key="k", ACL="private")
    assert not any(
        "AllUsers" in g["Grantee"].get("URI", "") for g in raw.get_object_acl(Bucket=bucket, Key="k")["Grants"]
    )
    s3.put_bucket_acl(Bucket=bucket, ACL="public-read")
    assert any("AllUsers" in g["Grantee"].get("URI", "") for g in s3.get_bucket_acl(Bucket=bucket)["Grants"])


def test_server_side_encryption_is_asked_of_the_backend_too(stack: Stack, bucket: str) -> None:
    s3, raw = stack.client(), stack.backend()
    put = s3.put_object(Bucket=bucket, Key="k", Body=b"doubly encrypted", ServerSideEncryption="AES256")
    assert put["ServerSideEncryption"] == "AES256"
    assert raw.head_object(Bucket=bucket, Key="k")["ServerSideEncryption"] == "AES256"
    got = s3.get_object(Bucket=bucket, Key="k")
    assert got["ServerSideEncryption"] == "AES256" and got["Body"].read() == b"doubly encrypted"
    assert b"doubly" not in raw.get_object(Bucket=bucket, Key="k")["Body"].read()


def test_get_object_attributes(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    s3.put_object(Bucket=bucket, Key="one", Body=b"12345")
    attrs = s3.get_object_attributes(Bucket=bucket, Key="one", ObjectAttributes=["ETag", "ObjectSize", "StorageClass"])
    assert attrs["ObjectSize"] == 5 and attrs["StorageClass"] == "STANDARD"
    assert f'"{attrs["ETag"]}"' == s3.head_object(Bucket=bucket, Key="one")["ETag"]
    multipart_put(s3, bucket, "mp", [os.urandom(5 * MiB), b"tail"])
    attrs = s3.get_object_attributes(Bucket=bucket, Key="mp", ObjectAttributes=["ObjectParts", "ObjectSize"])
    assert attrs["ObjectSize"] == 5 * MiB + 4 and attrs["ObjectParts"]["TotalPartsCount"] == 2
    assert _code(lambda: s3.get_object_attributes(Bucket=bucket, Key="missing", ObjectAttributes=["ETag"])) in (
        "NoSuchKey",
        "404",
    )


def test_encryption_answers_on_copies_and_uploads(stack: Stack, bucket: str) -> None:
    """CopyObject and CreateMultipartUpload report the backend's own encryption too, and a
    single PUT has no ObjectParts (its opaque ETag also ends in -1)."""
    s3 = stack.client()
    s3.put_object(Bucket=bucket, Key="src", Body=b"source")
    copied = s3.copy_object(
        Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"}, ServerSideEncryption="AES256"
    )
    assert copied["ServerSideEncryption"] == "AES256"
    assert stack.backend().head_object(Bucket=bucket, Key="dst")["ServerSideEncryption"] == "AES256"
    started = s3.create_multipart_upload(Bucket=bucket, Key="mp", ServerSideEncryption="AES256")
    assert started["ServerSideEncryption"] == "AES256"
    # The parts of such an upload, sent or copied, report it as well (s3-tests' copy_part_enc).
    uid = started["UploadId"]
    part = s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=1, Body=b"x" * 5 * 1024 * 1024)
    assert part["ServerSideEncryption"] == "AES256"
    copied_part = s3.upload_part_copy(
        Bucket=bucket, Key="mp", UploadId=uid, PartNumber=2, CopySource={"Bucket": bucket, "Key": "src"}
    )
    assert copied_part["ServerSideEncryption"] == "AES256"
    s3.abort_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid)
    attrs = s3.get_object_attributes(Bucket=bucket, Key="src", ObjectAttributes=["ObjectParts", "ObjectSize"])
    assert "ObjectParts" not in attrs and attrs["ObjectSize"] == 6
