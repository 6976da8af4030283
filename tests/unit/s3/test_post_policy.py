"""POST policies (proxy/s3/post_policy.py): botocore's generate_presigned_post as the oracle for
signatures, and S3's rules for conditions, extra fields, lengths and expiry. Pure: no server."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.config import Config
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.s3.errors import S3Error
from proxy.s3.post_policy import (
    EXEMPT_V4,
    Condition,
    PostPolicy,
    Signer,
    check_conditions,
    check_expiration,
    check_length,
    exempt_fields,
    expand_filename,
    object_headers,
    parse_policy,
    tagging_header,
    verify_signature,
)
from proxy.s3.sigv4 import ClientCredentials

AKID, SECRET = "AKIDPOSTTEST", "post-secret-0123456789"
CREDS = ClientCredentials(AKID, SECRET, "tester")


def lookup(akid: str) -> ClientCredentials | None:
    return CREDS if akid == AKID else None


def form(v4: bool = True, **kw: Any) -> dict[str, str]:
    """botocore's own form fields, by lower-case name as the server sees them."""
    extra: dict[str, Any] = {"signature_version": "s3v4"} if v4 else {}
    s3 = boto3.client(
        "s3",
        endpoint_url="https://gate.example",
        aws_access_key_id=AKID,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, **extra),
    )
    post = s3.generate_presigned_post("bkt", kw.pop("key", "up/${filename}"), **kw)
    return {k.lower(): v for k, v in post["fields"].items()}


def error(call: Any, *args: Any, **kw: Any) -> S3Error:
    with pytest.raises(S3Error) as err:
        call(*args, **kw)
    return err.value


def policy_b64(doc: object) -> str:
    return base64.b64encode(json.dumps(doc).encode()).decode()


@pytest.mark.parametrize("v4", [True, False])
def test_botocore_forms_verify(v4: bool) -> None:
    fields = form(v4)
    signer = verify_signature(fields, lookup)
    assert signer.credentials.identity == "tester"
    assert (signer.signed_at is not None) is v4
    policy = parse_policy(fields["policy"])
    check_conditions(policy, fields, "bkt", exempt_fields(fields))


@pytest.mark.parametrize("v4", [True, False])
def test_a_changed_policy_or_signature_does_not_verify(v4: bool) -> None:
    fields = form(v4)
    doc = json.loads(base64.b64decode(fields["policy"]))
    doc["conditions"].append(["starts-with", "$key", ""])
    assert error(verify_signature, {**fields, "policy": policy_b64(doc)}, lookup).code == "SignatureDoesNotMatch"
    name = "x-amz-signature" if v4 else "signature"
    forged = {**fields, name: "0" * 64 if v4 else base64.b64encode(b"\0" * 20).decode()}
    assert error(verify_signature, forged, lookup).code == "SignatureDoesNotMatch"


def test_unknown_key_and_missing_fields() -> None:
    fields = form()
    err = error(verify_signature, fields, lambda akid: None)
    assert (err.code, err.status) == ("InvalidAccessKeyId", 403)
    assert error(verify_signature, {"key": "k"}, lookup).code == "AccessDenied"  # no policy: anonymous
    no_date = {k: v for k, v in fields.items() if k != "x-amz-date"}
    err = error(verify_signature, no_date, lookup)
    assert (err.code, err.extra) == ("InvalidArgument", {"ArgumentName": "x-amz-date"})
    bad = {**fields, "x-amz-algorithm": "AWS4-HMAC-SHA1"}
    assert error(verify_signature, bad, lookup).code == "InvalidArgument"
    other_day = {**fields, "x-amz-date": "20200101T000000Z"}
    assert error(verify_signature, other_day, lookup).code == "InvalidArgument"
    only_policy = {"policy": fields["policy"]}
    assert error(verify_signature, only_policy, lookup).code == "InvalidArgument"


def test_conditions() -> None:
    doc = {
        "expiration": "2030-01-01T00:00:00.000Z",
        "conditions": [
            {"bucket": "bkt"},
            ["starts-with", "$key", "user/"],
            {"acl": "public-read"},
            ["eq", "$Content-Type", "image/png"],
            ["starts-with", "$x-amz-meta-tag", ""],
            ["content-length-range", 1, "1000"],
        ],
    }
    policy = parse_policy(policy_b64(doc))
    assert policy.length_range == (1, 1000)
    ok = {"key": "user/a", "acl": "public-read", "content-type": "image/png", "x-amz-meta-tag": "any", "policy": "p"}
    check_conditions(policy, ok, "bkt", EXEMPT_V4)
    for changed in ({"key": "other/a"}, {"acl": "private"}, {"content-type": "image/PNG"}):
        err = error(check_conditions, policy, {**ok, **changed}, "bkt", EXEMPT_V4)
        assert (err.code, err.status) == ("AccessDenied", 403)
        assert err.message.startswith("Invalid according to Policy: Policy Condition failed: [")
    missing = {k: v for k, v in ok.items() if k != "x-amz-meta-tag"}
    assert "Policy Condition failed" in error(check_conditions, policy, missing, "bkt", EXEMPT_V4).message
    err = error(check_conditions, policy, ok, "other-bucket", EXEMPT_V4)
    assert err.message == 'Invalid according to Policy: Policy Condition failed: ["eq", "$bucket", "bkt"]'
    err = error(check_conditions, policy, {**ok, "bucket": "other"}, "bkt", EXEMPT_V4)
    assert err.code == "AccessDenied"


def test_every_field_needs_a_condition() -> None:
    policy = PostPolicy(datetime(2030, 1, 1, tzinfo=UTC), (Condition("eq", "key", "k"),), None)
    fields = {"key": "k", "policy": "p", "x-amz-signature": "s", "submit": "Upload", "x-amz-meta-a": "1"}
    err = error(check_conditions, policy, fields, "bkt", EXEMPT_V4)
    assert err.message == "Invalid according to Policy: Extra input fields: submit, x-amz-meta-a"
    # x-ignore-* fields, and the fields they name, need none.
    check_conditions(
        policy, {**fields, "x-ignore-submit": "", "x-ignore-x-amz-meta-a": "", "x-ignore-other": "1"}, "bkt", EXEMPT_V4
    )


@pytest.mark.parametrize("field", ["bucket", "success_action_status", "x-amz-credential", "x-amz-date"])
def test_exact_only_fields_refuse_starts_with(field: str) -> None:
    policy = PostPolicy(datetime(2030, 1, 1, tzinfo=UTC), (Condition("starts-with", field, ""),), None)
    assert error(check_conditions, policy, {field: "bkt"}, "bkt", EXEMPT_V4).code == "AccessDenied"


def test_content_type_lists_match_each_type() -> None:
    policy = PostPolicy(datetime(2030, 1, 1, tzinfo=UTC), (Condition("starts-with", "content-type", "image/"),), None)
    check_conditions(policy, {"content-type": "image/png, image/jpeg"}, "b", EXEMPT_V4)
    assert error(check_conditions, policy, {"content-type": "image/png, text/html"}, "b", EXEMPT_V4)


@pytest.mark.parametrize(
    "doc",
    [
        "not json at all",
        [],
        {"conditions": []},  # no expiration
        {"expiration": "tomorrow", "conditions": []},
        {"expiration": "2030-01-01T00:00:00Z"},  # no conditions
        {"expiration": "2030-01-01T00:00:00Z", "conditions": [["content-length-range", 10, 1]]},
        {"expiration": "2030-01-01T00:00:00Z", "conditions": [["content-length-range", -1, 1]]},
        {"expiration": "2030-01-01T00:00:00Z", "conditions": [["content-length-range", True, 1]]},
        {"expiration": "2030-01-01T00:00:00Z", "conditions": [["matches", "$key", "x"]]},
        {"expiration": "2030-01-01T00:00:00Z", "conditions": [["eq", "key", "x"]]},  # no $
        {"expiration": "2030-01-01T00:00:00Z", "conditions": [{"key": 5}]},
        {"expiration": "2030-01-01T00:00:00Z", "conditions": [{"a": "1", "b": "2"}]},
        {"expiration": "2030-01-01T00:00:00Z", "conditions": ["key"]},
    ],
)
def test_malformed_policies(doc: object) -> None:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    err = error(parse_policy, base64.b64encode(text.encode()).decode())
    assert (err.code, err.status) == ("InvalidPolicyDocument", 400)


def test_duplicate_keys_are_refused() -> None:
    text = '{"expiration": "2030-01-01T00:00:00Z", "conditions": [], "conditions": [["starts-with", "$key", ""]]}'
    assert error(parse_policy, base64.b64encode(text.encode()).decode()).code == "InvalidPolicyDocument"
    assert error(parse_policy, "!!not base64!!").code == "InvalidPolicyDocument"


def test_expiration() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    policy = PostPolicy(now + timedelta(hours=1), (), None)
    v4 = Signer(CREDS, now - timedelta(minutes=5))
    check_expiration(policy, v4, now, max_seconds=7200, skew=timedelta(minutes=15))
    err = error(check_expiration, policy, v4, now + timedelta(hours=1), max_seconds=7200, skew=timedelta(0))
    assert err.message == "Invalid according to Policy: Policy expired."
    assert error(check_expiration, policy, v4, now, max_seconds=600, skew=timedelta(0)).code == "AccessDenied"
    future = Signer(CREDS, now + timedelta(hours=1))
    assert error(check_expiration, policy, future, now, max_seconds=7200, skew=timedelta(0)).code == "AccessDenied"
    # SigV2 has no signing time: the limit runs from now.
    check_expiration(policy, Signer(CREDS, None), now, max_seconds=3600, skew=timedelta(0))
    assert error(check_expiration, policy, Signer(CREDS, None), now, max_seconds=60, skew=timedelta(0))


@settings(max_examples=200, deadline=None)
@given(low=st.integers(0, 10**6), span=st.integers(0, 10**6), size=st.integers(0, 3 * 10**6))
def test_content_length_range(low: int, span: int, size: int) -> None:
    policy = PostPolicy(datetime(2030, 1, 1, tzinfo=UTC), (), (low, low + span))
    if low <= size <= low + span:
        check_length(policy, size)
    else:
        err = error(check_length, policy, size)
        assert err.code == ("EntityTooSmall" if size < low else "EntityTooLarge")
        assert err.extra["ProposedSize"] == str(size)


def test_several_ranges_all_hold() -> None:
    doc = {
        "expiration": "2030-01-01T00:00:00Z",
        "conditions": [["content-length-range", 0, 100], ["content-length-range", 50, 1000]],
    }
    assert parse_policy(policy_b64(doc)).length_range == (50, 100)


def test_filename_is_expanded_in_every_field() -> None:
    fields = {"key": "up/${filename}", "x-amz-meta-name": "${filename}", "acl": "private"}
    want = {"key": "up/photo.jpg", "x-amz-meta-name": "photo.jpg", "acl": "private"}
    assert expand_filename(fields, "photo.jpg") == want
    assert expand_filename(fields, "C:\\Users\\me\\photo.jpg")["key"] == "up/photo.jpg"
    assert expand_filename(fields, "../../etc/passwd")["key"] == "up/passwd"
    assert expand_filename(fields, None)["key"] == "up/"


def test_conditions_see_the_expanded_key() -> None:
    """As S3: ["starts-with", "$key", "up/"] holds for up/${filename}; an exact match on the
    unexpanded text does not."""
    fields = expand_filename({"key": "up/${filename}"}, "a.txt")
    starts = PostPolicy(datetime(2030, 1, 1, tzinfo=UTC), (Condition("starts-with", "key", "up/"),), None)
    check_conditions(starts, fields, "b", EXEMPT_V4)
    exact = PostPolicy(datetime(2030, 1, 1, tzinfo=UTC), (Condition("eq", "key", "up/${filename}"),), None)
    assert error(check_conditions, exact, fields, "b", EXEMPT_V4).code == "AccessDenied"


def test_object_headers_from_fields() -> None:
    tagging = "<Tagging><TagSet><Tag><Key>a b</Key><Value>1&amp;2</Value></Tag></TagSet></Tagging>"
    headers = object_headers(
        {
            "content-type": "image/png",
            "cache-control": "no-cache",
            "x-amz-meta-color": "blue",
            "acl": "public-read",
            "tagging": tagging,
            "x-amz-storage-class": "STANDARD_IA",
            "key": "k",
            "success_action_status": "201",
        }
    )
    assert dict(headers) == {
        "Content-Type": "image/png",
        "Cache-Control": "no-cache",
        "x-amz-meta-color": "blue",
        "x-amz-acl": "public-read",
        "x-amz-tagging": "a%20b=1%262",
        "x-amz-storage-class": "STANDARD_IA",
    }
    err = error(object_headers, {"x-amz-server-side-encryption-customer-key": "k"})
    assert err.status == 501
    assert error(tagging_header, "<NotTagging/>").code == "MalformedXML"
    assert error(tagging_header, "<Tagging>").code == "MalformedXML"
