"""DeleteBucket once a multipart object was stored (issue 18): sealgate's records under
`.sealgate/` go with the bucket when no visible object, version or delete marker is left, and
only then."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Stack, multipart_put
from tests.integration.test_awscli import aws

MiB = 1024 * 1024


def _exists(raw: Any, bucket: str) -> bool:
    return bucket in [b["Name"] for b in raw.list_buckets()["Buckets"]]


def _not_empty(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as err:
        s3.delete_bucket(Bucket=bucket)
    assert err.value.response["Error"]["Code"] == "BucketNotEmpty"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409


def test_a_bucket_that_held_a_multipart_object_can_be_deleted(stack: Stack, bucket: str) -> None:
    s3, raw = stack.client(), stack.backend()
    body = multipart_put(s3, bucket, "mp", [os.urandom(5 * MiB), b"tail"])
    s3.put_object(Bucket=bucket, Key="zz", Body=b"after the records in key order")
    s3.create_multipart_upload(Bucket=bucket, Key="in-progress")
    _not_empty(s3, bucket)
    # Refused with objects left: the records of those that are there are untouched.
    assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == body
    s3.delete_object(Bucket=bucket, Key="mp")
    _not_empty(s3, bucket)
    s3.delete_object(Bucket=bucket, Key="zz")
    assert raw.list_objects_v2(Bucket=bucket)["KeyCount"] > 0  # only records (and an upload) left
    s3.delete_bucket(Bucket=bucket)
    assert not _exists(raw, bucket)


def test_a_versioned_bucket_goes_only_with_its_last_version(stack: Stack, bucket: str) -> None:
    s3, raw = stack.client(), stack.backend()
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    body = multipart_put(s3, bucket, "mp", [os.urandom(5 * MiB), b"tail"])
    s3.delete_object(Bucket=bucket, Key="mp")  # a delete marker: the version stays
    _not_empty(s3, bucket)
    versions = s3.list_object_versions(Bucket=bucket)
    (kept,) = versions["Versions"]
    assert s3.get_object(Bucket=bucket, Key="mp", VersionId=kept["VersionId"])["Body"].read() == body
    for entry in versions["Versions"] + versions["DeleteMarkers"]:
        s3.delete_object(Bucket=bucket, Key=entry["Key"], VersionId=entry["VersionId"])
    s3.delete_bucket(Bucket=bucket)
    assert not _exists(raw, bucket)


@pytest.mark.skipif(shutil.which("aws") is None, reason="aws cli not installed (pip install awscli)")
def test_aws_cli_rb_force(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    multipart_put(s3, bucket, "dir/mp", [os.urandom(5 * MiB), b"tail"])
    s3.put_object(Bucket=bucket, Key="one", Body=b"1")
    aws(stack, "s3", "rb", f"s3://{bucket}", "--force")
    assert not _exists(stack.backend(), bucket)


def test_an_object_arriving_during_the_delete_keeps_the_bucket_and_its_records(
    moto_url: str, tls_files: dict[str, Any], tmp_path: Any
) -> None:
    """An object that appears between sealgate listing its records and deleting them: the
    delete answers BucketNotEmpty and no record is removed (the second check sees it)."""
    from aiohttp import web

    from tests.conftest import backend_client
    from tests.faults.test_faults import relayed

    raw = backend_client(moto_url)
    arrived: list[str] = []

    async def arrive(request: web.Request) -> None:
        listing = request.method == "GET" and "versions" in request.query
        if listing and request.query.get("prefix") == ".sealgate/" and not arrived:
            raw.put_object(Bucket=bucket, Key="late", Body=b"arrived meanwhile")
            arrived.append("late")
        return None

    with relayed(moto_url, tls_files, tmp_path) as (relay, st):
        s3 = st.client()
        bucket = f"racing-{os.urandom(3).hex()}"
        s3.create_bucket(Bucket=bucket)
        multipart_put(s3, bucket, "mp", [os.urandom(5 * MiB), b"tail"])
        s3.delete_object(Bucket=bucket, Key="mp")
        records = [o["Key"] for o in raw.list_objects_v2(Bucket=bucket, Prefix=".sealgate/")["Contents"]]
        relay.before = arrive
        try:
            _not_empty(s3, bucket)
        finally:
            relay.before = None
        assert arrived == ["late"]
        left = [o["Key"] for o in raw.list_objects_v2(Bucket=bucket, Prefix=".sealgate/")["Contents"]]
        assert left == records
        assert _exists(raw, bucket)
