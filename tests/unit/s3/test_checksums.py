"""Our incremental checksums against botocore's own (the client side) as the oracle."""

from __future__ import annotations

import base64
import os

import pytest
from botocore.httpchecksum import (
    Crc32Checksum,
    CrtCrc32cChecksum,
    CrtCrc64NvmeChecksum,
    Sha1Checksum,
    Sha256Checksum,
)

from proxy.s3.checksums import b64, new_checksum
from proxy.s3.errors import S3Error

ORACLES = {
    "CRC32": Crc32Checksum,
    "crc32c": CrtCrc32cChecksum,
    "CRC64NVME": CrtCrc64NvmeChecksum,
    "sha1": Sha1Checksum,
    "SHA256": Sha256Checksum,
}


@pytest.mark.parametrize("name", list(ORACLES))
@pytest.mark.parametrize("size", [0, 1, 100_001])
def test_matches_botocore(name: str, size: int) -> None:
    data = os.urandom(size)
    ours = new_checksum(name)
    ours.update(data[: size // 3])
    ours.update(memoryview(data)[size // 3 :])
    ref = ORACLES[name]()
    ref.update(data)
    assert b64(ours) == base64.b64encode(ref.digest()).decode()


def test_empty_crc32_is_what_boto3_sends() -> None:
    assert b64(new_checksum("crc32")) == "AAAAAA=="


def test_unknown_algorithm() -> None:
    with pytest.raises(S3Error) as err:
        new_checksum("md4")
    assert err.value.code == "InvalidRequest"
