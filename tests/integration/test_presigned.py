"""Presigned URLs mean what S3's mean: what the signer signed, for as long as it allowed, and
nothing a holder of the URL adds. Each attack is refused with 403 and leaves the backend as it
was; the legitimate request next to it still works."""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
import urllib3
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from tests.conftest import CLIENT_AKID, CLIENT_SECRET, Stack, start_stack


def presigner(stack: Stack, *, v4: bool, style: str = "path") -> Any:
    """boto3 making presigned URLs for sealgate: SigV2 is its default for a custom endpoint."""
    extra: dict[str, Any] = {"signature_version": "s3v4"} if v4 else {}
    return boto3.client(
        "s3",
        endpoint_url=stack.gate.url,
        aws_access_key_id=CLIENT_AKID,
        aws_secret_access_key=CLIENT_SECRET,
        region_name="us-east-1",
        verify=str(stack.ca_path),
        config=Config(s3={"addressing_style": style}, **extra),
    )


def send(stack: Stack, method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    """Send to sealgate on loopback over TLS, with the Host header the URL names (or `headers`')."""
    parts = urlsplit(url)
    pool = urllib3.HTTPSConnectionPool(
        "127.0.0.1",
        stack.gate.running.tls_port,
        ca_certs=str(stack.ca_path),
        server_hostname="localhost",
        assert_hostname="localhost",
        retries=False,
    )
    h = {"Host": parts.netloc, **(headers or {})}
    target = parts.path + ("?" + parts.query if parts.query else "")
    return pool.urlopen(method, target, body=body, headers=h, preload_content=True)


def code(resp: Any) -> str:
    m = re.search(rb"<Code>([^<]+)</Code>", resp.data)
    return m.group(1).decode() if m else ""


def backend_state(stack: Stack, bucket: str) -> tuple[object, ...]:
    """Everything a request could have changed in `bucket`, as the backend has it."""
    raw = stack.backend()
    versions = raw.list_object_versions(Bucket=bucket)
    objects = sorted((v["Key"], v["VersionId"], v["ETag"]) for v in versions.get("Versions", []))
    markers = sorted((m["Key"], m["VersionId"]) for m in versions.get("DeleteMarkers", []))
    uploads = raw.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    parts = sorted(
        (u["Key"], p["PartNumber"], p["ETag"])
        for u in uploads
        for p in raw.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts", [])
    )
    heads: list[tuple[object, ...]] = []
    for key, version, _ in objects:
        which = {} if version == "null" else {"VersionId": version}
        head = raw.head_object(Bucket=bucket, Key=key, **which)
        heads.append((key, version, sorted(head.get("Metadata", {}).items()), head.get("ObjectLockLegalHoldStatus")))
        tags = raw.get_object_tagging(Bucket=bucket, Key=key, **which)["TagSet"]
        heads.append((key, version, "tags", sorted((t["Key"], t["Value"]) for t in tags)))
    return objects, markers, [u["UploadId"] for u in uploads], parts, heads


# --------------------------------------------------------------------------- unsigned x-amz-* headers


def test_presigned_put_cannot_become_a_copy(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    s3.put_object(Bucket=bucket, Key="secret", Body=b"the signer may read this")
    url = presigner(stack, v4=True).generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "upload"}, ExpiresIn=300
    )
    before = backend_state(stack, bucket)
    r = send(stack, "PUT", url, b"", {"x-amz-copy-source": f"/{bucket}/secret"})
    assert r.status == 403 and code(r) == "AccessDenied", r.data
    assert b"There were headers present in the request which were not signed" in r.data
    assert b"<HeadersNotSigned>x-amz-copy-source</HeadersNotSigned>" in r.data
    assert backend_state(stack, bucket) == before
    # The URL does what it was made for.
    r = send(stack, "PUT", url, b"uploaded")
    assert r.status == 200, r.data
    assert s3.get_object(Bucket=bucket, Key="upload")["Body"].read() == b"uploaded"


def test_presigned_upload_part_cannot_become_a_part_copy(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    s3.put_object(Bucket=bucket, Key="secret", Body=os.urandom(6 * 1024 * 1024))
    uid = s3.create_multipart_upload(Bucket=bucket, Key="big")["UploadId"]
    url = presigner(stack, v4=True).generate_presigned_url(
        "upload_part", Params={"Bucket": bucket, "Key": "big", "UploadId": uid, "PartNumber": 1}, ExpiresIn=300
    )
    before = backend_state(stack, bucket)
    r = send(stack, "PUT", url, b"", {"x-amz-copy-source": f"/{bucket}/secret"})
    assert r.status == 403 and code(r) == "AccessDenied", r.data
    assert backend_state(stack, bucket) == before
    assert s3.list_parts(Bucket=bucket, Key="big", UploadId=uid).get("Parts", []) == []
    part = os.urandom(100_000)
    r = send(stack, "PUT", url, part)
    assert r.status == 200, r.data
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="big",
        UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": r.headers["ETag"]}]},
    )
    assert s3.get_object(Bucket=bucket, Key="big")["Body"].read() == part


@pytest.mark.parametrize(
    "extra",
    [
        {"x-amz-tagging": "owner=mallory"},
        {"x-amz-meta-owner": "mallory"},
        {"x-amz-object-lock-legal-hold": "ON"},
        {"x-amz-object-lock-mode": "GOVERNANCE", "x-amz-object-lock-retain-until-date": "2099-01-01T00:00:00Z"},
    ],
    ids=["tagging", "metadata", "legal-hold", "retention"],
)
def test_presigned_put_refuses_unsigned_settings(stack: Stack, extra: dict[str, str]) -> None:
    bucket = f"lock-{os.getpid()}-{os.urandom(3).hex()}"
    stack.client().create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    url = presigner(stack, v4=True).generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=300
    )
    r = send(stack, "PUT", url, b"body", extra)
    assert r.status == 403 and code(r) == "AccessDenied", r.data
    names = ", ".join(sorted(extra))
    assert f"<HeadersNotSigned>{names}</HeadersNotSigned>".encode() in r.data
    assert backend_state(stack, bucket) == ([], [], [], [], [])
    # Signed, the same headers are taken (the signer chose them).
    params: dict[str, Any] = {"Bucket": bucket, "Key": "k"}
    if "x-amz-tagging" in extra:
        params["Tagging"] = extra["x-amz-tagging"]
    if "x-amz-meta-owner" in extra:
        params["Metadata"] = {"owner": "mallory"}
    if "x-amz-object-lock-legal-hold" in extra:
        params["ObjectLockLegalHoldStatus"] = "ON"
    if "x-amz-object-lock-mode" in extra:
        params["ObjectLockMode"] = "GOVERNANCE"
        params["ObjectLockRetainUntilDate"] = dt.datetime(2099, 1, 1, tzinfo=dt.UTC)
    signed_url = presigner(stack, v4=True).generate_presigned_url("put_object", Params=params, ExpiresIn=300)
    # Object Lock uploads need a checksum of the body on S3 (sealgate sends one to the backend).
    r = send(stack, "PUT", signed_url, b"body", extra)
    assert r.status == 200, r.data
    assert stack.client().get_object(Bucket=bucket, Key="k")["Body"].read() == b"body"


# --------------------------------------------------------------------------- SigV2 presigned URLs


@pytest.fixture
def locked(stack: Stack) -> Iterator[str]:
    name = f"lock-{os.getpid()}-{os.urandom(3).hex()}"
    stack.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    yield name


def test_v2_put_url_cannot_set_a_legal_hold(stack: Stack, locked: str) -> None:
    s3 = stack.client()
    s3.put_object(Bucket=locked, Key="record", Body=b"record")
    url = presigner(stack, v4=False).generate_presigned_url(
        "put_object", Params={"Bucket": locked, "Key": "record"}, ExpiresIn=300
    )
    assert "AWSAccessKeyId=" in url
    before = backend_state(stack, locked)
    hold = b'<LegalHold xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Status>ON</Status></LegalHold>'
    for sub in ("legal-hold", "legal%2Dhold", "retention"):
        r = send(stack, "PUT", f"{url}&{sub}", hold)
        assert r.status == 403, (sub, r.status, r.data)
    assert backend_state(stack, locked) == before
    assert stack.backend().head_object(Bucket=locked, Key="record").get("ObjectLockLegalHoldStatus") != "ON"
    r = send(stack, "PUT", url, b"new version")
    assert r.status == 200, r.data
    assert s3.get_object(Bucket=locked, Key="record")["Body"].read() == b"new version"


def test_v2_url_is_bound_to_its_bucket(stack: Stack, bucket: str) -> None:
    other = bucket + "-b"
    stack.client().create_bucket(Bucket=other)
    port = stack.gate.running.tls_port
    url = presigner(stack, v4=False).generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=300
    )
    assert urlsplit(url).path == f"/{bucket}/k"
    before = backend_state(stack, other)
    # Path-style /bucket/k sent as a virtual-hosted request for `other` would write other's "bucket/k".
    r = send(stack, "PUT", url, b"moved", {"Host": f"{other}.localhost:{port}"})
    assert r.status == 403 and code(r) == "SignatureDoesNotMatch", r.data
    assert backend_state(stack, other) == before
    # A genuine virtual-hosted SigV2 URL works, and cannot be moved to another bucket either.
    vurl = presigner(stack, v4=False, style="virtual").generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "vk"}, ExpiresIn=300
    )
    assert urlsplit(vurl).netloc == f"{bucket}.localhost:{port}"
    r = send(stack, "PUT", vurl, b"moved", {"Host": f"{other}.localhost:{port}"})
    assert r.status == 403, r.data
    assert backend_state(stack, other) == before
    r = send(stack, "PUT", vurl, b"virtual")
    assert r.status == 200, r.data
    vget = presigner(stack, v4=False, style="virtual").generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "vk"}, ExpiresIn=300
    )
    r = send(stack, "GET", vget)
    assert r.status == 200 and r.data == b"virtual"
    r = send(stack, "PUT", url, b"path")
    assert r.status == 200, r.data
    assert stack.client().get_object(Bucket=bucket, Key="k")["Body"].read() == b"path"


# --------------------------------------------------------------------------- lifetimes


def test_v2_lifetime_is_at_most_a_week(stack: Stack, bucket: str) -> None:
    s3v2 = presigner(stack, v4=False)
    stack.client().put_object(Bucket=bucket, Key="k", Body=b"data")
    decade = s3v2.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=10 * 365 * 86400
    )
    r = send(stack, "GET", decade)
    assert r.status == 403 and code(r) == "AuthorizationQueryParametersError", r.data
    before = backend_state(stack, bucket)
    put = s3v2.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=10 * 365 * 86400)
    assert send(stack, "PUT", put, b"overwritten").status == 403
    assert backend_state(stack, bucket) == before
    week = s3v2.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=604800)
    r = send(stack, "GET", week)
    assert r.status == 200 and r.data == b"data"


def sigv4_url(stack: Stack, bucket: str, key: str, expires: int, when: dt.datetime | None = None) -> str:
    from unittest import mock

    req = AWSRequest(method="GET", url=f"{stack.gate.url}/{bucket}/{key}")
    auth = S3SigV4QueryAuth(Credentials(CLIENT_AKID, CLIENT_SECRET), "s3", "us-east-1", expires=expires)
    if when is None:
        auth.add_auth(req)
    else:  # signed at `when`: botocore takes the time from this function
        with mock.patch("botocore.auth.get_current_datetime", return_value=when.replace(tzinfo=None)):
            auth.add_auth(req)
    return str(req.url)


def test_sigv4_expiry_answers(stack: Stack, bucket: str) -> None:
    """As S3 answers (ceph s3-tests' x_amz_expires tests): 403 for a lifetime over a week, a
    negative or zero one, and for an expired URL."""
    stack.client().put_object(Bucket=bucket, Key="k", Body=b"data")
    r = send(stack, "GET", sigv4_url(stack, bucket, "k", 604801))
    assert r.status == 403 and code(r) == "AuthorizationQueryParametersError", r.data
    assert b"X-Amz-Expires must be less than a week (in seconds)" in r.data
    for expires in (-7, 0):
        r = send(stack, "GET", sigv4_url(stack, bucket, "k", expires))
        assert r.status == 403, (expires, r.data)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    r = send(stack, "GET", sigv4_url(stack, bucket, "k", 3600, when=old))
    assert r.status == 403 and code(r) == "AccessDenied" and b"Request has expired" in r.data
    r = send(stack, "GET", sigv4_url(stack, bucket, "k", 604800))
    assert r.status == 200 and r.data == b"data"


def test_configured_maximum_lifetime(moto_url: str, tls_files: dict[str, Path], tmp_path: Path) -> None:
    st = start_stack(tmp_path, moto_url, tls_files, server_extra="presign_max_seconds = 3600")
    try:
        st.client().create_bucket(Bucket="short-lived")
        st.client().put_object(Bucket="short-lived", Key="k", Body=b"data")
        for v4 in (False, True):
            s3 = presigner(st, v4=v4)
            long = s3.generate_presigned_url("get_object", Params={"Bucket": "short-lived", "Key": "k"}, ExpiresIn=7200)
            r = send(st, "GET", long)
            assert r.status == 403 and code(r) == "AuthorizationQueryParametersError", (v4, r.data)
            ok = s3.generate_presigned_url("get_object", Params={"Bucket": "short-lived", "Key": "k"}, ExpiresIn=3600)
            r = send(st, "GET", ok)
            assert r.status == 200 and r.data == b"data", (v4, r.data)
    finally:
        st.gate.stop()
