"""Any legal object key round-trips and is bound exactly; hostile XML gets a clean S3 error."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Stack
from tests.signing import send, sign

KEYS = [
    "with space",
    "plus+sign",
    "percent%20literal",
    "eq=and&amp",
    "unicodé/ключ/键",
    "double//slash",
    "dots/../up",
    "/leading-slash",
    "trailing/",
    "x" * 1024,
    "tab\tand~tilde*star",
]


@pytest.mark.parametrize("key", KEYS, ids=range(len(KEYS)))
def test_any_legal_key(stack: Stack, bucket: str, key: str) -> None:
    s3 = stack.client()
    body = key.encode() * 3
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(body)
    assert key in [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    meta = stack.backend().head_object(Bucket=bucket, Key=key)["Metadata"]
    assert "sg-v" in meta  # stored under exactly this key, sealed


def test_key_too_long(stack: Stack, bucket: str) -> None:
    with pytest.raises(ClientError) as err:
        stack.client().put_object(Bucket=bucket, Key="x" * 1025, Body=b"x")
    assert err.value.response["Error"]["Code"] == "KeyTooLongError"


XXE = b"""<?xml version="1.0"?>
<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<Delete><Object><Key>&x;</Key></Object></Delete>"""
LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>
<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&d;</ETag></Part></CompleteMultipartUpload>"""


@pytest.mark.parametrize(
    "query,body",
    [
        ("delete", XXE),
        ("delete", LAUGHS),
        ("delete", b"<Delete><Object><Key>unclosed"),
        ("delete", b"x" * (2 * 1024 * 1024)),
        ("delete", b'<Delete><Object><Key>k</Key></Object><Object><ETag>"0"</ETag></Object></Delete>'),
    ],
    ids=["xxe", "billion-laughs", "truncated", "huge", "object-without-key"],
)
def test_hostile_delete_xml(stack: Stack, bucket: str, query: str, body: bytes) -> None:
    import base64
    import hashlib

    url = f"{stack.gate.url}/{bucket}?{query}"
    headers = {"Content-Length": str(len(body)), "Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode()}
    r = send(
        stack.ca_path, "POST", url, sign("POST", url, headers, payload_hash=hashlib.sha256(body).hexdigest()), body
    )
    assert r.status == 400 and r.data.startswith(b"<?xml") and b"<Code>" in r.data
    assert b"root:" not in r.data
    stack.client().head_bucket(Bucket=bucket)  # still serving


@pytest.mark.parametrize("body", [XXE, LAUGHS, b"<CompleteMultipartUpload>"], ids=["xxe", "laughs", "truncated"])
def test_hostile_complete_xml(stack: Stack, bucket: str, body: bytes) -> None:
    import hashlib

    s3 = stack.client()
    uid = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    from urllib.parse import quote

    url = f"{stack.gate.url}/{bucket}/mp?uploadId={quote(uid, safe='')}"
    r = send(
        stack.ca_path,
        "POST",
        url,
        sign("POST", url, {"Content-Length": str(len(body))}, payload_hash=hashlib.sha256(body).hexdigest()),
        body,
    )
    assert r.status == 400 and b"<Code>MalformedXML</Code>" in r.data


@pytest.mark.parametrize(
    "rng", ["bytes=abc", "bytes=5-1", "items=0-1", "bytes=0-1,4-5", "bytes=-0", "bytes=99999999999999999999-"]
)
def test_odd_ranges(stack: Stack, bucket: str, rng: str) -> None:
    s3 = stack.client()
    s3.put_object(Bucket=bucket, Key="r", Body=b"0123456789")
    try:
        got = s3.get_object(Bucket=bucket, Key="r", Range=rng)
    except ClientError as err:
        assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 416
        return
    assert got["Body"].read() == b"0123456789"  # an ignored Range means the whole object, as on S3
