"""Browser apps through sealgate (issue 18): CORS preflights answered from the bucket's CORS
rules, unsigned as browsers send them, and the Access-Control-* headers on the answers."""

from __future__ import annotations

from typing import Any

from tests.conftest import Stack
from tests.integration.test_presigned import code, send

ORIGIN = "https://app.example"


def _preflight(stack: Stack, bucket: str, origin: str | None, method: str = "PUT", headers: str = "") -> Any:
    h = {"Access-Control-Request-Method": method}
    if origin is not None:
        h["Origin"] = origin
    if headers:
        h["Access-Control-Request-Headers"] = headers
    return send(stack, "OPTIONS", f"{stack.gate.url}/{bucket}/photo.jpg", headers=h)


def test_preflight_and_answers_follow_the_bucket_rules(stack: Stack, bucket: str) -> None:
    s3 = stack.client()
    assert _preflight(stack, bucket, ORIGIN).status == 403  # no CORS rules yet
    rules = {
        "CORSRules": [
            {
                "AllowedOrigins": [ORIGIN, "https://*.example.org"],
                "AllowedMethods": ["GET", "PUT"],
                "AllowedHeaders": ["*"],
                "ExposeHeaders": ["ETag"],
                "MaxAgeSeconds": 600,
            }
        ]
    }
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=rules)
    ok = _preflight(stack, bucket, ORIGIN, headers="content-type, x-amz-date")
    assert ok.status == 200, ok.data
    assert ok.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert ok.headers["Access-Control-Allow-Methods"] == "GET, PUT"
    assert ok.headers["Access-Control-Allow-Headers"] == "content-type, x-amz-date"
    assert ok.headers["Access-Control-Max-Age"] == "600"
    assert _preflight(stack, bucket, "https://cdn.example.org", "GET").status == 200
    refused = _preflight(stack, bucket, "https://evil.example")
    assert refused.status == 403 and code(refused) == "AccessForbidden"
    assert _preflight(stack, bucket, ORIGIN, method="DELETE").status == 403
    missing = _preflight(stack, bucket, None)
    assert missing.status == 400 and code(missing) == "BadRequest"

    s3.put_object(Bucket=bucket, Key="photo.jpg", Body=b"jpeg")
    seen: dict[str, str] = {}
    s3.meta.events.register(
        "before-send.s3.GetObject", lambda request, **_: request.headers.__setitem__("Origin", ORIGIN)
    )
    s3.meta.events.register("after-call.s3.GetObject", lambda http_response, **_: seen.update(http_response.headers))
    assert s3.get_object(Bucket=bucket, Key="photo.jpg")["Body"].read() == b"jpeg"
    assert seen["Access-Control-Allow-Origin"] == ORIGIN and seen["Access-Control-Expose-Headers"] == "ETag"

    s3.delete_bucket_cors(Bucket=bucket)
    assert _preflight(stack, bucket, ORIGIN).status == 403  # applies at once on this replica


def test_a_refused_request_reads_no_cors_rules(moto_url: str, tls_files: dict[str, Any], tmp_path: Any) -> None:
    """A signed request its identity policy refuses gets its 403 without sealgate reading the
    bucket's CORS rules from the backend, Origin or not (least privilege): the only backend
    request is the read of the bucket's own access settings (its policy could allow it)."""
    from aiohttp import web

    from tests.conftest import backend_client, start_stack
    from tests.faults.test_faults import FaultyRelay

    seen: list[str] = []

    async def record(request: web.Request) -> None:
        seen.append(request.path_qs)
        return None

    statement = '{"Effect": "Allow", "Action": "s3:ListAllMyBuckets", "Resource": "*"}'
    doc = f'{{"Version": "2012-10-17", "Statement": [{statement}]}}'
    policy = f"[[policies]]\nname = \"only-list\"\nprincipals = [\"tester\"]\ndocument = '''{doc}'''\n"
    relay = FaultyRelay(moto_url)
    st = start_stack(tmp_path, relay.url, tls_files, extra=policy)
    try:
        backend_client(moto_url).create_bucket(Bucket="some-bucket")
        relay.before = record
        refused = send(
            st, "GET", f"{st.gate.url}/some-bucket/k", headers={"Origin": ORIGIN, **_signed(st, "/some-bucket/k")}
        )
        assert refused.status == 403 and code(refused) == "AccessDenied"
        assert [p for p in seen if "cors" in p] == []  # the CORS rules were not read
        assert seen == ["/some-bucket?list-type=2&prefix=.sealgate%2Fbk%2F"]
    finally:
        relay.before = None
        st.gate.stop()
        relay.loop.call_soon_threadsafe(relay.loop.stop)


def _signed(stack: Stack, path: str) -> dict[str, str]:
    from tests.signing import sign

    url = f"https://localhost:{stack.gate.running.tls_port}{path}"
    return sign("GET", url, {"Host": f"localhost:{stack.gate.running.tls_port}"})
