"""Hostile POST Object forms against a running sealgate: broken framing, garbled policies and
signatures, odd field sets. Every answer is a well-formed S3 error (or a stored object that reads
back as sent), never a 500 or a hang, and a refused form stores nothing."""

from __future__ import annotations

import base64
import re
from typing import Any

import boto3
import urllib3
from botocore.config import Config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import CLIENT_AKID, CLIENT_SECRET, Stack

_ERROR = re.compile(rb"^<\?xml[^>]*>\s*<Error><Code>[A-Za-z.]+</Code><Message>[^<]*</Message>")
BUCKET = "fuzz-forms"
text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=200)


def _form(stack: Stack) -> dict[str, str]:
    s3 = boto3.client(
        "s3",
        endpoint_url=stack.gate.url,
        aws_access_key_id=CLIENT_AKID,
        aws_secret_access_key=CLIENT_SECRET,
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    fields: dict[str, str] = s3.generate_presigned_post(BUCKET, "fuzz/${filename}")["fields"]
    return fields


def _post(stack: Stack, body: bytes, content_type: str) -> Any:
    http = urllib3.PoolManager(ca_certs=str(stack.ca_path), retries=False, timeout=20)
    return http.request("POST", f"{stack.gate.url}/{BUCKET}", body=body, headers={"Content-Type": content_type})


def _check(stack: Stack, r: Any) -> None:
    assert r.status < 500, r.data[:300]
    assert b"Traceback" not in r.data
    if r.status >= 400:
        assert _ERROR.match(r.data), r.data[:300]
        listed = stack.backend().list_objects_v2(Bucket=BUCKET).get("Contents", [])
        assert [o["Key"] for o in listed if o["Key"].startswith("fuzz/")] == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=2000), flips=st.lists(st.integers(0, 2000), max_size=3))
def test_damaged_bodies(stack: Stack, cut: int, flips: list[int]) -> None:
    stack.client().create_bucket(Bucket=BUCKET)
    fields = _form(stack)
    body, content_type = urllib3.encode_multipart_formdata([*fields.items(), ("file", ("f.bin", b"d" * 500))])
    damaged = bytearray(body[: len(body) - cut % len(body)])
    for at in flips:
        if damaged:
            damaged[at % len(damaged)] ^= 0x20
    r = _post(stack, bytes(damaged), content_type)
    _check(stack, r)
    if r.status < 300:  # what got through unharmed reads back as sent
        for o in stack.backend().list_objects_v2(Bucket=BUCKET).get("Contents", []):
            stack.client().get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
            stack.backend().delete_object(Bucket=BUCKET, Key=o["Key"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy=text, signature=text, extra=st.dictionaries(text.filter(bool), text, max_size=3), ctype=text)
def test_garbled_fields(stack: Stack, policy: str, signature: str, extra: dict[str, str], ctype: str) -> None:
    stack.client().create_bucket(Bucket=BUCKET)
    fields = {**_form(stack), **extra}
    fields["policy"] = policy or base64.b64encode(policy.encode()).decode()
    fields["x-amz-signature"] = signature
    body, content_type = urllib3.encode_multipart_formdata([*fields.items(), ("file", ("f", b"x"))])
    _check(stack, _post(stack, body, content_type))
    # And the same form under a Content-Type that is not quite multipart/form-data.
    _check(stack, _post(stack, body, "multipart/form-data" + ctype))
