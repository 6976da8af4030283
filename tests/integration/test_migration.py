"""Migration buckets: objects sealgate did not write are served as stored, only where allowed and
only if the backend last modified them before the bucket's cut-over."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import backend_client, start_stack


def _cut_over_now() -> str:
    """A cut-over between writes: moto's LastModified has second resolution, so a full second
    separates it from what was written before and from what is written after."""
    time.sleep(1.1)
    cut_over = datetime.now(UTC).isoformat()
    time.sleep(1.1)
    return cut_over


def _rule(glob: str, cut_over: str) -> str:
    return f'\n[[buckets]]\nname = "{glob}"\nallow_unencrypted_reads = true\nunencrypted_before = "{cut_over}"\n'


def test_allow_unencrypted_reads(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    raw = backend_client(moto_url)
    for b in ("legacy-data", "strict-data"):
        raw.create_bucket(Bucket=b)
        raw.put_object(Bucket=b, Key="old.txt", Body=b"written before sealgate", ContentType="text/plain")
    st = start_stack(tmp_path, moto_url, tls_files, extra=_rule("legacy-*", _cut_over_now()))
    try:
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


def _refused(call: Any, **kw: Any) -> None:
    with pytest.raises(ClientError) as err:
        call(**kw)
    response = err.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 500, response
    if call.__name__ != "head_object":  # HEAD errors have no body, so no code
        assert response["Error"]["Code"] == "ObjectIntegrityError", response
        assert "cut-over" in response["Error"]["Message"], response


def test_no_downgrade_after_the_cut_over(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    """The attack: with write access to the backend, replace an object sealgate wrote by plaintext
    of one's choosing (or strip its envelope). Before the cut-over it was served as authentic."""
    bucket = f"migrating-{os.getpid()}-{int(time.time() * 1000) % 100000}"
    raw = backend_client(moto_url)
    raw.create_bucket(Bucket=bucket)
    raw.put_object(Bucket=bucket, Key="legacy.txt", Body=b"written before the cut-over")
    st = start_stack(tmp_path, moto_url, tls_files, extra=_rule("migrating-*", _cut_over_now()))
    try:
        s3 = st.client()
        s3.put_object(Bucket=bucket, Key="secret.txt", Body=b"sealed by sealgate")
        s3.put_object(Bucket=bucket, Key="stripped.txt", Body=b"sealed by sealgate too")
        assert s3.get_object(Bucket=bucket, Key="secret.txt")["Body"].read() == b"sealed by sealgate"

        raw.put_object(Bucket=bucket, Key="secret.txt", Body=b"FORGED by the backend", ContentType="text/plain")
        # The ciphertext kept, the envelope dropped: no valid envelope either.
        raw.copy_object(
            Bucket=bucket,
            Key="stripped.txt",
            CopySource={"Bucket": bucket, "Key": "stripped.txt"},
            MetadataDirective="REPLACE",
            Metadata={},
        )
        for key in ("secret.txt", "stripped.txt"):
            _refused(s3.get_object, Bucket=bucket, Key=key)
            _refused(s3.head_object, Bucket=bucket, Key=key)
            _refused(s3.get_object, Bucket=bucket, Key=key, Range="bytes=0-5")
            _refused(s3.copy_object, Bucket=bucket, Key="copy.txt", CopySource={"Bucket": bucket, "Key": key})
            upload = s3.create_multipart_upload(Bucket=bucket, Key="parts.bin")["UploadId"]
            _refused(
                s3.upload_part_copy,
                Bucket=bucket,
                Key="parts.bin",
                UploadId=upload,
                PartNumber=1,
                CopySource={"Bucket": bucket, "Key": key},
            )
            s3.abort_multipart_upload(Bucket=bucket, Key="parts.bin", UploadId=upload)
        with pytest.raises(ClientError):
            raw.head_object(Bucket=bucket, Key="copy.txt")  # nothing was copied

        # What the backend held before the cut-over is still served as stored.
        assert s3.get_object(Bucket=bucket, Key="legacy.txt")["Body"].read() == b"written before the cut-over"
        assert s3.get_object(Bucket=bucket, Key="legacy.txt", Range="bytes=0-6")["Body"].read() == b"written"
        assert s3.head_object(Bucket=bucket, Key="legacy.txt")["ContentLength"] == 27
        # ... but, as before, never copied: sealgate copies only objects it wrote.
        with pytest.raises(ClientError) as err:
            s3.copy_object(Bucket=bucket, Key="copy.txt", CopySource={"Bucket": bucket, "Key": "legacy.txt"})
        assert err.value.response["Error"]["Code"] == "InvalidObjectState"
    finally:
        st.gate.stop()
