"""Objects written by the official AWS S3 Encryption Client read back through sealgate."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import BotoCoreError, ClientError
from s3_encryption import S3EncryptionClient, S3EncryptionClientConfig
from s3_encryption.materials.kms_keyring import KmsKeyring
from s3_encryption.materials.materials import AlgorithmSuite, CommitmentPolicy

from tests.conftest import Stack, backend_client, start_stack

MiB = 1024 * 1024


def _client(service: str, url: str) -> Any:
    return boto3.client(
        service, endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )


@pytest.fixture(scope="module")
def s3ec_stack(moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    key_id = _client("kms", moto_url).create_key()["KeyMetadata"]["KeyId"]
    kms = (
        f'provider = "aws-kms"\nregion = "us-east-1"\nendpoint = "{moto_url}"\ndefault_key = "{key_id}"\n'
        'access_key_id = "testing"\nsecret_access_key = "testing"\n'
    )
    rules = (
        '\n[[buckets]]\nname = "s3ec-delayed"\ns3ec_delayed_authentication = true\n'
        '\n[[buckets]]\nname = "s3ec-out"\nformat = "s3ec-v3"\n'
    )
    st = start_stack(tmp_path_factory.mktemp("s3ec"), moto_url, tls_files, kms=kms, extra=rules)
    for b in ("s3ec-data", "s3ec-delayed", "s3ec-out"):
        _client("s3", moto_url).create_bucket(Bucket=b)
    yield st, key_id
    st.gate.stop()


def official(url: str, key_id: str, *, v2: bool = False) -> Any:
    kr = KmsKeyring(kms_client=_client("kms", url), kms_key_id=key_id)
    if v2:
        cfg = S3EncryptionClientConfig(
            keyring=kr,
            encryption_algorithm=AlgorithmSuite.ALG_AES_256_GCM_IV12_TAG16_NO_KDF,
            commitment_policy=CommitmentPolicy.FORBID_ENCRYPT_ALLOW_DECRYPT,
        )
    else:
        cfg = S3EncryptionClientConfig(keyring=kr)
    return S3EncryptionClient(wrapped_s3_client=_client("s3", url), config=cfg)


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
    got = official(moto_url, key_id).get_object(Bucket="s3ec-out", Key=f"w{size}")
    assert got["Body"].read() == data
    assert s3.get_object(Bucket="s3ec-out", Key=f"w{size}")["Body"].read() == data
    # Multipart uploads into such a bucket: tests/integration/test_s3ec_multipart.py.
