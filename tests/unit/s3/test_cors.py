"""CORS rule matching as S3 does it: first rule that allows origin, method and headers wins."""

from __future__ import annotations

from proxy.s3.cors import CorsRule, match, parse_cors, preflight_headers

DOC = b"""<CORSConfiguration>
<CORSRule><AllowedOrigin>https://a.example</AllowedOrigin><AllowedMethod>GET</AllowedMethod>
<AllowedHeader>x-amz-*</AllowedHeader><MaxAgeSeconds>60</MaxAgeSeconds></CORSRule>
<CORSRule><AllowedOrigin>*</AllowedOrigin><AllowedMethod>HEAD</AllowedMethod><AllowedMethod>get</AllowedMethod>
<ExposeHeader>ETag</ExposeHeader></CORSRule>
</CORSConfiguration>"""


def test_parse_and_match() -> None:
    rules = parse_cors(DOC)
    assert rules[0] == CorsRule(("https://a.example",), ("GET",), ("x-amz-*",), (), 60)
    assert match(rules, "https://a.example", "GET", ["X-Amz-Date"]) is rules[0]
    # A header the first rule does not allow: the second (any origin, no headers) does not either.
    assert match(rules, "https://a.example", "GET", ["content-type"]) is None
    assert match(rules, "https://b.example", "get") is rules[1]
    assert match(rules, "https://b.example", "PUT") is None


def test_wildcards_and_answer_headers() -> None:
    rule = CorsRule(("https://*.example.org",), ("PUT",), ("*",))
    assert match([rule], "https://cdn.example.org", "PUT", ["content-type"]) is rule
    assert match([rule], "https://example.org", "PUT") is None
    assert match([rule], "http://cdn.example.org", "PUT") is None
    out = preflight_headers(rule, "https://cdn.example.org", ["content-type"])
    assert out["Access-Control-Allow-Origin"] == "https://cdn.example.org"
    assert out["Access-Control-Allow-Credentials"] == "true"
    assert out["Access-Control-Allow-Headers"] == "content-type"
    anyone = preflight_headers(CorsRule(("*",), ("GET",)), "https://x.example", [])
    assert anyone["Access-Control-Allow-Origin"] == "*" and "Access-Control-Allow-Credentials" not in anyone
