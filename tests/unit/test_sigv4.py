"""SigV4 verification, with botocore's own signer producing the requests."""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from proxy.s3.errors import S3Error
from proxy.s3.sigv4 import ClientCredentials, check_payload_hash, verify_request

AKID = "SGTEST0000000000001A"
SECRET = "secret-secret-secret-0123"
CREDS = ClientCredentials(AKID, SECRET, "alice")


def lookup(akid: str) -> ClientCredentials | None:
    return CREDS if akid == AKID else None


def signed(
    method: str, url: str, headers: dict[str, str] | None = None, body: bytes = b"", secret: str = SECRET
) -> tuple[str, CIMultiDict[str], dt.datetime]:
    req = AWSRequest(method=method, url=url, headers=headers or {}, data=body)
    S3SigV4Auth(Credentials(AKID, secret), "s3", "us-east-1").add_auth(req)
    parts = urlsplit(req.url)
    h = CIMultiDict(req.headers.items())
    h["Host"] = parts.netloc
    when = dt.datetime.strptime(h["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    return parts.path + ("?" + parts.query if parts.query else ""), h, when


def boto_url(key: str) -> str:
    """The URL boto3 itself builds for a key (its own encoding)."""
    s3 = boto3.client(
        "s3",
        endpoint_url="https://gate.example:8443",
        aws_access_key_id=AKID,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    return str(s3.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": key})).split("?")[0]


KEYS = ["plain", "with space", "a+b", "100%", "x=y&z", "unicodé/ключ", "a//b", "../up", "/lead", "~tilde*"]


@pytest.mark.parametrize("key", KEYS)
def test_keys_as_boto3_encodes_them(key: str) -> None:
    path, h, when = signed("GET", boto_url(key))
    v = verify_request("GET", path, h, lookup, when)
    assert v.identity == "alice"


@pytest.mark.parametrize("query", ["list-type=2&prefix=a%20b", "uploads", "acl", "prefix=&delimiter=%2F"])
def test_query_strings(query: str) -> None:
    path, h, when = signed("GET", f"https://gate.example/b?{query}")
    verify_request("GET", path, h, lookup, when)


def test_presigned_url() -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url="https://gate.example:8443",
        aws_access_key_id=AKID,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k y"}, ExpiresIn=60)
    parts = urlsplit(url)
    h = CIMultiDict({"Host": parts.netloc})
    now = dt.datetime.now(dt.UTC)
    v = verify_request("GET", f"{parts.path}?{parts.query}", h, lookup, now)
    assert v.presigned and v.payload_hash == "UNSIGNED-PAYLOAD"
    with pytest.raises(S3Error) as err:
        verify_request("GET", f"{parts.path}?{parts.query}", h, lookup, now + dt.timedelta(seconds=120))
    assert err.value.code == "AccessDenied" and "expired" in err.value.message
    tampered = parts.query.replace("X-Amz-Expires=60", "X-Amz-Expires=600")
    with pytest.raises(S3Error) as err:
        verify_request("GET", f"{parts.path}?{tampered}", h, lookup, now)
    assert err.value.code == "SignatureDoesNotMatch"


def test_query_auth_oracle() -> None:
    req = AWSRequest(method="PUT", url="https://gate.example/b/k", headers={})
    S3SigV4QueryAuth(Credentials(AKID, SECRET), "s3", "us-east-1", expires=300).add_auth(req)
    parts = urlsplit(req.url)
    verify_request(
        "PUT", f"{parts.path}?{parts.query}", CIMultiDict({"Host": parts.netloc}), lookup, dt.datetime.now(dt.UTC)
    )


def test_failures() -> None:
    path, h, when = signed("PUT", "https://gate.example/b/k", {"x-amz-meta-a": "1"}, b"body")
    verify_request("PUT", path, h, lookup, when)

    def code(p: str, hh: CIMultiDict[str], w: dt.datetime = when) -> str:
        with pytest.raises(S3Error) as err:
            verify_request("PUT", p, hh, lookup, w)
        assert SECRET not in err.value.message
        return err.value.code

    assert code(path + "x", h) == "SignatureDoesNotMatch"
    bad = h.copy()
    bad["x-amz-meta-a"] = "2"
    assert code(path, bad) == "SignatureDoesNotMatch"
    extra = h.copy()
    extra["x-unsigned"] = "fine"
    verify_request("PUT", path, extra, lookup, when)
    _, h2, _ = signed("PUT", "https://gate.example/b/k", secret="other-secret-000000000")
    assert code(path, h2) == "SignatureDoesNotMatch"
    unknown = h.copy()
    unknown["Authorization"] = h["Authorization"].replace(AKID, "SGNOBODY000000000000")
    assert code(path, unknown) == "InvalidAccessKeyId"
    assert code(path, h, when + dt.timedelta(minutes=16)) == "RequestTimeTooSkewed"
    assert code(path, h, when - dt.timedelta(minutes=16)) == "RequestTimeTooSkewed"
    verify_request("PUT", path, h, lookup, when + dt.timedelta(minutes=14))
    no_auth = h.copy()
    del no_auth["Authorization"]
    assert code(path, no_auth) == "AccessDenied"
    garbled = h.copy()
    garbled["Authorization"] = "AWS4-HMAC-SHA256 nonsense"
    assert code(path, garbled) == "AuthorizationHeaderMalformed"
    v2 = h.copy()
    v2["Authorization"] = "AWS AKID:sig"
    assert code(path, v2) == "InvalidRequest"
    no_hash = h.copy()
    del no_hash["x-amz-content-sha256"]
    assert code(path, no_hash) == "InvalidRequest"


def test_payload_hash_check() -> None:
    import hashlib

    path, h, when = signed("PUT", "https://gate.example/b/k", body=b"body")
    v = verify_request("PUT", path, h, lookup, when)
    check_payload_hash(v, hashlib.sha256(b"body").hexdigest())
    with pytest.raises(S3Error) as err:
        check_payload_hash(v, hashlib.sha256(b"BODY").hexdigest())
    assert err.value.code == "XAmzContentSHA256Mismatch"


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200), st.text(max_size=80), st.text(max_size=40))
def test_hostile_input_is_an_s3_error(auth: str, path: str, date: str) -> None:
    h = CIMultiDict(
        {"Host": "gate", "Authorization": auth, "x-amz-date": date, "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
    )
    try:
        verify_request("GET", "/" + path, h, lookup, dt.datetime.now(dt.UTC))
    except S3Error:
        pass


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "X-Amz-Algorithm",
                "X-Amz-Credential",
                "X-Amz-Date",
                "X-Amz-Expires",
                "X-Amz-SignedHeaders",
                "X-Amz-Signature",
            ]
        ),
        st.text(max_size=60),
    )
)
def test_hostile_presign_is_an_s3_error(params: dict[str, str]) -> None:
    from urllib.parse import urlencode

    try:
        verify_request(
            "GET", "/b/k?" + urlencode(params), CIMultiDict({"Host": "gate"}), lookup, dt.datetime.now(dt.UTC)
        )
    except S3Error:
        pass


@pytest.mark.parametrize("date", ["20261328T000000Z", "20260230T120000Z", "20260101T250000Z", "20260101T000061Z"])
def test_impossible_dates_are_an_s3_error(date: str) -> None:
    path, h, when = signed("GET", "https://gate.example/b/k")
    h["X-Amz-Date"] = date
    with pytest.raises(S3Error) as err:
        verify_request("GET", path, h, lookup, when)
    assert err.value.status in (400, 403)
