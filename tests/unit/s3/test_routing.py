"""Request routing (proxy/s3/routing.py): every operation, both addressing styles, keys decoded
exactly once, and the S3 errors for what sealgate does not serve. Pure: no server."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.s3.errors import S3Error
from proxy.s3.routing import (
    OPERATIONS,
    Op,
    Route,
    bucket_from_host,
    parse_copy_source,
    route,
    split_host,
    valid_bucket_name,
)

COPY = {"x-amz-copy-source": "src/key"}

#: (method, query, headers) -> operation on a bucket.
BUCKET_CASES: list[tuple[str, dict[str, str], dict[str, str], Op]] = [
    ("GET", {}, {}, Op.LIST_OBJECTS),
    ("GET", {"list-type": "1", "prefix": "a"}, {}, Op.LIST_OBJECTS),
    ("GET", {"list-type": "2", "prefix": "a", "delimiter": "/"}, {}, Op.LIST_OBJECTS_V2),
    ("PUT", {}, {}, Op.CREATE_BUCKET),
    ("DELETE", {}, {}, Op.DELETE_BUCKET),
    ("HEAD", {}, {}, Op.HEAD_BUCKET),
    ("GET", {"tagging": ""}, {}, Op.GET_BUCKET_TAGGING),
    ("PUT", {"tagging": ""}, {}, Op.PUT_BUCKET_TAGGING),
    ("DELETE", {"tagging": ""}, {}, Op.DELETE_BUCKET_TAGGING),
    ("GET", {"encryption": ""}, {}, Op.GET_BUCKET_ENCRYPTION),
    ("PUT", {"encryption": ""}, {}, Op.PUT_BUCKET_ENCRYPTION),
    ("DELETE", {"encryption": ""}, {}, Op.DELETE_BUCKET_ENCRYPTION),
    ("GET", {"lifecycle": ""}, {}, Op.GET_BUCKET_LIFECYCLE),
    ("PUT", {"lifecycle": ""}, {}, Op.PUT_BUCKET_LIFECYCLE),
    ("DELETE", {"lifecycle": ""}, {}, Op.DELETE_BUCKET_LIFECYCLE),
    ("GET", {"cors": ""}, {}, Op.GET_BUCKET_CORS),
    ("PUT", {"cors": ""}, {}, Op.PUT_BUCKET_CORS),
    ("DELETE", {"cors": ""}, {}, Op.DELETE_BUCKET_CORS),
    ("GET", {"acl": ""}, {}, Op.GET_BUCKET_ACL),
    ("PUT", {"acl": ""}, {}, Op.PUT_BUCKET_ACL),
    ("GET", {"location": ""}, {}, Op.GET_BUCKET_LOCATION),
    ("GET", {"versions": "", "key-marker": "k", "version-id-marker": "v"}, {}, Op.LIST_OBJECT_VERSIONS),
    ("GET", {"uploads": "", "max-uploads": "5", "upload-id-marker": "u"}, {}, Op.LIST_MULTIPART_UPLOADS),
    ("POST", {"delete": ""}, {}, Op.DELETE_OBJECTS),
    ("POST", {}, {"Content-Type": "multipart/form-data; boundary=b"}, Op.POST_OBJECT),  # a browser form
    ("GET", {"versioning": ""}, {}, Op.GET_BUCKET_VERSIONING),
    ("PUT", {"versioning": ""}, {}, Op.PUT_BUCKET_VERSIONING),
    ("GET", {"object-lock": ""}, {}, Op.GET_OBJECT_LOCK_CONFIGURATION),
    ("PUT", {"object-lock": ""}, {}, Op.PUT_OBJECT_LOCK_CONFIGURATION),
    ("GET", {"policy": ""}, {}, Op.GET_BUCKET_POLICY),
    ("PUT", {"policy": ""}, {}, Op.PUT_BUCKET_POLICY),
    ("DELETE", {"policy": ""}, {}, Op.DELETE_BUCKET_POLICY),
    ("GET", {"policyStatus": ""}, {}, Op.GET_BUCKET_POLICY_STATUS),
    ("GET", {"publicAccessBlock": ""}, {}, Op.GET_PUBLIC_ACCESS_BLOCK),
    ("PUT", {"publicAccessBlock": ""}, {}, Op.PUT_PUBLIC_ACCESS_BLOCK),
    ("DELETE", {"publicAccessBlock": ""}, {}, Op.DELETE_PUBLIC_ACCESS_BLOCK),
    ("GET", {"ownershipControls": ""}, {}, Op.GET_BUCKET_OWNERSHIP_CONTROLS),
    ("PUT", {"ownershipControls": ""}, {}, Op.PUT_BUCKET_OWNERSHIP_CONTROLS),
    ("DELETE", {"ownershipControls": ""}, {}, Op.DELETE_BUCKET_OWNERSHIP_CONTROLS),
]

#: (method, query, headers) -> operation on an object.
OBJECT_CASES: list[tuple[str, dict[str, str], dict[str, str], Op]] = [
    ("PUT", {}, {}, Op.PUT_OBJECT),
    ("PUT", {}, COPY, Op.COPY_OBJECT),
    ("GET", {}, {}, Op.GET_OBJECT),
    ("GET", {"versionId": "v1", "response-content-type": "x/y", "partNumber": "2"}, {}, Op.GET_OBJECT),
    ("GET", {}, COPY, Op.GET_OBJECT),  # only a PUT is made a copy by x-amz-copy-source
    ("HEAD", {"versionId": "v1"}, {}, Op.HEAD_OBJECT),
    ("DELETE", {"versionId": "v1"}, {}, Op.DELETE_OBJECT),
    ("POST", {"uploads": ""}, {}, Op.CREATE_MULTIPART_UPLOAD),
    ("PUT", {"uploadId": "u", "partNumber": "1"}, {}, Op.UPLOAD_PART),
    ("PUT", {"uploadId": "u", "partNumber": "1"}, COPY, Op.UPLOAD_PART_COPY),
    ("POST", {"uploadId": "u"}, {}, Op.COMPLETE_MULTIPART_UPLOAD),
    ("DELETE", {"uploadId": "u"}, {}, Op.ABORT_MULTIPART_UPLOAD),
    ("GET", {"uploadId": "u", "max-parts": "5", "part-number-marker": "2"}, {}, Op.LIST_PARTS),
    ("GET", {"tagging": ""}, {}, Op.GET_OBJECT_TAGGING),
    ("PUT", {"tagging": ""}, {}, Op.PUT_OBJECT_TAGGING),
    ("DELETE", {"tagging": ""}, {}, Op.DELETE_OBJECT_TAGGING),
    ("GET", {"retention": ""}, {}, Op.GET_OBJECT_RETENTION),
    ("PUT", {"retention": ""}, {}, Op.PUT_OBJECT_RETENTION),
    ("GET", {"legal-hold": ""}, {}, Op.GET_OBJECT_LEGAL_HOLD),
    ("PUT", {"legal-hold": ""}, {}, Op.PUT_OBJECT_LEGAL_HOLD),
    ("GET", {"acl": ""}, {}, Op.GET_OBJECT_ACL),
    ("PUT", {"acl": ""}, {}, Op.PUT_OBJECT_ACL),
    ("GET", {"attributes": ""}, {}, Op.GET_OBJECT_ATTRIBUTES),
]

#: Query parameters of presigned URLs: they never change the operation.
PRESIGN_PARAMS = {
    "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
    "X-Amz-Credential": "AKID/20250101/us-east-1/s3/aws4_request",
    "X-Amz-Date": "20250101T000000Z",
    "X-Amz-Expires": "60",
    "X-Amz-SignedHeaders": "host",
    "X-Amz-Signature": "0" * 64,
}


def error(call: object, *args: object, **kw: object) -> S3Error:
    with pytest.raises(S3Error) as err:
        call(*args, **kw)  # type: ignore[operator]
    return err.value


def test_every_operation_is_covered_here() -> None:
    """A new Op fails this test until a case above routes to it."""
    covered = {op for *_, op in BUCKET_CASES + OBJECT_CASES} | {Op.LIST_BUCKETS}
    assert covered == OPERATIONS


def test_list_buckets() -> None:
    assert route("GET", "/", {}, "gate.example") == Route(Op.LIST_BUCKETS, None, None)
    assert route("GET", "/", {"x-id": "ListBuckets"}, "gate.example").operation is Op.LIST_BUCKETS
    assert route("GET", "/", {}, "localhost:8443").operation is Op.LIST_BUCKETS  # the domain itself: no bucket


@pytest.mark.parametrize(("method", "query"), [("PUT", {}), ("POST", {}), ("DELETE", {}), ("GET", {"acl": ""})])
def test_the_service_serves_only_list_buckets(method: str, query: dict[str, str]) -> None:
    err = error(route, method, "/", query, "gate.example")
    assert (err.code, err.status) == ("NotImplemented", 501)


@pytest.mark.parametrize(("method", "query", "headers", "op"), BUCKET_CASES, ids=lambda v: str(v))
def test_bucket_operations_in_both_styles(method: str, query: dict[str, str], headers: dict[str, str], op: Op) -> None:
    want = Route(op, "bkt", None)
    assert route(method, "/bkt", query, "gate.example", headers=headers) == want
    assert route(method, "/bkt/", query, "gate.example", headers=headers) == want
    assert route(method, "/", query, "bkt.localhost:8443", headers=headers) == want
    assert route(method, "/", query, "BKT.S3.Example.COM", ("s3.example.com",), headers) == want
    assert route(method, "/bkt", {**query, **PRESIGN_PARAMS}, "gate.example", headers=headers) == want


@pytest.mark.parametrize(("method", "query", "headers", "op"), OBJECT_CASES, ids=lambda v: str(v))
def test_object_operations_in_both_styles(method: str, query: dict[str, str], headers: dict[str, str], op: Op) -> None:
    want = Route(op, "bkt", "dir/k")
    assert route(method, "/bkt/dir/k", query, "gate.example", headers=headers) == want
    assert route(method, "/dir/k", query, "bkt.localhost", headers=headers) == want
    assert route(method, "/bkt/dir/k", {**query, **PRESIGN_PARAMS}, "gate.example", headers=headers) == want


def test_upload_part_needs_a_part_number() -> None:
    for headers in ({}, COPY):
        err = error(route, "PUT", "/bkt/k", {"uploadId": "u"}, "gate.example", headers=headers)
        assert (err.code, err.status) == ("InvalidArgument", 400)


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        ("GET", "/bkt", {"website": ""}),
        ("GET", "/bkt/k", {"restore": ""}),
        ("PUT", "/bkt", {"website": ""}),
        ("GET", "/bkt/k", {"torrent": ""}),
        ("DELETE", "/bkt", {"versioning": ""}),  # a known sub-resource, not with this method
        ("POST", "/bkt/k", {"tagging": ""}),
        ("GET", "/bkt", {"location": "", "versioning": ""}),  # two sub-resources
        ("PUT", "/bkt/k", {"tagging": "", "retention": ""}),
        ("POST", "/bkt", {"uploads": ""}),  # CreateMultipartUpload needs a key
        ("GET", "/bkt", {"attributes": ""}),  # object sub-resources are not bucket ones
        ("PUT", "/bkt/k", {"versioning": ""}),
    ],
)
def test_what_sealgate_does_not_serve_is_not_implemented(method: str, path: str, query: dict[str, str]) -> None:
    err = error(route, method, path, query, "gate.example")
    assert (err.code, err.status) == ("NotImplemented", 501)


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/bkt"), ("PATCH", "/bkt"), ("POST", "/bkt/k"), ("PATCH", "/bkt/k"), ("OPTIONS", "/bkt/k")],
)
def test_methods_without_an_operation_are_not_allowed(method: str, path: str) -> None:
    err = error(route, method, path, {}, "gate.example")
    assert (err.code, err.status) == ("MethodNotAllowed", 405)


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", ""])
def test_only_a_multipart_form_posted_to_a_bucket_is_post_object(content_type: str) -> None:
    err = error(route, "POST", "/bkt", {}, "gate.example", headers={"Content-Type": content_type})
    assert (err.code, err.status) == ("MethodNotAllowed", 405)
    form = {"Content-Type": "multipart/form-data; boundary=b"}
    assert error(route, "POST", "/bkt/k", {}, "gate.example", headers=form).code == "MethodNotAllowed"


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("a%2Fb", "a/b"),  # an encoded slash is the same key as a slash, as on S3
        ("a/b", "a/b"),
        ("a%252F", "a%2F"),  # decoded once, never twice
        ("100%25", "100%"),
        ("a+b", "a+b"),  # a plus in a path is a plus
        ("a%20b", "a b"),
        ("%E2%82%AC/%D0%BA", "€/к"),
        ("dir/", "dir/"),
        ("/lead", "/lead"),  # "/bkt//lead": the key starts with a slash
        ("a//b", "a//b"),
        ("../up", "../up"),
        ("%3Fq%3D1%26x", "?q=1&x"),
    ],
)
def test_keys_are_decoded_exactly_once(raw: str, key: str) -> None:
    assert route("GET", f"/bkt/{raw}", {}, "gate.example").key == key
    assert route("GET", f"/{raw}", {}, "bkt.localhost").key == key


@settings(max_examples=200, deadline=None)
@given(key=st.text(st.characters(exclude_categories=["Cs"]), min_size=1).filter(lambda k: len(k.encode()) <= 1024))
def test_any_key_survives_encoding(key: str) -> None:
    for raw in (quote(key, safe=""), quote(key, safe="/"), quote(key, safe="/~!$&'()*+,;=:@")):
        assert route("PUT", "/bkt/" + raw, {}, "gate.example") == Route(Op.PUT_OBJECT, "bkt", key)
        assert route("GET", "/" + raw, {}, "bkt.localhost:8443") == Route(Op.GET_OBJECT, "bkt", key)


def test_key_length_limit_is_in_utf8_bytes() -> None:
    assert route("GET", "/bkt/" + "k" * 1024, {}, "gate.example").key == "k" * 1024
    assert route("GET", "/bkt/" + quote("é" * 512), {}, "gate.example").key == "é" * 512
    for key in ("k" * 1025, "é" * 513):
        err = error(route, "GET", "/bkt/" + quote(key), {}, "gate.example")
        assert (err.code, err.status) == ("KeyTooLongError", 400)


@pytest.mark.parametrize(
    "name", ["A", "Bucket", "a", "-ab", ".ab", "a..b", "a b", "a/b", "ab%", "é-bucket", "a" * 256, "b@d"]
)
def test_bad_bucket_names(name: str) -> None:
    assert not valid_bucket_name(name)
    err = error(route, "GET", "/" + quote(name, safe="") + "/k", {}, "gate.example")
    assert (err.code, err.status, err.resource) == ("InvalidBucketName", 400, name)


@pytest.mark.parametrize("name", ["ab", "my-bucket", "my.bucket.example", "b_1", "0bucket", "a" * 255])
def test_good_bucket_names(name: str) -> None:
    assert valid_bucket_name(name)
    assert route("GET", f"/{name}", {}, "gate.example").bucket == name


def test_bad_bucket_names_in_the_host() -> None:
    err = error(route, "GET", "/k", {}, "a..b.localhost")
    assert (err.code, err.status) == ("InvalidBucketName", 400)
    # Host names are case-insensitive: a capitalised host names the lower-case bucket.
    assert route("GET", "/k", {}, "MyBucket.LOCALHOST:8443") == Route(Op.GET_OBJECT, "mybucket", "k")


def test_a_path_must_be_absolute() -> None:
    for path in ("", "b/k", "*"):
        err = error(route, "GET", path, {}, "gate.example")
        assert (err.code, err.status) == ("InvalidRequest", 400)


def test_virtual_hosted_only_under_the_configured_domains() -> None:
    # Path style whenever the host is not <bucket>.<domain>.
    assert route("GET", "/bkt/k", {}, "bkt.other.example", ("localhost",)) == Route(Op.GET_OBJECT, "bkt", "k")
    assert route("GET", "/bkt/k", {}, "bkt.localhost", ()) == Route(Op.GET_OBJECT, "bkt", "k")
    assert route("GET", "/k", {}, "bkt.localhost", ("example.com", "localhost")) == Route(Op.GET_OBJECT, "bkt", "k")
    # Virtual-hosted: the whole path is the key, its first segment included.
    assert route("GET", "/bkt/k", {}, "bkt.localhost") == Route(Op.GET_OBJECT, "bkt", "bkt/k")


@pytest.mark.parametrize(
    ("host", "domains", "bucket"),
    [
        ("bkt.localhost", ("localhost",), "bkt"),
        ("bkt.localhost:8443", ("localhost",), "bkt"),
        ("a.b.s3.example.com", ("s3.example.com",), "a.b"),
        ("BKT.Localhost", ("LOCALHOST",), "bkt"),
        ("localhost", ("localhost",), None),
        ("localhost:8443", ("localhost",), None),
        (".localhost", ("localhost",), None),
        ("xlocalhost", ("localhost",), None),
        ("bkt.localhost", (), None),
        ("127.0.0.1:8443", ("localhost",), None),
        ("[::1]:8443", ("localhost",), None),
    ],
)
def test_bucket_from_host(host: str, domains: tuple[str, ...], bucket: str | None) -> None:
    assert bucket_from_host(host, domains) == bucket


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("gate.example", "gate.example"),
        ("gate.example:8443", "gate.example"),
        ("[::1]:8443", "[::1]"),
        ("[::1]", "[::1]"),
        ("127.0.0.1:1", "127.0.0.1"),
        ("", ""),
    ],
)
def test_split_host(host: str, name: str) -> None:
    assert split_host(host) == name


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("src/key", ("src", "key", None)),
        ("/src/key", ("src", "key", None)),
        ("src/dir/a%20b", ("src", "dir/a b", None)),
        ("src%2Fkey", ("src", "key", None)),  # decoded before it is split, as S3 does
        ("src/a%3Fq", ("src", "a?q", None)),  # an encoded ? is part of the key
        ("src/k?versionId=v%2B1", ("src", "k", "v+1")),
        ("/src/k?versionId=", ("src", "k", "")),
        ("src/k?other=1", ("src", "k", None)),
        ("src/%E2%82%AC", ("src", "€", None)),
    ],
)
def test_parse_copy_source(value: str, parsed: tuple[str, str, str | None]) -> None:
    assert parse_copy_source(value) == parsed


@pytest.mark.parametrize("value", ["", "/", "src", "/src", "src/", "/src/", "/key?versionId=v"])
def test_copy_source_without_a_bucket_and_key(value: str) -> None:
    err = error(parse_copy_source, value)
    assert (err.code, err.status) == ("InvalidArgument", 400)
