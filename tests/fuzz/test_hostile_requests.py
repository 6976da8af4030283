"""Hostile requests against a running sealgate: every answer is a well-formed S3 error or a
correct answer, never a 500 with a traceback, never a hang."""

from __future__ import annotations

import re

import urllib3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Stack
from tests.signing import sign

_ERROR = re.compile(rb"^<\?xml[^>]*>\s*<Error><Code>[A-Za-z.]+</Code><Message>[^<]*</Message>")
header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=300)


def _check(r: urllib3.BaseHTTPResponse) -> None:
    assert r.status < 500, r.data[:300]
    assert b"Traceback" not in r.data
    if r.status >= 400 and r.data:
        assert _ERROR.match(r.data), r.data[:300]
    assert r.headers.get("x-amz-request-id") or r.status == 400


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(auth=header_text, date=header_text, sha=header_text, path=st.text(max_size=80))
def test_garbled_authentication(stack: Stack, auth: str, date: str, sha: str, path: str) -> None:
    http = urllib3.PoolManager(ca_certs=str(stack.ca_path), retries=False, timeout=10)
    from urllib.parse import quote

    url = stack.gate.url + "/" + quote(path, safe="/?&=")
    r = http.request("GET", url, headers={"Authorization": auth, "x-amz-date": date, "x-amz-content-sha256": sha})
    _check(r)
    assert r.status in (400, 403, 404, 405, 501)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rng=header_text, cond=header_text)
def test_signed_requests_with_hostile_headers(stack: Stack, rng: str, cond: str) -> None:
    s3 = stack.client()
    s3.create_bucket(Bucket="fuzz-target")
    s3.put_object(Bucket="fuzz-target", Key="k", Body=b"0123456789" * 10000)
    url = f"{stack.gate.url}/fuzz-target/k"
    headers = {"Range": rng, "If-None-Match": cond, "If-Modified-Since": cond}
    r = urllib3.PoolManager(ca_certs=str(stack.ca_path), retries=False, timeout=10).request(
        "GET", url, headers=sign("GET", url, headers)
    )
    _check(r)
    assert r.status in (200, 206, 304, 400, 412, 416)
    if r.status == 200:
        assert r.data == b"0123456789" * 10000


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    meta=st.dictionaries(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=40),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=600),
        max_size=8,
    )
)
def test_metadata_sizes(stack: Stack, meta: dict[str, str]) -> None:
    url = f"{stack.gate.url}/fuzz-target/meta"
    headers = {f"x-amz-meta-{k}": v.strip() for k, v in meta.items()}
    headers["Content-Length"] = "3"
    stack.client().create_bucket(Bucket="fuzz-target")
    r = urllib3.PoolManager(ca_certs=str(stack.ca_path), retries=False, timeout=10).request(
        "PUT", url, headers=sign("PUT", url, headers), body=b"abc"
    )
    _check(r)
    size = sum(len(k) + len(v.strip()) for k, v in meta.items())
    if size > 2048:
        assert r.status == 400
    else:
        assert r.status in (200, 400), r.data
