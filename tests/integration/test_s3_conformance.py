"""Behaviours ceph/s3-tests found different through sealgate than straight to the backend
(issue 18), each as a client sees it: 304 names the ETag, a delete marker says so, PUT takes
If-None-Match with ETags, and presigned URLs may carry the query parameters the JavaScript SDK v3
puts there (a payload hash and a checksum, which then bind the body)."""

from __future__ import annotations

import base64
import zlib
from typing import Any

import pytest
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.conftest import CLIENT_AKID, CLIENT_SECRET, Stack
from tests.integration.test_presigned import code, send


def _error(call: Any) -> dict[str, Any]:
    with pytest.raises(ClientError) as err:
        call()
    return dict(err.value.response)


def test_not_modified_names_the_etag(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    etag = s3.put_object(Bucket=bucket, Key="k", Body=b"cached")["ETag"]
    for call in (s3.get_object, s3.head_object):
        answer = _error(lambda call=call: call(Bucket=bucket, Key="k", IfNoneMatch=etag))
        headers = answer["ResponseMetadata"]["HTTPHeaders"]
        assert answer["ResponseMetadata"]["HTTPStatusCode"] == 304
        assert headers["etag"] == etag and "last-modified" in headers


def test_a_delete_marker_says_so(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=bucket, Key="k", Body=b"v1")
    marker = s3.delete_object(Bucket=bucket, Key="k")["VersionId"]
    # What the backend says of the marker reaches the client (moto says it on HEAD only).
    headers = _error(lambda: s3.head_object(Bucket=bucket, Key="k"))["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amz-delete-marker"] == "true"
    assert headers["x-amz-version-id"] == marker
    named = _error(lambda: s3.head_object(Bucket=bucket, Key="k", VersionId=marker))["ResponseMetadata"]
    assert named["HTTPStatusCode"] == 405 and named["HTTPHeaders"]["x-amz-delete-marker"] == "true"


def test_put_if_none_match_with_etags(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    first = s3.put_object(Bucket=bucket, Key="k", Body=b"first")["ETag"]
    refused = _error(lambda: s3.put_object(Bucket=bucket, Key="k", Body=b"second", IfNoneMatch=first))
    assert refused["Error"]["Code"] == "PreconditionFailed"
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"first"
    s3.put_object(Bucket=bucket, Key="k", Body=b"third", IfNoneMatch='"0123456789abcdef0123456789abcdef"')
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"third"
    s3.put_object(Bucket=bucket, Key="new", Body=b"fresh", IfNoneMatch=first)  # nothing there: stored
    assert s3.get_object(Bucket=bucket, Key="new")["Body"].read() == b"fresh"


def _js_presigned(stack: Stack, method: str, bucket: str, key: str, extra: dict[str, str]) -> str:
    """A SigV4 presigned URL with `extra` query parameters signed in, as the JavaScript SDK v3's
    presigner makes them (X-Amz-Content-Sha256, x-id, checksum parameters)."""
    query = "&".join(f"{k}={v}" for k, v in extra.items())
    req = AWSRequest(method=method, url=f"{stack.gate.url}/{bucket}/{key}?{query}")
    S3SigV4QueryAuth(Credentials(CLIENT_AKID, CLIENT_SECRET), "s3", "us-east-1", expires=300).add_auth(req)
    return str(req.url)


def _crc32(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode().replace("=", "%3D").replace("+", "%2B")


def test_presigned_urls_with_the_js_sdk_query_parameters(stack: Stack, bucket: str) -> None:
    body = b"uploaded from a browser"
    common = {"X-Amz-Content-Sha256": "UNSIGNED-PAYLOAD", "x-id": "PutObject"}
    checksum = {"x-amz-sdk-checksum-algorithm": "CRC32", "x-amz-checksum-crc32": _crc32(body)}
    put = send(stack, "PUT", _js_presigned(stack, "PUT", bucket, "js", {**common, **checksum}), body)
    assert put.status == 200, put.data
    get = send(stack, "GET", _js_presigned(stack, "GET", bucket, "js", {**common, "x-id": "GetObject"}))
    assert get.status == 200 and get.data == body
    # The checksum in the query binds the body: another body is refused and nothing is stored.
    other = send(stack, "PUT", _js_presigned(stack, "PUT", bucket, "js2", {**common, **checksum}), b"something else")
    assert other.status == 400 and code(other) == "BadDigest", other.data
    assert (
        _error(lambda: stack.client().head_object(Bucket=bucket, Key="js2"))["ResponseMetadata"]["HTTPStatusCode"]
        == 404
    )
