"""Objects written by the official AWS S3 Encryption Client read back through sealgate."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from tests.conftest import Stack, backend_client
from tests.integration.s3ec_support import official, start_kms_stack

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def s3ec_stack(moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    rules = (
        '\n[[buckets]]\nname = "s3ec-data"\ns3ec_unbound_reads = true\n'
        '\n[[buckets]]\nname = "s3ec-delayed"\ns3ec_delayed_authentication = true\ns3ec_unbound_reads = true\n'
        '\n[[buckets]]\nname = "s3ec-out"\nformat = "s3ec-v3"\n'
    )
    st, key_id = start_kms_stack(
        tmp_path_factory.mktemp("s3ec"),
        moto_url,
        tls_files,
        rules=rules,
        buckets=("s3ec-data", "s3ec-delayed", "s3ec-out"),
    )
    yield st, key_id
    st.gate.stop()


@pytest.mark.parametrize("v2", [False, True], ids=["v3", "v2"])
@pytest.mark.parametrize("size", [0, 1, 16, 17, MiB + 1])
def test_official_objects_read_through_sealgate(
    s3ec_stack: tuple[Stack, str], moto_url: str, size: int, v2: bool
) -> None:
    st, key_id = s3ec_stack
    data = os.urandom(size)
    key = f"obj-{size}-{v2}"
    official(moto_url, key_id, v2=v2).put_object(
        Bucket="s3ec-data", Key=key, Body=data, Metadata={"owner": "team"}, EncryptionContext={"project": "x"}
    )
    s3 = st.client()
    got = s3.get_object(Bucket="s3ec-data", Key=key)
    assert got["Body"].read() == data
    assert got["Metadata"] == {"owner": "team"}
    assert s3.head_object(Bucket="s3ec-data", Key=key)["ContentLength"] == size
    if size > 10:
        r = s3.get_object(Bucket="s3ec-data", Key=key, Range="bytes=3-9")
        assert r["Body"].read() == data[3:10]


def test_tampered_official_object_releases_nothing(s3ec_stack: tuple[Stack, str], moto_url: str) -> None:
    st, key_id = s3ec_stack
    data = os.urandom(100_000)
    official(moto_url, key_id).put_object(Bucket="s3ec-data", Key="tampered", Body=data)
    raw = backend_client(moto_url).get_object(Bucket="s3ec-data", Key="tampered")
    body = bytearray(raw["Body"].read())
    body[500] ^= 1
    backend_client(moto_url).put_object(Bucket="s3ec-data", Key="tampered", Body=bytes(body), Metadata=raw["Metadata"])
    with pytest.raises(ClientError) as err:
        st.client().get_object(Bucket="s3ec-data", Key="tampered")
    assert err.value.response["Error"]["Code"] == "ObjectIntegrityError"


def test_large_objects_need_delayed_authentication(s3ec_stack: tuple[Stack, str], moto_url: str) -> None:
    st, key_id = s3ec_stack
    data = os.urandom(70 * MiB)
    for bucket in ("s3ec-data", "s3ec-delayed"):
        official(moto_url, key_id).put_object(Bucket=bucket, Key="big", Body=data)
    s3 = st.client()
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket="s3ec-data", Key="big")
    assert err.value.response["Error"]["Code"] == "InvalidObjectState"
    assert s3.get_object(Bucket="s3ec-delayed", Key="big")["Body"].read() == data
    # Delayed mode: a tampered tag is caught at the end and the connection aborted.
    raw = backend_client(moto_url).get_object(Bucket="s3ec-delayed", Key="big")
    body = bytearray(raw["Body"].read())
    body[-1] ^= 1
    backend_client(moto_url).put_object(Bucket="s3ec-delayed", Key="big", Body=bytes(body), Metadata=raw["Metadata"])
    with pytest.raises((ClientError, BotoCoreError, OSError)):
        s3.get_object(Bucket="s3ec-delayed", Key="big")["Body"].read()


@pytest.mark.parametrize("size", [0, 1, 17, MiB + 1])
def test_sealgate_writes_s3ec_v3_the_official_client_reads(
    s3ec_stack: tuple[Stack, str], moto_url: str, size: int
) -> None:
    st, key_id = s3ec_stack
    data = os.urandom(size)
    s3 = st.client()
    s3.put_object(Bucket="s3ec-out", Key=f"w{size}", Body=data, Metadata={"who": "sealgate"})
    # sealgate binds the name into the KMS context: the official client passes it (INTEROP.md).
    context = {"sealgate:bucket": "s3ec-out", "sealgate:key": f"w{size}"}
    got = official(moto_url, key_id).get_object(Bucket="s3ec-out", Key=f"w{size}", EncryptionContext=context)
    assert got["Body"].read() == data
    assert s3.get_object(Bucket="s3ec-out", Key=f"w{size}")["Body"].read() == data
    # Multipart uploads into such a bucket: tests/integration/test_s3ec_multipart.py.


def test_conditional_writes_into_an_s3ec_bucket(s3ec_stack: tuple[Stack, str]) -> None:
    """If-Match / If-None-Match hold for objects written in the S3EC format too (their ETag is
    the backend's: an S3EC body is not sealgate's to describe)."""
    st, _ = s3ec_stack
    s3 = st.client()
    first = s3.put_object(Bucket="s3ec-out", Key="cond", Body=b"one", IfNoneMatch="*")["ETag"]
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket="s3ec-out", Key="cond", Body=b"two", IfNoneMatch="*")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert s3.head_object(Bucket="s3ec-out", Key="cond")["ETag"] == first
    s3.put_object(Bucket="s3ec-out", Key="cond", Body=b"three", IfMatch=first)
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket="s3ec-out", Key="cond", Body=b"four", IfMatch=first)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert s3.get_object(Bucket="s3ec-out", Key="cond")["Body"].read() == b"three"


def test_object_properties_kept_in_s3ec_format(s3ec_stack: tuple[Stack, str], moto_url: str) -> None:
    """Tags, storage class and content headers reach the backend for S3EC objects too."""
    st, _ = s3ec_stack
    props = {"Tagging": "team=blue", "StorageClass": "STANDARD_IA", "CacheControl": "no-store"}
    st.client().put_object(Bucket="s3ec-out", Key="props", Body=b"p", **props)
    raw = backend_client(moto_url)
    head = raw.head_object(Bucket="s3ec-out", Key="props")
    assert (head["StorageClass"], head["CacheControl"]) == ("STANDARD_IA", "no-store")
    assert raw.get_object_tagging(Bucket="s3ec-out", Key="props")["TagSet"] == [{"Key": "team", "Value": "blue"}]
