"""Migration buckets: objects sealgate did not write are served as stored, only where allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.conftest import backend_client, start_stack


def test_allow_unencrypted_reads(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    rule = '\n[[buckets]]\nname = "legacy-*"\nallow_unencrypted_reads = true\n'
    st = start_stack(tmp_path, moto_url, tls_files, extra=rule)
    try:
        raw = backend_client(moto_url)
        for b in ("legacy-data", "strict-data"):
            raw.create_bucket(Bucket=b)
            raw.put_object(Bucket=b, Key="old.txt", Body=b"written before sealgate", ContentType="text/plain")
        s3 = st.client()
        got = s3.get_object(Bucket="legacy-data", Key="old.txt")
        assert got["Body"].read() == b"written before sealgate" and got["ContentType"] == "text/plain"
        assert s3.get_object(Bucket="legacy-data", Key="old.txt", Range="bytes=8-13")["Body"].read() == b"before"
        assert s3.head_object(Bucket="legacy-data", Key="old.txt")["ContentLength"] == 23
        with pytest.raises(ClientError) as err:
            s3.get_object(Bucket="strict-data", Key="old.txt")
        assert err.value.response["Error"]["Code"] == "InvalidObjectState"
        # New writes into a migration bucket are encrypted as everywhere else.
        s3.put_object(Bucket="legacy-data", Key="new.txt", Body=b"NEW-PLAINTEXT")
        assert b"NEW-PLAINTEXT" not in raw.get_object(Bucket="legacy-data", Key="new.txt")["Body"].read()
        assert s3.get_object(Bucket="legacy-data", Key="new.txt")["Body"].read() == b"NEW-PLAINTEXT"
    finally:
        st.gate.stop()
