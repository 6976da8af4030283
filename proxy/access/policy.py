"""Identity policies in AWS IAM's JSON grammar: parsed and checked once, then decided per request in microseconds.

Supported, with IAM's meaning (identity policies of one account, S3 actions only):

- Document: ``Version`` (required: "2012-10-17", or "2008-10-17" where ``${...}`` is plain text, as in
  IAM), optional ``Id``, ``Statement`` as one object or a list.
- Statement: optional ``Sid``, ``Effect`` Allow|Deny, exactly one of ``Action``/``NotAction`` and
  exactly one of ``Resource``/``NotResource`` (a string or a list), optional ``Condition``.
- Action: ``*``, or ``s3:`` and a name with ``*``/``?`` wildcards, case-insensitive, that names at
  least one of `KNOWN_S3_ACTIONS`.
- Resource: ``*``, ``arn:aws:s3:::bucket``, ``arn:aws:s3:::bucket/key``; ``*`` and ``?`` anywhere in
  the ARN (they span ``/``); case-sensitive.
- Condition: the String*, Numeric*, Date*, Bool, IpAddress/NotIpAddress and Null operators, each but
  Null also as ``...IfExists`` and with the ``ForAnyValue:``/``ForAllValues:`` qualifiers, on the
  keys in `CONDITION_KEYS` (case-insensitive names).
- Policy variables (2012-10-17 only): ``${key}`` for any key in `CONDITION_KEYS`, ``${key, 'default'}``,
  and ``${*}`` ``${?}`` ``${$}`` for those characters; in Resource and in String condition values.
- Decision: a matching explicit Deny wins, else a matching Allow, else implicit deny.

Refused when parsed, never silently ignored: ``Principal``/``NotPrincipal`` (whom a policy applies to
is sealgate's config, not the document), actions of other services, ARNs of other services or with a
region or account (access points, S3 Express), the ARN and Binary operators, unknown condition keys,
operators or elements, malformed values. Out of scope: resource (bucket) policies, permission
boundaries, session policies, SCPs and RCPs, cross-account access.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeAlias

# The "Actions defined by Amazon S3" table of AWS's service authorization reference, so that
# real-world policies parse and a typo ("s3:PutObjekt") is an error rather than a rule that never fires.
_S3_ACTION_NAMES = """
AbortMultipartUpload AllowVendedLogDeliveryForResource AssociateAccessGrantsIdentityCenter
BypassGovernanceRetention CreateAccessGrant CreateAccessGrantsInstance CreateAccessGrantsLocation
CreateAccessPoint CreateAccessPointForObjectLambda CreateBucket CreateBucketMetadataTableConfiguration
CreateJob CreateMultiRegionAccessPoint CreateStorageLensGroup DeleteAccessGrant DeleteAccessGrantsInstance
DeleteAccessGrantsInstanceResourcePolicy DeleteAccessGrantsLocation DeleteAccessPoint
DeleteAccessPointForObjectLambda DeleteAccessPointPolicy DeleteAccessPointPolicyForObjectLambda DeleteBucket
DeleteBucketMetadataTableConfiguration DeleteBucketPolicy DeleteBucketWebsite DeleteJobTagging
DeleteMultiRegionAccessPoint DeleteObject DeleteObjectAnnotation DeleteObjectTagging DeleteObjectVersion
DeleteObjectVersionAnnotation DeleteObjectVersionTagging DeleteStorageLensConfiguration
DeleteStorageLensConfigurationTagging DeleteStorageLensGroup DescribeJob DescribeMultiRegionAccessPointOperation
DissociateAccessGrantsIdentityCenter GetAccelerateConfiguration GetAccessGrant GetAccessGrantsInstance
GetAccessGrantsInstanceForPrefix GetAccessGrantsInstanceResourcePolicy GetAccessGrantsLocation GetAccessPoint
GetAccessPointConfigurationForObjectLambda GetAccessPointForObjectLambda GetAccessPointPolicy
GetAccessPointPolicyForObjectLambda GetAccessPointPolicyStatus GetAccessPointPolicyStatusForObjectLambda
GetAccountPublicAccessBlock GetAnalyticsConfiguration GetBucketAbac GetBucketAcl GetBucketCORS GetBucketLocation
GetBucketLogging GetBucketMetadataTableConfiguration GetBucketNotification GetBucketObjectLockConfiguration
GetBucketOwnershipControls GetBucketPolicy GetBucketPolicyStatus GetBucketPublicAccessBlock
GetBucketRequestPayment GetBucketTagging GetBucketVersioning GetBucketWebsite GetDataAccess
GetEncryptionConfiguration GetIntelligentTieringConfiguration GetInventoryConfiguration GetJobTagging
GetLifecycleConfiguration GetMetricsConfiguration GetMultiRegionAccessPoint GetMultiRegionAccessPointPolicy
GetMultiRegionAccessPointPolicyStatus GetMultiRegionAccessPointRoutes GetObject GetObjectAcl
GetObjectAnnotation GetObjectAttributes GetObjectLegalHold GetObjectRetention GetObjectTagging
GetObjectTorrent GetObjectVersion GetObjectVersionAcl GetObjectVersionAnnotation
GetObjectVersionAnnotationForReplication GetObjectVersionAttributes GetObjectVersionForReplication
GetObjectVersionTagging GetObjectVersionTorrent GetReplicationConfiguration GetStorageLensConfiguration
GetStorageLensConfigurationTagging GetStorageLensDashboard GetStorageLensGroup InitiateReplication
ListAccessGrants ListAccessGrantsInstances ListAccessGrantsLocations ListAccessPoints
ListAccessPointsForObjectLambda ListAllMyBuckets ListBucket ListBucketMultipartUploads ListBucketVersions
ListCallerAccessGrants ListJobs ListMultiRegionAccessPoints ListMultipartUploadParts ListObjectAnnotations
ListObjectVersionAnnotations ListStorageLensConfigurations ListStorageLensGroups ListTagsForResource
ObjectOwnerOverrideToBucketOwner PauseReplication PutAccelerateConfiguration
PutAccessGrantsInstanceResourcePolicy PutAccessPointConfigurationForObjectLambda PutAccessPointPolicy
PutAccessPointPolicyForObjectLambda PutAccessPointPublicAccessBlock PutAccountPublicAccessBlock
PutAnalyticsConfiguration PutBucketAbac PutBucketAcl PutBucketCORS PutBucketLogging PutBucketNotification
PutBucketObjectLockConfiguration PutBucketOwnershipControls PutBucketPolicy PutBucketPublicAccessBlock
PutBucketRequestPayment PutBucketTagging PutBucketVersioning PutBucketWebsite PutEncryptionConfiguration
PutIntelligentTieringConfiguration PutInventoryConfiguration PutJobTagging PutLifecycleConfiguration
PutMetricsConfiguration PutMultiRegionAccessPointPolicy PutObject PutObjectAcl PutObjectAnnotation
PutObjectLegalHold PutObjectRetention PutObjectTagging PutObjectVersionAcl PutObjectVersionAnnotation
PutObjectVersionTagging PutReplicationConfiguration PutStorageLensConfiguration
PutStorageLensConfigurationTagging ReplicateDelete ReplicateObject ReplicateObjectAnnotation ReplicateTags
RestoreObject SubmitMultiRegionAccessPointRoutes TagResource UntagResource UpdateAccessGrantsLocation
UpdateBucketMetadataAnnotationTableConfiguration UpdateBucketMetadataInventoryTableConfiguration
UpdateBucketMetadataJournalTableConfiguration UpdateJobPriority UpdateJobStatus UpdateObjectEncryption
UpdateStorageLensGroup
"""

KNOWN_S3_ACTIONS: frozenset[str] = frozenset("s3:" + name for name in _S3_ACTION_NAMES.split())
"""Every S3 action IAM defines, in AWS's spelling ("s3:GetObject")."""

_KNOWN_LOWER: dict[str, str] = {action.lower(): action for action in KNOWN_S3_ACTIONS}

CONDITION_KEYS: frozenset[str] = frozenset(
    {
        "s3:prefix",
        "s3:delimiter",
        "s3:max-keys",
        "s3:versionid",
        "s3:x-amz-acl",
        "aws:sourceip",
        "aws:securetransport",
        "aws:currenttime",
        "aws:epochtime",
        "aws:username",
        "aws:userid",
    }
)
"""The condition keys (lower case) a policy may test or use as ``${variables}``."""

Context: TypeAlias = Mapping[str, str | tuple[str, ...]]
"""A request's condition keys, lower case, each one value or a tuple of them (a multivalued key)."""

_VERSIONS = ("2012-10-17", "2008-10-17")
_DOCUMENT_ELEMENTS = frozenset({"Version", "Id", "Statement"})
_STATEMENT_ELEMENTS = frozenset({"Sid", "Effect", "Action", "NotAction", "Resource", "NotResource", "Condition"})
_S3_ARN_PREFIX = "arn:aws:s3:::"


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _label(statement: str) -> str:
    # "#N" labels a statement without a Sid; a Sid is quoted (Sids may not start with "#").
    return statement if statement.startswith("#") else _quote(statement)


class PolicyError(Exception):
    """A policy sealgate cannot enforce as written; `statement` is its Sid, "#N", or None for the document."""

    policy: str
    statement: str | None
    problem: str

    def __init__(self, policy: str, statement: str | None, problem: str) -> None:
        super().__init__(policy, statement, problem)
        self.policy = policy
        self.statement = statement
        self.problem = problem

    def __str__(self) -> str:
        where = f"policy {_quote(self.policy)}"
        if self.statement is not None:
            where += f", statement {_label(self.statement)}"
        return f"{where}: {self.problem}"


class _Invalid(Exception):
    """A problem found below statement level; parse_policy adds the policy and statement."""


# --- wildcards and policy variables -------------------------------------------------------------


@dataclass(frozen=True)
class _Var:
    """A policy variable: the context value of `key`, else `default`; key None stands for a literal."""

    key: str | None
    default: str | None


_VARIABLE_BODY = re.compile(r"\s*([^\s,']+)\s*(?:,\s*'((?:[^']|'')*)'\s*)?")


def _split_variables(text: str) -> list[str | _Var]:
    """`text` as policy text and variables (IAM does one pass: a value is never re-expanded)."""
    parts: list[str | _Var] = []
    pos = 0
    while (start := text.find("${", pos)) >= 0:
        end = text.find("}", start)
        if end < 0:
            raise _Invalid(f"unterminated policy variable in {_quote(text)}")
        if start > pos:
            parts.append(text[pos:start])
        body = text[start + 2 : end]
        if body.strip() in ("*", "?", "$"):
            parts.append(_Var(None, body.strip()))
        else:
            match = _VARIABLE_BODY.fullmatch(body)
            if match is None:
                raise _Invalid(f"malformed policy variable {_quote(text[start : end + 1])}")
            key = match.group(1).lower()
            if key not in CONDITION_KEYS:
                raise _Invalid(f"unknown policy variable {_quote(text[start : end + 1])}")
            default = match.group(2)
            parts.append(_Var(key, None if default is None else default.replace("''", "'")))
        pos = end + 1
    if pos < len(text):
        parts.append(text[pos:])
    return parts


def _glob_source(text: str) -> str:
    """IAM's wildcards as a regex: * any run (also of "/"), ? one character, everything else literal."""
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in text)


def _resolve(var: _Var, context: Context) -> str | None:
    if var.key is not None:
        value = context.get(var.key)
        # A multivalued key has no single value to put in (IAM: it cannot be a variable).
        if isinstance(value, str):
            return value
    return var.default


# A pattern as tokens: (regex source, length in characters) of policy text without "*", a
# variable, or None for a run of "*"s.
_Token: TypeAlias = tuple[str, int] | _Var | None
# The fixed-length pieces between the "*"s, as (regex source or compiled, length).
_Pieces: TypeAlias = list[tuple[str, int]]


def _tokens(text: str, variables: bool) -> tuple[_Token, ...]:
    tokens: list[_Token] = []
    for part in _split_variables(text) if variables else [text]:
        if isinstance(part, _Var):
            tokens.append(part)
            continue
        for i, chunk in enumerate(re.split(r"\*+", part)):
            if i:
                tokens.append(None)
            if chunk:
                tokens.append((_glob_source(chunk), len(chunk)))
    return tuple(tokens)


def _render(tokens: Sequence[_Token], context: Context) -> _Pieces | None:
    """The pieces between "*"s with variables put in (literally), or None if one has no value."""
    pieces: _Pieces = []
    source: list[str] = []
    length = 0
    for token in tokens:
        if token is None:
            pieces.append(("".join(source), length))
            source, length = [], 0
        elif isinstance(token, tuple):
            source.append(token[0])
            length += token[1]
        else:
            resolved = _resolve(token, context)
            if resolved is None:
                return None  # an unresolved variable matches nothing, as in IAM
            source.append(re.escape(resolved))  # a substituted value is literal: no wildcards in user names
            length += len(resolved)
    pieces.append(("".join(source), length))
    return pieces


def _match_pieces(pieces: Sequence[tuple[re.Pattern[str], int]], value: str) -> bool:
    """Whether `value` is piece * piece * ... * piece.

    The first piece must sit at the start, the last at the end, and each middle one is taken at its
    leftmost place after the one before: the pieces have fixed lengths, so leftmost is never wrong.
    That is O(len(value) x len(pattern)), where a backtracking regex of several ".*" is polynomial in
    len(value) with the number of stars as the exponent: seconds for a 1 KiB key the client chose.
    """
    (first, first_length), (last, last_length) = pieces[0], pieces[-1]
    end = len(value) - last_length
    if end < first_length or first.match(value) is None or last.match(value, end) is None:
        return False
    pos = first_length
    for piece, _ in pieces[1:-1]:
        found = piece.search(value, pos, end)
        if found is None:
            return False
        pos = found.end()
    return True


@dataclass(frozen=True)
class _Glob:
    """A wildcard pattern: one regex if it has at most one "*", else its pieces; with variables, built per request."""

    regex: re.Pattern[str] | None
    pieces: tuple[tuple[re.Pattern[str], int], ...]
    tokens: tuple[_Token, ...]
    flags: int

    def matches(self, value: str, context: Context) -> bool:
        if self.regex is not None:
            return self.regex.fullmatch(value) is not None
        if self.pieces:
            return _match_pieces(self.pieces, value)
        rendered = _render(self.tokens, context)
        if rendered is None:
            return False
        # re's own compile cache keeps this cheap for the few distinct values a deployment sees.
        if len(rendered) <= 2:
            return re.fullmatch(".*".join(source for source, _ in rendered), value, self.flags) is not None
        return _match_pieces([(re.compile(source, self.flags), n) for source, n in rendered], value)


def _compile_glob(text: str, variables: bool, flags: int = re.DOTALL) -> _Glob:
    tokens = _tokens(text, variables)
    if any(isinstance(token, _Var) and token.key is not None for token in tokens):
        return _Glob(None, (), tokens, flags)
    rendered = _render(tokens, {})
    assert rendered is not None  # only ${*} ${?} ${$}, which always resolve
    if len(rendered) <= 2:
        # One ".*" backtracks at most linearly.
        return _Glob(re.compile(".*".join(source for source, _ in rendered), flags), (), (), flags)
    return _Glob(None, tuple((re.compile(source, flags), n) for source, n in rendered), (), flags)


@dataclass(frozen=True)
class _Text:
    """A literal condition value, maybe with variables."""

    text: str | None
    parts: tuple[str | _Var, ...]

    def render(self, context: Context) -> str | None:
        if self.text is not None:
            return self.text
        out: list[str] = []
        for part in self.parts:
            resolved = part if isinstance(part, str) else _resolve(part, context)
            if resolved is None:
                return None
            out.append(resolved)
        return "".join(out)


def _compile_text(text: str, variables: bool) -> _Text:
    if not variables or "${" not in text:
        return _Text(text, ())
    parts = tuple(_split_variables(text))
    if all(isinstance(p, str) or p.key is None for p in parts):
        return _Text("".join(p if isinstance(p, str) else (p.default or "") for p in parts), ())
    return _Text(None, parts)


# --- actions and resources ----------------------------------------------------------------------


def _as_strings(value: Any, element: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise _Invalid(f"{element} is an empty list")
    for item in items:
        if not isinstance(item, str):
            raise _Invalid(f"{element} must be a string or a list of strings, not {json.dumps(item)}")
    return items


def _compile_actions(patterns: list[str]) -> tuple[bool, frozenset[str], tuple[_Glob, ...]]:
    """(every action?, the known actions matched, lower case; the patterns, for actions not in the table)."""
    globs: list[_Glob] = []
    matched: set[str] = set()
    for pattern in patterns:
        if pattern == "*":
            return True, frozenset(), ()
        service, colon, name = pattern.partition(":")
        if not colon or not name:
            raise _Invalid(f'malformed action {_quote(pattern)}: write "s3:Name" or "*"')
        if service.lower() != "s3":
            raise _Invalid(f"sealgate authorizes only s3 actions, not {_quote(pattern)}")
        glob = _compile_glob("s3:" + name, variables=False, flags=re.IGNORECASE | re.DOTALL)
        hits = {lower for lower in _KNOWN_LOWER if glob.matches(lower, {})}
        if not hits:
            raise _Invalid(f"unknown action {_quote(pattern)}")
        matched |= hits
        globs.append(glob)
    return False, frozenset(matched), tuple(globs)


def _check_resource(pattern: str) -> None:
    if pattern == "*":
        return
    if not pattern.startswith(_S3_ARN_PREFIX) or len(pattern) == len(_S3_ARN_PREFIX):
        raise _Invalid(
            f"unsupported resource {_quote(pattern)}: sealgate takes"
            ' "*", "arn:aws:s3:::bucket" and "arn:aws:s3:::bucket/key" (wildcards allowed)'
        )


@dataclass(frozen=True)
class _Resources:
    """A statement's resource patterns: the simple ones as one regex, the others one by one."""

    simple: re.Pattern[str] | None
    others: tuple[_Glob, ...]

    def matches(self, resource: str, context: Context) -> bool:
        if self.simple is not None and self.simple.fullmatch(resource):
            return True
        return any(glob.matches(resource, context) for glob in self.others)


def _compile_resources(patterns: list[str], variables: bool) -> _Resources:
    simple: list[str] = []
    others: list[_Glob] = []
    for pattern in patterns:
        _check_resource(pattern)
        glob = _compile_glob(pattern, variables)
        if glob.regex is not None:
            simple.append(glob.regex.pattern)
        else:
            others.append(glob)
    regex = re.compile("|".join(f"(?:{s})" for s in simple), re.DOTALL) if simple else None
    return _Resources(regex, tuple(others))


# --- conditions ---------------------------------------------------------------------------------

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
    raise _Invalid(f"{operator_name} values must be strings, numbers or booleans, not {json.dumps(value)}")


def _string_matcher(comparison: str, raw: list[str], variables: bool) -> _Matcher:
    if comparison == "like":
        globs = [_compile_glob(value, variables) for value in raw]
        fixed = [g.regex.pattern for g in globs if g.regex is not None]
        regex = re.compile("|".join(f"(?:{s})" for s in fixed), re.DOTALL) if fixed else None
        dynamic = tuple(g for g in globs if g.regex is None)

        def like(value: str, context: Context) -> bool:
            if regex is not None and regex.fullmatch(value):
                return True
            return any(g.matches(value, context) for g in dynamic)

        return like
    fold: Callable[[str], str] = str.casefold if comparison == "ieq" else str
    texts = [_compile_text(value, variables) for value in raw]
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
            raise _Invalid(f"{operator_name} needs a {what}, not {_quote(value)}")
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
            raise _Invalid(f"{operator_name} needs true or false, not {json.dumps(value)}")
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
            raise _Invalid(f"{operator_name} needs a CIDR (a.b.c.d/n or an IPv6 prefix), not {_quote(value)}") from None

    def within(value: str, context: Context) -> bool | None:
        address = _parse_ip(value)
        if address is None:
            return None
        # `in` across IP versions is simply False.
        return any(address in network for network in networks)

    return within


_QUALIFIERS: dict[str, Literal["any", "all"]] = {"foranyvalue": "any", "forallvalues": "all"}


def _compile_condition(block: Any, variables: bool) -> tuple[_Test | _NullTest, ...]:
    if not isinstance(block, Mapping):
        raise _Invalid("Condition must be an object of operators")
    tests: list[_Test | _NullTest] = []
    for written, keys in block.items():
        if not isinstance(written, str):
            raise _Invalid(f"condition operators are strings, not {json.dumps(written)}")
        qualifier: Literal["", "any", "all"] = ""
        name = written
        head, colon, tail = written.partition(":")
        if colon:
            if head.lower() not in _QUALIFIERS:
                raise _Invalid(f'unknown set qualifier in {_quote(written)}: use "ForAnyValue:" or "ForAllValues:"')
            qualifier, name = _QUALIFIERS[head.lower()], tail
        if_exists = name.lower().endswith("ifexists") and name.lower() != "ifexists"
        base = name[: -len("IfExists")] if if_exists else name
        if not isinstance(keys, Mapping) or not keys:
            raise _Invalid(f"{written} must be an object of condition keys and values")
        if base.lower() == "null":
            if qualifier or if_exists:
                raise _Invalid(f"unknown condition operator {_quote(written)}")
            for key, value in keys.items():
                accepted: set[bool] = set()
                for item in value if isinstance(value, list) else [value]:
                    parsed = _parse_bool(item)
                    if parsed is None:
                        raise _Invalid(f"Null needs true or false, not {json.dumps(item)}")
                    accepted.add(parsed)
                if not accepted:
                    raise _Invalid(f"{written} has no values for {_quote(key)}")
                tests.append(_NullTest(_condition_key(key), frozenset(accepted)))
            continue
        entry = _OPERATORS.get(base.lower())
        if entry is None:
            raise _Invalid(f"unknown condition operator {_quote(written)}")
        canonical, kind, comparison, negated = entry
        for key, value in keys.items():
            items = value if isinstance(value, list) else [value]
            if not items:
                raise _Invalid(f"{written} has no values for {_quote(key)}")
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
        raise _Invalid(f"condition keys must be strings, not {json.dumps(key)}")
    lower = key.lower()
    if lower not in CONDITION_KEYS:
        raise _Invalid(f"unknown condition key {_quote(key)}")
    return lower


# --- statements, policies, decisions ------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    """One statement, compiled: `label` is its Sid or "#N"; the other fields are precompiled matchers."""

    label: str
    sid: str | None
    effect: Literal["Allow", "Deny"]
    all_actions: bool
    actions: frozenset[str]
    action_globs: tuple[_Glob, ...]
    not_action: bool
    resources: _Resources
    not_resource: bool
    conditions: tuple[_Test | _NullTest, ...]

    def applies(self, action: str, resource: str, context: Context) -> bool:
        """Whether the statement covers this request; `action` in lower case."""
        if self.all_actions:
            hit = True
        elif action in _KNOWN_LOWER:
            hit = action in self.actions
        else:
            hit = any(glob.matches(action, {}) for glob in self.action_globs)
        if hit == self.not_action:
            return False
        if self.resources.matches(resource, context) == self.not_resource:
            return False
        return all(test.holds(context) for test in self.conditions)


@dataclass(frozen=True)
class Policy:
    """A named identity policy, parsed and compiled."""

    name: str
    statements: tuple[Statement, ...]


def _one_of(raw: Mapping[str, Any], positive: str, negative: str) -> tuple[Any, bool]:
    if positive in raw and negative in raw:
        raise _Invalid(f"has both {positive} and {negative}")
    if positive in raw:
        return raw[positive], False
    if negative in raw:
        return raw[negative], True
    raise _Invalid(f"needs {positive} or {negative}")


def _parse_statement(raw: Any, label: str, variables: bool) -> Statement:
    if not isinstance(raw, Mapping):
        raise _Invalid("a statement must be an object")
    for element in ("Principal", "NotPrincipal"):
        if element in raw:
            raise _Invalid(
                f"{element} is not allowed in an identity policy (sealgate's config says whom a policy applies to)"
            )
    unknown = sorted(set(raw) - _STATEMENT_ELEMENTS)
    if unknown:
        raise _Invalid(f"unknown element {_quote(unknown[0])}")
    effect = raw.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise _Invalid(f'Effect must be "Allow" or "Deny", not {json.dumps(effect)}')
    actions, not_action = _one_of(raw, "Action", "NotAction")
    all_actions, matched, action_globs = _compile_actions(_as_strings(actions, "NotAction" if not_action else "Action"))
    resources, not_resource = _one_of(raw, "Resource", "NotResource")
    compiled = _compile_resources(_as_strings(resources, "NotResource" if not_resource else "Resource"), variables)
    conditions = _compile_condition(raw["Condition"], variables) if "Condition" in raw else ()
    sid = raw.get("Sid")
    return Statement(
        label=label,
        sid=sid,
        effect=effect,
        all_actions=all_actions,
        actions=matched,
        action_globs=action_globs,
        not_action=not_action,
        resources=compiled,
        not_resource=not_resource,
        conditions=conditions,
    )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads would keep the last of two "Effect"s silently; a policy must mean one thing.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Invalid(f"duplicate key {_quote(key)} in the JSON")
        result[key] = value
    return result


def parse_policy(name: str, document: str | Mapping[str, Any]) -> Policy:
    """Parse and compile one identity policy (JSON text or its decoded object); PolicyError if it is not valid."""
    if isinstance(document, str):
        try:
            document = json.loads(document, object_pairs_hook=_no_duplicates)
        except json.JSONDecodeError as e:
            raise PolicyError(name, None, f"malformed JSON: {e}") from None
        except _Invalid as e:
            raise PolicyError(name, None, str(e)) from None
    if not isinstance(document, Mapping):
        raise PolicyError(name, None, "a policy must be a JSON object")
    unknown = sorted(set(document) - _DOCUMENT_ELEMENTS)
    if unknown:
        raise PolicyError(name, None, f"unknown element {_quote(str(unknown[0]))}")
    version = document.get("Version")
    if version not in _VERSIONS:
        raise PolicyError(name, None, f'Version must be "2012-10-17" (or "2008-10-17"), not {json.dumps(version)}')
    if "Id" in document and not isinstance(document["Id"], str):
        raise PolicyError(name, None, "Id must be a string")
    raw_statements = document.get("Statement")
    if raw_statements is None:
        raise PolicyError(name, None, "no Statement")
    if not isinstance(raw_statements, list):
        raw_statements = [raw_statements]
    if not raw_statements:
        raise PolicyError(name, None, "Statement is an empty list")
    statements: list[Statement] = []
    sids: set[str] = set()
    for number, raw in enumerate(raw_statements, start=1):
        label = f"#{number}"
        sid = raw.get("Sid") if isinstance(raw, Mapping) else None
        if sid is not None:
            if not isinstance(sid, str) or not sid or sid.startswith("#"):
                raise PolicyError(
                    name, label, f"Sid must be a non-empty string not starting with #, not {json.dumps(sid)}"
                )
            if sid in sids:
                raise PolicyError(name, label, f"Sid {_quote(sid)} is used twice")
            sids.add(sid)
            label = sid
        try:
            statements.append(_parse_statement(raw, label, variables=version == "2012-10-17"))
        except _Invalid as e:
            raise PolicyError(name, label, str(e)) from None
    return Policy(name, tuple(statements))


@dataclass(frozen=True)
class Decision:
    """The outcome for one request and what decided it (policy name and statement Sid or "#N")."""

    allowed: bool
    effect: Literal["Allow", "Deny", "ImplicitDeny"]
    policy: str | None
    statement: str | None

    def describe(self) -> str:
        """For logs and audit: 'allowed by policy "x", statement "S"', 'no policy allows it', ..."""
        if self.effect == "ImplicitDeny":
            return "no policy allows it"
        verb = "allowed" if self.allowed else "denied"
        if self.policy is None:
            return f"{verb} without a policy"
        text = f"{verb} by policy {_quote(self.policy)}"
        if self.statement is not None:
            text += f", statement {_label(self.statement)}"
        return text


_IMPLICIT_DENY = Decision(allowed=False, effect="ImplicitDeny", policy=None, statement=None)


def evaluate(policies: Sequence[Policy], action: str, resource: str, context: Context) -> Decision:
    """IAM's decision for one request: a matching Deny wins, else a matching Allow, else implicit deny.

    `action` is canonical ("s3:PutObject"), `resource` a full ARN ("arn:aws:s3:::photos/a.jpg", or
    "arn:aws:s3:::*" for ListAllMyBuckets). The deciding statement named is the first that matches,
    in the order of `policies` and their statements.
    """
    action = action.lower()
    allowed_by: tuple[Policy, Statement] | None = None
    for policy in policies:
        for statement in policy.statements:
            if allowed_by is not None and statement.effect == "Allow":
                continue  # only a Deny can change the answer now
            if statement.applies(action, resource, context):
                if statement.effect == "Deny":
                    return Decision(allowed=False, effect="Deny", policy=policy.name, statement=statement.label)
                allowed_by = (policy, statement)
    if allowed_by is None:
        return _IMPLICIT_DENY
    return Decision(allowed=True, effect="Allow", policy=allowed_by[0].name, statement=allowed_by[1].label)
