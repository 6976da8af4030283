"""SigV4 verification, with botocore's own signer producing the requests."""

from __future__ import annotations

import datetime as dt
import hashlib
from urllib.parse import quote, urlsplit

import boto3
import pytest
from botocore.auth import HmacV1Auth, HmacV1QueryAuth, S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from proxy.s3.errors import S3Error
from proxy.s3.sigv4 import ClientCredentials, VerifiedRequest, check_payload_hash, verify_request

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
    assert verify_request("GET", path, h, lookup, when).identity == "alice"


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
    v = verify_request(
        "PUT", f"{parts.path}?{parts.query}", CIMultiDict({"Host": parts.netloc}), lookup, dt.datetime.now(dt.UTC)
    )
    assert (v.identity, v.presigned, v.payload_hash) == ("alice", True, "UNSIGNED-PAYLOAD")


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
    path, h, when = signed("PUT", "https://gate.example/b/k", body=b"body")
    v = verify_request("PUT", path, h, lookup, when)
    check_payload_hash(v, hashlib.sha256(b"body").hexdigest())
    with pytest.raises(S3Error) as err:
        check_payload_hash(v, hashlib.sha256(b"BODY").hexdigest())
    assert err.value.code == "XAmzContentSHA256Mismatch"


#: What verify_request may answer a client with: its own errors, never a 5xx.
REFUSALS = {
    ("AccessDenied", 403),
    ("AuthorizationHeaderMalformed", 400),
    ("AuthorizationQueryParametersError", 400),
    ("AuthorizationQueryParametersError", 403),
    ("InvalidAccessKeyId", 403),
    ("InvalidArgument", 400),
    ("InvalidRequest", 400),
    ("RequestTimeTooSkewed", 403),
    ("SignatureDoesNotMatch", 403),
}


def refusal(method: str, path: str, h: CIMultiDict[str], now: dt.datetime) -> tuple[str, int]:
    """The error verify_request answers with; the test fails if the request authenticates."""
    with pytest.raises(S3Error) as err:
        verify_request(method, path, h, lookup, now)
    assert SECRET not in err.value.message
    return err.value.code, err.value.status


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200), st.text(max_size=80), st.text(max_size=40))
def test_hostile_input_is_an_s3_error(auth: str, path: str, date: str) -> None:
    h = CIMultiDict(
        {"Host": "gate", "Authorization": auth, "x-amz-date": date, "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
    )
    assert refusal("GET", "/" + path, h, dt.datetime.now(dt.UTC)) in REFUSALS


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
                "AWSAccessKeyId",
                "Signature",
                "Expires",
                "legal-hold",
            ]
        ),
        st.text(max_size=60),
    )
)
def test_hostile_presign_is_an_s3_error(params: dict[str, str]) -> None:
    from urllib.parse import urlencode

    now = dt.datetime.now(dt.UTC)
    assert refusal("GET", "/b/k?" + urlencode(params), CIMultiDict({"Host": "gate"}), now) in REFUSALS


_HEX = "0123456789abcdef"
#: Printable ASCII: what header values and keys can carry through botocore unchanged.
_PRINTABLE = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=30)


@settings(max_examples=300, deadline=None)
@given(
    key=_PRINTABLE,
    meta=_PRINTABLE,
    body=st.binary(max_size=64),
    change=st.sampled_from(["signature", "path", "query", "header", "method", "date", "payload", "secret"]),
    pick=st.integers(min_value=0),
)
def test_a_changed_header_signed_request_never_authenticates(
    key: str, meta: str, body: bytes, change: str, pick: int
) -> None:
    """botocore signs a random request, which verifies; any one change to what it signed fails."""
    url = "https://gate.example/bkt/" + quote(key, safe="/~")
    path, h, when = signed("PUT", url, {"x-amz-meta-m": meta}, body)
    v = verify_request("PUT", path, h, lookup, when)
    assert (v.identity, v.presigned, v.payload_hash) == ("alice", False, hashlib.sha256(body).hexdigest())
    method = "PUT"
    if change == "secret":
        path, h, when = signed("PUT", url, {"x-amz-meta-m": meta}, body, secret="other-secret-0000000000")
    elif change == "signature":
        auth = h["Authorization"]
        at = auth.index("Signature=") + len("Signature=") + pick % 64
        h["Authorization"] = auth[:at] + _HEX[(_HEX.index(auth[at]) + 1 + pick % 15) % 16] + auth[at + 1 :]
    elif change == "path":
        path += _HEX[pick % 16]
    elif change == "query":
        path += "?" + ["uploads", "tagging", "versionId=v", "acl", "x=1"][pick % 5]
    elif change == "header":
        h["x-amz-meta-m"] = meta + _HEX[pick % 16]
    elif change == "method":
        method = ["GET", "POST", "DELETE", "HEAD"][pick % 4]
    elif change == "date":
        # Within the allowed skew: only the signature can refuse it.
        moved = when + dt.timedelta(seconds=1 + pick % 600)
        h["X-Amz-Date"] = moved.strftime("%Y%m%dT%H%M%SZ")
    elif change == "payload":
        h["x-amz-content-sha256"] = hashlib.sha256(body + b"!").hexdigest()
    code = refusal(method, path, h, when)
    if change == "date" and h["X-Amz-Date"][:8] != when.strftime("%Y%m%d"):
        assert code == ("AuthorizationHeaderMalformed", 400)  # the credential's day no longer matches
    else:
        assert code == ("SignatureDoesNotMatch", 403)


@settings(max_examples=200, deadline=None)
@given(
    key=_PRINTABLE,
    change=st.sampled_from(["signature", "path", "expires", "date", "credential", "added", "header"]),
    pick=st.integers(min_value=0),
)
def test_a_changed_presigned_url_never_authenticates(key: str, change: str, pick: int) -> None:
    now = dt.datetime.now(dt.UTC)
    path, h = presigned_v4("PUT", "https://gate.example/bkt/" + quote(key, safe="/~"), {"x-amz-meta-m": "v"})
    assert verify_request("PUT", path, h, lookup, now).presigned
    base, _, query = path.partition("?")
    params = dict(p.split("=", 1) for p in query.split("&"))
    if change == "signature":
        sig = params["X-Amz-Signature"]
        at = pick % 64
        params["X-Amz-Signature"] = sig[:at] + _HEX[(_HEX.index(sig[at]) + 1 + pick % 15) % 16] + sig[at + 1 :]
    elif change == "path":
        base += _HEX[pick % 16]
    elif change == "expires":
        params["X-Amz-Expires"] = str(1 + pick % 299)  # shorter than signed: still refused
    elif change == "date":
        signed_at = dt.datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
        params["X-Amz-Date"] = (signed_at - dt.timedelta(seconds=1 + pick % 60)).strftime("%Y%m%dT%H%M%SZ")
    elif change == "credential":
        params["X-Amz-Credential"] = params["X-Amz-Credential"].replace("us-east-1", "eu-west-1")
    elif change == "added":
        params[["uploads", "tagging", "versionId", "acl"][pick % 4]] = ""
    elif change == "header":
        h["x-amz-meta-m"] = "w"
    tampered = base + "?" + "&".join(f"{k}={v}" for k, v in params.items())
    code = refusal("PUT", tampered, h, now)
    if change == "date" and params["X-Amz-Date"][:8] != params["X-Amz-Credential"].split("%2F")[1]:
        assert code == ("AuthorizationQueryParametersError", 400)
    else:
        assert code == ("SignatureDoesNotMatch", 403)


@pytest.mark.parametrize("date", ["20261328T000000Z", "20260230T120000Z", "20260101T250000Z", "20260101T000061Z"])
def test_impossible_dates_are_an_s3_error(date: str) -> None:
    path, h, when = signed("GET", "https://gate.example/b/k")
    h["X-Amz-Date"] = date
    assert refusal("GET", path, h, when) == ("AccessDenied", 403)


# --------------------------------------------------------------------------- unsigned x-amz-* headers


def presigned_v4(
    method: str, url: str, headers: dict[str, str] | None = None, expires: int = 300
) -> tuple[str, CIMultiDict[str]]:
    """A SigV4 presigned request as botocore makes it: path?query, and the headers it signed."""
    req = AWSRequest(method=method, url=url, headers=headers or {})
    S3SigV4QueryAuth(Credentials(AKID, SECRET), "s3", "us-east-1", expires=expires).add_auth(req)
    parts = urlsplit(req.url)
    h = CIMultiDict(req.headers.items())
    h["Host"] = parts.netloc
    return f"{parts.path}?{parts.query}", h


#: Headers that turn a PUT or UploadPart into something else, or add what the signer did not.
SMUGGLED = {
    "x-amz-copy-source": "other-bucket/secret",
    "x-amz-copy-source-range": "bytes=0-9",
    "x-amz-object-lock-legal-hold": "ON",
    "x-amz-object-lock-mode": "COMPLIANCE",
    "x-amz-object-lock-retain-until-date": "2099-01-01T00:00:00Z",
    "x-amz-tagging": "a=b",
    "x-amz-meta-owner": "mallory",
    "X-Amz-Metadata-Directive": "REPLACE",
}


def assert_headers_not_signed(err: S3Error, names: str) -> None:
    assert (err.code, err.status) == ("AccessDenied", 403)
    assert err.message == "There were headers present in the request which were not signed"
    assert err.extra == {"HeadersNotSigned": names}


@pytest.mark.parametrize("name", sorted(SMUGGLED))
@pytest.mark.parametrize("url", ["https://gate.example/b/k", "https://gate.example/b/k?partNumber=1&uploadId=u"])
def test_presigned_refuses_unsigned_amz_headers(name: str, url: str) -> None:
    path, h = presigned_v4("PUT", url)
    now = dt.datetime.now(dt.UTC)
    verify_request("PUT", path, h, lookup, now)
    h[name] = SMUGGLED[name]
    with pytest.raises(S3Error) as err:
        verify_request("PUT", path, h, lookup, now)
    assert_headers_not_signed(err.value, name.lower())


def test_presigned_with_signed_amz_headers() -> None:
    signed_headers = {"x-amz-copy-source": "b/src", "x-amz-meta-a": "1", "x-amz-tagging": "t=1"}
    path, h = presigned_v4("PUT", "https://gate.example/b/k", signed_headers)
    now = dt.datetime.now(dt.UTC)
    assert "X-Amz-SignedHeaders=host%3Bx-amz-copy-source%3Bx-amz-meta-a%3Bx-amz-tagging&" in path
    verify_request("PUT", path, h, lookup, now)
    # x-amz-content-sha256 may go unsigned: it is the canonical request's payload line anyway.
    h["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
    verify_request("PUT", path, h, lookup, now)
    h["x-amz-meta-b"] = "2"
    h["x-amz-acl"] = "public-read"
    with pytest.raises(S3Error) as err:
        verify_request("PUT", path, h, lookup, now)
    assert_headers_not_signed(err.value, "x-amz-acl, x-amz-meta-b")
    # Non-x-amz headers need not be signed (a browser adds its own).
    del h["x-amz-meta-b"], h["x-amz-acl"]
    h["Content-Type"] = "text/plain"
    h["User-Agent"] = "curl"
    verify_request("PUT", path, h, lookup, now)


def test_header_signed_refuses_unsigned_amz_headers() -> None:
    path, h, when = signed("PUT", "https://gate.example/b/k", {"x-amz-meta-a": "1"}, b"body")
    verify_request("PUT", path, h, lookup, when)
    for name, value in SMUGGLED.items():
        bad = h.copy()
        bad[name] = value
        with pytest.raises(S3Error) as err:
            verify_request("PUT", path, bad, lookup, when)
        assert_headers_not_signed(err.value, name.lower())


def test_header_signed_aws_chunked_trailer_as_botocore_signs_it() -> None:
    headers = {
        "Content-Encoding": "aws-chunked",
        "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "x-amz-decoded-content-length": "4",
        "x-amz-trailer": "x-amz-checksum-crc32",
        "x-amz-sdk-checksum-algorithm": "CRC32",
    }
    req = AWSRequest(method="PUT", url="https://gate.example/b/k", headers=headers)
    S3SigV4Auth(Credentials(AKID, SECRET), "s3", "us-east-1").add_auth(req)
    h = CIMultiDict(req.headers.items())
    h["Host"] = "gate.example"
    when = dt.datetime.strptime(h["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    assert "x-amz-decoded-content-length;x-amz-sdk-checksum-algorithm;x-amz-trailer" in h["Authorization"]
    verify_request("PUT", "/b/k", h, lookup, when)


# --------------------------------------------------------------------------- presigned lifetimes


def code_of(method: str, path: str, h: CIMultiDict[str], now: dt.datetime, **kw: object) -> tuple[str, int, str]:
    with pytest.raises(S3Error) as err:
        verify_request(method, path, h, lookup, now, **kw)  # type: ignore[arg-type]
    return err.value.code, err.value.status, err.value.message


def test_sigv4_expires_out_of_range_as_s3_answers() -> None:
    """S3 (ceph s3-tests' x_amz_expires tests): 403 for too long, negative and zero lifetimes."""
    now = dt.datetime.now(dt.UTC)
    path, h = presigned_v4("GET", "https://gate.example/b/k", expires=604800)
    verify_request("GET", path, h, lookup, now)
    path, h = presigned_v4("GET", "https://gate.example/b/k", expires=604801)
    assert code_of("GET", path, h, now) == (
        "AuthorizationQueryParametersError",
        403,
        "X-Amz-Expires must be less than a week (in seconds); that is, the given X-Amz-Expires "
        "must be less than 604800 seconds",
    )
    path, h = presigned_v4("GET", "https://gate.example/b/k", expires=-7)
    assert code_of("GET", path, h, now) == (
        "AuthorizationQueryParametersError",
        403,
        "X-Amz-Expires must be non-negative",
    )
    path, h = presigned_v4("GET", "https://gate.example/b/k", expires=0)
    assert code_of("GET", path, h, now) == ("AccessDenied", 403, "Request has expired")
    path, h = presigned_v4("GET", "https://gate.example/b/k", expires=60)
    assert code_of("GET", path, h, now + dt.timedelta(seconds=61)) == ("AccessDenied", 403, "Request has expired")
    for text in ("abc", "", "1e3", "٣"):
        bad = path.replace("X-Amz-Expires=60", f"X-Amz-Expires={text}")
        assert code_of("GET", bad, h, now)[:2] == ("AuthorizationQueryParametersError", 400)
    huge = path.replace("X-Amz-Expires=60", "X-Amz-Expires=" + "9" * 5000)
    assert code_of("GET", huge, h, now)[:2] == ("AuthorizationQueryParametersError", 403)


def test_sigv4_lifetime_follows_the_configured_maximum() -> None:
    now = dt.datetime.now(dt.UTC)
    path, h = presigned_v4("GET", "https://gate.example/b/k", expires=3600)
    verify_request("GET", path, h, lookup, now, presign_max_seconds=3600)
    path, h = presigned_v4("GET", "https://gate.example/b/k", expires=3601)
    assert code_of("GET", path, h, now, presign_max_seconds=3600) == (
        "AuthorizationQueryParametersError",
        403,
        "X-Amz-Expires must be at most 3600 seconds on this server",
    )
    # A higher maximum (for SigV2 URLs) never lifts SigV4's own week.
    path, h = presigned_v4("GET", "https://gate.example/b/k", expires=604801)
    assert code_of("GET", path, h, now, presign_max_seconds=10 * 604800)[:2] == (
        "AuthorizationQueryParametersError",
        403,
    )


# --------------------------------------------------------------------------- SigV2 presigned URLs


class _V2SignerCoveringAll(HmacV1QueryAuth):  # type: ignore[misc]
    """A SigV2 signer whose resource names retention and legal-hold too (botocore's omits them)."""

    QSAOfInterest = [*HmacV1Auth.QSAOfInterest, "retention", "legal-hold"]


def presigned_v2(
    method: str,
    url: str,
    expires: int = 300,
    signer: type[HmacV1QueryAuth] = HmacV1QueryAuth,
    auth_path: str | None = None,
) -> tuple[str, CIMultiDict[str]]:
    req = AWSRequest(method=method, url=url, headers={})
    req.auth_path = auth_path
    signer(Credentials(AKID, SECRET), expires=expires).add_auth(req)
    parts = urlsplit(req.url)
    return f"{parts.path}?{parts.query}", CIMultiDict({"Host": parts.netloc})


def v2(method: str, path: str, h: CIMultiDict[str], **kw: object) -> VerifiedRequest:
    return verify_request(method, path, h, lookup, dt.datetime.now(dt.UTC), **kw)  # type: ignore[arg-type]


#: Query parameters sealgate routes on (proxy/s3/routing.py), each with a value if it takes one.
ROUTED = [
    "retention",
    "legal-hold",
    "tagging",
    "versioning",
    "object-lock",
    "uploads",
    "uploadId=u1",
    "partNumber=2",
    "versionId=v1",
    "delete",
    "location",
    "versions",
]


@pytest.mark.parametrize("param", ROUTED)
def test_v2_signature_covers_every_routed_parameter(param: str) -> None:
    path, h = presigned_v2("PUT", "https://gate.example:8443/b/k")
    assert v2("PUT", path, h).identity == "alice"
    name = param.split("=")[0]
    encoded_name = f"%{ord(name[0]):02X}{name[1:]}"  # routed as the name itself
    for extra in (param, param.replace(name, encoded_name, 1)):
        with pytest.raises(S3Error) as err:
            v2("PUT", f"{path}&{extra}", h)
        assert (err.value.code, err.value.status) == ("SignatureDoesNotMatch", 403), extra


@pytest.mark.parametrize("param", ["legal-hold", "retention", "tagging", "versionId=v1"])
def test_v2_url_signed_with_the_parameter_verifies(param: str) -> None:
    path, h = presigned_v2("PUT", f"https://gate.example:8443/b/k?{param}", signer=_V2SignerCoveringAll)
    assert v2("PUT", path, h).presigned


def test_v2_refuses_parameters_it_does_not_sign() -> None:
    path, h = presigned_v2("GET", "https://gate.example:8443/b/k")
    for extra in ("x-amz-checksum-mode=ENABLED", "unknown", "X-Amz-Credential=x"):
        with pytest.raises(S3Error) as err:
            v2("GET", f"{path}&{extra}", h)
        assert (err.value.code, err.value.status) == ("AccessDenied", 403)
    # What selects or pages through a listing is unsigned in SigV2 on S3 too.
    lpath, lh = presigned_v2("GET", "https://gate.example:8443/b?list-type=2&prefix=a")
    v2("GET", lpath.replace("prefix=a", "prefix=b") + "&max-keys=5", lh)


def boto_v2_url(style: str, op: str, params: dict[str, str], expires: int = 300) -> tuple[str, CIMultiDict[str]]:
    s3 = boto3.client(
        "s3",
        endpoint_url="https://localhost:8443",
        aws_access_key_id=AKID,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": style}),
    )
    parts = urlsplit(s3.generate_presigned_url(op, Params=params, ExpiresIn=expires))
    assert "AWSAccessKeyId=" in parts.query  # boto3's default presigner for a custom endpoint: SigV2
    return f"{parts.path}?{parts.query}", CIMultiDict({"Host": parts.netloc})


@pytest.mark.parametrize("style", ["path", "virtual"])
@pytest.mark.parametrize(
    ("op", "method", "params"),
    [
        ("put_object", "PUT", {"Bucket": "bkt", "Key": "a b/c+d"}),
        ("get_object", "GET", {"Bucket": "bkt", "Key": "k", "VersionId": "v1", "ResponseContentType": "x/y"}),
        ("list_objects_v2", "GET", {"Bucket": "bkt", "Prefix": "p"}),
        ("head_bucket", "HEAD", {"Bucket": "bkt"}),
    ],
)
def test_v2_boto3_urls_in_both_addressing_styles(style: str, op: str, method: str, params: dict[str, str]) -> None:
    path, h = boto_v2_url(style, op, params)
    assert v2(method, path, h).identity == "alice"


def test_v2_url_is_bound_to_its_bucket() -> None:
    # Path-style /A/k sent with Host: B.localhost is routed to bucket B, key A/k: refused.
    path, h = boto_v2_url("path", "put_object", {"Bucket": "bkt-a", "Key": "k"})
    assert path.startswith("/bkt-a/k?")
    v2("PUT", path, h)
    moved = CIMultiDict({"Host": "bkt-b.localhost:8443"})
    assert code_of("PUT", path, moved, dt.datetime.now(dt.UTC))[:2] == ("SignatureDoesNotMatch", 403)
    # A virtual-hosted URL for bkt-a does not open the same key in bkt-b.
    vpath, vh = boto_v2_url("virtual", "put_object", {"Bucket": "bkt-a", "Key": "k"})
    assert vh["Host"] == "bkt-a.localhost:8443"
    v2("PUT", vpath, vh)
    assert code_of("PUT", vpath, moved, dt.datetime.now(dt.UTC))[:2] == ("SignatureDoesNotMatch", 403)
    # Only the configured domains make a Host name a bucket.
    assert code_of("PUT", vpath, vh, dt.datetime.now(dt.UTC), virtual_host_domains=())[0] == "SignatureDoesNotMatch"
    other = CIMultiDict({"Host": "bkt-a.s3.example.com"})
    v2("PUT", vpath, other, virtual_host_domains=("s3.example.com",))


def test_v2_bucket_signature_does_not_cover_an_object() -> None:
    path, h = presigned_v2("DELETE", "https://gate.example/b/", auth_path="/b/")
    v2("DELETE", path, h)
    v2("DELETE", path.replace("/b/?", "/b?"), h)
    # "/b//" is the object named "/", not the bucket.
    with pytest.raises(S3Error) as err:
        v2("DELETE", path.replace("/b/?", "/b//?"), h)
    assert (err.value.code, err.value.status) == ("SignatureDoesNotMatch", 403)


def test_v2_lifetime_has_a_maximum() -> None:
    now = dt.datetime.now(dt.UTC)
    path, h = presigned_v2("GET", "https://gate.example/b/k", expires=10 * 365 * 86400)
    code, status, message = code_of("GET", path, h, now)
    assert (code, status) == ("AuthorizationQueryParametersError", 403) and "604800" in message
    path, h = presigned_v2("GET", "https://gate.example/b/k", expires=604800)
    v2("GET", path, h)
    # A signer whose clock runs a few minutes ahead of sealgate's still gets its week.
    verify_request("GET", path, h, lookup, now - dt.timedelta(minutes=10))
    assert code_of("GET", path, h, now, presign_max_seconds=3600)[:2] == ("AuthorizationQueryParametersError", 403)
    path, h = presigned_v2("GET", "https://gate.example/b/k", expires=3000)
    v2("GET", path, h, presign_max_seconds=3600)
    assert code_of("GET", path, h, now + dt.timedelta(seconds=3001)) == ("AccessDenied", 403, "Request has expired")
