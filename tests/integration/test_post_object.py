"""POST Object over real TLS: forms made by botocore's generate_presigned_post (SigV4 and SigV2),
sent as browsers send them, read back through sealgate and looked at on the backend (moto).

Every refused form answers S3's error and leaves the bucket as it was on the backend."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import socket
import ssl
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
import urllib3
from botocore.config import Config

from tests.conftest import CLIENT_AKID, CLIENT_SECRET, Stack, start_stack

GATEWAY = ("SGPOSTGATEWAY0000001", "post-gateway-secret-0001")
S3EC_BUCKET = f"post-s3ec-{os.getpid()}-{os.urandom(2).hex()}"
ORIGIN = "https://app.example"


def presigner(stack: Stack, *, v4: bool = True, akid: str = CLIENT_AKID, secret: str = CLIENT_SECRET) -> Any:
    """boto3 making POST forms for sealgate (SigV2 is its default for a custom endpoint)."""
    extra: dict[str, Any] = {"signature_version": "s3v4"} if v4 else {}
    return boto3.client(
        "s3",
        endpoint_url=stack.gate.url,
        aws_access_key_id=akid,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, **extra),
    )


def post_form(
    stack: Stack,
    url: str,
    fields: dict[str, str] | list[tuple[str, Any]],
    data: bytes,
    *,
    filename: str = "photo.jpg",
    after: list[tuple[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    """POST a multipart/form-data body (the fields, the file, then `after`) over TLS."""
    parts: list[tuple[str, Any]] = list(fields.items()) if isinstance(fields, dict) else list(fields)
    parts.append(("file", (filename, data, "application/octet-stream")))
    parts += after or []
    body, content_type = urllib3.encode_multipart_formdata(parts)
    target = urlsplit(url)
    pool = urllib3.HTTPSConnectionPool(
        "127.0.0.1",
        stack.gate.running.tls_port,
        ca_certs=str(stack.ca_path),
        server_hostname="localhost",
        assert_hostname="localhost",
        retries=False,
    )
    h = {"Host": target.netloc, "Content-Type": content_type, **(headers or {})}
    return pool.urlopen("POST", target.path or "/", body=body, headers=h, preload_content=True, redirect=False)


def code(resp: Any) -> str:
    m = re.search(rb"<Code>([^<]+)</Code>", resp.data)
    return m.group(1).decode() if m else ""


def message(resp: Any) -> str:
    m = re.search(rb"<Message>([^<]*)</Message>", resp.data)
    return m.group(1).decode() if m else ""


def backend_keys(stack: Stack, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in stack.backend().list_objects_v2(Bucket=bucket).get("Contents", []))


def test_sigv4_form_stores_ciphertext_that_reads_back(stack: Stack, bucket: str) -> None:
    data = os.urandom(100_000)
    post = presigner(stack).generate_presigned_post(
        bucket,
        "up/${filename}",
        Fields={"Content-Type": "image/jpeg", "x-amz-meta-color": "blue"},
        Conditions=[{"x-amz-meta-color": "blue"}, ["starts-with", "$Content-Type", "image/"]],
        ExpiresIn=300,
    )
    resp = post_form(stack, post["url"], post["fields"], data)
    assert resp.status == 204, resp.data
    etag = resp.headers["ETag"]
    assert resp.headers["Location"].endswith(f"/{bucket}/up/photo.jpg")
    got = stack.client().get_object(Bucket=bucket, Key="up/photo.jpg")
    assert got["Body"].read() == data
    assert got["ContentType"] == "image/jpeg" and got["Metadata"] == {"color": "blue"}
    assert got["ETag"] == etag
    raw = stack.backend().get_object(Bucket=bucket, Key="up/photo.jpg")
    stored = raw["Body"].read()
    assert data not in stored and data[:64] not in stored and len(stored) > len(data)
    assert "color" not in raw["Metadata"] and any(k.startswith("sg-") for k in raw["Metadata"])


def test_large_file_streams_and_answers_201(stack: Stack, bucket: str) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    post = presigner(stack).generate_presigned_post(
        bucket,
        "big/blob",
        Fields={"success_action_status": "201"},
        Conditions=[{"success_action_status": "201"}, ["content-length-range", 1, 10 * 1024 * 1024]],
    )
    resp = post_form(stack, post["url"], post["fields"], data)
    assert resp.status == 201, resp.data
    assert f"<Bucket>{bucket}</Bucket>".encode() in resp.data and b"<Key>big/blob</Key>" in resp.data
    assert resp.headers["ETag"].encode() in resp.data.replace(b"&quot;", b'"')
    assert stack.client().get_object(Bucket=bucket, Key="big/blob")["Body"].read() == data


def test_sigv2_form_and_redirect(stack: Stack, bucket: str) -> None:
    data = b"hello from a SigV2 form"
    post = presigner(stack, v4=False).generate_presigned_post(
        bucket,
        "v2.txt",
        Fields={"success_action_redirect": "https://app.example/done?x=1"},
        Conditions=[{"success_action_redirect": "https://app.example/done?x=1"}],
    )
    assert "AWSAccessKeyId" in post["fields"]
    resp = post_form(stack, post["url"], post["fields"], data)
    assert resp.status == 303, resp.data
    target = urlsplit(resp.headers["Location"])
    assert (target.netloc, target.path) == ("app.example", "/done")
    query = parse_qs(target.query)
    assert query["x"] == ["1"] and query["bucket"] == [bucket] and query["key"] == ["v2.txt"]
    assert query["etag"] == [resp.headers["ETag"]]
    assert stack.client().get_object(Bucket=bucket, Key="v2.txt")["Body"].read() == data


def test_virtual_hosted_form(stack: Stack, bucket: str) -> None:
    post = presigner(stack).generate_presigned_post(bucket, "vh.txt")
    url = f"https://{bucket}.localhost:{stack.gate.running.tls_port}/"
    resp = post_form(stack, url, post["fields"], b"virtual")
    assert resp.status == 204, resp.data
    assert stack.client().get_object(Bucket=bucket, Key="vh.txt")["Body"].read() == b"virtual"


def test_tags_acl_and_trailing_fields(stack: Stack, bucket: str) -> None:
    tagging = "<Tagging><TagSet><Tag><Key>team</Key><Value>a b</Value></Tag></TagSet></Tagging>"
    post = presigner(stack).generate_presigned_post(
        bucket,
        "tagged",
        Fields={"tagging": tagging, "acl": "private"},
        Conditions=[{"tagging": tagging}, {"acl": "private"}],
    )
    # Fields after the file are ignored, as S3 ignores them.
    resp = post_form(stack, post["url"], post["fields"], b"tagged body", after=[("submit", "Upload")])
    assert resp.status == 204, resp.data
    tags = stack.backend().get_object_tagging(Bucket=bucket, Key="tagged")["TagSet"]
    assert tags == [{"Key": "team", "Value": "a b"}]
    assert stack.client().get_object(Bucket=bucket, Key="tagged")["Body"].read() == b"tagged body"


def _refused(stack: Stack, bucket: str, resp: Any, status: int, error: str, text: str = "") -> None:
    assert (resp.status, code(resp)) == (status, error), resp.data
    assert text in message(resp)
    assert backend_keys(stack, bucket) == []


def test_expired_policy(stack: Stack, bucket: str) -> None:
    post = presigner(stack).generate_presigned_post(bucket, "late", ExpiresIn=-5)
    resp = post_form(stack, post["url"], post["fields"], b"too late")
    _refused(stack, bucket, resp, 403, "AccessDenied", "Invalid according to Policy: Policy expired.")


def test_policy_lasting_longer_than_the_server_allows(stack: Stack, bucket: str) -> None:
    post = presigner(stack).generate_presigned_post(bucket, "forever", ExpiresIn=30 * 24 * 3600)
    resp = post_form(stack, post["url"], post["fields"], b"x")
    _refused(stack, bucket, resp, 403, "AccessDenied", "Policy expiration must be at most")


def test_tampered_policy_and_wrong_signature(stack: Stack, bucket: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    post = presigner(stack).generate_presigned_post(bucket, "fixed/name")
    doc = json.loads(base64.b64decode(post["fields"]["policy"]))
    doc["conditions"] = [c for c in doc["conditions"] if "key" not in c] + [["starts-with", "$key", ""]]
    tampered = {**post["fields"], "policy": base64.b64encode(json.dumps(doc).encode()).decode(), "key": "any"}
    resp = post_form(stack, post["url"], tampered, b"x")
    _refused(stack, bucket, resp, 403, "SignatureDoesNotMatch")
    forged = {**post["fields"], "x-amz-signature": "0" * 64}
    _refused(stack, bucket, post_form(stack, post["url"], forged, b"x"), 403, "SignatureDoesNotMatch")
    assert "0" * 64 not in resp.data.decode() and post["fields"]["x-amz-signature"] not in resp.data.decode()
    # Neither the signature nor the policy reaches a log line (the access log did log these requests).
    assert f"/{bucket} 403" in caplog.text
    for secret in (post["fields"]["x-amz-signature"], "0" * 64, post["fields"]["policy"], CLIENT_SECRET):
        assert secret not in caplog.text


def test_unknown_access_key(stack: Stack, bucket: str) -> None:
    post = presigner(stack, akid="SGNOSUCHKEY000000001", secret="whatever").generate_presigned_post(bucket, "k")
    _refused(stack, bucket, post_form(stack, post["url"], post["fields"], b"x"), 403, "InvalidAccessKeyId")


def test_unsigned_form_is_refused(stack: Stack, bucket: str) -> None:
    resp = post_form(stack, f"{stack.gate.url}/{bucket}", {"key": "anon"}, b"x")
    _refused(stack, bucket, resp, 403, "AccessDenied")


def test_key_outside_starts_with(stack: Stack, bucket: str) -> None:
    post = presigner(stack).generate_presigned_post(bucket, "user/alice/${filename}")
    fields = {**post["fields"], "key": "user/bob/${filename}"}
    resp = post_form(stack, post["url"], fields, b"x")
    failed = 'Policy Condition failed: ["starts-with", "$key", "user/alice/"]'
    _refused(stack, bucket, resp, 403, "AccessDenied", failed)


def test_extra_field_not_in_the_policy(stack: Stack, bucket: str) -> None:
    post = presigner(stack).generate_presigned_post(bucket, "k")
    fields = {**post["fields"], "x-amz-meta-added": "by the holder", "x-ignore-note": "free"}
    resp = post_form(stack, post["url"], fields, b"x")
    # x-ignore-* fields need no condition; x-amz-meta-added does.
    extra = "Invalid according to Policy: Extra input fields: x-amz-meta-added"
    _refused(stack, bucket, resp, 403, "AccessDenied", extra)


def test_wrong_bucket(stack: Stack, bucket: str) -> None:
    other = bucket + "-other"
    stack.client().create_bucket(Bucket=other)
    post = presigner(stack).generate_presigned_post(other, "k")
    resp = post_form(stack, f"{stack.gate.url}/{bucket}", post["fields"], b"x")
    _refused(stack, bucket, resp, 403, "AccessDenied", f'["eq", "$bucket", "{other}"]')


@pytest.mark.parametrize(
    ("size", "error", "limits"),
    [
        (2000, "EntityTooLarge", (10, 1000)),
        (5, "EntityTooSmall", (10, 1000)),
        (1024 * 1024, "EntityTooLarge", (0, 300_000)),  # refused from its size, before it streams
        (400_000, "EntityTooSmall", (500_000, 900_000)),
    ],
)
def test_content_length_range(stack: Stack, bucket: str, size: int, error: str, limits: tuple[int, int]) -> None:
    post = presigner(stack).generate_presigned_post(
        bucket, "sized", Conditions=[["content-length-range", limits[0], limits[1]]]
    )
    resp = post_form(stack, post["url"], post["fields"], b"z" * size)
    _refused(stack, bucket, resp, 400, error)


def test_large_file_that_is_not_the_last_field(stack: Stack, bucket: str) -> None:
    post = presigner(stack).generate_presigned_post(bucket, "misplaced")
    resp = post_form(stack, post["url"], post["fields"], os.urandom(600_000), after=[("submit", "Upload")])
    _refused(stack, bucket, resp, 400, "MalformedPOSTRequest", "must be the last field")


def test_reserved_metadata_name(stack: Stack, bucket: str) -> None:
    post = presigner(stack).generate_presigned_post(
        bucket, "meta", Fields={"x-amz-meta-sg-k": "forged"}, Conditions=[{"x-amz-meta-sg-k": "forged"}]
    )
    resp = post_form(stack, post["url"], post["fields"], b"x")
    _refused(stack, bucket, resp, 400, "InvalidArgument", "x-amz-meta-sg-k is reserved")


def test_no_file(stack: Stack, bucket: str) -> None:
    post = presigner(stack).generate_presigned_post(bucket, "k")
    body, content_type = urllib3.encode_multipart_formdata(list(post["fields"].items()))
    resp = urllib3.PoolManager(ca_certs=str(stack.ca_path)).request(
        "POST", post["url"], body=body, headers={"Content-Type": content_type}
    )
    _refused(stack, bucket, resp, 400, "InvalidArgument", "exactly one file")


@pytest.fixture(scope="module")
def guarded(moto_url: str, tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A sealgate whose gateway client may only PutObject under uploads/ (and tag nothing)."""
    policy = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::*/uploads/*"}],
        }
    )
    full = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})
    extra = (
        f'[[buckets]]\nname = "{S3EC_BUCKET}"\nformat = "s3ec-v3"\n'
        f'[[clients]]\nname = "gateway"\naccess_key_id = "{GATEWAY[0]}"\nsecret_access_key = "{GATEWAY[1]}"\n'
        f"[[policies]]\nname = \"full\"\nprincipals = [\"tester\"]\ndocument = '''{full}'''\n"
        f"[[policies]]\nname = \"uploads\"\nprincipals = [\"gateway\"]\ndocument = '''{policy}'''\n"
    )
    s = start_stack(tmp_path_factory.mktemp("post-guarded"), moto_url, tls_files, extra=extra)
    yield s
    s.gate.stop()


def test_identity_policy_decides_before_any_backend_call(guarded: Stack) -> None:
    bucket = f"post-guarded-{os.getpid()}-{os.urandom(2).hex()}"
    guarded.client().create_bucket(Bucket=bucket)
    gw = presigner(guarded, akid=GATEWAY[0], secret=GATEWAY[1])
    post = gw.generate_presigned_post(bucket, "uploads/ok.txt")
    assert post_form(guarded, post["url"], post["fields"], b"allowed").status == 204
    post = gw.generate_presigned_post(bucket, "elsewhere/no.txt")
    resp = post_form(guarded, post["url"], post["fields"], b"refused")
    assert (resp.status, code(resp), message(resp)) == (403, "AccessDenied", "Access Denied")
    tagging = "<Tagging><TagSet><Tag><Key>a</Key><Value>b</Value></Tag></TagSet></Tagging>"
    post = gw.generate_presigned_post(
        bucket, "uploads/tagged", Fields={"tagging": tagging}, Conditions=[{"tagging": tagging}]
    )
    assert code(post_form(guarded, post["url"], post["fields"], b"x")) == "AccessDenied"  # s3:PutObjectTagging
    assert backend_keys(guarded, bucket) == ["uploads/ok.txt"]
    # On a bucket the backend does not have, the answer is S3's NoSuchBucket, as to anyone (its
    # settings are read before the decision; nothing is stored).
    post = gw.generate_presigned_post("no-such-bucket-for-post", "elsewhere/no.txt")
    assert code(post_form(guarded, post["url"], post["fields"], b"x")) == "NoSuchBucket"


def test_s3ec_v3_bucket_stores_its_format(guarded: Stack) -> None:
    guarded.client().create_bucket(Bucket=S3EC_BUCKET)
    data = os.urandom(70_000)
    post = presigner(guarded).generate_presigned_post(
        S3EC_BUCKET, "s3ec.bin", Fields={"x-amz-meta-owner": "team"}, Conditions=[{"x-amz-meta-owner": "team"}]
    )
    assert post_form(guarded, post["url"], post["fields"], data).status == 204
    got = guarded.client().get_object(Bucket=S3EC_BUCKET, Key="s3ec.bin")
    assert got["Body"].read() == data and got["Metadata"]["owner"] == "team"
    raw = guarded.backend().get_object(Bucket=S3EC_BUCKET, Key="s3ec.bin")
    assert raw["Body"].read()[: len(data)] != data and "x-amz-c" in raw["Metadata"]


def test_cors_headers_on_the_answer(stack: Stack, bucket: str) -> None:
    rules = {"CORSRules": [{"AllowedOrigins": [ORIGIN], "AllowedMethods": ["POST"], "ExposeHeaders": ["ETag"]}]}
    stack.client().put_bucket_cors(Bucket=bucket, CORSConfiguration=rules)
    post = presigner(stack).generate_presigned_post(bucket, "from-browser")
    resp = post_form(stack, post["url"], post["fields"], b"x", headers={"Origin": ORIGIN})
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert resp.headers["Access-Control-Expose-Headers"] == "ETag"


def test_checksum_field_is_checked(stack: Stack, bucket: str) -> None:
    data = b"checked body"
    good = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    for value, status in (("AAAAAA==", 400), (good, 204)):
        post = presigner(stack).generate_presigned_post(
            bucket, "summed", Fields={"x-amz-checksum-crc32": value}, Conditions=[{"x-amz-checksum-crc32": value}]
        )
        resp = post_form(stack, post["url"], post["fields"], data)
        assert resp.status == status, resp.data
        if status == 400:
            assert code(resp) == "BadDigest" and backend_keys(stack, bucket) == []
    assert stack.client().get_object(Bucket=bucket, Key="summed")["Body"].read() == data


def test_curl_form_with_expect_continue(stack: Stack, bucket: str, tmp_path: Path) -> None:
    """curl asks for 100 Continue on large bodies: a form's signature is in its body, so it gets it."""
    data = os.urandom(2 * 1024 * 1024)
    (tmp_path / "f.bin").write_bytes(data)
    post = presigner(stack).generate_presigned_post(bucket, "curl/${filename}")
    args = ["curl", "-sS", "--cacert", str(stack.ca_path), "-o", "/dev/null", "-w", "%{http_code}"]
    for name, value in post["fields"].items():
        args += ["--form-string", f"{name}={value}"]
    args += ["-F", f"file=@{tmp_path / 'f.bin'}", "-H", "Expect: 100-continue", post["url"]]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout == "204", out.stderr
    assert stack.client().get_object(Bucket=bucket, Key="curl/f.bin")["Body"].read() == data


def test_client_gone_mid_file_stores_nothing(stack: Stack, bucket: str) -> None:
    """A large file whose sender disconnects halfway: the backend never gets its last segment."""
    post = presigner(stack).generate_presigned_post(bucket, "cut/short")
    data = os.urandom(2 * 1024 * 1024)
    body, content_type = urllib3.encode_multipart_formdata([*post["fields"].items(), ("file", ("f", data))])
    head = (
        f"POST /{bucket} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    ctx = ssl.create_default_context(cafile=str(stack.ca_path))
    raw = socket.create_connection(("127.0.0.1", stack.gate.running.tls_port))
    with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(head + body[: len(body) // 2])
        time.sleep(0.5)  # the first segments are on their way to the backend
    for _ in range(10):  # while the server notices the disconnect and gives the upload up
        time.sleep(0.2)
        assert backend_keys(stack, bucket) == []
    # The same form, sent whole, works.
    assert post_form(stack, post["url"], post["fields"], data).status == 204
    assert stack.client().get_object(Bucket=bucket, Key="cut/short")["Body"].read() == data


def test_content_md5_field_is_checked_and_is_the_etag(stack: Stack, bucket: str) -> None:
    data = b"an md5-checked body"
    digest = hashlib.md5(data).digest()
    for value, status in ((base64.b64encode(b"\0" * 16).decode(), 400), (base64.b64encode(digest).decode(), 204)):
        post = presigner(stack).generate_presigned_post(
            bucket, "md5", Fields={"Content-MD5": value}, Conditions=[{"Content-MD5": value}]
        )
        resp = post_form(stack, post["url"], post["fields"], data)
        assert resp.status == status, resp.data
        if status == 400:
            assert code(resp) == "BadDigest" and backend_keys(stack, bucket) == []
    assert resp.headers["ETag"] == f'"{digest.hex()}"'
    assert stack.client().head_object(Bucket=bucket, Key="md5")["ETag"] == f'"{digest.hex()}"'


def test_filename_in_metadata_and_repeated_fields(stack: Stack, bucket: str) -> None:
    """${filename} is expanded in every field before the policy is checked; a field sent twice
    is checked (and stored) as its values joined by a comma, as S3 does."""
    post = presigner(stack).generate_presigned_post(
        bucket,
        "named/${filename}",
        Fields={"x-amz-meta-original": "${filename}"},
        Conditions=[{"x-amz-meta-original": "report.pdf"}, {"x-amz-meta-tag": "a,b"}],
    )
    fields = [*post["fields"].items(), ("x-amz-meta-tag", "a"), ("x-amz-meta-tag", "b")]
    resp = post_form(stack, post["url"], fields, b"%PDF", filename="report.pdf")
    assert resp.status == 204, resp.data
    got = stack.client().get_object(Bucket=bucket, Key="named/report.pdf")
    assert got["Metadata"] == {"original": "report.pdf", "tag": "a,b"}


def test_fields_before_the_file_are_bounded(stack: Stack, bucket: str) -> None:
    post = presigner(stack).generate_presigned_post(bucket, "k")
    fields = {**post["fields"], "x-ignore-padding": "p" * 21_000}
    resp = post_form(stack, post["url"], fields, b"x")
    _refused(stack, bucket, resp, 400, "MaxPostPreDataLengthExceeded")


def test_empty_file_and_a_unicode_key(stack: Stack, bucket: str) -> None:
    post = presigner(stack).generate_presigned_post(
        bucket,
        "dir/${filename}",
        Fields={"success_action_status": "201"},
        Conditions=[{"success_action_status": "201"}],
    )
    resp = post_form(stack, post["url"], post["fields"], b"", filename="résumé 1.txt")
    assert resp.status == 201, resp.data
    assert "<Key>dir/résumé 1.txt</Key>".encode() in resp.data
    assert resp.headers["Location"].endswith(f"/{bucket}/dir/r%C3%A9sum%C3%A9%201.txt")
    got = stack.client().get_object(Bucket=bucket, Key="dir/résumé 1.txt")
    assert got["Body"].read() == b"" and got["ContentLength"] == 0
