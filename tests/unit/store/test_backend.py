"""The backend signer runs botocore's SigV4 code on a light request object: it must produce
exactly the signature botocore produces on its own AWSRequest."""

from __future__ import annotations

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.store.backend import encode_query, quote_key, sign_request

CREDS = Credentials("AKIDEXAMPLEBACKEND01", "backend-secret-0123456789abcdefghijklmn").get_frozen_credentials()


class _StockUnsigned(S3SigV4Auth):  # type: ignore[misc]
    def _should_sha256_sign_payload(self, request: AWSRequest) -> bool:
        return False


def _both(
    method: str, url: str, headers: dict[str, str], region: str = "us-east-1"
) -> tuple[dict[str, str], dict[str, str]]:
    for _ in range(5):  # both must be signed within the same second
        ours = dict(sign_request(CREDS, region, method, url, headers))
        ref = AWSRequest(method=method, url=url, headers=dict(headers))
        _StockUnsigned(CREDS, "s3", region).add_auth(ref)
        theirs = dict(ref.headers.items())
        if ours["X-Amz-Date"] == theirs["X-Amz-Date"]:
            return ours, theirs
    raise AssertionError("clock kept moving")


def test_same_signature_as_botocore_for_a_put_with_metadata() -> None:
    url = "http://127.0.0.1:9000/bucket/" + quote_key("a b/ü+%/..//k")
    headers = {
        "Host": "127.0.0.1:9000",
        "Content-Length": "4096",
        "x-amz-meta-sg-v": "1",
        "X-Amz-Meta-Sg-Dk": "  spaced   value  ",
        "Content-Type": "application/octet-stream",
    }
    ours, theirs = _both("PUT", url, headers)
    assert ours["Authorization"] == theirs["Authorization"]
    assert ours["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"


def test_signing_key_cache_is_per_secret_and_region() -> None:
    url = "http://127.0.0.1:9000/b/k"
    a = dict(sign_request(CREDS, "us-east-1", "GET", url, {"Host": "127.0.0.1:9000"}))
    other = Credentials("AKIDEXAMPLEBACKEND01", "another-secret-0123456789abcdefghijkl").get_frozen_credentials()
    b = dict(sign_request(other, "us-east-1", "GET", url, {"Host": "127.0.0.1:9000"}))
    c = dict(sign_request(CREDS, "eu-west-1", "GET", url, {"Host": "127.0.0.1:9000"}))
    assert len({a["Authorization"], b["Authorization"], c["Authorization"]}) == 3
    ours, theirs = _both("GET", url, {"Host": "127.0.0.1:9000"}, "eu-west-1")
    assert ours["Authorization"] == theirs["Authorization"]


_text = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters="\x7f"), max_size=40)


@settings(max_examples=150, deadline=None)
@given(
    method=st.sampled_from(["GET", "PUT", "POST", "HEAD", "DELETE"]),
    key=st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=60),
    query=st.lists(
        st.tuples(st.sampled_from(["uploadId", "partNumber", "prefix", "list-type", "x"]), _text), max_size=4
    ),
    meta=st.dictionaries(st.from_regex(r"x-amz-meta-[a-z0-9-]{1,12}", fullmatch=True), _text, max_size=5),
)
def test_same_signature_as_botocore(method: str, key: str, query: list[tuple[str, str]], meta: dict[str, str]) -> None:
    url = "http://localhost:9000/bucket/" + quote_key(key)
    if query:
        url += "?" + encode_query(query)
    headers = {"Host": "localhost:9000", **{k: v.strip() for k, v in meta.items()}}
    ours, theirs = _both(method, url, headers)
    assert ours["Authorization"] == theirs["Authorization"]


def test_trailer_uploads_sign_as_botocore_signs_its_own() -> None:
    """With a checksum trailer the payload is STREAMING-UNSIGNED-PAYLOAD-TRAILER, as botocore
    signs when its flexible-checksum handler puts a trailer in the request context."""
    url = "http://127.0.0.1:9000/bucket/key"
    headers = {
        "Host": "127.0.0.1:9000",
        "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": "3145728",
        "x-amz-trailer": "x-amz-checksum-crc32c",
        "x-amz-sdk-checksum-algorithm": "CRC32C",
    }
    for _ in range(5):
        ours = dict(sign_request(CREDS, "us-east-1", "PUT", url, headers, trailer=True))
        ref = AWSRequest(method="PUT", url=url, headers=dict(headers))
        ref.context["checksum"] = {"request_algorithm": {"in": "trailer", "algorithm": "crc32c"}}
        S3SigV4Auth(CREDS, "s3", "us-east-1").add_auth(ref)
        if ours["X-Amz-Date"] == ref.headers["X-Amz-Date"]:
            break
    assert ours["X-Amz-Content-SHA256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    assert ours["Authorization"] == ref.headers["Authorization"]
