"""S3 Object Lock through sealgate: the settings are the stored version's, and the backend
enforces them. Dropping them (as sealgate once did) would leave "locked" objects deletable.
(moto 5.2 answers GetObjectRetention with a 500 and ignores lock headers on multipart uploads,
so those are not checked here.)"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Stack, multipart_put

MiB = 1024 * 1024


@pytest.fixture
def locked_bucket(stack: Stack) -> str:
    name = f"lock-{os.getpid()}-{os.urandom(3).hex()}"
    stack.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


def test_retention_and_legal_hold_hold(stack: Stack, locked_bucket: str) -> None:
    s3, raw = stack.client(), stack.backend()
    until = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    data = os.urandom(100_000)
    v = s3.put_object(
        Bucket=locked_bucket, Key="record", Body=data, ObjectLockMode="GOVERNANCE", ObjectLockRetainUntilDate=until
    )["VersionId"]
    head = s3.head_object(Bucket=locked_bucket, Key="record")
    assert head["ObjectLockMode"] == "GOVERNANCE" and head["ObjectLockRetainUntilDate"] == until
    assert raw.head_object(Bucket=locked_bucket, Key="record")["ObjectLockMode"] == "GOVERNANCE"
    with pytest.raises(ClientError) as exc:
        s3.delete_object(Bucket=locked_bucket, Key="record", VersionId=v)
    assert exc.value.response["Error"]["Code"] == "AccessDenied"
    assert s3.get_object(Bucket=locked_bucket, Key="record", VersionId=v)["Body"].read() == data
    # Retention extended through sealgate; a legal hold outlasts even a governance bypass.
    later = until + timedelta(days=1)
    s3.put_object_retention(
        Bucket=locked_bucket, Key="record", VersionId=v, Retention={"Mode": "GOVERNANCE", "RetainUntilDate": later}
    )
    assert s3.head_object(Bucket=locked_bucket, Key="record", VersionId=v)["ObjectLockRetainUntilDate"] == later
    s3.put_object_legal_hold(Bucket=locked_bucket, Key="record", VersionId=v, LegalHold={"Status": "ON"})
    with pytest.raises(ClientError) as exc:
        s3.delete_object(Bucket=locked_bucket, Key="record", VersionId=v, BypassGovernanceRetention=True)
    assert exc.value.response["Error"]["Code"] == "AccessDenied"
    s3.put_object_legal_hold(Bucket=locked_bucket, Key="record", VersionId=v, LegalHold={"Status": "OFF"})
    # A client allowed to bypass governance mode can remove the version.
    s3.delete_object(Bucket=locked_bucket, Key="record", VersionId=v, BypassGovernanceRetention=True)
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=locked_bucket, Key="record", VersionId=v)
    assert exc.value.response["Error"]["Code"] == "404"  # gone, not refused


def test_default_retention_applies_to_what_sealgate_writes(stack: Stack, locked_bucket: str) -> None:
    """S3 takes uploads into such a bucket only with a checksum of the body: sealgate sends
    Content-MD5 with every body it sends whole (objects up to 256 KiB, manifests)."""
    s3 = stack.client()
    s3.put_object_lock_configuration(
        Bucket=locked_bucket,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
        },
    )
    rule = s3.get_object_lock_configuration(Bucket=locked_bucket)["ObjectLockConfiguration"]["Rule"]
    assert (rule["DefaultRetention"]["Mode"], rule["DefaultRetention"]["Days"]) == ("GOVERNANCE", 1)
    s3.put_object(Bucket=locked_bucket, Key="small", Body=b"kept for a day")
    assert s3.head_object(Bucket=locked_bucket, Key="small")["ObjectLockMode"] == "GOVERNANCE"
    data = multipart_put(s3, locked_bucket, "mp", [os.urandom(5 * MiB), b"end"])
    assert s3.get_object(Bucket=locked_bucket, Key="mp")["Body"].read() == data
