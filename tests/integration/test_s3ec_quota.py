"""Issue 19 item 3: one client cannot exhaust the s3ec-v3 upload state of a sealgate process,
and an abort frees that state whichever replica it lands on.

Real sealgate processes (two for the replica case) over TLS, real moto, boto3 as the clients."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import backend_client, make_keyring
from tests.integration.hostile_support import VICTIM, VICTIM_AKID, VICTIM_SECRET, Gate, gate

BUCKET = "s3ec-quota"
RULE = f'\n[[buckets]]\nname = "{BUCKET}"\nformat = "s3ec-v3"\n'


def victim(g: Gate) -> Any:
    return g.client(akid=VICTIM_AKID, secret=VICTIM_SECRET)


def create(s3: Any, key: str) -> str:
    return str(s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"])


def refused(s3: Any, key: str) -> str:
    with pytest.raises(ClientError) as err:
        create(s3, key)
    assert err.value.response["Error"]["Code"] == "SlowDown"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    return str(err.value.response["Error"]["Message"])


def complete_one(s3: Any, key: str) -> None:
    uid = create(s3, key)
    etag = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=uid, PartNumber=1, Body=b"part")["ETag"]
    s3.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=uid, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]}
    )
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"part"


@pytest.fixture
def bucket_ready(moto_url: str) -> None:
    try:
        backend_client(moto_url).create_bucket(Bucket=BUCKET)
    except ClientError:
        pass


def test_one_client_cannot_fill_the_registry_at_the_defaults(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path, bucket_ready: None
) -> None:
    """The finding: one client filled all 4096 entries; by default it now gets 4096 / 16."""
    with gate(tmp_path, moto_url, tls_files, extra=VICTIM + RULE) as g:
        s3 = g.client()
        run = uuid.uuid4().hex[:8]
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(lambda i: create(s3, f"{run}/{i}"), range(256)))
        assert len(set(ids)) == 256
        message = refused(s3, f"{run}/one-more")
        assert "s3ec_uploads_per_client = 256" in message
        complete_one(victim(g), f"{run}/victim")  # another client is still served


def test_quota_per_client_and_for_the_process(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path, bucket_ready: None
) -> None:
    server = "s3ec_uploads = 6\ns3ec_uploads_per_client = 4\n"
    with gate(tmp_path, moto_url, tls_files, server, extra=VICTIM + RULE) as g:
        s3, other = g.client(), victim(g)
        mine = [create(s3, f"q/{i}") for i in range(4)]
        assert "its quota (server.s3ec_uploads_per_client = 4)" in refused(s3, "q/5")
        complete_one(other, "q/victim")  # completing frees its entry
        theirs = [create(other, f"q/v{i}") for i in range(2)]
        assert "its limit (server.s3ec_uploads)" in refused(other, "q/v3")  # the process is full
        s3.abort_multipart_upload(Bucket=BUCKET, Key="q/0", UploadId=mine[0])
        create(other, "q/v3")
        del theirs


def test_an_abort_on_another_replica_frees_the_entry(
    moto_url: str, tls_files: dict[str, Path], tmp_path: Path, bucket_ready: None
) -> None:
    server = "s3ec_uploads_per_client = 3\n"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    make_keyring(tmp_path / "a" / "keyring")
    for name in ("keyring", "keyring.pass"):  # replicas share their keyring
        shutil.copy(tmp_path / "a" / name, tmp_path / "b" / name)
    with (
        gate(tmp_path / "a", moto_url, tls_files, server, extra=VICTIM + RULE) as a,
        gate(tmp_path / "b", moto_url, tls_files, server, extra=VICTIM + RULE) as b,
    ):
        sa, sb = a.client(), b.client()
        keys = [f"r/{os.urandom(4).hex()}" for _ in range(3)]
        ids = [create(sa, k) for k in keys]
        refused(sa, "r/more")
        for k, uid in zip(keys[:2], ids[:2], strict=True):
            sb.abort_multipart_upload(Bucket=BUCKET, Key=k, UploadId=uid)  # lands on the other replica
        time.sleep(1.1)  # the refused create checked them all a moment ago
        create(sa, "r/again")
        create(sa, "r/and-again")
        refused(sa, "r/too-many")
