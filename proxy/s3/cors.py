"""A bucket's CORS configuration, as S3 applies it to browser requests: which rule (the first
that matches) allows an origin, a method and the request headers a preflight names, and the
``Access-Control-*`` headers of the answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from xml.etree.ElementTree import Element

from proxy.s3.xml import child_text, iter_named, local_name, parse

#: What S3 answers a preflight (or a request) no rule allows.
NOT_ALLOWED = (
    "CORSResponse: This CORS request is not allowed. This is usually because the evaluation of Origin, request "
    "method / Access-Control-Request-Method or Access-Control-Request-Headers are not whitelisted by the "
    "resource's CORS spec."
)


@dataclass(frozen=True)
class CorsRule:
    """One CORSRule."""

    origins: tuple[str, ...]
    methods: tuple[str, ...]
    headers: tuple[str, ...] = ()
    expose: tuple[str, ...] = ()
    max_age: int | None = None


def parse_cors(document: bytes) -> tuple[CorsRule, ...]:
    """The rules of a CORSConfiguration document (as the backend stores it)."""
    rules = []
    for el in iter_named(parse(document), "CORSRule"):
        age = child_text(el, "MaxAgeSeconds")
        rules.append(
            CorsRule(
                origins=_values(el, "AllowedOrigin"),
                methods=tuple(m.upper() for m in _values(el, "AllowedMethod")),
                headers=_values(el, "AllowedHeader"),
                expose=_values(el, "ExposeHeader"),
                max_age=int(age) if age.isdigit() else None,
            )
        )
    return tuple(rules)


def _values(el: Element, name: str) -> tuple[str, ...]:
    return tuple((c.text or "").strip() for c in el if local_name(c.tag) == name)


def _wild(pattern: str, value: str) -> bool:
    """S3's patterns: at most one ``*``, which stands for any run of characters."""
    head, star, tail = pattern.partition("*")
    if not star:
        return pattern == value
    return len(value) >= len(head) + len(tail) and value.startswith(head) and value.endswith(tail)


def match(rules: Sequence[CorsRule], origin: str, method: str, request_headers: Sequence[str] = ()) -> CorsRule | None:
    """The first rule that allows `origin` to use `method` with `request_headers` (names, any case)."""
    for rule in rules:
        if not any(_wild(o, origin) for o in rule.origins) or method.upper() not in rule.methods:
            continue
        allowed = [h.lower() for h in rule.headers]
        if all(any(_wild(a, h.lower()) for a in allowed) for h in request_headers):
            return rule
    return None


def allowed_origin(rule: CorsRule, origin: str) -> str:
    """The Access-Control-Allow-Origin S3 gives: ``*`` for a rule open to any origin, else the origin."""
    return "*" if "*" in rule.origins else origin


def response_headers(rule: CorsRule, origin: str) -> dict[str, str]:
    """The headers S3 adds to an actual (not preflight) request that `rule` allows."""
    out = {
        "Access-Control-Allow-Origin": allowed_origin(rule, origin),
        "Access-Control-Allow-Methods": ", ".join(rule.methods),
        "Vary": "Origin, Access-Control-Request-Headers, Access-Control-Request-Method",
    }
    if rule.expose:
        out["Access-Control-Expose-Headers"] = ", ".join(rule.expose)
    if rule.max_age is not None:
        out["Access-Control-Max-Age"] = str(rule.max_age)
    if out["Access-Control-Allow-Origin"] != "*":
        out["Access-Control-Allow-Credentials"] = "true"
    return out


def preflight_headers(rule: CorsRule, origin: str, request_headers: Sequence[str]) -> dict[str, str]:
    """The headers of a preflight answer that `rule` allows."""
    out = response_headers(rule, origin)
    if request_headers:
        out["Access-Control-Allow-Headers"] = ", ".join(request_headers)
    return out
