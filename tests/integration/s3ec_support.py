"""What the S3 Encryption Client interop tests share: moto clients, a sealgate on moto's KMS,
and the official ``s3_encryption`` client configured as its V3 or V2 writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
from s3_encryption import S3EncryptionClient, S3EncryptionClientConfig
from s3_encryption.materials.kms_keyring import KmsKeyring
from s3_encryption.materials.materials import AlgorithmSuite, CommitmentPolicy

from tests.conftest import Stack, start_stack


def moto_client(service: str, url: str) -> Any:
    """A boto3 client straight to moto (no sealgate), for KMS keys and raw S3 set-up."""
    return boto3.client(
        service, endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )


def kms_config(moto_url: str, key_id: str) -> str:
    """The ``[kms]`` table of a sealgate using moto's KMS key `key_id`."""
    return (
        f'provider = "aws-kms"\nregion = "us-east-1"\nendpoint = "{moto_url}"\ndefault_key = "{key_id}"\n'
        'access_key_id = "testing"\nsecret_access_key = "testing"\n'
    )


def start_kms_stack(
    directory: Path, moto_url: str, tls_files: dict[str, Path], *, rules: str = "", buckets: tuple[str, ...] = ()
) -> tuple[Stack, str]:
    """A new moto KMS key and a sealgate on it (bucket `rules` appended), with `buckets`
    created on the backend; the caller stops ``stack.gate``."""
    key_id = moto_client("kms", moto_url).create_key()["KeyMetadata"]["KeyId"]
    st = start_stack(directory, moto_url, tls_files, kms=kms_config(moto_url, key_id), extra=rules)
    for bucket in buckets:
        moto_client("s3", moto_url).create_bucket(Bucket=bucket)
    return st, key_id


def official(url: str, key_id: str, *, v2: bool = False) -> Any:
    """The official client writing V3 (default) or V2 objects under KMS key `key_id`."""
    kr = KmsKeyring(kms_client=moto_client("kms", url), kms_key_id=key_id)
    if v2:
        cfg = S3EncryptionClientConfig(
            keyring=kr,
            encryption_algorithm=AlgorithmSuite.ALG_AES_256_GCM_IV12_TAG16_NO_KDF,
            commitment_policy=CommitmentPolicy.FORBID_ENCRYPT_ALLOW_DECRYPT,
        )
    else:
        cfg = S3EncryptionClientConfig(keyring=kr)
    return S3EncryptionClient(wrapped_s3_client=moto_client("s3", url), config=cfg)
