"""CopyObject (server-side, key re-wrapped), DeleteObjects, tagging, versions, presigned URLs."""

from __future__ import annotations

import hashlib
import os

import pytest
import urllib3
from botocore.exceptions import ClientError

from tests.conftest import Stack

MiB = 1024 * 1024


def test_copy_within_and_across_buckets(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    data = os.urandom(200_000)
    s3.put_object(Bucket=bucket, Key="src", Body=data, Metadata={"a": "1"}, ContentType="text/x-src")
    other = bucket + "-dst"
    s3.create_bucket(Bucket=other)
    s3.copy_object(Bucket=other, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    got = s3.get_object(Bucket=other, Key="dst")
    assert got["Body"].read() == data and got["Metadata"] == {"a": "1"} and got["ContentType"] == "text/x-src"
    s3.copy_object(
        Bucket=bucket,
        Key="src",
        CopySource={"Bucket": bucket, "Key": "src"},
        MetadataDirective="REPLACE",
        Metadata={"b": "2"},
        ContentType="text/x-new",
    )
    got = s3.get_object(Bucket=bucket, Key="src")
    assert got["Body"].read() == data and got["Metadata"] == {"b": "2"} and got["ContentType"] == "text/x-new"
    # The ciphertext was copied by the backend unchanged; only the wrapped key differs.
    raw_src = stack.backend().get_object(Bucket=bucket, Key="src")
    raw_dst = stack.backend().get_object(Bucket=other, Key="dst")
    assert raw_src["Body"].read() == raw_dst["Body"].read()
    assert raw_src["Metadata"]["sg-dk"] != raw_dst["Metadata"]["sg-dk"]
    with pytest.raises(ClientError) as err:
        s3.copy_object(Bucket=bucket, Key="src", CopySource={"Bucket": bucket, "Key": "src"})
    assert err.value.response["Error"]["Code"] == "InvalidRequest"
    with pytest.raises(ClientError) as err:
        s3.copy_object(Bucket=bucket, Key="x", CopySource={"Bucket": bucket, "Key": "missing"})
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_copy_keeps_md5_etag_and_conditions(stack: Stack, bucket: str) -> None:
    import base64

    s3 = stack.client(when_required=True)
    data = b"hello copy"
    md5 = hashlib.md5(data)
    s3.put_object(Bucket=bucket, Key="m", Body=data, ContentMD5=base64.b64encode(md5.digest()).decode())
    out = s3.copy_object(Bucket=bucket, Key="m2", CopySource={"Bucket": bucket, "Key": "m"})
    assert out["CopyObjectResult"]["ETag"] == f'"{md5.hexdigest()}"'
    assert s3.head_object(Bucket=bucket, Key="m2")["ETag"] == f'"{md5.hexdigest()}"'
    with pytest.raises(ClientError) as err:
        s3.copy_object(Bucket=bucket, Key="m3", CopySource={"Bucket": bucket, "Key": "m"}, CopySourceIfMatch='"nope"')
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412


def test_copy_of_multipart_object(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    parts = [os.urandom(5 * MiB), os.urandom(1000)]
    uid = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    done = [
        {"PartNumber": n, "ETag": s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=n, Body=p)["ETag"]}
        for n, p in enumerate(parts, 1)
    ]
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid, MultipartUpload={"Parts": done})
    s3.copy_object(Bucket=bucket, Key="mp-copy", CopySource={"Bucket": bucket, "Key": "mp"})
    assert s3.get_object(Bucket=bucket, Key="mp-copy")["Body"].read() == b"".join(parts)
    assert (
        s3.get_object(Bucket=bucket, Key="mp-copy", Range="bytes=5242870-5242890")["Body"].read()
        == (b"".join(parts)[5242870:5242891])
    )
    sizes = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert sizes == {"mp": 5 * MiB + 1000, "mp-copy": 5 * MiB + 1000}


def test_moved_copy_on_backend_is_refused(stack: Stack, bucket: str) -> None:
    """A copy made on the backend directly (not through sealgate) keeps the old binding: refused."""
    s3 = stack.client()
    s3.put_object(Bucket=bucket, Key="orig", Body=b"bound to its name")
    stack.backend().copy_object(Bucket=bucket, Key="stolen", CopySource={"Bucket": bucket, "Key": "orig"})
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="stolen")["Body"].read()
    assert err.value.response["Error"]["Code"] == "ObjectIntegrityError"  # not a NoSuchKey or a 403
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500


@pytest.mark.parametrize("quiet", [True, False])
def test_delete_objects(stack: Stack, bucket: str, quiet: bool) -> None:
    s3 = stack.client()
    for k in ("a", "b", "c"):
        s3.put_object(Bucket=bucket, Key=k, Body=b"x")
    out = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "a"}, {"Key": "b"}], "Quiet": quiet})
    if not quiet:
        assert sorted(d["Key"] for d in out["Deleted"]) == ["a", "b"]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["c"]
    with pytest.raises(ClientError) as err:
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": ".sealgate/mp/x"}]})
    assert err.value.response["Error"]["Code"] == "AccessDenied"


def test_tagging_passes_through(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    s3.put_object(Bucket=bucket, Key="t", Body=b"x")
    s3.put_object_tagging(Bucket=bucket, Key="t", Tagging={"TagSet": [{"Key": "team", "Value": "blue"}]})
    assert s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"] == [{"Key": "team", "Value": "blue"}]
    s3.delete_object_tagging(Bucket=bucket, Key="t")
    assert s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"] == []


def test_versions_listing_and_location(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    s3.put_object(Bucket=bucket, Key="v", Body=b"12345")
    versions = s3.list_object_versions(Bucket=bucket)["Versions"]
    assert [(v["Key"], v["Size"]) for v in versions] == [("v", 5)]
    assert "LocationConstraint" in s3.get_bucket_location(Bucket=bucket)


@pytest.mark.parametrize("version", ["s3", "s3v4"], ids=["sigv2-query", "sigv4-query"])
def test_presigned_get_and_put(stack: Stack, bucket: str, version: str) -> None:
    import re
    import time

    import boto3
    from botocore.config import Config

    from tests.conftest import CLIENT_AKID, CLIENT_SECRET

    s3 = boto3.client(
        "s3",
        endpoint_url=stack.gate.url,
        aws_access_key_id=CLIENT_AKID,
        aws_secret_access_key=CLIENT_SECRET,
        region_name="us-east-1",
        verify=str(stack.ca_path),
        config=Config(signature_version=version, s3={"addressing_style": "path"}),
    )
    http = urllib3.PoolManager(ca_certs=str(stack.ca_path), retries=False)
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "pre sign+d"}, ExpiresIn=60)
    r = http.request("PUT", put_url, body=b"presigned body")
    assert r.status == 200, r.data
    get_url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "pre sign+d"}, ExpiresIn=60)
    r = http.request("GET", get_url)
    assert r.status == 200 and r.data == b"presigned body"
    tampered = re.sub(r"(Expires)=(\d+)", lambda m: f"{m.group(1)}={int(m.group(2)) + 1}", get_url)
    assert tampered != get_url
    assert http.request("GET", tampered).status == 403
    short = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "pre sign+d"}, ExpiresIn=1)
    time.sleep(2.1)
    r = http.request("GET", short)
    assert r.status == 403 and b"expired" in r.data


def test_copy_above_the_backend_copy_limit(moto_url: str, tls_files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Objects above backend.max_copy_bytes (5 GiB on S3; 5 MiB here) are copied part by part."""
    from tests.conftest import start_stack

    st = start_stack(tmp_path, moto_url, tls_files, backend_extra="max_copy_bytes = 5242880")
    try:
        s3 = st.client()
        s3.create_bucket(Bucket="bigcopy")
        data = os.urandom(13 * MiB + 7)
        s3.put_object(Bucket="bigcopy", Key="src", Body=data)
        s3.copy_object(Bucket="bigcopy", Key="dst", CopySource={"Bucket": "bigcopy", "Key": "src"})
        assert s3.get_object(Bucket="bigcopy", Key="dst")["Body"].read() == data
        assert (
            s3.get_object(Bucket="bigcopy", Key="dst", Range="bytes=5242870-5242899")["Body"].read()
            == data[5242870:5242900]
        )
        assert {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket="bigcopy")["Contents"]} == {
            "src": len(data),
            "dst": len(data),
        }
    finally:
        st.gate.stop()


def test_customer_provided_keys_are_refused_not_ignored(stack: Stack, bucket: str) -> None:
    """With SSE-C, S3 reads an object only for a client that sends its key again. Sealgate would
    store and serve the object without it, so it refuses SSE-C rather than drop the headers."""
    s3 = stack.client()
    key = os.urandom(32)
    with pytest.raises(ClientError) as err:
        s3.put_object(Bucket=bucket, Key="ssec", Body=b"secret", SSECustomerAlgorithm="AES256", SSECustomerKey=key)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501
    assert err.value.response["Error"]["Code"] == "NotImplemented"
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="plain", Body=b"x")
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=bucket, Key="plain", SSECustomerAlgorithm="AES256", SSECustomerKey=key)
    assert err.value.response["Error"]["Code"] == "NotImplemented"


def test_listing_sizes_of_multipart_objects_with_encoded_names(stack: Stack, bucket: str) -> None:
    """botocore lists with encoding-type=url, where the backend sends names percent-encoded;
    sealgate must decode them to find a multipart object's manifest and hide its own prefix."""
    from tests.conftest import multipart_put

    s3 = stack.client()
    key = "dir a/m+p é"
    data = multipart_put(s3, bucket, key, [os.urandom(5 * MiB), b"tail"])
    assert [(o["Key"], o["Size"]) for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == [(key, len(data))]
    assert [(o["Key"], o["Size"]) for o in s3.list_objects(Bucket=bucket)["Contents"]] == [(key, len(data))]
    versions = s3.list_object_versions(Bucket=bucket)["Versions"]
    assert [(v["Key"], v["Size"]) for v in versions] == [(key, len(data))]
