"""Condition blocks: IAM's operators (String*, Numeric*, Date*, Bool, IpAddress, Null, ...IfExists, set
qualifiers), their value parsers and matchers, compiled once into tests decided per request."""

from __future__ import annotations

import functools
import ipaddress
import json
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeAlias

from proxy.access.patterns import CONDITION_KEYS, Context, Invalid, compile_glob, compile_text, quote

# One request value against the policy's values (OR-ed): True, False, or None when the request
# value is not of the operator's type (not a number, date or address): then neither the operator
# nor its negation holds.
_Matcher: TypeAlias = Callable[[str, Context], bool | None]


@dataclass(frozen=True)
class _Test:
    """One key under one operator."""

    key: str
    negated: bool
    if_exists: bool
    qualifier: Literal["", "any", "all"]
    matcher: _Matcher

    def _one(self, value: str, context: Context) -> bool:
        hit = self.matcher(value, context)
        return hit is not None and hit != self.negated

    def holds(self, context: Context) -> bool:
        value = context.get(self.key)
        if value is None or value == ():
            # IAM: a missing key fails a positive operator and satisfies a negated one; IfExists and
            # ForAllValues (vacuously) hold, ForAnyValue does not.
            if self.if_exists or self.qualifier == "all":
                return True
            if self.qualifier == "any":
                return False
            return self.negated
        if isinstance(value, str):
            return self._one(value, context)
        if self.qualifier == "all" or (self.qualifier == "" and self.negated):
            # Unqualified on a multivalued key: a negated operator must hold for every value
            # ("matches none"), a positive one for some value.
            return all(self._one(v, context) for v in value)
        return any(self._one(v, context) for v in value)


@dataclass(frozen=True)
class _NullTest:
    """Null: "true" wants the key absent, "false" present; several values are OR-ed."""

    key: str
    accepted: frozenset[bool]  # the values of "key is absent" that satisfy the test

    def holds(self, context: Context) -> bool:
        value = context.get(self.key)
        return (value is None or value == ()) in self.accepted


Condition: TypeAlias = _Test | _NullTest
"""One compiled condition test: `holds(context)` says whether the request satisfies it."""

_Kind = Literal["string", "numeric", "date", "bool", "ip"]
_Compare = Callable[[float, float], bool]

_NUMERIC_COMPARE: dict[str, _Compare] = {
    "Equals": operator.eq,
    "LessThan": operator.lt,
    "LessThanEquals": operator.le,
    "GreaterThan": operator.gt,
    "GreaterThanEquals": operator.ge,
}


def _operator_table() -> dict[str, tuple[str, _Kind, str, bool]]:
    """lower-case name -> (canonical name, kind, comparison, negated)."""
    table: list[tuple[str, _Kind, str, bool]] = [
        ("StringEquals", "string", "eq", False),
        ("StringNotEquals", "string", "eq", True),
        ("StringEqualsIgnoreCase", "string", "ieq", False),
        ("StringNotEqualsIgnoreCase", "string", "ieq", True),
        ("StringLike", "string", "like", False),
        ("StringNotLike", "string", "like", True),
        ("Bool", "bool", "eq", False),
        ("IpAddress", "ip", "in", False),
        ("NotIpAddress", "ip", "in", True),
    ]
    families: list[tuple[str, _Kind]] = [("Numeric", "numeric"), ("Date", "date")]
    for prefix, kind in families:
        table.append((f"{prefix}NotEquals", kind, "Equals", True))
        for comparison in _NUMERIC_COMPARE:
            table.append((prefix + comparison, kind, comparison, False))
    return {name.lower(): (name, kind, comparison, negated) for name, kind, comparison, negated in table}


_OPERATORS = _operator_table()

_EPOCH = re.compile(r"[+-]?\d+(?:\.\d+)?")


def _parse_number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _parse_date(text: str) -> float | None:
    """ISO 8601 (no zone = UTC) or epoch seconds, as seconds since the epoch."""
    if _EPOCH.fullmatch(text):
        return float(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _parse_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


_IpNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=4096)  # parsing costs microseconds; clients come back from the same few addresses
def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d
    return address


def _scalar(value: Any, operator_name: str) -> str:
    """A condition value as text: strings, numbers and booleans are accepted, as IAM does."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        return value
    raise Invalid(f"{operator_name} values must be strings, numbers or booleans, not {json.dumps(value)}")


def _string_matcher(comparison: str, raw: list[str], variables: bool) -> _Matcher:
    if comparison == "like":
        globs = [compile_glob(value, variables) for value in raw]
        fixed = [g.regex.pattern for g in globs if g.regex is not None]
        regex = re.compile("|".join(f"(?:{s})" for s in fixed), re.DOTALL) if fixed else None
        dynamic = tuple(g for g in globs if g.regex is None)

        def like(value: str, context: Context) -> bool:
            if regex is not None and regex.fullmatch(value):
                return True
            return any(g.matches(value, context) for g in dynamic)

        return like
    fold: Callable[[str], str] = str.casefold if comparison == "ieq" else str
    texts = [compile_text(value, variables) for value in raw]
    static = frozenset(fold(t.text) for t in texts if t.text is not None)
    rendered = tuple(t for t in texts if t.text is None)

    def equals(value: str, context: Context) -> bool:
        folded = fold(value)
        if folded in static:
            return True
        for text in rendered:
            candidate = text.render(context)
            if candidate is not None and fold(candidate) == folded:
                return True
        return False

    return equals


def _ordered_matcher(kind: _Kind, comparison: str, raw: list[str], operator_name: str) -> _Matcher:
    parse = _parse_number if kind == "numeric" else _parse_date
    limits: list[float] = []
    for value in raw:
        parsed = parse(value)
        if parsed is None:
            what = "number" if kind == "numeric" else "date (ISO 8601 or epoch seconds)"
            raise Invalid(f"{operator_name} needs a {what}, not {quote(value)}")
        limits.append(parsed)
    compare = _NUMERIC_COMPARE[comparison]

    def ordered(value: str, context: Context) -> bool | None:
        actual = parse(value)
        if actual is None:
            return None
        return any(compare(actual, limit) for limit in limits)

    return ordered


def _bool_matcher(raw: list[Any], operator_name: str) -> _Matcher:
    wanted: set[bool] = set()
    for value in raw:
        parsed = _parse_bool(value)
        if parsed is None:
            raise Invalid(f"{operator_name} needs true or false, not {json.dumps(value)}")
        wanted.add(parsed)

    def boolean(value: str, context: Context) -> bool | None:
        actual = _parse_bool(value)
        return None if actual is None else actual in wanted

    return boolean


def _ip_matcher(raw: list[str], operator_name: str) -> _Matcher:
    networks: list[_IpNetwork] = []
    for value in raw:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise Invalid(f"{operator_name} needs a CIDR (a.b.c.d/n or an IPv6 prefix), not {quote(value)}") from None

    def within(value: str, context: Context) -> bool | None:
        address = _parse_ip(value)
        if address is None:
            return None
        # `in` across IP versions is simply False.
        return any(address in network for network in networks)

    return within


_QUALIFIERS: dict[str, Literal["any", "all"]] = {"foranyvalue": "any", "forallvalues": "all"}


def compile_condition(block: Any, variables: bool) -> tuple[Condition, ...]:
    """A statement's Condition block as tests that must all hold; Invalid if it is not valid."""
    if not isinstance(block, Mapping):
        raise Invalid("Condition must be an object of operators")
    tests: list[Condition] = []
    for written, keys in block.items():
        if not isinstance(written, str):
            raise Invalid(f"condition operators are strings, not {json.dumps(written)}")
        qualifier: Literal["", "any", "all"] = ""
        name = written
        head, colon, tail = written.partition(":")
        if colon:
            if head.lower() not in _QUALIFIERS:
                raise Invalid(f'unknown set qualifier in {quote(written)}: use "ForAnyValue:" or "ForAllValues:"')
            qualifier, name = _QUALIFIERS[head.lower()], tail
        if_exists = name.lower().endswith("ifexists") and name.lower() != "ifexists"
        base = name[: -len("IfExists")] if if_exists else name
        if not isinstance(keys, Mapping) or not keys:
            raise Invalid(f"{written} must be an object of condition keys and values")
        if base.lower() == "null":
            if qualifier or if_exists:
                raise Invalid(f"unknown condition operator {quote(written)}")
            for key, value in keys.items():
                accepted: set[bool] = set()
                for item in value if isinstance(value, list) else [value]:
                    parsed = _parse_bool(item)
                    if parsed is None:
                        raise Invalid(f"Null needs true or false, not {json.dumps(item)}")
                    accepted.add(parsed)
                if not accepted:
                    raise Invalid(f"{written} has no values for {quote(key)}")
                tests.append(_NullTest(_condition_key(key), frozenset(accepted)))
            continue
        entry = _OPERATORS.get(base.lower())
        if entry is None:
            raise Invalid(f"unknown condition operator {quote(written)}")
        canonical, kind, comparison, negated = entry
        for key, value in keys.items():
            items = value if isinstance(value, list) else [value]
            if not items:
                raise Invalid(f"{written} has no values for {quote(key)}")
            matcher: _Matcher
            if kind == "bool":
                matcher = _bool_matcher(items, canonical)
            else:
                texts = [_scalar(item, canonical) for item in items]
                if kind == "string":
                    matcher = _string_matcher(comparison, texts, variables)
                elif kind == "ip":
                    matcher = _ip_matcher(texts, canonical)
                else:
                    matcher = _ordered_matcher(kind, comparison, texts, canonical)
            tests.append(_Test(_condition_key(key), negated, if_exists, qualifier, matcher))
    return tuple(tests)


def _condition_key(key: Any) -> str:
    if not isinstance(key, str):
        raise Invalid(f"condition keys must be strings, not {json.dumps(key)}")
    lower = key.lower()
    if lower not in CONDITION_KEYS:
        raise Invalid(f"unknown condition key {quote(key)}")
    return lower
