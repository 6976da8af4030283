"""Re-signing checked by a backend that verifies signatures: `rclone serve s3`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.conftest import backend_client, start_stack


@pytest.fixture(scope="module")
def rclone_stack(rclone_s3: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    st = start_stack(
        tmp_path_factory.mktemp("rc"),
        rclone_s3,
        tls_files,
        backend_akid="rcloneaccess",
        backend_secret="rclonesecret0123456789",
    )
    yield st
    st.gate.stop()


def test_round_trip_through_signature_checking_backend(rclone_stack) -> None:  # type: ignore[no-untyped-def]
    s3 = rclone_stack.client()
    s3.create_bucket(Bucket="resign")
    for key, size in [("plain", 1000), ("with space/and+plus=&é", 70_000), ("empty", 0)]:
        data = os.urandom(size)
        s3.put_object(Bucket="resign", Key=key, Body=data)
        assert s3.get_object(Bucket="resign", Key=key)["Body"].read() == data
        assert s3.head_object(Bucket="resign", Key=key)["ContentLength"] == size
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="resign")["Contents"])
    assert keys == sorted(["plain", "with space/and+plus=&é", "empty"])
    s3.delete_object(Bucket="resign", Key="plain")


def test_backend_rejects_wrong_backend_credentials(rclone_s3: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    st = start_stack(tmp_path, rclone_s3, tls_files, backend_akid="rcloneaccess", backend_secret="wrong-secret-000000")
    try:
        with pytest.raises(ClientError) as err:
            st.client().list_buckets()
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    finally:
        st.gate.stop()


def test_rclone_backend_holds_ciphertext(rclone_stack, rclone_s3: str) -> None:  # type: ignore[no-untyped-def]
    s3 = rclone_stack.client()
    s3.create_bucket(Bucket="resign2")
    s3.put_object(Bucket="resign2", Key="k", Body=b"RCLONE-PLAINTEXT " * 1000)
    raw = backend_client(rclone_s3, akid="rcloneaccess", secret="rclonesecret0123456789")
    body = raw.get_object(Bucket="resign2", Key="k")["Body"].read()
    assert b"RCLONE-PLAINTEXT" not in body


def test_copy_and_conditional_writes_on_a_second_backend(rclone_stack) -> None:  # type: ignore[no-untyped-def]
    """The headers sealgate adds for copies and conditional writes (the source pinned with
    x-amz-copy-source-if-match, If-Match on the backend's ETag) are signed and accepted here too."""
    s3 = rclone_stack.client()
    s3.create_bucket(Bucket="condrc")
    data = os.urandom(70_000)
    first = s3.put_object(Bucket="condrc", Key="k", Body=data)["ETag"]
    s3.copy_object(Bucket="condrc", Key="copy", CopySource={"Bucket": "condrc", "Key": "k"})
    assert s3.get_object(Bucket="condrc", Key="copy")["Body"].read() == data
    s3.put_object(Bucket="condrc", Key="k", Body=b"second", IfMatch=first)
    assert s3.get_object(Bucket="condrc", Key="k")["Body"].read() == b"second"
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket="condrc", Key="k", Body=b"stale", IfMatch=first)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket="condrc", Key="k", Body=b"again", IfNoneMatch="*")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert s3.get_object(Bucket="condrc", Key="k")["Body"].read() == b"second"


def test_delete_bucket_after_a_multipart_object_on_a_backend_without_versions(rclone_stack) -> None:  # type: ignore[no-untyped-def]
    """rclone serve s3 answers ListObjectVersions with 501: sealgate's records are found by the
    plain listing, and go with the bucket once its objects are gone."""
    from tests.conftest import multipart_put

    s3 = rclone_stack.client()
    s3.create_bucket(Bucket="rb-rclone")
    multipart_put(s3, "rb-rclone", "mp", [os.urandom(5 * 1024 * 1024), b"tail"])
    s3.delete_object(Bucket="rb-rclone", Key="mp")
    s3.delete_bucket(Bucket="rb-rclone")
    assert "rb-rclone" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_a_setting_the_backend_ignores_is_not_answered_with_the_object(rclone_stack) -> None:  # type: ignore[no-untyped-def]
    """rclone serve s3 ignores ?acl and ?tagging and answers with the object (or the listing):
    sealgate answers 501 instead of relaying those bytes as the setting."""
    import pytest
    from botocore.exceptions import ClientError

    s3 = rclone_stack.client()
    s3.create_bucket(Bucket="settings-rclone")
    s3.put_object(Bucket="settings-rclone", Key="k", Body=b"secret " * 100)
    for call in (
        lambda: s3.get_object_acl(Bucket="settings-rclone", Key="k"),
        lambda: s3.get_bucket_tagging(Bucket="settings-rclone"),
    ):
        with pytest.raises(ClientError) as err:
            call()
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501
