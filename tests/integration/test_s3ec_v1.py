"""Legacy S3EC V1 objects (x-amz-key, AES-CBC, KMS "kms" wrapping) through sealgate.

The official Python client cannot write V1 (it refuses legacy suites for encryption), so the
objects are built here with `cryptography` and real KMS (moto) per the documented format, and
the official client, with its legacy modes enabled, reads them back to check the construction.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from s3_encryption import S3EncryptionClient, S3EncryptionClientConfig
from s3_encryption.materials.kms_keyring import KmsKeyring
from s3_encryption.materials.materials import AlgorithmSuite, CommitmentPolicy

from tests.conftest import Stack, backend_client
from tests.integration.s3ec_support import moto_client, start_kms_stack

ON, OFF = "s3ec-v1-on", "s3ec-v1-off"


@pytest.fixture(scope="module")
def v1_stack(
    moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, str]]:
    rules = f'\n[[buckets]]\nname = "{ON}"\nallow_s3ec_v1 = true\ns3ec_unbound_reads = true\n'
    st, key_id = start_kms_stack(tmp_path_factory.mktemp("s3ecv1"), moto_url, tls_files, rules=rules, buckets=(ON, OFF))
    yield st, key_id
    st.gate.stop()


def put_v1(url: str, key_id: str, bucket: str, key: str, data: bytes) -> None:
    """A V1 object as the Java client writes it with a KMS key (kms wrapping, AES-CBC body)."""
    matdesc = {"kms_cmk_id": key_id}
    dk = moto_client("kms", url).generate_data_key(KeyId=key_id, KeySpec="AES_256", EncryptionContext=matdesc)
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(dk["Plaintext"]), modes.CBC(iv)).encryptor()
    body = enc.update(padder.update(data) + padder.finalize()) + enc.finalize()
    meta = {
        "x-amz-key": base64.b64encode(dk["CiphertextBlob"]).decode(),
        "x-amz-iv": base64.b64encode(iv).decode(),
        "x-amz-matdesc": json.dumps(matdesc),
        "x-amz-wrap-alg": "kms",
        "x-amz-cek-alg": "AES/CBC/PKCS5Padding",
        "x-amz-unencrypted-content-length": str(len(data)),
        "owner": "legacy",
    }
    backend_client(url).put_object(Bucket=bucket, Key=key, Body=body, Metadata=meta)


def official_legacy(url: str, key_id: str) -> Any:
    kr = KmsKeyring(kms_client=moto_client("kms", url), kms_key_id=key_id, enable_legacy_wrapping_algorithms=True)
    cfg = S3EncryptionClientConfig(
        keyring=kr,
        enable_legacy_unauthenticated_modes=True,
        encryption_algorithm=AlgorithmSuite.ALG_AES_256_GCM_IV12_TAG16_NO_KDF,
        commitment_policy=CommitmentPolicy.FORBID_ENCRYPT_ALLOW_DECRYPT,
    )
    return S3EncryptionClient(wrapped_s3_client=moto_client("s3", url), config=cfg)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 100_000])
def test_v1_objects_read_only_with_opt_in(
    v1_stack: tuple[Stack, str], moto_url: str, size: int, caplog: pytest.LogCaptureFixture
) -> None:
    st, key_id = v1_stack
    data = os.urandom(size)
    key = f"v1-{size}"
    for bucket in (ON, OFF):
        put_v1(moto_url, key_id, bucket, key, data)
    assert official_legacy(moto_url, key_id).get_object(Bucket=ON, Key=key)["Body"].read() == data
    s3 = st.client()
    with caplog.at_level(logging.WARNING):
        got = s3.get_object(Bucket=ON, Key=key)
        assert got["Body"].read() == data
    assert got["Metadata"] == {"owner": "legacy", "x-amz-unencrypted-content-length": str(size)}
    assert any("legacy S3EC AES/CBC" in r.getMessage() for r in caplog.records)
    assert s3.head_object(Bucket=ON, Key=key)["ContentLength"] == size
    if size > 20:
        assert s3.get_object(Bucket=ON, Key=key, Range="bytes=5-40000")["Body"].read() == data[5:40001]
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=OFF, Key=key)
    assert err.value.response["Error"]["Code"] == "InvalidObjectState"
    assert "allow_s3ec_v1" in err.value.response["Error"]["Message"]


def test_v1_wrong_key_or_damaged_padding_is_refused(v1_stack: tuple[Stack, str], moto_url: str) -> None:
    st, key_id = v1_stack
    put_v1(moto_url, key_id, ON, "damaged", b"some legacy data")
    raw = backend_client(moto_url).get_object(Bucket=ON, Key="damaged")
    body = bytearray(raw["Body"].read())
    body[-17] ^= 0x55  # CBC: flips the last padding byte (0x10 -> 0x45), which no longer checks
    backend_client(moto_url).put_object(Bucket=ON, Key="damaged", Body=bytes(body), Metadata=raw["Metadata"])
    with pytest.raises(ClientError) as err:
        st.client().get_object(Bucket=ON, Key="damaged")
    assert err.value.response["Error"]["Code"] == "ObjectIntegrityError"
