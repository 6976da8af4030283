"""User metadata under a name sealgate or the S3 Encryption Client writes into an object's
metadata (issue 24, part 3) is refused before anything is stored, in either bucket format: it
would otherwise be read back as an envelope field.

Through sealgate over TLS, against moto; what was stored is checked straight on the backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Stack, backend_client, start_stack

PLAIN, V3 = "reserved-meta-plain", "reserved-meta-v3"  # sealgate's format; format = "s3ec-v3"
RESERVED = [
    "sg-kr",
    "SG-V",
    "sg-sig",
    "sg-m",
    "x-amz-key-v2",
    "X-Amz-Key",
    "x-amz-c",
    "x-amz-3",
    "x-amz-unencrypted-content-length",
]


@pytest.fixture(scope="module")
def st(moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(
        tmp_path_factory.mktemp("reserved-meta"),
        moto_url,
        tls_files,
        extra=f'\n[[buckets]]\nname = "{V3}"\nformat = "s3ec-v3"\n',
    )
    for b in (PLAIN, V3):
        s.client().create_bucket(Bucket=b)
    yield s
    s.gate.stop()


def _refused(err: pytest.ExceptionInfo[ClientError], name: str) -> None:
    assert err.value.response["Error"]["Code"] == "InvalidArgument"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert f"x-amz-meta-{name.lower()} is reserved by sealgate" in err.value.response["Error"]["Message"]


def _absent(st: Stack, bucket: str, key: str) -> None:
    backend = backend_client(st.backend_url)
    with pytest.raises(ClientError) as err:
        backend.head_object(Bucket=bucket, Key=key)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    uploads = backend.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])
    assert uploads == []


@pytest.mark.parametrize("bucket", [PLAIN, V3])
@pytest.mark.parametrize("name", RESERVED)
def test_put_with_a_reserved_name_is_refused(st: Stack, bucket: str, name: str) -> None:
    key = f"put-{name}"
    with pytest.raises(ClientError) as err:
        st.client().put_object(Bucket=bucket, Key=key, Body=b"data", Metadata={name: "1", "colour": "blue"})
    _refused(err, name)
    _absent(st, bucket, key)


@pytest.mark.parametrize("bucket", [PLAIN, V3])
@pytest.mark.parametrize("name", RESERVED)
def test_multipart_with_a_reserved_name_is_refused(st: Stack, bucket: str, name: str) -> None:
    key = f"mpu-{name}"
    with pytest.raises(ClientError) as err:
        st.client().create_multipart_upload(Bucket=bucket, Key=key, Metadata={name: "1"})
    _refused(err, name)
    _absent(st, bucket, key)


@pytest.mark.parametrize("bucket", [PLAIN, V3])
@pytest.mark.parametrize("name", RESERVED)
def test_copy_replacing_with_a_reserved_name_is_refused(st: Stack, bucket: str, name: str) -> None:
    s3 = st.client()
    s3.put_object(Bucket=bucket, Key="copy-source", Body=b"source", Metadata={"colour": "blue"})
    key = f"copy-{name}"
    with pytest.raises(ClientError) as err:
        s3.copy_object(
            Bucket=bucket,
            Key=key,
            CopySource={"Bucket": bucket, "Key": "copy-source"},
            MetadataDirective="REPLACE",
            Metadata={name: "1"},
        )
    _refused(err, name)
    _absent(st, bucket, key)


@pytest.mark.parametrize("bucket", [PLAIN, V3])
def test_ordinary_metadata_still_round_trips(st: Stack, bucket: str) -> None:
    s3 = st.client()
    meta = {"colour": "blue", "sg": "1", "sgx-v": "2", "x-amz-colour": "3"}
    s3.put_object(Bucket=bucket, Key="ordinary", Body=b"hello", Metadata=meta)
    got = s3.get_object(Bucket=bucket, Key="ordinary")
    assert (got["Body"].read(), got["Metadata"]) == (b"hello", meta)
    up = s3.create_multipart_upload(Bucket=bucket, Key="ordinary-mpu", Metadata=meta)
    part = s3.upload_part(Bucket=bucket, Key="ordinary-mpu", UploadId=up["UploadId"], PartNumber=1, Body=b"parts")
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="ordinary-mpu",
        UploadId=up["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    assert s3.head_object(Bucket=bucket, Key="ordinary-mpu")["Metadata"] == meta


def test_copy_keeping_metadata_ignores_the_request_headers(st: Stack) -> None:
    """With the COPY directive S3 ignores x-amz-meta-* headers, so none are refused."""
    s3 = st.client()
    s3.put_object(Bucket=PLAIN, Key="kept", Body=b"kept", Metadata={"colour": "blue"})
    s3.copy_object(Bucket=PLAIN, Key="kept-copy", CopySource={"Bucket": PLAIN, "Key": "kept"}, Metadata={"sg-kr": "x"})
    assert s3.head_object(Bucket=PLAIN, Key="kept-copy")["Metadata"] == {"colour": "blue"}
